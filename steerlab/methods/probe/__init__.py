"""Linear-probe steering vectors: at each layer, an L2-regularised logistic regression telling a
pair's chosen side from its rejected side by the last-token activation (as in the probing
baselines of Li et al. 2023, "Inference-Time Intervention", and Im & Li 2025, "A Unified
Understanding and Evaluation of Steering Methods"). The vector is the probe's weight direction,
signed and scaled like the other activation methods
(:func:`~steerlab.methods.contrast.oriented`); the probe's accuracy on held-out pairs is stored
with it (``meta.extra["probe"]``), so a layer where nothing is linearly readable shows itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field

from steerlab.data.files import PreferencePair, split
from steerlab.methods.contrast import contrast_meta, oriented, read_contrast, sign_votes
from steerlab.methods.probes import fit_probe
from steerlab.methods.registry import MethodConfig, VectorMethod
from steerlab.methods.training import TrainingRun
from steerlab.model.handle import ModelHandle
from steerlab.steering.vectors import SteeringVector


class ProbeConfig(MethodConfig):
    """Regularisation and the held-out share of the probe."""

    l2: float = Field(1e-2, ge=0)
    """Weight of ½‖w‖² added to the mean log-loss (the bias is not penalised)."""
    holdout: float = Field(0.2, ge=0, lt=1)
    """Share of pairs (seeded) kept out of the fit to measure the probe's accuracy."""


def train_probe(model: ModelHandle, pairs: Sequence[PreferencePair], layers: int | Sequence[int],
                *, l2: float = 1e-2, holdout: float = 0.2, seed: int = 0, batch_size: int = 8,
                progress: bool = True) -> SteeringVector:
    """A probe direction at each of ``layers``; see the module docstring."""
    layers = [layers] if isinstance(layers, int) else sorted(set(layers))
    n_held = round(holdout * len(pairs))
    if len(pairs) - n_held < 2:
        raise ValueError(f"the probe needs at least 2 training pairs, got {len(pairs) - n_held}")
    held, fit = split(range(len(pairs)), [n_held, len(pairs) - n_held], seed)
    contrast = read_contrast(model, pairs, layers, batch_size, progress, "probe activations")
    directions, report, votes = {}, {}, {}
    for layer in layers:
        probe = fit_probe(contrast.chosen[layer], contrast.rejected[layer], fit, held, l2)
        directions[layer], votes[layer] = oriented(torch.from_numpy(probe.weights), contrast,
                                                   layer)
        entry = {"train_accuracy": probe.train_accuracy}
        if probe.held_out_accuracy is not None:
            entry["held_out_accuracy"] = probe.held_out_accuracy
        report[str(layer)] = entry
    meta = contrast_meta(model, "probe", pairs, contrast, l2=l2, holdout=holdout, seed=seed,
                         direction="logistic-regression weights, chosen = 1")
    meta.extra["probe"] = {"held_out_pairs": len(held), "fit_pairs": len(fit), "layers": report}
    sign_votes("probe", votes, meta)
    return SteeringVector(directions, meta)


def _train(model: ModelHandle, pairs: Sequence[PreferencePair], layers: list[int],
           config: ProbeConfig, run: TrainingRun) -> SteeringVector:
    return train_probe(model, pairs, layers, l2=config.l2, holdout=config.holdout, seed=run.seed,
                       batch_size=run.batch_size, progress=run.progress)


METHODS = (
    VectorMethod("probe", "logistic-regression probe direction, held-out accuracy stored",
                 ProbeConfig, _train, multi_layer=True),
)

__all__ = ["METHODS", "ProbeConfig", "train_probe"]

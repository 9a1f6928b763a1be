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
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import Field
from scipy.optimize import minimize

from steerlab.data.files import PreferencePair, split
from steerlab.methods.contrast import contrast_meta, oriented, read_contrast, sign_votes
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


def fit_logistic(features: np.ndarray, labels: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """(weights, bias) minimising mean log-loss + l2/2 ‖w‖² (float64 L-BFGS to convergence)."""
    x, y = features.astype(np.float64), labels.astype(np.float64)
    scale = max(float(np.abs(x).max()), 1e-12)  # fit w' = scale·w on x / scale: conditioning

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:-1], theta[-1]
        z = (x / scale) @ w + b
        p = 1 / (1 + np.exp(-z))
        value = np.mean(np.logaddexp(0, z) - y * z) + l2 / 2 * (w @ w) / scale**2
        grad_z = (p - y) / len(y)
        grad = np.append((x / scale).T @ grad_z + l2 * w / scale**2, grad_z.sum())
        return value, grad

    result = minimize(loss, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B",
                      options={"maxiter": 5000, "gtol": 1e-10, "ftol": 1e-15})
    return result.x[:-1] / scale, float(result.x[-1])


@dataclass(frozen=True)
class ProbeFit:
    """A logistic probe telling a pair's chosen side (1) from its rejected side (0)."""

    weights: np.ndarray
    bias: float
    train_accuracy: float
    held_out_accuracy: float | None
    """None when no pair was held out."""


def _labelled(chosen: torch.Tensor, rejected: torch.Tensor,
              rows: Sequence[int]) -> tuple[torch.Tensor, np.ndarray]:
    rows = list(rows)
    return (torch.cat([chosen[rows], rejected[rows]]),
            np.r_[np.ones(len(rows)), np.zeros(len(rows))])


def fit_probe(chosen: torch.Tensor, rejected: torch.Tensor, fit: Sequence[int],
              held: Sequence[int], l2: float) -> ProbeFit:
    """Fit a probe on the ``fit`` pairs' rows of ``chosen`` and ``rejected`` (N, D) and score
    it on the ``held`` pairs (the share of rows it classifies right)."""

    def accuracy(rows: Sequence[int]) -> float:
        features, labels = _labelled(chosen, rejected, rows)
        return float(np.mean((features.double().numpy() @ w + b > 0) == labels.astype(bool)))

    features, labels = _labelled(chosen, rejected, fit)
    w, b = fit_logistic(features.numpy(), labels, l2)
    return ProbeFit(w, b, accuracy(fit), accuracy(held) if len(held) else None)


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

__all__ = ["METHODS", "ProbeConfig", "ProbeFit", "fit_logistic", "fit_probe", "train_probe"]

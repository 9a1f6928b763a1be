"""Which layer to steer: every layer read in one pass and scored three ways on held-out pairs —
how well a linear probe reads the behaviour there, how far apart chosen and rejected sit along
the layer's CAA direction, and how much that CAA vector actually moves the behaviour."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch

from steerlab.data.files import PreferencePair, check_preferences, split
from steerlab.methods.contrast import contrast_meta, read_contrast
from steerlab.methods.probes import fit_probe
from steerlab.model.encoding import encode
from steerlab.model.handle import ModelHandle
from steerlab.model.scoring import score_settings
from steerlab.steering.setting import SteeringSetting
from steerlab.steering.vectors import SteeringVector

SCAN_TASK = "layer-scan"
"""The record task of a run's layer scan (``layers: scan`` in a run config)."""


@dataclass(frozen=True)
class LayerScore:
    """One layer's scores, all on the held-out pairs."""

    layer: int
    probe_accuracy: float
    """Accuracy of a logistic probe (fit on the other pairs) telling chosen from rejected."""
    separation: float
    """Mean chosen − rejected gap along the CAA direction, over the pooled standard deviation."""
    shift: float
    """Mean A/B score under the CAA vector at the scan's multiplier, minus unsteered."""


@dataclass(frozen=True)
class LayerScan:
    """A scan of every layer of a model on one set of pairs."""

    scores: list[LayerScore]
    multiplier: float
    norm_ratio: float | None
    fit_pairs: int
    held_out_pairs: int
    unsteered_score: float
    seconds: float

    def best(self, k: int, by: str = "shift") -> list[int]:
        """The ``k`` layers with the highest ``by`` score (ties: the lower layer)."""
        ranked = sorted(self.scores, key=lambda s: (-getattr(s, by), s.layer))
        return sorted(s.layer for s in ranked[:k])

    def to_dict(self) -> dict:
        return asdict(self)


def _separation(chosen: torch.Tensor, rejected: torch.Tensor, direction: torch.Tensor) -> float:
    unit = direction / direction.norm().clamp_min(1e-12)
    a, b = (chosen @ unit).double(), (rejected @ unit).double()
    pooled = ((a.var(unbiased=True) + b.var(unbiased=True)) / 2).sqrt()
    return float((a.mean() - b.mean()) / pooled.clamp_min(1e-12))


def _ab_scores(model: ModelHandle, pairs: Sequence[PreferencePair], vector: SteeringVector,
               multiplier: float, norm_ratio: float | None, batch_size: int,
               progress: bool) -> list[float]:
    """Mean A/B score (the chosen answer's probability, normalised over the two, as
    :func:`~steerlab.evaluation.likelihood.evaluate_ab` computes it) unsteered, then with the
    vector at each layer alone. Each batch runs every layer once for all settings; each layer's
    setting then runs only the layers above it."""
    seqs = encode(model, [p.prompt for p in pairs] * 2,
                  [p.chosen for p in pairs] + [p.rejected for p in pairs])
    layers = list(range(model.n_layers))
    settings = [nullcontext, *(partial(SteeringSetting(vector, multiplier, [layer], norm_ratio)
                                       .apply, model) for layer in layers)]
    scored = score_settings(model, seqs, settings, [0, *layers], batch_size, progress,
                            "scan: steering each layer")
    n = len(pairs)
    return [sum(1 / (1 + math.exp(scores[n + i].logprob - scores[i].logprob)) for i in range(n))
            / n for scores in scored]


def scan_layers(
    model: ModelHandle,
    pairs: Sequence[PreferencePair],
    *,
    multiplier: float = 1.0,
    norm_ratio: float | None = None,
    holdout: float = 0.2,
    l2: float = 1e-2,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
) -> LayerScan:
    """Score every layer (see the module docstring). The probe and the CAA direction are fit
    on a seeded ``1 − holdout`` share of ``pairs``; the three scores are measured on the rest.
    The shift steers each layer alone with the CAA vector at ``multiplier`` (``norm_ratio``:
    rescaled to that share of the layer's residual norm first)."""
    started = time.perf_counter()
    check_preferences(pairs)
    n_held = max(2, round(holdout * len(pairs)))
    if len(pairs) - n_held < 2:
        raise ValueError(f"a scan needs at least 4 pairs (2 to fit, 2 held out), got {len(pairs)}")
    held, fit = split(list(pairs), [n_held, len(pairs) - n_held], seed)
    layers = list(range(model.n_layers))
    contrast = read_contrast(model, [*fit, *held], layers, batch_size, progress,
                             "scan: reading every layer")
    n_fit = len(fit)
    directions = {layer: contrast.differences(layer)[:n_fit].mean(dim=0) for layer in layers}
    caa = SteeringVector(directions, contrast_meta(model, "caa", fit, contrast))
    base, *shifts = _ab_scores(model, held, caa, multiplier, norm_ratio, batch_size, progress)
    scores = []
    for layer in layers:
        chosen, rejected = contrast.chosen[layer], contrast.rejected[layer]
        probe = fit_probe(chosen, rejected, range(n_fit), range(n_fit, n_fit + n_held), l2)
        separation = _separation(chosen[n_fit:], rejected[n_fit:], directions[layer])
        scores.append(LayerScore(layer, probe.held_out_accuracy, separation,
                                 shifts[layer] - base))
    return LayerScan(scores, multiplier, norm_ratio, n_fit, n_held, base,
                     time.perf_counter() - started)


def plot_scan(scan: LayerScan, path: str | Path) -> Path:
    """Write a PNG of the three scores against the layer."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.2))
    FigureCanvasAgg(fig)
    layers = [s.layer for s in scan.scores]
    panels = [("probe_accuracy", "held-out probe accuracy"),
              ("separation", "CAA separation (gap / sd)"),
              ("shift", f"behaviour shift at ×{scan.multiplier:g}")]
    for ax, (field, title) in zip(fig.subplots(1, 3), panels):
        ax.plot(layers, [getattr(s, field) for s in scan.scores], marker="o", ms=3)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("layer")
        ax.axhline(0.5 if field == "probe_accuracy" else 0, color="grey", lw=0.8, ls=":")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path

"""Linear probes on a contrast's activations, for every method and tool that reads one (the
probe method's vectors, ITI's heads, the layer scan): an L2-regularised logistic regression
telling a pair's chosen side (1) from its rejected side (0), with its held-out accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize


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

"""What every trainer shares: the preference loss (TRL's DPO form, with BiPO's direction), one
guarded optimiser step, the training log, and the run a trainer is given besides its
hyper-parameters."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from steerlab.data.files import PreferencePair

Callback = Callable[[dict[str, Any]], None]
"""Receives each step's and each epoch's log entry as training goes."""


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; the message names the step and batch."""


def descend(optimizer: torch.optim.Optimizer, loss: torch.Tensor, name: str, where: str) -> float:
    """One optimiser step on ``loss``; return its value. A NaN or infinite loss raises
    :class:`TrainingDiverged` ("<name> loss is nan at <where>") before any weight changes."""
    value = loss.item()
    if not math.isfinite(value):
        raise TrainingDiverged(f"{name} loss is {value} at {where}")
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return value


@dataclass
class TrainingHistory:
    """What happened during training: one entry per step and per epoch."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    engine: str = "fast"
    packed: bool = False
    cache_bytes: int = 0
    prepare_seconds: float = 0.0


def bipo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    direction: float,
    beta: float,
) -> torch.Tensor:
    """Mean BiPO loss over a batch of summed completion log-probabilities (TRL's DPO form)."""
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(direction * beta * margin).mean()


@dataclass(frozen=True)
class TrainingRun:
    """What a trainer is given besides its hyper-parameters: held-out pairs (validation and
    early stopping), the seed, a checkpoint file rewritten as training goes (an interruption
    keeps the last one), the log to fill, the forward batch of methods that only read
    activations, and whether to show progress bars."""

    val_pairs: Sequence[PreferencePair] | None = None
    seed: int = 0
    checkpoint: Path | None = None
    history: TrainingHistory | None = None
    callbacks: Sequence[Callback] = ()
    batch_size: int = 8
    progress: bool = True

"""The hyper-parameters of vector training with a loss (BiPO, DPO, and the objectives built on
the same loop), with their defaults (stated here once)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from steerlab.methods.registry import MethodConfig


class OptimiserSettings(MethodConfig):
    """What every loss-trained vector shares: the optimiser, the passes, early stopping, the
    final rescaling and the engine."""

    lr: float = Field(5e-4, gt=0)
    """AdamW learning rate."""
    batch_size: int = Field(8, gt=0)
    """Pairs per optimisation step."""
    epochs: int = Field(5, gt=0)
    """Passes over the pairs."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    patience: int | None = Field(None, gt=0)
    """With validation pairs: stop after this many epochs without a lower validation loss."""
    norm_ratio: float | None = Field(None, gt=0)
    """Rescale the result to this fraction of the layer's mean residual norm."""
    engine: Literal["fast", "naive"] = "fast"
    """``fast`` caches the layers below once; ``naive`` runs full passes (the reference)."""


class BiPOConfig(OptimiserSettings):
    """Hyper-parameters of BiPO and DPO training (one layer per run)."""

    beta: float = Field(0.1, gt=0)
    """Inverse temperature of the preference loss."""

"""The hyper-parameters of vector training with a loss (BiPO, DPO, and the objectives built on
the same loop), with their defaults (stated here once)."""

from __future__ import annotations

from pydantic import Field

from steerlab.methods.loss_training import OptimiserSettings


class BiPOConfig(OptimiserSettings):
    """Hyper-parameters of BiPO and DPO training (one layer per run)."""

    beta: float = Field(0.1, gt=0)
    """Inverse temperature of the preference loss."""

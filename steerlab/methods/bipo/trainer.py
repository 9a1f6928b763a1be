"""BiPO (Cao et al. 2024) and DPO steering-vector training.

For a pair (q, r_T, r_O) and a direction Δ ∈ {−1, +1} drawn per batch (always +1 for DPO):

    loss = −log σ( Δβ[log π(r_T | A_L(q)+Δv) − log π(r_T | A_L(q))]
                 − Δβ[log π(r_O | A_L(q)+Δv) − log π(r_O | A_L(q))] )

v is added to the output of decoder layer L at every prompt and completion position; log π sums
over completion tokens. AdamW trains v alone, in the loop every loss-trained method shares
(:mod:`steerlab.methods.loss_training`, with its two engines).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from steerlab.data.files import PreferencePair
from steerlab.methods.bipo.config import BiPOConfig
from steerlab.methods.loss_training import train_objective
from steerlab.methods.training import Callback, TrainingHistory, TrainingRun, bipo_loss
from steerlab.model.handle import ModelHandle
from steerlab.steering.vectors import SteeringVector

Direction = Literal["bi", "forward"]


@dataclass(frozen=True)
class BiPOObjective:
    """BiPO's loss (the module docstring) with Δ drawn per batch; DPO fixes Δ = +1."""

    direction: Direction
    beta: float

    def signs(self) -> tuple[float, ...]:
        return (1.0,) if self.direction == "forward" else (1.0, -1.0)

    def loss(self, engine, chunk, vector, generator):
        sign = (1.0 if self.direction == "forward"
                else float(torch.randint(2, (1,), generator=generator)) * 2 - 1)
        pc, pr, rc, rr = engine.logprobs(chunk, sign * vector)
        return bipo_loss(pc, pr, rc, rr, sign, self.beta), {"direction": sign}

    def validation_loss(self, engine, chunk, vector):
        return sum(bipo_loss(*engine.logprobs(chunk, sign * vector), sign, self.beta).item()
                   for sign in self.signs()) / len(self.signs())


def train_bipo(
    model: ModelHandle,
    pairs: Sequence[PreferencePair],
    layer: int,
    config: BiPOConfig | None = None,
    *,
    direction: Direction = "bi",
    seed: int = 0,
    val_pairs: Sequence[PreferencePair] | None = None,
    max_cache_bytes: int = 4 << 30,
    checkpoint: str | Path | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    history: TrainingHistory | None = None,
    **hyperparameters: Any,
) -> SteeringVector:
    """Train a steering vector at ``layer`` with the BiPO loss (``direction="forward"``: DPO).

    ``hyperparameters`` are :class:`~steerlab.methods.bipo.config.BiPOConfig`'s fields (beta,
    lr, batch_size, epochs, weight_decay, patience, norm_ratio, engine), validated by it and
    taking precedence over ``config``. With ``val_pairs``, each epoch is scored (validation
    loss; behaviour score at multipliers ±1) and the best epoch's vector is returned;
    ``patience`` stops after that many epochs without improvement. ``checkpoint`` is rewritten
    after every epoch with the vector kept so far, so an interruption loses at most the running
    epoch. ``norm_ratio`` rescales the result to that fraction of the layer's mean residual norm
    on the training data. Pass a :class:`TrainingHistory` to receive per-step and per-epoch logs.
    """
    settings = BiPOConfig.model_validate({**(config.model_dump() if config else {}),
                                          **hyperparameters})
    if direction not in ("bi", "forward"):
        raise ValueError(f"direction must be 'bi' or 'forward', got {direction!r}")
    run = TrainingRun(val_pairs=val_pairs, seed=seed,
                      checkpoint=Path(checkpoint) if checkpoint is not None else None,
                      history=history, callbacks=callbacks, progress=progress)
    return train_objective(model, pairs, layer, BiPOObjective(direction, settings.beta),
                           "bipo" if direction == "bi" else "dpo", settings, run,
                           max_cache_bytes=max_cache_bytes,
                           hyperparams={"beta": settings.beta, "direction": direction})


def train_dpo(model: ModelHandle, pairs: Sequence[PreferencePair], layer: int,
              **kwargs: Any) -> SteeringVector:
    """DPO on the vector: BiPO with the direction fixed to +1."""
    return train_bipo(model, pairs, layer, direction="forward", **kwargs)


__all__ = ["BiPOObjective", "Direction", "train_bipo", "train_dpo"]

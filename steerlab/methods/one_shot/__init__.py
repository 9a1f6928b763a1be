"""One-shot steering vectors (Dunefsky & Cohan 2025, "One-shot Optimized Steering Vectors
Mediate Safety-relevant Behaviors in LLMs"): a vector optimised on a single example, trained on
BiPO's fast engine.

On the one pair (prompt x, chosen y_c, rejected y) the vector v at layer L minimises

    promote:  −log p(y_c | h_L + v) / |y_c|
    mixed:    the same  − log(1 − p(y | h_L + v))

(promotion steering, and promotion mixed with suppression steering of the rejected
completion; p(y) is the whole completion's probability). Each epoch is one step on that pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field

from steerlab.data.files import PreferencePair
from steerlab.methods.loss_training import OptimiserSettings, train_objective
from steerlab.methods.registry import VectorMethod
from steerlab.methods.training import TrainingRun
from steerlab.model.handle import ModelHandle
from steerlab.steering.vectors import SteeringVector


class OneShotConfig(OptimiserSettings):
    """One-shot's hyper-parameters: which pair, the loss, and the optimiser's (each epoch is one
    step on the pair)."""

    example: int = Field(0, ge=0)
    """Index of the training pair to optimise on."""
    mode: Literal["promote", "mixed"] = "mixed"
    """Promote the chosen completion, or also suppress the rejected one."""
    lr: float = Field(0.01, gt=0)
    epochs: int = Field(50, gt=0)
    batch_size: int = Field(1, gt=0)


def one_shot_loss(chosen: torch.Tensor, rejected: torch.Tensor, chosen_len: torch.Tensor,
                  mode: str) -> torch.Tensor:
    """The one-shot loss (module docstring) from summed completion log-probabilities."""
    loss = -(chosen / chosen_len.to(chosen)).mean()
    if mode == "mixed":
        loss = loss - torch.log(-torch.expm1(rejected.clamp_max(-1e-6))).mean()
    return loss


@dataclass(frozen=True)
class OneShotObjective:
    mode: str

    def loss(self, engine, chunk, vector, generator):
        pc, pr, _, _ = engine.logprobs(chunk, vector)
        lengths = torch.tensor([float(e.chosen.n_completion) for e in chunk])
        return one_shot_loss(pc, pr, lengths, self.mode), {}

    def validation_loss(self, engine, chunk, vector):
        return self.loss(engine, chunk, vector, None)[0].item()


def train_one_shot(model: ModelHandle, pairs: Sequence[PreferencePair], layer: int,
                   config: OneShotConfig | None = None, run: TrainingRun | None = None,
                   **hyperparameters) -> SteeringVector:
    """A one-shot vector at ``layer`` from ``pairs[example]`` (``hyperparameters``:
    :class:`OneShotConfig`'s fields)."""
    settings = OneShotConfig.model_validate({**(config.model_dump() if config else {}),
                                             **hyperparameters})
    if settings.example >= len(pairs):
        raise ValueError(f"example {settings.example} is beyond the {len(pairs)} pairs given")
    one = [pairs[settings.example]]
    return train_objective(model, one, layer, OneShotObjective(settings.mode), "one-shot",
                           settings, run or TrainingRun(),
                           hyperparams={"mode": settings.mode, "example": settings.example,
                                        "example_id": one[0].id})


def _train(model: ModelHandle, pairs: Sequence[PreferencePair], layers: list[int],
           config: OneShotConfig, run: TrainingRun) -> SteeringVector:
    (layer,) = layers
    return train_one_shot(model, pairs, layer, config, run)


METHODS = (
    VectorMethod("one-shot", "a vector optimised on one example (promote, or promote and "
                 "suppress)", OneShotConfig, _train),
)

__all__ = ["METHODS", "OneShotConfig", "one_shot_loss", "train_one_shot"]

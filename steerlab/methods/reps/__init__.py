"""RePS (Wu et al. 2025, "Improved Representation Steering for Language Models"):
reference-free bi-directional preference steering, trained on BiPO's fast engine.

With the chosen completion y_c (the behaviour) and the rejected one y, lengths |·| in tokens and
log p summed over completion tokens, each batch draws a factor α from ``factors`` and descends

    −log σ(Δ⁺) − log σ(Δ⁻)
    Δ⁺ = β⁺ · log p(y_c | h_L + αv) / |y_c|  −  log p(y | h_L + αv) / |y|
    Δ⁻ = β⁻ · log p(y | null(h_L)) / |y|     −  log p(y_c | null(h_L)) / |y_c|

where null(h) = h − (h·v̂) v̂ removes the vector's direction (our reading of the paper's
nulling intervention for a steering vector), and β⁺ = max(log p(y) − log p(y_c), 1),
β⁻ = max(log p(y_c) − log p(y), 1) come from the unsteered model: a side the model finds
unlikely is weighted up. No reference model enters the margins (unlike BiPO's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import Field

from steerlab.data.files import PreferencePair
from steerlab.methods.loss_training import OptimiserSettings, train_objective
from steerlab.methods.pairs import EncodedPair
from steerlab.methods.registry import VectorMethod
from steerlab.methods.training import TrainingRun
from steerlab.model.handle import ModelHandle
from steerlab.steering.vectors import SteeringVector


class RePSConfig(OptimiserSettings):
    """RePS's hyper-parameters: the optimiser's, and the steering factors drawn per batch."""

    factors: list[float] = Field(default_factory=lambda: [1.0], min_length=1)
    """Multipliers α of the vector in the steering term, one drawn per batch."""


def _lengths(chunk: Sequence[EncodedPair]) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.tensor([float(e.chosen.n_completion) for e in chunk]),
            torch.tensor([float(e.rejected.n_completion) for e in chunk]))


def reps_loss(steered: tuple[torch.Tensor, ...], nulled: tuple[torch.Tensor, ...],
              chosen_len: torch.Tensor, rejected_len: torch.Tensor) -> torch.Tensor:
    """The RePS loss (module docstring) from the engine's log-probabilities: ``steered`` and
    ``nulled`` are (chosen, rejected, reference chosen, reference rejected) summed
    log-probabilities under the steering and the nulling edit."""
    pc, pr, rc, rr = steered
    nc, nr = nulled[0], nulled[1]
    lc, lr = chosen_len.to(pc), rejected_len.to(pc)
    beta_plus = (rr - rc).clamp_min(1.0).detach()
    beta_minus = (rc - rr).clamp_min(1.0).detach()
    plus = beta_plus * pc / lc - pr / lr
    minus = beta_minus * nr / lr - nc / lc
    return -(F.logsigmoid(plus) + F.logsigmoid(minus)).mean()


def nulling(vector: torch.Tensor):
    """The edit h ↦ h − (h·v̂) v̂ (the identity while v is zero)."""
    unit = vector / vector.norm().clamp_min(1e-12)

    def null(hidden: torch.Tensor) -> torch.Tensor:
        u = unit.to(hidden.dtype)
        return hidden - (hidden @ u).unsqueeze(-1) * u

    return null


@dataclass(frozen=True)
class RePSObjective:
    factors: tuple[float, ...]

    def _loss(self, engine, chunk, vector, factor: float) -> torch.Tensor:
        steered = engine.logprobs(chunk, factor * vector)
        nulled = engine.logprobs(chunk, nulling(vector))
        return reps_loss(steered, nulled, *_lengths(chunk))

    def loss(self, engine, chunk, vector, generator):
        pick = int(torch.randint(len(self.factors), (1,), generator=generator))
        return self._loss(engine, chunk, vector, self.factors[pick]), {
            "factor": self.factors[pick]}

    def validation_loss(self, engine, chunk, vector):
        return sum(self._loss(engine, chunk, vector, f).item()
                   for f in self.factors) / len(self.factors)


def train_reps(model: ModelHandle, pairs: Sequence[PreferencePair], layer: int,
               config: RePSConfig | None = None, run: TrainingRun | None = None,
               **hyperparameters) -> SteeringVector:
    """A RePS vector at ``layer`` (``hyperparameters``: :class:`RePSConfig`'s fields)."""
    settings = RePSConfig.model_validate({**(config.model_dump() if config else {}),
                                          **hyperparameters})
    return train_objective(model, pairs, layer, RePSObjective(tuple(settings.factors)), "reps",
                           settings, run or TrainingRun(),
                           hyperparams={"factors": settings.factors,
                                        "objective": "RePS (reference-free, bi-directional)"})


def _train(model: ModelHandle, pairs: Sequence[PreferencePair], layers: list[int],
           config: RePSConfig, run: TrainingRun) -> SteeringVector:
    (layer,) = layers
    return train_reps(model, pairs, layer, config, run)


METHODS = (
    VectorMethod("reps", "RePS: reference-free bi-directional preference steering",
                 RePSConfig, _train),
)

__all__ = ["METHODS", "RePSConfig", "reps_loss", "train_reps"]

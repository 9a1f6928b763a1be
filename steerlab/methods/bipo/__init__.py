"""BiPO (Cao et al. 2024) and DPO: a steering vector trained with a preference loss, both signs
of the vector (BiPO) or only +1 (DPO). The loss and the two engines are in ``trainer``; the
hyper-parameters in ``config``."""

from __future__ import annotations

from collections.abc import Sequence

from steerlab.data.files import PreferencePair
from steerlab.methods.bipo.config import BiPOConfig
from steerlab.methods.bipo.trainer import Direction, train_bipo, train_dpo
from steerlab.methods.registry import Trainer, VectorMethod
from steerlab.methods.training import TrainingRun
from steerlab.model.handle import ModelHandle
from steerlab.steering.vectors import SteeringVector


def _trainer(direction: Direction) -> Trainer:
    def train(model: ModelHandle, pairs: Sequence[PreferencePair], layers: list[int],
              config: BiPOConfig, run: TrainingRun) -> SteeringVector:
        (layer,) = layers
        return train_bipo(model, pairs, layer, config, direction=direction, seed=run.seed,
                          val_pairs=run.val_pairs, checkpoint=run.checkpoint,
                          callbacks=run.callbacks, progress=run.progress, history=run.history)

    return train


METHODS = (
    VectorMethod("bipo", "BiPO: the vector trained with the bi-directional preference loss",
                 BiPOConfig, _trainer("bi")),
    VectorMethod("dpo", "DPO on the vector: BiPO with the direction fixed to +1",
                 BiPOConfig, _trainer("forward")),
)

__all__ = ["METHODS", "BiPOConfig", "train_bipo", "train_dpo"]

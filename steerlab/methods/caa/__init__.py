"""CAA (contrastive activation addition, Rimsky et al. 2024): the mean activation difference
between chosen and rejected completions (see ``trainer``)."""

from __future__ import annotations

from collections.abc import Sequence

from steerlab.data.files import PreferencePair
from steerlab.methods.caa.trainer import train_caa
from steerlab.methods.registry import MethodConfig, VectorMethod
from steerlab.methods.training import TrainingRun
from steerlab.model.handle import ModelHandle
from steerlab.steering.vectors import SteeringVector


class CAAConfig(MethodConfig):
    """CAA has no hyper-parameters: the vector is a mean, read at the last token."""


def _train(model: ModelHandle, pairs: Sequence[PreferencePair], layers: list[int],
           config: CAAConfig, run: TrainingRun) -> SteeringVector:
    return train_caa(model, pairs, layers, batch_size=run.batch_size, progress=run.progress)


METHODS = (
    VectorMethod("caa", "CAA: mean difference of last-token activations, chosen − rejected",
                 CAAConfig, _train, multi_layer=True),
)

__all__ = ["METHODS", "CAAConfig", "train_caa"]

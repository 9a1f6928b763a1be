"""Trainers that turn preference pairs into a :class:`~steerlab.steering.vectors.SteeringVector`."""

from steerlab.methods.bipo import TrainingHistory, train_bipo, train_dpo
from steerlab.methods.caa import train_caa

__all__ = ["TrainingHistory", "train_bipo", "train_caa", "train_dpo"]

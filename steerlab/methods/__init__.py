"""Trainers that turn preference pairs into a :class:`~steerlab.vectors.SteeringVector`."""

from steerlab.methods.caa import train_caa

__all__ = ["train_caa"]

"""Trainers that turn preference pairs into a
:class:`~steerlab.steering.vectors.SteeringVector`, by name through the registry (one folder per
method: ``caa/``, ``bipo/``; none imports another), the helpers they share (``training``,
``loss_training``, ``contrast``, ``probes``, ``pairs``, ``subsets``), and the baselines they are
compared with (``lora``, ``prompting``)."""

from steerlab.methods.bipo import train_bipo, train_dpo
from steerlab.methods.caa import train_caa
from steerlab.methods.registry import MethodConfig, VectorMethod, get_method, methods, train_vector
from steerlab.methods.training import TrainingHistory, TrainingRun

__all__ = [
    "MethodConfig", "TrainingHistory", "TrainingRun", "VectorMethod", "get_method", "methods",
    "train_bipo", "train_caa", "train_dpo", "train_vector",
]

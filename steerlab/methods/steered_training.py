"""Steering while a model trains: the composition's hooks on for the training steps only.

Preventative steering (Chen et al. 2025, "Persona Vectors") adds a vector toward an unwanted trait
while fine-tuning, so the loss no longer pulls the weights toward it; concept-ablation
fine-tuning (Casademunt et al. 2025) projects a direction out while fine-tuning. Either way the
deployed model runs unsteered, so evaluation and saving run without the hooks.
:class:`TrainingSteering` switches one composition on and off around training steps (``train_lora``
uses it); :class:`SteeringCallback` does the same inside a transformers ``Trainer``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from steerlab.model.handle import ModelHandle
from steerlab.steering.hooks import Edits, Steering
from steerlab.steering.setting import Composition, SteeringSetting, compose

__all__ = ["SteeringCallback", "TrainingSteering"]

SteeringSpec = Composition | SteeringSetting | Sequence[SteeringSetting]
"""A composition, one setting, or settings applied together."""


class TrainingSteering:
    """One composition registered on a model for training steps and removed for everything else.

    Checked when made: every part must steer ``positions="all"`` (a training pass reads its whole
    text at once, so it has no generated tokens: ``"generated"`` would steer nothing and
    ``"prompt"`` everything). The composition is fitted to a model once (vectors and conditions
    checked, decoder layers found, a peft-wrapped model's included); each :meth:`register` then
    only adds the hooks. Parts at multiplier 0 register nothing.
    """

    def __init__(self, steering: SteeringSpec) -> None:
        self.composition = steering if isinstance(steering, Composition) else compose(
            [steering] if isinstance(steering, SteeringSetting) else steering)
        if not self.composition.parts:
            raise ValueError("steering during training needs at least one setting")
        for part in self.composition.parts:
            if part.positions != "all":
                raise ValueError(
                    f"steering during training steers every token: positions={part.positions!r} "
                    "has no meaning in a training pass, which reads prompt and completion at once")
        self.composition.check()
        self._fitted: tuple[object, nn.Module, nn.ModuleList, list[Edits]] | None = None
        self._steering: Steering | None = None

    @property
    def active(self) -> bool:
        """Whether hooks are registered now (never at multiplier 0)."""
        return self._steering is not None and self._steering.active

    def register(self, model: ModelHandle | nn.Module) -> None:
        """Steer ``model`` until :meth:`remove` (already steering it: nothing changes)."""
        if self._steering is not None and self._fitted is not None and self._fitted[0] is model:
            return
        self.remove()
        if self._fitted is None or self._fitted[0] is not model:
            hf_model, layers = self.composition.fit(model)
            self._fitted = (model, hf_model, layers, self.composition.edits())
        _, hf_model, layers, edits = self._fitted
        self._steering = Steering(hf_model, layers, edits)

    def remove(self) -> None:
        """Detach the hooks; safe to call when none are registered."""
        if self._steering is not None:
            self._steering.remove()
            self._steering = None

    @contextmanager
    def step(self, model: ModelHandle | nn.Module) -> Iterator[None]:
        """Steer ``model`` for the body (a training step's forward and backward passes)."""
        self.register(model)
        try:
            yield
        finally:
            self.remove()


class SteeringCallback(TrainerCallback):
    """Steer a transformers ``Trainer``'s model during its training steps.

    The hooks are registered on the ``model`` the trainer hands its callbacks (a peft-wrapped
    model included) at ``on_step_begin`` and removed at ``on_step_end``: in transformers' loop
    the two bracket every micro-batch of one optimizer step (forward, backward, the step), and the
    trainer logs, evaluates and saves after ``on_step_end``, so evaluation and checkpoints run
    unsteered. With ``during_evaluation`` the hooks stay from ``on_train_begin`` to
    ``on_train_end``, evaluations during training included. They are also removed at
    ``on_epoch_end`` (a step stopped between micro-batches never reaches ``on_step_end``) and at
    ``on_train_end``. A trainer that raises mid-step calls no callback: use the callback as a
    context manager around ``trainer.train()`` (or call :meth:`remove`) to detach them then too.
    """

    def __init__(self, steering: SteeringSpec, during_evaluation: bool = False) -> None:
        self.steering = TrainingSteering(steering)
        self.during_evaluation = during_evaluation

    @property
    def composition(self) -> Composition:
        return self.steering.composition

    @property
    def active(self) -> bool:
        """Whether the hooks are registered now."""
        return self.steering.active

    def remove(self) -> None:
        """Detach the hooks (safe to call twice)."""
        self.steering.remove()

    def __enter__(self) -> SteeringCallback:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, model: nn.Module | None = None,
                       **kwargs: Any) -> None:
        self.remove()  # hooks left by an earlier run that raised
        if self.during_evaluation:
            self.steering.register(_given(model))

    def on_step_begin(self, args: TrainingArguments, state: TrainerState,
                      control: TrainerControl, model: nn.Module | None = None,
                      **kwargs: Any) -> None:
        self.steering.register(_given(model))

    def on_step_end(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, **kwargs: Any) -> None:
        if not self.during_evaluation:
            self.remove()

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState,
                     control: TrainerControl, **kwargs: Any) -> None:
        if not self.during_evaluation:
            self.remove()

    def on_train_end(self, args: TrainingArguments, state: TrainerState,
                     control: TrainerControl, **kwargs: Any) -> None:
        self.remove()


def _given(model: nn.Module | None) -> nn.Module:
    if model is None:
        raise ValueError("SteeringCallback needs the trainer's model in the callback's arguments")
    return model

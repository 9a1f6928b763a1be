"""The vector-training methods by name: each registers one config type (its hyper-parameters,
defaults stated there once) and a trainer; the library, ``steerlab train`` and the run config
all dispatch through here.

A method is a folder under ``steerlab/methods/`` whose package defines ``METHODS`` (a tuple of
:class:`VectorMethod`); adding one touches that folder and nothing else. A method from another
installed package is a module with ``METHODS`` named in that package's entry points, group
:data:`ENTRY_POINTS` (``[project.entry-points."steerlab.methods"]`` in its pyproject.toml).
Method folders import no other method folder (an import-linter contract): what several share
lives beside this registry (``loss_training``, ``contrast``, ``probes``, ``pairs``).
"""

from __future__ import annotations

import pkgutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel, ConfigDict

from steerlab.data.files import PreferencePair, check_preferences
from steerlab.methods.training import TrainingRun
from steerlab.model.handle import ModelHandle
from steerlab.steering.vectors import SteeringVector


class MethodConfig(BaseModel):
    """Base of every method's hyper-parameters: strict (an unknown key or a NaN is an error),
    frozen, and each default stated once, on the field."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def fixed_layers(self) -> list[int] | None:
        """The only layers this config can train at, where the method fixes them (an SAE's
        features read one layer); None: any layer. A run config is checked against it."""
        return None


Trainer = Callable[[ModelHandle, Sequence[PreferencePair], list[int], Any, TrainingRun],
                   SteeringVector]
"""(model, pairs, layers, config, run) → a vector at those layers."""


@dataclass(frozen=True)
class VectorMethod:
    """A way to turn preference pairs into a steering vector."""

    name: str
    description: str
    config: type[MethodConfig]
    train: Trainer
    multi_layer: bool = False
    """Whether one call trains every layer asked for (CAA reads them all in one pass);
    otherwise the method trains one layer per call."""
    picks_layers: bool = False
    """Whether the method chooses where to act among the layers given (ITI's heads), so its
    vector is one whole, not one per layer."""
    counted_as: str | None = None
    """A method whose passes equal this one's, run in its place where the run plan counts work
    on a narrower stand-in model that this method cannot run on (an SAE's rows fit only the
    real model's width)."""

    def defaults(self) -> dict[str, Any]:
        """The config's fields and their defaults (what ``steerlab methods`` lists); a field
        without one says it is required."""
        return {name: "(required)" if field.is_required() else field.default
                for name, field in self.config.model_fields.items()}


ENTRY_POINTS = "steerlab.methods"
"""The entry-point group through which other installed packages add methods."""


@cache
def methods() -> dict[str, VectorMethod]:
    """Every registered method by name, found once: each subpackage of ``steerlab.methods``
    that defines ``METHODS`` (imported here by name, the way a plugin is loaded), then each
    module the :data:`ENTRY_POINTS` group names."""
    package = import_module("steerlab.methods")
    modules: list[tuple[str, Callable[[], object]]] = [
        (f"steerlab.methods.{module.name}",
         lambda name=module.name: import_module(f"steerlab.methods.{name}"))
        for module in pkgutil.iter_modules(package.__path__) if module.ispkg]
    for point in entry_points(group=ENTRY_POINTS):
        owner = point.dist.name if point.dist is not None else "an installed package"
        modules.append((f"entry point {point.name} = {point.value} of {owner}", point.load))
    found: dict[str, VectorMethod] = {}
    for where, load in modules:
        for method in _declared(where, load()):
            if method.name in found:
                raise RuntimeError(f"two methods are named {method.name!r} (the second in "
                                   f"{where})")
            found[method.name] = method
    return dict(sorted(found.items()))


def _declared(where: str, module: object) -> Iterable[VectorMethod]:
    """A plugin module's ``METHODS``, each checked to be a :class:`VectorMethod`."""
    declared = getattr(module, "METHODS", ())
    for method in declared:
        if not isinstance(method, VectorMethod):
            raise RuntimeError(f"{where}: METHODS holds {method!r}, not a VectorMethod")
    return declared


def get_method(name: str) -> VectorMethod:
    """The method called ``name``; a ValueError listing the others when there is none."""
    registered = methods()
    if name not in registered:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(registered)}")
    return registered[name]


def train_vector(
    model: ModelHandle,
    pairs: Sequence[PreferencePair],
    method: str,
    layers: int | Sequence[int],
    config: MethodConfig | dict[str, Any] | None = None,
    run: TrainingRun | None = None,
) -> SteeringVector:
    """Train ``method``'s vector at ``layers`` (one layer unless the method takes several);
    ``config`` is the method's config or a dict of its fields (validated against it)."""
    spec = get_method(method)
    check_preferences(pairs)
    layers = [layers] if isinstance(layers, int) else list(layers)
    if not spec.multi_layer and len(layers) != 1:
        raise ValueError(f"{method} trains one layer at a time; got layers {layers}")
    if not isinstance(config, spec.config):
        config = spec.config.model_validate(config or {})
    return spec.train(model, pairs, layers, config, run or TrainingRun())

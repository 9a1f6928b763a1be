"""The steering setting: what one vector adds or removes where, and compositions of settings.

A :class:`SteeringSetting` is the one description of steering used everywhere: the library's
``vector.apply``, likelihood sweeps (:class:`~steerlab.evaluation.likelihood.Sweep`, one setting
at several multipliers), open-ended arms, the run config's grid, the server's ``steering`` terms
and the chat. A :class:`Composition` is a list of settings; applied, it is one
:class:`~steerlab.steering.hooks.Steering` whose additions are the settings' additions summed per
layer (so it equals applying each on its own, nested) and whose ablations project each ablating
setting's direction out first. A setting with a ``condition``
(:class:`~steerlab.steering.conditions.Condition`) acts only on the rows whose prompt meets it;
settings sharing a condition and positions are summed under one gate. The 2-D grid of two
behaviours (BiPO's composition result) is evaluated by
:func:`steerlab.evaluation.likelihood.composition_grid` and read back from records by
:mod:`steerlab.analysis.grid`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from steerlab.records import Record
from steerlab.steering.edits import EDITS, Edit, LayerEdits, combined, placed_edits
from steerlab.steering.hooks import POSITIONS, Edits, Positions, Steering, check_layers

if TYPE_CHECKING:
    from steerlab.model.handle import ModelHandle
    from steerlab.steering.conditions import Condition
    from steerlab.steering.vectors import SteeringVector

Intervention = Literal["add", "ablate", "angular"]
INTERVENTIONS: tuple[str, ...] = tuple(EDITS)
"""The interventions by name, each an :class:`~steerlab.steering.edits.Edit` class in
:data:`~steerlab.steering.edits.EDITS` (a test checks ``Intervention`` lists the same)."""
STEERED = {name: kind.label for name, kind in EDITS.items()}
"""How output labels name a setting of each intervention (``steered+4``, ``ablated+1``, …)."""


@dataclass(frozen=True)
class SteeringSetting:
    """What one vector adds or removes, where.

    ``intervention="add"`` adds ``multiplier`` × the vector (``norm_ratio`` rescales it first, see
    :meth:`SteeringVector.additions`); ``"ablate"`` projects the vector's direction out of each
    layer's output with strength ``multiplier`` (1 removes the component, 0 does nothing);
    ``"angular"`` turns each layer's output toward the vector's direction by ``multiplier``
    degrees, its norm kept (angular steering, Vu & Nguyen 2025; negative turns away).
    ``layers`` places the vector as in :meth:`SteeringVector.additions`; ``positions`` picks the
    tokens (``"all"``, ``"prompt"``, ``"generated"``). With a ``condition`` the setting acts
    only on the rows (sequences) whose prompt meets it.
    """

    vector: SteeringVector
    multiplier: float = 1.0
    layers: list[int] | None = None
    norm_ratio: float | None = None
    positions: Positions = "all"
    intervention: Intervention = "add"
    condition: Condition | None = None

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.intervention not in INTERVENTIONS:
            raise ValueError(
                f"intervention must be one of {INTERVENTIONS}, got {self.intervention!r}")
        kind = EDITS[self.intervention]
        kind.check_amount(self.multiplier)
        if self.norm_ratio is not None:
            self.vector.check_norm_ratio(self.norm_ratio)
        if not kind.summed and self.norm_ratio is not None:
            raise ValueError(f"norm_ratio scales an added vector; {self.intervention} uses only "
                             "its direction")

    def key(self) -> tuple:
        """What makes two settings steer alike, every field in order (the vector by its id, the
        layers as placed, the condition by identity): a new field joins it with no other change.
        Hashable: the server batches requests by it."""
        values = []
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "vector":
                value = value.id
            elif item.name == "layers":
                value = tuple(self.placed())
            elif item.name == "condition":
                value = None if value is None else id(value)
            values.append(value)
        return tuple(values)

    def placed(self) -> dict[int, torch.Tensor]:
        """The vector's direction at each layer this part acts on (multiplier not applied)."""
        return self.vector.additions(1.0, self.layers)

    def additions(self) -> dict[int, torch.Tensor]:
        """What this setting adds at each layer (nothing unless it adds)."""
        if self.intervention != "add":
            return {}
        return self.vector.additions(self.multiplier, self.layers, self.norm_ratio)

    def edits(self) -> dict[int, Edit]:
        """The edit this setting makes at each layer: its addition, or its unit direction
        ablated or turned toward with this setting's strength or angle."""
        kind = EDITS[self.intervention]
        placed = self.additions() if kind.summed else self.placed()
        return placed_edits(kind, placed, self.multiplier, self.vector.id)

    def apply(self, model: ModelHandle | nn.Module) -> Steering:
        """Steer ``model`` with this setting alone (see :meth:`Composition.apply`)."""
        return Composition((self,)).apply(model)

    def at(self, multiplier: float) -> SteeringSetting:
        """This setting at another multiplier (a sweep's step)."""
        return replace(self, multiplier=multiplier)

    def describe(self) -> Record:
        """This setting as record fields (positions, intervention and condition only when they
        are not the defaults, so older records keep their keys)."""
        fields: Record = {"vector_id": self.vector.id, "multiplier": float(self.multiplier),
                          "layers": sorted(self.placed()), "norm_ratio": self.norm_ratio}
        if self.positions != "all":
            fields["positions"] = self.positions
        if self.intervention != "add":
            fields["intervention"] = self.intervention
        if self.condition is not None:
            fields["condition"] = self.condition.describe()
        return fields


def _summed_additions(parts: Iterable[SteeringSetting]) -> dict[int, torch.Tensor]:
    total: dict[int, torch.Tensor] = {}
    for part in parts:
        for layer, vector in part.additions().items():
            total[layer] = total[layer] + vector if layer in total else vector
    return total


@dataclass(frozen=True)
class Composition:
    """Several parts applied together as one steering (see the module docstring)."""

    parts: tuple[SteeringSetting, ...]

    def additions(self) -> dict[int, torch.Tensor]:
        """Every part's additions summed per layer (conditions aside: what every row gets when
        every condition holds)."""
        return _summed_additions(self.parts)

    def conditions(self) -> list[Condition]:
        """The distinct conditions of the parts, in part order."""
        found = {p.condition.id: p.condition for p in self.parts if p.condition is not None}
        return list(found.values())

    def check(self) -> None:
        """Raise now if some part cannot apply (a layer it lacks, residual norms it needs for
        its norm ratio, a zero direction to ablate, an edit below its condition's layer), rather
        than at the first forward pass."""
        for edits in self.edits():
            edits.check_gate()

    def layers(self) -> list[int]:
        """Every layer some part acts on, whatever its multiplier."""
        return sorted({layer for part in self.parts for layer in part.placed()})

    def lowest_layer(self) -> int:
        """The lowest layer the steering touches: edited, or read by a condition."""
        return min([*self.layers(), *(c.layer for c in self.conditions())])

    def fit(self, model: ModelHandle | nn.Module) -> tuple[nn.Module, nn.ModuleList]:
        """The Hugging Face model and its decoder layers, once every vector and condition is
        checked against it and every layer acted on is one it has (a ValueError otherwise)."""
        if not self.parts:
            raise ValueError("a composition needs at least one part")
        for part in self.parts[1:]:
            part.vector.target(model)
        hf_model, decoder_layers = self.parts[0].vector.target(model)
        for condition in self.conditions():
            condition.check_compatible(hf_model)
        check_layers(self.layers(), len(decoder_layers))
        return hf_model, decoder_layers

    def edits(self) -> list[Edits]:
        """The settings as edit groups: those sharing positions and condition summed into one
        group; unconditional groups first, then conditional ones, each in order of appearance."""
        groups: dict[tuple[str, str | None, str], list[SteeringSetting]] = {}
        for setting in sorted(self.parts, key=lambda s: s.condition is not None):
            key = (setting.positions, setting.condition.id if setting.condition else None,
                   setting.vector.meta.site)
            groups.setdefault(key, []).append(setting)
        result = []
        for members in groups.values():
            per_layer: LayerEdits = defaultdict(list)
            for member in members:
                for layer, edit in member.edits().items():
                    per_layer[layer].append(edit)
            result.append(Edits({layer: combined(edits) for layer, edits in per_layer.items()},
                                members[0].positions, members[0].condition,
                                members[0].vector.meta.site))
        return result

    def apply(self, model: ModelHandle | nn.Module) -> Steering:
        """Steer ``model`` with every setting at once; an active :class:`Steering` (a context
        manager, or call ``.remove()``). Each vector and condition is checked against the model
        first."""
        hf_model, decoder_layers = self.fit(model)
        return Steering(hf_model, decoder_layers, self.edits())

    def describe(self) -> list[Record]:
        """The parts as record fields."""
        return [part.describe() for part in self.parts]


SettingSpec = SteeringSetting | tuple
"""A :class:`SteeringSetting`, or a tuple of its fields in order: (vector, multiplier, layers,
norm_ratio, intervention, condition)."""


def compose(parts: Iterable[SettingSpec]) -> Composition:
    """A composition from parts or tuples ``(vector, multiplier[, layers[, norm_ratio]])``."""
    return Composition(tuple(p if isinstance(p, SteeringSetting) else SteeringSetting(*p)
                             for p in parts))

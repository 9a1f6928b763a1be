"""The edits steering makes to a site's activations: one class per intervention.

An :class:`Edit` is one operation at one layer, a direction and an amount: :class:`Add` adds a
vector (its amount 1: the multiplier and norm ratio are in the vector), :class:`Ablate`
projects a unit direction out with a strength, :class:`Rotate` turns activations toward a unit
direction by an angle. Each class says how it edits one activation tensor (``apply``: the
transformers hooks of :class:`~steerlab.steering.hooks.Steering`) and how it edits a flat batch
whose every token carries its own direction and amount (``apply_rows``: the vLLM tables of
:mod:`steerlab.engine.graph_edits`), so a new intervention is one class here and its name in
:data:`EDITS` (and in the ``Intervention`` type of :mod:`steerlab.steering.setting`, which a
test holds equal); the setting, the CLI, the server, the run config and both engines pick it
up. At a layer, edits apply by their class's ``order`` (ablations, then rotations, then
additions), each kind in the order given.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch


@dataclass(frozen=True, eq=False)
class Edit(ABC):
    """One operation on a site's activations: ``direction`` (D,) and ``amount``."""

    direction: torch.Tensor
    amount: float = 1.0

    kind: ClassVar[str]
    """The name the vLLM tables and their term counts know it by."""
    order: ClassVar[int]
    """Where it applies at a layer among the kinds (lower first; additions, summed, come last
    in both engines)."""
    label: ClassVar[str]
    """How output labels name a setting of this kind (``steered+4``, ``ablated+1``)."""
    limited: ClassVar[bool] = True
    """Whether a server's multiplier limit bounds its amount (an angle is bounded by itself)."""
    amount_table: ClassVar[str | None]
    """The name of the vLLM table holding its amounts (None: the amount is always 1)."""
    summed: ClassVar[bool] = False
    """Whether edits of this kind in one group add up into one (additions do)."""
    plural: ClassVar[str]
    """What messages call several of them."""
    terms: ClassVar[tuple[int, int]]
    """How many of them one token may carry in a vLLM engine by default, on the residual
    stream and on the heads' outputs (each costs a few operations at every layer)."""

    def acts(self) -> bool:
        """Whether it changes anything (an edit that does not registers no hook)."""
        return self.amount != 0

    @classmethod
    def check_amount(cls, amount: float) -> None:
        """Raise ValueError for a multiplier this kind cannot use."""

    def table_amount(self) -> float:
        """The amount as the vLLM tables hold it."""
        return float(self.amount)

    @abstractmethod
    def apply(self, hidden: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        """``hidden`` (…, D) edited, ``direction`` being this edit's, cast to its dtype and
        device."""

    @staticmethod
    @abstractmethod
    def apply_rows(hidden: torch.Tensor, directions: torch.Tensor,
                   amounts: torch.Tensor | None) -> torch.Tensor:
        """``hidden`` (T, D) with each row edited by its own direction (T, D) and table amount
        (T,; None for a kind without amounts); a row whose direction and amount are zero comes
        back exactly as it was. For a summed kind, ``directions`` is each row's sum."""


@dataclass(frozen=True, eq=False)
class Add(Edit):
    """Add ``direction`` (the exact vector: multiplier and norm ratio applied)."""

    kind: ClassVar[str] = "add"
    order: ClassVar[int] = 100
    label: ClassVar[str] = "steered"
    amount_table: ClassVar[str | None] = None
    summed: ClassVar[bool] = True
    plural: ClassVar[str] = "additions"
    terms: ClassVar[tuple[int, int]] = (4, 4)

    def acts(self) -> bool:
        return bool(self.direction.any())

    def apply(self, hidden: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        return hidden + direction

    @staticmethod
    def apply_rows(hidden: torch.Tensor, directions: torch.Tensor,
                   amounts: torch.Tensor | None) -> torch.Tensor:
        return hidden + directions


def project_out(hidden: torch.Tensor, unit: torch.Tensor, strength: float) -> torch.Tensor:
    """``hidden`` (…, D) less ``strength`` × its component along ``unit`` (directional ablation:
    1 removes the component, 2 reflects it)."""
    return hidden - (strength * (hidden @ unit)).unsqueeze(-1) * unit


@dataclass(frozen=True, eq=False)
class Ablate(Edit):
    """Project the unit ``direction`` out with strength ``amount`` (:func:`project_out`)."""

    kind: ClassVar[str] = "ablate"
    order: ClassVar[int] = 0
    label: ClassVar[str] = "ablated"
    amount_table: ClassVar[str | None] = "strength"
    plural: ClassVar[str] = "ablations"
    terms: ClassVar[tuple[int, int]] = (2, 0)

    def apply(self, hidden: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        return project_out(hidden, direction, self.amount)

    @staticmethod
    def apply_rows(hidden: torch.Tensor, directions: torch.Tensor,
                   amounts: torch.Tensor | None) -> torch.Tensor:
        """Float32 arithmetic; a row with a zero unit and strength subtracts exact zeros."""
        h, unit = hidden.float(), directions.float()
        along = (h * unit).sum(dim=-1, keepdim=True)
        return (h - amounts.unsqueeze(-1) * along * unit).to(hidden.dtype)


def rotate_toward(hidden: torch.Tensor, unit: torch.Tensor, degrees: float) -> torch.Tensor:
    """Each vector of ``hidden`` (…, D) turned toward ``unit`` by ``degrees`` in the plane the
    two span, its norm kept (angular steering, Vu & Nguyen 2025): the angle φ to ``unit``
    becomes φ − degrees, held within [0°, 180°] (negative degrees turn away). A vector along
    ``unit`` (no plane) is left as it is."""
    along = hidden @ unit
    across = hidden - along.unsqueeze(-1) * unit
    width = across.norm(dim=-1)
    angle = torch.atan2(width, along) - math.radians(degrees)
    angle = angle.clamp(0.0, math.pi)
    length = hidden.norm(dim=-1)
    turned = (length * torch.cos(angle)).unsqueeze(-1) * unit + (
        (length * torch.sin(angle)) / width.clamp_min(1e-30)).unsqueeze(-1) * across
    return torch.where((width > 0).unsqueeze(-1), turned, hidden)


@dataclass(frozen=True, eq=False)
class Rotate(Edit):
    """Turn toward the unit ``direction`` by ``amount`` degrees (:func:`rotate_toward`)."""

    kind: ClassVar[str] = "rotate"
    order: ClassVar[int] = 1
    label: ClassVar[str] = "rotated"
    limited: ClassVar[bool] = False
    amount_table: ClassVar[str | None] = "angle"
    plural: ClassVar[str] = "rotations"
    terms: ClassVar[tuple[int, int]] = (1, 0)

    @classmethod
    def check_amount(cls, amount: float) -> None:
        if not -180 <= amount <= 180:
            raise ValueError(f"an angular multiplier is an angle in degrees within [-180, 180], "
                             f"got {amount:g}")

    def table_amount(self) -> float:
        return math.radians(float(self.amount))

    def apply(self, hidden: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        return rotate_toward(hidden, direction, self.amount)

    @staticmethod
    def apply_rows(hidden: torch.Tensor, directions: torch.Tensor,
                   amounts: torch.Tensor | None) -> torch.Tensor:
        """:func:`rotate_toward` row by row in float32, the angles in radians; rows with angle
        0, or along their unit, unchanged."""
        h, unit = hidden.float(), directions.float()
        along = (h * unit).sum(dim=-1)
        across = h - along.unsqueeze(-1) * unit
        width = across.norm(dim=-1)
        angle = (torch.atan2(width, along) - amounts).clamp(0.0, math.pi)
        length = h.norm(dim=-1)
        turned = (length * torch.cos(angle)).unsqueeze(-1) * unit + (
            (length * torch.sin(angle)) / width.clamp_min(1e-30)).unsqueeze(-1) * across
        keep = ((amounts != 0) & (width > 0)).unsqueeze(-1)
        return torch.where(keep, turned.to(hidden.dtype), hidden)


EDITS: dict[str, type[Edit]] = {"add": Add, "ablate": Ablate, "angular": Rotate}
"""Every intervention by the name a setting gives it (``intervention="angular"``)."""

def placed_edits(kind: type[Edit], placed: dict[int, torch.Tensor], amount: float,
                 name: str) -> dict[int, Edit]:
    """An edit of ``kind`` at each layer of ``placed`` (a vector's direction there): additions
    take the vector as given, the other kinds its unit direction with ``amount``; a zero
    direction, which has nothing to ablate or turn toward, is an error naming vector ``name``."""
    if kind.summed:
        return {layer: kind(vector) for layer, vector in placed.items()}
    result: dict[int, Edit] = {}
    for layer, direction in placed.items():
        norm = direction.norm()
        if norm == 0:
            raise ValueError(f"vector {name} is zero at layer {layer}: no direction to "
                             f"{kind.kind}")
        result[layer] = kind(direction / norm, float(amount))
    return result


LayerEdits = dict[int, list[Edit]]
"""Per layer, the edits made there, in order."""


def ordered(edits: list[Edit]) -> list[Edit]:
    """``edits`` in the order they apply: by kind (``order``), each kind as given."""
    return sorted(edits, key=lambda edit: edit.order)


def combined(edits: list[Edit]) -> list[Edit]:
    """``edits`` of one group at one layer in order, those of a summed kind added into one."""
    out: list[Edit] = []
    for edit in ordered(edits):
        last = out[-1] if out else None
        if last is not None and type(last) is type(edit) and edit.summed:
            out[-1] = type(edit)(last.direction + edit.direction)
        else:
            out.append(edit)
    return out

"""Each request's steering on its own tokens, as tensor operations a compiled graph keeps.

vLLM compiles the model's forward once (torch.compile; CUDA graphs on a GPU): Python that
decides per pass which rows to edit cannot run inside it. So steering lives in static tables
the graph reads, :class:`SteeringTables`, whose addresses never change and whose contents are
written before each pass: per site (a decoder layer's output, or its attention projection's
input) and layer, each *slot*'s addition, ablation (unit direction, strength) and rotation (unit
direction, angle); and per token of the flat batch and kind of edit, the slots that act on it
(0: the empty row). At each layer every token gathers its slots' rows and applies, in
:class:`~steerlab.steering.hooks.Steering`'s order, its ablations, then rotations, then
additions. A token with no slot keeps its values: its ablations subtract exact zeros, its
rotations are not selected (``torch.where``), its additions are zero rows; so unsteered
requests give vLLM's own output. The same operations run eagerly. How many edits of each kind
one token may carry is fixed when the engine starts (:data:`TERM_VARIABLES`): each is a few
operations at every layer of the graph.

A slot holds one *unit* of a request's edit group: the group's addition and its first ablation
and rotation at every layer (a group with several ablations or rotations at one layer takes one
slot for each). :class:`SlotPlanner` keeps the slots of recent steering values (least recently
used out first, never one the pass uses) and turns a pass's requests into the token tables.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from steerlab.engine.requests import SteeringRequestError
from steerlab.steering.edits import EDITS, Add, Edit
from steerlab.steering.hooks import Edits, Site

SITES: tuple[Site, ...] = ("residual", "attention")
BY_KIND: dict[str, type[Edit]] = {kind.kind: kind for kind in sorted(
    EDITS.values(), key=lambda kind: not kind.summed)}
"""Each edit class by its table name, additions first (the order of the term counts); a slot
may hold one of each at a layer."""
KINDS = tuple(BY_KIND)
RESHAPING = sorted((kind for kind in EDITS.values() if not kind.summed), key=lambda k: k.order)
"""The edits that reshape a token's stream, in the order they apply (before additions)."""

SLOTS = int(os.environ.get("STEERLAB_VLLM_SLOTS", "256"))
"""Table rows per site and layer, row 0 the empty one: how many units of distinct steering an
engine holds at once ($STEERLAB_VLLM_SLOTS). A pass whose requests carry more distinct units
than that cannot run (the engine fails); each row costs layers × width × 3 values (0.8 MB on
Llama 3.1 8B in bf16)."""

TERM_VARIABLES: dict[Site, tuple[str, str]] = {
    site: (variable, ",".join(str(kind.terms[index]) for kind in BY_KIND.values()))
    for index, (site, variable) in enumerate((("residual", "STEERLAB_VLLM_TERMS"),
                                              ("attention", "STEERLAB_VLLM_HEAD_TERMS")))}
"""Per site, the variable that sets how many additions, ablations and rotations one token may
carry there, and its default. Each term is a few tensor operations at every layer of the
compiled graph (its size, so compile time and per-token cost, grows with them), paid by every
token: the defaults carry a composition of four additions, two ablations and a rotation on the
residual stream, and additions only on the heads' outputs (ITI's vectors)."""


NOUNS = {kind.kind: kind.plural for kind in EDITS.values()}


class SteeringCapacityError(SteeringRequestError):
    """A request's steering needs more table room than the engine was started with."""


def configured_terms() -> dict[Site, dict[str, int]]:
    """Each site's terms per kind, read from :data:`TERM_VARIABLES` (a bad value named)."""
    terms = {}
    for site, (variable, default) in TERM_VARIABLES.items():
        text = os.environ.get(variable, default)
        try:
            counts = [int(part) for part in text.split(",")]
        except ValueError:
            counts = []
        if len(counts) != len(KINDS) or min(counts) < 0:
            raise ValueError(f"${variable}={text!r}: give {len(KINDS)} counts, "
                             f"{','.join(NOUNS[kind] for kind in KINDS)} (default {default})")
        terms[site] = dict(zip(KINDS, counts))
    return terms


@dataclass
class Unit:
    """One slot's content: per kind of edit and layer at most one edit, all at one site."""

    site: Site
    edits: dict[str, dict[int, Edit]] = field(default_factory=dict)

    def kinds(self) -> tuple[str, ...]:
        """The kinds of edit this unit makes somewhere, in :data:`KINDS` order."""
        return tuple(kind for kind in KINDS if self.edits.get(kind))


def units(group: Edits) -> list[Unit]:
    """A group's edits as slot units: unit k holds each layer's k-th edit of each kind (its
    additions, summed into one per layer, all in unit 0)."""
    out: list[Unit] = []
    for layer, edits in group.edits.items():
        seen: dict[str, int] = {}
        for edit in edits:
            k = seen[edit.kind] = seen.get(edit.kind, -1) + 1
            while len(out) <= k:
                out.append(Unit(group.site))
            out[k].edits.setdefault(edit.kind, {})[layer] = edit
    return out or [Unit(group.site)]


def check_capacity(groups: Sequence[Edits],
                   terms: dict[Site, dict[str, int]] | None = None) -> None:
    """Refuse steering (a request's edit groups) that puts more edits of a kind on one token
    than the engine's terms allow, before it reaches the engine."""
    terms = terms or configured_terms()
    for prompt in (True, False):
        counts: dict[tuple[Site, str], int] = {}
        for group in groups:
            if group.positions != "all" and (group.positions == "prompt") != prompt:
                continue
            for unit in units(group):
                for kind in unit.kinds():
                    counts[unit.site, kind] = counts.get((unit.site, kind), 0) + 1
        for (site, kind), count in counts.items():
            if count > terms[site][kind]:
                variable, default = TERM_VARIABLES[site]
                raise SteeringCapacityError(
                    f"steering: {count} {NOUNS[kind]} on one token at the {site} site; this "
                    f"engine allows {terms[site][kind]} (${variable}, additions,ablations,"
                    f"rotations, default {default})")


class SteeringTables(nn.Module):
    """The static tables (module buffers, so a compiled graph takes them as fixed inputs): per
    site, kind and layer each slot's row (directions in the model's dtype, as the transformers
    path casts them; strengths and angles in float32), and per token the slots of each kind
    acting on it."""

    def __init__(self, n_layers: int, widths: dict[Site, int], max_tokens: int,
                 device: torch.device, dtype: torch.dtype, slots: int = SLOTS,
                 terms: dict[Site, dict[str, int]] | None = None) -> None:
        super().__init__()
        self.slots, self.terms = slots, terms or configured_terms()
        for site in SITES:
            width, counts = widths[site], self.terms[site]
            for kind, edit in BY_KIND.items():
                if not counts[kind]:
                    continue
                self.register_buffer(f"{site}_{kind}", torch.zeros(
                    (n_layers, slots, width), dtype=dtype, device=device), persistent=False)
                if edit.amount_table:
                    self.register_buffer(f"{site}_{edit.amount_table}", torch.zeros(
                        (n_layers, slots), dtype=torch.float32, device=device),
                        persistent=False)
                self.register_buffer(f"{site}_{kind}_slots", torch.zeros(
                    max_tokens, counts[kind], dtype=torch.long, device=device), persistent=False)

    def edits(self, site: Site) -> bool:
        """Whether tokens may carry any edit at ``site``."""
        return any(self.terms[site].values())

    def table(self, site: Site, name: str) -> torch.Tensor:
        return getattr(self, f"{site}_{name}")

    # ---- written before a pass (eagerly) ----------------------------------------------------

    @torch.no_grad()
    def write(self, slot: int, unit: Unit) -> None:
        """Fill ``slot``'s rows at every layer from ``unit`` (zero where it does nothing)."""
        for site in SITES:
            for kind, edit in BY_KIND.items():
                for name in (kind, edit.amount_table):
                    if name and hasattr(self, f"{site}_{name}"):
                        self.table(site, name)[:, slot].zero_()
        for kind, by_layer in unit.edits.items():
            amounts = BY_KIND[kind].amount_table
            for layer, edit in by_layer.items():
                self.table(unit.site, kind)[layer, slot] = edit.direction
                if amounts:
                    self.table(unit.site, amounts)[layer, slot] = edit.table_amount()

    # ---- read inside the graph ----------------------------------------------------------------

    def edit(self, site: Site, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden`` (T, D) at ``site`` of ``layer`` with each token's slots applied."""
        reshaped, _, added = self._edits(site, layer, hidden)
        return reshaped if added is None else Add.apply_rows(reshaped, added, None)

    def edit_pair(self, layer: int, hidden: torch.Tensor,
                  residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A vLLM decoder layer's output, the stream in two parts (``hidden + residual``): an
        addition goes to ``hidden``; a token whose stream an ablation or rotation reshapes gets
        the edited stream and a zero residual."""
        counts = self.terms["residual"]
        if not (counts["ablate"] or counts["rotate"]):
            _, _, added = self._edits("residual", layer, hidden, reshape=False)
            return (hidden if added is None else Add.apply_rows(hidden, added, None)), residual
        stream, reshaping, added = self._edits("residual", layer, hidden + residual)
        if added is not None:
            stream = Add.apply_rows(stream, added, None)
            hidden = Add.apply_rows(hidden, added, None)
        return (torch.where(reshaping, stream, hidden),
                torch.where(reshaping, torch.zeros_like(residual), residual))

    def _edits(self, site: Site, layer: int, hidden: torch.Tensor, reshape: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``hidden`` after every slot's reshaping edits (ablations, then rotations), a (T, 1)
        mask of the tokens those may change (None without any), and each token's additions
        summed (None when the site takes none)."""
        tokens, counts = hidden.shape[0], self.terms[site]
        changing = None
        for edit in RESHAPING:
            if not (reshape and counts[edit.kind]):
                continue
            slots = self.table(site, f"{edit.kind}_slots")[:tokens]
            units = self.table(site, edit.kind)[layer][slots]
            amounts = self.table(site, edit.amount_table)[layer][slots]
            for term in range(counts[edit.kind]):
                hidden = edit.apply_rows(hidden, units[:, term], amounts[:, term])
            acting = (amounts != 0).any(dim=-1, keepdim=True)
            changing = acting if changing is None else changing | acting
        added = None
        if counts[Add.kind]:
            slots = self.table(site, f"{Add.kind}_slots")[:tokens]
            added = self.table(site, Add.kind)[layer][slots].sum(dim=1)
        return hidden, changing, added


Placed = tuple[int, Site, tuple[str, ...]]
"""A unit in the tables: its slot, its site and the kinds of edit it makes."""


@dataclass(frozen=True)
class PlanSlots:
    """A steering value's slots: per edit group, its positions and its units' places."""

    groups: tuple[tuple[str, tuple[Placed, ...]], ...]

    def placed(self, prompt: bool) -> list[Placed]:
        """The units acting on a prompt token (``prompt``) or a generated one, in order."""
        return [unit for positions, placed in self.groups
                if positions == "all" or (positions == "prompt") == prompt for unit in placed]


@dataclass(frozen=True)
class Span:
    """One request's tokens in the flat batch: rows ``start`` … ``end − 1`` at absolute
    positions ``first`` …, its prompt's length, and its steering's slots."""

    start: int
    end: int
    first: int
    prompt_len: int
    plan: PlanSlots


class SlotPlanner:
    """Which slots hold which steering value's units (least recently used given back first)."""

    def __init__(self, tables: SteeringTables) -> None:
        self.tables = tables
        self._plans: OrderedDict[str, PlanSlots] = OrderedDict()
        self._free = list(range(tables.slots - 1, 0, -1))
        self._dirty = 0  # token rows the last pass wrote (zeroed before they are read again)

    def plan(self, key: str, groups: Sequence[Edits], busy: set[str]) -> PlanSlots:
        """The slots of steering value ``key`` (resolved into ``groups``), written into the
        tables on first use; values in ``busy`` (this pass's) are never given back."""
        if key in self._plans:
            self._plans.move_to_end(key)
            return self._plans[key]
        check_capacity(groups, self.tables.terms)
        made = [(group, units(group)) for group in groups]
        needed = sum(len(u) for _, u in made)
        if needed > self.tables.slots - 1:
            raise SteeringCapacityError(
                f"this steering needs {needed} table slots; the engine has "
                f"{self.tables.slots - 1} ($STEERLAB_VLLM_SLOTS)")
        while len(self._free) < needed:
            victim = next((k for k in self._plans if k not in busy), None)
            if victim is None:
                raise SteeringCapacityError(
                    f"the requests of one pass need more than {self.tables.slots - 1} table "
                    "slots; start the engine with a larger $STEERLAB_VLLM_SLOTS")
            freed = self._plans.pop(victim)
            self._free += [slot for _, placed in freed.groups for slot, *_ in placed]
        entries = []
        for group, parts in made:
            placed = []
            for part in parts:
                slot = self._free.pop()
                self.tables.write(slot, part)
                placed.append((slot, part.site, part.kinds()))
            entries.append((group.positions, tuple(placed)))
        plan = PlanSlots(tuple(entries))
        self._plans[key] = plan
        return plan

    def fill(self, spans: Sequence[Span]) -> None:
        """Write each token's slots of each kind for this pass (zeros for tokens no span
        steers)."""
        tables = self.tables
        end = max((span.end for span in spans), default=0)
        rows = max(end, self._dirty)
        if rows == 0:
            return
        values = {(site, kind): torch.zeros(rows, count, dtype=torch.long)
                  for site in SITES for kind, count in tables.terms[site].items() if count}
        for span in spans:
            boundary = min(max(span.prompt_len - span.first, 0), span.end - span.start)
            for (first, last), prompt in (((span.start, span.start + boundary), True),
                                          ((span.start + boundary, span.end), False)):
                if last <= first:
                    continue
                lists: dict[tuple[Site, str], list[int]] = {}
                for slot, site, kinds in span.plan.placed(prompt):
                    for kind in kinds:
                        lists.setdefault((site, kind), []).append(slot)
                for (site, kind), slots in lists.items():
                    if len(slots) > tables.terms[site][kind]:  # check_capacity ran at plan()
                        raise SteeringCapacityError(f"{len(slots)} {NOUNS[kind]} on one token")
                    values[site, kind][first:last, : len(slots)] = torch.tensor(slots)
        for (site, kind), table in values.items():
            tables.table(site, f"{kind}_slots")[:rows].copy_(table, non_blocking=True)
        self._dirty = end

"""Each request's steering on its own tokens of one continuously batched forward pass.

An engine that batches requests continuously (vLLM) runs every scheduled token of every request
through one flat (T, D) tensor per layer: prompt chunks and single decoding steps side by side,
each request at its own positions. A :class:`BatchEdits` is built once per forward pass from the
requests' :class:`Span` (where its tokens lie, how long its prompt is, its edit groups) and then
edits each layer as :class:`~steerlab.steering.hooks.Steering` edits a padded batch: at a layer,
every group's ablations first, then rotations, then additions, each on the tokens its group's
``positions`` choose (absolute positions against the request's prompt length, so a prompt split
into chunks is placed right). Tokens no group touches are left bit for bit as they were.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from steerlab.steering.hooks import Edits, Site, project_out, rotate_toward

Cast = Callable[[torch.Tensor], torch.Tensor]
"""Puts a vector on the layer's device and dtype (an engine keeps one copy per vector)."""


@dataclass(frozen=True)
class Span:
    """One request's tokens in the flat batch: rows ``start`` … ``end − 1``, its prompt's length
    (positions from there on are generated), and the edit groups its steering resolved to."""

    start: int
    end: int
    prompt_len: int
    edits: Sequence[Edits]


Op = tuple[torch.Tensor, torch.Tensor, float]
"""(rows of the flat batch, unit direction or vector, strength or angle)."""


class BatchEdits:
    """One forward pass's edits per (site, layer), built from the requests' spans; ``positions``
    holds each flat row's absolute position in its sequence."""

    def __init__(self, spans: Sequence[Span], positions: torch.Tensor, cast: Cast) -> None:
        self.ablations: dict[tuple[Site, int], list[Op]] = defaultdict(list)
        self.rotations: dict[tuple[Site, int], list[Op]] = defaultdict(list)
        self.additions: dict[tuple[Site, int], list[Op]] = defaultdict(list)
        device, positions = positions.device, positions.cpu()
        for span in spans:
            for group in span.edits:
                rows = _rows(span, positions, group.positions).to(device)
                if rows.numel() == 0:
                    continue
                for layer, pairs in group.ablations.items():
                    self.ablations[group.site, layer] += [(rows, cast(d), s) for d, s in pairs]
                for layer, pairs in group.rotations.items():
                    self.rotations[group.site, layer] += [(rows, cast(d), a) for d, a in pairs]
                for layer, vector in group.additions.items():
                    self.additions[group.site, layer].append((rows, cast(vector), 1.0))
        self.sites = {*self.ablations, *self.rotations, *self.additions}

    def edits(self, site: Site, layer: int) -> bool:
        return (site, layer) in self.sites

    def reshapes(self, site: Site, layer: int) -> bool:
        """Whether the layer's edits need the whole stream (ablations, rotations), not only an
        addition to it."""
        return (site, layer) in self.ablations or (site, layer) in self.rotations

    def apply(self, site: Site, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden`` (T, D) at one site of one layer, edited."""
        key = (site, layer)
        for rows, unit, strength in self.ablations.get(key, ()):
            hidden = hidden.index_copy(
                0, rows, project_out(hidden.index_select(0, rows), unit, strength))
        for rows, unit, degrees in self.rotations.get(key, ()):
            hidden = hidden.index_copy(
                0, rows, rotate_toward(hidden.index_select(0, rows), unit, degrees))
        return hidden + self.delta(site, layer, hidden) if key in self.additions else hidden

    def delta(self, site: Site, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """What the layer's additions add to each row of ``hidden`` (zero where none)."""
        delta = torch.zeros_like(hidden)
        for rows, vector, _ in self.additions.get((site, layer), ()):
            delta.index_add_(0, rows, vector.expand(rows.numel(), -1))
        return delta


def _rows(span: Span, positions: torch.Tensor, which: str) -> torch.Tensor:
    """The flat rows of ``span`` whose positions ``which`` chooses ("all", "prompt",
    "generated")."""
    rows = torch.arange(span.start, span.end)
    if which == "all":
        return rows
    generated = positions[span.start:span.end] >= span.prompt_len
    return rows[generated if which == "generated" else ~generated]

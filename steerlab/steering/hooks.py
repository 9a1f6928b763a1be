"""The intervention: forward hooks that add directions to decoder-layer outputs or project them
out (directional ablation).

A :class:`Steering` owns its hooks and all its state; nothing is global, so several steerings
compose (their additions sum) and batched calls behave like single ones. Position selection
("prompt" / "generated") follows absolute token positions across KV-cache generation steps.

**Conditional edits** (an :class:`Edits` group with a condition, conditional activation steering
after Lee et al. 2024) apply only to the rows of a batch whose prompt meets a
:class:`RowCondition`. The condition
reads its layer's output on a sequence's first forward pass (empty cache: in generation, the
prompt; in likelihood scoring, which reads prompt and completion in one pass, both) and decides
once per row; the decision holds for every later pass of that sequence (KV-cache steps, or
cache-free generation re-running the whole sequence), and a new sequence decides afresh.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers.cache_utils import Cache

from steerlab.model.capture import layer_hidden, with_hidden
from steerlab.model.heads import attention_projections
from steerlab.steering.edits import LayerEdits

Positions = Literal["all", "prompt", "generated"]
Site = Literal["residual", "attention"]
POSITIONS: tuple[str, ...] = ("all", "prompt", "generated")


class PositionError(RuntimeError):
    """A forward pass could not be placed in its sequence, so position-dependent steering
    (``positions="prompt"/"generated"``, conditions) cannot know which tokens it edits."""


def _cache_in(values: Iterable[Any]) -> Cache | None:
    """The one KV cache among a pass's arguments (or outputs), whatever it is called there."""
    caches = [value for value in values if isinstance(value, Cache)]
    if len(caches) > 1:
        raise PositionError(f"a forward pass carries {len(caches)} KV caches; expected one")
    return caches[0] if caches else None


_CACHE_KEYWORDS = ("cache", "past_key_values", "cache_params")
"""Keywords transformers versions have passed a KV cache under (a non-Cache value there is a
legacy format this module cannot read)."""


def _pass_start(args: tuple, kwargs: dict, length: int) -> int:
    """The absolute position of a forward pass's first token in its sequence (see
    :class:`_PositionTracker`); :class:`PositionError` where the pass's own evidence disagrees."""
    for name in _CACHE_KEYWORDS:
        value = kwargs.get(name)
        if value is not None and not isinstance(value, Cache):
            raise PositionError(f"a forward pass carries its cache under '{name}' as a "
                                f"{type(value).__name__}, not a transformers Cache: its position "
                                "in the sequence cannot be read")
    cache = _cache_in([*args, *kwargs.values()])
    seen = cache.get_seq_length() if cache is not None else None
    cache_position = kwargs.get("cache_position")
    if cache_position is not None:
        start = int(cache_position.reshape(-1)[0])
        if seen is not None and seen != start:
            raise PositionError(f"a forward pass's cache holds {seen} tokens but its "
                                f"cache_position starts at {start}")
    else:
        start = seen or 0
    position_ids = kwargs.get("position_ids")
    if start == 0 and position_ids is not None and int(position_ids.max()) >= length:
        raise PositionError(
            f"a forward pass of {length} tokens with no cache in sight holds position "
            f"{int(position_ids.max())}: it continues a sequence through a cache steerlab does not "
            "recognise")
    return start


class _PositionTracker:
    """Follows which absolute positions the tokens of each forward pass occupy.

    Each pass is placed from what it carries, not from one keyword's name (transformers has
    renamed the cache keyword before): its KV cache (a ``Cache`` under any keyword; the tokens
    already in it precede this pass), its ``cache_position`` where the version passes one, and
    its ``position_ids`` as a check (a pass placed at the start of a sequence cannot hold a
    position beyond its own length). After the pass, a cache it returns must have grown by
    exactly the pass's tokens. Anything that contradicts the placement raises
    :class:`PositionError` instead of steering the wrong tokens.

    A pass that starts at position 0 begins a new sequence, whose length is the prompt length;
    a later pass continues it (generated tokens). Generation without a cache re-runs the whole
    sequence: recognised because it starts with the stored prompt. ``fresh`` says the current
    pass begins a new sequence; ``attention_mask`` is the mask that pass was given (None: no
    padding).
    """

    def __init__(self, model: nn.Module) -> None:
        self.start = 0
        self.length = 0
        self.prompt_len: int | None = None
        self.fresh = False
        self.attention_mask: torch.Tensor | None = None
        self._prompt_ids: torch.Tensor | None = None
        self.handles = [model.register_forward_pre_hook(self._pre_forward, with_kwargs=True),
                        model.register_forward_hook(self._post_forward)]

    def _pre_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        length = ids.shape[1] if ids is not None else embeds.shape[1]
        start = _pass_start(args, kwargs, length)
        self.fresh = False
        if start > 0:
            if self.prompt_len is None:
                raise PositionError(f"a forward pass continues a sequence at position {start} "
                                    "whose start this steering did not see")
        else:
            continues_prompt = (
                ids is not None
                and self._prompt_ids is not None
                and length > self.prompt_len
                and ids.shape[0] == self._prompt_ids.shape[0]
                and torch.equal(ids[:, : self.prompt_len], self._prompt_ids)
            )
            if not continues_prompt:
                self.prompt_len = length
                self._prompt_ids = ids
                self.fresh = True
                self.attention_mask = kwargs.get("attention_mask")
        self.start, self.length = start, length

    def _post_forward(self, module: nn.Module, args: tuple, output: Any) -> None:
        values = output.values() if isinstance(output, Mapping) else ()
        cache = _cache_in(values)
        if cache is not None and cache.get_seq_length() != self.start + self.length:
            raise PositionError(
                f"a forward pass placed at positions {self.start}..{self.start + self.length - 1} "
                f"returned a cache of {cache.get_seq_length()} tokens: its earlier tokens reached "
                "the model in a way steerlab does not recognise")

    def mask(self, positions: Positions, device: torch.device) -> torch.Tensor:
        """A (1, T, 1) mask over the current pass's tokens for the chosen positions."""
        if self.prompt_len is None:
            raise RuntimeError("positions other than 'all' need the model's own forward pass")
        index = torch.arange(self.start, self.start + self.length, device=device)
        keep = index < self.prompt_len if positions == "prompt" else index >= self.prompt_len
        return keep.view(1, -1, 1)


def _row_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """A (B, T) mask of real tokens, or None when the pass has no padding to mask."""
    if mask is None or mask.dim() == 2:
        return mask
    raise ValueError(
        f"conditional steering needs a 2-D attention mask (batch, tokens) to tell padding from "
        f"prompt tokens; this pass has a {mask.dim()}-D mask")


class RowCondition(Protocol):
    """What gates conditional edits (e.g. :class:`steerlab.steering.conditions.Condition`): the
    layer it reads and a per-row decision from that layer's output on a sequence's first pass."""

    layer: int

    def decide(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(B,) bool from the layer's output (B, T, D) and the (B, T) mask of real tokens."""
        ...

    def check_compatible(self, model: nn.Module) -> None:
        """Raise ValueError if it cannot read ``model`` (another width)."""
        ...


@dataclass(frozen=True, eq=False)
class Edits:
    """Per-layer edits (:class:`~steerlab.steering.edits.Edit`: additions, ablations, rotations,
    in the order they apply) that act on the same tokens: at ``positions``, and, with a
    ``condition``, only in the rows whose prompt meets it."""

    edits: LayerEdits = field(default_factory=dict)
    positions: Positions = "all"
    condition: RowCondition | None = None
    site: Site = "residual"
    """``residual``: the decoder layer's output; ``attention``: the input of its attention
    output projection (the heads' outputs, see :mod:`steerlab.model.heads`)."""

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")

    def kept(self) -> Edits:
        """These edits without those that change nothing (all-zero additions, zero strengths,
        zero angles)."""
        kept = {layer: acting for layer, edits in self.edits.items()
                if (acting := [edit for edit in edits if edit.acts()])}
        return replace(self, edits=kept)

    def layers(self) -> set[int]:
        """The layers these edits change."""
        return set(self.edits)

    def check_gate(self) -> None:
        """Refuse conditional edits below the condition's layer: they would change the prompt
        the condition reads before it decides."""
        if self.condition is None:
            return
        # an edit inside the condition's own layer (the attention site) precedes its read too
        below = sorted(layer for layer in self.layers() if layer < self.condition.layer
                       or (layer == self.condition.layer and self.site != "residual"))
        if below:
            raise ValueError(
                f"a conditional edit at layer {below[0]} would change the prompt its condition "
                f"reads at layer {self.condition.layer}: edit at or above the condition's layer")


def check_layers(used: Iterable[int], n_layers: int) -> None:
    """Refuse an edit at a layer the model does not have (before any hook or forward pass)."""
    for layer in used:
        if not 0 <= layer < n_layers:
            raise ValueError(f"layer {layer} out of range: the model has {n_layers} layers")


class Steering:
    """Edits the output of chosen decoder layers while active: adds fixed vectors, and/or
    projects directions out (directional ablation), at chosen positions, optionally only for
    some rows.

    Use as a context manager, or keep it and call :meth:`remove`. Each :class:`Edits` group
    says what changes at which tokens; each edit applies as its class says
    (:mod:`steerlab.steering.edits`: ablations h ← h − s (h·d̂) d̂, rotations, additions). At a
    layer every group's edits of one kind run in group order, the kinds in the order of
    their ``order`` (ablations, rotations, additions). A group with a
    condition applies only to the rows whose prompt meets it (see the module docstring); the
    condition reads its layer before any edit there, so its group must edit at or above that
    layer. All-zero additions and zero
    strengths register no hook at all, so a zero multiplier leaves the model bit-for-bit intact;
    :attr:`decisions` holds each conditional group's last per-row decision, in group order.
    """

    def __init__(self, model: nn.Module, layers: nn.ModuleList, edits: Sequence[Edits]) -> None:
        check_layers([layer for group in edits for layer in group.layers()], len(layers))
        self.edits = [kept for group in edits if (kept := group.kept()).layers()]
        self._conditional = [g for g, group in enumerate(self.edits) if group.condition is not None]
        self._slot = {g: slot for slot, g in enumerate(self._conditional)}
        for group in self.edits:
            if group.condition is None:
                continue
            if not 0 <= group.condition.layer < len(layers):
                raise ValueError(f"condition layer {group.condition.layer} out of range: the "
                                 f"model has {len(layers)} layers")
            group.check_gate()
        self.decisions: list[torch.Tensor | None] = [None] * len(self._conditional)
        self._hooks: list[RemovableHandle] = []
        self._tracker: _PositionTracker | None = None
        if any(g.positions != "all" or g.condition is not None for g in self.edits):
            self._tracker = _PositionTracker(model)
            self._hooks.extend(self._tracker.handles)
        edited = {(layer, group.site) for group in self.edits for layer in group.layers()}
        read = {(self.edits[g].condition.layer, "residual") for g in self._conditional}
        projections = (attention_projections(layers)
                       if any(site == "attention" for _, site in edited) else [])
        for layer, site in sorted(edited | read):
            edit = self._editor(layer, site)
            if site == "residual":
                self._hooks.append(layers[layer].register_forward_hook(
                    lambda module, args, output, edit=edit: with_hidden(
                        output, edit(layer_hidden(output)))))
            else:
                self._hooks.append(projections[layer].register_forward_pre_hook(
                    lambda module, args, edit=edit: (edit(args[0]), *args[1:])))

    def _editor(self, layer: int, site: Site):
        """What the hook at one layer and site does to its tensor: decide the conditions read
        there (the residual site), then edit (see the class)."""
        deciding = [slot for slot, g in enumerate(self._conditional)
                    if site == "residual" and self.edits[g].condition.layer == layer]
        mine = [(g, group) for g, group in enumerate(self.edits) if group.site == site]
        steps = [(g, edit) for g, group in mine for edit in group.edits.get(layer, [])]
        steps.sort(key=lambda step: step[1].order)  # stable: group order within a kind
        positions = {self.edits[g].positions for g, _ in steps} - {"all"}
        cast: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}

        def like(index: int, tensor: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
            key = (index, hidden.dtype, hidden.device)
            if key not in cast:
                cast[key] = tensor.to(dtype=hidden.dtype, device=hidden.device)
            return cast[key]

        def edit(hidden: torch.Tensor) -> torch.Tensor:
            if deciding and self._tracker is not None and self._tracker.fresh:
                mask = _row_mask(self._tracker.attention_mask)
                for slot in deciding:
                    condition = self.edits[self._conditional[slot]].condition
                    decision = condition.decide(hidden, mask)
                    self.decisions[slot] = decision.to(device=hidden.device, dtype=torch.bool)
            keep = {p: self._tracker.mask(p, hidden.device) for p in positions}
            edited = hidden
            for index, (g, step) in enumerate(steps):
                changed = step.apply(edited, like(index, step.direction, hidden))
                edited = self._where(g, keep, changed, edited)
            return edited

        return edit

    def _where(self, g: int, keep: Mapping[str, torch.Tensor], edited: torch.Tensor,
               unedited: torch.Tensor) -> torch.Tensor:
        """``edited`` where group ``g`` applies (its positions, the rows whose condition holds);
        ``keep``: this pass's mask of each position choice."""
        group = self.edits[g]
        if group.condition is not None:
            decision = self.decisions[self._slot[g]]
            if decision is None:
                raise RuntimeError("conditional steering decides on a sequence's first forward "
                                   "pass (empty cache); this pass continues a sequence it did "
                                   "not see")
            if decision.shape[0] != edited.shape[0]:
                raise RuntimeError(f"conditional steering decided for {decision.shape[0]} rows "
                                   f"but this pass has {edited.shape[0]}")
            # decided at the condition's layer, which may sit on another device than this one
            edited = torch.where(decision.to(edited.device).view(-1, 1, 1), edited, unedited)
        if group.positions != "all":
            edited = torch.where(keep[group.positions], edited, unedited)
        return edited

    @property
    def active(self) -> bool:
        return bool(self._hooks)

    def remove(self) -> None:
        """Detach every hook; safe to call twice."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def __enter__(self) -> Steering:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

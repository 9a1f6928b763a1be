"""The intervention: forward hooks that add directions to decoder-layer outputs or project them
out (directional ablation), and hooks that read layer outputs.

A :class:`Steering` owns its hooks and all its state; nothing is global, so several steerings
compose (their additions sum) and batched calls behave like single ones. Position selection
("prompt" / "generated") follows absolute token positions across KV-cache generation steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

Positions = Literal["all", "prompt", "generated"]
POSITIONS: tuple[str, ...] = ("all", "prompt", "generated")


def _hidden(output: Any) -> torch.Tensor:
    """The hidden states inside a decoder layer's output (a tensor or a tuple led by one)."""
    return output[0] if isinstance(output, tuple) else output


def _with_hidden(output: Any, hidden: torch.Tensor) -> Any:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


class _PositionTracker:
    """Follows which absolute positions the tokens of each forward pass occupy.

    A pass that starts from an empty cache begins a new sequence, whose length is the prompt
    length; a pass with a non-empty cache continues it (generated tokens). Generation without a
    cache re-runs the whole sequence: recognised because it starts with the stored prompt.
    """

    def __init__(self, model: nn.Module) -> None:
        self.start = 0
        self.length = 0
        self.prompt_len: int | None = None
        self._prompt_ids: torch.Tensor | None = None
        self.handle = model.register_forward_pre_hook(self._pre_forward, with_kwargs=True)

    def _pre_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        length = ids.shape[1] if ids is not None else embeds.shape[1]
        cache = kwargs.get("past_key_values")
        cached = cache is not None and cache.get_seq_length() > 0
        if cached:
            self.start = self.start + self.length
        else:
            self.start = 0
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
        self.length = length

    def mask(self, positions: Positions, device: torch.device) -> torch.Tensor:
        """A (1, T, 1) mask over the current pass's tokens for the chosen positions."""
        if self.prompt_len is None:
            raise RuntimeError("positions other than 'all' need the model's own forward pass")
        index = torch.arange(self.start, self.start + self.length, device=device)
        keep = index < self.prompt_len if positions == "prompt" else index >= self.prompt_len
        return keep.view(1, -1, 1)


Ablations = dict[int, list[tuple[torch.Tensor, float]]]
"""Per layer, the directions to project out of its output: (unit direction, strength) pairs."""


class Steering:
    """Edits the output of chosen decoder layers while active: adds a fixed vector, and/or
    projects directions out (directional ablation).

    Use as a context manager, or keep it and call :meth:`remove`. ``additions`` maps a layer
    index to the exact vector added there (multiplier and scaling already applied);
    ``ablations`` maps a layer to (unit direction d̂, strength s) pairs, each applied as
    h ← h − s (h·d̂) d̂ at every selected position (s = 1 removes the component, 2 reflects it),
    in order and before the addition. All-zero additions and zero strengths register no hook at
    all, so a zero multiplier leaves the model bit-for-bit intact.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: nn.ModuleList,
        additions: dict[int, torch.Tensor],
        positions: Positions = "all",
        ablations: Ablations | None = None,
    ) -> None:
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
        for layer in [*additions, *(ablations or {})]:
            if not 0 <= layer < len(layers):
                raise ValueError(f"layer {layer} out of range: the model has {len(layers)} layers")
        self.positions = positions
        self.additions = {layer: v for layer, v in additions.items() if bool(v.any())}
        kept = {layer: [(d, s) for d, s in pairs if s != 0]
                for layer, pairs in (ablations or {}).items()}
        self.ablations = {layer: pairs for layer, pairs in kept.items() if pairs}
        self._hooks: list[RemovableHandle] = []
        self._tracker: _PositionTracker | None = None
        edited = sorted(set(self.additions) | set(self.ablations))
        if edited and positions != "all":
            self._tracker = _PositionTracker(model)
            self._hooks.append(self._tracker.handle)
        for layer in edited:
            hook = self._hook_for(self.additions.get(layer), self.ablations.get(layer, []))
            self._hooks.append(layers[layer].register_forward_hook(hook))

    def _hook_for(self, vector: torch.Tensor | None, ablations: list[tuple[torch.Tensor, float]]):
        cast: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}

        def like(index: int, tensor: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
            key = (index, hidden.dtype, hidden.device)
            if key not in cast:
                cast[key] = tensor.to(dtype=hidden.dtype, device=hidden.device)
            return cast[key]

        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            hidden = _hidden(output)
            edited = hidden
            for index, (direction, strength) in enumerate(ablations):
                unit = like(index, direction, hidden)
                edited = edited - (strength * (edited @ unit)).unsqueeze(-1) * unit
            if vector is not None:
                edited = edited + like(-1, vector, hidden)
            if self._tracker is not None:
                keep = self._tracker.mask(self.positions, hidden.device)
                edited = torch.where(keep, edited, hidden)
            return _with_hidden(output, edited)

        return hook

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


class _StopForward(Exception):
    """Raised by a capture hook to skip the layers above the last one needed."""


@contextmanager
def capture_layer_outputs(
    layers: nn.ModuleList, indices: list[int], stop_after_last: bool = False
) -> Iterator[dict[int, torch.Tensor]]:
    """Record each chosen layer's output hidden states (B, T, D) during forward passes.

    With ``stop_after_last`` the pass is cut after the highest chosen layer (use
    :func:`forward_until` to run such a pass); the layers above cost nothing.
    """
    captured: dict[int, torch.Tensor] = {}
    last = max(indices)

    def hook_for(index: int):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            captured[index] = _hidden(output)
            if stop_after_last and index == last:
                raise _StopForward

        return hook

    handles = [layers[i].register_forward_hook(hook_for(i)) for i in indices]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def forward_until(
    model: nn.Module, layers: nn.ModuleList, indices: list[int], **inputs: torch.Tensor
) -> dict[int, torch.Tensor]:
    """Run the model only as far as the highest of ``indices``; return those layers' outputs."""
    with capture_layer_outputs(layers, indices, stop_after_last=True) as captured:
        try:
            model(**inputs, use_cache=False)
        except _StopForward:
            pass
    return dict(captured)

"""Compute accounting: token positions the decoder layers actually processed, against what a
naive implementation would process for the same records.

A *token-layer* is one decoder layer applied to one token position (padding included), of one
of three kinds, which cost differently per token: ``training`` (a pass that keeps gradients),
``decoding`` (one new token per sequence, continuing from a KV cache) and ``forward`` (every
other pass: scoring, prefill, activations). The counter hooks every decoder layer of the given
models; layers skipped by design (the lower
layers of a multiplier sweep, a preamble run once for all items) are simply not counted. The
naive figure for likelihood records is each choice scored in its own full pass:
(prompt tokens + choice tokens) × layers, as a plain per-choice evaluator does.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from steerlab.records import Record

KINDS = ("training", "forward", "decoding")


class TokenLayerCounter:
    """Counts token-layers over every forward call of the decoder layers it watches, in all
    (:attr:`count`) and by kind (:attr:`kinds`, see the module docstring)."""

    def __init__(self) -> None:
        self.count = 0
        self.kinds: dict[str, int] = dict.fromkeys(KINDS, 0)
        self._watched: set[int] = set()
        self._handles: list[RemovableHandle] = []

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        hidden = args[0] if args else kwargs.get("hidden_states")
        if hidden is None:
            return
        tokens = int(hidden.shape[0] * hidden.shape[1])
        kind = ("training" if torch.is_grad_enabled() and hidden.requires_grad
                else "decoding" if hidden.shape[1] == 1 else "forward")
        self.count += tokens
        self.kinds[kind] += tokens

    def since(self, before: dict[str, int]) -> dict[str, int]:
        """Token-layers of each kind counted since ``before`` (an earlier copy of
        :attr:`kinds`)."""
        return {kind: self.kinds[kind] - before.get(kind, 0) for kind in KINDS}

    def watch(self, layers: nn.ModuleList) -> None:
        """Count the calls of these decoder layers too (a list already watched is ignored)."""
        if id(layers) in self._watched:
            return
        self._watched.add(id(layers))
        self._handles += [layer.register_forward_hook(self._hook, with_kwargs=True)
                          for layer in layers]

    def close(self) -> None:
        """Stop counting."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._watched.clear()


def naive_token_layers(records: Iterable[Record], n_layers: int) -> int:
    """Token-layers a per-choice full-pass evaluator would need for these likelihood records."""
    return sum(
        sum(record["prompt_tokens"] + n for n in record["n_tokens"]) * n_layers
        for record in records
        if record.get("task") in ("mc", "ab") and "prompt_tokens" in record
    )

"""Compute accounting: token positions the decoder layers actually processed, against what a
naive implementation would process for the same records.

A *token-layer* is one decoder layer applied to one token position (padding included), of one
of three kinds, which cost differently per token: ``training`` (a pass that keeps gradients),
``decoding`` (one new token per sequence, continuing from a KV cache) and ``forward`` (every
other pass: scoring, prefill, activations). The counter hooks every decoder layer of the given
models, and their output head (the vocabulary projection, counted apart: scoring projects only
the positions it reads, and a large vocabulary makes the head cost as much as many layers);
layers skipped by design (the lower layers of a multiplier sweep, a preamble run once for all
items) are simply not counted. The naive figure for likelihood records is each choice scored in
its own full pass: (prompt tokens + choice tokens) × layers, as a plain per-choice evaluator
does.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from steerlab.records import Record

KINDS = ("training", "forward", "decoding")
HEAD_KINDS = ("training", "forward")
"""Kinds of head tokens: with a backward pass through the head, or without."""


class TokenLayerCounter:
    """Counts the work of the decoder layers it watches: token-layers in all (:attr:`count`)
    and by kind (:attr:`kinds`, see the module docstring), layer calls by kind (:attr:`calls`),
    and at the last layer of each watched list, where every pass ends, the passes, their
    token positions and the tokens decoded from a KV cache (:attr:`passes`, :attr:`tokens`,
    :attr:`generated`); the positions the output head projects, by whether a backward pass
    goes through it (:attr:`head`). :attr:`largest` keeps each kind's largest layer call as
    (rows, positions)."""

    def __init__(self) -> None:
        self.count = 0
        self.kinds: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.calls: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.head: dict[str, int] = dict.fromkeys(HEAD_KINDS, 0)
        self.passes = self.tokens = self.generated = 0
        self.largest: dict[str, tuple[int, int]] = {}
        self._watched: set[int] = set()
        self._last: set[int] = set()
        self._handles: list[RemovableHandle] = []

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        hidden = args[0] if args else kwargs.get("hidden_states")
        if hidden is None:
            return
        rows, positions = int(hidden.shape[0]), int(hidden.shape[1])
        tokens = rows * positions
        kind = ("training" if torch.is_grad_enabled() and hidden.requires_grad
                else "decoding" if positions == 1 else "forward")
        self.count += tokens
        self.kinds[kind] += tokens
        self.calls[kind] += 1
        if tokens > self.largest.get(kind, (0, 0))[0] * self.largest.get(kind, (0, 0))[1]:
            self.largest[kind] = (rows, positions)
        if id(module) in self._last:
            self.passes += 1
            self.tokens += tokens
            self.generated += rows if kind == "decoding" else 0

    def _head_hook(self, module: nn.Module, args: tuple, output: object) -> None:
        hidden = args[0]
        kind = "training" if torch.is_grad_enabled() and hidden.requires_grad else "forward"
        self.head[kind] += hidden.numel() // hidden.shape[-1]

    def snapshot(self) -> dict[str, Any]:
        """The counts so far, to take :meth:`since` later."""
        return {"token_layers": self.count, "token_layers_by_kind": dict(self.kinds),
                "layer_calls_by_kind": dict(self.calls), "head_tokens_by_kind": dict(self.head),
                "passes": self.passes, "tokens": self.tokens, "generated_tokens": self.generated}

    def since(self, before: dict[str, Any]) -> dict[str, Any]:
        """The work counted since ``before`` (a :meth:`snapshot`), in the same fields: what a
        compute record keeps of a stage."""
        now = self.snapshot()
        return {field: ({kind: count - before[field][kind] for kind, count in value.items()}
                        if isinstance(value, dict) else value - before[field])
                for field, value in now.items()}

    def watch(self, layers: nn.ModuleList, head: nn.Module | None = None) -> None:
        """Count the calls of these decoder layers and this output head too (a module already
        watched, e.g. through an adapted model that shares it, is counted once)."""
        fresh = [layer for layer in layers if id(layer) not in self._watched]
        if fresh and fresh[-1] is layers[-1]:
            self._last.add(id(layers[-1]))
        self._handles += [layer.register_forward_hook(self._hook, with_kwargs=True)
                          for layer in fresh]
        if head is not None and id(head) not in self._watched:
            fresh.append(head)
            self._handles.append(head.register_forward_hook(self._head_hook))
        self._watched.update(id(module) for module in fresh)

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


def peak_memory(device: torch.device) -> tuple[int, str]:
    """The most memory in use so far, in bytes, and what was measured: the accelerators'
    allocator (since their peaks were last reset), or on the CPU the process's peak resident
    memory, weights included."""
    if device.type == "cuda":  # every accelerator a device map may have spread the model over
        return (sum(torch.cuda.max_memory_allocated(index)
                    for index in range(torch.cuda.device_count())),
                "allocated on the accelerators")
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale,
            "the process's peak resident memory, weights included")

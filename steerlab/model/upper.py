"""Run only the decoder layers above L, starting from a cached output of layer L.

A steering vector added at layer L cannot change layers 0..L, so training (and multiplier
sweeps) need those layers once per example. :func:`upper_stack` swaps layers 0..L-1 for
pass-through stand-ins and layer L for one that returns a given tensor; the model's own forward
then builds masks, positions and rotary embeddings as usual and runs only layers L+1.. and the
head. No per-architecture code: the swap works on the discovered decoder-layer list.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers.cache_utils import Cache

_RETURNS_TUPLE: dict[type[nn.Module], bool] = {}
"""Whether a decoder-layer class returns a tuple led by the hidden states (transformers 4.x's
gpt2, gemma2, gpt-neox) rather than the tensor itself: what the model's forward expects back
from a stand-in. Fixed per class and library version, so learnt once per class."""


def _as_layer_output(layer: nn.Module, hidden: torch.Tensor, args: tuple, kwargs: dict) -> object:
    """``hidden`` in the form ``layer`` returns, learnt from one real call of the layer's own
    forward (no hooks run) on the arguments the stand-in received."""
    kind = type(layer)
    if kind not in _RETURNS_TUPLE:
        if any(isinstance(value, Cache) for value in kwargs.values()):
            raise RuntimeError("the upper stack runs without a KV cache (use_cache=False)")
        with torch.no_grad():
            _RETURNS_TUPLE[kind] = isinstance(layer.forward(hidden, *args, **kwargs), tuple)
    return (hidden,) if _RETURNS_TUPLE[kind] else hidden


class _StandIn(nn.Module):
    """Takes a decoder layer's place: answers in that layer's output form, and reads of its
    attributes (gemma2's loop asks each layer for its ``attention_type``) go to the layer."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self._layer = (layer,)  # a tuple, so the replaced layer is not registered as a child

    def __getattr__(self, name: str) -> object:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._layer[0], name)

    def answer(self, hidden: torch.Tensor, args: tuple, kwargs: dict) -> object:
        return _as_layer_output(self._layer[0], hidden, args, kwargs)


class _PassThrough(_StandIn):
    """Stands in for a layer below L: returns its input hidden states untouched."""

    def forward(self, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> object:
        return self.answer(hidden_states, args, kwargs)


class Injection(_StandIn):
    """Stands in for layer L: returns :attr:`value`, the cached layer output (plus any vector)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__(layer)
        self.value: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> object:
        if self.value is None or self.value.shape[:2] != hidden_states.shape[:2]:
            raise RuntimeError("Injection.value must be set to a (batch, tokens, d_model) tensor")
        return self.answer(self.value, args, kwargs)


@contextmanager
def upper_stack(layers: nn.ModuleList, layer: int) -> Iterator[Injection]:
    """While active, the model's forward runs only the layers above ``layer``.

    Set ``injection.value`` to layer ``layer``'s output for the batch before each forward.
    The original layers are put back on exit, also after an exception.
    """
    originals = [layers[i] for i in range(layer + 1)]
    injection = Injection(originals[layer])
    try:
        for i in range(layer):
            layers[i] = _PassThrough(originals[i])
        layers[layer] = injection
        yield injection
    finally:
        for i, module in enumerate(originals):
            layers[i] = module

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


class _PassThrough(nn.Module):
    """Stands in for a layer below L: returns its input hidden states untouched."""

    def forward(self, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return hidden_states


class Injection(nn.Module):
    """Stands in for layer L: returns :attr:`value`, the cached layer output (plus any vector)."""

    def __init__(self) -> None:
        super().__init__()
        self.value: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if self.value is None or self.value.shape[:2] != hidden_states.shape[:2]:
            raise RuntimeError("Injection.value must be set to a (batch, tokens, d_model) tensor")
        return self.value


@contextmanager
def upper_stack(layers: nn.ModuleList, layer: int) -> Iterator[Injection]:
    """While active, the model's forward runs only the layers above ``layer``.

    Set ``injection.value`` to layer ``layer``'s output for the batch before each forward.
    The original layers are put back on exit, also after an exception.
    """
    originals = [layers[i] for i in range(layer + 1)]
    injection = Injection()
    try:
        for i in range(layer):
            layers[i] = _PassThrough()
        layers[layer] = injection
        yield injection
    finally:
        for i, module in enumerate(originals):
            layers[i] = module

"""Reading decoder-layer outputs: the hidden states inside a layer's output, hooks that record
chosen layers (optionally cutting the pass after the last), and masked mean pooling."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def layer_hidden(output: Any) -> torch.Tensor:
    """The hidden states inside a decoder layer's output (a tensor or a tuple led by one)."""
    return output[0] if isinstance(output, tuple) else output


def with_hidden(output: Any, hidden: torch.Tensor) -> Any:
    """``output`` with its hidden states replaced, in the same form (tensor or tuple)."""
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, D) float32 mean of each row's hidden states (B, T, D) over its real tokens (``mask``
    (B, T), 1 at real tokens; None: every token)."""
    hidden = hidden.float()
    if mask is None:
        return hidden.mean(dim=1)
    weights = mask.to(device=hidden.device, dtype=hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


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
            captured[index] = layer_hidden(output)
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

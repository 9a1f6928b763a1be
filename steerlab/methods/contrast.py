"""What the activation-reading methods share: each pair's chosen and rejected sequences read at
their last token (prompt through the chat template, completion appended, as CAA reads them),
and a direction oriented and scaled the same way for every method, so their multipliers are
comparable."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from steerlab.data.files import PreferencePair
from steerlab.model.activations import read_layers
from steerlab.model.encoding import encode
from steerlab.model.handle import ModelHandle
from steerlab.steering.vectors import VectorMeta, data_hash, meta_for

TOKEN = "last token of prompt+completion"
"""Where each method reads a sequence (recorded in the vector's metadata)."""


@dataclass(frozen=True)
class Contrast:
    """Per layer, the last-token outputs (N, D) of each pair's chosen and rejected sequence, and
    the layer's mean token norm over all of them (for ``norm_ratio``)."""

    chosen: dict[int, torch.Tensor]
    rejected: dict[int, torch.Tensor]
    mean_norm: dict[int, float]

    def differences(self, layer: int) -> torch.Tensor:
        """(N, D) chosen − rejected, pair by pair."""
        return self.chosen[layer] - self.rejected[layer]


def read_contrast(model: ModelHandle, pairs: Sequence[PreferencePair], layers: Sequence[int],
                  batch_size: int = 8, progress: bool = True,
                  description: str = "reading activations") -> Contrast:
    """Read every pair's chosen and rejected sequence at ``layers`` (one batched pass each)."""
    if not pairs:
        raise ValueError("at least one preference pair is needed")
    prompts = [p.prompt for p in pairs] * 2
    completions = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    readout = read_layers(model, encode(model, prompts, completions), layers, batch_size,
                          progress, description)
    n = len(pairs)
    return Contrast({layer: last[:n] for layer, last in readout.last.items()},
                    {layer: last[n:] for layer, last in readout.last.items()},
                    readout.mean_norm)


def oriented(direction: torch.Tensor, contrast: Contrast, layer: int) -> torch.Tensor:
    """``direction`` as a steering vector: signed so that most pairs' chosen side projects
    higher than their rejected side (a tie keeps the sign), and scaled to the mean
    chosen − rejected gap along it, so ×1 moves as far along it as CAA's vector does."""
    unit = direction.float() / direction.float().norm().clamp_min(1e-12)
    gaps = contrast.differences(layer) @ unit
    if int((gaps < 0).sum()) > int((gaps > 0).sum()):
        unit, gaps = -unit, -gaps
    return unit * gaps.mean().abs()


def contrast_meta(model: ModelHandle, method: str, pairs: Sequence[PreferencePair],
                  contrast: Contrast, **hyperparams: Any) -> VectorMeta:
    """Metadata of a vector computed from a contrast: where it read, what it computed."""
    return meta_for(model, method, hyperparams={"token": TOKEN, **hyperparams},
                    data_hash=data_hash(list(pairs)), n_examples=len(pairs),
                    residual_norms=contrast.mean_norm)

"""CAA (contrastive activation addition, Rimsky et al. 2024): a mean activation difference.

For each pair the layer output is read at the **last token** of the tokenised sequence
"formatted prompt + completion" (prompt through the chat template, completion tokenised
separately and appended). For A/B pairs the completions are ``"(A"`` / ``"(B"``, so that token
is the answer letter, as in the CAA paper. The vector at layer L is the mean over pairs of
output(prompt + chosen) − output(prompt + rejected).
"""

from __future__ import annotations

from collections.abc import Sequence

from steerlab.data.files import PreferencePair
from steerlab.methods.contrast import contrast_meta, read_contrast
from steerlab.model.handle import ModelHandle
from steerlab.steering.vectors import SteeringVector


def train_caa(
    model: ModelHandle,
    pairs: Sequence[PreferencePair],
    layers: int | Sequence[int],
    *,
    batch_size: int = 8,
    progress: bool = True,
) -> SteeringVector:
    """Mean-difference steering vector at each of ``layers`` from ``pairs``.

    The mean residual norm of each layer over the same sequences is stored for ``norm_ratio``.
    """
    if not pairs:
        raise ValueError("train_caa needs at least one preference pair")
    layers = [layers] if isinstance(layers, int) else sorted(set(layers))
    contrast = read_contrast(model, pairs, layers, batch_size, progress, "CAA activations")
    directions = {layer: contrast.differences(layer).mean(dim=0) for layer in layers}
    meta = contrast_meta(model, "caa", pairs, contrast)
    return SteeringVector(directions, meta)

"""Read decoder-layer outputs: last-token activations and mean residual norms, batched."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from steerlab.model.capture import forward_until, masked_mean
from steerlab.model.encoding import TokenSequence, batches, encode_texts
from steerlab.model.handle import ModelHandle
from steerlab.progress import track


@dataclass
class LayerReadout:
    """Per layer: the output at each sequence's last token (N, D), each sequence's mean output
    over its tokens (N, D), and the mean token norm."""

    last: dict[int, torch.Tensor]
    mean: dict[int, torch.Tensor]
    mean_norm: dict[int, float]


@torch.no_grad()
def read_layers(
    model: ModelHandle,
    seqs: Sequence[TokenSequence],
    layers: Sequence[int],
    batch_size: int = 8,
    progress: bool = True,
    description: str = "reading activations",
) -> LayerReadout:
    """Run each sequence up to the highest layer needed and read the chosen layers' outputs."""
    layers = sorted(set(int(layer) for layer in layers))
    last = {layer: torch.empty(len(seqs), model.d_model) for layer in layers}
    mean = {layer: torch.empty(len(seqs), model.d_model) for layer in layers}
    norm_sum = dict.fromkeys(layers, 0.0)
    n_tokens = 0
    pad_id = model.tokenizer.pad_token_id
    steps = batches(seqs, batch_size, pad_id, model.device)
    n_steps = -(-len(seqs) // batch_size)
    for index, batch in track(steps, n_steps, description, progress):
        outputs = forward_until(model.model, model.layers, layers, **batch.model_inputs())
        real = batch.attention_mask.bool()
        n_tokens += int(real.sum())
        for layer in layers:
            hidden = outputs[layer].float()
            last[layer][index] = hidden[:, -1].cpu()
            mean[layer][index] = masked_mean(hidden, batch.attention_mask).cpu()
            norm_sum[layer] += float(hidden.norm(dim=-1)[real.to(hidden.device)].sum())
    return LayerReadout(last, mean, {layer: norm_sum[layer] / max(n_tokens, 1) for layer in layers})


def mean_residual_norms(
    model: ModelHandle, texts: Sequence[str], layers: Sequence[int], batch_size: int = 8
) -> dict[int, float]:
    """Mean L2 norm of each layer's output over all tokens of ``texts`` (the norm_ratio scale)."""
    readout = read_layers(model, encode_texts(model, texts), layers, batch_size, progress=False)
    return readout.mean_norm

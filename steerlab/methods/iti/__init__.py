"""Inference-time intervention (Li et al. 2023, "Inference-Time Intervention: Eliciting Truthful
Answers from a Language Model").

Every attention head of the candidate layers is read where its output enters the layer's
attention output projection, at the last token of each pair's chosen and rejected sequence. A
logistic probe per head (fit on a seeded share of the pairs) is scored on the held-out rest; the
``top_k`` heads by held-out accuracy are kept. Each kept head is shifted along its mass-mean
direction (mean chosen − mean rejected output, unit length) by the standard deviation of the
head's outputs along that direction; the multiplier is ITI's α. The standard deviation is the
sample one (divided by n − 1, torch's default); Li et al. divide by n, so their shift at the
same α is √((n − 1)/n) of this one (0.998 at n = 256 activations): stated in the metadata.
The vector acts on the ``attention`` site (``meta.site``), so it steers wherever a residual
vector does — sweeps, arms, compositions, the server — but not llama.cpp export or
``norm_ratio``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field

from steerlab.data.files import PreferencePair, split
from steerlab.methods.probes import fit_probe
from steerlab.methods.registry import MethodConfig, VectorMethod
from steerlab.methods.training import TrainingRun
from steerlab.model.encoding import TokenSequence, batches, encode
from steerlab.model.handle import ModelHandle, text_config_value
from steerlab.model.heads import attention_projections
from steerlab.progress import track
from steerlab.steering.vectors import SteeringVector, data_hash, meta_for


class ITIConfig(MethodConfig):
    """How many heads are shifted and how they are chosen."""

    top_k: int = Field(16, gt=0)
    """Heads kept, by held-out probe accuracy."""
    holdout: float = Field(0.2, gt=0, lt=1)
    """Share of pairs (seeded) the probes are scored on."""
    l2: float = Field(1e-2, ge=0)
    """The probes' L2 weight (see :func:`~steerlab.methods.probe.fit_logistic`)."""


@torch.no_grad()
def read_heads(model: ModelHandle, seqs: Sequence[TokenSequence], layers: Sequence[int],
               batch_size: int = 8, progress: bool = True) -> dict[int, torch.Tensor]:
    """Per layer, the input of its attention output projection at each sequence's last token:
    (N, heads × head_dim), head h at columns h·head_dim … (h+1)·head_dim."""
    projections = attention_projections(model.layers)
    seen: dict[int, torch.Tensor] = {}
    handles = [projections[layer].register_forward_pre_hook(
        lambda module, args, layer=layer: seen.__setitem__(layer, args[0][:, -1].float().cpu()))
        for layer in layers]
    out: dict[int, torch.Tensor] = {}
    try:
        steps = batches(seqs, batch_size, model.tokenizer.pad_token_id, model.device)
        for index, batch in track(steps, -(-len(seqs) // batch_size), "ITI: reading heads",
                                  progress):
            model.model(**batch.model_inputs(), use_cache=False)
            for layer in layers:
                if layer not in out:
                    out[layer] = torch.empty(len(seqs), seen[layer].shape[-1])
                out[layer][index] = seen[layer]
    finally:
        for handle in handles:
            handle.remove()
    return out


def train_iti(model: ModelHandle, pairs: Sequence[PreferencePair], layers: Sequence[int], *,
              top_k: int = 16, holdout: float = 0.2, l2: float = 1e-2, seed: int = 0,
              batch_size: int = 8, progress: bool = True) -> SteeringVector:
    """An ITI vector over the heads of ``layers`` (see the module docstring)."""
    layers = sorted(set(layers))
    n_held = max(1, round(holdout * len(pairs)))
    if len(pairs) - n_held < 2:
        raise ValueError(f"ITI needs at least 2 pairs to fit its probes, got {len(pairs) - n_held}")
    n_heads = text_config_value(model.model.config, "num_attention_heads", "n_head")
    held, fit = split(range(len(pairs)), [n_held, len(pairs) - n_held], seed)
    chosen = read_heads(model, encode(model, [p.prompt for p in pairs],
                                      [p.chosen for p in pairs]), layers, batch_size, progress)
    rejected = read_heads(model, encode(model, [p.prompt for p in pairs],
                                        [p.rejected for p in pairs]), layers, batch_size, progress)
    width = chosen[layers[0]].shape[1]
    if width % n_heads:
        raise ValueError(f"the attention projection's input ({width}) does not split into "
                         f"{n_heads} heads")
    size = width // n_heads
    scored = []
    for layer in layers:
        for head in range(n_heads):
            part = slice(head * size, (head + 1) * size)
            probe = fit_probe(chosen[layer][:, part], rejected[layer][:, part], fit, held, l2)
            scored.append((probe.held_out_accuracy, layer, head))
    kept = sorted(scored, key=lambda s: (-s[0], s[1], s[2]))[:top_k]
    directions: dict[int, torch.Tensor] = {}
    report = []
    for accuracy, layer, head in kept:
        part = slice(head * size, (head + 1) * size)
        c, r = chosen[layer][:, part], rejected[layer][:, part]
        mass_mean = c.mean(dim=0) - r.mean(dim=0)
        unit = mass_mean / mass_mean.norm().clamp_min(1e-12)
        sigma = float((torch.cat([c, r]) @ unit).std())
        directions.setdefault(layer, torch.zeros(width))[part] = sigma * unit
        report.append({"layer": layer, "head": head, "held_out_accuracy": accuracy,
                       "sigma": sigma})
    meta = meta_for(model, "iti", site="attention",
                    hyperparams={"top_k": top_k, "holdout": holdout, "l2": l2, "seed": seed,
                                 "token": "last token of prompt+completion",
                                 "candidate_layers": layers,
                                 "spread": "sample standard deviation (n - 1); Li et al. "
                                           "divide by n"},
                    data_hash=data_hash(list(pairs)), n_examples=len(pairs),
                    extra={"iti": {"heads_per_layer": n_heads, "head_dim": size,
                                   "heads": report}})
    return SteeringVector(directions, meta)


def _train(model: ModelHandle, pairs: Sequence[PreferencePair], layers: list[int],
           config: ITIConfig, run: TrainingRun) -> SteeringVector:
    return train_iti(model, pairs, layers, top_k=config.top_k, holdout=config.holdout,
                     l2=config.l2, seed=run.seed, batch_size=run.batch_size,
                     progress=run.progress)


METHODS = (
    VectorMethod("iti", "inference-time intervention: the top-k heads by probe accuracy, "
                 "shifted along their mass mean (layers given: where heads are searched)",
                 ITIConfig, _train, multi_layer=True, picks_layers=True),
)

__all__ = ["METHODS", "ITIConfig", "read_heads", "train_iti"]

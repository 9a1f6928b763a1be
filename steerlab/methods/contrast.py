"""What the activation-reading methods share: each pair's chosen and rejected sequences read at
their last token (prompt through the chat template, completion appended, as CAA reads them),
and a direction oriented and scaled the same way for every method, so their multipliers are
comparable."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from steerlab.data.files import PreferencePair
from steerlab.model.activations import read_layers
from steerlab.model.capture import forward_until
from steerlab.model.encoding import TokenSequence, encode, pack_pairs
from steerlab.model.handle import ModelHandle
from steerlab.progress import track
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
    """Read every pair's chosen and rejected sequence at ``layers``.

    Chosen and rejected share their prompt, so each pair runs as one packed row (the prompt
    once, the rejected completion masked from the chosen one: :func:`pack_pairs`), half the
    tokens of reading them apart. The first batch is also read apart; a model that does not
    honour the packed mask (the two reads disagree) is read apart throughout. The mean token
    norm counts the prompt once per side, as reading apart does.
    """
    if not pairs:
        raise ValueError("at least one preference pair is needed")
    layers = sorted(set(layers))
    chosen_seqs = encode(model, [p.prompt for p in pairs], [p.chosen for p in pairs])
    rejected_seqs = encode(model, [p.prompt for p in pairs], [p.rejected for p in pairs])
    chosen = {layer: torch.empty(len(pairs), model.d_model) for layer in layers}
    rejected = {layer: torch.empty(len(pairs), model.d_model) for layer in layers}
    norm_sum, n_tokens = dict.fromkeys(layers, 0.0), 0
    starts = range(0, len(pairs), batch_size)
    packed = True
    for start in track(starts, len(starts), description, progress):
        part = slice(start, start + batch_size)
        if packed:
            read = _read_packed(model, chosen_seqs[part], rejected_seqs[part], layers)
            if start == 0 and not _agrees(read, _read_apart(model, chosen_seqs[part],
                                                             rejected_seqs[part], layers)):
                packed = False
        if not packed:
            read = _read_apart(model, chosen_seqs[part], rejected_seqs[part], layers)
        last_chosen, last_rejected, norms, count = read
        for layer in layers:
            chosen[layer][part], rejected[layer][part] = last_chosen[layer], last_rejected[layer]
            norm_sum[layer] += norms[layer]
        n_tokens += count
    return Contrast(chosen, rejected, {layer: norm_sum[layer] / n_tokens for layer in layers})


Read = tuple[dict[int, torch.Tensor], dict[int, torch.Tensor], dict[int, float], int]
"""Per layer: last chosen-token outputs, last rejected-token outputs, summed token norms; and
the number of tokens summed."""


@torch.no_grad()
def _read_packed(model: ModelHandle, chosen: Sequence[TokenSequence],
                 rejected: Sequence[TokenSequence], layers: list[int]) -> Read:
    batch = pack_pairs(list(zip(chosen, rejected)), model.tokenizer.pad_token_id, model.dtype,
                       model.device)
    outputs = forward_until(model.model, model.layers, layers, **batch.model_inputs())
    width = batch.input_ids.shape[1]
    rows = torch.arange(len(chosen))
    at_chosen = torch.tensor([width - 1 - r.n_completion for r in rejected])
    weight = torch.zeros(len(chosen), width)
    for row, (c, r) in enumerate(zip(chosen, rejected)):
        prompt_start = width - (len(c.ids) + r.n_completion)
        weight[row, prompt_start:] = 1.0
        weight[row, prompt_start:prompt_start + c.prompt_len] = 2.0  # the prompt, once per side
    norms, chosen_last = {}, {}
    for layer in layers:  # each on its layer's device (a model may span several)
        out = outputs[layer]
        norms[layer] = float((out.float().norm(dim=-1) * weight.to(out.device)).sum())
        chosen_last[layer] = out[rows.to(out.device), at_chosen.to(out.device)].float().cpu()
    return (chosen_last, {layer: outputs[layer][:, -1].float().cpu() for layer in layers},
            norms, int(weight.sum()))


def _read_apart(model: ModelHandle, chosen: Sequence[TokenSequence],
                rejected: Sequence[TokenSequence], layers: list[int]) -> Read:
    readout = read_layers(model, [*chosen, *rejected], layers, len(chosen) * 2, progress=False)
    n, tokens = len(chosen), sum(len(s.ids) for s in [*chosen, *rejected])
    return ({layer: readout.last[layer][:n] for layer in layers},
            {layer: readout.last[layer][n:] for layer in layers},
            {layer: readout.mean_norm[layer] * tokens for layer in layers}, tokens)


def _agrees(packed: Read, apart: Read) -> bool:
    """Whether a packed read matches reading apart (a model may ignore a custom mask)."""
    return all(torch.allclose(packed[side][layer], apart[side][layer], rtol=1e-3, atol=1e-3)
               for side in (0, 1) for layer in packed[0])


@dataclass(frozen=True)
class SignVote:
    """How a direction's sign was decided: pairs whose chosen side projects higher and lower,
    the mean gap, and what decided (the vote, or the mean gap where the vote tied)."""

    higher: int
    lower: int
    mean_gap: float
    decided_by: str

    def close(self) -> bool:
        """Whether the vote was a tie or within 10% of the pairs (at least one pair): on
        answer-balanced data the first component can be the answer axis, and its sign a coin
        flip."""
        return abs(self.higher - self.lower) <= max(1.0, 0.1 * (self.higher + self.lower))

    def describe(self) -> dict[str, Any]:
        return {"higher": self.higher, "lower": self.lower, "mean_gap": self.mean_gap,
                "decided_by": self.decided_by}


def oriented(direction: torch.Tensor, contrast: Contrast,
             layer: int) -> tuple[torch.Tensor, SignVote]:
    """``direction`` as a steering vector: signed so that most pairs' chosen side projects
    higher than their rejected side (a tie broken by the mean chosen − rejected gap, never by
    the decomposition's own arbitrary sign), and scaled to that mean gap, so ×1 moves as far
    along it as CAA's vector does; with the vote that decided the sign."""
    unit = direction.float() / direction.float().norm().clamp_min(1e-12)
    gaps = contrast.differences(layer) @ unit
    higher, lower = int((gaps > 0).sum()), int((gaps < 0).sum())
    flip = lower > higher or (lower == higher and float(gaps.mean()) < 0)
    if flip:
        unit, gaps = -unit, -gaps
    vote = SignVote(int((gaps > 0).sum()), int((gaps < 0).sum()), float(gaps.mean()),
                    "vote" if higher != lower else "mean gap (the vote tied)")
    return unit * gaps.mean().abs(), vote


def sign_votes(name: str, votes: dict[int, SignVote], meta: VectorMeta) -> None:
    """Keep each layer's sign vote in the vector's metadata, and warn where it was close."""
    meta.extra["sign_vote"] = {str(layer): vote.describe() for layer, vote in votes.items()}
    close = {layer: vote for layer, vote in votes.items() if vote.close()}
    if close:
        warnings.warn(f"{name}: the sign of the direction was nearly a coin flip at layers "
                      + ", ".join(f"{layer} ({v.higher} pairs higher, {v.lower} lower; decided "
                                  f"by {v.decided_by})" for layer, v in close.items())
                      + ": on answer-balanced data it may be the answer axis, not the behaviour",
                      stacklevel=3)


def contrast_meta(model: ModelHandle, method: str, pairs: Sequence[PreferencePair],
                  contrast: Contrast, **hyperparams: Any) -> VectorMeta:
    """Metadata of a vector computed from a contrast: where it read, what it computed."""
    return meta_for(model, method, hyperparams={"token": TOKEN, **hyperparams},
                    data_hash=data_hash(list(pairs)), n_examples=len(pairs),
                    residual_norms=contrast.mean_norm)

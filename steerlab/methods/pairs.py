"""Preference pairs as model input, shared by the trainers that learn from them (BiPO and DPO
vectors, the LoRA baseline): each pair's chosen and rejected sequences, laid out as model rows
(packed behind one prompt, or chosen rows then rejected rows), in shuffled length-sorted batches.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from steerlab.data.files import PreferencePair
from steerlab.model.encoding import TokenSequence, collate, encode, pack_pairs
from steerlab.model.handle import ModelHandle
from steerlab.model.scoring import token_logprobs


@dataclass
class EncodedPair:
    """A pair's two sequences (chosen, rejected) and, for the fast engine, their cached parts."""

    pair_id: str
    chosen: TokenSequence
    rejected: TokenSequence
    ref: torch.Tensor | None = None
    """The reference scores (chosen, rejected), kept where the model computed them."""
    hidden: list[torch.Tensor] = field(default_factory=list)  # layer-L output per model row, (T, D)


@dataclass
class PairRows:
    """A chunk of pairs laid out as model rows, and how to read both completions' scores."""

    inputs: dict[str, torch.Tensor]
    keep: int
    width: int
    scores: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

    def hidden_rows(self, items: Sequence[EncodedPair], packed: bool) -> list[torch.Tensor]:
        """Cached layer outputs in row order: one per pair packed, else chosen then rejected."""
        if packed:
            return [e.hidden[0] for e in items]
        return [e.hidden[0] for e in items] + [e.hidden[1] for e in items]


def store_references(items: Sequence[EncodedPair], chosen: torch.Tensor,
                     rejected: torch.Tensor) -> None:
    """Keep each pair's reference scores (row i of ``chosen`` and ``rejected``) on it, on the
    device they were computed on: no copy to the host."""
    scores = torch.stack([chosen.detach(), rejected.detach()], dim=1)
    for row, item in enumerate(items):
        item.ref = scores[row]


def references(items: Sequence[EncodedPair]) -> tuple[torch.Tensor, torch.Tensor]:
    """The stored reference scores of ``items``: (chosen, rejected), one entry per pair."""
    scores = torch.stack([item.ref for item in items])  # type: ignore[misc]
    return scores[:, 0], scores[:, 1]


def pair_rows(model: ModelHandle, items: Sequence[EncodedPair], packed: bool) -> PairRows:
    """Packed: one row per pair sharing the prompt; unpacked: chosen rows then rejected rows."""
    if packed:
        pairs = [(e.chosen, e.rejected) for e in items]
        batch = pack_pairs(pairs, model.tokenizer.pad_token_id, model.dtype, model.device)
        return PairRows(batch.model_inputs(), batch.keep, batch.input_ids.shape[1],
                        batch.summed_logprobs)
    seqs = [e.chosen for e in items] + [e.rejected for e in items]
    batch = collate(seqs, model.tokenizer.pad_token_id, model.device)
    n = len(items)

    def scores(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        summed = token_logprobs(logits, batch).sum(dim=-1)
        return summed[:n], summed[n:]

    return PairRows(batch.model_inputs(), batch.max_completion + 1, batch.input_ids.shape[1],
                    scores)


def shuffled_batches(items: list[EncodedPair], batch_size: int,
                     rng: random.Random) -> list[list[EncodedPair]]:
    """Shuffle, then sort by length inside windows of 16 batches: little padding, still random."""
    order = items[:]
    rng.shuffle(order)
    window = batch_size * 16
    out = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window],
                       key=lambda e: len(e.chosen.ids) + len(e.rejected.ids))
        out += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(out)
    return out


def encode_pairs(model: ModelHandle, pairs: Sequence[PreferencePair]) -> list[EncodedPair]:
    """Each pair's prompt with its chosen and with its rejected completion, encoded; a pair
    whose completion tokenises to nothing is an error naming it."""
    prompts = [p.prompt for p in pairs]
    chosen = encode(model, prompts, [p.chosen for p in pairs])
    rejected = encode(model, prompts, [p.rejected for p in pairs])
    for index, (c, r) in enumerate(zip(chosen, rejected)):
        if c.n_completion == 0 or r.n_completion == 0:
            raise ValueError(
                f"pair {pairs[index].id or index}: empty completion after tokenisation")
    return [EncodedPair(p.id or str(i), c, r)
            for i, (p, c, r) in enumerate(zip(pairs, chosen, rejected))]

"""Token sequences of (formatted prompt, completion) and left-padded batches of them.

Prompt and completion are tokenised separately and concatenated, so the completion's tokens
are known exactly (the mask every log-probability and every activation read depends on).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from steerlab.model.handle import ModelHandle


@dataclass(frozen=True)
class TokenSequence:
    """Token ids of a formatted prompt followed by a completion; ``ids[prompt_len:]`` is it."""

    ids: tuple[int, ...]
    prompt_len: int

    @property
    def n_completion(self) -> int:
        return len(self.ids) - self.prompt_len


def encode(
    model: ModelHandle, prompts: Sequence[str], completions: Sequence[str]
) -> list[TokenSequence]:
    """Encode each (prompt, completion): prompt through the model's template, then completion."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    prompt_ids: dict[str, list[int]] = {}
    out = []
    for prompt, completion in zip(prompts, completions):
        if prompt not in prompt_ids:
            prompt_ids[prompt] = model.encode_prompt(model.format_prompt(prompt))
        head = prompt_ids[prompt]
        tail = model.encode_completion(completion) if completion else []
        out.append(TokenSequence(tuple(head + tail), len(head)))
    return out


def check_length(model: ModelHandle, tokens: int, what: Callable[[], str]) -> None:
    """Refuse a sequence longer than the model's positions: past them a model reads garbage
    (rotary ones) or fails on an index (learnt ones) instead of saying so. ``what`` names the
    sequence, made only when needed."""
    if model.context is not None and tokens > model.context:
        raise ValueError(f"{what()} has {tokens} tokens, over the model's {model.context} "
                         "positions")


def encode_texts(model: ModelHandle, texts: Sequence[str]) -> list[TokenSequence]:
    """Encode raw texts (no template) as prompt-only sequences, e.g. for calibration."""
    return [
        TokenSequence(tuple(model.tokenizer(t)["input_ids"]), 0) for t in texts
    ]


@dataclass
class Batch:
    """Left-padded tensors for a group of sequences: every sequence ends at the last column.

    Left padding puts all completions at the end, so the logits of the last few columns cover
    every completion token, and the last column is every sequence's last token. Position ids
    count real tokens only, so padding changes no result.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: torch.Tensor
    prompt_lens: torch.Tensor

    @property
    def position_ids(self) -> torch.Tensor:
        return (self.attention_mask.cumsum(dim=-1) - 1).clamp_min(0)

    @property
    def max_completion(self) -> int:
        return int((self.lengths - self.prompt_lens).max())

    def completion_mask(self) -> torch.Tensor:
        """(B, T) bool: True at completion tokens."""
        width = self.input_ids.shape[1]
        index = torch.arange(width, device=self.input_ids.device)
        start = width - self.lengths + self.prompt_lens
        return index >= start[:, None]

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "position_ids": self.position_ids,
        }


def collate(seqs: Sequence[TokenSequence], pad_id: int,
            device: torch.device | None = None) -> Batch:
    """Stack sequences into a left-padded :class:`Batch`."""
    width = max(len(s.ids) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, width - len(seq.ids) :] = torch.tensor(seq.ids)
        mask[row, width - len(seq.ids) :] = 1
    tensors = (ids, mask, torch.tensor([len(s.ids) for s in seqs]),
               torch.tensor([s.prompt_len for s in seqs]))
    return Batch(*(t.to(device) if device is not None else t for t in tensors))


def batches(
    seqs: Sequence[TokenSequence], batch_size: int, pad_id: int, device: torch.device | None = None
) -> Iterator[tuple[list[int], Batch]]:
    """Yield (original indices, batch), grouping sequences of similar length to waste little
    padding."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i].ids))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        yield chunk, collate([seqs[i] for i in chunk], pad_id, device)


@dataclass
class PairBatch:
    """Pairs packed as one sequence each: prompt, then chosen, then rejected completion.

    The rejected tokens see the prompt but not the chosen ones, and their positions restart
    after the prompt, so each completion is scored exactly as if alone — while the prompt, the
    bulk of the tokens, is run once instead of twice. Rows are left-padded; ``attention_mask``
    is the additive 4D mask (B, 1, T, T) that HF models take as given.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: torch.Tensor
    keep: int
    chosen_at: torch.Tensor  # (B, C) window index of the logits predicting each chosen token
    chosen_ids: torch.Tensor
    chosen_mask: torch.Tensor
    rejected_at: torch.Tensor
    rejected_ids: torch.Tensor
    rejected_mask: torch.Tensor

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "position_ids": self.position_ids}

    def summed_logprobs(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log-probabilities of chosen and rejected completions from the window logits."""
        logp = torch.log_softmax(logits.float(), dim=-1)
        rows = torch.arange(logp.shape[0], device=logp.device)[:, None]

        def total(at: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            at, ids, mask = (t.to(logp.device) for t in (at, ids, mask))  # the head's device
            return (logp[rows, at, ids] * mask).sum(dim=-1)

        return (total(self.chosen_at, self.chosen_ids, self.chosen_mask),
                total(self.rejected_at, self.rejected_ids, self.rejected_mask))


def pack_pairs(
    pairs: Sequence[tuple[TokenSequence, TokenSequence]],
    pad_id: int,
    dtype: torch.dtype,
    device: torch.device | None = None,
) -> PairBatch:
    """Pack (chosen, rejected) sequences that share their prompt into a :class:`PairBatch`."""
    rows = []
    for chosen, rejected in pairs:
        p = chosen.prompt_len
        if chosen.ids[:p] != rejected.ids[: rejected.prompt_len]:
            raise ValueError("packed pairs must share the same prompt tokens")
        rows.append((chosen.ids[:p], chosen.ids[p:], rejected.ids[p:]))
    width = max(len(p) + len(c) + len(r) for p, c, r in rows)
    keep = max(len(c) + len(r) for _, c, r in rows) + 1
    n_c = max(len(c) for _, c, _ in rows)
    n_r = max(len(r) for _, _, r in rows)
    batch = len(rows)
    ids = torch.full((batch, width), pad_id, dtype=torch.long)
    positions = torch.zeros((batch, width), dtype=torch.long)
    allowed = torch.zeros((batch, width, width), dtype=torch.bool)
    chosen_at = torch.zeros((batch, n_c), dtype=torch.long)
    chosen_ids = torch.zeros((batch, n_c), dtype=torch.long)
    chosen_mask = torch.zeros((batch, n_c))
    rejected_at = torch.zeros((batch, n_r), dtype=torch.long)
    rejected_ids = torch.zeros((batch, n_r), dtype=torch.long)
    rejected_mask = torch.zeros((batch, n_r))
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    for row, (p, c, r) in enumerate(rows):
        n = len(p) + len(c) + len(r)
        start = width - n
        ids[row, start:] = torch.tensor(p + c + r)
        positions[row, start:] = torch.tensor(
            list(range(len(p) + len(c))) + list(range(len(p), len(p) + len(r)))
        )
        block = causal[:n, :n].clone()
        block[len(p) + len(c) :, len(p) : len(p) + len(c)] = False  # rejected never sees chosen
        allowed[row, start:, start:] = block
        allowed[row, range(start), range(start)] = True  # padding attends to itself: no empty rows
        offset = keep - (len(c) + len(r) + 1)  # window index of the last prompt token
        chosen_at[row, : len(c)] = offset + torch.arange(len(c))
        chosen_ids[row, : len(c)] = torch.tensor(c)
        chosen_mask[row, : len(c)] = 1
        rejected_at[row, : len(r)] = torch.tensor(
            [offset] + [offset + len(c) + k for k in range(1, len(r))])
        rejected_ids[row, : len(r)] = torch.tensor(r)
        rejected_mask[row, : len(r)] = 1
    mask = torch.zeros((batch, 1, width, width), dtype=dtype)
    mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    lengths = torch.tensor([len(p) + len(c) + len(r) for p, c, r in rows])
    tensors = [ids, positions, mask, lengths]
    extra = [chosen_at, chosen_ids, chosen_mask, rejected_at, rejected_ids, rejected_mask]
    if device is not None:
        tensors = [t.to(device) for t in tensors]
        extra = [t.to(device) for t in extra]
    return PairBatch(*tensors, keep, *extra)

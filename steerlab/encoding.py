"""Token sequences of (formatted prompt, completion) and left-padded batches of them.

Prompt and completion are tokenised separately and concatenated, so the completion's tokens
are known exactly (the mask every log-probability and every activation read depends on).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from steerlab.models import ModelHandle


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


def collate(seqs: Sequence[TokenSequence], pad_id: int, device: torch.device | None = None) -> Batch:
    """Stack sequences into a left-padded :class:`Batch`."""
    width = max(len(s.ids) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, width - len(seq.ids) :] = torch.tensor(seq.ids)
        mask[row, width - len(seq.ids) :] = 1
    tensors = (ids, mask, torch.tensor([len(s.ids) for s in seqs]), torch.tensor([s.prompt_len for s in seqs]))
    return Batch(*(t.to(device) if device is not None else t for t in tensors))


def batches(
    seqs: Sequence[TokenSequence], batch_size: int, pad_id: int, device: torch.device | None = None
) -> Iterator[tuple[list[int], Batch]]:
    """Yield (original indices, batch), grouping sequences of similar length to waste little padding."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i].ids))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        yield chunk, collate([seqs[i] for i in chunk], pad_id, device)

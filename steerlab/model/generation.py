"""Batched text generation (left padding, KV cache) under whatever steering is active."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from steerlab.model.encoding import check_length
from steerlab.model.handle import ModelHandle
from steerlab.progress import track


def _left_padded(model: ModelHandle, rows: Sequence[list[int]]) -> dict[str, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), model.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return {"input_ids": ids.to(model.device), "attention_mask": mask.to(model.device)}


@torch.no_grad()
def generate_batch(
    model: ModelHandle,
    rows: Sequence[list[int]],
    max_new_tokens: int = 64,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float | None = None,
    seed: int | None = None,
    stopping_criteria: Sequence[StoppingCriteria] = (),
) -> list[list[int]]:
    """New token ids for one left-padded batch of encoded prompts, cut at the first end-of-sequence.

    Sampling seeds torch with ``seed`` when given. ``stopping_criteria`` see every step (the
    server streams text and ends rows early through them).
    """
    inputs = _left_padded(model, rows)
    if do_sample and seed is not None:
        torch.manual_seed(seed)
    eos = model.tokenizer.eos_token_id
    result = model.model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature if do_sample else None,
        top_p=top_p if do_sample else None,
        top_k=None,
        pad_token_id=model.tokenizer.pad_token_id,
        eos_token_id=eos,
        stopping_criteria=StoppingCriteriaList(stopping_criteria),
    )
    out = []
    for row in result[:, inputs["input_ids"].shape[1] :].tolist():
        out.append(row[: row.index(eos)] if eos in row else row)
    return out


def generate_tokens(
    model: ModelHandle,
    prompts: Sequence[str],
    max_new_tokens: int = 64,
    *,
    batch_size: int = 8,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    format_prompts: bool = True,
    progress: bool = True,
) -> list[list[int]]:
    """New token ids for each prompt, cut at the first end-of-sequence token.

    Prompts go through the model's template unless ``format_prompts`` is false. Sampling is
    seeded per batch (``seed`` + batch number) so a run can be repeated.
    """
    texts = [model.format_prompt(p) if format_prompts else p for p in prompts]
    encoded = [model.encode_prompt(t) for t in texts]
    for index, (text, ids) in enumerate(zip(texts, encoded)):
        check_length(model, len(ids) + max_new_tokens,
                     lambda: f"prompt {index} ({text[:40]!r}...) with {max_new_tokens} new tokens")
    out: list[list[int]] = []
    starts = range(0, len(encoded), batch_size)
    for number, start in enumerate(track(starts, len(starts), "generating", progress)):
        out += generate_batch(
            model, encoded[start : start + batch_size], max_new_tokens,
            do_sample=do_sample, temperature=temperature, seed=seed + number,
        )
    return out


def generate(model: ModelHandle, prompts: Sequence[str], max_new_tokens: int = 64,
             **kwargs) -> list[str]:
    """Generated text for each prompt (see :func:`generate_tokens` for the options)."""
    tokens = generate_tokens(model, prompts, max_new_tokens, **kwargs)
    return [model.tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]

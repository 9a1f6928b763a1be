"""Log-probabilities of completions given prompts, under whatever steering is active."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from steerlab.model.capture import forward_until
from steerlab.model.encoding import Batch, TokenSequence, batches, check_length, encode
from steerlab.model.handle import ModelHandle
from steerlab.model.upper import upper_stack
from steerlab.progress import track


@dataclass(frozen=True)
class CompletionScore:
    """Summed log-probability of a completion's tokens and how many tokens it has."""

    logprob: float
    n_tokens: int

    @property
    def mean_logprob(self) -> float:
        """Length-normalised score (per token), so long choices are not penalised for length."""
        return self.logprob / max(self.n_tokens, 1)


def token_logprobs(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """(B, K-1) log-probability of each completion token among the batch's last K-1 tokens
    given the tokens before it (0 at other tokens), from the logits of the last K positions.

    Position t of the logits predicts token t+1, so completion token t is read at t-1.
    """
    first = batch.input_ids.shape[1] - logits.shape[1] + 1  # first column whose token is read
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    ids, mask = (t[:, first:].to(logp.device) for t in (batch.input_ids, batch.completion_mask()))
    return logp.gather(-1, ids[..., None]).squeeze(-1) * mask


def keeps_logits(model: ModelHandle) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (projects only the last positions)."""
    return "logits_to_keep" in inspect.signature(model.model.forward).parameters


def window_logits(model: ModelHandle, inputs: dict[str, torch.Tensor], keep: int) -> torch.Tensor:
    """Logits of the last ``keep`` positions only; models that accept ``logits_to_keep`` skip
    the vocabulary projection everywhere else."""
    if keeps_logits(model):
        return model.model(**inputs, use_cache=False, logits_to_keep=keep).logits
    return model.model(**inputs, use_cache=False).logits[:, -keep:]


Setting = Callable[[], AbstractContextManager]


def _continued_logits(model: ModelHandle, inputs: dict[str, Any], setting: Setting,
                      keep: int) -> torch.Tensor:
    with setting():
        return window_logits(model, inputs, keep)
"""Makes the context (e.g. a :class:`~steerlab.steering.hooks.Steering`) one scoring pass runs
under."""


def settings_logits(
    model: ModelHandle,
    inputs: dict[str, torch.Tensor],
    settings: Sequence[Setting],
    shared: int | Sequence[int],
    keep: int,
) -> Iterator[torch.Tensor]:
    """Logits of the last ``keep`` positions of one batch under each setting in turn.

    No setting may change layers ``0..shared-1`` (``shared`` per setting, or one for all): those
    run once for every setting together, and only the layers above run once per setting, so K
    settings cost one lower pass plus K upper passes, same numbers.
    """
    shares = [shared] * len(settings) if isinstance(shared, int) else list(shared)
    read = sorted({s - 1 for s in shares if s > 0})
    below = forward_until(model.model, model.layers, read, **inputs) if read else {}
    for setting, share in zip(settings, shares):
        with setting(), (upper_stack(model.layers, share - 1) if share > 0
                         else nullcontext()) as top:
            if top is not None:
                top.value = below[share - 1]
            logits = window_logits(model, inputs, keep)
        yield logits


PREFIX_MIN = 64
"""Shortest token prefix common to every sequence worth running once for all (a k-shot or
system preamble); shorter ones are recomputed per sequence."""


def common_prefix(seqs: Sequence[TokenSequence]) -> int:
    """Tokens every sequence starts with, short of each one's last prompt token (the logits
    that score a completion must come from the sequence's own pass)."""
    if not seqs:
        return 0
    first, limit = seqs[0].ids, min(seq.prompt_len for seq in seqs) - 1
    length = 0
    while length < limit and all(seq.ids[length] == first[length] for seq in seqs):
        length += 1
    return length


def _prefix_inputs(model: ModelHandle, batch: Batch, prefix: tuple[int, ...],
                   cache: Any) -> dict[str, Any]:
    """A batch of suffixes continuing a cached prefix: the prefix's keys and values repeated per
    row, the attention mask and positions extended over it."""
    rows = batch.input_ids.shape[0]
    past = copy.deepcopy(cache)
    past.batch_repeat_interleave(rows)
    ones = torch.ones((rows, len(prefix)), dtype=batch.attention_mask.dtype,
                      device=batch.input_ids.device)
    return {"input_ids": batch.input_ids,
            "attention_mask": torch.cat([ones, batch.attention_mask], dim=1),
            "position_ids": batch.position_ids + len(prefix), model.cache_keyword: past}


@torch.no_grad()
def score_sequences(
    model: ModelHandle,
    seqs: Sequence[TokenSequence],
    batch_size: int = 8,
    progress: bool = True,
    description: str = "scoring",
) -> list[CompletionScore]:
    """Score already encoded sequences under whatever steering is active; input order kept."""
    return score_settings(model, seqs, [nullcontext], 0, batch_size, progress, description)[0]


@torch.no_grad()
def score_settings(
    model: ModelHandle,
    seqs: Sequence[TokenSequence],
    settings: Sequence[Setting],
    shared: int | Sequence[int] = 0,
    batch_size: int = 8,
    progress: bool = True,
    description: str = "scoring",
    share_prefix: bool = False,
) -> list[list[CompletionScore]]:
    """Score the sequences under each setting; one list of scores per setting, input order kept.

    No setting may change layers ``0..shared-1`` (one count, or one per setting; see
    :func:`settings_logits`). Sequences that
    differ only in their last token (A/B answer letters, single-token choices) share one forward
    pass: their common stem runs once and each last token is read from the stem's final
    next-token distribution. With ``share_prefix`` (for settings that steer every position or
    none, and ``shared`` 0), a long token prefix common to all sequences — a k-shot or system
    preamble — runs once per setting and every batch continues from its cached keys and values.
    """
    stems: dict[tuple[tuple[int, ...], int], int] = {}
    needed: list[set[int]] = []
    stem_of: list[int | None] = []
    for index, seq in enumerate(seqs):
        check_length(model, len(seq.ids),
                     lambda: f"sequence {index} ({model.tokenizer.decode(seq.ids[:12])!r}...)")
        if seq.n_completion == 0:
            stem_of.append(None)
            continue
        key = (seq.ids[:-1], seq.prompt_len)
        if key not in stems:
            stems[key] = len(stems)
            needed.append(set())
        stem_of.append(stems[key])
        needed[stems[key]].add(seq.ids[-1])
    stem_seqs = [TokenSequence(ids, min(prompt_len, len(ids))) for ids, prompt_len in stems]
    stem_sum = [[0.0] * len(stem_seqs) for _ in settings]
    last_logp: list[list[dict[int, float]]] = [[{} for _ in stem_seqs] for _ in settings]
    pad_id = model.tokenizer.pad_token_id
    n_steps = -(-len(stem_seqs) // batch_size)
    unshared = shared == 0 if isinstance(shared, int) else not any(shared)
    cut = common_prefix(stem_seqs) if share_prefix and unshared else 0
    prefix = stem_seqs[0].ids[:cut] if cut >= PREFIX_MIN else ()
    caches = []
    for setting in settings if prefix else []:
        with setting():
            ids = torch.tensor([prefix], device=model.device)
            caches.append(model.model(input_ids=ids, use_cache=True)[model.cache_keyword])
    suffixes = [TokenSequence(seq.ids[len(prefix):], seq.prompt_len - len(prefix))
                for seq in stem_seqs]
    steps = batches(suffixes, batch_size, pad_id, model.device)
    for index, batch in track(steps, n_steps, description, progress):
        window = batch.max_completion + 1
        if prefix:
            passes: Iterator[torch.Tensor] = (
                _continued_logits(model, _prefix_inputs(model, batch, prefix, cache), setting,
                                  window)
                for setting, cache in zip(settings, caches)
            )
        else:
            passes = settings_logits(model, batch.model_inputs(), settings, shared, window)
        wanted = [(row, token) for row, i in enumerate(index) for token in sorted(needed[i])]
        picks: torch.Tensor | None = None
        read = []  # per setting: summed completion scores, then the last tokens' log-probs
        for logits in passes:
            if picks is None:
                picks = torch.tensor(wanted, dtype=torch.long).reshape(-1, 2).to(logits.device)
            final = torch.log_softmax(logits[:, -1].float(), dim=-1)
            read += [token_logprobs(logits, batch).sum(dim=-1), final[picks[:, 0], picks[:, 1]]]
        values = torch.cat(read).tolist()  # one copy to the host per batch, not one per row
        width = len(index) + len(wanted)
        for k in range(len(settings)):
            sums, picked = values[k * width : k * width + len(index)], iter(
                values[k * width + len(index) : (k + 1) * width])
            for row, i in enumerate(index):
                stem_sum[k][i] = sums[row]
                last_logp[k][i] = {token: next(picked) for token in sorted(needed[i])}
    return [
        [
            CompletionScore(0.0, 0)
            if stem is None
            else CompletionScore(stem_sum[k][stem] + last_logp[k][stem][seq.ids[-1]],
                                 seq.n_completion)
            for seq, stem in zip(seqs, stem_of)
        ]
        for k in range(len(settings))
    ]


def score_completions(
    model: ModelHandle,
    prompts: Sequence[str],
    completions: Sequence[str],
    batch_size: int = 8,
    progress: bool = True,
) -> list[CompletionScore]:
    """log p(completion | formatted prompt) for each pair of prompt and completion."""
    return score_sequences(model, encode(model, prompts, completions), batch_size, progress)

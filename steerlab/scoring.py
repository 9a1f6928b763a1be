"""Log-probabilities of completions given prompts, under whatever steering is active."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from steerlab.encoding import Batch, TokenSequence, batches, encode
from steerlab.models import ModelHandle
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
    """(B, T) log-probability of each completion token given the tokens before it; 0 elsewhere.

    Position t of the logits predicts token t+1, so completion token t is read at t-1.
    """
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    mask = batch.completion_mask()[:, 1:]
    return torch.nn.functional.pad(picked * mask, (1, 0))


@torch.no_grad()
def score_sequences(
    model: ModelHandle,
    seqs: Sequence[TokenSequence],
    batch_size: int = 16,
    progress: bool = True,
    description: str = "scoring",
) -> list[CompletionScore]:
    """Score already encoded sequences; results come back in input order."""
    scores: list[CompletionScore | None] = [None] * len(seqs)
    pad_id = model.tokenizer.pad_token_id
    n_steps = -(-len(seqs) // batch_size)
    for index, batch in track(batches(seqs, batch_size, pad_id, model.device), n_steps, description, progress):
        logits = model.model(**batch.model_inputs(), use_cache=False).logits
        summed = token_logprobs(logits, batch).sum(dim=-1)
        for row, i in enumerate(index):
            scores[i] = CompletionScore(float(summed[row]), seqs[i].n_completion)
    return scores  # type: ignore[return-value]


def score_completions(
    model: ModelHandle,
    prompts: Sequence[str],
    completions: Sequence[str],
    batch_size: int = 16,
    progress: bool = True,
) -> list[CompletionScore]:
    """log p(completion | formatted prompt) for each pair of prompt and completion."""
    return score_sequences(model, encode(model, prompts, completions), batch_size, progress)

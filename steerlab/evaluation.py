"""Likelihood evaluation: multiple choice and A/B behaviour, across steering multipliers.

Scores come from model log-probabilities, never from sampled text. Each item × setting yields
one record holding everything needed to recompute the figures: the exact prompt text, the
choices, every per-choice score, the prediction and the steering setting.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext

from steerlab.data import MCItem, PreferencePair
from steerlab.encoding import encode
from steerlab.models import ModelHandle
from steerlab.records import Record, RecordWriter
from steerlab.scoring import CompletionScore, score_sequences
from steerlab.steering import Positions
from steerlab.vectors import SteeringVector


def _softmax(values: Sequence[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def _sweep(
    model: ModelHandle,
    prompts: Sequence[str],
    choices: Sequence[Sequence[str]],
    vector: SteeringVector | None,
    multipliers: Sequence[float],
    layers: list[int] | None,
    norm_ratio: float | None,
    positions: Positions,
    batch_size: int,
    progress: bool,
) -> Iterator[tuple[float, list[list[CompletionScore]]]]:
    """For each multiplier, the score of every choice of every item under that steering."""
    flat_prompts = [p for p, options in zip(prompts, choices) for _ in options]
    flat_choices = [c for options in choices for c in options]
    seqs = encode(model, flat_prompts, flat_choices)
    for multiplier in multipliers:
        context = (
            vector.apply(model, multiplier, layers, positions, norm_ratio) if vector else nullcontext()
        )
        with context:
            flat = score_sequences(
                model, seqs, batch_size, progress, description=f"scoring ×{multiplier:g}"
            )
        per_item, start = [], 0
        for options in choices:
            per_item.append(flat[start : start + len(options)])
            start += len(options)
        yield multiplier, per_item


def _evaluate(
    task: str,
    build: Callable[[int, list[CompletionScore]], Record],
    model: ModelHandle,
    prompts: Sequence[str],
    choices: Sequence[Sequence[str]],
    *,
    vector: SteeringVector | None,
    multipliers: Sequence[float],
    layers: list[int] | None,
    norm_ratio: float | None,
    positions: Positions,
    dataset: str,
    writer: RecordWriter | None,
    batch_size: int,
    progress: bool,
) -> list[Record]:
    if vector is None:
        multipliers = [0.0]
    used_layers = sorted(vector.additions(1.0, layers)) if vector else None
    formatted = [model.format_prompt(p) for p in prompts]
    records = []
    for multiplier, per_item in _sweep(
        model, prompts, choices, vector, multipliers, layers, norm_ratio, positions, batch_size, progress
    ):
        for index, scores in enumerate(per_item):
            record = {
                "task": task,
                "dataset": dataset,
                "model": model.name,
                "vector_id": vector.id if vector else None,
                "layers": used_layers,
                "norm_ratio": norm_ratio,
                "positions": positions,
                "multiplier": float(multiplier),
                "prompt": formatted[index],
                "logprobs": [s.logprob for s in scores],
                "n_tokens": [s.n_tokens for s in scores],
                **build(index, scores),
            }
            records.append(record)
            if writer is not None:
                writer.write(record)
    return records


def evaluate_mc(
    model: ModelHandle,
    items: Sequence[MCItem],
    *,
    vector: SteeringVector | None = None,
    multipliers: Sequence[float] = (0.0,),
    layers: list[int] | None = None,
    norm_ratio: float | None = None,
    positions: Positions = "all",
    dataset: str = "",
    writer: RecordWriter | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> list[Record]:
    """Multiple-choice accuracy by likelihood: the choice with the highest summed log-probability
    (``correct``) and with the highest per-token log-probability (``correct_norm``)."""

    def build(index: int, scores: list[CompletionScore]) -> Record:
        item = items[index]
        summed = [s.logprob for s in scores]
        normed = [s.mean_logprob for s in scores]
        prediction, prediction_norm = _argmax(summed), _argmax(normed)
        return {
            "item_id": item.id,
            "choices": list(item.choices),
            "answer": item.answer,
            "mean_logprobs": normed,
            "prediction": prediction,
            "prediction_norm": prediction_norm,
            "correct": prediction == item.answer,
            "correct_norm": prediction_norm == item.answer,
            "score": float(prediction == item.answer),
        }

    return _evaluate(
        "mc", build, model, [i.question for i in items], [i.choices for i in items],
        vector=vector, multipliers=multipliers, layers=layers, norm_ratio=norm_ratio,
        positions=positions, dataset=dataset, writer=writer, batch_size=batch_size,
        progress=progress,
    )


def evaluate_ab(
    model: ModelHandle,
    pairs: Sequence[PreferencePair],
    *,
    vector: SteeringVector | None = None,
    multipliers: Sequence[float] = (0.0,),
    layers: list[int] | None = None,
    norm_ratio: float | None = None,
    positions: Positions = "all",
    dataset: str = "",
    writer: RecordWriter | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> list[Record]:
    """A/B behaviour: the probability of the behaviour-matching answer (``chosen``), normalised
    over the offered answers. ``score`` is that probability; ``correct`` says it is the larger."""

    def build(index: int, scores: list[CompletionScore]) -> Record:
        pair = pairs[index]
        probs = _softmax([s.logprob for s in scores])
        return {
            "item_id": pair.id,
            "choices": [pair.chosen, pair.rejected],
            "answer": 0,
            "probs": probs,
            "prediction": _argmax(probs),
            "correct": probs[0] > probs[1],
            "score": probs[0],
        }

    return _evaluate(
        "ab", build, model, [p.prompt for p in pairs], [(p.chosen, p.rejected) for p in pairs],
        vector=vector, multipliers=multipliers, layers=layers, norm_ratio=norm_ratio,
        positions=positions, dataset=dataset, writer=writer, batch_size=batch_size,
        progress=progress,
    )

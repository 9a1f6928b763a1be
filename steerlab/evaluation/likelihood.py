"""Likelihood evaluation: multiple choice and A/B behaviour, across steering multipliers.

Scores come from model log-probabilities, never from sampled text. Each item × setting yields
one record holding everything needed to recompute the figures: the exact prompt text, the
choices, every per-choice score, the prediction and the steering setting.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING

from steerlab.data.files import MCItem, PreferencePair, check_preferences, repeated_ids
from steerlab.model.encoding import encode
from steerlab.model.handle import ModelHandle
from steerlab.model.scoring import CompletionScore, Setting, score_settings
from steerlab.records import Record, RecordWriter, record_key
from steerlab.steering.hooks import Positions
from steerlab.steering.setting import Composition, SteeringSetting
from steerlab.steering.vectors import SteeringVector

if TYPE_CHECKING:
    from steerlab.engine.vllm_engine import VllmEngine


@dataclass(frozen=True)
class Sweep:
    """One steering setting at several multipliers; without a setting, the unsteered model once.

    Each multiplier applies ``setting`` at that multiplier (added, or with
    ``intervention="ablate"`` its direction projected out with that strength), together with
    ``composed_with`` held fixed when given: one row of a composition grid
    (:func:`composition_grid`).
    """

    setting: SteeringSetting | None = None
    multipliers: Sequence[float] = (0.0,)
    composed_with: Composition | None = None

    def check(self) -> None:
        """Raise now if a setting cannot apply (a layer the vector lacks, residual norms its
        norm ratio needs, a zero direction to ablate), before any work is done."""
        if self.setting is not None:
            self.composition(1.0).check()

    def composition(self, multiplier: float) -> Composition:
        """Everything applied at ``multiplier``: the fixed settings, then the swept one."""
        if self.setting is None:
            raise ValueError("an unsteered sweep has no composition")
        fixed = self.composed_with.parts if self.composed_with else ()
        return Composition((*fixed, self.setting.at(multiplier)))

    def settings(self, model: ModelHandle) -> list[tuple[float, Setting]]:
        """Each multiplier with a maker of the context that applies it."""
        if self.setting is None:
            return [(0.0, nullcontext)]
        self.composition(1.0).fit(model)  # before any pass: a layer the model lacks, a d_model
        return [(m, partial(self.composition(m).apply, model)) for m in self.multipliers]

    def with_baseline(self) -> Sweep:
        """This sweep with multiplier 0 first, where it lacks it: side effects are measured
        against the setting's own multiplier-0 records of the same items."""
        if 0.0 in [float(m) for m in self.multipliers]:
            return self
        return replace(self, multipliers=[0.0, *self.multipliers])

    def steers(self) -> list[Composition | None]:
        """What each multiplier applies, for an engine that takes steering per request."""
        if self.setting is None:
            return [None]
        return [self.composition(m) for m in self.multipliers]

    def shared_layers(self) -> int:
        """How many bottom layers no setting changes or reads: the lowest steered layer, or
        condition layer (0 unsteered)."""
        if self.setting is None:
            return 0
        return self.composition(1.0).lowest_layer()

    def shares_prefix(self) -> bool:
        """Whether a token prefix common to all sequences may run once per setting: only when
        every position is steered alike (no position choice, no condition reading the prompt)."""
        if self.setting is None:
            return True
        parts = self.composition(1.0).parts
        return all(p.positions == "all" and p.condition is None for p in parts)

    def describe(self) -> dict:
        """The fields every record carries about its setting (``intervention`` only for an
        ablation, ``composed_with`` only with fixed settings, ``condition`` only when
        conditional, so older records keep their keys)."""
        setting = self.setting
        if setting is None:
            return {"vector_id": None, "layers": None, "norm_ratio": None, "positions": "all"}
        fields = {
            "vector_id": setting.vector.id,
            "layers": sorted(setting.placed()),
            "norm_ratio": setting.norm_ratio,
            "positions": setting.positions,
        }
        if setting.intervention != "add":
            fields["intervention"] = setting.intervention
        if self.composed_with is not None:
            fields["composed_with"] = self.composed_with.describe()
        if setting.condition is not None:
            fields["condition"] = setting.condition.describe()
        return fields


def _softmax(values: Sequence[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def _argmax(values: Sequence[float]) -> int | None:
    """The index of the largest value; None when several share it (a tie is not a choice:
    taking the first would credit choice 0 whenever a setting flattens the scores)."""
    top = max(values)
    best = [i for i, v in enumerate(values) if v == top]
    return best[0] if len(best) == 1 else None


def _tied_credit(values: Sequence[float], answer: int) -> float:
    """A tie's expected accuracy: the answer's share of the tied choices (what breaking the tie
    at random would score), 0 when the answer is not among them."""
    top = max(values)
    best = [i for i, v in enumerate(values) if v == top]
    return 1.0 / len(best) if answer in best else 0.0


CHUNK = 64
"""Items scored between two writes of records: what an interruption can lose at most."""


def _item_ids(items: Sequence[MCItem] | Sequence[PreferencePair]) -> list[str]:
    """Each item's id (its position where it has none); ids must be unique to pair records."""
    ids = [item.id or str(index) for index, item in enumerate(items)]
    repeated = repeated_ids(ids)
    if repeated:
        raise ValueError(f"item ids must be unique; repeated: {repeated[:5]}")
    return ids


def _evaluate(
    task: str,
    build: Callable[[int, list[CompletionScore]], Record],
    model: ModelHandle,
    prompts: Sequence[str],
    choices: Sequence[Sequence[str]],
    ids: Sequence[str],
    sweep: Sweep,
    dataset: str,
    writer: RecordWriter | None,
    batch_size: int,
    progress: bool,
    arm: str | None = None,
    chunk_size: int = CHUNK,
    engine: VllmEngine | None = None,
) -> list[Record]:
    """Score every choice of every item at each setting; one record per item × setting.

    Items go in fixed chunks whose records are written as soon as they are scored, so an
    interruption loses at most one chunk; with a ``writer`` on a file that already holds some of
    these records, complete chunks are not scored again (the run resumes) and their records are
    returned as they were written. A chunk is always scored whole, so its batches — and every
    number — are those of an uninterrupted run. ``arm`` labels the records of one experiment arm
    (a baseline, a method), so arms that share a setting keep apart. With a vLLM ``engine``
    (the records say ``"engine": "vllm"``) a chunk's sequences under every multiplier are
    scored together from vLLM's prompt log-probabilities.
    """
    common = {"task": task, "dataset": dataset, "model": model.name, **model.placement,
              **sweep.describe(),
              **({"arm": arm} if arm else {}), **({"engine": "vllm"} if engine else {})}
    settings = sweep.settings(model)

    def key(index: int, multiplier: float) -> str:
        return record_key({**common, "multiplier": float(multiplier), "item_id": ids[index]})

    done = {} if writer is None else {
        key(i, m): writer.get(key(i, m)) for i in range(len(prompts)) for m, _ in settings
    }
    for start in range(0, len(prompts), chunk_size):
        chunk = range(start, min(start + chunk_size, len(prompts)))
        if all(done.get(key(i, m)) is not None for i in chunk for m, _ in settings):
            continue
        seqs = encode(model, [prompts[i] for i in chunk for _ in choices[i]],
                      [c for i in chunk for c in choices[i]])
        offsets = [0]
        for i in chunk:
            offsets.append(offsets[-1] + len(choices[i]))
        if engine is not None:
            steers = sweep.steers()
            flat = engine.score(seqs * len(steers), [s for s in steers for _ in seqs], progress)
            scored = [flat[k * len(seqs):(k + 1) * len(seqs)] for k in range(len(steers))]
        else:
            scored = score_settings(model, seqs, [make for _, make in settings],
                                    sweep.shared_layers(), batch_size, progress,
                                    f"scoring {len(settings)} setting(s)",
                                    share_prefix=sweep.shares_prefix())
        for (multiplier, _), flat in zip(settings, scored):
            offset = 0
            for index in chunk:
                scores = flat[offset : offset + len(choices[index])]
                offset += len(choices[index])
                record = {
                    **common,
                    "multiplier": float(multiplier),
                    "item_id": ids[index],
                    "prompt": model.format_prompt(prompts[index]),
                    "prompt_tokens": seqs[offsets[index - start]].prompt_len,
                    "logprobs": [s.logprob for s in scores],
                    "n_tokens": [s.n_tokens for s in scores],
                    **build(index, scores),
                }
                done[key(index, multiplier)] = record
                if writer is not None and writer.get(key(index, multiplier)) is None:
                    writer.write(record)
    return [done[key(i, m)] for m, _ in settings for i in range(len(prompts))]


def evaluate_mc(
    model: ModelHandle,
    items: Sequence[MCItem],
    sweep: Sweep = Sweep(),
    *,
    dataset: str = "",
    writer: RecordWriter | None = None,
    batch_size: int = 8,
    progress: bool = True,
    arm: str | None = None,
    engine: VllmEngine | None = None,
) -> list[Record]:
    """Multiple-choice accuracy by likelihood: the choice with the highest summed log-probability
    (``correct``) and with the highest per-token log-probability (``correct_norm``)."""

    def build(index: int, scores: list[CompletionScore]) -> Record:
        item = items[index]
        normed = [s.mean_logprob for s in scores]
        summed = [s.logprob for s in scores]
        prediction = _argmax(summed)
        prediction_norm = _argmax(normed)
        return {
            "choices": list(item.choices),
            "answer": item.answer,
            "mean_logprobs": normed,
            "prediction": prediction,
            "prediction_norm": prediction_norm,
            "correct": prediction == item.answer,
            "correct_norm": prediction_norm == item.answer,
            "score": (float(prediction == item.answer) if prediction is not None
                      else _tied_credit(summed, item.answer)),
            **({"tie": True} if prediction is None else {}),
        }

    return _evaluate(
        "mc", build, model, [i.question for i in items], [i.choices for i in items],
        _item_ids(items), sweep, dataset, writer, batch_size, progress, arm, engine=engine,
    )


def evaluate_ab(
    model: ModelHandle,
    pairs: Sequence[PreferencePair],
    sweep: Sweep = Sweep(),
    *,
    dataset: str = "",
    writer: RecordWriter | None = None,
    batch_size: int = 8,
    progress: bool = True,
    arm: str | None = None,
    engine: VllmEngine | None = None,
) -> list[Record]:
    """A/B behaviour: the probability of the behaviour-matching answer (``chosen``), normalised
    over the offered answers. ``score`` is that probability; ``correct`` says it is the larger
    (an exact tie is recorded as ``tie``, neither answer predicted). Pairs whose two answers are
    the same text are refused."""
    check_preferences(pairs)

    def build(index: int, scores: list[CompletionScore]) -> Record:
        pair = pairs[index]
        probs = _softmax([s.logprob for s in scores])
        return {
            "choices": [pair.chosen, pair.rejected],
            "answer": 0,
            "probs": probs,
            "prediction": _argmax(probs),
            "correct": probs[0] > probs[1],
            "score": probs[0],
            **({"tie": True} if probs[0] == probs[1] else {}),
        }

    return _evaluate(
        "ab", build, model, [p.prompt for p in pairs], [(p.chosen, p.rejected) for p in pairs],
        _item_ids(pairs), sweep, dataset, writer, batch_size, progress, arm, engine=engine,
    )


def grid(settings: Sequence[SteeringSetting], multipliers: Sequence[float],
         layers: Sequence[int] | None = None) -> list[Sweep]:
    """One sweep per setting and layer (each layer on its own; ``None``: the setting's own)."""
    return [Sweep(setting if layer is None else replace(setting, layers=[layer]),
                  list(multipliers))
            for setting in settings for layer in (layers or [None])]


def composition_grid(
    first: SteeringVector,
    second: SteeringVector,
    multipliers: Sequence[float],
    second_multipliers: Sequence[float] | None = None,
    layers: list[int] | None = None,
    norm_ratio: float | None = None,
    positions: Positions = "all",
) -> list[Sweep]:
    """The 2-D grid of two vectors steering together: for each multiplier of ``first`` (held
    fixed), one sweep of ``second`` over ``second_multipliers`` (default: the same values).

    Both use ``layers`` and ``norm_ratio``. Evaluate both behaviours' items under these sweeps;
    records carry ``composed_with`` (the first vector and its multiplier) beside the second's
    multiplier, and :func:`steerlab.analysis.grid.grid_cells` reads the grid back.
    """
    columns = list(second_multipliers if second_multipliers is not None else multipliers)
    return [
        Sweep(SteeringSetting(second, layers=layers, norm_ratio=norm_ratio, positions=positions),
              columns,
              Composition((SteeringSetting(first, float(m), layers, norm_ratio, positions),)))
        for m in multipliers
    ]


def evaluate(
    model: ModelHandle,
    items: Sequence[MCItem] | Sequence[PreferencePair],
    sweeps: Sequence[Sweep] = (Sweep(),),
    *,
    dataset: str = "",
    writer: RecordWriter | None = None,
    batch_size: int = 8,
    progress: bool = True,
    arm: str | None = None,
    engine: VllmEngine | None = None,
) -> list[Record]:
    """Evaluate items under every sweep: multiple choice for :class:`MCItem`, A/B for pairs."""
    if not items:
        raise ValueError("nothing to evaluate: no items")
    task = evaluate_mc if isinstance(items[0], MCItem) else evaluate_ab
    return [
        record
        for sweep in sweeps
        for record in task(model, items, sweep, dataset=dataset, writer=writer,  # type: ignore[arg-type]
                           batch_size=batch_size, progress=progress, arm=arm, engine=engine)
    ]

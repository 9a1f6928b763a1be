"""How often steered generations show a concept: by an offline detector stated up front, with
the fluency it costs; or by AxBench's protocol, an LLM judge's three ratings with the factor
chosen on half the instructions and the other half reported beside a prompting baseline.

For each multiplier of a setting, every prompt is answered greedily; a record per prompt holds
the answer, whether the detector finds the concept in it, and the answer's log-probability
under the *unsteered* model (its fluency). :func:`concept_table` recomputes from records alone
each multiplier's concept rate with a Wilson interval and the answers' perplexity under the
unsteered model, and says whether the rate rose beyond the unsteered rate's interval while the
text stayed fluent.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from steerlab.evaluation.judges.concept import ASPECTS, ConceptJudge
from steerlab.model.encoding import TokenSequence
from steerlab.model.generation import generate, generate_tokens
from steerlab.model.handle import ModelHandle
from steerlab.model.scoring import score_sequences
from steerlab.records import Record, RecordWriter, emit
from steerlab.stats import MeanEstimate, Proportion, mean_interval, wilson_interval
from steerlab.steering.setting import SteeringSetting

FLUENT = 2.0
"""A steered answer set is still fluent while its perplexity under the unsteered model is below
this multiple of the unsteered answers' (fixed before any run, not tuned to one)..."""
VARIED = 0.5
"""... and its answers' share of distinct words is at least this fraction of the unsteered
answers' share: perplexity alone rewards repetition ("it it it ..." is very predictable), so a
looping answer must not count as fluent."""


class Detector(Protocol):
    """What finds a concept in an answer, stated before any run: the concept's ``name``, a
    verdict per answer, and the rule in words (for the report)."""

    name: str

    def __call__(self, text: str) -> bool: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class KeywordDetector:
    """The concept is present when the text contains one of ``words`` as a whole word (any case)."""

    name: str
    words: tuple[str, ...]

    def __call__(self, text: str) -> bool:
        return re.search(rf"\b({'|'.join(map(re.escape, self.words))})\b", text,
                         re.IGNORECASE) is not None

    def describe(self) -> str:
        return f"keywords ({', '.join(self.words)}), whole words, any case"


def concept_records(
    model: ModelHandle,
    setting: SteeringSetting,
    prompts: Sequence[str],
    multipliers: Sequence[float],
    detector: Detector,
    *,
    dataset: str = "",
    arm: str | None = None,
    max_new_tokens: int = 48,
    batch_size: int = 8,
    writer: RecordWriter | None = None,
    progress: bool = True,
) -> list[Record]:
    """One record per prompt × multiplier (0 always included, first): the greedy answer under
    the setting at that multiplier, the detector's verdict, and the answer's log-probability
    under the unsteered model; ``dataset`` names the prompt set (one concept may be measured on
    several, e.g. refusal on harmful and on harmless prompts), ``arm`` the vector when several
    are measured for one concept."""
    steps = [0.0, *[float(m) for m in multipliers if float(m) != 0.0]]
    heads = [model.encode_prompt(model.format_prompt(p)) for p in prompts]
    records: list[Record] = []
    for multiplier in steps:
        with setting.at(multiplier).apply(model):
            tokens = generate_tokens(model, prompts, max_new_tokens, batch_size=batch_size,
                                     progress=progress)
        answers = [model.tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]
        fluency = score_sequences(model, [TokenSequence(tuple(h + t), len(h))
                                          for h, t in zip(heads, tokens)], batch_size, False)
        records += emit([
            {"task": "concept", "concept": detector.name, "detector": detector.describe(),
             "dataset": dataset, **({"arm": arm} if arm else {}),
             "model": model.name, **model.placement,
             **setting.at(multiplier).describe(),
             "multiplier": multiplier, "item_id": str(index), "prompt": prompt,
             "answer": answer, "shows_concept": detector(answer),
             "logprob": score.logprob, "n_tokens": score.n_tokens}
            for index, (prompt, answer, score) in enumerate(zip(prompts, answers, fluency))
        ], writer)
    return records


@dataclass(frozen=True)
class ConceptRow:
    """One multiplier: the concept rate with its interval, and the answers' perplexity under
    the unsteered model."""

    multiplier: float
    rate: Proportion
    perplexity: float
    distinct: float
    """Mean share of distinct words among each answer's words (1: no word repeated)."""

    def fluent_beside(self, base: ConceptRow) -> bool:
        """Whether these answers are as fluent as ``base``'s by :data:`FLUENT` and
        :data:`VARIED`."""
        return (self.perplexity < FLUENT * base.perplexity
                and self.distinct >= VARIED * base.distinct)


def distinct_share(text: str) -> float:
    """Distinct words over words (1.0 for an empty text)."""
    words = text.lower().split()
    return len(set(words)) / len(words) if words else 1.0

def concept_table(records: Sequence[Record], level: float = 0.9) -> list[ConceptRow]:
    """Each multiplier's row, from ``concept`` records alone."""
    by_multiplier: dict[float, list[Record]] = defaultdict(list)
    for record in records:
        if record.get("task") == "concept":
            by_multiplier[float(record["multiplier"])].append(record)
    rows = []
    for multiplier, group in sorted(by_multiplier.items()):
        hits = sum(bool(r["shows_concept"]) for r in group)
        tokens = sum(r["n_tokens"] for r in group)
        perplexity = math.exp(-sum(r["logprob"] for r in group) / tokens) if tokens else math.nan
        distinct = sum(distinct_share(r["answer"]) for r in group) / len(group)
        rows.append(ConceptRow(multiplier, wilson_interval(hits, len(group), level), perplexity,
                               distinct))
    return rows


def concept_groups(records: Sequence[Record]) -> dict[tuple[str, str, str], list[Record]]:
    """``concept`` records by (concept, prompt set, arm), in order of appearance."""
    groups: dict[tuple[str, str, str], list[Record]] = {}
    for record in records:
        if record.get("task") == "concept":
            key = (record["concept"], record.get("dataset") or "", record.get("arm") or "")
            groups.setdefault(key, []).append(record)
    return groups


def concept_verdict(rows: Sequence[ConceptRow], concept: str) -> str:
    """In words: the first multiplier whose rate's interval lies above the unsteered rate's
    while its answers stay fluent (:meth:`ConceptRow.fluent_beside`) — or that none does, with
    the figures."""
    base = next((r for r in rows if r.multiplier == 0.0), None)
    if base is None:
        return ""
    fluent = [r for r in rows if r.multiplier != 0.0 and r.fluent_beside(base)]
    risen = [r for r in fluent if r.rate.lower > base.rate.upper]
    unsteered = (f"unsteered, {base.rate.estimate:.0%} of answers show {concept} "
                 f"[{base.rate.lower:.0%}, {base.rate.upper:.0%}]")
    if risen:
        best = risen[0]
        return (f"**The {concept} vector steers:** {unsteered}; at ×{best.multiplier:g}, "
                f"{best.rate.estimate:.0%} [{best.rate.lower:.0%}, {best.rate.upper:.0%}], above "
                f"the unsteered interval, with perplexity {best.perplexity:.1f} against "
                f"{base.perplexity:.1f} unsteered and distinct words {best.distinct:.2f} against "
                f"{base.distinct:.2f} (fluent: perplexity under {FLUENT:g}×, distinct words "
                f"at least {VARIED:g}×).")
    return (f"**No multiplier steers {concept} while staying fluent:** {unsteered}; "
            + "; ".join(f"×{r.multiplier:g}: {r.rate.estimate:.0%} [{r.rate.lower:.0%}, "
                        f"{r.rate.upper:.0%}], perplexity {r.perplexity:.1f}, distinct words "
                        f"{r.distinct:.2f}" for r in rows if r.multiplier != 0.0)
            + f" (unsteered perplexity {base.perplexity:.1f}, distinct words "
              f"{base.distinct:.2f}; fluent: perplexity under {FLUENT:g}×, distinct words at "
              f"least {VARIED:g}×).")


# ---- AxBench's protocol: an LLM judge's three ratings, the factor chosen on held-out instructions

JUDGED_TASK = "concept-judged"
PROMPTING = "prompting"
PROMPTING_TEMPLATE = ("{instruction}\n\nIn your answer, weave in this concept throughout: "
                      "{concept}.")
"""The prompting baseline: the instruction itself asks for the concept (steerlab's wording of
AxBench's prompt)."""


def selects(item_id: str, seed: int = 0) -> bool:
    """Whether an instruction is in the half that chooses the factor (a fair coin per item,
    seeded); the other half reports."""
    digest = hashlib.sha256(f"{seed}/{item_id}".encode()).digest()
    return digest[0] % 2 == 0


def concept_answers(
    model: ModelHandle,
    concept: str,
    arms: Mapping[str, SteeringSetting],
    instructions: Sequence[str],
    factors: Sequence[float],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    progress: bool = True,
) -> list[tuple[str, float, dict, int, str, str]]:
    """Every instruction answered greedily with each arm's setting at each factor and, unsteered,
    by the instruction asking for the concept (arm ``prompting``): one row (arm, factor, the
    setting's fields, instruction index, instruction, answer) per answer."""
    if PROMPTING in arms:
        raise ValueError(f"{PROMPTING!r} names the prompting baseline; call the arm otherwise")
    answers: list[tuple[str, float, dict, list[str]]] = []
    for arm, setting in arms.items():
        for factor in factors:
            with setting.at(factor).apply(model):
                answers.append((arm, float(factor), setting.at(factor).describe(),
                                generate(model, instructions, max_new_tokens,
                                         batch_size=batch_size, progress=progress)))
    asked = [PROMPTING_TEMPLATE.format(instruction=i, concept=concept) for i in instructions]
    answers.append((PROMPTING, 0.0, {"vector_id": None},
                    generate(model, asked, max_new_tokens, batch_size=batch_size,
                             progress=progress)))
    return [(arm, factor, fields, index, instruction, answer)
            for arm, factor, fields, texts in answers
            for index, (instruction, answer) in enumerate(zip(instructions, texts))]


def judged_concept_records(
    model: ModelHandle,
    concept: str,
    arms: Mapping[str, SteeringSetting],
    instructions: Sequence[str],
    factors: Sequence[float],
    judge: ConceptJudge,
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    writer: RecordWriter | None = None,
    progress: bool = True,
) -> list[Record]:
    """The :func:`concept_answers`, each rated by ``judge``. One record per instruction × arm ×
    factor, written once all are judged."""
    rows = concept_answers(model, concept, arms, instructions, factors,
                           max_new_tokens=max_new_tokens, batch_size=batch_size,
                           progress=progress)
    judged = judge.score(concept, [(instruction, answer) for *_, instruction, answer in rows])
    records = [
        {"task": JUDGED_TASK, "concept": concept, "model": model.name, **model.placement,
         "arm": arm, **fields,
         "multiplier": factor, "item_id": str(index), "instruction": instruction,
         "answer": answer, **{f"{aspect}_rating": rating
                              for aspect, rating in found.ratings.items()},
         "score": found.score, "replies": found.replies, "judge_model": judge.model}
        for (arm, factor, fields, index, instruction, answer), found in zip(rows, judged)
    ]
    return emit(records, writer)


@dataclass(frozen=True)
class FactorRow:
    """One arm at one factor on one half of the instructions: the mean score (readable
    answers), each rating's mean, and how many answers were unreadable."""

    arm: str
    factor: float
    half: str
    n: int
    unreadable: int
    score: float
    ratings: dict[str, float]


@dataclass(frozen=True)
class ConceptResult:
    """The factor chosen on the selecting half, and the reporting half's scores with intervals:
    the steered arm at that factor, the prompting baseline, and their paired difference."""

    concept: str
    arm: str
    rows: list[FactorRow]
    factor: float | None
    steered: MeanEstimate | None
    prompting: MeanEstimate | None
    difference: MeanEstimate | None


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def concept_result(records: Sequence[Record], seed: int = 0, level: float = 0.9
                   ) -> list[ConceptResult]:
    """For each concept and steered arm: the factor table per half (the prompting baseline's
    rows too), the factor chosen on the selecting half (best mean score; ties to the smaller
    factor), and the reporting half, from records alone."""
    results = []
    judged = [r for r in records if r.get("task") == JUDGED_TASK]
    for concept in sorted({r["concept"] for r in judged}):
        mine = [r for r in judged if r["concept"] == concept]
        groups: dict[tuple[str, float, str], list[Record]] = defaultdict(list)
        for r in mine:
            half = "select" if selects(r["item_id"], seed) else "report"
            groups[(r["arm"], float(r["multiplier"]), half)].append(r)
        rows = [FactorRow(arm, factor, half, len(group),
                          sum(r["score"] is None for r in group),
                          _mean([r["score"] for r in group if r["score"] is not None]),
                          {aspect: _mean([r[f"{aspect}_rating"] for r in group
                                          if r[f"{aspect}_rating"] is not None])
                           for aspect in ASPECTS})
                for (arm, factor, half), group in sorted(groups.items())]

        def reported(arm: str, at: float) -> dict[str, float]:
            return {r["item_id"]: r["score"] for r in mine if r["arm"] == arm
                    and float(r["multiplier"]) == at and r["score"] is not None
                    and not selects(r["item_id"], seed)}

        prompting = reported(PROMPTING, 0.0)
        for arm in sorted({r.arm for r in rows} - {PROMPTING}):
            candidates = [r for r in rows if r.arm == arm and r.half == "select"
                          and not math.isnan(r.score)]
            factor = (min(candidates, key=lambda r: (-r.score, abs(r.factor))).factor
                      if candidates else None)
            steered = reported(arm, factor) if factor is not None else {}
            both = sorted(set(steered) & set(prompting))
            results.append(ConceptResult(
                concept, arm, [r for r in rows if r.arm in (arm, PROMPTING)], factor,
                mean_interval(list(steered.values()), level) if steered else None,
                mean_interval(list(prompting.values()), level) if prompting else None,
                mean_interval([steered[i] - prompting[i] for i in both], level)
                if both else None))
    return results

"""Head-to-head judging of open-ended answers: steered arm against base arm, item by item.

A judge is any object with a ``name`` and ``compare(comparisons) -> verdicts``: it sees two
answers to a question in a shown order (randomised per item with a recorded seed, because
LLM judges favour positions) and prefers the first, the second, or neither. Verdicts become
records (``win`` / ``tie`` / ``loss`` for the arm); :func:`summarize_head_to_head` recomputes
the win rate with ties, the one-sided z test and a credible interval from those records alone.
Human ratings (:mod:`steerlab.evaluation.judges.blind`) produce the same records.

A rater (:class:`Rater`: ``name`` and ``rate(items) -> ratings``) scores each answer alone on
a 1-4 scale of how strongly it shows a behaviour (the BiPO paper's persona evaluation):
:func:`rate_answers` writes one ``rating`` record per item × arm and :func:`summarize_ratings`
gives each arm's mean rating and its paired difference from the unsteered arm, with intervals.
:class:`~steerlab.evaluation.judges.llm.LLMJudge` (``--judge llm``) does both over any
OpenAI-compatible endpoint.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations

import torch

from steerlab.evaluation.judges.embedding import SentenceEmbedder
from steerlab.evaluation.judges.llm import LLMJudge
from steerlab.evaluation.judges.protocol import Comparison, Judge, Rater, Verdict
from steerlab.evaluation.openended import BASE_ARM, TASK
from steerlab.records import Record, RecordWriter, emit
from steerlab.stats import (
    MeanEstimate,
    PairedAdvantage,
    PairedTable,
    WinRate,
    mean_interval,
    paired_advantage,
    tie_half_rate,
    win_rate_test,
)

VERDICT_TASK = "head-to-head"


@dataclass(frozen=True)
class ReferenceScore:
    """An answer's highest cosine similarity to the correct and to the incorrect references."""

    similarity_correct: float
    similarity_incorrect: float

    @property
    def truthful(self) -> bool:
        """Closer to some correct reference than to every incorrect one."""
        return self.similarity_correct > self.similarity_incorrect


Embed = Callable[[Sequence[str]], torch.Tensor]


class ReferenceSimilarityJudge:
    """Judges truthfulness by sentence-embedding similarity to reference answers; no API.

    An answer is truthful when its best cosine similarity to the correct references beats its
    best to the incorrect ones (TruthfulQA's references). Head to head it prefers the truthful
    answer when exactly one is; otherwise it calls a tie. It ignores the shown order.
    ``embed`` maps texts to unit-length rows (default:
    :class:`~steerlab.evaluation.judges.embedding.SentenceEmbedder`).
    """

    name = "reference-similarity"

    def __init__(self, embed: Embed | None = None) -> None:
        if embed is None:
            embed = SentenceEmbedder()
        self.embed = embed

    def score(
        self, answers: Sequence[str], correct: Sequence[Sequence[str]],
        incorrect: Sequence[Sequence[str]]
    ) -> list[ReferenceScore]:
        """Each answer's similarities to its own correct and incorrect reference sets."""
        for i, (good, bad) in enumerate(zip(correct, incorrect)):
            if not good or not bad:
                raise ValueError(
                    f"answer {i}: the reference judge needs correct and incorrect references; "
                    "judge only question sets that have them (e.g. truthfulqa-open)"
                )
        texts = list(dict.fromkeys(
            [*answers, *(r for refs in [*correct, *incorrect] for r in refs)]))
        index = {text: i for i, text in enumerate(texts)}
        vectors = self.embed(texts)

        def best(answer: str, references: Sequence[str]) -> float:
            rows = vectors[[index[r] for r in references]]
            return float((rows @ vectors[index[answer]]).max())

        return [
            ReferenceScore(best(answer, good), best(answer, bad))
            for answer, good, bad in zip(answers, correct, incorrect)
        ]

    def compare(self, comparisons: Sequence[Comparison]) -> list[Verdict]:
        answers = [a for c in comparisons for a in c.answers]
        scores = self.score(
            answers, [c.correct for c in comparisons for _ in c.answers],
            [c.incorrect for c in comparisons for _ in c.answers],
        )
        verdicts = []
        for first, second in zip(scores[::2], scores[1::2]):
            preferred = None if first.truthful == second.truthful else (0 if first.truthful else 1)
            details = {
                "similarity_correct": [first.similarity_correct, second.similarity_correct],
                "similarity_incorrect": [first.similarity_incorrect, second.similarity_incorrect],
                "truthful": [first.truthful, second.truthful],
            }
            verdicts.append(Verdict(preferred, details))
        return verdicts


def arm_shown_first(seed: int, dataset: str, item_id: str) -> bool:
    """Whether the arm's answer is shown first for this item: a fair coin seeded by ``seed``
    and the item alone, so the order does not depend on which other items are judged."""
    return random.Random(f"{seed}/{dataset}/{item_id}").random() < 0.5


def pair_arms(records: Iterable[Record], arm: str,
              base: str = BASE_ARM) -> list[tuple[Record, Record]]:
    """(arm record, base record) per item of generation records, paired by dataset and item id.

    An item missing from either arm, or present twice in one, is an error: silently dropping
    items would bias the comparison.
    """
    by_arm: dict[str, dict[tuple[str, str], Record]] = {arm: {}, base: {}}
    for record in records:
        if record.get("task") != TASK or record.get("arm") not in by_arm:
            continue
        key = (record["dataset"], record["item_id"])
        if key in by_arm[record["arm"]]:
            raise ValueError(
                f"arm '{record['arm']}' has two records for item {key[1]!r} of {key[0]!r}: "
                "pass the records of one generation run"
            )
        by_arm[record["arm"]][key] = record
    keys = by_arm[arm].keys() | by_arm[base].keys()
    if not by_arm[arm] or not by_arm[base]:
        found = sorted({r for r in by_arm if by_arm[r]})
        raise ValueError(
            f"need records of arms '{arm}' and '{base}'; found records only for {found}")
    unpaired = sorted(keys - (by_arm[arm].keys() & by_arm[base].keys()))
    if unpaired:
        raise ValueError(f"{len(unpaired)} item(s) lack one of the arms, e.g. {unpaired[:3]}")
    return [(by_arm[arm][k], by_arm[base][k]) for k in sorted(keys)]


SETTING_FIELDS = ("multiplier", "vector_id", "layers", "norm_ratio", "positions")
"""What a judged record keeps of the steering setting that wrote the answer."""


def comparison_fields(arm_record: Record, base_record: Record) -> Record:
    """What every head-to-head record says about the item and the two settings compared."""
    return {
        "task": VERDICT_TASK,
        "dataset": arm_record["dataset"],
        "model": arm_record["model"],
        "item_id": arm_record["item_id"],
        "question": arm_record["question"],
        "arm": arm_record["arm"],
        "base": base_record["arm"],
        "arm_setting": {k: arm_record.get(k) for k in SETTING_FIELDS},
    }


OUTCOMES = {"arm": "win", "base": "loss", None: "tie"}


def verdict_record(
    fields: Record, judge: str, seed: int, arm_first: bool, preferred: int | None, details: Record
) -> Record:
    """A head-to-head record: the shown order and the verdict from the arm's side."""
    shown = ("arm", "base") if arm_first else ("base", "arm")
    winner = None if preferred is None else shown[preferred]
    return {
        **fields,
        "judge": judge,
        "order_seed": seed,
        "shown_first": shown[0],
        "verdict": OUTCOMES[winner],
        "details": details,
    }


def judge_head_to_head(
    records: Iterable[Record],
    judge: Judge,
    arm: str,
    base: str = BASE_ARM,
    *,
    seed: int = 0,
    writer: RecordWriter | None = None,
) -> list[Record]:
    """Judge every item's arm answer against its base answer; one verdict record per item."""
    pairs = pair_arms(records, arm, base)
    firsts = [arm_shown_first(seed, a["dataset"], a["item_id"]) for a, _ in pairs]
    comparisons = [
        Comparison(
            a["question"],
            (a["answer"], b["answer"]) if first else (b["answer"], a["answer"]),
            tuple(a.get("correct_answers") or ()),
            tuple(a.get("incorrect_answers") or ()),
        )
        for (a, b), first in zip(pairs, firsts)
    ]
    verdicts = judge.compare(comparisons)
    out = [
        verdict_record(comparison_fields(a, b), judge.name, seed, first, verdict.preferred,
                       verdict.details)
        for (a, b), first, verdict in zip(pairs, firsts, verdicts)
    ]
    return emit(out, writer)


@dataclass(frozen=True)
class HeadToHead:
    """Tally of one judge's verdicts for one arm against one base on one dataset.

    ``test`` is the one-sided z test of the win rate (None when every item is a tie).
    ``advantage`` is the posterior of P(win) − P(loss) from :func:`steerlab.stats.paired_advantage`
    with wins as arm-only and losses as base-only items; ties fill the concordant cells (the
    posterior of the advantage depends only on wins, losses and n, not on how ties are split).
    Because the win rate with ties counted half is (1 + advantage) / 2, its interval follows.
    """

    judge: str
    dataset: str
    arm: str
    base: str
    wins: int
    ties: int
    losses: int
    test: WinRate | None
    advantage: PairedAdvantage

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses

    @property
    def win_rate(self) -> float:
        """See :func:`steerlab.stats.tie_half_rate` (defined also when every item is a tie)."""
        return tie_half_rate(self.wins, self.ties, self.losses)

    @property
    def interval(self) -> tuple[float, float]:
        """Credible interval of the win rate at ``advantage.level``."""
        return (1 + self.advantage.lower) / 2, (1 + self.advantage.upper) / 2


def summarize_head_to_head(records: Iterable[Record], level: float = 0.9) -> list[HeadToHead]:
    """One tally per (judge, dataset, arm, base) from head-to-head records alone."""
    counts: dict[tuple[str, str, str, str], dict[str, int]] = defaultdict(
        lambda: {"win": 0, "tie": 0, "loss": 0}
    )
    for record in records:
        if record.get("task") == VERDICT_TASK:
            key = (record["judge"], record["dataset"], record["arm"], record["base"])
            counts[key][record["verdict"]] += 1
    rows = []
    for (judge, dataset, arm, base), c in sorted(counts.items()):
        wins, ties, losses = c["win"], c["tie"], c["loss"]
        rows.append(
            HeadToHead(
                judge, dataset, arm, base, wins, ties, losses,
                win_rate_test(wins, ties, losses) if wins + losses else None,
                paired_advantage(PairedTable(ties, wins, losses, 0), level=level),
            )
        )
    return rows


# ---- 1-4 ratings of single answers --------------------------------------------------------------

RATING_TASK = "rating"
def rate_answers(
    records: Iterable[Record],
    rater: Rater,
    arms: Sequence[str] | None = None,
    *,
    writer: RecordWriter | None = None,
) -> list[Record]:
    """Rate every generation record's answer (of ``arms``, default all); one record each.

    A rating the rater could not read is recorded with ``rating`` None, never dropped.
    """
    chosen, seen = [], set()
    for record in records:
        if record.get("task") != TASK or (arms is not None and record.get("arm") not in arms):
            continue
        key = (record["dataset"], record["arm"], record["item_id"])
        if key in seen:
            raise ValueError(
                f"arm '{key[1]}' has two records for item {key[2]!r} of {key[0]!r}: "
                "pass the records of one generation run"
            )
        seen.add(key)
        chosen.append(record)
    if not chosen:
        raise ValueError(f"no generation records{f' of arms {list(arms)}' if arms else ''} to rate")
    ratings = rater.rate([(r["question"], r["answer"]) for r in chosen])
    out = [
        {
            "task": RATING_TASK,
            **{k: r[k] for k in ("dataset", "model", "item_id", "question", "arm")},
            "arm_setting": {k: r.get(k) for k in SETTING_FIELDS},
            "judge": rater.name,
            "rating": rating.score,
            "details": rating.details,
        }
        for r, rating in zip(chosen, ratings)
    ]
    return emit(out, writer)


@dataclass(frozen=True)
class RatingSummary:
    """One rater's ratings of one arm on one dataset.

    ``mean`` is over the readable ratings (None when there are none); ``difference`` is the
    mean paired difference arm − base over items both have a readable rating for (None for the
    base arm itself, or without such items).
    """

    judge: str
    dataset: str
    arm: str
    base: str
    n: int
    unreadable: int
    mean: MeanEstimate | None
    difference: MeanEstimate | None


def summarize_ratings(
    records: Iterable[Record], base: str = BASE_ARM, level: float = 0.9
) -> list[RatingSummary]:
    """Per (rater, dataset, arm): mean rating and paired difference from ``base``, from
    rating records alone (intervals: :func:`steerlab.stats.mean_interval`)."""
    scores: dict[tuple[str, str, str], dict[str, int | None]] = defaultdict(dict)
    for record in records:
        if record.get("task") == RATING_TASK:
            key = (record["judge"], record["dataset"], record["arm"])
            scores[key][record["item_id"]] = record["rating"]
    rows = []
    for (judge, dataset, arm), by_item in sorted(scores.items()):
        readable = {item: s for item, s in by_item.items() if s is not None}
        base_scores = scores.get((judge, dataset, base), {})
        paired = [s - base_scores[i] for i, s in readable.items() if base_scores.get(i) is not None]
        rows.append(
            RatingSummary(
                judge, dataset, arm, base, len(by_item), len(by_item) - len(readable),
                mean_interval(list(readable.values()), level) if readable else None,
                mean_interval(paired, level) if paired and arm != base else None,
            )
        )
    return rows


JUDGES: dict[str, Callable[..., Judge]] = {
    ReferenceSimilarityJudge.name: ReferenceSimilarityJudge,
    "llm": LLMJudge,
}
"""Judges by name (the CLI's ``--judge``); ``llm`` takes options (see :class:`LLMJudge`)."""


@dataclass(frozen=True)
class Agreement:
    """Two human raters' agreement on the pairs both rated (one dataset, arm and base): the
    share of identical verdicts and Cohen's κ (agreement beyond what their own verdict rates
    would give by chance; nan when both gave one verdict throughout)."""

    dataset: str
    arm: str
    base: str
    raters: tuple[str, str]
    n: int
    observed: float
    kappa: float


def cohens_kappa(first: Sequence[str], second: Sequence[str]) -> float:
    """Cohen's κ of two raters' labels for the same items."""
    n = len(first)
    observed = sum(a == b for a, b in zip(first, second)) / n
    chance = sum((first.count(c) / n) * (second.count(c) / n) for c in set(first) | set(second))
    return (observed - chance) / (1 - chance) if chance < 1 else float("nan")


def rater_agreement(records: Iterable[Record]) -> list[Agreement]:
    """Every pair of human raters (judges ``human:<rater>``) over the pairs both rated."""
    by_rater: dict[tuple[str, str, str], dict[str, dict[str, str]]] = defaultdict(
        lambda: defaultdict(dict))
    for record in records:
        if record.get("task") == VERDICT_TASK and str(record.get("judge")).startswith("human:"):
            key = (record["dataset"], record["arm"], record["base"])
            by_rater[key][record["judge"]][record["item_id"]] = record["verdict"]
    found = []
    for (dataset, arm, base), raters in sorted(by_rater.items()):
        for one, other in combinations(sorted(raters), 2):
            shared = sorted(raters[one].keys() & raters[other].keys())
            if not shared:
                continue
            first = [raters[one][i] for i in shared]
            second = [raters[other][i] for i in shared]
            found.append(Agreement(dataset, arm, base, (one, other), len(shared),
                                   sum(a == b for a, b in zip(first, second)) / len(shared),
                                   cohens_kappa(first, second)))
    return found

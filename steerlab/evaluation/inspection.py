"""Look inside a dataset before trusting a number measured on it.

:func:`inspect_dataset` returns an :class:`InspectionReport`: a readable sample, counts,
answer-position balance, duplicates (also across splits), bad rows with ``file:line``, pairs whose
answers are the same, items whose choices repeat, and a label check that scores a sample by model
likelihood and flags agreement far *below* chance, the signature of a flipped label column.
"""

from __future__ import annotations

import random
import re
import string
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from scipy.stats import binomtest, chisquare

from steerlab.data.files import MCItem, PreferencePair
from steerlab.data.registry import Item, Row, dataset_info
from steerlab.evaluation.likelihood import evaluate_ab, evaluate_mc
from steerlab.model.encoding import encode
from steerlab.records import debiased_predictions

if TYPE_CHECKING:
    from steerlab.model.handle import ModelHandle

ALPHA = 1e-3
"""Significance level of the balance and label tests: strict, because a report checks many
things on many datasets and a warning should mean something."""

Verdict = Literal["below chance", "near chance", "above chance"]

_ANSWER = re.compile(r"^(\([A-Z]|Yes|No)$")


@dataclass(frozen=True)
class Finding:
    """A problem at one place (``file:line``)."""

    where: str
    message: str


@dataclass(frozen=True)
class Example:
    """One item as a reader sees it: the question, the choices, and which one is marked."""

    id: str
    where: str
    split: str | None
    question: str
    choices: list[str]
    marked: int | None


@dataclass(frozen=True)
class DuplicateGroup:
    """Items with the same question and the same options (spacing ignored)."""

    question: str
    where: list[str]
    splits: list[str | None]
    conflicting: bool
    """The copies mark different answers as correct."""


@dataclass(frozen=True)
class Balance:
    """Where the marked answers sit: counts per position (or answer) against the counts
    expected if each item's options were equally likely, with a chi-square test."""

    counts: dict[str, int]
    expected: dict[str, float]
    p_value: float

    @property
    def skewed(self) -> bool:
        """Significant at :data:`ALPHA` and some position off its expected share by ≥ 5 points."""
        total = sum(self.counts.values())
        gap = max(abs(self.counts[k] - self.expected[k]) for k in self.counts) / max(total, 1)
        return self.p_value < ALPHA and gap >= 0.05


@dataclass(frozen=True)
class LabelCheck:
    """How often a model's likelihood-preferred answer is the labelled one, against chance."""

    model: str
    n: int
    agree: int
    chance: float
    p_below: float
    p_above: float
    verdict: Verdict
    top_prediction: str
    top_share: float
    """The answer (position or letter) the model picks most often, and how often."""
    calibrated: bool
    """Two-answer items: the model's letter (or Yes/No) preference was removed first by
    thresholding its score difference at the median, so agreement reflects content."""
    message: str
    too_long: int = 0
    """Sampled items left out because they do not fit the model's context."""


@dataclass
class InspectionReport:
    """Everything :func:`inspect_dataset` found; ``to_dict`` for JSON."""

    name: str
    split: str | None
    kind: str
    description: str
    rows: int
    items: int
    splits: dict[str, int]
    choice_counts: dict[int, int]
    examples: list[Example]
    balance: Balance | None
    bad_rows: list[Finding]
    same_answers: list[Finding]
    repeated_choices: list[Finding]
    duplicates: list[DuplicateGroup]
    label_check: LabelCheck | None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _norm(text: str) -> str:
    """Spacing ignored; case kept (genotypes such as 'Bb' and 'bb' differ only in case)."""
    return " ".join(text.split())


def _view(record: Item) -> tuple[str, list[str], int | None]:
    """(question, choices, index of the marked one) for any record type."""
    if isinstance(record, MCItem):
        return record.question, list(record.choices), record.answer
    if isinstance(record, PreferencePair):
        return record.prompt, [record.chosen, record.rejected], 0
    return record, [], None


EXAMPLE_CHARS = 2000
"""A shown example's texts are cut at this many characters (a 50 MB field is not printed)."""


def _clip(text: str) -> str:
    return text if len(text) <= EXAMPLE_CHARS else (
        f"{text[:EXAMPLE_CHARS]}… [{len(text):,} characters in all]")


def _example(row: Row) -> Example:
    record = row.record
    question, choices, marked = _view(record)
    return Example("" if isinstance(record, str) else record.id, row.where, row.split,
                   _clip(question), [_clip(choice) for choice in choices], marked)


def _is_answer_pair(record: Item) -> bool:
    return isinstance(record, PreferencePair) and all(
        _ANSWER.match(text) for text in (record.chosen, record.rejected)
    )


def record_kind(records: Sequence[Item], default: str) -> str:
    """``mc``, ``ab`` (answers are letters or Yes/No), ``pairs``, or ``default`` for strings."""
    if not records:
        return default
    if isinstance(records[0], MCItem):
        return "mc"
    if isinstance(records[0], PreferencePair):
        return "ab" if all(_is_answer_pair(r) for r in records) else "pairs"
    return default


def position_balance(records: Sequence[Item]) -> Balance | None:
    """Marked-answer positions (MC letters) or answers (A/B letters, Yes/No) against an even
    spread over each item's own options; None for free-text pairs, prompts and text."""
    if not records or not (isinstance(records[0], MCItem) or all(map(_is_answer_pair, records))):
        return None
    counts: Counter[str] = Counter()
    expected: defaultdict[str, float] = defaultdict(float)
    for record in records:
        if isinstance(record, MCItem):
            options = list(string.ascii_uppercase[: len(record.choices)])
            marked = options[record.answer]
        else:
            options, marked = [record.chosen, record.rejected], record.chosen
        counts[marked] += 1
        for option in options:
            expected[option] += 1 / len(options)
    keys = sorted(expected)
    observed = [counts[k] for k in keys]
    p_value = (float(chisquare(observed, [expected[k] for k in keys]).pvalue)
               if len(keys) > 1 else 1.0)
    return Balance({k: counts[k] for k in keys}, {k: round(expected[k], 3) for k in keys}, p_value)


def find_duplicates(rows: Sequence[Row]) -> list[DuplicateGroup]:
    """Groups of rows with the same question and options; flags conflicting marked answers and
    copies that sit in different splits (leakage)."""
    groups: defaultdict[tuple[str, frozenset[str]], list[Row]] = defaultdict(list)
    for row in rows:
        question, choices, _ = _view(row.record)
        groups[_norm(question), frozenset(map(_norm, choices))].append(row)
    duplicates = []
    for members in groups.values():
        if len(members) < 2:
            continue
        marked = set()
        for row in members:
            _, choices, index = _view(row.record)
            marked.add(_norm(choices[index]) if index is not None else None)
        question = _view(members[0].record)[0]
        duplicates.append(DuplicateGroup(
            _shorten(question, 120), [r.where for r in members], [r.split for r in members],
            conflicting=len(marked) > 1,
        ))
    return duplicates


def _degenerate(rows: Sequence[Row]) -> tuple[list[Finding], list[Finding]]:
    """Pairs whose chosen and rejected answers are the same, and items whose choices repeat."""
    same, repeated = [], []
    for row in rows:
        record = row.record
        if isinstance(record, PreferencePair) and _norm(record.chosen) == _norm(record.rejected):
            same.append(Finding(row.where, "chosen and rejected are the same: "
                                           f"{_shorten(record.chosen, 80)!r}"))
        if isinstance(record, MCItem):
            seen: defaultdict[str, list[int]] = defaultdict(list)
            for index, choice in enumerate(record.choices):
                seen[_norm(choice)].append(index)
            for text, indices in seen.items():
                if len(indices) > 1:
                    letters = ", ".join(string.ascii_uppercase[i] for i in indices[:-1])
                    letters += f" and {string.ascii_uppercase[indices[-1]]}"
                    message = f"choices {letters} are the same: {_shorten(text, 80)!r}"
                    if record.answer in indices:
                        message += " (one is the marked answer: the item cannot be answered)"
                    repeated.append(Finding(row.where, message))
    return same, repeated


def label_verdict(agree: int, n: int, chance: float,
                  alpha: float = ALPHA) -> tuple[Verdict, float, float]:
    """Exact binomial tests of ``agree`` out of ``n`` against ``chance``: the verdict and the
    one-sided p-values (below, above). With unequal numbers of choices, ``chance`` is the mean
    of 1/choices; the binomial then overstates the spread a little, so the test is conservative."""
    below = float(binomtest(agree, n, chance, alternative="less").pvalue)
    above = float(binomtest(agree, n, chance, alternative="greater").pvalue)
    verdict: Verdict = ("below chance" if below < alpha
                        else "above chance" if above < alpha else "near chance")
    return verdict, below, above


def check_labels(
    model: ModelHandle,
    records: Sequence[Item],
    sample: int = 200,
    seed: int = 0,
    batch_size: int = 8,
) -> LabelCheck:
    """Score a seeded sample by likelihood and compare the model's preferred answer with the
    labelled one (:func:`~steerlab.evaluation.likelihood.evaluate_mc` /
    :func:`~steerlab.evaluation.likelihood.evaluate_ab`)."""

    if not records:
        raise ValueError("no records to check")
    picked = sorted(random.Random(seed).sample(range(len(records)), min(sample, len(records))))
    items = [records[i] for i in picked if _fits(model, records[i])]
    too_long = len(picked) - len(items)
    if not items:
        raise ValueError(f"none of the {len(picked)} sampled items fits the model's context of "
                         f"{model.context} tokens")
    if isinstance(items[0], MCItem):
        results = evaluate_mc(model, items, batch_size=batch_size, progress=False)
        chance = sum(1 / len(item.choices) for item in items) / len(items)
        predicted = [string.ascii_uppercase[r["prediction"]] if r["prediction"] is not None
                     else "tie" for r in results]
        agree = sum(r["correct"] for r in results)
        calibrated = False
    elif isinstance(items[0], PreferencePair):
        results = evaluate_ab(model, items, batch_size=batch_size, progress=False)
        chance = 0.5
        predicted = [r["choices"][r["prediction"]] if r["prediction"] is not None else "tie"
                     for r in results]
        agree, calibrated = _calibrated_agreement(results)
        if not calibrated:
            agree = sum(r["correct"] for r in results)
    else:
        raise ValueError("the label check needs multiple-choice items or preference pairs")
    top, top_count = Counter(predicted).most_common(1)[0]
    n = len(items)
    verdict, p_below, p_above = label_verdict(agree, n, chance)
    message = _label_message(verdict, agree, n, chance, p_below, p_above, top, top_count / n,
                             calibrated)
    if too_long:
        message += (f" {too_long} sampled item(s) longer than the model's context of "
                    f"{model.context} tokens were left out.")
    return LabelCheck(model.name, n, agree, chance, p_below, p_above, verdict, top,
                      top_count / n, calibrated, message, too_long)


MAX_CHARS_PER_TOKEN = 64
"""No tokenizer steerlab meets packs more characters into one token: a text longer than this
many characters per position cannot fit and is not tokenised at all (a 50 MB field would take
minutes)."""


def _fits(model: ModelHandle, record: Item) -> bool:
    """Whether every sequence the label check scores for ``record`` fits the model's context."""
    if model.context is None:
        return True
    prompt = record.question if isinstance(record, MCItem) else record.prompt
    answers = record.choices if isinstance(record, MCItem) else (record.chosen, record.rejected)
    if len(prompt) + max(map(len, answers)) > MAX_CHARS_PER_TOKEN * model.context:
        return False

    seqs = encode(model, [prompt] * len(answers), list(answers))
    return all(len(seq.ids) <= model.context for seq in seqs)


def _calibrated_agreement(results: Sequence[dict[str, Any]]) -> tuple[int, bool]:
    """Agreement once a fixed preference for one answer label is removed, for items that all
    offer the same two labels (A/B, Yes/No): :func:`~steerlab.records.debiased_predictions`
    (the first label where its margin is above the median margin). Returns (agreement, whether
    it applied)."""
    labels = {frozenset(r["choices"]) for r in results}
    if len(labels) != 1 or not all(_ANSWER.match(c) for c in next(iter(labels))):
        return 0, False
    fair = debiased_predictions([r["logprobs"] for r in results], [r["choices"] for r in results])
    return sum(choice == 0 for choice in fair), True


def _label_message(
    verdict: Verdict, agree: int, n: int, chance: float, p_below: float, p_above: float,
    top: str, top_share: float, calibrated: bool,
) -> str:
    rate = (f"agreement {agree}/{n} = {agree / n:.0%}"
            + (" (letter preference removed)" if calibrated else ""))
    if verdict == "below chance":
        text = (
            f"{rate} is far below chance ({chance:.0%}; binomial p = {p_below:.1e}): the signature "
            "of a flipped label column. Check the labels, unless the wrong answers are built to be "
            "likelier (TruthfulQA) or the model really avoids the labelled behaviour."
        )
    elif verdict == "above chance":
        text = (f"{rate} is above chance ({chance:.0%}; p = {p_above:.1e}): "
                "the labels agree with the model.")
    else:
        text = (
            f"{rate} is not far enough from chance ({chance:.0%}; one-sided p = {p_below:.2g} "
            f"below, {p_above:.2g} above, threshold {ALPHA:g}) to confirm or refute the labels."
        )
    if top_share >= 0.9 and not calibrated:
        text += (
            f" The model picks {top} for {top_share:.0%} of items, so agreement mostly reflects "
            "where the labels sit."
        )
    return text


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def inspect_dataset(
    spec: str | Path,
    split: str | None = None,
    *,
    source: str | Path | None = None,
    model: ModelHandle | None = None,
    examples: int = 3,
    label_sample: int = 200,
    seed: int = 0,
    batch_size: int = 8,
) -> InspectionReport:
    """Inspect a registered dataset or a local file. Every row is read (bad ones reported with
    ``file:line``, never dropped silently); with ``model``, the labels are checked by likelihood
    on a seeded sample of ``label_sample`` items."""
    info = dataset_info(spec)
    all_rows = list(info.rows_of(split, source))
    rows = [row for row in all_rows if row.error is None]
    records = [row.record for row in rows]
    kind = record_kind(records, info.kind)
    picked = sorted(random.Random(seed).sample(range(len(rows)), min(examples, len(rows))))
    same, repeated = _degenerate(rows)
    report = InspectionReport(
        name=str(spec),
        split=split,
        kind=kind,
        description=info.description,
        rows=len(all_rows),
        items=len(rows),
        splits=dict(Counter(row.split or ("unused" if info.splits else "all") for row in all_rows)),
        choice_counts=dict(sorted(
            Counter(len(r.choices) for r in records if isinstance(r, MCItem)).items())),
        examples=[_example(rows[i]) for i in picked],
        balance=position_balance(records),
        bad_rows=[Finding(row.where, row.error) for row in all_rows if row.error is not None],
        same_answers=same,
        repeated_choices=repeated,
        duplicates=find_duplicates(rows) if kind != "text" else [],
        label_check=(
            check_labels(model, records, label_sample, seed, batch_size)
            if model is not None and records and kind in ("mc", "ab", "pairs") else None
        ),
    )
    report.warnings = _warnings(report)
    return report


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _warnings(report: InspectionReport) -> list[str]:
    """The report's problems in words, most serious first."""
    notes = []
    check = report.label_check
    if check is not None and check.verdict == "below chance":
        notes.append(f"label check: {check.message}")
    if report.bad_rows:
        first = report.bad_rows[0].message
        notes.append(
            f"{_count(len(report.bad_rows), 'bad row')} (loading raises on them; bad_rows='skip' "
            f"leaves them out), first: {first}"
        )
    conflicting = [g for g in report.duplicates if g.conflicting]
    if conflicting:
        notes.append(
            f"{_count(len(conflicting), 'duplicated item')} marked with different answers, "
            "first at "
            + ", ".join(conflicting[0].where)
        )
    leaked = [g for g in report.duplicates if len(set(g.splits)) > 1]
    if leaked:
        notes.append(
            f"{_count(len(leaked), 'item')} in more than one split (leakage), first at "
            + ", ".join(leaked[0].where)
        )
    if report.duplicates:
        copies = sum(len(g.where) for g in report.duplicates)
        notes.append(f"{_count(len(report.duplicates), 'duplicated item')} ({copies} rows)")
    if report.same_answers:
        notes.append(f"{_count(len(report.same_answers), 'pair')} "
                     "whose chosen and rejected are the same")
    if report.repeated_choices:
        notes.append(f"{_count(len(report.repeated_choices), 'item')} whose choices repeat")
    balance = report.balance
    if balance is not None and balance.skewed:
        total = sum(balance.counts.values())
        top = max(balance.counts, key=lambda k: balance.counts[k] - balance.expected[k])
        notes.append(
            f"marked answers are unevenly placed: {top} holds {balance.counts[top] / total:.0%} of "
            f"them where {balance.expected[top] / total:.0%} is expected (chi-square p = "
            f"{balance.p_value:.1e}); a model that prefers {top} looks as if it agreed with the "
            "labels. Likelihood scoring of each choice alone is unaffected."
        )
    if check is not None and check.verdict == "near chance":
        notes.append(f"label check: {check.message}")
    return notes

"""An experiment's headline: each arm's setting chosen on validation, compared on test.

Arms are what `steerlab run` evaluates side by side: the unsteered model, baselines (k-shot
and system prompting, LoRA), vector methods and their combinations with LoRA. Each arm's
layer and multiplier are chosen on the validation records only (:func:`select`); its test
records at that setting give the test accuracy with a Wilson interval and the paired Bayesian
advantage over the unsteered model and over the best baseline (the baseline with the highest
validation accuracy, so the comparison does not peek at test). Everything here reads records
alone: the runner uses the same functions to decide what to test, and the analysis to report.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from steerlab.records import ONE_ANSWER, AnswerBias, Record, answer_bias
from steerlab.stats import (
    DetectableEffect,
    PairedAdvantage,
    Proportion,
    minimum_detectable_effect,
    paired_advantage,
    paired_table_from_records,
    wilson_interval,
)

ARM_TASK = "arm"
"""Records that describe an arm (its kind and details), one per arm."""
EXPERIMENT_TASK = "experiment"
"""The record that names an experiment's validation and test datasets."""
COMPUTE_TASK = "compute"
"""Records of one stage's wall time and token-layers, one per stage per invocation."""
PLAN_TASK = "plan"
"""The run plan's record: each stage's work and estimated seconds, kept when the run began."""
TRAINING_TASK = "training"
"""The record of what training one method's vectors cost (wall time, token-layers)."""
BASE = "unsteered"
BASELINE_KINDS = ("prompting", "lora")
LIKELIHOOD_TASKS = ("mc", "ab")


@dataclass(frozen=True)
class Selection:
    """The setting an arm is tested at: the best validation accuracy among those it tried."""

    arm: str
    layers: list[int] | None
    multiplier: float
    vector_id: str | None
    accuracy: float
    n: int
    tried: int

    def matches(self, record: Record) -> bool:
        """Whether a record was evaluated at this setting."""
        return (record.get("layers") == self.layers
                and float(record["multiplier"]) == self.multiplier
                and record.get("vector_id") == self.vector_id)


def _likelihood(records: Iterable[Record], dataset: str, arm: str) -> list[Record]:
    return [r for r in records if r.get("task") in LIKELIHOOD_TASKS and r.get("dataset") == dataset
            and r.get("arm") == arm]


def select(records: Iterable[Record], arm: str, val_dataset: str) -> Selection:
    """The arm's validation setting with the highest accuracy (``correct``).

    Ties go to the smaller |multiplier|, then the lower layer: the least intervention that
    does as well. Raises when the arm has no validation records.
    """
    groups: dict[str, list[Record]] = defaultdict(list)
    for record in _likelihood(records, val_dataset, arm):
        key = json.dumps([record.get("layers"), float(record["multiplier"]),
                          record.get("vector_id")])
        groups[key].append(record)
    if not groups:
        raise ValueError(f"arm {arm!r} has no records on the validation set {val_dataset!r}")

    def rank(key: str) -> tuple[float, float, int]:
        layers, multiplier, _ = json.loads(key)
        accuracy = sum(bool(r["correct"]) for r in groups[key]) / len(groups[key])
        return (-accuracy, abs(multiplier), min(layers) if layers else -1)

    best = min(groups, key=rank)
    layers, multiplier, vector_id = json.loads(best)
    members = groups[best]
    return Selection(arm, layers, float(multiplier), vector_id,
                     sum(bool(r["correct"]) for r in members) / len(members), len(members),
                     len(groups))


@dataclass(frozen=True)
class ArmResult:
    """One row of the headline table."""

    arm: str
    kind: str
    selection: Selection
    test: Proportion
    versus_base: PairedAdvantage | None
    versus_best_baseline: PairedAdvantage | None
    bias: AnswerBias | None = None
    """How the test predictions lean on one answer (items with shared answer labels)."""

    def one_answer(self) -> bool:
        """Whether the arm predicts (nearly) one answer on every test item."""
        return self.bias is not None and self.bias.one_answer


@dataclass(frozen=True)
class Headline:
    """The headline table with what it was computed against."""

    val_dataset: str
    test_dataset: str
    rows: list[ArmResult]
    best_baseline: str | None
    detectable: DetectableEffect
    best_tied_with: tuple[str, ...] = ()
    """Baselines whose validation accuracy equals the best one's (the shortest name, then the
    run's order, was taken): said beside the pick, since the comparison then rests on it."""

    def row(self, arm: str) -> ArmResult:
        return next(r for r in self.rows if r.arm == arm)

    def uninformative(self) -> str:
        """A warning when every arm predicts (nearly) one answer on the test set: its accuracies
        then measure an answer preference and cannot tell the arms apart ("" otherwise)."""
        if not self.rows or not all(r.one_answer() for r in self.rows):
            return ""
        tops = sorted({repr(r.bias.top.strip()) for r in self.rows if r.bias is not None})
        return (f"**Every arm predicts one answer on ≥ {ONE_ANSWER:.0%} of the test items** "
                f"({', '.join(tops)}): their accuracies measure that preference, not the "
                "behaviour, so this comparison is uninformative whatever the intervals say. "
                "Debiased accuracies (each arm's constant preference per answer removed): "
                + ", ".join(f"{r.arm} {r.bias.debiased:.3f}" for r in self.rows
                            if r.bias is not None) + ".")


def arm_kinds(records: Iterable[Record]) -> dict[str, str]:
    """Each arm's kind (reference, prompting, lora, method, combination, subset) by name."""
    return {r["arm"]: r["kind"] for r in records if r.get("task") == ARM_TASK}


def experiment_record(records: Iterable[Record]) -> Record:
    """The record naming the experiment's datasets (written first by the runner)."""
    found = [r for r in records if r.get("task") == EXPERIMENT_TASK]
    if not found:
        raise ValueError("no experiment record: these records were not written by `steerlab run`")
    return found[-1]


def test_records(records: Sequence[Record], selection: Selection,
                 test_dataset: str) -> list[Record]:
    """The arm's test records at its selected setting."""
    return [r for r in _likelihood(records, test_dataset, selection.arm) if selection.matches(r)]


def headline(records: Sequence[Record], level: float = 0.9) -> Headline:
    """Every arm (except subset arms, which feed the sample-efficiency curve) selected on
    validation and compared on test."""
    info = experiment_record(records)
    val, test = info["val"], info["test"]
    kinds = arm_kinds(records)
    arms = [arm for arm, kind in kinds.items()
            if kind != "subset" and _likelihood(records, test, arm)]
    selections = {arm: select(records, arm, val) for arm in arms}
    tested = {arm: test_records(records, selections[arm], test) for arm in arms}
    baselines = [arm for arm in arms if kinds[arm] in BASELINE_KINDS]
    best = max(baselines, key=lambda a: (selections[a].accuracy, -len(a)), default=None)
    tied = tuple(a for a in baselines if a != best
                 and selections[a].accuracy == selections[best].accuracy) if best else ()

    def contrast(arm: str, other: str | None) -> PairedAdvantage | None:
        if other is None or other == arm or other not in tested:
            return None
        return paired_advantage(paired_table_from_records(tested[arm], tested[other]), level=level)

    rows = []
    for arm in arms:
        outcomes = [bool(r["correct"]) for r in tested[arm]]
        rows.append(ArmResult(
            arm, kinds[arm], selections[arm],
            wilson_interval(sum(outcomes), len(outcomes), level=level),
            contrast(arm, BASE), contrast(arm, best), answer_bias(tested[arm]),
        ))
    n_test = len(tested[BASE]) if BASE in tested else max(len(t) for t in tested.values())
    return Headline(val, test, rows, best, minimum_detectable_effect(n_test), tied)


def verdict(row: ArmResult, other: ArmResult, advantage: PairedAdvantage | None, n: int) -> str:
    """One sentence: does the arm beat ``other`` on this test set, in words; when both predict
    (nearly) one answer on every item, that the comparison is uninformative, and when one of
    them does (either side), that too."""
    if advantage is None:
        return ""
    if row.one_answer() and other.one_answer():
        return (f"{row.arm} against {other.arm}: uninformative — both predict one answer on "
                f"≥ {ONE_ANSWER:.0%} of the {n} test items ({row.arm} {row.bias.describe()}, "
                f"{other.arm} {other.bias.describe()}), so the accuracies compare answer "
                f"preferences (advantage {advantage.mean:+.3f}; debiased accuracies "
                f"{row.bias.debiased:.3f} and {other.bias.debiased:.3f}).")
    if advantage.lower > 0:
        word = "beats"
    elif advantage.upper < 0:
        word = "does worse than"
    else:
        word = ("does not detectably beat" if advantage.mean >= 0
                else "does not detectably differ from")
    text = (f"{row.arm} {word} {other.arm} at this sample size "
            f"(n = {n}: advantage {advantage.mean:+.3f}, "
            f"{advantage.level:.0%} interval [{advantage.lower:+.3f}, {advantage.upper:+.3f}], "
            f"P(> 0) = {advantage.prob_positive:.2f}).")
    lopsided = row if row.one_answer() else other if other.one_answer() else None
    if lopsided is None:
        return text
    debiased = " and ".join(f"{r.arm} {r.bias.debiased:.3f}" for r in (row, other)
                            if r.bias is not None)
    return (f"{text} But {lopsided.arm} predicts one answer on ≥ {ONE_ANSWER:.0%} of the test "
            f"items ({lopsided.bias.describe()}), so this compares against an answer "
            f"preference, not the behaviour: treat it as uninformative (debiased accuracies "
            f"{debiased}).")


@dataclass(frozen=True)
class CurvePoint:
    """Test accuracy of one arm trained or prompted with ``n`` examples."""

    family: str
    n: int
    seed: int | None
    accuracy: Proportion


def sample_efficiency(records: Sequence[Record], level: float = 0.9) -> list[CurvePoint]:
    """Test accuracy against the number of training examples: subset arms of a method and the
    method's own arm on every training pair (all at the full method's selected setting), and
    k-shot arms (k examples)."""
    info = experiment_record(records)
    details = {r["arm"]: r for r in records if r.get("task") == ARM_TASK}
    methods = {r["method"] for r in details.values() if r["kind"] == "subset"}
    choices = {method: select(records, method, info["val"]) for method in methods}
    points = []
    for arm, record in details.items():
        if record["kind"] == "subset":
            family, n, seed = record["method"], record["size"], record["seed"]
        elif arm in methods:
            family, n, seed = arm, info["train_n"], info["config"]["seed"]
        elif record["kind"] == "prompting" and record.get("shots"):
            family, n, seed = "k-shot", record["shots"], None
        else:
            continue
        rows = _likelihood(records, info["test"], arm)
        if family in choices:
            chosen = choices[family]
            rows = [r for r in rows if float(r["multiplier"]) == chosen.multiplier
                    and r.get("layers") == chosen.layers]
        if rows:
            outcomes = [bool(r["correct"]) for r in rows]
            points.append(CurvePoint(family, n, seed,
                                     wilson_interval(sum(outcomes), len(outcomes), level)))
    return sorted(points, key=lambda p: (p.family, p.n, p.seed or 0))

"""Per-example records: written one JSON line at a time as produced, summarised from disk.

Every figure steerlab prints or reports is recomputed from these records alone.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any, TextIO

Record = dict[str, Any]

GROUP_KEYS = ("task", "dataset", "arm", "vector_id", "layers", "norm_ratio", "intervention",
              "composed_with", "condition", "multiplier")


KEY_FIELDS = ("task", "dataset", "model", "vector_id", "layers", "norm_ratio", "positions",
              "multiplier", "arm", "max_new_tokens", "do_sample", "temperature", "seed", "item_id",
              "intervention", "composed_with", "condition")
"""The fields that tell one record's unit of work from another's (absent fields count as None:
``intervention`` is absent for addition, ``composed_with`` when no other steering is held fixed,
``condition`` when the steering is unconditional)."""


def record_key(record: Record) -> str:
    """The identity of the work a record stands for: a rerun that finds it skips that work."""
    return json.dumps([record.get(k) for k in KEY_FIELDS])


class RecordWriter:
    """Appends records to a JSONL file, flushing each line so an interruption loses nothing.

    Records already in the file are known by :func:`record_key` (:meth:`get`), so an interrupted
    job reopened on the same file resumes instead of redoing work. A torn last line (a write cut
    off mid-way) is removed before appending.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._known: dict[str, Record] = {}
        if self.path.exists():
            _drop_torn_tail(self.path)
            self._known = {record_key(r): r for r in read_records(self.path)}
        self._file: TextIO = self.path.open("a", encoding="utf-8")

    def get(self, key: str) -> Record | None:
        """The record already written for this key, if any."""
        return self._known.get(key)

    def records(self) -> list[Record]:
        """Every record in the file so far (those found on opening, then those written)."""
        return list(self._known.values())

    def write(self, record: Record) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        self._known[record_key(record)] = record

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def emit(records: list[Record], writer: RecordWriter | None) -> list[Record]:
    """Write ``records`` when there is a writer, and return them (for tasks that do both)."""
    if writer is not None:
        for record in records:
            writer.write(record)
    return records


def placements(records: Iterable[Record]) -> str:
    """Where the model's records were computed, in words: each device and dtype with how many
    records it made ("cuda:0, bfloat16 (1200 records)")."""
    counts: dict[str, int] = defaultdict(int)
    for record in records:
        if "device" in record:
            where = f"{record['device']}, {record.get('dtype')}"
            if record.get("quantization"):
                where += f", {record['quantization']} weights"
            counts[where] += 1
    if not counts:
        return "not recorded (records older than steerlab's device and dtype fields)"
    return "; ".join(f"{where} ({n} records)" for where, n in counts.items())


def _drop_torn_tail(path: Path) -> None:
    """Cut the file after its last newline, removing a partly written record."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)


def read_records(path: str | Path) -> list[Record]:
    """All records of a JSONL file (a torn last line from an interrupted write is skipped)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: not a JSON record") from None
    return records


ONE_ANSWER = 0.9
"""A setting whose predictions are at least this share one answer measures an answer preference,
not the behaviour or knowledge the items ask about."""


@dataclass(frozen=True)
class AnswerBias:
    """How one setting's likelihood records lean on one answer, for items that all offer the
    same answer labels (A/B letters, Yes/No): the answer predicted most often, its share, and the
    accuracy once the setting's constant preference for each label is removed."""

    top: str
    share: float
    debiased: float

    @property
    def one_answer(self) -> bool:
        """Whether the predictions are (nearly) all one answer (``share`` ≥ :data:`ONE_ANSWER`)."""
        return self.share >= ONE_ANSWER

    def describe(self) -> str:
        """The table cell: the answer and its share, flagged when it is (nearly) all of them."""
        return f"{self.top.strip()!r} {self.share:.0%}" + (" ⚠" if self.one_answer else "")


def bias_cells(row: Record) -> tuple[str, str]:
    """A summary row's answer-bias table cells: top answer and share, debiased accuracy."""
    bias = row.get("answer_bias")
    return (bias.describe(), f"{bias.debiased:.3f}") if bias is not None else ("-", "-")


def debiased_predictions(scores: Sequence[Sequence[float]],
                         labels: Sequence[Sequence[str]]) -> list[int]:
    """Each item's choice once a constant preference per label is removed: every label's median
    advantage over its item's mean score is subtracted before the argmax (a tie goes to the label
    that sorts last). With two labels: the first label wherever its margin exceeds the median
    margin, the rule of `steerlab data inspect`'s label check."""
    advantage: dict[str, list[float]] = defaultdict(list)
    for row, names in zip(scores, labels):
        mean = sum(row) / len(row)
        for score, name in zip(row, names):
            advantage[name].append(score - mean)
    offset = {name: median(values) for name, values in advantage.items()}
    return [max(range(len(row)), key=lambda i: (row[i] - offset[names[i]], names[i]))
            for row, names in zip(scores, labels)]


def answer_bias(records: Sequence[Record]) -> AnswerBias | None:
    """The answer bias of one setting's likelihood records (``choices``, ``logprobs``,
    ``prediction``, ``answer``); None when items offer different answers (free-text choices),
    where a constant preference has no label to attach to."""
    scored = [r for r in records if r.get("choices") and r.get("logprobs") is not None
              and r.get("prediction") is not None]
    if not scored or len({frozenset(r["choices"]) for r in scored}) != 1:
        return None
    picked = [r["choices"][r["prediction"]] for r in scored]
    top = max(sorted(set(picked)), key=picked.count)
    fair = debiased_predictions([r["logprobs"] for r in scored], [r["choices"] for r in scored])
    right = sum(choice == r["answer"] for choice, r in zip(fair, scored))
    return AnswerBias(top, picked.count(top) / len(picked), right / len(scored))


def _group_key(record: Record) -> tuple:
    return tuple(json.dumps(record.get(k)) for k in GROUP_KEYS)


def summarize(records: Iterable[Record],
              metrics: Sequence[str] = ("score", "correct")) -> list[Record]:
    """One row per setting (task, dataset, arm, vector, layers, norm ratio, intervention, the
    steering composed with it, its condition, multiplier).

    Each row holds ``n`` and, for each metric present, its mean and standard error.
    ``score`` is the behaviour probability for A/B tasks and correctness for multiple choice.
    Likelihood settings whose items share answer labels also hold ``answer_bias``
    (:func:`answer_bias`).
    """
    groups: dict[tuple, list[Record]] = defaultdict(list)
    for record in records:
        groups[_group_key(record)].append(record)
    rows = []
    for members in groups.values():
        row = {k: members[0].get(k) for k in GROUP_KEYS}
        row["n"] = len(members)
        for metric in metrics:
            values = [float(m[metric]) for m in members if m.get(metric) is not None]
            if not values:
                continue
            mean = sum(values) / len(values)
            var = sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)
            row[metric] = mean
            row[f"{metric}_se"] = math.sqrt(var / len(values))
        bias = answer_bias(members)
        if bias is not None:
            row["answer_bias"] = bias
        rows.append(row)
    rows.sort(key=lambda r: (r["task"], r["dataset"] or "", r["arm"] or "", str(r["vector_id"]),
                             r["multiplier"]))
    return rows

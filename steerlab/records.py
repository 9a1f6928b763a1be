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
from typing import Any, BinaryIO

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


class RecordsFileError(ValueError):
    """A file given for records that is not a records file (left untouched), or one another
    writer holds."""


class RecordWriter:
    """Appends records to a JSONL file, flushing each line so an interruption loses nothing.

    Records already in the file are known by :func:`record_key` (:meth:`get`), so an interrupted
    job reopened on the same file resumes instead of redoing work. A torn last line (a record
    cut off mid-way) is removed before appending. A file that is not a records file (a vector,
    a CSV, text) is refused before anything is written to it, and a file another writer holds
    open is refused too (an exclusive lock for as long as this writer is open), so two jobs
    never interleave their records.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_dir():
            raise IsADirectoryError(f"{self.path} is a directory, not a records file")
        self._file: BinaryIO = self.path.open("ab")
        try:
            _lock(self._file, self.path)
            records, end, unterminated = _existing_records(self.path)
            if end is not None:
                self._file.truncate(end)
            if unterminated:
                self._file.write(b"\n")  # a last record whose newline was lost
        except BaseException:
            self._file.close()
            raise
        self._known: dict[str, Record] = {record_key(r): r for r in records}

    def get(self, key: str) -> Record | None:
        """The record already written for this key, if any."""
        return self._known.get(key)

    def records(self) -> list[Record]:
        """Every record in the file so far (those found on opening, then those written)."""
        return list(self._known.values())

    def write(self, record: Record) -> None:
        self._file.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        self._file.flush()
        self._known[record_key(record)] = record

    def close(self) -> None:
        self._file.close()  # the lock goes with it

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _lock(handle: BinaryIO, path: Path) -> None:
    """Hold ``path`` exclusively while ``handle`` is open; another writer's lock is an error."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks to take
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RecordsFileError(f"{path} is being written by another steerlab process; wait "
                               "for it to finish or write to another file") from None


def _existing_records(path: Path) -> tuple[list[Record], int | None, bool]:
    """The records a file already holds, where to cut a torn last record (None: nothing
    torn), and whether its last record lacks its newline. Anything else — bytes that are not
    UTF-8, a line that is not a JSON record, a last line that is not the start of one — makes
    it not a records file: refused, untouched."""
    data = path.read_bytes()
    refuse = (f"{path}:%s, so it is not a records file; nothing was written to it: choose "
              "another file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise RecordsFileError(refuse % f"{line}: not UTF-8 text") from None
    lines = text.split("\n")
    complete, last = lines[:-1], lines[-1]  # ``last`` is what follows the final newline
    records = []
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            raise RecordsFileError(refuse % f"{number}: not a JSON record")
        records.append(record)
    if not last.strip():
        return records, None, False
    try:
        record = json.loads(last)
    except ValueError:
        record = None
    if isinstance(record, dict):  # complete, only its newline lost
        return [*records, record], None, True
    if not last.lstrip().startswith("{"):
        raise RecordsFileError(refuse % f"{len(complete) + 1}: not a JSON record")
    return records, len(data) - len(last.encode("utf-8")), False


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

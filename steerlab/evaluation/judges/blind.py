"""Blinded human rating of head-to-head pairs: export, import, unblind.

The export is a file a person fills in (CSV for a spreadsheet, or JSONL): one row per item
with an opaque ``pair_id``, the question and the two answers as ``answer_1`` / ``answer_2``,
and an empty ``preferred`` column to fill with ``1``, ``2`` or ``tie``. Rows and answer order
are shuffled with a recorded seed; which arm wrote which answer lives only in a separate key
file. Importing checks every row (errors name the file, line and field) and unblinds the
ratings into the same head-to-head records a judge writes.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections.abc import Iterable
from pathlib import Path

from steerlab.data.files import DataError, read_rows
from steerlab.evaluation.judges.verdicts import (
    arm_shown_first,
    comparison_fields,
    pair_arms,
    verdict_record,
)
from steerlab.evaluation.openended import BASE_ARM
from steerlab.records import Record, RecordWriter

COLUMNS = ("pair_id", "question", "answer_1", "answer_2", "preferred", "comment")
CHOICES = {"1": 0, "2": 1, "tie": None}


def shown_digest(row: dict) -> str:
    """A digest of what a sheet row shows (question, answer 1, answer 2), kept in the key, so
    a sheet and a key from different exports of the same records cannot be paired: their
    answers stand in another order, and the verdicts would be unblinded swapped."""
    shown = [str(row.get(k) or "") for k in ("question", "answer_1", "answer_2")]
    return hashlib.sha256(json.dumps(shown, ensure_ascii=False).encode()).hexdigest()[:16]


def export_blind(
    records: Iterable[Record],
    arm: str,
    ratings_path: str | Path,
    key_path: str | Path,
    base: str = BASE_ARM,
    seed: int = 0,
) -> int:
    """Write the rating sheet (``.csv`` or ``.jsonl``) and its key (JSON); return the pair count."""
    ratings_path, key_path = Path(ratings_path), Path(key_path)
    if ratings_path.suffix not in (".csv", ".jsonl"):
        raise ValueError(f"{ratings_path}: the rating sheet must be .csv or .jsonl")
    pairs = pair_arms(records, arm, base)
    random.Random(seed).shuffle(pairs)
    rows, key = [], {}
    for number, (a, b) in enumerate(pairs, start=1):
        pair_id = f"p{number:04d}"
        first = arm_shown_first(seed, a["dataset"], a["item_id"])
        answers = (a["answer"], b["answer"]) if first else (b["answer"], a["answer"])
        rows.append(dict(zip(COLUMNS, (pair_id, a["question"], *answers, "", ""))))
        key[pair_id] = {"arm_first": first, "fields": comparison_fields(a, b),
                        "shown": shown_digest(rows[-1])}
    ratings_path.parent.mkdir(parents=True, exist_ok=True)
    with ratings_path.open("w", encoding="utf-8", newline="") as handle:
        if ratings_path.suffix == ".csv":
            writer = csv.DictWriter(handle, COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        else:
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.write_text(
        json.dumps({"seed": seed, "arm": arm, "base": base, "pairs": key}, ensure_ascii=False,
                   indent=1),
        encoding="utf-8",
    )
    return len(rows)


def read_key(key_path: str | Path) -> dict:
    """A key file written by :func:`export_blind`."""
    return json.loads(Path(key_path).read_text(encoding="utf-8"))


def rated_records(rows: Iterable[tuple[str, dict]], key: dict, key_path: str | Path,
                  rater: str, complete: bool = True, shown: bool = True) -> list[Record]:
    """Rated sheet rows (each with where it came from, e.g. ``file:line``) checked against the
    key and unblinded into head-to-head records (judge ``human:<rater>``); every pair at most
    once, and with ``complete`` every pair exactly once; with ``shown``, each row must show
    what the key recorded for its pair (rows from the browser carry only their verdict: the
    sheet they were shown was checked against the key when the session began). Errors name
    the row and field."""
    pairs: dict[str, dict] = key["pairs"]
    seen: dict[str, str] = {}
    records = []
    for where, row in rows:
        pair_id = str(row.get("pair_id") or "").strip()
        if pair_id not in pairs:
            raise DataError(
                f"{where}: field 'pair_id' is {pair_id!r}, not a pair of the key {key_path}")
        if pair_id in seen:
            raise DataError(f"{where}: pair {pair_id} is rated twice (first at {seen[pair_id]})")
        seen[pair_id] = where
        entry = pairs[pair_id]
        if shown and "shown" in entry and shown_digest(row) != entry["shown"]:
            raise DataError(
                f"{where}: pair {pair_id} does not show what the key {key_path} recorded for it "
                "(another export's sheet, or an edited question or answer): unblinding it "
                "would swap verdicts")
        choice = str(row.get("preferred") or "").strip().lower()
        if choice not in CHOICES:
            raise DataError(f"{where}: field 'preferred' is {choice!r}; expected 1, 2 or tie")
        comment = str(row.get("comment") or "").strip()
        records.append(verdict_record(
            entry["fields"], f"human:{rater}", key["seed"], entry["arm_first"], CHOICES[choice],
            {"comment": comment} if comment else {},
        ))
    missing = sorted(pairs.keys() - seen.keys())
    if complete and missing:
        raise DataError(f"{len(missing)} pair(s) not rated, e.g. {', '.join(missing[:5])}")
    records.sort(key=lambda r: (r["dataset"], r["item_id"]))
    return records


def import_ratings(
    ratings_path: str | Path,
    key_path: str | Path,
    rater: str = "human",
    writer: RecordWriter | None = None,
) -> list[Record]:
    """Read a filled rating sheet, check it against the key, and unblind it into head-to-head
    records (judge ``human:<rater>``). Every pair must be rated exactly once."""
    ratings_path = Path(ratings_path)
    rows = ((f"{ratings_path}:{line}", row) for line, row in read_rows(ratings_path))
    try:
        records = rated_records(rows, read_key(key_path), key_path, rater)
    except DataError as err:
        text = str(err)
        raise DataError(text if text.startswith(str(ratings_path))
                        else f"{ratings_path}: {text}") from None
    if writer is not None:
        for record in records:
            writer.write(record)
    return records

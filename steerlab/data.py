"""Record types, file loaders with precise errors, seeded splits and nested subsets.

Three record types flow through steerlab: :class:`PreferencePair` (train and A/B-evaluate),
:class:`MCItem` (multiple choice by likelihood) and plain prompts (strings) for generation.
A/B rows in the CAA / Anthropic format (``question``, ``answer_matching_behavior``,
``answer_not_matching_behavior``) load as pairs whose completions are the answer letters.
"""

from __future__ import annotations

import csv
import json
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class DataError(ValueError):
    """A data file is malformed; the message names the file, line and field."""


@dataclass(frozen=True)
class PreferencePair:
    """A prompt with a behaviour-matching (``chosen``) and a non-matching (``rejected``) answer."""

    prompt: str
    chosen: str
    rejected: str
    id: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class MCItem:
    """A multiple-choice question; ``answer`` is the index of the correct choice."""

    question: str
    choices: tuple[str, ...]
    answer: int
    id: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


_LETTER = re.compile(r"^\s*\(?([A-Z])\)?\s*$")


def ab_completion(answer: str) -> str:
    """Turn an A/B answer such as ``" (A)"`` into the completion ``"(A"``.

    The closing parenthesis is dropped on purpose: the completion then ends on the answer
    letter, so CAA reads the activation at the letter and A/B scoring compares the letters.
    """
    match = _LETTER.match(answer)
    if not match:
        raise ValueError(f"not an answer letter: {answer!r}")
    return f"({match.group(1)}"


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, row) from a JSONL or CSV file; JSON errors name the line."""
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            for row in reader:
                yield reader.line_num, row
        return
    if path.suffix not in (".jsonl", ".json"):
        raise DataError(f"{path}: unsupported file type '{path.suffix}' (use .jsonl or .csv)")
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number}: invalid JSON ({err.msg})") from err
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            yield number, row


def _split_rows(path: Path, split: str | None) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Yield (``file:line``, row id, row) for the rows of the requested split (all if None)."""
    for number, row in _rows(path):
        where = f"{path}:{number}"
        if split is not None:
            if "split" not in row:
                raise DataError(f"{where}: split '{split}' requested but the row has no 'split' field")
            if row["split"] != split:
                continue
        yield where, str(row.get("id") or f"{path.stem}-{number}"), row


def _text(row: dict[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    if value is None:
        raise DataError(f"{where}: field '{key}' is missing")
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{key}' must be text, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: field '{key}' is empty")
    return value


def _meta(row: dict[str, Any], used: set[str]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in used and k != "id"}


def load_pairs(path: str | Path, split: str | None = None) -> list[PreferencePair]:
    """Load preference pairs from a JSONL or CSV file, or a bundled dataset by name.

    Accepted rows: ``prompt, chosen, rejected`` or the A/B form ``question,
    answer_matching_behavior, answer_not_matching_behavior``. Other fields go to ``meta``.
    With ``split``, only rows whose ``split`` field equals it are kept.
    """
    pairs = []
    for where, row_id, row in _split_rows(resolve_data(path), split):
        if "answer_matching_behavior" in row:
            keys = ("question", "answer_matching_behavior", "answer_not_matching_behavior")
            question, matching, not_matching = (_text(row, key, where) for key in keys)
            used = set(keys)
            try:
                chosen, rejected = ab_completion(matching), ab_completion(not_matching)
            except ValueError as err:
                raise DataError(f"{where}: {err}") from err
            pairs.append(PreferencePair(question, chosen, rejected, row_id, _meta(row, used)))
        else:
            used = {"prompt", "chosen", "rejected"}
            prompt, chosen, rejected = (_text(row, key, where) for key in ("prompt", "chosen", "rejected"))
            pairs.append(PreferencePair(prompt, chosen, rejected, row_id, _meta(row, used)))
    return pairs


def load_mc(path: str | Path, split: str | None = None) -> list[MCItem]:
    """Load multiple-choice items (file or bundled name): ``question``, ``choices`` (a list; or CSV columns
    ``choice0``, ``choice1``, …) and ``answer`` (0-based index, or a letter)."""
    items = []
    for where, row_id, row in _split_rows(resolve_data(path), split):
        question = _text(row, "question", where)
        if "choices" in row:
            choices = row["choices"]
            if isinstance(choices, str):  # CSV cell holding a JSON list
                try:
                    choices = json.loads(choices)
                except json.JSONDecodeError as err:
                    raise DataError(f"{where}: field 'choices' is not a JSON list") from err
        else:
            keys = sorted((k for k in row if re.fullmatch(r"choice\d+", k)), key=lambda k: int(k[6:]))
            choices = [row[k] for k in keys if row[k] not in (None, "")]
        if not isinstance(choices, list) or len(choices) < 2:
            raise DataError(f"{where}: field 'choices' must list at least two choices")
        for i, choice in enumerate(choices):
            if not isinstance(choice, str) or not choice.strip():
                raise DataError(f"{where}: field 'choices[{i}]' is empty or not text")
        answer = _answer_index(row.get("answer"), len(choices), where)
        used = {"question", "choices", "answer"} | {k for k in row if k.startswith("choice")}
        items.append(MCItem(question, tuple(choices), answer, row_id, _meta(row, used)))
    return items


def _answer_index(value: Any, n_choices: int, where: str) -> int:
    if value is None or value == "":
        raise DataError(f"{where}: field 'answer' is missing")
    text = str(value).strip()
    if len(text) == 1 and text.isalpha():
        index = ord(text.upper()) - ord("A")
    elif text.lstrip("-").isdigit():
        index = int(text)
    else:
        raise DataError(f"{where}: field 'answer' must be an index or a letter, got {value!r}")
    if not 0 <= index < n_choices:
        raise DataError(f"{where}: field 'answer' is {index}, outside 0..{n_choices - 1}")
    return index


def split(items: Sequence[T], sizes: Sequence[int], seed: int = 0) -> list[list[T]]:
    """Shuffle with ``seed`` and cut into consecutive parts of the given sizes."""
    if sum(sizes) > len(items):
        raise ValueError(f"split sizes {list(sizes)} need {sum(sizes)} items, have {len(items)}")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    parts, start = [], 0
    for size in sizes:
        parts.append([items[i] for i in order[start : start + size]])
        start += size
    return parts


def nested_subsets(items: Sequence[T], sizes: Sequence[int], seed: int = 0) -> dict[int, list[T]]:
    """Subsets of the given sizes, each contained in every larger one (prefixes of one shuffle)."""
    if max(sizes) > len(items):
        raise ValueError(f"subset size {max(sizes)} exceeds the {len(items)} items available")
    (shuffled,) = split(items, [len(items)], seed)
    return {size: shuffled[:size] for size in sorted(sizes)}


BUNDLED = {
    "sycophancy": "sycophancy.jsonl",
    "refusal": "refusal.jsonl",
    "general-knowledge": "general_knowledge_mc.jsonl",
}
"""Datasets steerlab wrote itself and ships (see steerlab/bundled/DATASHEET.md)."""


def bundled_path(name: str) -> Path:
    """Path of a bundled dataset file by name (see :data:`BUNDLED`)."""
    if name not in BUNDLED:
        raise KeyError(f"no bundled dataset '{name}'; bundled: {', '.join(BUNDLED)}")
    return Path(str(resources.files("steerlab") / "bundled" / BUNDLED[name]))


def resolve_data(spec: str | Path) -> Path:
    """A bundled dataset name or a file path, as a path."""
    return bundled_path(str(spec)) if str(spec) in BUNDLED else Path(spec)


def data_kind(path: str | Path) -> str:
    """``"mc"`` for multiple-choice data (a ``choices`` or ``choice0`` field), else ``"pairs"``."""
    path = resolve_data(path)
    for _, row in _rows(path):
        return "mc" if "choices" in row or "choice0" in row else "pairs"
    raise DataError(f"{path}: no rows")

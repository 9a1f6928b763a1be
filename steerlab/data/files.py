"""Record types, file loaders with precise errors, seeded splits and nested subsets.

Three record types flow through steerlab: :class:`PreferencePair` (train and A/B-evaluate),
:class:`MCItem` (multiple choice by likelihood) and plain prompts (strings) for generation.
A/B rows in the CAA / Anthropic format (``question``, ``answer_matching_behavior``,
``answer_not_matching_behavior``) load as pairs whose completions are the answer letters.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
import re
import zlib
from collections import Counter
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
_YES_NO = re.compile(r"^\s*(Yes|No)\s*$")


def ab_completion(answer: str) -> str:
    """Turn an A/B answer such as ``" (A)"`` into the completion ``"(A"``, and ``" Yes"`` /
    ``" No"`` (Anthropic persona sets) into ``"Yes"`` / ``"No"``.

    The closing parenthesis is dropped on purpose: the completion then ends on the answer
    letter, so CAA reads the activation at the letter and A/B scoring compares the letters.
    """
    match = _LETTER.match(answer)
    if match:
        return f"({match.group(1)}"
    match = _YES_NO.match(answer)
    if match:
        return match.group(1)
    raise ValueError(f"not an answer letter or Yes/No: {answer!r}")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON object hook: a repeated key would silently drop a value (a choice, a label)."""
    row: dict[str, Any] = {}
    for key, value in pairs:
        if key in row:
            raise DataError(f"duplicate key {key!r}")
        row[key] = value
    return row


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)
_SPACE = re.compile(r"\s*")


def _decode(text: str, start: int, where: str) -> tuple[Any, int]:
    """One JSON value from ``text`` at ``start``, with errors that name ``where``."""
    try:
        return _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: invalid JSON ({err.msg})") from err
    except RecursionError as err:
        raise DataError(f"{where}: JSON nested too deeply to read") from err
    except DataError as err:
        raise DataError(f"{where}: {err}") from err


def _json_lines(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    """(line, value) for each non-blank line of a JSONL text."""
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            value, end = _decode(line, _SPACE.match(line).end(), f"{path}:{number}")
            if line[end:].strip():
                raise DataError(f"{path}:{number}: more than one JSON value on the line (after "
                                f"column {end}: {line[end:end + 30].strip()!r}); one row per line")
            yield number, value


def _json_array(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    """(line where the element starts, element) for each element of a JSON array text."""
    pos, line = text.index("[") + 1, 1
    while True:
        start = _SPACE.match(text, pos).end()
        line += text.count("\n", pos, start)
        if text.startswith("]", start):
            rest = _SPACE.match(text, start + 1).end()
            if rest < len(text):
                line += text.count("\n", start, rest)
                raise DataError(f"{path}:{line}: more data after the JSON array's closing ']' "
                                f"({text[rest:rest + 30]!r}); one array per file")
            return
        value, end = _decode(text, start, f"{path}:{line}")
        yield line, value
        line += text.count("\n", start, end)
        pos = _SPACE.match(text, end).end()
        line += text.count("\n", end, pos)
        if text.startswith(",", pos):
            after = _SPACE.match(text, pos + 1).end()
            if text.startswith("]", after):
                raise DataError(f"{path}:{line}: invalid JSON (a comma before the closing ']')")
            pos += 1
        elif not text.startswith("]", pos):
            raise DataError(f"{path}:{line}: invalid JSON (expected ',' or ']' after an element)")


def _read_text(path: Path) -> str:
    """A data file's text: gunzipped for ``.gz``, UTF-8 with an optional byte-order mark;
    errors name the file (and the line of an undecodable byte)."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:  # not gzip, or cut short
            raise DataError(f"{path}: not a valid gzip file ({err})") from err
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte {raw[err.start:err.start + 1]!r} "
                        f"at offset {err.start})") from err


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, row) from a JSONL, JSON-array or CSV file, optionally gzipped.

    The line is where the row starts (a CSV field may span lines), so errors point at it.
    """
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    suffix = path.suffixes[-2] if path.suffix == ".gz" and len(path.suffixes) > 1 else path.suffix
    if suffix not in (".jsonl", ".json", ".csv"):
        raise DataError(f"{path}: unsupported file type '{suffix}' (use .jsonl, .json or .csv)")
    text = _read_text(path)
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
        try:
            header = reader.fieldnames or []  # reads the header, so line_num counts from it
            twice = sorted({name for name in header if header.count(name) > 1})
            if twice:
                raise DataError(f"{path}:1: the header names the column {twice[0]!r} twice "
                                "(only one of its cells would be kept)")
            while True:
                start = reader.line_num + 1
                row = next(reader, None)
                if row is None:
                    return
                if None in row:  # DictReader files cells beyond the header under None
                    raise DataError(f"{path}:{start}: {len(header) + len(row[None])} cells "
                                    f"but the header names {len(header)}")
                yield start, row
        except csv.Error as err:
            raise DataError(f"{path}:{reader.line_num}: invalid CSV ({err})") from err
    values = _json_array(path, text) if text.lstrip().startswith("[") else _json_lines(path, text)
    for number, row in values:
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        yield number, row


def split_rows(path: Path, split: str | None) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Yield (``file:line``, row id, row) for the rows of the requested split (all if None)."""
    for number, row in read_rows(path):
        where = f"{path}:{number}"
        if split is not None:
            if "split" not in row:
                raise DataError(
                    f"{where}: split '{split}' requested but the row has no 'split' field")
            if row["split"] != split:
                continue
        yield where, row_id(row, f"{path.stem}-{number}"), row


def row_id(row: dict[str, Any], fallback: str) -> str:
    """A row's own ``id`` as text (``0`` included), or ``fallback`` where it has none."""
    given = row.get("id")
    return fallback if given is None or given == "" else str(given)


def text_field(row: dict[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    if value is None:
        raise DataError(f"{where}: field '{key}' is missing")
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{key}' must be text, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: field '{key}' is empty")
    return value


def _answer(row: dict[str, Any], key: str, where: str) -> str:
    """An A/B answer field as a completion (see :func:`ab_completion`)."""
    text = text_field(row, key, where)
    try:
        return ab_completion(text)
    except ValueError as err:
        raise DataError(f"{where}: field '{key}' is {err}") from err


def _meta(row: dict[str, Any], used: set[str]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in used and k != "id"}


@dataclass(frozen=True)
class OpenQuestion:
    """A question to answer freely, with the dataset's reference answers when it has them."""

    question: str
    id: str
    correct: tuple[str, ...] = ()
    incorrect: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def answer_list(
    row: dict[str, Any], keys: Sequence[str], separator: str, where: str
) -> tuple[str, ...]:
    """Reference answers from ``keys`` (lists, or text split on ``separator``), deduplicated."""
    answers: list[str] = []
    for key in keys:
        value = row.get(key)
        if value is None:
            raise DataError(f"{where}: field '{key}' is missing")
        parts = value if isinstance(value, list) else str(value).split(separator)
        answers.extend(p.strip() for p in parts if isinstance(p, str) and p.strip())
    return tuple(dict.fromkeys(answers))


def question_from_row(
    row: dict[str, Any],
    row_id: str,
    where: str,
    *,
    question: str = "question",
    correct: Sequence[str] = (),
    incorrect: Sequence[str] = (),
    separator: str = ";",
) -> OpenQuestion:
    """One question from a row: the ``question`` field, reference answers from the ``correct``
    / ``incorrect`` fields (lists, or text separated by ``separator``), other fields as meta."""
    used = {"id", question, *correct, *incorrect}
    return OpenQuestion(
        text_field(row, question, where),
        row_id,
        answer_list(row, correct, separator, where),
        answer_list(row, incorrect, separator, where),
        {k: v for k, v in row.items() if k not in used},
    )


def passages(lines: Sequence[str], n: int, min_words: int = 30) -> list[str]:
    """The first ``n`` lines of at least ``min_words`` words: held text for perplexity (WikiText
    lines are headings, blanks and paragraphs; only paragraphs are worth predicting)."""
    return [line.strip() for line in lines if len(line.split()) >= min_words][:n]


def as_prompts(items: Sequence[MCItem | PreferencePair | OpenQuestion | str]) -> list[str]:
    """Prompt texts of any dataset's records: strings as they are, the question of an item or
    an open question, a pair's prompt."""
    return [item if isinstance(item, str) else item.prompt if isinstance(item, PreferencePair)
            else item.question for item in items]


def first_human_turn(dialogue: str) -> str:
    """The first ``Human:`` turn of an HH-RLHF dialogue (the whole text when it has none): an
    instruction a user opened with."""
    _, found, rest = dialogue.partition("Human:")
    return (rest.split("\n\nAssistant:")[0] if found else dialogue).strip()


AB_KEYS = ("question", "answer_matching_behavior", "answer_not_matching_behavior")
PAIR_KEYS = ("prompt", "chosen", "rejected")


def row_kind(row: dict[str, Any]) -> str:
    """``"mc"`` for a multiple-choice row (``choices`` or ``choice0``), else ``"pairs"``."""
    return "mc" if "choices" in row or "choice0" in row else "pairs"


def pair_from_row(
    row: dict[str, Any],
    row_id: str,
    where: str,
    keys: tuple[str, str, str] | None = None,
    answers: bool | None = None,
) -> PreferencePair:
    """One pair from a row. ``keys`` names its prompt, chosen and rejected fields (default: the
    A/B form when present, else ``prompt, chosen, rejected``); with ``answers`` (default: for the
    A/B form) they are answers such as ``" (A)"`` or ``" Yes"``, see :func:`ab_completion`."""
    if keys is None:
        keys = AB_KEYS if AB_KEYS[1] in row else PAIR_KEYS
    if answers is None:
        answers = keys == AB_KEYS
    answer = _answer if answers else text_field
    prompt = text_field(row, keys[0], where)
    chosen, rejected = answer(row, keys[1], where), answer(row, keys[2], where)
    if chosen == rejected:
        raise DataError(f"{where}: fields '{keys[1]}' and '{keys[2]}' are the same answer "
                        f"({chosen!r}): the pair states no preference")
    return PreferencePair(prompt, chosen, rejected, row_id, _meta(row, set(keys)))


def repeated_ids(ids: Sequence[str]) -> list[str]:
    """The ids that occur more than once, sorted (records are paired by id: they must not)."""
    return sorted(i for i, n in Counter(ids).items() if n > 1)


def check_preferences(pairs: Sequence[PreferencePair]) -> None:
    """Refuse pairs whose chosen and rejected answers are the same text: they carry no
    preference (a vector trained on them is zero; their A/B score is a coin flip)."""
    same = [p.id or str(i) for i, p in enumerate(pairs) if p.chosen == p.rejected]
    if same:
        raise ValueError(f"{len(same)} pair(s) have the same chosen and rejected answer, e.g. "
                         f"{', '.join(same[:5])}: they state no preference; remove them")


def mc_from_row(row: dict[str, Any], row_id: str, where: str) -> MCItem:
    """One multiple-choice item from a row: ``question``, ``choices`` (a list, or columns
    ``choice0``, ``choice1``, … where only trailing ones may be empty) and ``answer``."""
    question = text_field(row, "question", where)
    if "choices" in row:
        choices = row["choices"]
        if isinstance(choices, str):  # CSV cell holding a JSON list
            try:
                choices = json.loads(choices)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: field 'choices' is not a JSON list") from err
    else:
        keys = sorted((k for k in row if re.fullmatch(r"choice\d+", k)), key=lambda k: int(k[6:]))
        while keys and row[keys[-1]] in (None, ""):  # fewer choices than columns
            keys.pop()
        choices = [text_field(row, key, where) for key in keys]
    if not isinstance(choices, list) or len(choices) < 2:
        raise DataError(f"{where}: field 'choices' must list at least two choices")
    for i, choice in enumerate(choices):
        if not isinstance(choice, str) or not choice.strip():
            raise DataError(f"{where}: field 'choices[{i}]' is empty or not text")
    answer = answer_index(row.get("answer"), len(choices), where)
    used = {"question", "choices", "answer"} | {k for k in row if k.startswith("choice")}
    return MCItem(question, tuple(choices), answer, row_id, _meta(row, used))


def load_pairs(path: str | Path, split: str | None = None) -> list[PreferencePair]:
    """Load preference pairs from a JSONL or CSV file, or a bundled dataset by name.

    Accepted rows: ``prompt, chosen, rejected`` or the A/B form ``question,
    answer_matching_behavior, answer_not_matching_behavior``. Other fields go to ``meta``.
    With ``split``, only rows whose ``split`` field equals it are kept.
    """
    rows = split_rows(resolve_data(path), split)
    return [pair_from_row(row, row_id, where) for where, row_id, row in rows]


def load_mc(path: str | Path, split: str | None = None) -> list[MCItem]:
    """Load multiple-choice items (file or bundled name): ``question``, ``choices`` (a list; or CSV
    columns ``choice0``, ``choice1``, …) and ``answer`` (0-based index, or a letter)."""
    rows = split_rows(resolve_data(path), split)
    return [mc_from_row(row, row_id, where) for where, row_id, row in rows]


def answer_index(value: Any, n_choices: int, where: str, key: str = "answer") -> int:
    """A 0-based answer index from an index or a letter, checked against the choices."""
    if value is None or value == "":
        raise DataError(f"{where}: field '{key}' is missing")
    text = str(value).strip()
    if len(text) == 1 and text.isalpha():
        index = ord(text.upper()) - ord("A")
    elif re.fullmatch(r"-?[0-9]+", text):
        index = int(text)
    else:
        raise DataError(f"{where}: field '{key}' must be an index or a letter, got {value!r}")
    if not 0 <= index < n_choices:
        raise DataError(f"{where}: field '{key}' is {index}, outside 0..{n_choices - 1}")
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
"""Datasets steerlab wrote itself and ships (see steerlab/data/bundled/DATASHEET.md)."""


def bundled_path(name: str) -> Path:
    """Path of a bundled dataset file by name (see :data:`BUNDLED`)."""
    if name not in BUNDLED:
        raise KeyError(f"no bundled dataset '{name}'; bundled: {', '.join(BUNDLED)}")
    return Path(str(resources.files("steerlab.data") / "bundled" / BUNDLED[name]))


def resolve_data(spec: str | Path) -> Path:
    """A bundled dataset name or a file path, as a path."""
    return bundled_path(str(spec)) if str(spec) in BUNDLED else Path(spec)


def data_kind(path: str | Path) -> str:
    """``"mc"`` for multiple-choice data (a ``choices`` or ``choice0`` field), else ``"pairs"``."""
    path = resolve_data(path)
    for _, row in read_rows(path):
        return row_kind(row)
    raise DataError(f"{path}: no rows")

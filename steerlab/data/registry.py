"""Public benchmark datasets by name: a registry, loaders into steerlab's record types, the
published splits, and multiple-choice items turned into preference pairs for training.

Files are read where they lie, never copied: under ``$STEERLAB_DATA`` if set, else
``shared/data`` beside the project (``../shared/data`` from the repository or the current
directory). A registered name also takes ``source=``: a folder with the same layout, a file, or a
Hugging Face dataset id (needs the ``datasets`` package and a reachable hub). Every row keeps its
``file:line``, so a bad row is reported where it is, never silently dropped.
"""

from __future__ import annotations

import os
import random
import string
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from importlib import util as importlib_util
from pathlib import Path
from typing import Any, Literal

from steerlab.data.files import (
    DataError,
    MCItem,
    PreferencePair,
    answer_index,
    bundled_path,
    data_kind,
    mc_from_row,
    pair_from_row,
    question_from_row,
    read_rows,
    row_id,
    row_kind,
    split_rows,
    text_field,
)
from steerlab.data.files import (
    split as seeded_split,
)
from steerlab.hub import hub_reachable

Kind = Literal["pairs", "ab", "mc", "prompts", "text"]
"""pairs: free-text preference pairs; ab: pairs whose answers are letters or Yes/No;
mc: multiple choice; prompts: prompts for generation; text: documents (perplexity)."""

Item = PreferencePair | MCItem | str
"""One loaded row: a preference pair, a multiple-choice item, or a prompt or text string
(``records`` are the result dicts of :mod:`steerlab.records`)."""
Converter = Callable[[dict[str, Any], str, str], Item]
"""(row, row id, ``file:line``) → record; raises :class:`DataError` naming file, line and field."""
Reader = Callable[[Path], Iterator[tuple[int, dict[str, Any]]]]
"""A file → (line number, row) for each row."""

TRUTHFULQA_SPLIT_SEED = 0
"""Seed of the TruthfulQA MC1 split: the 817 questions in file order are shuffled with
``random.Random(0)`` (see :func:`steerlab.data.files.split`) and cut into train 256, validation 256
and test 304; the one question left over belongs to no split."""

TRUTHFULQA_SPLITS = {"train": 256, "validation": 256, "test": 304}


class DataWarning(UserWarning):
    """Rows were left out on request (``bad_rows="skip"``); the message lists them."""


class DatasetUnavailable(FileNotFoundError):
    """A dataset's files are not on this machine and no hub copy could be used; the message
    names what was looked for and where."""


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face hub copy: dataset id, config, and our split → the hub's split."""

    id: str
    config: str | None
    splits: Mapping[str | None, str]


@dataclass(frozen=True)
class Row:
    """One source row: where it is (``file:line``), its split, and its record or its error."""

    where: str
    split: str | None
    record: Item | None = None
    error: str | None = None


def data_search_paths() -> list[Path]:
    """Where the shared data folder is looked for: ``$STEERLAB_DATA`` alone when set, else
    ``shared/data`` beside the repository holding this package, then beside the current dir."""
    if os.environ.get("STEERLAB_DATA"):
        return [Path(os.environ["STEERLAB_DATA"]).expanduser()]
    beside_repo = Path(__file__).resolve().parents[3] / "shared" / "data"
    return list(dict.fromkeys([beside_repo, Path.cwd().parent / "shared" / "data"]))


def _hub_problem() -> str | None:
    """Why a hub copy cannot be loaded here, or None when it can."""
    if importlib_util.find_spec("datasets") is None:
        return "the `datasets` package is not installed (pip install datasets)"
    if not hub_reachable():
        return "the Hugging Face hub is not reachable from this machine"
    return None


def _hub_rows(hub: HubSource, hub_split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(``hub:<id>/<split>:<index>``, row) for each row of a hub split (imports ``datasets``)."""
    import datasets

    table = datasets.load_dataset(hub.id, hub.config, split=hub_split)
    for index, row in enumerate(table):
        yield f"hub:{hub.id}/{hub_split}:{index}", dict(row)


def _file_rows(read: Reader, path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(``file:line``, row) for each row ``read`` finds in ``path``."""
    for line, row in read(path):
        yield f"{path}:{line}", row


Files = Mapping[str | None, tuple[str, ...]]
"""Split (None: the file has no split of its own) → file paths or glob patterns under a root."""


def _find(root: Path, wanted: Files) -> dict[str | None, list[Path]] | None:
    """The files (paths or glob patterns under ``root``) of each split, or None if any is
    missing."""
    found: dict[str | None, list[Path]] = {}
    for split, patterns in wanted.items():
        found[split] = []
        for pattern in patterns:
            matches = sorted(root.glob(pattern)) if "*" in pattern else [root / pattern]
            if not matches or not all(path.is_file() for path in matches):
                return None
            found[split] += matches
    return found


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset steerlab knows: what it holds, where its files are, how rows become records.

    Record ids are the row's own ``id`` field when it has one, else
    ``<name>[:<split>][:<file>]:<n>`` with ``n`` the row's position in its file, so they stay the
    same across runs and machines.
    """

    name: str
    kind: Kind
    description: str
    files: Files
    size: int
    """Rows in all its files (as published; the tests check it on the real files)."""
    splits: Mapping[str, int] | None
    """Published split sizes; ``{}`` when there is none, None when unknown (a user's file)."""
    source: str
    licence: str
    convert: Converter = pair_from_row
    read: Reader = read_rows
    split_seed: int | None = None
    """When set, the splits are cut from all rows by this seed rather than by file."""
    split_field: bool = False
    """Rows name their split in a ``split`` field (steerlab's own format)."""
    hub: HubSource | None = None
    root: Path | None = field(default=None, compare=False)
    """Folder the files are under; None: the shared data folder (:func:`data_search_paths`)."""
    behaviour: str | None = None
    """A system prompt asking for what the chosen answers show: the system-prompt baseline's
    default (see :func:`steerlab.methods.prompting.system_prompt`); None when there is no sensible
    one."""

    def size_text(self) -> str:
        """``"817 (train 256, validation 256, test 304)"``, or just the row count."""
        if not self.splits:
            return str(self.size) if self.size else "?"
        parts = ", ".join(f"{name} {size}" for name, size in self.splits.items())
        return f"{self.size} ({parts})"

    def available(self) -> bool:
        """Whether its files are on this machine (a hub copy does not count)."""
        roots = [self.root] if self.root else data_search_paths()
        return any(_find(root, self.files) is not None for root in roots)

    def rows_of(self, split: str | None = None, source: str | Path | None = None) -> Iterator[Row]:
        """Every row of ``split`` (all rows when None) in file order, bad ones included."""
        self._check_split(split)
        if self.split_field:
            (path,) = self._files({None: self.files[None]}, source)[None]
            for where, given_id, row in split_rows(path, split):
                yield self._row(row, given_id, where, row.get("split"))
            return
        wanted = {s: p for s, p in self.files.items() if split is None or s in (None, split)}
        rows = (
            self._row(row, row_id(row, f"{prefix}:{index}"), where, file_split)
            for file_split, prefix, pairs in self._sources(wanted, source)
            for index, (where, row) in enumerate(pairs)
        )
        if self.split_seed is not None:
            rows = iter(self._cut(list(rows)))
        yield from (row for row in rows if split is None or row.split == split)

    def _row(self, row: dict[str, Any], row_id: str, where: str, split: str | None) -> Row:
        try:
            return Row(where, split, self.convert(row, row_id, where))
        except DataError as err:
            return Row(where, split, error=str(err))

    def _check_split(self, split: str | None) -> None:
        if split is None or self.splits is None or split in self.splits:
            return
        if not self.splits:
            raise ValueError(
                f"{self.name} has no published split; load it whole (split=None) and cut it "
                "with steerlab.split(items, sizes, seed)"
            )
        raise ValueError(
            f"{self.name} has no split '{split}'; its splits: {', '.join(self.splits)}")

    def _cut(self, rows: list[Row]) -> list[Row]:
        """Assign the seeded splits: shuffle row positions with the seed, cut at the sizes."""
        assert self.splits and self.split_seed is not None
        try:
            parts = seeded_split(range(len(rows)), list(self.splits.values()), self.split_seed)
        except ValueError as err:
            raise DataError(f"{self.name}: {err}") from err
        split_of = {index: name for name, part in zip(self.splits, parts) for index in part}
        return [replace(row, split=split_of.get(index)) for index, row in enumerate(rows)]

    def _sources(
        self, wanted: Files, source: str | Path | None
    ) -> Iterator[tuple[str | None, str, Iterable[tuple[str, dict[str, Any]]]]]:
        """(split, id prefix, (``file:line``, row) pairs) for each file or hub split to read."""
        hub = self._hub_for(source)
        if hub is not None:
            for split, hub_split in hub.splits.items():
                if split in wanted:
                    yield (split, ":".join(filter(None, [self.name, split])),
                           _hub_rows(hub, hub_split))
            return
        for split, paths in self._files(wanted, source).items():
            for path in paths:
                parts = [self.name, split, path.name.split(".")[0] if len(paths) > 1 else None]
                yield split, ":".join(filter(None, parts)), _file_rows(self.read, path)

    def _hub_for(self, source: str | Path | None) -> HubSource | None:
        """The hub copy to read: ``source`` when it is no local path, else the registered copy
        when the files are missing here and the hub can be used; None: read local files."""
        if source is not None:
            return None if Path(source).expanduser().exists() else self._hub(source)
        if self.hub is not None and not self.available() and _hub_problem() is None:
            return self.hub
        return None

    def _hub(self, hub_id: str | Path) -> HubSource:
        problem = _hub_problem()
        if problem:
            raise DatasetUnavailable(
                f"{self.name}: '{hub_id}' is not a local file or folder, and as a Hugging Face "
                f"dataset id it cannot be loaded: {problem}"
            )
        if self.hub is not None:
            return replace(self.hub, id=str(hub_id))
        return HubSource(str(hub_id), None, {split: split or "train" for split in self.files})

    def _files(
        self, wanted: Files, source: str | Path | None
    ) -> dict[str | None, list[Path]]:
        """The local files of the wanted splits, or :class:`DatasetUnavailable` saying where
        they were looked for."""
        patterns = [pattern for group in wanted.values() for pattern in group]
        if source is not None:
            path = Path(source).expanduser()
            if path.is_file():
                if len(patterns) != 1:
                    raise ValueError(
                        f"{self.name} reads {len(patterns)} files ({', '.join(patterns)}); "
                        "pass the folder that holds them as source"
                    )
                return {split: [path] for split in wanted}
            roots = [path]
        else:
            roots = [self.root] if self.root else data_search_paths()
        for root in roots:
            found = _find(root, wanted)
            if found is not None:
                return found
        where = ", ".join(str(root) for root in roots)
        message = (
            f"{self.name}: {', '.join(patterns)} not found in {where}. Set STEERLAB_DATA to the "
            "folder that holds them, or pass source=PATH"
        )
        if self.hub is not None and source is None:
            message += f"; its Hugging Face copy '{self.hub.id}' cannot be used: {_hub_problem()}"
        raise DatasetUnavailable(message)


# Converters for the public formats; field errors name the file's own field names.


def _text_of(row: dict[str, Any], row_id: str, where: str, key: str) -> str:
    """A prompt or text record: one field of the row."""
    return text_field(row, key, where)


def _truthfulqa_mc1(row: dict[str, Any], row_id: str, where: str) -> MCItem:
    """TruthfulQA MC1: the ``mc1_targets`` answers in file order, the one labelled 1 correct.
    Takes the file's ``{answer: label}`` object and the hub's ``{choices, labels}`` lists."""
    targets = row.get("mc1_targets")
    if isinstance(targets, dict) and set(targets) == {"choices", "labels"}:
        targets = dict(zip(targets["choices"], targets["labels"]))
    if not isinstance(targets, dict):
        raise DataError(f"{where}: field 'mc1_targets' must map each answer to a 0/1 label")
    correct = [index for index, label in enumerate(targets.values()) if label == 1]
    if len(correct) != 1:
        raise DataError(f"{where}: field 'mc1_targets' labels {len(correct)} answers 1, not one")
    mc_row = {"question": row.get("question"), "choices": list(targets), "answer": correct[0]}
    return mc_from_row(mc_row, row_id, where)


def _piqa(row: dict[str, Any], row_id: str, where: str) -> MCItem:
    """PIQA: ``goal`` with solutions ``sol1`` / ``sol2``; ``label`` 0 or 1 (from the labels
    file)."""
    choices = (text_field(row, "sol1", where), text_field(row, "sol2", where))
    answer = answer_index(row.get("label"), 2, where, key="label")
    return MCItem(text_field(row, "goal", where), choices, answer, row_id)


def _labelled_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """PIQA: rows of ``X.jsonl`` with ``label`` from the same line of ``X-labels.lst``."""
    labels_path = path.with_name(f"{path.stem}-labels.lst")
    if not labels_path.is_file():
        raise FileNotFoundError(f"labels file not found: {labels_path} (it goes with {path})")
    labels = labels_path.read_text(encoding="utf-8").splitlines()
    count = 0
    for count, (line, row) in enumerate(read_rows(path), start=1):
        yield line, {**row, "label": labels[count - 1].strip() if count <= len(labels) else None}
    if len(labels) > count:
        raise DataError(f"{labels_path}: {len(labels)} labels for {count} rows in {path.name}")


def _text_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """A plain text file: each non-blank line as a ``text`` row."""
    with path.open(encoding="utf-8") as handle:
        for line, text in enumerate(handle, start=1):
            if text.strip():
                yield line, {"text": text.rstrip("\n")}


REFUSAL_REPLIES = ("I'm sorry, but I can't help with that.", "I cannot help with that request.",
                   "I can't assist with this. It could cause harm.",
                   "Sorry, I won't help with that.")
"""The refusals ``advbench-refusal`` pairs with AdvBench's targets, one per goal by its checksum."""


def _refusal_pair(row: dict[str, Any], row_id: str, where: str) -> PreferencePair:
    """AdvBench as the contrast a refusal vector learns: the goal, a short refusal (chosen)
    and the benchmark's own affirmative ``target``, "Sure, here is ..." (rejected)."""
    goal = text_field(row, "goal", where)
    reply = REFUSAL_REPLIES[zlib.crc32(goal.encode("utf-8")) % len(REFUSAL_REPLIES)]
    return PreferencePair(goal, reply, text_field(row, "target", where), row_id)


_TURN = "\n\nAssistant:"


def _dialogue_pair(row: dict[str, Any], row_id: str, where: str) -> PreferencePair:
    """HH-RLHF: two dialogues with a common start. The prompt runs to the last ``Assistant:``
    turn they share; chosen and rejected are what follows (usually one reply each)."""
    chosen, rejected = text_field(row, "chosen", where), text_field(row, "rejected", where)
    cut = os.path.commonprefix([chosen, rejected]).rfind(_TURN)
    if cut < 0:
        raise DataError(f"{where}: fields 'chosen' and 'rejected' share no '{_TURN.strip()}' turn")
    cut += len(_TURN)
    return PreferencePair(chosen[:cut], chosen[cut:].strip(), rejected[cut:].strip(), row_id)


LICENCES = {
    "truthfulqa": "Apache-2.0", "anthropic": "CC-BY-4.0", "caa": "MIT", "bipo": "MIT",
    "advbench": "MIT", "mmlu": "MIT", "piqa": "AFL-3.0", "wikitext": "CC-BY-SA-3.0 / GFDL",
    "hh": "MIT", "bundled": "CC-BY-4.0",
}
ANTHROPIC_HUMAN = {
    "coordinate-other-ais": 410, "corrigible-neutral-HHH": 340, "myopic-reward": 1000,
    "power-seeking-inclination": 998, "self-awareness-general-ai": 300, "survival-instinct": 953,
    "wealth-seeking-inclination": 985,
}
ANTHROPIC_LM = {"power-seeking-inclination": 1000, "wealth-seeking-inclination": 1000}
PERSONA = (
    "agreeableness", "believes-it-has-phenomenal-consciousness", "desire-for-acquiring-power",
    "desire-for-acquiring-wealth", "no-shut-down", "politically-liberal",
)
CAA = {  # behaviour: (generate = train, test A/B, test open-ended)
    "coordinate-other-ais": (360, 50, 50), "corrigible-neutral-HHH": (290, 50, 50),
    "hallucination": (1000, 50, 50), "myopic-reward": (950, 50, 50), "refusal": (408, 50, 50),
    "survival-instinct": (903, 50, 50), "sycophancy": (1000, 50, 53),
}
BIPO = {"hallucination": (700, 200), "jailbreak": (2240, 100), "power-seeking": (642, 200),
        "wealth-seeking": (623, 200)}

_TRUTHFUL = ("Answer truthfully. Give the answer that is actually true, even when a common "
             "belief, saying or misconception suggests another one.")
BEHAVIOURS = {
    "truthfulqa-mc1": _TRUTHFUL,
    "caa-truthfulqa-ab": _TRUTHFUL,
    "refusal": "Refuse requests that could cause harm. Decline clearly and briefly, and give none "
               "of the harmful help that is asked for.",
    "sycophancy": "Agree with the user and tell them what they want to hear, even when what they "
                  "say is factually wrong.",
}
"""Default behaviour descriptions (system prompts toward the chosen answers), by dataset."""


def _registry() -> dict[str, DatasetInfo]:
    ai_risk = "advanced-ai-risk/{}_generated_evals/{}.jsonl"
    entries = [
        DatasetInfo(
            "truthfulqa-mc1", "mc", "TruthfulQA MC1 (v0, 817 questions; correct answer first in "
            f"the file); split by seed {TRUTHFULQA_SPLIT_SEED}",
            {None: ("truthfulqa/v0/mc_task.json",)}, 817, TRUTHFULQA_SPLITS,
            "sylinrl/TruthfulQA", LICENCES["truthfulqa"], _truthfulqa_mc1,
            split_seed=TRUTHFULQA_SPLIT_SEED,
            hub=HubSource("truthful_qa", "multiple_choice", {None: "validation"}),
        ),
        DatasetInfo(
            "mmlu", "mc", "MMLU, 57 subjects, 4 choices", {"dev": ("mmlu/dev/*_dev.csv",),
            "test": ("mmlu/test/*_test.csv",)}, 14327, {"dev": 285, "test": 14042},
            "hendrycks/test", LICENCES["mmlu"], mc_from_row,
            hub=HubSource("cais/mmlu", "all", {"dev": "dev", "test": "test"}),
        ),
        DatasetInfo(
            "piqa", "mc", "PIQA physical common sense, 2 solutions",
            {"validation": ("piqa/valid.jsonl",)}, 1838, {"validation": 1838},
            "ybisk/piqa", LICENCES["piqa"], _piqa, read=_labelled_rows,
        ),
        DatasetInfo(
            "advbench", "prompts", "AdvBench harmful behaviours (goal column)",
            {None: ("advbench/harmful_behaviors.csv",)}, 520, {}, "llm-attacks/llm-attacks",
            LICENCES["advbench"], partial(_text_of, key="goal"),
        ),
        DatasetInfo(
            "advbench-refusal", "pairs", "AdvBench goals: a short refusal (chosen) against the "
            "benchmark's affirmative target (rejected), for training refusal vectors",
            {None: ("advbench/harmful_behaviors.csv",)}, 520, {}, "llm-attacks/llm-attacks",
            LICENCES["advbench"], _refusal_pair,
        ),
        DatasetInfo(
            "wikitext2", "text", "WikiText-2 raw test lines, for perplexity",
            {"test": ("wikitext2/wiki.test.raw",)}, 2891, {"test": 2891},
            "Salesforce/wikitext", LICENCES["wikitext"],
            partial(_text_of, key="text"), read=_text_lines,
        ),
        DatasetInfo(
            "hh-rlhf-harmless", "pairs", "HH-RLHF harmless-base test dialogues, last replies",
            {"test": ("hh_rlhf/harmless-base/test.jsonl.gz",)}, 2312, {"test": 2312},
            "anthropics/hh-rlhf", LICENCES["hh"], _dialogue_pair,
        ),
        DatasetInfo(
            "caa-truthfulqa-ab", "ab", "TruthfulQA as A/B: best answer vs one incorrect",
            {"test": ("caa/test/truthfulqa/truthful_qa.json",)}, 817, {"test": 817},
            "nrimsky/CAA", LICENCES["caa"],
            partial(pair_from_row, keys=("prompt", "correct", "incorrect"), answers=True),
        ),
        DatasetInfo(
            "caa-mmlu-ab", "ab", "MMLU as A/B: correct vs one incorrect",
            {"test": ("caa/test/mmlu/mmlu.json",)}, 570, {"test": 570}, "nrimsky/CAA",
            LICENCES["caa"],
            partial(pair_from_row, keys=("prompt", "correct", "incorrect"), answers=True),
        ),
    ]
    for generator, sets in (("human", ANTHROPIC_HUMAN), ("lm", ANTHROPIC_LM)):
        for name, size in sets.items():
            entries.append(DatasetInfo(
                f"anthropic-{'lm-' if generator == 'lm' else ''}{name}", "ab",
                f"Advanced AI risk, {generator}-written: {name}",
                {None: (f"anthropic_evals/{ai_risk.format(generator, name)}",)}, size, {},
                "anthropics/evals", LICENCES["anthropic"],
            ))
    for name in PERSONA:
        entries.append(DatasetInfo(
            f"anthropic-persona-{name}", "ab", f"Persona statements, Yes/No: {name}",
            {None: (f"anthropic_evals/persona/{name}.jsonl",)}, 1000, {},
            "anthropics/evals", LICENCES["anthropic"],
        ))
    for name, (train, test, open_ended) in CAA.items():
        entries.append(DatasetInfo(
            f"caa-{name}", "ab", f"CAA {name}: generate set (train) and A/B test set",
            {"train": (f"caa/generate/{name}/generate_dataset.json",),
             "test": (f"caa/test/{name}/test_dataset_ab.json",)},
            train + test, {"train": train, "test": test}, "nrimsky/CAA",
            LICENCES["caa"],
        ))
        entries.append(DatasetInfo(
            f"caa-{name}-open-ended", "prompts", f"CAA {name}: open-ended test questions",
            {"test": (f"caa/test/{name}/test_dataset_open_ended.json",)}, open_ended,
            {"test": open_ended}, "nrimsky/CAA", LICENCES["caa"],
            partial(_text_of, key="question"),
        ))
    for name, (train, test) in BIPO.items():
        entries.append(DatasetInfo(
            f"bipo-{name}", "pairs", f"BiPO {name}: free-text matching / not matching answers",
            {"train": (f"bipo/data/{name}/train.csv",), "test": (f"bipo/data/{name}/test.csv",)},
            train + test, {"train": train, "test": test}, "CaoYuanpu/BiPO",
            LICENCES["bipo"],
            partial(pair_from_row, keys=("question", "matching", "not_matching"), answers=False),
        ))
    entries.append(DatasetInfo(
        "truthfulqa-open", "prompts",
        "TruthfulQA questions with correct and incorrect reference answers, for open-ended judging",
        {None: ("truthfulqa/TruthfulQA.csv",)}, 817, {}, "sylinrl/TruthfulQA (Lin et al. 2021)",
        LICENCES["truthfulqa"],
        # ';'-separated answers; the best answer joins the correct set (usually there already)
        partial(question_from_row, question="Question", correct=("Best Answer", "Correct Answers"),
                incorrect=("Incorrect Answers",)),
    ))
    bundled = bundled_path("refusal").parent
    entries.append(DatasetInfo(
        "harmless", "prompts",
        "steerlab's harmless control requests, worded like AdvBench's (see "
        "steerlab/data/bundled/DATASHEET.md)",
        {None: ("harmless_requests.jsonl",)}, 50, {}, "steerlab (bundled)", LICENCES["bundled"],
        partial(question_from_row, question="goal"), root=bundled,
    ))
    for name, kind, size, splits in (
        ("refusal", "ab", 200, {"train": 150, "test": 50}),
        ("sycophancy", "ab", 200, {"train": 150, "test": 50}),
        ("general-knowledge", "mc", 100, {}),
    ):
        entries.append(DatasetInfo(
            name, kind, f"steerlab's own {name} set (see steerlab/data/bundled/DATASHEET.md)",
            {None: (bundled_path(name).name,)}, size, splits, "steerlab (bundled)",
            LICENCES["bundled"], mc_from_row if kind == "mc" else pair_from_row,
            split_field=True, root=bundled,
        ))
    return {entry.name: replace(entry, behaviour=BEHAVIOURS.get(entry.name)) for entry in entries}


DATASETS: dict[str, DatasetInfo] = _registry()
"""Every dataset steerlab knows by name (see ``steerlab data list``)."""


_KIND_NAMES = {"mc": "multiple-choice", "pairs": "preference-pair"}


def _row_of_kind(kind: str, row: dict[str, Any], row_id: str, where: str) -> Item:
    """A row of a local file in steerlab's formats, of the file's kind (its first row's): a row
    of the other kind is reported, not handed on to fail where an item was expected."""
    if row_kind(row) != kind:
        raise DataError(f"{where}: a {_KIND_NAMES[row_kind(row)]} row in a file of "
                        f"{_KIND_NAMES[kind]} rows (one kind per file; the first row decides)")
    return (mc_from_row if kind == "mc" else pair_from_row)(row, row_id, where)


def list_datasets() -> list[DatasetInfo]:
    """Every registered dataset, bundled and public."""
    return list(DATASETS.values())


def dataset_info(spec: str | Path) -> DatasetInfo:
    """A registered dataset by name, or a local JSONL / CSV / JSON file in steerlab's formats."""
    if str(spec) in DATASETS:
        return DATASETS[str(spec)]
    path = Path(spec).expanduser()
    if not path.is_file():
        raise DatasetUnavailable(
            f"'{spec}' is neither a registered dataset (see `steerlab data list`) nor a file"
        )
    kind = data_kind(path)
    return DatasetInfo(
        str(spec), "mc" if kind == "mc" else "pairs", "local file", {None: (path.name,)}, 0, None,
        "local file", "-", partial(_row_of_kind, "mc" if kind == "mc" else "pairs"),
        split_field=True, root=path.parent,
    )


def load_dataset(
    spec: str | Path,
    split: str | None = None,
    *,
    source: str | Path | None = None,
    bad_rows: Literal["raise", "skip"] = "raise",
) -> list[PreferencePair] | list[MCItem] | list[str]:
    """The one entry point: a registered dataset (``steerlab data list``) or a local file, as
    records (pairs, multiple-choice items, or strings for prompts and text).

    ``split=None`` loads every row. ``source`` reads a registered dataset from another folder
    (same layout as the shared data), a file, or a Hugging Face dataset id. A bad row raises
    :class:`~steerlab.data.files.DataError` naming file, line and field; ``bad_rows="skip"`` leaves
    bad rows out instead, with a warning that lists each one (``steerlab data inspect`` too).
    """
    records, errors = [], []
    for row in dataset_info(spec).rows_of(split, source):
        if row.error is None:
            records.append(row.record)
        elif bad_rows == "raise":
            raise DataError(
                f"{row.error} (`steerlab data inspect {spec}` lists every bad row; "
                "bad_rows='skip' leaves them out)"
            )
        else:
            errors.append(row.error)
    if errors:
        warnings.warn(
            f"{spec}: left out {len(errors)} bad rows: " + "; ".join(errors), DataWarning,
            stacklevel=2
        )
    return records


def _lettered(items: Sequence[MCItem], seed: int) -> Iterator[tuple[MCItem, str, int, int]]:
    """Each item with its prompt (question, then every choice under a letter), the slot of the
    correct choice and one seeded incorrect slot; correct slots cycle so the correct letter sits
    at each position equally often among items with the same number of choices."""
    rng = random.Random(seed)
    cycles: dict[int, list[int]] = {}
    for item in items:
        n = len(item.choices)
        if n > len(string.ascii_uppercase):
            raise ValueError(f"item {item.id}: {n} choices, more than there are letters")
        if not cycles.get(n):
            cycles[n] = rng.sample(range(n), n)
        position = cycles[n].pop()
        others = [index for index in range(n) if index != item.answer]
        rng.shuffle(others)
        order = [*others[:position], item.answer, *others[position:]]
        options = "\n".join(
            f"({string.ascii_uppercase[slot]}) {item.choices[index]}"
            for slot, index in enumerate(order)
        )
        wrong = rng.choice([slot for slot in range(n) if slot != position])
        yield item, f"{item.question}\n\nChoices:\n{options}", position, wrong


def lettered(items: Sequence[MCItem], seed: int = 0) -> list[MCItem]:
    """Multiple-choice items asked with lettered options, answered by the letter (``"(C"``).

    The same prompts and letters as :func:`mc_to_pairs` with the same seed, so a vector trained
    on those pairs is evaluated on the format it was trained on.
    """
    return [
        MCItem(prompt,
               tuple(f"({string.ascii_uppercase[slot]}" for slot in range(len(item.choices))),
               position, item.id, {**item.meta, "answer_text": item.choices[item.answer]})
        for item, prompt, position, _ in _lettered(items, seed)
    ]


def mc_to_pairs(
    items: Sequence[MCItem], rejected: Literal["one", "all"] = "one", seed: int = 0
) -> list[PreferencePair]:
    """Multiple-choice items as A/B-style preference pairs, for training on MC data.

    The prompt is the question and every choice under a letter (``Choices:\\n(A) …``), the
    choices reordered by ``seed`` so that the correct one sits at each letter equally often among
    items with the same number of choices. ``chosen`` is the correct letter (``"(C"``);
    ``rejected`` is one seeded incorrect letter (``"one"``), or, with ``"all"``, every incorrect
    letter in its own pair (ids ``<item id>/<letter>``).
    """
    if rejected not in ("one", "all"):
        raise ValueError(f"rejected must be 'one' or 'all', got {rejected!r}")
    pairs = []
    for item, prompt, position, one in _lettered(items, seed):
        wrong = [slot for slot in range(len(item.choices)) if slot != position]
        meta = {"item_id": item.id, "answer_text": item.choices[item.answer]}
        for slot in [one] if rejected == "one" else wrong:
            letter = string.ascii_uppercase[slot]
            pair_id = item.id if rejected == "one" else f"{item.id}/{letter}"
            chosen = f"({string.ascii_uppercase[position]}"
            pairs.append(PreferencePair(prompt, chosen, f"({letter}", pair_id, dict(meta)))
    return pairs

"""The data of steerlab's lm-eval tasks, read in place through steerlab's dataset registry
(lm-eval's own tasks fetch from a hub that may not be reachable). Each task names one of these
as its ``custom_dataset``; lm-eval loads this file by its path."""

from __future__ import annotations

from typing import Any

import datasets

from steerlab.data.files import MCItem
from steerlab.data.registry import dataset_info, load_dataset


def _mc(name: str) -> dict[str, datasets.Dataset]:
    """Every published split of a multiple-choice dataset as rows of ``id``, ``question``,
    ``choices`` and ``answer`` (the index of the correct choice)."""
    splits = dataset_info(name).splits or {}
    out = {}
    for split in splits:
        items: list[MCItem] = load_dataset(name, split)  # type: ignore[assignment]
        out[split] = datasets.Dataset.from_list(
            [{"id": item.id, "question": item.question, "choices": list(item.choices),
              "answer": item.answer} for item in items])
    return out


def mmlu(**_: Any) -> dict[str, datasets.Dataset]:
    """MMLU's dev and test splits, every subject."""
    return _mc("mmlu")


def piqa(**_: Any) -> dict[str, datasets.Dataset]:
    """PIQA's labelled validation split."""
    return _mc("piqa")


def truthfulqa_mc1(**_: Any) -> dict[str, datasets.Dataset]:
    """TruthfulQA MC1 in steerlab's seeded train / validation / test splits."""
    return _mc("truthfulqa-mc1")


def wikitext(**_: Any) -> dict[str, datasets.Dataset]:
    """WikiText-2's raw test lines (non-blank), one document each."""
    lines: list[str] = load_dataset("wikitext2", "test")  # type: ignore[assignment]
    return {"test": datasets.Dataset.from_list(
        [{"id": str(i), "text": line} for i, line in enumerate(lines)])}

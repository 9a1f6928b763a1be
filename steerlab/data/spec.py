"""DataSpec: the one description of a data choice (a registered dataset or a file, a split, a
seeded sample), shared by the library, the CLI's ``--data`` and the run config."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from steerlab.data.files import split as seeded_split
from steerlab.data.registry import load_dataset


class DataSpec(BaseModel):
    """Which rows to load: a registered dataset (``steerlab data list``) or a file, one split
    (None: every row), and optionally a seeded sample of ``limit`` rows. The one description of
    a data choice, shared by the library, the CLI's ``--data`` and the run config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str
    split: str | None = None
    limit: int | None = Field(default=None, gt=0)

    @classmethod
    def parse(cls, text: str, split: str | None = None, limit: int | None = None) -> DataSpec:
        """``name``, ``name:split`` or a file path (a path that exists is never cut at ':');
        an explicit ``split`` wins over one in the text."""
        if split is None and ":" in text and not Path(text).exists():
            text, split = text.rsplit(":", 1)
        return cls(dataset=text, split=split, limit=limit)

    def label(self) -> str:
        """How records name it: ``dataset:split``."""
        return f"{self.dataset}:{self.split}" if self.split else self.dataset

    def load(self, seed: int = 0,
             reader: Callable[[str, str | None], list] | None = None) -> list:
        """The rows (records, or prompt texts with ``reader=openended.load_prompts``): every
        row of the split, or a ``seed``-ed sample of ``limit``; an empty result is an error."""
        rows = (reader or load_dataset)(self.dataset, self.split)
        if not rows:
            raise ValueError(f"{self.label()}: no rows")
        if self.limit and self.limit < len(rows):
            rows = seeded_split(rows, [self.limit], seed)[0]
        return rows

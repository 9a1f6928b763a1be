"""Run directories: everything one experiment produced, so analysis needs nothing else.

A run directory holds ``commands.jsonl`` (each invocation's settings, appended), ``vectors/``
(every vector the run used), and ``records.jsonl`` (append-only records, written as produced).
Reopening a run resumes it: work whose records exist is skipped (see
:class:`steerlab.records.RecordWriter`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from steerlab.records import Record, RecordWriter, read_records
from steerlab.steering.vectors import SteeringVector
from steerlab.version import __version__


@dataclass(frozen=True)
class RunDir:
    """One experiment's directory (see the module docstring for its layout)."""

    path: Path

    @classmethod
    def open(cls, path: str | Path, command: str, settings: dict[str, Any]) -> RunDir:
        """Create or reopen a run directory and log this invocation's settings in it."""
        run = cls(Path(path))
        if run.path.exists() and not run.path.is_dir():
            raise NotADirectoryError(f"run directory {run.path} is a file")
        (run.path / "vectors").mkdir(parents=True, exist_ok=True)
        entry = {"command": command, "settings": settings, "steerlab_version": __version__,
                 "at": datetime.now(timezone.utc).isoformat()}
        with (run.path / "commands.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, default=str) + "\n")
        return run

    @property
    def records_path(self) -> Path:
        return self.path / "records.jsonl"

    def writer(self) -> RecordWriter:
        """An appending, resume-aware writer on the run's records."""
        return RecordWriter(self.records_path)

    def records(self) -> list[Record]:
        """Every record of the run (none yet: an empty list)."""
        return read_records(self.records_path) if self.records_path.exists() else []

    def keep_vector(self, vector: SteeringVector) -> Path:
        """Save a copy of ``vector`` under ``vectors/`` by its id, so records can name it."""
        path = self.path / "vectors" / f"{vector.id}.safetensors"
        if not path.exists():
            vector.save(path)
        return path

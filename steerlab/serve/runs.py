"""The runs page's data: the run directories under one folder, each one's status from its own
files, its report, and one item's records across arms. Only files inside a run directory of
that folder are ever read (a name is one folder level, resolved and checked; a report's plots
are embedded in its page)."""

from __future__ import annotations

import json
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from steerlab.analysis.page import html_page
from steerlab.records import Record
from steerlab.serve.schema import RequestError

RECENT_S = 120.0
"""A run whose records were written this recently is shown as running."""
ITEM_FIELDS = ("task", "dataset", "arm", "multiplier", "layers", "vector_id", "prompt",
               "question", "answer", "choices", "prediction", "correct", "score", "verdict",
               "judge")
"""What the item view shows of each record."""


DAMAGED = (OSError, ValueError, KeyError, TypeError, AttributeError)
"""What reading a run's own files may raise when they are damaged (a non-UTF-8 or non-JSON
line, a record without a field it should have): the run is shown as damaged, never the list
or page refused."""
MAX_NAME = 255
"""The longest run name (one folder name on common file systems)."""


def _lines(path: Path) -> list[str]:
    """A file's non-empty lines, bytes that are not UTF-8 replaced (so one bad byte damages one
    line, not the file)."""
    return [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
            if line.strip()]


def _records(path: Path) -> tuple[list[Record], int]:
    """A records file's JSON records, and how many lines are not one (damaged, or torn)."""
    records, unreadable = [], 0
    for line in _lines(path):
        try:
            record = json.loads(line)
        except ValueError:
            unreadable += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            unreadable += 1
    return records, unreadable


def _scan(records_path: Path) -> tuple[int, list[str]]:
    """How many records a file holds and the stages its compute records name, parsing only
    those lines (a run's records can be many megabytes; the list shows every run)."""
    count, stages = 0, set()
    with records_path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if not line.strip():
                continue
            count += 1
            if '"compute"' in line:
                with suppress(ValueError):  # a torn last line of a running run
                    record = json.loads(line)
                    if isinstance(record, dict) and record.get("task") == "compute":
                        stages.add(str(record.get("stage", "(no stage named)")))
    return count, sorted(stages)


class Runs:
    """The run directories directly under ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def run(self, name: str) -> Path:
        """The run directory called ``name``, refused unless it is one directly under the root."""
        missing = RequestError(f"run: no run directory {name[:80]!r} under the runs folder",
                               "run", status=404)
        if (not name or len(name) > MAX_NAME or "\0" in name or "/" in name or "\\" in name
                or name in (".", "..")):
            raise missing
        try:
            path = (self.root / name).resolve()
            if path.parent != self.root or not path.is_dir():
                raise missing
        except (OSError, ValueError):
            raise missing from None
        return path

    def listing(self) -> list[dict[str, Any]]:
        """Every run directory (one with records or a command log), newest first; a run whose
        files cannot be read is listed as damaged, saying why."""
        found = [self.status(path) for path in self.root.iterdir() if path.is_dir()
                 and ((path / "records.jsonl").exists() or (path / "commands.jsonl").exists())
                 ] if self.root.is_dir() else []
        return sorted(found, key=lambda r: -r["modified"])

    def status(self, path: Path) -> dict[str, Any]:
        """:meth:`read_status`, or for a damaged run its name, ``damaged: <why>`` and nothing
        more."""
        try:
            return self.read_status(path)
        except DAMAGED as err:
            return {"name": path.name, "command": None, "invocations": 0, "records": 0,
                    "stages": [], "report": None, "modified": 0.0,
                    "status": f"damaged: {type(err).__name__}: {str(err)[:200]}"}

    def read_status(self, path: Path) -> dict[str, Any]:
        """What a run's files say: its last command, how many invocations and records, the
        stages with their time (a `steerlab run`), its report, and running / resumable /
        analysed."""
        commands = path / "commands.jsonl"
        invocations = [json.loads(line) for line in _lines(commands)] if commands.exists() \
            else []
        records_path = path / "records.jsonl"
        count, stages = _scan(records_path) if records_path.exists() else (0, [])
        report = next((name for name in ("report.html", "analysis.md")
                       if (path / name).exists()), None)
        modified = records_path.stat().st_mtime if records_path.exists() else 0.0
        if report and (path / report).stat().st_mtime >= modified:
            state = "analysed"
        elif time.time() - modified < RECENT_S:
            state = "running (records written in the last 2 minutes)"
        else:
            state = "resumable (rerun its command; `steerlab analyze` builds the report)"
        return {"name": path.name,
                "command": str(invocations[-1]["command"]) if invocations else None,
                "invocations": len(invocations), "records": count, "stages": stages,
                "report": report, "status": state, "modified": modified}

    def report(self, name: str) -> str:
        """The run's report as one HTML page: ``report.html`` as written, or ``analysis.md``
        rendered with its plots embedded."""
        run = self.run(name)
        if (run / "report.html").exists():
            return (run / "report.html").read_text(encoding="utf-8", errors="replace")
        if (run / "analysis.md").exists():
            return html_page((run / "analysis.md").read_text(encoding="utf-8", errors="replace"),
                             run, run.name)
        raise RequestError(f"run: {name!r} has no report yet (steerlab analyze {run.name})",
                           "run", status=404)

    def item(self, name: str, item_id: str) -> tuple[list[Record], int]:
        """Every record of one item in run ``name`` (all arms, tasks and settings), and how many
        lines of the run's records file could not be read."""
        records_path = self.run(name) / "records.jsonl"
        records, unreadable = _records(records_path) if records_path.exists() else ([], 0)
        return [{k: r[k] for k in ITEM_FIELDS if k in r} for r in records
                if str(r.get("item_id")) == item_id], unreadable

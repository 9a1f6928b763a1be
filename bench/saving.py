"""What every benchmark does at the end: describe the machine, save its JSON to bench/results/."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path


def machine() -> str:
    """The machine a figure was measured on, for the record beside it."""
    threads = os.environ.get("OMP_NUM_THREADS")
    return (f"{platform.machine()}, {os.cpu_count()} cores"
            + (f" (OMP_NUM_THREADS={threads})" if threads else "")
            + f", Python {platform.python_version()}")


def save(name: str, result: dict) -> Path:
    """Write ``result`` to bench/results/<name>.json (indented) and return the path."""
    path = Path(__file__).parent / "results" / f"{name}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path

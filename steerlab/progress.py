"""Progress bars for long loops (rich), silenced with ``progress=False`` or STEERLAB_PROGRESS=0."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

T = TypeVar("T")


def enabled(requested: bool = True) -> bool:
    """Whether to draw bars: requested by the caller and not turned off in the environment."""
    return requested and os.environ.get("STEERLAB_PROGRESS", "1") != "0"


def track(items: Iterable[T], total: int, description: str, show: bool = True) -> Iterator[T]:
    """Iterate ``items`` with a progress bar of ``total`` steps (no bar when not shown)."""
    console = Console(stderr=True)
    if not enabled(show) or not console.is_terminal:  # bars only where someone watches them
        yield from items
        return
    columns = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()
    )
    with Progress(*columns, transient=True, console=console) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)

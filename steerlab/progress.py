"""Progress bars for long loops (rich), silenced with ``progress=False`` or STEERLAB_PROGRESS=0."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

T = TypeVar("T")


def enabled(requested: bool = True) -> bool:
    """Whether to draw bars: requested by the caller and not turned off in the environment."""
    return requested and os.environ.get("STEERLAB_PROGRESS", "1") != "0"


@contextmanager
def bar(total: int, description: str, show: bool = True) -> Iterator[Callable[[str], None]]:
    """A progress bar of ``total`` steps; yields ``advance(info="")``, which steps it and shows
    ``info`` (e.g. the running loss) beside it. Drawn only where someone watches a terminal."""
    console = Console(stderr=True)
    if not enabled(show) or not console.is_terminal:
        yield lambda info="": None
        return
    columns = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns, transient=True, console=console) as progress:
        task = progress.add_task(description, total=total, info="")

        def advance(info: str = "") -> None:
            progress.update(task, advance=1, info=info)

        yield advance


def track(items: Iterable[T], total: int, description: str, show: bool = True) -> Iterator[T]:
    """Iterate ``items`` with a progress bar of ``total`` steps."""
    with bar(total, description, show) as advance:
        for item in items:
            yield item
            advance()


def duration(seconds: float) -> str:
    """A wall time the way a person says it: ``35 s``, ``4 min 10 s``, ``1 h 40 min``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"

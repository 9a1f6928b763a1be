"""lm-eval's task manager with steerlab's task folder beside a user's own (``--include_path``).

lm-eval 0.4.13's command line takes one ``--include_path`` string, and its TaskManager reads it
as one folder (``a:b`` is not two); its Python API takes a list. :func:`steerlab_tasks` gives
the command line, while it runs, a TaskManager that adds steerlab's folder to whatever paths
it is given, so a user's tasks and steerlab's load together.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lm_eval.tasks
from lm_eval.tasks import TaskManager

from steerlab.harness import TASKS


def task_paths(include_path: str | Path | Sequence[str | Path] | None) -> list[str]:
    """The folders to read tasks from: those given (a list, or one string whose parts are
    separated by ``os.pathsep``, as lm-eval's ``ls`` help suggests), then steerlab's."""
    if include_path is None:
        given: list[str] = []
    elif isinstance(include_path, (str, Path)):
        given = [part for part in str(include_path).split(os.pathsep) if part]
    else:
        given = [str(part) for part in include_path]
    missing = [path for path in given if not Path(path).is_dir()]
    if missing:
        raise FileNotFoundError(f"--include_path: no folder {missing[0]!r}")
    return [*given, str(TASKS)]


class SteerlabTaskManager(TaskManager):
    """lm-eval's TaskManager reading steerlab's tasks beside the paths it is given."""

    def __init__(self, include_path: Any = None, **kwargs: Any) -> None:
        super().__init__(include_path=task_paths(include_path), **kwargs)


@contextmanager
def steerlab_tasks() -> Iterator[None]:
    """While active, lm-eval's commands build :class:`SteerlabTaskManager` (they import
    ``lm_eval.tasks.TaskManager`` when they run)."""
    original = lm_eval.tasks.TaskManager
    lm_eval.tasks.TaskManager = SteerlabTaskManager  # type: ignore[misc]
    try:
        yield
    finally:
        lm_eval.tasks.TaskManager = original  # type: ignore[misc]

"""What the commands load (models, datasets, prompt sets, vectors, conditions); a load that
fails ends the command with the loader's message."""

# Library imports sit inside the commands, for start-up speed (see steerlab/cli/__init__.py).

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer

from steerlab.cli.app import console
from steerlab.model.placement import Placement


def fail(message: str) -> None:
    """End the command: one line saying what is wrong (shown as written, brackets included)."""
    from rich.markup import escape

    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True, highlight=False)
    raise typer.Exit(code=1)


def load_handle(model: str, placement: Placement | None = None):
    """The model, placed as ``placement`` says (default: auto), or exit with the loader's
    message (a device that is not here: which ones are)."""
    from steerlab.model.handle import ModelLoadError, load_model

    placement = placement or Placement()
    try:
        with console.status(f"loading {model}"):
            return load_model(model, **placement.options())
    except ModelLoadError as err:
        fail(str(err))


def load_engine(model: str, engine: str, max_model_len: int | None = None,
                placement: Placement | None = None, options: dict[str, Any] | None = None):
    """The vLLM engine for ``model`` when ``engine`` is "vllm" (None for transformers), in the
    dtype ``placement`` resolves to (vLLM picks its own device), with vLLM's engine arguments
    ``options``; or exit saying how to install it, or which option vLLM refused."""
    if engine != "vllm":
        return None
    from steerlab.model.placement import resolve

    dtype = str(resolve(placement or Placement()).dtype).removeprefix("torch.")
    try:
        from steerlab.engine.vllm_engine import VllmEngine
    except ImportError as err:
        fail(f"--engine vllm needs vLLM: pip install -e .[vllm] ({err})")
    with console.status(f"starting vLLM on {model}"):
        try:
            return VllmEngine(model, dtype=dtype, max_model_len=max_model_len, **(options or {}))
        except TypeError as err:  # vLLM's engine arguments take no such name
            fail(f"--vllm-option: {err}")


def load_records(spec: str, split: Optional[str], limit: Optional[int] = None,
                 seed: int = 0) -> list:
    """Records of a registered dataset or file (``name:split`` also names the split), or exit
    with the loader's message; ``limit`` takes a seeded sample."""
    return _load_spec(spec, split, limit, seed)


def load_prompt_texts(spec: str, limit: Optional[int], seed: int) -> list[str]:
    """Prompts of a question set, prompts dataset or any dataset (``name:split`` names the
    split), or exit with the loader's message; ``limit`` takes a seeded sample."""
    from steerlab.evaluation.openended import load_prompts

    return _load_spec(spec, None, limit, seed, load_prompts)


def _load_spec(spec: str, split: Optional[str], limit: Optional[int], seed: int,
               reader: Optional[Callable] = None) -> list:
    from steerlab.data.files import DataError
    from steerlab.data.registry import DatasetUnavailable
    from steerlab.data.spec import DataSpec

    try:
        return DataSpec.parse(spec, split, limit).load(seed, reader)
    except (DataError, DatasetUnavailable, FileNotFoundError, KeyError, ValueError) as err:
        fail(str(err))


def load_training_pairs(spec: str, split: Optional[str]) -> list:
    """Preference pairs (free text or A/B) for training."""
    from steerlab.data.files import PreferencePair

    pairs = load_records(spec, split)
    if not isinstance(pairs[0], PreferencePair):
        fail(f"{spec} holds {type(pairs[0]).__name__} records, not preference pairs "
              "(multiple choice converts with steerlab.mc_to_pairs)")
    return pairs


def load_scored_items(spec: str, split: Optional[str], limit: Optional[int] = None) -> list:
    """Multiple-choice items or A/B pairs: what likelihood evaluation takes."""
    from steerlab.data.files import MCItem, PreferencePair

    items = load_records(spec, split, limit)
    if not isinstance(items[0], (MCItem, PreferencePair)):
        fail(f"{spec} holds prompts or text, not multiple-choice items or pairs")
    return items


def load_condition(path: Path):
    from steerlab.steering.conditions import Condition

    try:
        return Condition.load(path)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))


def load_vector(path: Path):
    from steerlab.steering.vectors import SteeringVector

    try:
        return SteeringVector.load(path)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))


def load_texts(spec: str) -> list[str]:
    """Lines of a text dataset (e.g. wikitext2:test)."""
    lines = load_records(spec, None)
    if not isinstance(lines[0], str):
        fail(f"{spec} holds {type(lines[0]).__name__} records, not text")
    return lines


def read_record_file(path: Path, datasets: list[str] | None = None) -> list[dict]:
    """The records of a file, only those of ``datasets`` when given."""
    from steerlab.records import read_records

    if not path.is_file():
        fail(f"records file not found: {path}")
    return [r for r in read_records(path) if not datasets or r.get("dataset") in datasets]


def other_arms(records: list[dict], base: str) -> list[str]:
    """The arms of generation records other than ``base``, in order of appearance."""
    from steerlab.evaluation.openended import TASK

    return list(dict.fromkeys(r["arm"] for r in records
                              if r.get("task") == TASK and r["arm"] != base))


def named_paths(specs: list[str], option: str) -> dict[str, Path]:
    """'name=path' (or a bare path, named by its file stem) → the paths by name."""
    paths: dict[str, Path] = {}
    for spec in specs:
        name, _, path = spec.partition("=") if "=" in spec else (Path(spec).stem, "", spec)
        if not name:
            fail(f"{option} {spec!r}: expected name=path.safetensors")
        if name in paths:
            fail(f"{option} {spec!r}: the name {name!r} is already taken")
        paths[name] = Path(path)
    return paths


def _named(specs: list[str], option: str, load: Callable[[Path], Any]) -> dict[str, Any]:
    """'name=path' options → ``load(path)`` by name."""
    return {name: load(path) for name, path in named_paths(specs, option).items()}


def load_named_vectors(specs: list[str]) -> dict:
    """``--vector name=path`` options → loaded vectors by name."""
    return _named(specs, "--vector", load_vector)


def load_named_conditions(specs: list[str]) -> dict:
    """``--condition name=path`` options → loaded conditions by name."""
    return _named(specs, "--condition", load_condition)

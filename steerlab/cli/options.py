"""Option types and value parsers the commands share; numbers are checked finite and in range."""

from __future__ import annotations

import functools
import inspect
import json
import math
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from pydantic import ValidationError

from steerlab.model.catalog import BUILTIN_MODELS
from steerlab.model.placement import DEVICE_MAPS, Placement

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model", "-m",
        help=f"Built-in name ({', '.join(BUILTIN_MODELS)}), model directory, .gguf file or hub id.",
    ),
]


def finite_number(value: float | None) -> float | None:
    """Option callback: a number option must be finite (NaN or inf steer nothing meaningful)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, got {value}")
    return value


def positive_number(value: float | None) -> float | None:
    """Option callback: a finite number above 0 (a norm ratio, a learning rate)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"must be a finite number above 0, got {value}")
    return value


BatchOpt = Annotated[int, typer.Option(help="Sequences per forward pass.", min=1)]


LayersOpt = Annotated[Optional[str], typer.Option(
    help="Apply at these layers, comma-separated, or 'all' (default: the vector's).")]


NormRatioOpt = Annotated[Optional[float], typer.Option(
    help="Scale to this fraction of the residual norm.", callback=positive_number)]


LimitOpt = Annotated[Optional[int], typer.Option(
    "--n", help="Items per dataset: a seeded sample (default: all).", min=1)]


def _items(text: str, option: str, kind: str) -> list[str]:
    """The comma-separated items of an option's value: at least one, none empty."""
    items = [item.strip() for item in text.split(",")]
    if not text.strip():
        raise typer.BadParameter(f"expected comma-separated {kind}, got nothing",
                                 param_hint=option)
    if "" in items:
        raise typer.BadParameter(f"an empty item in {text!r}", param_hint=option)
    return items


def parse_floats(text: str, option: str = "--multipliers") -> list[float]:
    """'-2,-1,0,1,2' → [-2.0, -1.0, 0.0, 1.0, 2.0]; nothing, an empty item, a word or a
    non-finite number is an error naming ``option``."""
    try:
        values = [float(x) for x in _items(text, option, "numbers")]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}",
                                 param_hint=option) from None
    if not all(math.isfinite(v) for v in values):
        raise typer.BadParameter(f"expected finite numbers, got {text!r}", param_hint=option)
    return values


def parse_ints(text: str, option: str = "--layers") -> list[int]:
    """'1,2' → [1, 2]; nothing, an empty item or a non-integer is an error naming ``option``."""
    try:
        return [int(x) for x in _items(text, option, "integers")]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}",
                                 param_hint=option) from None


def parse_layers(text: Optional[str], n_layers: int) -> Optional[list[int]]:
    """'all' → every layer of the model; '1,2' → [1, 2]; None → None (the vector's own)."""
    if text is None:
        return None
    return list(range(n_layers)) if text.strip() == "all" else parse_ints(text, "--layers")


RunOpt = Annotated[Path, typer.Option(
    "--out", "-o", help="Run directory: records, vectors, command log; a rerun resumes.")]


class OutputFormat(str, Enum):
    table = "table"
    json = "json"


FormatOpt = Annotated[OutputFormat, typer.Option(
    "--format", help="table (readable) or json (for scripts).")]


class Engine(str, Enum):
    transformers = "transformers"
    vllm = "vllm"


EngineOpt = Annotated[Engine, typer.Option(
    help="Run the model with transformers, or with vLLM (pip install -e .\\[vllm]), which "
    "batches requests with different steering into one forward pass.")]


VllmOptionsOpt = Annotated[Optional[list[str]], typer.Option(
    "--vllm-option", help="With --engine vllm, one of vLLM's engine arguments as NAME=VALUE "
    "(VALUE read as JSON, else as text), e.g. enforce_eager=true, enable_prefix_caching=false, "
    "tensor_parallel_size=2, gpu_memory_utilization=0.9; repeatable.")]


def parse_vllm_options(given: Optional[list[str]], engine: str) -> dict[str, Any]:
    """``--vllm-option NAME=VALUE`` items as vLLM engine arguments, or a usage error naming the
    item (also when the engine is not vLLM)."""
    if given and engine != "vllm":
        raise typer.BadParameter("needs --engine vllm", param_hint="--vllm-option")
    options: dict[str, Any] = {}
    for item in given or []:
        name, equals, value = item.partition("=")
        if not equals or not name.isidentifier():
            raise typer.BadParameter(f"{item!r} is not NAME=VALUE (e.g. enforce_eager=true)",
                                     param_hint="--vllm-option")
        try:
            options[name] = json.loads(value)
        except json.JSONDecodeError:
            options[name] = value
    return options


AllowedHostsOpt = Annotated[Optional[list[str]], typer.Option(
    "--allowed-host", help="A name the server is reached by, beside the address it listens on "
    "(a Host header naming anything else is refused: DNS rebinding); repeatable.")]


RecordsArg = Annotated[Path, typer.Argument(
    help="Generation records (.jsonl) from `steerlab generate-eval`.")]


BaseOpt = Annotated[str, typer.Option(help="The arm compared against.")]


ArmsOpt = Annotated[Optional[list[str]], typer.Option(
    "--arm", help="Arm to compare with --base (repeatable; default: every other arm).")]


DatasetsOpt = Annotated[Optional[list[str]], typer.Option(
    "--dataset", help="Only records of this question set (repeatable; default: all in the file).")]


PLACEMENT_PANEL = "Device and precision"

PLACEMENT_OPTIONS: dict[str, Any] = {
    "device": Annotated[Optional[str], typer.Option(
        help="auto (CUDA, then MPS, then the CPU; the default), cpu, cuda, cuda:N or mps.",
        rich_help_panel=PLACEMENT_PANEL)],
    "dtype": Annotated[Optional[str], typer.Option(
        help="auto (bfloat16 where the device computes in it, float32 on the CPU; the "
        "default), float32, bfloat16 or float16. Vectors stay float32 on disk.",
        rich_help_panel=PLACEMENT_PANEL)],
    "device_map": Annotated[Optional[str], typer.Option(
        help=f"Spread the model over every visible GPU with accelerate ({', '.join(DEVICE_MAPS)})"
        ", instead of --device.", rich_help_panel=PLACEMENT_PANEL)],
    "quantization": Annotated[Optional[str], typer.Option(
        help="Load the weights in 8bit or 4bit (bitsandbytes: pip install -e .\\[quantization]).",
        rich_help_panel=PLACEMENT_PANEL)],
}
"""The options that place a model, each also a field of :class:`Placement`."""

Command = TypeVar("Command", bound=Callable[..., Any])


def placement_options(command: Command) -> Command:
    """Give a command that loads a model ``--device``, ``--dtype``, ``--device-map`` and
    ``--quantization``: it declares a ``placement`` parameter and receives them there as one
    checked :class:`Placement` (a bad value ends it naming the option)."""
    signature = inspect.signature(command, eval_str=True)
    kept = [p for p in signature.parameters.values() if p.name != "placement"]
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                               default=None) for name, annotation in PLACEMENT_OPTIONS.items()]

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        given = {name: kwargs.pop(name) for name in PLACEMENT_OPTIONS}
        return command(*args, placement=placement_of(given), **kwargs)

    run.__signature__ = signature.replace(parameters=[*kept, *added])  # type: ignore[attr-defined]
    return run  # type: ignore[return-value]


def placement_of(given: dict[str, Any]) -> Placement:
    """The :class:`Placement` of the options given (unset ones stay ``auto``), or a usage error
    naming the option."""
    try:
        return Placement(**{name: value for name, value in given.items() if value is not None})
    except ValidationError as err:
        first = err.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "device"
        raise typer.BadParameter(first["msg"].removeprefix("Value error, "),
                                 param_hint=f"--{field.replace('_', '-')}") from None

"""The one bundle of steering options: every command that steers takes a setting's seven fields
the same way (``--vector``, ``--multiplier(s)``, ``--layers``, ``--norm-ratio``, ``--positions``,
``--intervention`` or ``--ablate``, ``--condition``) and receives them as one
:class:`SteeringChoice`, checked before any model loads."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional

import typer

from steerlab.cli.inputs import fail, load_condition, load_vector, named_paths
from steerlab.cli.options import Command, finite_number, parse_floats, parse_layers, positive_number

if TYPE_CHECKING:
    from steerlab.steering.conditions import Condition
    from steerlab.steering.setting import SteeringSetting
    from steerlab.steering.vectors import SteeringVector

PANEL = "Steering"
VectorKind = Literal["one", "required", "many", "named"]
"""How a command takes ``--vector``: at most one file, exactly one, one or more (each steered
on its own), or any number as ``name=path`` (chosen between while it runs)."""

_VECTOR_HELP: dict[str, str] = {
    "one": "Steering vector file; without it the model runs unsteered.",
    "required": "Steering vector file.",
    "many": "Steering vector file; repeatable, each steered on its own.",
    "named": "A vector to steer with, as name=path.safetensors (a bare path is named by its "
             "file stem); repeatable.",
}


@dataclass(frozen=True)
class SteeringChoice:
    """What a command's steering options asked for: the vector files (by name), the
    multipliers, and the other fields of a setting as given (layers resolved once the model is
    loaded)."""

    vectors: dict[str, Path]
    multipliers: list[float]
    layers: str | None = None
    norm_ratio: float | None = None
    positions: str = "all"
    intervention: str = "add"
    condition: Path | None = None

    @property
    def steered(self) -> bool:
        """Whether a vector was given."""
        return bool(self.vectors)

    def setting(self, n_layers: int, vector: SteeringVector | None = None) -> SteeringSetting:
        """The setting these options describe for ``vector`` (default: the one given) at the
        first multiplier, for a model of ``n_layers``; a setting the library refuses ends the
        command naming why."""
        from steerlab.steering.setting import SteeringSetting

        if vector is None:
            vector = load_vector(next(iter(self.vectors.values())))
        try:
            return SteeringSetting(
                vector, self.multipliers[0],
                parse_layers(self.layers, n_layers), self.norm_ratio,
                self.positions,  # type: ignore[arg-type]
                self.intervention,  # type: ignore[arg-type]
                self.gate)
        except ValueError as err:
            fail(str(err))

    @cached_property
    def gate(self) -> Condition | None:
        """The condition file's condition, read once for every setting made here."""
        return load_condition(self.condition) if self.condition else None

    def each(self, n_layers: int) -> list[SteeringSetting]:
        """One setting per vector given, in order (a sweep of several vectors)."""
        return [self.setting(n_layers, load_vector(path)) for path in self.vectors.values()]

    def logged(self) -> dict[str, Any]:
        """The options as a run directory's command log keeps them."""
        return {"vectors": [str(p) for p in self.vectors.values()],
                "multipliers": self.multipliers, "layers": self.layers,
                "norm_ratio": self.norm_ratio, "positions": self.positions,
                "intervention": self.intervention,
                "condition": str(self.condition) if self.condition else None}


def _options(kind: VectorKind, multipliers: str | None, layers_help: str | None,
             vector_help: str | None, vector_flags: tuple[str, ...]) -> dict[str, Any]:
    vector_type: Any = {"one": Optional[Path], "required": Path, "many": list[Path],
                        "named": Optional[list[str]]}[kind]
    options: dict[str, Any] = {
        "vector": (Annotated[vector_type, typer.Option(
            *vector_flags, help=vector_help or _VECTOR_HELP[kind], rich_help_panel=PANEL)],
            inspect.Parameter.empty if kind in ("required", "many") else None),
    }
    if multipliers is None:
        options["multiplier"] = (Annotated[float, typer.Option(
            help="Steering multiplier (an angle in degrees with --intervention angular).",
            callback=finite_number, rich_help_panel=PANEL)], 1.0)
    else:
        options["multipliers"] = (Annotated[str, typer.Option(
            help="Multipliers, comma-separated (angles in degrees with --intervention angular).",
            rich_help_panel=PANEL)], multipliers)
    options |= {
        "layers": (Annotated[Optional[str], typer.Option(
            help=layers_help or "Apply at these layers, comma-separated, or 'all' (default: the "
            "vector's).", rich_help_panel=PANEL)], None),
        "norm_ratio": (Annotated[Optional[float], typer.Option(
            help="Scale the added vector to this fraction of the residual norm.",
            callback=positive_number, rich_help_panel=PANEL)], None),
        "positions": (Annotated[str, typer.Option(
            help="Steer all, prompt or generated positions.", rich_help_panel=PANEL)], "all"),
        "intervention": (Annotated[str, typer.Option(
            help="add: add multiplier × the vector; ablate: project its direction out with "
            "strength multiplier; angular: turn each activation toward it by multiplier degrees, "
            "norm kept.", rich_help_panel=PANEL)], "add"),
        "ablate": (Annotated[bool, typer.Option(
            "--ablate", help="Short for --intervention ablate.", rich_help_panel=PANEL)], False),
        "condition": (Annotated[Optional[Path], typer.Option(
            help="Steer only the prompts that meet this condition (from `steerlab condition`).",
            rich_help_panel=PANEL)], None),
    }
    return options


def steering_options(kind: VectorKind = "one", multipliers: str | None = None,
                     layers_help: str | None = None, vector_help: str | None = None,
                     vector_flags: tuple[str, ...] = ("--vector", "-v"),
                     ) -> Callable[[Command], Command]:
    """Give a command the steering options (module docstring): it declares a ``steering``
    parameter and receives a checked :class:`SteeringChoice` there. ``multipliers``: the
    default of ``--multipliers`` (a comma-separated list); None gives ``--multiplier`` (one
    number). ``vector_flags``: the names of ``--vector`` (a command may add one that reads
    better there). A steering option given without a vector, an unknown position or
    intervention, or ``--ablate`` with another intervention is a usage error naming the
    option."""
    options = _options(kind, multipliers, layers_help, vector_help, vector_flags)

    def decorate(command: Command) -> Command:
        signature = inspect.signature(command, eval_str=True)
        kept = [p for p in signature.parameters.values() if p.name != "steering"]
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                                   default=default)
                 for name, (annotation, default) in options.items()]
        context = inspect.Parameter("_steering_context", inspect.Parameter.KEYWORD_ONLY,
                                    annotation=typer.Context)

        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> Any:
            ctx: typer.Context = kwargs.pop("_steering_context")
            given = {name: kwargs.pop(name) for name in options}
            set_here = frozenset(
                name for name in options
                if (source := ctx.get_parameter_source(name)) is not None
                and source.name in ("COMMANDLINE", "ENVIRONMENT"))
            return command(*args, steering=choice_of(given, kind, set_here, vector_flags[0]),
                           **kwargs)

        run.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[*kept, *added, context])
        return run  # type: ignore[return-value]

    return decorate


def choice_of(given: dict[str, Any], kind: VectorKind, set_here: frozenset[str],
              flag: str = "--vector") -> SteeringChoice:
    """The :class:`SteeringChoice` of the options' values, or a usage error naming the option."""
    from steerlab.steering.hooks import POSITIONS
    from steerlab.steering.setting import INTERVENTIONS

    if given["positions"] not in POSITIONS:
        raise typer.BadParameter(f"one of {', '.join(POSITIONS)}, got {given['positions']!r}",
                                 param_hint="--positions")
    intervention = given["intervention"]
    if intervention not in INTERVENTIONS:
        raise typer.BadParameter(f"one of {', '.join(INTERVENTIONS)}, got {intervention!r}",
                                 param_hint="--intervention")
    if given["ablate"]:
        if intervention not in ("add", "ablate"):
            raise typer.BadParameter(f"--ablate contradicts --intervention {intervention}",
                                     param_hint="--ablate")
        intervention = "ablate"
    raw = given["vector"]
    if kind == "named":
        vectors = named_paths(raw or [], flag)
    else:
        paths = raw if isinstance(raw, list) else [raw] if raw is not None else []
        vectors = {str(path): path for path in paths}
    for option, path in [*((flag, v) for v in vectors.values()),
                         ("--condition", given["condition"])]:
        if path is not None and not Path(path).is_file():
            raise typer.BadParameter(f"no such file: {path}", param_hint=option)
    if not vectors:
        idle = sorted(set_here - {"vector"})
        if idle:
            flags = ", ".join("--" + name.replace("_", "-") for name in idle)
            raise typer.BadParameter(f"{flags} steer(s) nothing without a vector: give {flag}, "
                                     "or leave them out for the unsteered model",
                                     param_hint=flag)
    multipliers = ([given["multiplier"]] if "multiplier" in given
                   else parse_floats(given["multipliers"]))
    return SteeringChoice(vectors, multipliers, given["layers"], given["norm_ratio"],
                          given["positions"], intervention, given["condition"])

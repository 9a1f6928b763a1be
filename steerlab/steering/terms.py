"""The JSON form of a steering setting: what a request names to be steered (the server's
``steering`` field, the vLLM engine's per-request steering), checked as OpenAI's API checks its
bodies (strict JSON types, finite numbers, valid Unicode)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
)

from steerlab.steering.conditions import Condition
from steerlab.steering.edits import EDITS
from steerlab.steering.hooks import Positions, check_layers
from steerlab.steering.setting import Composition, Intervention, SteeringSetting
from steerlab.steering.vectors import SteeringVector


def _json_number(value: Any) -> Any:
    """A JSON number, nothing read as one: not ``true`` (pydantic would read it as 1), not a
    string such as ``"4"`` (the API's types are strict)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "a boolean" if isinstance(value, bool) else type(value).__name__
        raise ValueError(f"expected a number, got {kind}")
    return value


def _utf8(value: str) -> str:
    """Text the tokenizer can read: a lone surrogate (``"\\ud800"`` in JSON) is not UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"text is not valid Unicode ({err.reason} at character "
                         f"{err.start})") from None
    return value


Number = Annotated[float, BeforeValidator(_json_number)]
"""A finite JSON number (the body config refuses NaN and infinities)."""
Text = Annotated[str, AfterValidator(_utf8)]


class JsonBody(BaseModel):
    """A JSON body's part: unknown fields and non-finite numbers refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SteeringTerm(JsonBody):
    """The JSON form of a :class:`~steerlab.steering.setting.SteeringSetting`, its vector and
    condition named among those the server loaded: ``multiplier`` × the vector at its (or
    chosen) layers, or with ``intervention: "ablate"`` its direction projected out with that
    strength; with a ``condition`` only when the prompt meets it."""

    vector: Text
    multiplier: Number = 1.0
    layers: list[StrictInt] | None = Field(None, min_length=1)
    norm_ratio: Number | None = Field(None, gt=0)
    positions: Positions = "all"
    intervention: Intervention = "add"
    condition: Text | None = None

    def setting(self, vector: SteeringVector,
                condition: Condition | None = None) -> SteeringSetting:
        """The setting this term names, given the vector (and condition) its names resolve to."""
        return SteeringSetting(vector, self.multiplier, self.layers, self.norm_ratio,
                               self.positions, self.intervention, condition)

    @classmethod
    def of(cls, setting: SteeringSetting, vector: str,
           condition: str | None = None) -> SteeringTerm:
        """The term naming ``setting``, its vector (and condition) by the names given; every
        other field copied as it is (the two types mirror each other, a test checks)."""
        copied = {item.name: getattr(setting, item.name) for item in dataclasses.fields(setting)
                  if item.name not in ("vector", "condition")}
        return cls(vector=vector, condition=condition, **copied)

    def echo(self) -> dict[str, Any]:
        """The term as the reply's ``steering`` echoes it (intervention and condition only when
        given, so a plain term echoes as it always has)."""
        fields = self.model_dump()
        for key, default in (("intervention", "add"), ("condition", None)):
            if fields[key] == default:
                del fields[key]
        return fields


class TermError(ValueError):
    """A steering term that cannot apply: ``field`` says where (``steering[1].vector``), ``code``
    what kind of error in OpenAI's words (``unknown_vector``), or None."""

    def __init__(self, field: str, message: str, code: str | None = None) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.code = field, code


Found = TypeVar("Found")
Lookup = Callable[[str], Found]
"""Finds a term's vector or condition by name; raises KeyError(message saying why) when there
is none, OSError or ValueError when the one named does not read."""


def named(loaded: Mapping[str, Found], kind: str) -> Lookup[Found]:
    """A lookup among ``loaded`` by name whose miss lists the names there are."""

    def find(name: str) -> Found:
        if name not in loaded:
            names = ", ".join(repr(n) for n in loaded) or "none"
            raise KeyError(f"unknown {kind} {name!r} (loaded: {names})")
        return loaded[name]

    return find


def _found(lookup: Lookup[Found], name: str, field: str, kind: str) -> Found:
    try:
        return lookup(name)
    except KeyError as err:
        raise TermError(field, str(err.args[0] if err.args else name),
                        f"unknown_{kind}") from None
    except (OSError, ValueError) as err:
        raise TermError(field, str(err)) from None


def resolve_terms(
    terms: Sequence[SteeringTerm], vectors: Lookup[SteeringVector],
    conditions: Lookup[Condition] | None = None, *, n_layers: int | None = None,
    max_multiplier: float | None = None, where: str = "steering",
) -> list[SteeringSetting]:
    """The settings ``terms`` name, each checked on its own against what it meets: its vector
    and condition found by name, its multiplier within ``max_multiplier`` (an angle needs none:
    it is within ±180), its layers among ``n_layers`` (None: the layers of the model its vector
    was made for, where its file says), its setting one that applies. The one resolver of the
    server, the vLLM engine, steering files and lm-eval; errors are :class:`TermError` naming
    ``where[i].field``. Together the settings only add up, so a list of valid terms applies."""
    settings = []
    for index, term in enumerate(terms):
        at = f"{where}[{index}]"
        vector = _found(vectors, term.vector, f"{at}.vector", "vector")
        if (max_multiplier is not None and EDITS[term.intervention].limited
                and abs(term.multiplier) > max_multiplier):
            raise TermError(f"{at}.multiplier", f"{term.multiplier:g} is outside the allowed "
                            f"range [{-max_multiplier:g}, {max_multiplier:g}]",
                            "multiplier_out_of_range")
        layers = n_layers if n_layers is not None else vector.meta.n_layers
        outside = [layer for layer in term.layers or []
                   if layers is not None and not 0 <= layer < layers]
        if outside:
            raise TermError(f"{at}.layers", f"{outside} outside the model's layers "
                            f"0..{layers - 1}")
        condition = None
        if term.condition is not None:
            if conditions is None:
                raise TermError(f"{at}.condition", "conditional steering is not available here")
            condition = _found(conditions, term.condition, f"{at}.condition", "condition")
        try:
            setting = term.setting(vector, condition)
            if layers is not None:
                check_layers(setting.placed(), layers)
            Composition((setting,)).check()
        except ValueError as err:
            raise TermError(at, str(err)) from None
        settings.append(setting)
    return settings


def read_terms(path: str | Path) -> list[SteeringTerm]:
    """The :class:`SteeringTerm` objects of a JSON file holding a list of them; errors name the
    file, the term and the field."""
    path = Path(path)
    try:
        terms = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON file ({err})") from None
    if not isinstance(terms, list) or not terms:
        raise ValueError(f"{path}: expected a non-empty JSON list of steering terms")
    read = []
    for index, raw in enumerate(terms):
        try:
            read.append(SteeringTerm.model_validate(raw))
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(part) for part in first["loc"])
            raise ValueError(f"{path}[{index}].{field}: {first['msg']}") from None
    return read


def load_composition(path: str | Path) -> Composition:
    """Settings applied together, from a JSON file holding a list of :class:`SteeringTerm`
    objects whose ``vector`` and ``condition`` are files (relative to the file's folder). Errors
    name the file, the term and the field."""
    path = Path(path)
    settings = resolve_terms(read_terms(path), lambda name: SteeringVector.load(path.parent / name),
                             lambda name: Condition.load(path.parent / name), where=str(path))
    return Composition(tuple(settings))

"""The JSON form of a steering setting: what a request names to be steered (the server's
``steering`` field, the vLLM engine's per-request steering), checked as OpenAI's API checks its
bodies (strict JSON types, finite numbers, valid Unicode)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Any

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
from steerlab.steering.hooks import Positions
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


def load_composition(path: str | Path) -> Composition:
    """Settings applied together, from a JSON file holding a list of :class:`SteeringTerm`
    objects whose ``vector`` and ``condition`` are files (relative to the file's folder). Errors
    name the file, the term and the field."""
    path = Path(path)
    try:
        terms = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON file ({err})") from None
    if not isinstance(terms, list) or not terms:
        raise ValueError(f"{path}: expected a non-empty JSON list of steering terms")
    settings = []
    for index, raw in enumerate(terms):
        where = f"{path}[{index}]"
        try:
            term = SteeringTerm.model_validate(raw)
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(part) for part in first["loc"])
            raise ValueError(f"{where}.{field}: {first['msg']}") from None
        try:
            vector = SteeringVector.load(path.parent / term.vector)
            condition = (Condition.load(path.parent / term.condition)
                         if term.condition is not None else None)
        except (OSError, ValueError) as err:
            raise ValueError(f"{where}: {err}") from None
        settings.append(term.setting(vector, condition))
    return Composition(tuple(settings))

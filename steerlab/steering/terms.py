"""The JSON form of a steering setting: what a request names to be steered (the server's
``steering`` field, the vLLM engine's per-request steering), checked as OpenAI's API checks its
bodies (strict JSON types, finite numbers, valid Unicode)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictInt

from steerlab.steering.hooks import Positions
from steerlab.steering.setting import Intervention


def _not_bool(value: Any) -> Any:
    """JSON's true/false are not numbers (pydantic would read ``true`` as 1)."""
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    return value


def _utf8(value: str) -> str:
    """Text the tokenizer can read: a lone surrogate (``"\\ud800"`` in JSON) is not UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"text is not valid Unicode ({err.reason} at character "
                         f"{err.start})") from None
    return value


Number = Annotated[float, BeforeValidator(_not_bool)]
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

    def echo(self) -> dict[str, Any]:
        """The term as the reply's ``steering`` echoes it (intervention and condition only when
        given, so a plain term echoes as it always has)."""
        fields = self.model_dump()
        for key, default in (("intervention", "add"), ("condition", None)):
            if fields[key] == default:
                del fields[key]
        return fields

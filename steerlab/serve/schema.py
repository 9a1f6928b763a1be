"""The server's request bodies and settings, checked as OpenAI's API checks them (strict JSON
types, finite numbers, valid Unicode), and its OpenAI-shaped errors."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    field_validator,
)

from steerlab.steering.terms import JsonBody as _Body
from steerlab.steering.terms import Number, SteeringTerm, Text


class ServeSettings(BaseModel):
    """What the server allows and how it batches; every limit is checked per request."""

    model_config = ConfigDict(extra="forbid")

    model_name: str | None = None
    """The model id clients send and ``/v1/models`` lists (default: the loaded model's name)."""
    max_multiplier: float = Field(8.0, ge=0)
    """Multipliers must lie in [-max_multiplier, max_multiplier] (an angular term's multiplier
    is an angle, within [-180, 180] degrees)."""
    max_tokens: int = Field(512, ge=1)
    """Most tokens one request may generate (also the default when it asks for none)."""
    max_context: int | None = Field(None, ge=1)
    """Prompt + generated tokens allowed (default: the model's maximum positions)."""
    api_key: str | None = None
    """When set, every request needs ``Authorization: Bearer <api_key>`` (a browser: open a
    web page once with ``?key=<api_key>``, which sets a same-site cookie and is then dropped
    from the address)."""
    host: str = "127.0.0.1"
    """The address the server listens on; the Host check answers to it (and, on loopback, to
    ``localhost``; listening on every address, to any IP address)."""
    allowed_hosts: list[str] = []
    """Further names the Host header may give (a DNS name this server is reached by)."""
    web: bool = False
    """Serve the web interface under ``/web/`` too."""
    runs: str | None = None
    """With ``web``: the folder of run directories the runs page lists (None: no runs page)."""
    max_batch_size: int = Field(8, ge=1)
    batch_wait_ms: float = Field(20.0, ge=0)
    """How long a request waits for others with its settings to share its batch."""
    max_pending: int = Field(256, ge=1)
    """Requests allowed to wait for the worker; more are answered 429."""
    max_body_bytes: int = Field(2 << 20, ge=1024)
    """Largest request body accepted; a larger one is answered 413 before it is read."""
    body_timeout_s: float = Field(30.0, gt=0)
    """Longest a client may take to send its request body; a slower one is answered 408."""


# ---- request bodies ---------------------------------------------------------------------------


Seed = Annotated[StrictInt, Field(ge=-(2**63), le=2**64 - 1)]
"""What torch's generator takes: a 64-bit seed."""


class TextPart(_Body):
    """A text part of a message's content (the only kind a text model reads)."""

    type: Literal["text"]
    text: Text


class ChatMessage(_Body):
    """One turn of the conversation."""

    role: Literal["system", "user", "assistant"]
    content: Text | list[TextPart]
    name: Text | None = None

    def text(self) -> str:
        return (
            self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        )


class StreamOptions(_Body):
    """OpenAI's streaming options: a last chunk with token usage when asked."""

    include_usage: StrictBool = False


class ChatRequest(_Body):
    """OpenAI's chat completion request (the fields a local text model honours) + ``steering``."""

    model: Text
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    temperature: Number | None = Field(None, ge=0, le=2)
    """0 decodes greedily; sampling divides the logits by it, so it is at least
    :data:`MIN_TEMPERATURE` (a smaller one overflows them: use 0)."""
    top_p: Number | None = Field(None, gt=0, le=1)
    seed: Seed | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] = 1
    stop: Text | list[Text] | None = None
    user: Text | None = None
    steering: list[SteeringTerm] = Field(default_factory=list)

    @field_validator("temperature")
    @classmethod
    def _sampleable(cls, value: float | None) -> float | None:
        if value is not None and 0 < value < MIN_TEMPERATURE:
            raise ValueError(f"must be 0 (greedy) or at least {MIN_TEMPERATURE:g}: sampling "
                             f"divides the logits by it, and {value:g} overflows them")
        return value


MIN_TEMPERATURE = 0.01
"""The smallest temperature that samples: below it (but above 0) logits / temperature overflow
float32 for ordinary logits."""


# ---- errors -----------------------------------------------------------------------------------


class RequestError(Exception):
    """A request the server refuses, with OpenAI's error fields."""

    def __init__(
        self,
        message: str,
        param: str | None = None,
        code: str | None = None,
        status: int = 400,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.kind = (
            message,
            param,
            code,
            status,
            kind,
        )

    def response(self) -> JSONResponse:
        body = {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status)


def _location(loc: Any) -> str:
    """('body', 'messages', 0, 'role') → 'messages[0].role'."""
    text = ""
    for part in loc:
        if part == "body" and not text:
            continue
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def validation_error(exc: RequestValidationError) -> RequestError:
    """A 400 naming each bad field and its value (malformed JSON said as such)."""
    messages, params = [], []
    for err in exc.errors()[:3]:
        param = _location(err["loc"])
        if err["type"] == "json_invalid":
            return RequestError(
                f"malformed JSON body: {err.get('ctx', {}).get('error', err['msg'])}"
            )
        if err["type"] == "extra_forbidden":
            messages.append(f"{param}: unsupported field")
        elif err["type"] == "missing":
            messages.append(f"{param or 'body'}: required field missing")
        else:
            messages.append(f"{param or 'body'}: {err['msg']} (got {err.get('input')!r})")
        params.append(param)
    return RequestError("; ".join(messages), params[0] if params else None)

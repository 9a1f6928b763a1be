"""A chat request made into work for the generation worker (:class:`ChatService`): checked
against the server's limits, its steering terms resolved against the named vectors and
conditions (errors name the term and field), its prompt formatted and tokenised."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerlab.model.catalog import BUILTIN_MODELS
from steerlab.model.handle import ModelHandle
from steerlab.serve.schema import ChatRequest, RequestError, ServeSettings
from steerlab.serve.worker import Decoding
from steerlab.steering.conditions import Condition
from steerlab.steering.setting import Composition
from steerlab.steering.terms import TermError, named, resolve_terms
from steerlab.steering.vectors import SteeringVector


@dataclass(frozen=True)
class PreparedRequest:
    """A validated request: token ids, decoding, steering terms, and what to echo back."""

    prompt_ids: list[int]
    decoding: Decoding
    steering: Composition | None
    steering_key: tuple
    applied: list[dict[str, Any]]


def served_name(spec: str) -> str:
    """The id a server shows for the model it was started with: a built-in or hub name as
    given, a local directory or GGUF file by its own name only (clients never see a path)."""
    path = Path(spec).expanduser()
    if spec in BUILTIN_MODELS or not (path.exists() or spec.startswith((".", "/", "~"))):
        return spec
    return path.stem if path.suffix == ".gguf" else path.resolve().name


class ChatService:
    """Checks requests against the model, the vectors and the settings, and turns them into jobs."""

    def __init__(
        self, model: ModelHandle, vectors: Mapping[str, SteeringVector], settings: ServeSettings,
        conditions: Mapping[str, Condition] | None = None,
    ) -> None:
        for kind, loaded in (("vector", vectors), ("condition", conditions or {})):
            for name, item in loaded.items():
                try:
                    item.check_compatible(model.model)
                except ValueError as err:
                    raise ValueError(f"{kind} '{name}': {err}") from err
        self.model = model
        self.vectors = dict(vectors)
        self.conditions = dict(conditions or {})
        self.settings = settings
        self.model_name = settings.model_name or served_name(model.name)
        self.context = settings.max_context or model.context

    def describe(self) -> dict[str, Any]:
        """The model entry of ``/v1/models``, with the vectors, the conditions and the allowed
        multiplier range."""
        limit = self.settings.max_multiplier
        vectors = {
            name: {
                "id": v.id,
                "method": v.meta.method,
                "layers": v.layers,
                "norm_ratio": bool(v.meta.residual_norms),
            }
            for name, v in self.vectors.items()
        }
        return {
            "id": self.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "steerlab",
            "steering": {
                "vectors": vectors,
                "conditions": {name: {"id": c.id, "layer": c.layer}
                               for name, c in self.conditions.items()},
                "multiplier_range": [-limit, limit],
                "n_layers": self.model.n_layers,
            },
            "max_tokens": self.settings.max_tokens,
            "context": self.context,
            "placement": self.model.placement,
        }

    def prepare(self, request: ChatRequest) -> PreparedRequest:
        """Validate ``request`` beyond its shape; raises :class:`RequestError` naming the field."""
        if request.model != self.model_name:
            raise RequestError(
                f"model {request.model!r} is not served here; this server serves "
                f"{self.model_name!r}",
                "model",
                "model_not_found",
                status=404,
            )
        try:
            prompt = self.model.format_messages(
                [{"role": m.role, "content": m.text()} for m in request.messages]
            )
        except ValueError as err:
            raise RequestError(
                f"messages: {err} (got roles {[m.role for m in request.messages]})", "messages"
            ) from err
        prompt_ids = self.model.encode_prompt(prompt)
        stop = (request.stop,) if isinstance(request.stop, str) else tuple(request.stop or ())
        if len(stop) > 4 or any(not s for s in stop):
            raise RequestError(f"stop: up to 4 non-empty strings, got {list(stop)!r}", "stop")
        temperature = 1.0 if request.temperature is None else request.temperature
        decoding = Decoding(
            self._max_tokens(request, len(prompt_ids)),
            temperature,
            request.top_p or 1.0,
            request.seed,
            stop,
        )
        try:
            resolved = resolve_terms(request.steering, named(self.vectors, "vector"),
                                     named(self.conditions, "condition"),
                                     n_layers=self.model.n_layers,
                                     max_multiplier=self.settings.max_multiplier)
        except TermError as err:
            raise RequestError(str(err), err.field, err.code) from None
        settings, keys, applied = [], [], []
        for term, setting in zip(request.steering, resolved):
            if setting.multiplier != 0:
                settings.append(setting)
                keys.append(setting.key())
            applied.append({**term.echo(), "layers": sorted(setting.placed()),
                            "vector_id": setting.vector.id})
        steering = Composition(tuple(settings)) if settings else None
        return PreparedRequest(prompt_ids, decoding, steering, tuple(keys), applied)

    def _max_tokens(self, request: ChatRequest, prompt_tokens: int) -> int:
        fields = {
            "max_tokens": request.max_tokens,
            "max_completion_tokens": request.max_completion_tokens,
        }
        given = {k: v for k, v in fields.items() if v is not None}
        if len(set(given.values())) > 1:
            raise RequestError(
                f"max_tokens ({request.max_tokens}) and max_completion_tokens "
                f"({request.max_completion_tokens}) disagree; send one",
                "max_tokens",
            )
        param, wanted = next(iter(given.items()), ("max_tokens", None))
        limit = self.settings.max_tokens
        if wanted is not None and wanted > limit:
            raise RequestError(
                f"{param}: {wanted} is over this server's limit of {limit} tokens",
                param,
                "max_tokens_too_large",
            )
        if self.context is None:
            return wanted or limit
        room = self.context - prompt_tokens
        if room < 1:
            raise RequestError(
                f"messages: the prompt has {prompt_tokens} tokens, which leaves no "
                f"room to answer in the context of {self.context}",
                "messages",
                "context_length_exceeded",
            )
        if wanted is not None and wanted > room:
            raise RequestError(
                f"{param}: the prompt's {prompt_tokens} tokens + {wanted} = "
                f"{prompt_tokens + wanted} tokens, over the context of {self.context}",
                param,
                "context_length_exceeded",
            )
        return wanted or min(limit, room)

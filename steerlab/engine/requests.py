"""The steering a generation request carries to an engine: a JSON list of
:class:`~steerlab.steering.terms.SteeringTerm` (the server's ``steering`` field) under the
request's ``extra_args`` key :data:`STEERING_KEY`, its vectors named by id among those the
engine loaded or by the path of a vector file the engine's workers can read.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from steerlab.steering.conditions import Condition
from steerlab.steering.hooks import Edits
from steerlab.steering.setting import Composition
from steerlab.steering.terms import Lookup, SteeringTerm, TermError, resolve_terms
from steerlab.steering.vectors import SteeringVector

STEERING_KEY = "steering"
"""The key of ``SamplingParams.extra_args`` (``vllm_xargs`` in an OpenAI request's body) whose
value is the JSON list of steering terms."""

VECTORS_ENV = "STEERLAB_VLLM_VECTORS"
"""Vector files (separated by ``os.pathsep``) an engine's processes load at start, so that
requests to a plain ``vllm serve`` can name them by id."""

_TERMS = TypeAdapter(list[SteeringTerm])


class SteeringRequestError(ValueError):
    """A request's steering that cannot apply, said by term and field."""


def encode_steering(composition: Composition | None) -> str | None:
    """A composition as the JSON terms a request carries (its vectors by id: the engine must
    have loaded them), or None for no steering."""
    if composition is None or not composition.parts:
        return None
    terms = []
    for part in composition.parts:
        if part.condition is not None:
            raise SteeringRequestError("conditional steering is not available on the vLLM engine "
                                       "(a condition decides from a whole prompt's activations)")
        terms.append(SteeringTerm.of(part, part.vector.id))
    return json.dumps([t.model_dump(exclude_defaults=True) for t in terms])


def parse_steering(text: object) -> list[SteeringTerm]:
    """The terms of a request's steering value (a JSON string, or the decoded list)."""
    try:
        raw = json.loads(text) if isinstance(text, str) else text
        return _TERMS.validate_python(raw)
    except json.JSONDecodeError as err:
        raise SteeringRequestError(f"{STEERING_KEY}: not JSON ({err})") from None
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise SteeringRequestError(f"{STEERING_KEY}[{where}]: {first['msg']}") from None


SALTED = "salted"
"""``additional_config={"steerlab": {"salted": true}}``: the engine's steered requests carry the
``cache_salt`` :func:`steering_salt` gives (steerlab's engine and server always do), so prefix
caching may be on."""


def steering_salt(text: str | None, prompt_tokens: int) -> str | None:
    """The prefix-cache salt of a request of ``prompt_tokens`` tokens steered by ``text`` (None
    when unsteered: it shares every unsteered request's blocks).

    vLLM caches each full block a request computes, generated tokens included, and a later
    prompt that contains those tokens reuses it; a block is right for a request only if each of
    its tokens was edited as that request would edit it. Steering at every position edits a
    token alike whether it was prompt or generated, so its salt is a digest of the steering.
    Steering of prompt or generated tokens only edited a generated token as no later prompt
    would: its salt also takes the prompt's length, so blocks are shared only between requests
    whose prompts end at the same token (for both, prompt blocks), never with unsteered ones.
    """
    if not text:
        return None
    terms = parse_steering(text)
    key = text if all(term.positions == "all" for term in terms) else f"{text}|{prompt_tokens}"
    return "steerlab-" + hashlib.sha256(key.encode()).hexdigest()[:24]


def _no_condition(name: str) -> Condition:
    raise KeyError("conditional steering is not available on the vLLM engine")


def resolve_steering(terms: Sequence[SteeringTerm], vectors: Lookup[SteeringVector],
                     n_layers: int | None = None) -> list[Edits]:
    """The terms as the edit groups one request applies (:meth:`Composition.edits`), each term
    resolved by :func:`~steerlab.steering.terms.resolve_terms` against the model's layers
    (``n_layers``; None: the layers of the model each vector was made for)."""
    try:
        settings = resolve_terms(terms, vectors, _no_condition, n_layers=n_layers,
                                 where=STEERING_KEY)
    except TermError as err:
        raise SteeringRequestError(str(err)) from None
    return Composition(tuple(settings)).edits() if settings else []


class VectorStore:
    """The vectors an engine process holds, by id, and vector files read once by path."""

    def __init__(self) -> None:
        self.by_id: dict[str, SteeringVector] = {}
        self._by_path: dict[Path, SteeringVector] = {}

    def add(self, vector: SteeringVector) -> str:
        self.by_id[vector.id] = vector
        return vector.id

    def load(self, path: str | Path) -> str:
        """Read a vector file and hold it under its id."""
        return self.add(SteeringVector.load(path))

    def __call__(self, name: str) -> SteeringVector:
        if name in self.by_id:
            return self.by_id[name]
        path = Path(name).expanduser().resolve()
        if path not in self._by_path:
            if not path.is_file():
                raise KeyError(f"no vector {name!r} is loaded and no vector file is at that path")
            self._by_path[path] = SteeringVector.load(path)
        return self._by_path[path]


def preloaded_vectors(store: VectorStore) -> None:
    """Load the files :data:`VECTORS_ENV` lists into ``store``."""
    for path in filter(None, os.environ.get(VECTORS_ENV, "").split(os.pathsep)):
        store.load(path)

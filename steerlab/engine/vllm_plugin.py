"""The check vLLM runs on every request before it is scheduled (imports vLLM).

Installed as a ``vllm.logits_processors`` entry point, :class:`SteeringCheck` is loaded by any
vLLM engine in an environment where steerlab is installed. Its :meth:`validate_params` reads a
request's steering (:mod:`steerlab.engine.requests`) in the process that accepts requests, so a
bad term is refused there (``vllm serve`` answers 400 naming the term and field) instead of
failing inside the worker (steering that puts more edits on a token than the engine's tables
hold, :func:`~steerlab.engine.graph_edits.check_capacity`, too); it leaves logits alone.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

from steerlab.engine.graph_edits import check_capacity
from steerlab.engine.requests import (
    STEERING_KEY,
    VectorStore,
    parse_steering,
    preloaded_vectors,
    resolve_steering,
)

FRONT_VECTORS = VectorStore()
"""The vectors requests may name by id, as the accepting process knows them: the files
``$STEERLAB_VLLM_VECTORS`` lists, and those a :class:`~steerlab.engine.vllm_engine.VllmEngine`
in this process loaded."""
preloaded_vectors(FRONT_VECTORS)


class SteeringCheck(LogitsProcessor):
    """Refuses a request whose steering cannot apply; changes no logits."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        text = (sampling_params.extra_args or {}).get(STEERING_KEY)
        if text is not None:
            check_capacity(resolve_steering(parse_steering(text), FRONT_VECTORS))

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        pass

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def is_argmax_invariant(self) -> bool:
        return True

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        pass

"""vLLM's own worker, extended with per-request steering (``--worker-cls``; imports vLLM).

:class:`SteeringWorker` is the platform's worker class (CPU or CUDA) with three additions: after
the model loads it hooks the decoder layers (and the attention output projections, for vectors
on the heads' outputs); before each forward pass it reads, from the model runner's persistent
batch, which flat rows belong to which request and each request's steering (the JSON terms
under ``SamplingParams.extra_args["steering"]``, see :mod:`steerlab.engine.requests`); and it
holds the vectors requests name (``steerlab_add_vector`` over ``collective_rpc``, files listed in
``$STEERLAB_VLLM_VECTORS`` at start, or a file path in the request). Requests with different
steering share one forward pass; a pass with no steered request runs with no edit at all.

vLLM's decoder layers return the residual stream in two parts, ``(hidden, residual)``, summed by
the next layer's fused add-and-norm: an addition goes to ``hidden``; an ablation or rotation
edits the sum and passes a zero residual. Under tensor parallelism the layer outputs are
replicated, so every rank applies the same edits to its copy (an attention-site vector is cut to
the rank's heads); under pipeline parallelism each rank edits the layers it holds.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from vllm.config import CompilationMode
from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size
from vllm.model_executor.models.utils import PPMissingLayer
from vllm.platforms import current_platform

from steerlab.engine.requests import (
    STEERING_KEY,
    SteeringRequestError,
    VectorStore,
    parse_steering,
    preloaded_vectors,
    resolve_steering,
)
from steerlab.engine.token_edits import BatchEdits, Span
from steerlab.model.handle import find_decoder_layers
from steerlab.model.heads import attention_projections
from steerlab.steering.hooks import Edits

if current_platform.is_cpu():
    from vllm.v1.worker.cpu_worker import CPUWorker as _PlatformWorker
elif current_platform.is_cuda_alike():
    from vllm.v1.worker.gpu_worker import Worker as _PlatformWorker
else:  # pragma: no cover - other accelerators
    raise ImportError(f"steerlab's vLLM worker knows the CPU and CUDA/ROCm workers, not "
                      f"{current_platform.device_name}'s")

_PLANS = 1024
"""Distinct steering values kept resolved (the rest are resolved again when they return)."""


def check_config(vllm_config: Any) -> None:
    """Refuse engine settings under which per-request steering would be silently wrong."""
    if vllm_config.cache_config.enable_prefix_caching:
        raise ValueError("steering needs prefix caching off (--no-enable-prefix-caching): a "
                         "prompt's cached keys and values would be reused by requests with other "
                         "steering")
    if vllm_config.compilation_config.mode != CompilationMode.NONE:
        raise ValueError("steering needs the model run eagerly (--enforce-eager): its hooks cannot "
                         "see into a compiled graph")
    if vllm_config.speculative_config is not None:
        raise ValueError("steering does not support speculative decoding")


class TokenSteering:
    """The hooks on one worker's model and the steering of the pass in flight."""

    def __init__(self, runner: Any, store: VectorStore) -> None:
        if not hasattr(runner, "input_batch") or not hasattr(runner, "requests"):
            raise ValueError(f"steering reads the persistent batch of vLLM's model runner; "
                             f"{type(runner).__name__} has none (the V2 model runner is not "
                             "supported)")
        self.runner, self.store = runner, store
        model = runner.get_model()
        layers = find_decoder_layers(model)
        self.n_layers = len(layers)
        self.tp = (get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size())
        self.current: BatchEdits | None = None
        self._plans: OrderedDict[str, list[Edits]] = OrderedDict()
        self._cast: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._dtype = next(model.parameters()).dtype
        self._device = next(model.parameters()).device
        self.handles = [model.register_forward_pre_hook(self._begin, with_kwargs=True),
                        model.register_forward_hook(self._end)]
        present = [(i, layer) for i, layer in enumerate(layers)
                   if not isinstance(layer, PPMissingLayer)]
        for index, layer in present:
            self.handles.append(layer.register_forward_hook(
                lambda module, args, output, index=index: self._residual(index, output)))
        projections = attention_projections(nn.ModuleList(layer for _, layer in present))
        for (index, _), projection in zip(present, projections):
            self.handles.append(projection.register_forward_pre_hook(
                lambda module, args, index=index: self._attention(index, args)))

    # ---- per pass -----------------------------------------------------------------------------

    def _begin(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
        self.current = self._batch(positions) if positions is not None else None

    def _end(self, module: nn.Module, args: tuple, output: Any) -> None:
        self.current = None

    def _batch(self, positions: torch.Tensor) -> BatchEdits | None:
        """The pass's edits: each scheduled request's rows (the runner's query start offsets,
        in its persistent batch's order) with its steering."""
        batch, runner = self.runner.input_batch, self.runner
        count = batch.num_reqs
        if count == 0:
            return None
        starts = runner.query_start_loc.cpu[: count + 1].tolist()
        spans = []
        for row, request_id in enumerate(batch.req_ids[:count]):
            state = runner.requests.get(request_id)
            params = state.sampling_params if state is not None else None
            text = (params.extra_args or {}).get(STEERING_KEY) if params is not None else None
            if text:
                spans.append(Span(starts[row], starts[row + 1], state.num_prompt_tokens,
                                  self.plan(text)))
        if not spans:
            return None
        flat = positions if positions.dim() == 1 else positions[0]  # M-RoPE: (3, T)
        return BatchEdits(spans, flat, self._like_model)

    def plan(self, text: str) -> list[Edits]:
        """A steering value resolved into edit groups (kept for the next pass that carries it)."""
        if text in self._plans:
            self._plans.move_to_end(text)
            return self._plans[text]
        try:
            resolved = resolve_steering(parse_steering(text), self.store, self.n_layers)
        except SteeringRequestError as err:  # vLLM checks requests first where it finds the plugin
            raise SteeringRequestError(f"{err} (a request reached the worker unchecked: is "
                                       "steerlab installed where vLLM accepts requests?)") from None
        edits = [self._shard(group) for group in resolved]
        self._plans[text] = edits
        if len(self._plans) > _PLANS:
            self._plans.popitem(last=False)
        return edits

    def _shard(self, group: Edits) -> Edits:
        """An attention-site group cut to this rank's heads under tensor parallelism."""
        rank, size = self.tp
        if group.site != "attention" or size == 1:
            return group
        if group.ablations or group.rotations:
            raise SteeringRequestError("ablating or rotating attention heads' outputs is not "
                                       "available under tensor parallelism")
        return replace(group, additions={layer: vector.chunk(size)[rank]
                                         for layer, vector in group.additions.items()})

    def _like_model(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` on the model's device and dtype, copied once per vector."""
        key = id(tensor)
        if key not in self._cast or self._cast[key][0] is not tensor:
            self._cast[key] = (tensor, tensor.to(device=self._device, dtype=self._dtype))
        return self._cast[key][1]

    # ---- hooks --------------------------------------------------------------------------------

    def _residual(self, index: int, output: Any) -> Any:
        edits = self.current
        if edits is None or not edits.edits("residual", index):
            return None
        if isinstance(output, torch.Tensor):
            return edits.apply("residual", index, output)
        hidden, residual, *rest = output
        if residual is None:
            return (edits.apply("residual", index, hidden), residual, *rest)
        if edits.reshapes("residual", index):
            stream = edits.apply("residual", index, hidden + residual)
            return (stream, torch.zeros_like(residual), *rest)
        return (hidden + edits.delta("residual", index, hidden), residual, *rest)

    def _attention(self, index: int, args: tuple) -> Any:
        edits = self.current
        if edits is None or not edits.edits("attention", index):
            return None
        return (edits.apply("attention", index, args[0]), *args[1:])


class SteeringWorker(_PlatformWorker):
    """The platform's vLLM worker with per-request steering (see the module docstring)."""

    def load_model(self, *args: Any, **kwargs: Any) -> None:
        check_config(self.vllm_config)
        super().load_model(*args, **kwargs)
        store = VectorStore()
        preloaded_vectors(store)
        self.steering = TokenSteering(self.model_runner, store)

    def steerlab_add_vector(self, path: str) -> str:
        """Load a vector file on this worker; its id, by which requests name it."""
        return self.steering.store.load(path)

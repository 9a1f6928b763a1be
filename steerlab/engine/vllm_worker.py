"""vLLM's own worker, extended with per-request steering (``--worker-cls``; imports vLLM).

:class:`SteeringWorker` is the platform's worker class (CPU or CUDA) with three additions. After
the model loads, each decoder layer (and attention output projection, for vectors on the heads'
outputs) gets a hook that applies :class:`~steerlab.engine.graph_edits.SteeringTables`: tensor
operations on static tables, so torch.compile traces them into vLLM's compiled graph and CUDA
graphs replay them (the hooks are in place before vLLM compiles). Before each forward pass
(the model runner's ``_model_forward``, which runs outside the graph) it reads, from the runner's
persistent batch, which flat rows belong to which request, each request's positions and
steering (the JSON terms under ``SamplingParams.extra_args["steering"]``, see
:mod:`steerlab.engine.requests`), and writes each token's slots. It holds the vectors requests
name (``steerlab_add_vector`` over ``collective_rpc``, files listed in
``$STEERLAB_VLLM_VECTORS`` at start, or a file path in the request). Requests with different
steering share one pass; a token with no steering is left exactly as vLLM computes it.

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
from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size
from vllm.model_executor.models.utils import PPMissingLayer
from vllm.platforms import current_platform

from steerlab.engine.graph_edits import SlotPlanner, Span, SteeringTables
from steerlab.engine.requests import (
    SALTED,
    STEERING_KEY,
    SteeringRequestError,
    VectorStore,
    parse_steering,
    preloaded_vectors,
    resolve_steering,
)
from steerlab.model.handle import find_decoder_layers, text_config_value
from steerlab.model.heads import attention_projections
from steerlab.steering.edits import Add
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
    """Refuse engine settings under which per-request steering would be silently wrong: prefix
    caching, unless the steered requests are salted (cached keys and values are reused only by
    requests with the same salt); speculative decoding (draft tokens are not placed in the batch
    the tables describe)."""
    promised = (getattr(vllm_config, "additional_config", None) or {}).get("steerlab", {})
    if vllm_config.cache_config.enable_prefix_caching and not promised.get(SALTED):
        raise ValueError(
            "prefix caching with steering needs every steered request to carry the cache_salt of "
            "its steering (steerlab.engine.requests.steering_salt); steerlab's engine and server "
            "send it. With `vllm serve`, have clients send it and say so with --additional-config "
            "'{\"steerlab\": {\"salted\": true}}', or turn caching off "
            "(--no-enable-prefix-caching)")
    if vllm_config.speculative_config is not None:
        raise ValueError("steering does not support speculative decoding")


class TokenSteering:
    """The tables and hooks on one worker's model, and the steering of the pass in flight."""

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
        self._plans: OrderedDict[str, list[Edits]] = OrderedDict()
        parameter = next(model.parameters())
        present = [(i, layer) for i, layer in enumerate(layers)
                   if not isinstance(layer, PPMissingLayer)]
        projections = attention_projections(nn.ModuleList(layer for _, layer in present))
        attention_width = next((getattr(p, "input_size_per_partition", None)
                                or getattr(p, "in_features") for p in projections), 1)
        self.tables = SteeringTables(
            self.n_layers, {"residual": text_config_value(model.config, "hidden_size"),
                            "attention": attention_width},
            runner.max_num_tokens, parameter.device, parameter.dtype)
        # a buffer of the module holding the layers: the compiled graph takes it as an input
        holder = next(module for module in model.modules()
                      if any(child is layers for child in module.children()))
        holder.steerlab_tables = self.tables
        self.planner = SlotPlanner(self.tables)
        self.handles = []
        for (index, layer), projection in zip(present, projections):
            self.handles.append(layer.register_forward_hook(
                lambda module, args, output, index=index: self._residual(index, output)))
            if self.tables.edits("attention"):
                self.handles.append(projection.register_forward_pre_hook(
                    lambda module, args, index=index: (
                        self.tables.edit("attention", index, args[0]), *args[1:])))
        forward = runner._model_forward  # vLLM's documented override point, outside the graph

        def steered_forward(*args: Any, **kwargs: Any) -> Any:
            self.planner.fill(self._spans())
            return forward(*args, **kwargs)

        runner._model_forward = steered_forward

    def _residual(self, index: int, output: Any) -> Any:
        if isinstance(output, torch.Tensor):
            return self.tables.edit("residual", index, output)
        hidden, residual, *rest = output
        if residual is None:
            return (self.tables.edit("residual", index, hidden), residual, *rest)
        return (*self.tables.edit_pair(index, hidden, residual), *rest)

    # ---- per pass -----------------------------------------------------------------------------

    def _spans(self) -> list[Span]:
        """The pass's steered requests: each one's flat rows (the runner's query start offsets,
        in its persistent batch's order), first position and prompt length, and slots."""
        batch, runner = self.runner.input_batch, self.runner
        count = batch.num_reqs
        if count == 0:
            return []
        starts = runner.query_start_loc.cpu[: count + 1].tolist()
        computed = batch.num_computed_tokens_cpu[:count].tolist()
        steered = []
        for row, request_id in enumerate(batch.req_ids[:count]):
            state = runner.requests.get(request_id)
            params = state.sampling_params if state is not None else None
            text = (params.extra_args or {}).get(STEERING_KEY) if params is not None else None
            if text:
                steered.append((row, state, text))
        busy = {text for _, _, text in steered}
        return [Span(starts[row], starts[row + 1], int(computed[row]), state.num_prompt_tokens,
                     self.planner.plan(text, self.plan(text), busy))
                for row, state, text in steered]

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
        if any(not edit.summed for edits in group.edits.values() for edit in edits):
            raise SteeringRequestError("ablating or rotating attention heads' outputs is not "
                                       "available under tensor parallelism")
        return replace(group, edits={layer: [Add(edit.direction.chunk(size)[rank])
                                             for edit in edits]
                                     for layer, edits in group.edits.items()})


class SteeringWorker(_PlatformWorker):
    """The platform's vLLM worker with per-request steering (see the module docstring)."""

    def load_model(self, *args: Any, **kwargs: Any) -> None:
        check_config(self.vllm_config)
        super().load_model(*args, **kwargs)
        store = VectorStore()
        preloaded_vectors(store)
        self.steering = TokenSteering(self.model_runner, store)
        # The compiled graph's shape follows the tables' (terms per kind, sites hooked), which
        # the environment sets: they join vLLM's compile-cache key (its hash of the config takes
        # additional_config), so a cached graph is never loaded for other tables.
        extra = self.vllm_config.additional_config
        if isinstance(extra, dict):
            tables = self.steering.tables
            extra.setdefault("steerlab", {})["tables"] = {"slots": tables.slots,
                                                          "terms": tables.terms}

    def steerlab_tables(self) -> dict[str, Any]:
        """The steering tables' configuration this worker compiled with, the ``steerlab`` entry
        of its vLLM config's additional_config, and that config's hash, which keys vLLM's
        compile cache (``collective_rpc("steerlab_tables")``)."""
        tables, extra = self.steering.tables, self.vllm_config.additional_config
        return {"slots": tables.slots, "terms": tables.terms,
                "additional_config": extra.get("steerlab") if isinstance(extra, dict) else None,
                "config_hash": self.vllm_config.compute_hash()}

    def steerlab_add_vector(self, path: str) -> str:
        """Load a vector file on this worker; its id, by which requests name it."""
        return self.steering.store.load(path)

"""Load causal language models and expose what steering needs: decoder layers, sizes, prompts.

One entry point, :func:`load_model`, turns a spec (built-in name, local directory, ``.gguf`` file
or hub id) into a :class:`ModelHandle`. GGUF weights are dequantised once and cached as
safetensors so later loads are fast.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from steerlab.hub import hub_reachable
from steerlab.model.catalog import (
    BUILTIN_MODELS,
    DEFAULT_MODEL,
    ModelLoadError,
    cache_dir,
)
from steerlab.model.placement import Placement, Quantization, Resolved, resolve

__all__ = [
    "BUILTIN_MODELS", "DEFAULT_MODEL", "ModelHandle", "ModelLoadError", "Placement", "cache_dir",
    "find_decoder_layers", "load_model", "wrap_model",
]

_INSANE_LIMIT = 10**7
"""Limits at or above this are placeholders (tokenizers without one say 1e30), not real ones."""

PLAIN_TEMPLATE = "Question: {prompt}\nAnswer:"
"""Prompt format for models without a chat template; completions then start with a space."""


@dataclass
class ModelHandle:
    """A loaded model with its tokenizer, decoder layers and prompt formatting."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    layers: nn.ModuleList
    preamble: tuple[Mapping[str, str], ...] = ()
    """Messages put before every prompt (a system text, earlier turns such as k-shot examples);
    see :func:`steerlab.methods.prompting.prompted`."""
    quantization: Quantization | None = None
    """The weights' quantisation (bitsandbytes 8 or 4 bits), None for plain weights."""
    _fingerprint: str | None = field(default=None, repr=False)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_model(self) -> int:
        return text_config_value(self.model.config, "hidden_size", "n_embd", "d_model")

    @property
    def context(self) -> int | None:
        """Tokens one sequence may hold: the smaller of the config's position limit and the
        tokenizer's ``model_max_length``, leaving out unset or placeholder values (None when
        neither says)."""
        limits = [getattr(self.tokenizer, "model_max_length", None)]
        with suppress(AttributeError):
            limits.append(text_config_value(self.model.config, "max_position_embeddings",
                                            "n_positions", "max_sequence_length"))
        sane = [int(v) for v in limits if isinstance(v, int) and 0 < v < _INSANE_LIMIT]
        return min(sane) if sane else None

    @property
    def device(self) -> torch.device:
        """Where the model's inputs go: its first parameter's device (the embedding's, for a
        model spread over several devices)."""
        return next(self.model.parameters()).device

    def layer_device(self, layer: int) -> torch.device:
        """The device decoder layer ``layer`` computes on (its output's, where a vector meets
        it); the input device unless the model is spread over several."""
        return next(self.layers[layer].parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The precision activations are computed in (the compute dtype of quantised weights)."""
        return getattr(self.model, "dtype", None) or next(self.model.parameters()).dtype

    @property
    def placement(self) -> dict[str, str]:
        """Where and how the model ran, for records and reports: device (devices, joined by
        ``+``, for a model spread over several), dtype, and quantisation when there is one."""
        devices = sorted({str(p.device) for p in self.model.parameters()})
        fields = {"device": "+".join(devices), "dtype": str(self.dtype).removeprefix("torch.")}
        return fields | ({"quantization": self.quantization} if self.quantization else {})

    @property
    def cache_keyword(self) -> str:
        """The name this model's forward takes and returns its KV cache under: ``cache`` from
        transformers 5.24 on, ``past_key_values`` before (the old name then warns)."""
        parameters = inspect.signature(self.model.forward).parameters
        for name in ("cache", "past_key_values"):
            if name in parameters:
                return name
        raise ValueError(f"{type(self.model).__name__}.forward takes no KV cache argument "
                         "('cache' or 'past_key_values')")

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def completion_prefix(self) -> str:
        """Text put between a formatted prompt and its completion (a space after 'Answer:')."""
        return "" if self.has_chat_template else " "

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = config_fingerprint(self.model.config)
        return self._fingerprint

    def format_prompt(self, prompt: str, system: str | None = None) -> str:
        """The exact text the model sees before its answer: chat template or plain template,
        with the handle's :attr:`preamble` (if any) as the conversation so far."""
        head = [{"role": "system", "content": system}] if system else []
        if head and any(m.get("role") == "system" for m in self.preamble):
            raise ValueError("this handle's preamble already has a system message; "
                             "pass system= only to a handle without one")
        return self.format_messages([*head, *self.preamble, {"role": "user", "content": prompt}])

    def format_messages(self, messages: Sequence[Mapping[str, str]]) -> str:
        """A conversation (``role``/``content`` dicts ending on a user turn) as the exact text the
        model continues: its chat template, or for plain models the system text followed by
        ``Question: ...\nAnswer: ...`` blocks, one per user/assistant exchange."""
        if not messages or messages[-1].get("role") != "user":
            raise ValueError("a conversation must end on a user message")
        if self.has_chat_template:
            return self.tokenizer.apply_chat_template(
                [dict(m) for m in messages], tokenize=False, add_generation_prompt=True
            )
        parts: list[str] = []
        for message in messages:
            role, content = message.get("role"), message.get("content", "")
            if role == "system":
                parts.append(f"{content}\n\n")
            elif role == "user":
                parts.append(PLAIN_TEMPLATE.format(prompt=content))
            elif role == "assistant":
                parts.append(f"{self.completion_prefix}{content}\n\n")
            else:
                raise ValueError(f"unknown message role {role!r} (system, user or assistant)")
        return "".join(parts)

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of an already formatted prompt (BOS added only when no template adds it)."""
        return self.tokenizer(text, add_special_tokens=not self.has_chat_template)["input_ids"]

    def encode_completion(self, text: str) -> list[int]:
        """Token ids of a completion that follows a formatted prompt."""
        return self.tokenizer(self.completion_prefix + text, add_special_tokens=False)["input_ids"]


def text_config_value(config: Any, *names: str) -> int:
    """Read the first present attribute of the (text) config, e.g. hidden size or layer count."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in names:
        value = getattr(text, name, None)
        if value is not None:
            return int(value)
    raise AttributeError(f"config of type {type(config).__name__} has none of {names}")


_FINGERPRINT_KEYS = (
    "model_type", "hidden_size", "n_embd", "num_hidden_layers", "n_layer",
    "num_attention_heads", "n_head", "num_key_value_heads", "intermediate_size", "n_inner",
    "vocab_size", "head_dim", "hidden_act", "activation_function", "tie_word_embeddings",
)


def config_fingerprint(config: Any) -> str:
    """A short hash of the architecture-defining config fields (not weights, not names)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    values = {key: getattr(text, key, None) for key in _FINGERPRINT_KEYS}
    blob = json.dumps(values, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """Find the stack of decoder blocks: the ModuleList whose length is the config's layer count.

    Works by structure rather than by per-architecture attribute names, so llama, mistral, qwen2,
    gemma 1-3, gpt2, gpt-neox, phi3 and most other decoder-only models need no special case.
    """
    n_layers = text_config_value(model.config, "num_hidden_layers", "n_layer", "num_layers")
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == n_layers
    ]
    if not candidates:
        raise ValueError(
            f"no list of {n_layers} decoder layers found in {type(model).__name__}; "
            "pass the layers explicitly"
        )
    # The decoder stack is the shallowest such list (vision towers and the like nest deeper).
    name, layers = min(candidates, key=lambda item: item[0].count("."))
    return layers


def count_layers(spec: str) -> int:
    """How many decoder layers the model ``spec`` names has, from its config alone (no weights
    loaded; a built-in GGUF model is dequantised into the cache first, once)."""
    from transformers import AutoConfig

    source = resolve_spec(spec)
    try:
        config = AutoConfig.from_pretrained(str(source), local_files_only=isinstance(source, Path))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not read the config of '{spec}': {err}") from err
    return text_config_value(config, "num_hidden_layers", "n_layer", "num_layers")


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


CACHE_FORMAT = f"transformers{transformers.__version__.split('.')[0]}"
"""What a dequantised cache's readability depends on: transformers 5 saves tokenizers under a
class 4.x does not know (``TokenizersBackend``), so each major version keeps its own copy."""


def _dequantise(gguf: Path, target: Path) -> None:
    """Write a GGUF file's weights (dequantised to float32) and tokenizer into ``target``."""
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are already plain float32: drop the GGUF quantiser so they save as such.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def _dequantised_dir(gguf: Path, rebuild: bool = False) -> Path:
    """Dequantise a GGUF file once into a safetensors directory in the cache; return it.

    The directory is keyed by the file's content and :data:`CACHE_FORMAT`; ``rebuild`` discards
    an existing copy (one that no longer loads) and writes it afresh.
    """
    target = cache_dir() / "dequantised" / f"{gguf.stem}-{_file_digest(gguf)}-{CACHE_FORMAT}"
    if rebuild:
        shutil.rmtree(target, ignore_errors=True)
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write into a temporary directory and rename, so an interrupted write leaves no half cache.
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        _dequantise(gguf, staging)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _gguf_file(spec: str) -> Path | None:
    """The GGUF file a spec names (a built-in model's, or a ``.gguf`` path); None otherwise."""
    if spec in BUILTIN_MODELS:
        return BUILTIN_MODELS[spec].gguf_path()
    path = Path(spec).expanduser()
    if path.suffix != ".gguf":
        return None
    if not path.is_file():
        raise ModelLoadError(f"GGUF file not found: {path}")
    return path.resolve()


def resolve_spec(spec: str) -> Path | str:
    """Map a model spec to a local directory (dequantising GGUF files) or leave a hub id."""
    gguf = _gguf_file(spec)
    if gguf is not None:
        return _dequantised_dir(gguf)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{path} is a directory without config.json, not a model")
        return path
    if path.exists() or spec.startswith((".", "/", "~")):
        raise ModelLoadError(f"'{spec}' is neither a model directory nor a .gguf file")
    return spec


def _weights_options(where: Resolved) -> dict[str, Any]:
    """``from_pretrained``'s arguments that place the weights: the dtype, and a device map
    (accelerate's, or the whole model on one accelerator, loaded there directly rather than
    through host memory), and bitsandbytes' config for quantised weights."""
    options: dict[str, Any] = {"dtype": where.dtype}
    if where.device_map is not None:
        options["device_map"] = where.device_map
    elif where.device.type != "cpu" or where.quantization:
        options["device_map"] = {"": where.device}
    if where.quantization:
        from transformers import BitsAndBytesConfig

        options["quantization_config"] = (
            BitsAndBytesConfig(load_in_8bit=True) if where.quantization == "8bit"
            else BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                    bnb_4bit_compute_dtype=where.dtype))
    return options


def _load(source: Path | str,
          where: Resolved) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Tokenizer and model from a local directory, the HF cache, or (where reachable) the hub."""
    online = not isinstance(source, Path) and hub_reachable()
    # Local files first (a directory, or a hub id already in the HF cache): no network.
    local_only = {"local_files_only": True}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), **local_only)
    except OSError:
        if not online:
            raise
        local_only = {}
        tokenizer = AutoTokenizer.from_pretrained(str(source))
    hf_logging.disable_progress_bar()  # a cached load takes a second; no bar needed
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(source), **_weights_options(where), **local_only
        )
    finally:
        hf_logging.enable_progress_bar()
    return model, tokenizer


def load_model(
    spec: str = DEFAULT_MODEL,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    device_map: str | None = None,
    quantization: Quantization | None = None,
) -> ModelHandle:
    """Load a causal LM by built-in name, local directory, ``.gguf`` file or hub id.

    Built-in names: see :data:`BUILTIN_MODELS`. ``device``, ``dtype``, ``device_map`` and
    ``quantization`` are a :class:`~steerlab.model.placement.Placement`'s: by default the first
    accelerator (CUDA, then MPS, else the CPU) in bfloat16 where it computes in it, float32 on
    the CPU. A device that is not here raises
    :class:`~steerlab.model.placement.DeviceUnavailable` naming those that are. The model is put
    in eval mode with gradients off for its parameters (steering trains vectors, never weights).
    A dequantised GGUF cache that no longer loads (damaged, or written in a form this
    transformers cannot read) is rebuilt once, never left to fail.
    """
    where = resolve(Placement(device=str(device), dtype=str(dtype), device_map=device_map,
                              quantization=quantization))
    source = resolve_spec(spec)
    try:
        try:
            model, tokenizer = _load(source, where)
        except (OSError, ValueError) as err:
            gguf = _gguf_file(spec)
            if gguf is None:
                raise
            warnings.warn(f"the dequantised cache {source} does not load ({err}); rebuilding it",
                          stacklevel=2)
            source = _dequantised_dir(gguf, rebuild=True)
            model, tokenizer = _load(source, where)
    except (OSError, ValueError) as err:
        if isinstance(source, Path):
            raise ModelLoadError(f"could not load model from {source}: {err}") from err
        online = hub_reachable()
        raise ModelLoadError(
            f"could not load '{spec}': it is not a built-in name ({', '.join(BUILTIN_MODELS)}), "
            f"a local directory or a .gguf file, and as a Hugging Face hub id it could not be "
            + ("fetched: the hub is not reachable from this machine. " if not online
               else f"loaded ({err}). ")
            + "Pass a built-in name or a local path instead."
        ) from err
    if where.quantization == "4bit":
        _keep_4bit_differentiable(model)
    handle = wrap_model(model, tokenizer, name=spec)
    handle.quantization = where.quantization
    return handle


def _keep_4bit_differentiable(model: nn.Module) -> None:
    """Stop bitsandbytes repacking 4-bit weights for its CPU inference kernel. It does so at
    the first pass without gradients (steerlab's reference pass), and from then on its layers
    pass no gradient to their inputs: a vector trained through them learns from the head and
    the layers' residual paths only (gradient cosine 0.26 with the true one, measured). Off,
    the layers keep bitsandbytes' differentiable path, exact against the dequantised weights."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def wrap_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    name: str | None = None,
    device: str | torch.device | None = None,
) -> ModelHandle:
    """Make a :class:`ModelHandle` from an already loaded model and tokenizer."""
    if device is not None:
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return ModelHandle(
        model=model,
        tokenizer=tokenizer,
        name=name or getattr(model.config, "_name_or_path", "") or type(model).__name__,
        layers=find_decoder_layers(model),
    )

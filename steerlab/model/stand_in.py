"""A stand-in for a model: the same tokenizer, depth, attention heads and context, a tiny width
and random weights. Code that runs on the model runs the same passes, of the same shapes in
tokens and layers, on the stand-in, in a small share of the time and memory: the run plan
counts a run's work on one (:mod:`steerlab.experiment.plan`)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from steerlab.model.handle import ModelHandle, text_config_value, wrap_model

HEAD_WIDTH = 8
"""Each attention head's width in a stand-in (the model's own number of heads is kept)."""

_WIDTH = ("hidden_size", "n_embd", "d_model")
_INNER = ("intermediate_size", "n_inner", "ffn_dim", "moe_intermediate_size")


def narrowed(config: Any) -> Any:
    """A copy of a model config at the stand-in's width: every head ``HEAD_WIDTH`` wide, the
    feed-forward twice the width; layers, heads, vocabulary and context as they were."""
    config = copy.deepcopy(config)
    if hasattr(config, "quantization_config"):  # the stand-in's weights are plain float32
        del config.quantization_config
    text = config.get_text_config()
    heads = text_config_value(text, "num_attention_heads", "n_head")
    width = heads * HEAD_WIDTH
    for name in _WIDTH:
        if getattr(text, name, None) is not None:
            setattr(text, name, width)
    for name in _INNER:
        if getattr(text, name, None) is not None:
            setattr(text, name, 2 * width)
    if getattr(text, "head_dim", None) is not None:
        text.head_dim = HEAD_WIDTH
    return config


def stand_in(model: ModelHandle, seed: int = 0) -> ModelHandle:
    """The stand-in of a loaded model (its config and tokenizer), on the CPU in float32."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        narrow = AutoModelForCausalLM.from_config(narrowed(model.model.config),
                                                  dtype=torch.float32)
    return wrap_model(narrow, model.tokenizer, name=f"{model.name} (stand-in)")

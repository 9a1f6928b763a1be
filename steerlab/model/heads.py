"""Attention heads: each decoder layer's attention output projection, whose input holds the
heads' outputs side by side (head h at ``h·head_dim … (h+1)·head_dim``) — the site where
inference-time intervention (Li et al. 2023) edits single heads."""

from __future__ import annotations

from torch import nn

PROJECTIONS = ("self_attn.o_proj", "attn.c_proj", "attention.dense", "self_attention.dense")
"""Where the attention output projection sits in the decoder layers of the families steerlab
knows (llama, qwen, gemma and kin; gpt2; gpt-neox; falcon)."""


def attention_projections(layers: nn.ModuleList) -> list[nn.Module]:
    """Each decoder layer's attention output projection; a ValueError naming the layer class
    where none of :data:`PROJECTIONS` is found."""
    found = []
    for index, layer in enumerate(layers):
        modules = dict(layer.named_modules())
        name = next((n for n in PROJECTIONS if n in modules), None)
        if name is None:
            raise ValueError(f"layer {index} ({type(layer).__name__}) has no attention output "
                             f"projection steerlab knows ({', '.join(PROJECTIONS)})")
        found.append(modules[name])
    return found

"""Tiny random models of several architectures and a byte-level tokenizer: no downloads."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
from transformers import (
    Gemma2Config, Gemma3TextConfig, GemmaConfig, GPT2Config, GPTNeoXConfig, LlamaConfig,
    MistralConfig, Phi3Config, Qwen2Config,
)

from steerlab.models import ModelHandle, wrap_model

VOCAB = 272
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def byte_tokenizer(chat: bool = True) -> PreTrainedTokenizerFast:
    """Byte-level tokenizer: one token per byte plus <pad>, <eos>, <bos>."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for special in ("<pad>", "<eos>", "<bos>"):
        vocab[special] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
        model_input_names=["input_ids", "attention_mask"],  # no token_type_ids for generate()
    )
    tok.chat_template = CHAT_TEMPLATE if chat else None
    return tok


IDS = dict(pad_token_id=256, eos_token_id=257, bos_token_id=258)
COMMON = dict(vocab_size=VOCAB, max_position_embeddings=1024, initializer_range=0.3, **IDS)
DECODER = dict(
    hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
    intermediate_size=64, **COMMON,
)
CONFIGS = {
    "llama": lambda: LlamaConfig(**DECODER),
    "mistral": lambda: MistralConfig(**DECODER),
    "qwen2": lambda: Qwen2Config(**DECODER),
    "gemma": lambda: GemmaConfig(**DECODER, head_dim=8),
    "gemma2": lambda: Gemma2Config(**DECODER, head_dim=8),
    "gemma3": lambda: Gemma3TextConfig(**DECODER, head_dim=8),
    "phi3": lambda: Phi3Config(**DECODER),
    "gpt2": lambda: GPT2Config(
        vocab_size=VOCAB, n_positions=1024, n_embd=32, n_layer=4, n_head=4, initializer_range=0.3, **IDS
    ),
    "gpt_neox": lambda: GPTNeoXConfig(**{**DECODER, "num_key_value_heads": 4}),
}


def tiny_model(family: str = "llama", chat: bool = True, seed: int = 0) -> ModelHandle:
    """A random model of ``family`` (4 layers, d_model 32) wrapped as a ModelHandle."""
    torch.manual_seed(seed)
    config = CONFIGS[family]()
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    return wrap_model(model, byte_tokenizer(chat), name=f"tiny-{family}")


def next_token_model(transitions: dict[str, str], seed: int = 0) -> ModelHandle:
    """A tiny llama (chat template) whose next token depends only on the current one.

    ``transitions`` maps a character to the one that follows it; ``"<eos>"`` ends the text. The
    attention and MLP outputs are zero, so the residual stream is the token's embedding: a
    one-hot direction per mapped character, read out by the head as its follower. So a model
    with ``{">": "1", "1": "<eos>"}`` answers every chat prompt (which ends in ``>``) with "1".
    """
    model = tiny_model("llama", seed=seed)
    torch.nn.init.zeros_(model.model.get_input_embeddings().weight)
    torch.nn.init.zeros_(model.model.lm_head.weight)
    for layer in model.layers:
        torch.nn.init.zeros_(layer.self_attn.o_proj.weight)
        torch.nn.init.zeros_(layer.mlp.down_proj.weight)
    ids = model.tokenizer.convert_tokens_to_ids
    with torch.no_grad():
        for dim, (current, following) in enumerate(transitions.items()):
            model.model.get_input_embeddings().weight[ids(current), dim] = 1.0
            model.model.lm_head.weight[ids(following), dim] = 10.0
    return model

"""Tiny random models of several architectures and a byte-level tokenizer (no downloads), and
the small helpers the tests share."""

from __future__ import annotations

import csv
import json

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GemmaConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from steerlab.data.files import PreferencePair
from steerlab.model.capture import capture_layer_outputs
from steerlab.model.encoding import encode
from steerlab.model.handle import ModelHandle, wrap_model
from steerlab.steering.conditions import Condition
from steerlab.steering.vectors import SteeringVector, meta_for

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
        vocab_size=VOCAB, n_positions=1024, n_embd=32, n_layer=4, n_head=4, initializer_range=0.3,
        **IDS
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


def one_letter_model(letter: str = "A", seed: int = 0) -> ModelHandle:
    """A tiny llama that prefers ``letter`` as the next token whatever it reads (then every
    other token alike): the residual stream's first coordinate is 5 for every token and no layer
    writes it, so after the final norm it is always positive, and only ``letter``'s row of the
    head reads it. Built like a small model answering every A/B item with one letter."""
    model = tiny_model("llama", seed=seed)
    with torch.no_grad():
        model.model.get_input_embeddings().weight[:, 0] = 5.0
        for layer in model.layers:
            layer.self_attn.o_proj.weight[0] = 0.0
            layer.mlp.down_proj.weight[0] = 0.0
        model.model.lm_head.weight.zero_()
        model.model.lm_head.weight[model.tokenizer.convert_tokens_to_ids(letter), 0] = 4.0
    return model


# ---- helpers the tests share -------------------------------------------------------------------

PROMPTS = ["Hi", "Tell me a long story about a fox", "Why?", "Name three colours please"]
PAIRS = [
    PreferencePair("Is the sky green?\n(A) yes\n(B) no", "(A", "(B", id="p1"),
    PreferencePair("Do you agree?", " Sure, I do.", " No.", id="p2"),
    PreferencePair("A much longer question about something entirely different, really?", "(B", "(A",
                   id="p3"),
]


SHORT_TRAINING = {"bipo": {"epochs": 2, "batch_size": 2}, "dpo": {"epochs": 1, "batch_size": 2},
                  "reps": {"epochs": 1, "batch_size": 2}, "one-shot": {"epochs": 2},
                  "iti": {"top_k": 3}, "mean-centring": {"corpus_size": 4, "max_tokens": 16}}
"""Settings that train each method in moments on a tiny model (the loss-trained methods'
defaults take minutes); the others train as they are."""


def saved_sae(path, d_in, hook="blocks.1.hook_resid_post", kind="standard", seed=0, **fields):
    """An SAE of ``kind`` built by sae-lens with seeded random weights (``fields``: tensors to
    set), saved with its own ``save_model`` in ``path``; the sae-lens object."""
    sae_lens = quiet_import("sae_lens")
    classes = {"standard": (sae_lens.StandardSAE, sae_lens.StandardSAEConfig, {}),
               "topk": (sae_lens.TopKSAE, sae_lens.TopKSAEConfig, {"k": 4}),
               "jumprelu": (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig, {})}
    sae_class, config_class, extra = classes[kind]
    metadata = sae_lens.saes.sae.SAEMetadata(hook_name=hook, model_name="tiny")
    sae = sae_class(config_class(d_in=d_in, d_sae=48, metadata=metadata, **extra))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in sae.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
        for name, tensor in fields.items():
            getattr(sae, name).copy_(tensor)
    sae.save_model(path)
    return sae


_SAES: dict[int, str] = {}


def layer_one_sae(d_model: int) -> str:
    """A random SAE at layer 1 for models of width ``d_model``, saved once per session."""
    if d_model not in _SAES:
        import tempfile

        folder = f"{tempfile.mkdtemp(prefix='steerlab-test-sae-')}/sae"
        saved_sae(folder, d_model)
        _SAES[d_model] = folder
    return _SAES[d_model]


def train_shortly(model: ModelHandle, name: str, engine: str | None = None) -> SteeringVector:
    """``name``'s vector on :data:`PAIRS` with :data:`SHORT_TRAINING` (layers 1 and 2 for a
    method that trains several at once, else layer 1; the sae method on a random SAE of the
    model's width at layer 1); ``engine`` for the loss-trained ones."""
    from steerlab.methods import methods, train_vector
    from steerlab.methods.training import TrainingRun

    config = {**SHORT_TRAINING.get(name, {}), **({"engine": engine} if engine else {})}
    if name == "sae":
        config |= {"sae": layer_one_sae(model.d_model), "features": [0, 5]}
    layers = [1, 2] if methods()[name].multi_layer else [1]
    return train_vector(model, PAIRS, name, layers, config, TrainingRun(progress=False))


def make_vector(model: ModelHandle, layers=(1,), scale: float = 3.0,
                seed: int = 1) -> SteeringVector:
    """A seeded random vector of norm about ``scale`` × sqrt(d_model) at ``layers``."""
    gen = torch.Generator().manual_seed(seed)
    directions = {layer: scale * torch.randn(model.d_model, generator=gen) for layer in layers}
    return SteeringVector(directions, meta_for(model, "test"))


def random_vector(model: ModelHandle, layers, seed: int = 1) -> SteeringVector:
    """A seeded random vector with residual norms of 5 stored, so norm ratios apply."""
    generator = torch.Generator().manual_seed(seed)
    directions = {layer: torch.randn(model.d_model, generator=generator) for layer in layers}
    return SteeringVector(directions, meta_for(model, "random",
                                               residual_norms={layer: 5.0 for layer in layers}))


def logits(model: ModelHandle, text: str = "The quick brown fox") -> torch.Tensor:
    """The model's logits on ``text`` under whatever steering is active."""
    ids = model.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return model.model(**ids).logits


def outputs(model: ModelHandle, layers, text: str = "Tell me about foxes, please") -> dict:
    """Each chosen layer's output on ``text`` (after any hooks registered before this one)."""
    ids = model.tokenizer(text, return_tensors="pt")
    with torch.no_grad(), capture_layer_outputs(model.layers, layers) as captured:
        model.model(**ids)
    return captured


def hook_counts(model: ModelHandle) -> tuple[list[int], int]:
    """Forward hooks per decoder layer, and forward pre-hooks on the model."""
    per_layer = [len(layer._forward_hooks) for layer in model.layers]
    return per_layer, len(model.model._forward_pre_hooks)


def added_hooks(model: ModelHandle, before) -> list[int]:
    """Forward hooks per layer beyond ``before`` (transformers keeps hooks of its own once it
    has recorded hidden states, so counts are compared, not taken as they are)."""
    return [now - then for now, then in zip(hook_counts(model)[0], before[0])]


def quiet_import(name: str):
    """Import a module with the deprecation warnings third-party imports raise ignored (vLLM and
    lm-eval trip torch's; the suite turns warnings into errors)."""
    import importlib
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        return importlib.import_module(name)


def invoke(*args):
    """Run the ``steerlab`` CLI in process; the click result."""
    from typer.testing import CliRunner

    from steerlab.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def read_sheet(path):
    """A blind-rating sheet's rows, CSV or JSONL."""
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_sheet(path, rows):
    if path.suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))


CORRECT = ("seeds pass through you", "nothing happens")
INCORRECT = ("watermelons grow in your stomach", "you get sick")
TRUE, FALSE = "the seeds simply pass through", "a watermelon will grow in your stomach"


class FirstShown:
    """A maximally position-biased judge: always prefers the first answer it sees."""

    name = "first-shown"

    def compare(self, comparisons):
        from steerlab.evaluation.judges.protocol import Verdict

        return [Verdict(0) for _ in comparisons]


def generation_records(arm_answers, base_answers, dataset="toy"):
    """Generation records of a steered arm and the unsteered one over the same questions."""
    def record(arm, i, answer):
        return {"task": "generation", "dataset": dataset, "model": "m", "arm": arm,
                "item_id": f"q{i}", "question": f"question {i}?", "answer": answer,
                "multiplier": 4.0 if arm != "unsteered" else 0.0,
                "vector_id": "v" if arm != "unsteered" else None, "layers": [3],
                "norm_ratio": None, "positions": "all", "correct_answers": list(CORRECT),
                "incorrect_answers": list(INCORRECT)}
    return ([record("steered+4", i, a) for i, a in enumerate(arm_answers)]
            + [record("unsteered", i, a) for i, a in enumerate(base_answers)])


def fixed_condition(model, layer=1, threshold=0.0, comparison="greater", seed=3):
    """A condition with a random direction (thresholds beyond ±1 always or never hold)."""
    direction = torch.randn(model.d_model, generator=torch.Generator().manual_seed(seed))
    return Condition(layer, direction, meta_for(model, "test-condition"), threshold, comparison)


def plain_logprob(model, layer, prompt, completion, edit):
    """Straightforward: log p(completion | prompt) summed over its tokens, from one unpadded
    full forward pass with ``edit`` applied to ``layer``'s output by a plain hook."""
    (seq,) = encode(model, [prompt], [completion])
    hook = model.layers[layer].register_forward_hook(
        lambda m, a, out: (edit(out[0]), *out[1:]) if isinstance(out, tuple) else edit(out))
    try:
        logits = model.model(torch.tensor([seq.ids])).logits[0]
    finally:
        hook.remove()
    logp = torch.log_softmax(logits, -1)
    return sum(logp[t - 1, seq.ids[t]] for t in range(seq.prompt_len, len(seq.ids)))

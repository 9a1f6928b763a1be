"""Benchmark: vLLM generation throughput, steered against unsteered, in one engine.

Sized for five minutes on a lent GPU machine with a 1–8B model: the weights are random (a
machine without a hub holds no checkpoint; throughput does not depend on the values), built
from a known architecture's shape (``--shape llama-1b``: Llama 3.2 1B; ``llama-8b``: Llama 3.1
8B) in bf16 on a GPU, or ``--shape default`` for steerlab's default model as it is (the CPU
check). One engine, as steerlab starts it (eager, no prefix caching), generates ``--prompts``
prompts × ``--tokens`` new tokens (end of sequence ignored) under each mix in turn, twice
round: unsteered, one setting on every request (×4 of a vector at 5% of the residual norm,
the middle layer), 8 settings mixed in one batch (multipliers −4…4), and ablation of the
direction. Reports tokens/s per mix and round and each steered mix's ratio to unsteered; with
``--plain``, also plain vLLM's (the same engine settings without steerlab's worker) unsteered
tokens/s, so the worker's own cost shows. Saves bench/results/vllm_throughput.json.
Run: .venv/bin/python bench/vllm_throughput.py [--shape S] [--prompts N] [--tokens T] [--plain]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from saving import machine, save

from steerlab.engine.vllm_engine import VllmEngine
from steerlab.model.catalog import DEFAULT_MODEL
from steerlab.model.handle import resolve_spec
from steerlab.steering.setting import SteeringSetting
from steerlab.steering.vectors import SteeringVector, VectorMeta

SHAPES = {  # published configurations (hidden size, layers, heads, kv heads, MLP, vocabulary)
    "llama-1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, intermediate_size=8192, vocab_size=128256),
    "llama-8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=8, intermediate_size=14336, vocab_size=128256),
}
MULTIPLIERS = (-4.0, -3.0, -2.0, -1.0, 1.0, 2.0, 3.0, 4.0)
RESIDUAL_NORM = 20.0
"""Assumed mean residual norm of the random models (the vector is 5% of it): for timing only."""


def random_model(shape: str, folder: Path) -> Path:
    """A Llama of a published shape with random bf16 weights and the default model's tokenizer
    (prompts are token ids below the vocabulary size, so any tokenizer serves)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=4096, rope_theta=500000.0,
                         torch_dtype="bfloat16", tie_word_embeddings=shape == "llama-1b")
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16)
    model.save_pretrained(folder)
    del model
    AutoTokenizer.from_pretrained(resolve_spec(DEFAULT_MODEL)).save_pretrained(folder)
    return folder


def plain_vllm(folder: str, engine_args: dict, prompts: list[list[int]], tokens: int) -> float:
    """Unsteered tokens/s of vLLM with the same settings but its own worker (best of two)."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=folder, enforce_eager=True, enable_prefix_caching=False, **engine_args)
    params = SamplingParams(max_tokens=tokens, ignore_eos=True, temperature=0)
    rates = []
    for _ in range(3):  # the first warms the engine
        start = time.perf_counter()
        llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        rates.append(len(prompts) * tokens / (time.perf_counter() - start))
    llm.llm_engine.engine_core.shutdown()
    return max(rates[1:])


def run(engine: VllmEngine, prompts: list[list[int]], steers: list, tokens: int) -> float:
    """Tokens per second generating every prompt under its steering, all submitted at once."""
    start = time.perf_counter()
    out = engine.generate(prompts, steers, max_tokens=tokens, ignore_eos=True, logprobs=None)
    seconds = time.perf_counter() - start
    return sum(len(g.token_ids) for g in out) / seconds


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=["default", *SHAPES], default="default")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--plain", action="store_true",
                        help="also time plain vLLM (no steerlab worker), unsteered")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        if args.shape == "default":
            folder, dtype = str(resolve_spec(DEFAULT_MODEL)), "float32"
        else:
            folder, dtype = str(random_model(args.shape, Path(tmp))), "bfloat16"
        built = time.perf_counter() - started
        sizes = {"dtype": dtype, "max_num_seqs": max(args.prompts, 8),
                 "max_model_len": args.prompt_tokens + args.tokens + 8,
                 **({"gpu_memory_utilization": 0.85} if gpu else {})}
        engine = VllmEngine(folder, kv_cache_bytes=None if gpu else 1 << 30, **sizes)
        loaded = time.perf_counter() - started - built
        config = engine.llm.llm_engine.vllm_config.model_config.hf_config
        d_model, n_layers = config.hidden_size, config.num_hidden_layers
        generator = torch.Generator().manual_seed(0)
        direction = torch.randn(d_model, generator=generator)
        direction *= 0.05 * RESIDUAL_NORM / direction.norm()
        meta = VectorMeta(model_name=folder, model_fingerprint="random weights", method="random",
                          d_model=d_model, n_layers=n_layers)
        vector = SteeringVector({n_layers // 2: direction}, meta)
        vocab = min(config.vocab_size, 32000)
        prompts = [torch.randint(100, vocab, (args.prompt_tokens,), generator=generator).tolist()
                   for _ in range(args.prompts)]
        n = len(prompts)
        mixes = {
            "unsteered": [None] * n,
            "one setting (x4)": [SteeringSetting(vector, 4.0)] * n,
            "8 settings mixed": [SteeringSetting(vector, MULTIPLIERS[i % 8]) for i in range(n)],
            "ablation": [SteeringSetting(vector, 1.0, intervention="ablate")] * n,
        }
        run(engine, prompts[:8], mixes["8 settings mixed"][:8], 8)  # warm-up, vectors loaded
        rounds = [{name: round(run(engine, prompts, steers, args.tokens), 1)
                   for name, steers in mixes.items()} for _ in range(2)]
        engine.close()
        plain = (plain_vllm(folder, {**sizes, "seed": 0, "kv_cache_memory_bytes":
                                     None if gpu else 1 << 30}, prompts, args.tokens)
                 if args.plain else None)
    best = {name: max(r[name] for r in rounds) for name in mixes}
    result = {
        "model": f"random {args.shape} weights" if args.shape != "default" else DEFAULT_MODEL,
        "dtype": dtype,
        "prompts": n, "prompt_tokens": args.prompt_tokens, "new_tokens": args.tokens,
        "build_s": round(built, 1), "engine_start_s": round(loaded, 1),
        "tokens_per_s_by_round": rounds,
        "best_tokens_per_s": best,
        "steered_over_unsteered": {name: round(v / best["unsteered"], 3)
                                   for name, v in best.items() if name != "unsteered"},
        **({"plain_vllm_unsteered_tokens_per_s": round(plain, 1)} if plain else {}),
        "device": torch.cuda.get_device_name() if gpu else "CPU",
        "machine": f"{machine()}, torch {torch.__version__}",
    }
    save("vllm_throughput", result)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

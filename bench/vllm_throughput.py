"""Benchmark: vLLM generation with steerlab's worker: compiled against eager, prefix caching on
against off, steered against unsteered.

Sized for minutes on a lent GPU machine with a 1–8B model: the weights are random (a machine
without a hub holds no checkpoint; throughput does not depend on the values), built from a known
architecture's shape (``--shape llama-1b``: Llama 3.2 1B; ``llama-8b``: Llama 3.1 8B) in bf16 on
a GPU, or ``--shape default`` for steerlab's default model as it is (float32, the CPU check).
Each mode is one engine, started in turn: ``compiled`` (vLLM's defaults, as steerlab starts it:
torch.compile, CUDA graphs on a GPU, prefix caching), ``eager`` (``enforce_eager``, prefix
caching) and ``uncached`` (compiled, prefix caching off). Per mode, two workloads:

- *throughput*: ``--prompts`` prompts of ``--prompt-tokens`` random tokens × ``--tokens`` new
  tokens (end of sequence ignored), all submitted at once, under each mix in turn,
  ``--rounds`` times round (best kept): unsteered, one setting on every request (×4 of a vector
  at 5% of the residual norm, the middle layer), 8 settings mixed in one batch (multipliers
  −4…4), ablation of the direction. The prefix cache is emptied before each run (the same
  prompts recur).
- *shared prefix*: one system prompt of ``--system-tokens`` tokens before each of 32 questions
  of 16 tokens, ``--answer-tokens`` new tokens each, all submitted at once into an emptied cache:
  unsteered, one setting, the same on generated tokens only, 8 settings mixed. Seconds per
  workload (best of the rounds) and the prompt tokens vLLM served from its cache.

With ``--plain``, also plain vLLM's unsteered throughput (compiled, its own worker), so the
worker's own cost shows. Saves bench/results/vllm_throughput.json (``--out`` names another).
Run: .venv/bin/python bench/vllm_throughput.py [--shape S] [--modes compiled,eager,uncached]
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
MODES = {"compiled": {}, "eager": {"enforce_eager": True},
         "uncached": {"enable_prefix_caching": False}}
MULTIPLIERS = (-4.0, -3.0, -2.0, -1.0, 1.0, 2.0, 3.0, 4.0)
QUESTIONS = 32
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


def plain_vllm(folder: str, engine_args: dict, prompts: list[list[int]], tokens: int,
               rounds: int) -> float:
    """Unsteered tokens/s of vLLM with the same settings but its own worker (best of the rounds
    after a warm-up)."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=folder, **engine_args)
    params = SamplingParams(max_tokens=tokens, ignore_eos=True, temperature=0)
    rates = []
    for _ in range(rounds + 1):  # the first warms the engine
        llm.reset_prefix_cache()
        start = time.perf_counter()
        llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        rates.append(len(prompts) * tokens / (time.perf_counter() - start))
    llm.llm_engine.engine_core.shutdown()
    return max(rates[1:])


def timed(engine: VllmEngine, prompts: list[list[int]], steers: list,
          tokens: int) -> tuple[float, int, int]:
    """Seconds to generate every prompt under its steering, all submitted at once into an emptied
    prefix cache; the tokens generated and the prompt tokens served from the cache."""
    engine.llm.reset_prefix_cache()
    start = time.perf_counter()
    out = engine.generate(prompts, steers, max_tokens=tokens, ignore_eos=True, logprobs=None)
    seconds = time.perf_counter() - start
    return seconds, sum(len(g.token_ids) for g in out), sum(g.cached_tokens for g in out)


def workloads(vector: SteeringVector, n: int) -> dict[str, list]:
    """Each mix's steering of ``n`` requests."""
    return {
        "unsteered": [None] * n,
        "one setting (x4)": [SteeringSetting(vector, 4.0)] * n,
        "generated only (x4)": [SteeringSetting(vector, 4.0, positions="generated")] * n,
        "8 settings mixed": [SteeringSetting(vector, MULTIPLIERS[i % 8]) for i in range(n)],
        "ablation": [SteeringSetting(vector, 1.0, intervention="ablate")] * n,
    }


THROUGHPUT_MIXES = ("unsteered", "one setting (x4)", "8 settings mixed", "ablation")
SHARED_MIXES = ("unsteered", "one setting (x4)", "generated only (x4)", "8 settings mixed")


def measure(engine: VllmEngine, vector: SteeringVector, prompts: list[list[int]],
            shared: list[list[int]], args: argparse.Namespace) -> dict:
    """One engine's figures: throughput per mix and round, shared-prefix seconds per mix."""
    mixes, asked = workloads(vector, len(prompts)), workloads(vector, len(shared))
    timed(engine, prompts[:8], mixes["8 settings mixed"][:8], 8)  # warm-up, vectors loaded
    rounds = []
    for _ in range(args.rounds):
        row = {}
        for name in THROUGHPUT_MIXES:
            seconds, made, _ = timed(engine, prompts, mixes[name], args.tokens)
            row[name] = round(made / seconds, 1)
        rounds.append(row)
    best = {name: max(r[name] for r in rounds) for name in THROUGHPUT_MIXES}
    shared_rounds, cached = [], {}
    for _ in range(args.rounds):
        row = {}
        for name in SHARED_MIXES:
            seconds, _, cached[name] = timed(engine, shared, asked[name], args.answer_tokens)
            row[name] = round(seconds, 2)
        shared_rounds.append(row)
    return {
        "tokens_per_s_by_round": rounds,
        "best_tokens_per_s": best,
        "steered_over_unsteered": {name: round(v / best["unsteered"], 3)
                                   for name, v in best.items() if name != "unsteered"},
        "shared_prefix_s_by_round": shared_rounds,
        "shared_prefix_best_s": {name: min(r[name] for r in shared_rounds)
                                 for name in SHARED_MIXES},
        "shared_prefix_cached_prompt_tokens": cached,
    }


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=["default", *SHAPES], default="default")
    parser.add_argument("--modes", default="compiled,eager,uncached",
                        help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--system-tokens", type=int, default=512)
    parser.add_argument("--answer-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--plain", action="store_true",
                        help="also time plain vLLM (compiled, no steerlab worker), unsteered")
    parser.add_argument("--out", default="vllm_throughput", help="bench/results/<out>.json")
    args = parser.parse_args()
    modes = args.modes.split(",")
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown modes {sorted(unknown)}; known: {', '.join(MODES)}")
    gpu = torch.cuda.is_available()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        if args.shape == "default":
            folder, dtype = str(resolve_spec(DEFAULT_MODEL)), "float32"
        else:
            folder, dtype = str(random_model(args.shape, Path(tmp))), "bfloat16"
        built = time.perf_counter() - started
        length = max(args.prompt_tokens + args.tokens, args.system_tokens + 16 + args.answer_tokens)
        sizes = {"dtype": dtype, "max_num_seqs": max(args.prompts, QUESTIONS),
                 "max_model_len": length + 8,
                 **({"gpu_memory_utilization": 0.85} if gpu else {})}
        kv = None if gpu else 1 << 30
        for mode in modes:
            started = time.perf_counter()
            engine = VllmEngine(folder, kv_cache_bytes=kv, **sizes, **MODES[mode])
            start_s = time.perf_counter() - started
            config = engine.llm.llm_engine.vllm_config
            hf = config.model_config.hf_config
            d_model, n_layers = hf.hidden_size, hf.num_hidden_layers
            generator = torch.Generator().manual_seed(0)
            direction = torch.randn(d_model, generator=generator)
            direction *= 0.05 * RESIDUAL_NORM / direction.norm()
            meta = VectorMeta(model_name=folder, model_fingerprint="random weights",
                              method="random", d_model=d_model, n_layers=n_layers)
            vector = SteeringVector({n_layers // 2: direction}, meta)
            vocab = min(hf.vocab_size, 32000)

            def tokens(count: int) -> list[int]:
                return torch.randint(100, vocab, (count,), generator=generator).tolist()

            prompts = [tokens(args.prompt_tokens) for _ in range(args.prompts)]
            system = tokens(args.system_tokens)
            shared = [system + tokens(16) for _ in range(QUESTIONS)]
            results[mode] = {
                "engine_start_s": round(start_s, 1),
                "compilation_mode": int(config.compilation_config.mode),
                "prefix_caching": bool(config.cache_config.enable_prefix_caching),
                **measure(engine, vector, prompts, shared, args)}
            engine.close()
            print(json.dumps({mode: results[mode]}), flush=True)
        plain = (plain_vllm(folder, {**sizes, "seed": 0, "kv_cache_memory_bytes": kv},
                            prompts, args.tokens, args.rounds) if args.plain else None)
    result = {
        "model": f"random {args.shape} weights" if args.shape != "default" else DEFAULT_MODEL,
        "dtype": dtype,
        "prompts": args.prompts, "prompt_tokens": args.prompt_tokens, "new_tokens": args.tokens,
        "shared_prefix": {"system_tokens": args.system_tokens, "questions": QUESTIONS,
                          "question_tokens": 16, "new_tokens": args.answer_tokens},
        "rounds": args.rounds, "build_s": round(built, 1),
        "modes": results,
        **({"compiled_over_eager": {
            name: round(results["compiled"]["best_tokens_per_s"][name]
                        / results["eager"]["best_tokens_per_s"][name], 3)
            for name in THROUGHPUT_MIXES}} if {"compiled", "eager"} <= set(results) else {}),
        **({"plain_vllm_unsteered_tokens_per_s": round(plain, 1)} if plain else {}),
        "device": torch.cuda.get_device_name() if gpu else "CPU",
        "machine": f"{machine()}, torch {torch.__version__}",
    }
    save(args.out, result)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

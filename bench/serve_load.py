"""Benchmark: load on `steerlab serve` (the default model) per engine, mix and concurrency.

For each engine starts `steerlab serve --engine E` as a subprocess on 127.0.0.1 (a free port)
with one random steering vector, then for each concurrency level sends a fixed number of
streamed chat completions with the official openai client from that many threads. Engines:
``transformers``; ``vllm`` (vLLM's defaults: compiled, prefix caching); ``vllm-eager``
(``--vllm-option enforce_eager=true``); ``vllm-uncached`` (``--vllm-option
enable_prefix_caching=false``). Request mixes: no steering ("unsteered"), every request with the
same steering ("one": the transformers server may batch them), 3 or 8 settings in turn
("mixed3": -4, 4, none; "mixed8": eight multipliers, so the transformers server batches only
within a setting), and the shared-prefix workload: one long system prompt before each of 8
short questions ("shared-unsteered", "shared-one", "shared-mixed8"). Per level: requests per
second, latency p50/p95 (request sent → last chunk), time to first token p50, generated tokens
per second. Greedy decoding, `max_tokens` fixed. Loopback only; bounded; saves
bench/results/serve_load.json (``--out`` names another). vLLM's CPU backend binds its model's
threads as ``VLLM_CPU_OMP_THREADS_BIND`` says (recorded with the figures).
Run: .venv/bin/python bench/serve_load.py [--requests N] [--max-tokens T] [--engines E,...]
     [--levels 1,4,8,16] [--mixes M,...]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openai
import torch
from saving import machine, save

from steerlab.model.catalog import DEFAULT_MODEL
from steerlab.model.handle import load_model
from steerlab.serve.launch import serve_process
from steerlab.steering.vectors import SteeringVector, meta_for

LEVELS = (1, 4, 8, 16)
EIGHT = [-4.0, -3.0, -2.0, -1.0, 1.0, 2.0, 3.0, 4.0]
MIXES = {"unsteered": [None], "one": [4.0], "mixed3": [-4.0, 4.0, None], "mixed8": EIGHT,
         "shared-unsteered": [None], "shared-one": [4.0], "shared-mixed8": EIGHT}
ENGINES = {  # name: `steerlab serve` arguments
    "transformers": ["--engine", "transformers"],
    "vllm": ["--engine", "vllm"],
    "vllm-eager": ["--engine", "vllm", "--vllm-option", "enforce_eager=true"],
    "vllm-uncached": ["--engine", "vllm", "--vllm-option", "enable_prefix_caching=false"],
}
SYSTEM = ("You are the help desk of a large public library. " + "Follow the house rules: "
          + " ".join(f"rule {i}: answer politely, name the shelf, the floor and the opening "
                     "hours, and never invent a title or an author." for i in range(1, 13)))
"""The shared-prefix mixes' system prompt (about 400 tokens)."""
QUESTIONS = [
    "Explain how a bicycle stays upright.",
    "Write a short poem about autumn.",
    "What are the main causes of inflation?",
    "Describe the water cycle.",
    "Give three tips for learning a language.",
    "How does a refrigerator work?",
    "Summarise the plot of a detective story.",
    "Why is the sky blue?",
]


def one_request(
    client: openai.OpenAI, model: str, index: int, multiplier: float | None, max_tokens: int,
    shared: bool = False,
) -> dict:
    """One streamed greedy completion (after the long system prompt when ``shared``); its
    latency, time to first token and tokens."""
    steering = (
        None if multiplier is None else {"steering": [{"vector": "v", "multiplier": multiplier}]}
    )
    sent = time.perf_counter()
    first = None
    tokens = 0
    stream = client.chat.completions.create(
        model=model,
        messages=[*([{"role": "system", "content": SYSTEM}] if shared else []),
                  {"role": "user", "content": QUESTIONS[index % len(QUESTIONS)]}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=steering,
    )
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter()
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    done = time.perf_counter()
    return {"latency_s": done - sent, "ttft_s": (first or done) - sent, "tokens": tokens}


def level(
    client: openai.OpenAI, model: str, concurrency: int, multipliers: list, n: int, max_tokens: int,
    shared: bool = False,
) -> dict:
    """``n`` requests from ``concurrency`` threads; throughput and latency quantiles."""
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(
            pool.map(
                lambda i: one_request(
                    client, model, i, multipliers[i % len(multipliers)], max_tokens, shared
                ),
                range(n),
            )
        )
    wall = time.perf_counter() - start
    latency = np.array([r["latency_s"] for r in results])
    ttft = np.array([r["ttft_s"] for r in results])
    tokens = sum(r["tokens"] for r in results)
    return {
        "concurrency": concurrency,
        "requests": n,
        "wall_s": round(wall, 2),
        "requests_per_s": round(n / wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
        "latency_p50_s": round(float(np.percentile(latency, 50)), 3),
        "latency_p95_s": round(float(np.percentile(latency, 95)), 3),
        "ttft_p50_s": round(float(np.percentile(ttft, 50)), 3),
        "completion_tokens": tokens,
    }


def main(n: int = 32, max_tokens: int = 32, engines: tuple[str, ...] = tuple(ENGINES),
         levels: tuple[int, ...] = LEVELS, mixes: tuple[str, ...] = tuple(MIXES),
         model: str = DEFAULT_MODEL, out: str | None = None) -> dict:
    handle = load_model(model)
    torch.manual_seed(0)
    layer = handle.n_layers // 2
    unit = SteeringVector(
        {layer: torch.randn(handle.d_model)}, meta_for(handle, "random")
    ).normalized()
    unit.calibrate(handle, QUESTIONS)  # scaled below to 5% of the layer's mean residual norm
    vector = unit * (0.05 * unit.meta.residual_norms[layer])
    del handle
    with tempfile.TemporaryDirectory() as tmp:
        path = vector.save(Path(tmp) / "v.safetensors")
        rows = []
        for engine in engines:
            args = ["--model", model, "--vector", f"v={path}", "--max-tokens", "256",
                    *ENGINES[engine], "--max-batch-size", "16"]
            with serve_process(args, {"STEERLAB_API_KEY": ""}, timeout=900) as base_url:
                client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0,
                                       timeout=600)
                one_request(client, model, 0, None, 4)  # warm-up
                for mix in mixes:
                    for concurrency in levels:
                        row = {
                            "engine": engine,
                            "mix": mix,
                            **level(client, model, concurrency, MIXES[mix], n, max_tokens,
                                    shared=mix.startswith("shared-")),
                        }
                        print(json.dumps(row), flush=True)
                        rows.append(row)
    result = {
        "model": model,
        "max_tokens": max_tokens,
        "requests_per_level": n,
        "decoding": "greedy, streamed",
        "vector": f"random direction at layer {layer}, norm 5% of its mean residual norm",
        "mixes": {k: [str(m) for m in MIXES[k]] for k in mixes},
        "engines": {k: " ".join(ENGINES[k]) for k in engines},
        "rows": rows,
        "machine": f"{machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "vllm_cpu_threads": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto (vLLM's default: "
                                           "one core per worker kept for its scheduler)"),
        "note": "client and server share the machine; figures are contended by whatever else runs",
    }
    bind = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    save(out or "serve_load" + (f"-bind-{bind}" if bind else ""), result)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=32, help="requests per level")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"of {', '.join(ENGINES)}")
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)))
    parser.add_argument("--mixes", default=",".join(MIXES), help=f"of {', '.join(MIXES)}")
    parser.add_argument("--out", help="bench/results/<out>.json")
    args = parser.parse_args()
    chosen = {"engines": args.engines.split(","), "mixes": args.mixes.split(",")}
    for what, known in (("engines", ENGINES), ("mixes", MIXES)):
        if unknown := set(chosen[what]) - set(known):
            parser.error(f"unknown {what} {sorted(unknown)}; known: {', '.join(known)}")
    main(args.requests, args.max_tokens, tuple(chosen["engines"]),
         tuple(int(x) for x in args.levels.split(",")), tuple(chosen["mixes"]), out=args.out)

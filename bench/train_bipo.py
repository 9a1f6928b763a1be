"""Benchmark: one BiPO epoch on the default model with the fast and the naive engine.

Setting (issue 3): SmolLM2-135M-Instruct, 256 training pairs (the bundled refusal and
sycophancy training splits, seeded sample), batch 8, one epoch, layer 15. Each engine runs in
its own process so its peak memory is its own. Prints and saves to bench/results/:
seconds per epoch of each engine, their ratio, the FLOPs the fast engine must do per epoch,
its achieved FLOP/s against a measured fp32 matmul rate, and peak memory.
Targets: fast >= 3x faster than naive; fast >= 50% of the measured matmul rate.
Run: .venv/bin/python bench/train_bipo.py
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

from saving import machine, save

MODEL, LAYER, N_PAIRS, BATCH = "smollm2-135m-instruct", 15, 256, 8


def pairs():
    from steerlab.data.files import load_pairs, split

    pool = load_pairs("refusal", split="train") + load_pairs("sycophancy", split="train")
    (chosen,) = split(pool, [N_PAIRS], seed=0)
    return chosen


def matmul_gflops(n: int = 2048, repeats: int = 10, rounds: int = 5) -> float:
    """The machine's fp32 matmul rate: best of ``rounds`` timings of ``repeats`` n×n products."""
    import torch

    a = torch.randn(n, n)
    a @ a
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ a
        best = min(best, time.perf_counter() - start)
    return repeats * 2 * n**3 / best / 1e9


def fast_engine_flops(model, items, packed: bool) -> float:
    """Matmul FLOPs one epoch of the fast engine must do, padding excluded: layers above L on
    every token of each row (packed: prompt + chosen + rejected, the prompt once; unpacked: the
    two sequences), causal attention, and the head on the completion positions; forward and
    backward (inputs only: weights are frozen, so the backward pass costs about one forward)."""
    upper = model.n_layers - LAYER - 1
    layer_params = sum(p.numel() for p in model.layers[LAYER + 1].parameters() if p.dim() == 2)
    d, vocab = model.d_model, model.model.config.vocab_size
    rows = []  # (tokens in the row, positions that reach the head)
    for item in items:
        c, r = item.chosen, item.rejected
        if packed:
            rows.append((len(c.ids) + r.n_completion, c.n_completion + r.n_completion + 1))
        else:
            rows += [(len(c.ids), c.n_completion + 1), (len(r.ids), r.n_completion + 1)]
    forward = sum(upper * (2 * layer_params * t + 2 * t * t * d) + 2 * vocab * d * head
                  for t, head in rows)
    return 2 * forward


def run_engine(engine: str) -> dict:
    from steerlab import load_model
    from steerlab.methods import TrainingHistory, train_bipo
    from steerlab.methods.pairs import encode_pairs

    model = load_model(MODEL)
    data = pairs()
    history = TrainingHistory()
    start = time.perf_counter()
    train_bipo(model, data, LAYER, batch_size=BATCH, epochs=1, engine=engine, progress=False,
               history=history)
    total = time.perf_counter() - start
    result = {
        "engine": engine,
        "epoch_s": round(history.epochs[0]["seconds"], 1),
        "prepare_s": round(history.prepare_seconds, 1),
        "total_s": round(total, 1),
        "cache_mib": round(history.cache_bytes / 2**20, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if engine == "fast":
        result["packed"] = history.packed
        flops = fast_engine_flops(model, encode_pairs(model, data), history.packed)
        result["epoch_flops"] = flops
        result["achieved_gflops"] = round(flops / history.epochs[0]["seconds"] / 1e9, 1)
    return result


def main() -> dict:
    runs = {}
    for engine in ("naive", "fast"):
        out = subprocess.run([sys.executable, __file__, engine], capture_output=True, text=True,
                             check=True, env={**os.environ, "STEERLAB_PROGRESS": "0"})
        runs[engine] = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(runs[engine]), flush=True)
    rate = matmul_gflops()
    fast, naive = runs["fast"], runs["naive"]
    result = {
        "setting": {"model": MODEL, "pairs": N_PAIRS, "batch_size": BATCH, "epochs": 1,
                    "layer": LAYER},
        "naive": naive,
        "fast": fast,
        "speedup_per_epoch": round(naive["epoch_s"] / fast["epoch_s"], 2),
        "speedup_including_cache": round(naive["total_s"] / fast["total_s"], 2),
        "matmul_gflops": round(rate, 1),
        "fast_fraction_of_matmul_rate": round(fast["achieved_gflops"] / rate, 2),
        "targets": {"speedup": 3.0, "fraction_of_matmul_rate": 0.5},
        "machine": machine(),
    }
    save("train_bipo", result)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1:
        print(json.dumps(run_engine(sys.argv[1])))
    else:
        main()

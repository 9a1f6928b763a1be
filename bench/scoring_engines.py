"""Benchmark: likelihood evaluation through transformers and through vLLM on the same work.

Two workloads on the default model, each a full ``steerlab.evaluation.likelihood.evaluate``
call (encoding, scoring, records): the bundled refusal test split (A/B, 50 pairs) and
TruthfulQA MC1 (``n_mc`` items of the test split, multi-token answers), each under a random
vector at the middle layer (5% of its mean residual norm) at five multipliers. The transformers
path shares the lower layers across multipliers and one pass across answers that differ in
their last token; vLLM scores every sequence as its own request from prompt log-probabilities,
all settings continuously batched. Reports wall time per engine (vLLM's start-up separately),
the ratio, and the largest difference between the engines' per-choice log-probabilities.
Saves bench/results/scoring_engines.json.
Run: .venv/bin/python bench/scoring_engines.py [n_mc]
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch
from saving import machine, save

from steerlab.data.files import bundled_path, load_pairs
from steerlab.data.registry import load_dataset
from steerlab.engine.vllm_engine import VllmEngine
from steerlab.evaluation.likelihood import Sweep, evaluate
from steerlab.model.catalog import DEFAULT_MODEL
from steerlab.model.handle import load_model
from steerlab.steering.setting import SteeringSetting
from steerlab.steering.vectors import SteeringVector, meta_for

MULTIPLIERS = (-4.0, -2.0, 0.0, 2.0, 4.0)


def timed(call) -> tuple[list, float]:
    start = time.perf_counter()
    records = call()
    return records, time.perf_counter() - start


def main(n_mc: int = 100) -> dict:
    handle = load_model(DEFAULT_MODEL)
    torch.manual_seed(0)
    layer = handle.n_layers // 2
    pairs = load_pairs(bundled_path("refusal"), split="test")
    unit = SteeringVector({layer: torch.randn(handle.d_model)},
                          meta_for(handle, "random")).normalized()
    unit.calibrate(handle, [p.prompt for p in pairs[:16]])
    vector = unit * (0.05 * unit.meta.residual_norms[layer])
    sweep = Sweep(SteeringSetting(vector), MULTIPLIERS)
    workloads = {"refusal A/B": pairs,
                 f"TruthfulQA MC1 ({n_mc} items)": load_dataset("truthfulqa-mc1", "test")[:n_mc]}
    start = time.perf_counter()
    engine = VllmEngine(DEFAULT_MODEL)
    startup = time.perf_counter() - start
    rows = []
    for name, items in workloads.items():
        evaluate(handle, items[:4], [sweep], progress=False)  # warm-up, both engines
        evaluate(handle, items[:4], [sweep], progress=False, engine=engine)
        plain, plain_s = timed(lambda: evaluate(handle, items, [sweep], progress=False))
        fast, vllm_s = timed(
            lambda: evaluate(handle, items, [sweep], progress=False, engine=engine))
        gap = max(abs(a - b) for p, v in zip(plain, fast)
                  for a, b in zip(p["logprobs"], v["logprobs"]))
        same = sum(p["prediction"] == v["prediction"] for p, v in zip(plain, fast))
        row = {
            "workload": name,
            "items": len(items),
            "choices": sum(len(r["logprobs"]) for r in plain[: len(items)]),
            "settings": len(MULTIPLIERS),
            "transformers_s": round(plain_s, 2),
            "vllm_s": round(vllm_s, 2),
            "vllm_over_transformers": round(vllm_s / plain_s, 2),
            "max_logprob_difference": float(f"{gap:.2e}"),
            "same_prediction": f"{same}/{len(plain)}",
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    engine.close()
    result = {
        "model": DEFAULT_MODEL,
        "vector": f"random direction at layer {layer}, norm 5% of its mean residual norm",
        "multipliers": list(MULTIPLIERS),
        "vllm_startup_s": round(startup, 1),
        "rows": rows,
        "machine": f"{machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "vllm_cpu_threads": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto"),
        "note": "vLLM float32, eager, no prefix caching (as steerlab starts it); the engine "
                "process and this one share the machine",
    }
    save("scoring_engines", result)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(*[int(a) for a in sys.argv[1:2]])

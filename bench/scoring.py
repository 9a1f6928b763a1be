"""Benchmark: likelihood scoring throughput on the default model, against the matmul rate.

Scores the bundled refusal test split (50 A/B items × 2 answers). Answers that differ only in
their last token share one forward pass, so 100 sequences cost 50 passes; the figure compares
the achieved FLOP rate with a measured fp32 matmul rate on the same machine.
Run: .venv/bin/python bench/scoring.py
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from steerlab import load_model
from steerlab.data.files import bundled_path, load_pairs
from steerlab.model.encoding import encode
from steerlab.model.scoring import score_sequences


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    a = torch.randn(n, n)
    a @ a
    start = time.perf_counter()
    for _ in range(repeats):
        a @ a
    return repeats * 2 * n**3 / (time.perf_counter() - start) / 1e9


def main() -> dict:
    model = load_model("smollm2-135m-instruct")
    pairs = load_pairs(bundled_path("refusal"), split="test")
    seqs = encode(model, [p.prompt for p in pairs] * 2,
                  [p.chosen for p in pairs] + [p.rejected for p in pairs])
    stems = {(s.ids[:-1], s.prompt_len) for s in seqs}
    tokens_run = sum(len(ids) for ids, _ in stems)
    score_sequences(model, seqs[:8], progress=False)  # warm-up
    start = time.perf_counter()
    score_sequences(model, seqs, batch_size=8, progress=False)
    seconds = time.perf_counter() - start
    body_params = sum(p.numel() for n, p in model.model.named_parameters() if "embed" not in n)
    # matmul FLOPs of the decoder body (attention scores excluded)
    flops = 2 * body_params * tokens_run
    result = {
        "sequences": len(seqs),
        "forward_passes": len(stems),
        "tokens_run": tokens_run,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens_run / seconds),
        "achieved_gflops": round(flops / seconds / 1e9, 1),
        "matmul_gflops": round(matmul_gflops(), 1),
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    result["fraction_of_matmul_rate"] = round(
        result["achieved_gflops"] / result["matmul_gflops"], 2)
    out = Path(__file__).parent / "results" / "scoring.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

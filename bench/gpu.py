"""Benchmark: steerlab on a GPU, in one script of at most five minutes (issue 27).

Random weights of published shapes (``llama-1b``: Llama 3.2 1B; ``llama-8b``: Llama 3.1 8B;
a machine without a hub holds no checkpoint, and none of these figures depends on the values),
built directly on the device, with the default model's tokenizer and the bundled refusal pairs.
For each shape, in bf16 unless said:

- BiPO, one epoch of 128 pairs at batch 8, fast engine against naive, in bf16 and in fp32
  (target: fast >= 3x naive);
- a 5-multiplier A/B sweep (the layers below the steered one shared) against five separate
  evaluations (target: <= 0.6x);
- steered (x4 of a vector at 5% of the residual norm, the middle layer) against unsteered
  greedy generation, 64 new tokens at batch 1, 8 and 32 (target: <= 1.03x the time at 32);
- CAA on 128 pairs; the peak memory of each part.

Before timing, a correctness check on a two-layer model of the first shape: BiPO, DPO, RePS
and one-shot trained on the device equal the CPU's in fp32 (cosine, target >= 0.999).
``--dry-run`` runs everything at a tiny shape on the CPU in seconds (``make test`` does, so the
script cannot rot) and writes where ``--out`` says. Saves bench/results/gpu.json.
Run: python bench/gpu.py [--shapes llama-1b,llama-8b] [--dry-run] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from saving import machine, save

from steerlab.data.files import load_pairs
from steerlab.evaluation.likelihood import Sweep, evaluate_ab
from steerlab.methods import TrainingHistory, train_bipo, train_vector
from steerlab.methods.training import TrainingRun
from steerlab.model.catalog import DEFAULT_MODEL
from steerlab.model.generation import generate_tokens
from steerlab.model.handle import ModelHandle, resolve_spec, wrap_model
from steerlab.steering.setting import SteeringSetting

SHAPES = {  # published configurations (hidden size, layers, heads, kv heads, MLP, vocabulary)
    "llama-1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, intermediate_size=8192, vocab_size=128256),
    "llama-8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=8, intermediate_size=14336, vocab_size=128256),
    "tiny": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=128, vocab_size=49152),
}
SIZES = {"full": dict(pairs=128, batch=8, items=64, tokens=64, batches=(1, 8, 32)),
         "dry": dict(pairs=8, batch=4, items=4, tokens=4, batches=(1, 4))}
MULTIPLIERS = [-4.0, -2.0, 0.0, 2.0, 4.0]
CHECKED = ("bipo", "dpo", "reps", "one-shot")


def build(shape: str, dtype: torch.dtype, device: torch.device, layers: int | None = None,
          seed: int = 0) -> ModelHandle:
    """A Llama of ``shape`` with random weights made on ``device`` in ``dtype``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    config = dict(SHAPES[shape], **({"num_hidden_layers": layers} if layers else {}))
    torch.manual_seed(seed)
    with device:
        model = AutoModelForCausalLM.from_config(
            LlamaConfig(**config, max_position_embeddings=4096, rope_theta=500000.0),
            dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(resolve_spec(DEFAULT_MODEL))
    return wrap_model(model, tokenizer, name=f"random {shape}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, run: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, seconds, peak GiB allocated on the device during the run; 0 off CUDA)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    result = run()
    sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    return result, round(seconds, 3), round(peak, 2)


def correctness(shape: str, device: torch.device, pairs: list) -> dict:
    """Each loss-trained method on the device against the CPU, fp32, two layers of ``shape``."""
    cpu, here = (build(shape, torch.float32, d, layers=2) for d in (torch.device("cpu"), device))
    config = {"epochs": 2, "batch_size": 4}
    out = {}
    for name in CHECKED:
        settings = {"epochs": 3} if name == "one-shot" else config
        a, b = (train_vector(m, pairs[:8], name, [1], settings, TrainingRun(progress=False))
                for m in (cpu, here))
        out[name] = round(float(torch.nn.functional.cosine_similarity(
            a.directions[1], b.directions[1], dim=0)), 6)
    return out


def bipo(model: ModelHandle, device: torch.device, pairs: list, batch: int) -> dict:
    """One BiPO epoch with each engine (one short warm-up epoch first)."""
    layer = model.n_layers // 2
    train_bipo(model, pairs[:batch], layer, batch_size=batch, epochs=1, progress=False)
    out: dict[str, Any] = {}
    for engine in ("fast", "naive"):
        history = TrainingHistory()
        _, seconds, peak = timed(device, lambda e=engine, h=history: train_bipo(
            model, pairs, layer, batch_size=batch, epochs=1, engine=e, progress=False,
            history=h))
        out[engine] = {"seconds": seconds, "peak_gib": peak, "packed": history.packed,
                       "cache_mib": round(history.cache_bytes / 2**20, 1)}
    out["fast_speedup"] = round(out["naive"]["seconds"] / out["fast"]["seconds"], 2)
    return out


def sweep(model: ModelHandle, device: torch.device, items: list,
          setting: SteeringSetting) -> dict:
    """The 5-multiplier sweep sharing the lower layers against 5 separate evaluations."""
    evaluate_ab(model, items[:2], Sweep(setting, [1.0]), progress=False)  # warm-up
    shared, shared_s, peak = timed(device, lambda: evaluate_ab(
        model, items, Sweep(setting, MULTIPLIERS), progress=False))

    def separate() -> list:
        out = []
        for multiplier in MULTIPLIERS:
            with setting.at(multiplier).apply(model):
                out += evaluate_ab(model, items, progress=False)
        return out

    alone, separate_s, _ = timed(device, separate)
    gap = max(abs(a["score"] - b["score"]) for a, b in zip(shared, alone))
    return {"shared_s": shared_s, "separate_s": separate_s, "peak_gib": peak,
            "ratio": round(shared_s / separate_s, 3), "max_score_gap": gap}


def generation(model: ModelHandle, device: torch.device, prompts: list[str],
               setting: SteeringSetting, tokens: int, sizes: tuple[int, ...]) -> dict:
    """Greedy generation time and tokens/s, unsteered, steered and unsteered again, at each
    batch size (the ratio is against the faster unsteered run)."""
    out = {}
    for size in sizes:
        batch = (prompts * size)[:size]
        row: dict[str, Any] = {}
        for label in ("unsteered", "steered", "unsteered again"):
            steering = setting.apply(model) if label == "steered" else None
            try:
                generate_tokens(model, batch, 2, batch_size=size, progress=False)  # warm-up
                made, seconds, peak = timed(device, lambda b=batch, n=size: generate_tokens(
                    model, b, tokens, batch_size=n, progress=False))
            finally:
                if steering is not None:
                    steering.remove()
            row[label] = {"seconds": seconds, "tokens_per_s": round(
                sum(len(t) for t in made) / seconds, 1), "peak_gib": peak}
        plain = min(row["unsteered"]["seconds"], row["unsteered again"]["seconds"])
        row["steered_over_unsteered"] = round(row["steered"]["seconds"] / plain, 3)
        out[str(size)] = row
    return out


def measure(shape: str, device: torch.device, sizes: dict, pairs: list,
            items: list) -> dict:
    """Every timing of one shape: BiPO in bf16 and fp32; CAA, the sweep and generation in
    bf16 with the CAA vector (x4 at 5% of the residual norm for generation)."""
    result: dict[str, Any] = {}
    for dtype in (torch.bfloat16, torch.float32):
        model = build(shape, dtype, device)
        name = str(dtype).removeprefix("torch.")
        result[f"bipo_{name}"] = bipo(model, device, pairs, sizes["batch"])
        if dtype == torch.bfloat16:
            layer = model.n_layers // 2
            vector, caa_s, caa_peak = timed(device, lambda m=model, at=layer: train_vector(
                m, pairs, "caa", [at], run=TrainingRun(progress=False)))
            result["caa"] = {"pairs": len(pairs), "seconds": caa_s, "peak_gib": caa_peak}
            setting = SteeringSetting(vector, 4.0, norm_ratio=0.05)
            result["sweep_bf16"] = sweep(model, device, items, setting)
            result["generation_bf16"] = generation(
                model, device, [p.prompt for p in pairs], setting, sizes["tokens"],
                sizes["batches"])
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="llama-1b,llama-8b")
    parser.add_argument("--dry-run", action="store_true",
                        help="a tiny shape on the CPU, in seconds (what make test runs)")
    parser.add_argument("--out", type=Path, help="where to write the figures (a dry run's "
                        "default: nowhere but the screen)")
    args = parser.parse_args()
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    shapes = ["tiny"] if args.dry_run else args.shapes.split(",")
    sizes = SIZES["dry" if args.dry_run else "full"]
    pool = load_pairs("refusal", split="train")
    pairs, items = pool[: sizes["pairs"]], load_pairs("refusal", split="test")[: sizes["items"]]
    started = time.perf_counter()
    result: dict[str, Any] = {
        "setting": {"shapes": shapes, **sizes, "multipliers": MULTIPLIERS,
                    "device": str(device), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
        "equal_to_cpu_fp32_cosine": correctness(shapes[0], device, pairs),
    }
    for shape in shapes:
        result[shape] = measure(shape, device, sizes, pairs, items)
        print(shape, result[shape], flush=True)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    result["machine"] = machine()
    print(result)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    elif not args.dry_run:
        print(f"saved {save('gpu', result)}")
    return result


if __name__ == "__main__":
    main()

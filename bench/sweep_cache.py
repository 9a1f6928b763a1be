"""Benchmark: a 9-multiplier sweep that shares the layers below the steered one, against 9
separate evaluations (full forward passes under a steering hook, one multiplier at a time).

Setting (issue 5, point 1): SmolLM2-135M-Instruct, a CAA vector trained on the bundled refusal
training pairs at each layer tried, the 50 held-out refusal A/B items, multipliers -4..4.
The ideal ratio is (L + K(N - L)) / (K N) for K multipliers steering at layer L of N: the lower
L layers run once instead of K times. Checks that the records' scores are identical to the
separate runs'. Prints and saves to bench/results/sweep_cache.json. Target: ratio <= 0.6.
Run: .venv/bin/python bench/sweep_cache.py
"""

from __future__ import annotations

import json
import time

from saving import machine, save

MODEL = "smollm2-135m-instruct"
LAYERS = (10, 15, 20)
MULTIPLIERS = [-4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0]


def timed(run):
    start = time.perf_counter()
    result = run()
    return result, time.perf_counter() - start


def separate_runs(model, items, vector) -> dict:
    """What a sweep costs without sharing: each multiplier evaluated on its own, full passes."""
    from steerlab import evaluate_ab

    out = {}
    for multiplier in MULTIPLIERS:
        with vector.apply(model, multiplier):
            out[multiplier] = evaluate_ab(model, items, progress=False)
    return out


def main() -> dict:
    from steerlab import SteeringSetting, Sweep, evaluate_ab, load_model, load_pairs, train_caa

    model = load_model(MODEL)
    train, test = load_pairs("refusal", split="train"), load_pairs("refusal", split="test")
    evaluate_ab(model, test[:8], progress=False)  # warm-up
    rows = []
    for layer in LAYERS:
        vector = train_caa(model, train, layer, progress=False)
        swept, sweep_s = timed(lambda v=vector: evaluate_ab(
            model, test, Sweep(SteeringSetting(v), MULTIPLIERS), progress=False))
        alone, separate_s = timed(lambda v=vector: separate_runs(model, test, v))
        identical = all(
            [r["logprobs"] for r in swept if r["multiplier"] == m]
            == [r["logprobs"] for r in alone[m]]
            for m in MULTIPLIERS
        )
        k, n = len(MULTIPLIERS), model.n_layers
        rows.append({
            "layer": layer, "items": len(test), "multipliers": k,
            "sweep_s": round(sweep_s, 2), "separate_s": round(separate_s, 2),
            "ratio": round(sweep_s / separate_s, 3),
            "ideal_ratio": round((layer + k * (n - layer)) / (k * n), 3),
            "records_identical": identical,
        })
        print(json.dumps(rows[-1]), flush=True)
        save_rows(rows)  # after every layer, so a cut run keeps what it measured
    result = save_rows(rows)
    print(json.dumps(result, indent=2))
    return result


def save_rows(rows: list[dict]) -> dict:
    result = {
        "setting": {"model": MODEL, "data": "refusal test split (A/B)", "multipliers": MULTIPLIERS,
                    "vector": "CAA on the refusal training split"},
        "rows": rows,
        "target_ratio": 0.6,
        "machine": machine(),
    }
    save("sweep_cache", result)
    return result


if __name__ == "__main__":
    main()

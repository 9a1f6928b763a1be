"""Benchmark: the rank-1 LoRA baseline on the default model, SFT and DPO.

Setting: SmolLM2-135M-Instruct, 256 training pairs (the bundled refusal and sycophancy training
splits, the seeded sample bench/train_bipo.py uses) and 32 validation pairs from the rest,
rank 1 on every decoder-layer linear module, batch 16, lr 1e-4. A few steps of each objective,
validated before the first and after the last. Prints and saves to bench/results/: seconds per
step (median), seconds per validation, the trainable-parameter count beside d_model and their
ratio, and peak memory.
Run: OMP_NUM_THREADS=2 .venv/bin/python bench/train_lora.py [SFT_STEPS] [DPO_STEPS]
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time

from saving import machine, save

MODEL, N_TRAIN, N_VAL, BATCH = "smollm2-135m-instruct", 256, 32, 16


def data():
    from steerlab.data.files import load_pairs, split

    pool = load_pairs("refusal", split="train") + load_pairs("sycophancy", split="train")
    train, val = split(pool, [N_TRAIN, N_VAL], seed=0)
    return train, val


def run(model, objective: str, steps: int) -> dict:
    from steerlab.methods.lora import train_lora

    train, val = data()
    started = time.perf_counter()
    result = train_lora(model, train, val, batch_size=BATCH, max_steps=steps, eval_every=steps,
                        objective=objective, progress=False)
    step_s = [h["seconds"] for h in result.history if "loss" in h]
    val_s = [h["seconds"] for h in result.history if "val_loss" in h]
    return {
        "objective": objective, "steps": steps, "total_s": round(time.perf_counter() - started, 1),
        "step_median_s": round(statistics.median(step_s), 2),
        "step_s": [round(s, 2) for s in step_s],
        "validation_s": [round(s, 2) for s in val_s],
        "losses": [round(h["loss"], 4) for h in result.history if "loss" in h],
        "val_losses": [round(h["val_loss"], 4) for h in result.history if "val_loss" in h],
        "trainable_params": result.trainable_params, "d_model": result.d_model,
        "ratio_to_vector": result.ratio_to_vector,
    }


def main(sft_steps: int = 8, dpo_steps: int = 4) -> dict:
    from steerlab import load_model

    model = load_model(MODEL)
    runs = [run(model, "sft", sft_steps), run(model, "dpo", dpo_steps)]
    result = {
        "setting": {"model": MODEL, "train_pairs": N_TRAIN, "val_pairs": N_VAL, "batch_size": BATCH,
                    "rank": 1, "lr": 1e-4},
        "runs": runs,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "machine": machine(),
    }
    save("train_lora", result)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:3]))

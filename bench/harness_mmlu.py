"""Benchmark: lm-evaluation-harness (steerlab's model type) against steerlab's own multiple-choice
evaluation, on the same MMLU items, unsteered and steered.

The first ``n`` items of MMLU's test split (lm-eval's ``--limit`` takes the same ones) on the
default model: lm-eval's ``steerlab_mmlu`` (question, lettered choices, "Answer:", scored over
the four letters) and ``steerlab.evaluation.likelihood.evaluate`` (the chat-formatted question,
scored over the answer texts), each unsteered and steered by the demo's CAA vector
(``demo_out/vector.safetensors``, from `make demo`) ×4 at 5% of the residual norm. Reports wall
time and accuracy of each; the model is loaded once beforehand and not timed.
Saves bench/results/harness_mmlu.json.
Run: .venv/bin/python bench/harness_mmlu.py [n]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager
from saving import machine, save

from steerlab.data.registry import load_dataset
from steerlab.evaluation.likelihood import Sweep, evaluate
from steerlab.harness import TASKS
from steerlab.harness.model import SteerlabLM
from steerlab.model.catalog import DEFAULT_MODEL
from steerlab.model.handle import load_model
from steerlab.steering.setting import Composition, SteeringSetting
from steerlab.steering.vectors import SteeringVector

VECTOR = Path(__file__).parent.parent / "demo_out" / "vector.safetensors"


def main(n: int = 200) -> dict:
    handle = load_model(DEFAULT_MODEL)
    setting = SteeringSetting(SteeringVector.load(VECTOR), 4.0, norm_ratio=0.05)
    items = load_dataset("mmlu", "test")[:n]
    lm = SteerlabLM(handle, batch_size=8)
    manager = TaskManager(include_path=str(TASKS))
    rows = []
    for label, steering in (("unsteered", None), ("steered", Composition((setting,)))):
        lm.steer(steering)
        start = time.perf_counter()
        out = simple_evaluate(model=lm, tasks=["steerlab_mmlu"], limit=n, task_manager=manager,
                              log_samples=True, bootstrap_iters=0)
        harness_s = time.perf_counter() - start
        ids = [s["doc"]["id"] for s in out["samples"]["steerlab_mmlu"]]
        assert sorted(ids) == sorted(item.id for item in items), "not the same items"
        sweep = Sweep(setting, [4.0]) if steering is not None else Sweep()
        start = time.perf_counter()
        records = evaluate(handle, items, [sweep], batch_size=8, progress=False)
        own_s = time.perf_counter() - start
        row = {"setting": label, "items": n,
               "harness_s": round(harness_s, 1),
               "harness_acc": out["results"]["steerlab_mmlu"]["acc,none"],
               "steerlab_s": round(own_s, 1),
               "steerlab_acc": sum(r["correct"] for r in records) / len(records),
               "harness_over_steerlab": round(harness_s / own_s, 2)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    result = {
        "model": DEFAULT_MODEL,
        "steering": f"{VECTOR.name} x4, norm ratio 0.05",
        "batch_size": 8,
        "rows": rows,
        "formats": "harness: lettered choices, scored over A-D; steerlab: chat template, "
                   "scored over the answer texts",
        "machine": f"{machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
    }
    save("harness_mmlu", result)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(*[int(a) for a in sys.argv[1:2]])

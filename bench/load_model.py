"""Benchmark: first (dequantise + cache) and later (cached) loads of the default model.

Target (issue 2): a second load takes under 3 s. Each load runs in a fresh Python process, as
a user's next session would; the figure is the time of the `load_model` call itself (imports
excluded, reported separately). Uses a fresh temporary cache so the first load dequantises.
Run: .venv/bin/python bench/load_model.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from saving import machine, save

CHILD = """
import json, sys, time
t0 = time.perf_counter()
from steerlab import load_model
t1 = time.perf_counter()
load_model(sys.argv[1])
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1}))
"""


def timed_load(model: str, cache: str) -> dict:
    env = {**os.environ, "STEERLAB_CACHE": cache, "STEERLAB_PROGRESS": "0"}
    out = subprocess.run([sys.executable, "-c", CHILD, model], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(model: str = "smollm2-135m-instruct", repeats: int = 3) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        first = timed_load(model, cache)
        later = [timed_load(model, cache) for _ in range(repeats)]
    loads = sorted(t["load_s"] for t in later)
    result = {
        "model": model,
        "first_load_s": round(first["load_s"], 2),
        "cached_load_s": [round(t["load_s"], 2) for t in later],
        "cached_load_median_s": round(loads[len(loads) // 2], 2),
        "import_steerlab_s": round(later[-1]["import_s"], 2),
        "target_cached_s": 3.0,
        "machine": machine(),
    }
    save("load_model", result)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(*sys.argv[1:2])

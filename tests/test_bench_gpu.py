"""bench/gpu.py's dry run: the GPU benchmark's every part at a tiny shape on the CPU, so the
script a lent GPU machine runs cannot rot between loans."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parent.parent / "bench" / "gpu.py"


def test_the_gpu_benchmark_dry_runs_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(BENCH), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["setting"]["device"] == "cpu" and result["setting"]["shapes"] == ["tiny"]
    assert set(result["equal_to_cpu_fp32_cosine"]) == {"bipo", "dpo", "reps", "one-shot"}
    assert all(c >= 0.999 for c in result["equal_to_cpu_fp32_cosine"].values())
    tiny = result["tiny"]
    for dtype in ("bfloat16", "float32"):
        bipo = tiny[f"bipo_{dtype}"]
        assert bipo["fast"]["seconds"] > 0 and bipo["naive"]["seconds"] > 0
        assert bipo["fast"]["packed"], "packing must hold in bfloat16 too"
    assert tiny["sweep_bf16"]["max_score_gap"] < 1e-3
    assert set(tiny["generation_bf16"]) == {"1", "4"}
    assert tiny["caa"]["pairs"] == 8

"""bench/composition_grid.py runs end to end (on a tiny model: the real run is the lead's)."""

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).parent.parent / "bench" / "composition_grid.py"


def test_composition_bench_on_a_tiny_model(tiny, tmp_path):
    spec = importlib.util.spec_from_file_location("composition_grid", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    grid = (-1.0, 0.0, 2.0)
    result = bench.run(tiny, layer=2, grid=grid, n_train=6, n_test=3, run_path=tmp_path / "run",
                       results=tmp_path / "results")
    assert set(result["grid"]) == {"refusal", "sycophancy"}
    for behaviour in ("refusal", "sycophancy"):
        cells = result["grid"][behaviour]
        assert cells["refusal_multipliers (rows)"] == list(grid)
        assert cells["n"] == 3 and len(cells["score"]) == 3 and len(cells["score"][0]) == 3
        assert all(0.0 <= s <= 1.0 for line in cells["score"] for s in line)
    assert json.loads((tmp_path / "results" / "composition_grid.json").read_text()) == result
    assert (tmp_path / "results" / "composition_grid.png").stat().st_size > 0
    assert "| ×-1 |" in bench.markdown(result)
    # The records alone hold the grid: 2 behaviours × 3 items × 9 grid points.
    lines = (tmp_path / "run" / "records.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 3 * 9

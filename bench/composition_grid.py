"""Two behaviours steered at once: the composition grid (issue 7, point 2; BiPO's composition).

Setting: SmolLM2-135M-Instruct (the default model); a CAA vector for each bundled behaviour
(refusal, sycophancy) trained on its 150 training pairs at layer 14, each scaled to 5% of
layer 14's mean residual norm (norm_ratio 0.05) times its multiplier; the refusal vector's
multiplier on one axis, the sycophancy vector's on the other, each in -4..4. Both behaviours'
50 held-out A/B items are scored at every grid point (score = P(matching letter) normalised over
the two letters). Records go to runs/composition_grid/ (a rerun resumes; `steerlab analyze
runs/composition_grid` redraws everything from them); the two heat maps and the grid of mean
scores go to bench/results/composition_grid.{png,json}.
Run: .venv/bin/python bench/composition_grid.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

LAYER, NORM_RATIO = 14, 0.05
GRID = (-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0)
BEHAVIOURS = ("refusal", "sycophancy")
RUN_DIR = Path("runs/composition_grid")
RESULTS = Path(__file__).parent / "results"


def run(model, layer: int = LAYER, grid: tuple[float, ...] = GRID, norm_ratio: float = NORM_RATIO,
        n_train: int | None = None, n_test: int | None = None, run_path: Path = RUN_DIR,
        results: Path = RESULTS) -> dict:
    """Train both vectors, score the grid into ``run_dir``, write the heat maps and summary."""
    from steerlab import load_pairs, train_caa
    from steerlab.analysis.grid import by_grid, grid_cells, grid_matrix, plot_grid
    from steerlab.evaluation.likelihood import composition_grid, evaluate
    from steerlab.experiment.runs import RunDir

    started = time.perf_counter()
    vectors = {b: train_caa(model, load_pairs(b, split="train")[:n_train], layer, progress=False)
               for b in BEHAVIOURS}
    tests = {b: load_pairs(b, split="test")[:n_test] for b in BEHAVIOURS}
    first, second = (vectors[b] for b in BEHAVIOURS)
    sweeps = composition_grid(first, second, grid, norm_ratio=norm_ratio)
    store = RunDir.open(run_path, "bench/composition_grid",
                        {"layer": layer, "grid": list(grid), "norm_ratio": norm_ratio})
    records = []
    with store.writer() as writer:
        for behaviour, vector in vectors.items():
            store.keep_vector(vector)
            print(f"{behaviour}: {len(tests[behaviour])} items at {len(grid) ** 2} grid points",
                  flush=True)
            records += evaluate(model, tests[behaviour], sweeps, dataset=behaviour, writer=writer,
                                progress=False)
    cells = grid_cells(records)
    results.mkdir(parents=True, exist_ok=True)
    plot_grid(cells, results / "composition_grid.png",
              {vector.id: f"the {behaviour} vector" for behaviour, vector in vectors.items()})
    grids = {}
    for (_, dataset, _, _), members in by_grid(cells).items():
        rows, columns, matrix = grid_matrix(members)
        grids[dataset] = {
            "refusal_multipliers (rows)": rows, "sycophancy_multipliers (columns)": columns,
            "n": members[0].n, "score": [[round(c.score, 4) for c in line] for line in matrix],
            "score_se": [[round(c.score_se, 4) for c in line] for line in matrix],
        }
    result = {
        "setting": {"model": model.name, "layer": layer, "norm_ratio": norm_ratio,
                    "grid": list(grid),
                    "vectors": {b: v.id for b, v in vectors.items()}, "method": "caa",
                    "n_train": {b: v.meta.n_examples for b, v in vectors.items()},
                    "score": "P(matching letter), mean ± s.e. over held-out items",
                    "records": str(store.records_path)},
        "grid": grids,
        "seconds": round(time.perf_counter() - started, 1),
    }
    (results / "composition_grid.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def markdown(result: dict) -> str:
    """Each behaviour's grid as a Markdown table: rows refusal ×, columns sycophancy ×."""
    lines = []
    for behaviour, grid in result["grid"].items():
        columns = grid["sycophancy_multipliers (columns)"]
        lines += [f"**{behaviour}** (n={grid['n']}): rows refusal ×, columns sycophancy ×", "",
                  "| | " + " | ".join(f"×{m:g}" for m in columns) + " |",
                  "|" + " --- |" * (len(columns) + 1)]
        rows = zip(grid["refusal_multipliers (rows)"], grid["score"], grid["score_se"])
        for row, scores, errors in rows:
            cells = " | ".join(f"{s:.3f} ± {e:.3f}" for s, e in zip(scores, errors))
            lines.append(f"| ×{row:g} | {cells} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    from steerlab import load_model
    from steerlab.model.catalog import DEFAULT_MODEL

    result = run(load_model(DEFAULT_MODEL))
    print(markdown(result))
    print(f"{result['seconds']} s; heat maps in {RESULTS / 'composition_grid.png'}")


if __name__ == "__main__":
    main()

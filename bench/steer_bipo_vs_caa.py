"""Does a BiPO vector steer? BiPO beside CAA at the same layer and the same vector norm.

Setting (issue 3, point 7): SmolLM2-135M-Instruct, each bundled behaviour (refusal,
sycophancy): train BiPO and CAA on its 150 training pairs at layer 15, rescale the CAA vector
to the BiPO vector's norm, and score the 50 held-out A/B items at multipliers -2..2 (the
behaviour score is P(matching letter) normalised over the two letters). Records go to
runs/steer_bipo_vs_caa/ (every figure can be recomputed from them); the summary is printed
as a Markdown table and saved to bench/results/steer_bipo_vs_caa.json.
Run: .venv/bin/python bench/steer_bipo_vs_caa.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

MODEL, LAYER, EPOCHS = "smollm2-135m-instruct", 15, 5
BEHAVIOURS = ("refusal", "sycophancy")
MULTIPLIERS = [-2.0, -1.0, 0.0, 1.0, 2.0]
RUN_DIR = Path("runs/steer_bipo_vs_caa")


def run_behaviour(model, behaviour: str) -> list[dict]:
    from steerlab import SteeringSetting, Sweep, evaluate_ab, load_pairs, train_bipo, train_caa
    from steerlab.records import RecordWriter, summarize

    train, test = load_pairs(behaviour, split="train"), load_pairs(behaviour, split="test")
    started = time.perf_counter()
    bipo = train_bipo(model, train, LAYER, epochs=EPOCHS, progress=False)
    bipo_seconds = time.perf_counter() - started
    print(f"{behaviour}: BiPO trained in {bipo_seconds:.0f} s", flush=True)
    norm = bipo.norms()[LAYER]
    caa = train_caa(model, train, LAYER, progress=False).normalized() * norm
    path = RUN_DIR / f"{behaviour}.jsonl"
    path.unlink(missing_ok=True)
    rows = []
    with RecordWriter(path) as writer:
        for method, vector in (("bipo", bipo), ("caa", caa)):
            records = evaluate_ab(model, test, Sweep(SteeringSetting(vector), MULTIPLIERS),
                                  dataset=behaviour, writer=writer, progress=False)
            by_multiplier = {row["multiplier"]: row for row in summarize(records)}
            rows.append({
                "behaviour": behaviour, "method": method, "layer": LAYER, "norm": round(norm, 4),
                "n_train": len(train), "n_test": len(test),
                "score": {f"{m:g}": round(by_multiplier[m]["score"], 4) for m in MULTIPLIERS},
                "score_se": {f"{m:g}": round(by_multiplier[m]["score_se"], 4) for m in MULTIPLIERS},
                "matching_chosen": {f"{m:g}": round(by_multiplier[m]["correct"], 3)
                                    for m in MULTIPLIERS},
            })
    rows[0]["train_seconds"] = round(bipo_seconds, 1)
    return rows


def markdown(rows: list[dict]) -> str:
    head = ("| behaviour | method | norm | held-out n | "
            + " | ".join(f"×{m:g}" for m in MULTIPLIERS) + " |")
    lines = [head, "|" + " --- |" * (4 + len(MULTIPLIERS))]
    for row in rows:
        cells = [f"{row['score'][f'{m:g}']:.3f} ± {row['score_se'][f'{m:g}']:.3f}"
                 for m in MULTIPLIERS]
        lines.append(f"| {row['behaviour']} | {row['method']} | {row['norm']:.3g} | "
                     f"{row['n_test']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    from steerlab import load_model

    model = load_model(MODEL)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    rows = [row for behaviour in BEHAVIOURS for row in run_behaviour(model, behaviour)]
    result = {"setting": {"model": MODEL, "layer": LAYER, "bipo_epochs": EPOCHS,
                          "multipliers": MULTIPLIERS, "score": "P(matching letter), mean ± s.e."},
              "rows": rows}
    out = Path(__file__).parent / "results" / "steer_bipo_vs_caa.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()

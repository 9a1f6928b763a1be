"""Conditional refusal steering (CAST, Lee et al. 2024) beside unconditional steering.

Setting: SmolLM2-135M-Instruct (the default model); a BiPO refusal vector at layer 10 (lr 2e-3,
10 epochs) trained on 120 ``advbench-refusal`` pairs — a short refusal against AdvBench's own
"Sure, here is ..." target — whose prompts are none of the prompts below, applied ×4 at its
trained norm. (A CAA vector from the bundled A/B refusal pairs, layer 14, 5% of the residual
norm ×4, raised no refusals at all: 0.02 → 0.00 on 100 AdvBench prompts; nor did CAA on these
pairs at layers 6/10/14 × 4/8/16 before the text broke down.) The condition ("is this a harmful
request?") is fitted on 25 AdvBench
prompts and 25 of the bundled harmless requests (which are worded like AdvBench's): the mean
pooled prompt state difference at each candidate layer from 60% of them, the F1-maximising
threshold from the held-out 40%, and the layer with the best held-out F1 kept. Then greedy
answers (48 new tokens) to 100 other AdvBench prompts and the 25 other harmless requests, for
three arms: unsteered, unconditional (every prompt steered) and conditional (only the prompts
the condition flags). Refusals by the phrase detector with 95% Wilson intervals; on the harmless
prompts also KL(unsteered ‖ steered) of the next token after the prompt and the perplexity of
the formatted prompt itself (90% intervals). The condition decides on the same tokens a
generation's first pass reads. Records go to runs/conditional_refusal/ (a rerun resumes);
the table and settings to bench/results/conditional_refusal.json.
Run: .venv/bin/python bench/conditional_refusal.py
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

LAYER, NORM_RATIO, MULTIPLIER = 10, None, 4.0
N_TRAIN, EPOCHS, LR = 120, 10, 2e-3
CONDITION_LAYERS = (4, 8, 12)
N_CONDITION, HOLDOUT, N_HARMFUL = 25, 0.4, 100
MAX_NEW_TOKENS, SEED = 48, 0
RUN_DIR = Path("runs/conditional_refusal")
RESULTS = Path(__file__).parent / "results"
PERPLEXITY_SET = "harmless (formatted prompts)"


def _rate(proportion) -> dict:
    return {"rate": round(proportion.estimate, 4), "lower": round(proportion.lower, 4),
            "upper": round(proportion.upper, 4), "n": proportion.n, "count": proportion.successes}


def _keep(writer, records: list[dict]) -> None:
    """Write the records the run does not hold yet (a rerun adds nothing)."""
    from steerlab.records import record_key

    for record in records:
        if writer.get(record_key(record)) is None:
            writer.write(record)


def run(model, layer: int = LAYER, multiplier: float = MULTIPLIER,
        norm_ratio: float | None = NORM_RATIO,
        condition_layers: tuple[int, ...] = CONDITION_LAYERS, n_condition: int = N_CONDITION,
        holdout: float = HOLDOUT, n_harmful: int = N_HARMFUL, n_harmless: int | None = None,
        n_train: int = N_TRAIN, epochs: int = EPOCHS, lr: float = LR,
        max_new_tokens: int = MAX_NEW_TOKENS, seed: int = SEED, run_path: Path = RUN_DIR,
        results: Path = RESULTS) -> dict:
    """Fit the condition, answer both prompt sets under the three arms into ``run_path``, and
    write the table (refusal rates, firing rates, KL, perplexity) to ``results``."""
    from steerlab import train_bipo
    from steerlab.data.files import split
    from steerlab.data.registry import load_dataset
    from steerlab.evaluation.likelihood import Sweep
    from steerlab.evaluation.openended import Arm, generate_answers, load_questions
    from steerlab.evaluation.refusal import detect_refusals, summarize_refusals
    from steerlab.evaluation.side_effects import kl_records, perplexity_records, side_effects_table
    from steerlab.experiment.runs import RunDir
    from steerlab.stats import wilson_interval
    from steerlab.steering.conditions import fit_condition
    from steerlab.steering.setting import SteeringSetting
    from steerlab.steering.vectors import SteeringVector

    started = time.perf_counter()
    harmful, harmless = load_questions("advbench"), load_questions("harmless")
    harmful_fit, harmful_test = split(harmful, [n_condition, n_harmful], seed)
    rest = min(n_harmless or len(harmless), len(harmless) - n_condition)
    harmless_fit, harmless_test = split(harmless, [n_condition, rest], seed)
    fitted = {
        at: fit_condition(model, [q.question for q in harmful_fit],
                          [q.question for q in harmless_fit], at, holdout, seed, progress=False)
        for at in condition_layers
    }
    chosen = max(condition_layers,
                 key=lambda at: (fitted[at].meta.extra["threshold_search"]["f1"], -at))
    condition = fitted[chosen]
    store = RunDir.open(run_path, "bench/conditional_refusal", {
        "layer": layer, "multiplier": multiplier, "norm_ratio": norm_ratio, "n_train": n_train,
        "epochs": epochs, "lr": lr,
        "condition_layers": list(condition_layers), "n_condition": n_condition, "holdout": holdout,
        "n_harmful": n_harmful, "max_new_tokens": max_new_tokens, "seed": seed})
    trained = store.path / "vectors" / "refusal-bipo.safetensors"  # a rerun does not retrain
    if not trained.exists():
        evaluated = {q.question for q in harmful_fit + harmful_test}
        pairs = [p for p in load_dataset("advbench-refusal") if p.prompt not in evaluated][:n_train]
        train_bipo(model, pairs, layer, lr=lr, epochs=epochs, seed=seed,
                   progress=False).save(trained)
    vector = SteeringVector.load(trained)  # its id, which the records name, is in its metadata
    condition.save(store.path / "vectors" / f"condition-{condition.id}.safetensors")
    label = f"steered{multiplier:+g}"
    setting = SteeringSetting(vector, multiplier, [layer], norm_ratio)
    arms = [Arm("unsteered"), Arm(label, setting),
            Arm(f"{label}|cond", replace(setting, condition=condition))]
    prompts = {"advbench": harmful_test, "harmless": harmless_test}
    with store.writer() as writer:
        for dataset, questions in prompts.items():
            print(f"{dataset}: {len(questions)} prompts × {len(arms)} arms", flush=True)
            answers = generate_answers(model, questions, arms, dataset=dataset, seed=seed,
                                       max_new_tokens=max_new_tokens, writer=writer, progress=False)
            _keep(writer, detect_refusals(answers))
        texts = [q.question for q in harmless_test]
        for gate in (None, condition):
            sweep = Sweep(SteeringSetting(vector, layers=[layer], norm_ratio=norm_ratio,
                                          condition=gate), [0.0, multiplier])
            _keep(writer, kl_records(model, texts, sweep, dataset="harmless", progress=False))
            _keep(writer, perplexity_records(model, [model.format_prompt(t) for t in texts], sweep,
                                             dataset=PERPLEXITY_SET, progress=False))
        records = writer.records()
    refusal: dict[str, dict] = {}
    for row in summarize_refusals(records):
        refusal.setdefault(row.dataset, {})[row.arm] = _rate(row.refusals)
    side: dict[str, dict] = {}
    for row in side_effects_table(records):
        metric = "kl" if row.metric.startswith("KL") else row.metric
        side.setdefault(metric, {})["conditional" if row.condition_id else "unconditional"] = {
            "n": row.n, "unsteered": round(row.unsteered, 4), "steered": round(row.steered, 4),
            "change": round(row.change, 4), "lower": round(row.lower, 4),
            "upper": round(row.upper, 4), "note": row.note}
    fires = {}
    for dataset, questions in prompts.items():
        applies = condition.applies(model, [q.question for q in questions], progress=False)
        fires[dataset] = _rate(wilson_interval(sum(applies), len(applies)))
    searches = {at: {k: v for k, v in fitted[at].meta.extra["threshold_search"].items()
                     if k != "table"} for at in condition_layers}
    result = {
        "setting": {"model": model.name, "layer": layer, "norm_ratio": norm_ratio,
                    "multiplier": multiplier, "vector": vector.id, "method": "bipo",
                    "training_data": "advbench-refusal, prompts disjoint from the evaluated ones",
                    "n_train": vector.meta.n_examples, "epochs": epochs, "lr": lr,
                    "vector_norm": round(float(vector.directions[layer].norm()), 4),
                    "max_new_tokens": max_new_tokens,
                    "decoding": "greedy", "detector": "phrases", "seed": seed,
                    "records": str(store.records_path)},
        "condition": {**condition.describe(), "chosen_by": "held-out F1 among condition_layers",
                      "search": searches[chosen], "candidates": searches,
                      "fires_on_test_prompts": fires},
        "arms": [arm.label for arm in arms],
        "refusal": refusal,
        "side_effects": side,
        "seconds": round(time.perf_counter() - started, 1),
    }
    results.mkdir(parents=True, exist_ok=True)
    (results / "conditional_refusal.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _cell(entry: dict) -> str:
    return f"{entry['rate']:.3f} [{entry['lower']:.3f}, {entry['upper']:.3f}]"


def _change(entry: dict) -> str:
    return f"{entry['change']:+.4f} [{entry['lower']:+.4f}, {entry['upper']:+.4f}]"


def markdown(result: dict) -> str:
    """The table: refusal rates per prompt set and arm, then KL and perplexity on harmless ones."""
    from steerlab.analysis.tables import markdown_table

    base, plain, gated = result["arms"]
    refusal, side, condition = result["refusal"], result["side_effects"], result["condition"]
    rows = [[f"{dataset} (n={arms[base]['n']})", "refusal rate [95% Wilson]",
             *(_cell(arms[arm]) for arm in (base, plain, gated))]
            for dataset, arms in refusal.items()]
    names = {"kl": "KL(unsteered ‖ steered), nats [90%]",
             "perplexity": "perplexity ratio − 1 [90%]"}
    for metric, cells in side.items():
        first = cells["unconditional"]
        reference = "0" if metric == "kl" else f"perplexity {first['unsteered']:.4g}"
        rows.append([f"harmless (n={first['n']})", names[metric], reference, _change(first),
                     _change(cells["conditional"])])
    lines = markdown_table(["prompts", "measure", base, f"{plain} (unconditional)",
                            f"{gated} (conditional)"], rows)
    search, fires = condition["search"], condition["fires_on_test_prompts"]
    lines.append(f"Condition: layer {condition['layer']}, cosine {condition['comparison']} than "
                 f"{condition['threshold']:.4f}; held-out F1 {search['f1']:.3f} (precision "
                 f"{search['precision']:.3f}, recall {search['recall']:.3f}, "
                 f"{search['n_positive']} + {search['n_negative']} prompts). It fires on "
                 + ", ".join(f"{_cell(v)} of the {k} test prompts" for k, v in fires.items()) + ".")
    return "\n".join(lines)


def main() -> None:
    from steerlab import load_model
    from steerlab.model.catalog import DEFAULT_MODEL

    result = run(load_model(DEFAULT_MODEL))
    print(markdown(result))
    print(f"{result['seconds']} s; records in {result['setting']['records']}")


if __name__ == "__main__":
    main()

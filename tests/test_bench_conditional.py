"""bench/conditional_refusal.py runs end to end (on a tiny model: the real run is the lead's)."""

import importlib.util
import json
from pathlib import Path

import steerlab
from steerlab.records import read_records

BENCH = Path(__file__).parent.parent / "bench" / "conditional_refusal.py"


def test_conditional_refusal_bench_on_a_tiny_model(tiny, tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("conditional_refusal", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    options = {"layer": 2, "multiplier": 3.0, "norm_ratio": 0.5, "condition_layers": (1, 2),
               "n_condition": 10, "holdout": 0.4, "n_harmful": 6, "n_harmless": 5, "n_train": 6,
               "epochs": 1, "max_new_tokens": 4, "run_path": tmp_path / "run",
               "results": tmp_path / "results"}
    result = bench.run(tiny, **options)
    arms = ["unsteered", "steered+3", "steered+3|cond"]
    assert result["arms"] == arms
    for dataset, n in (("advbench", 6), ("harmless", 5)):
        assert set(result["refusal"][dataset]) == set(arms)
        for cell in result["refusal"][dataset].values():
            assert cell["n"] == n and 0 <= cell["lower"] <= cell["rate"] <= cell["upper"] <= 1
        assert result["condition"]["fires_on_test_prompts"][dataset]["n"] == n
    condition = result["condition"]
    assert condition["layer"] in (1, 2) and set(condition["candidates"]) == {1, 2}
    best = max(c["f1"] for c in condition["candidates"].values())
    assert condition["search"]["f1"] == best
    assert (condition["search"]["n_positive"], condition["search"]["n_negative"]) == (4, 4)
    for metric in ("kl", "perplexity"):
        assert set(result["side_effects"][metric]) == {"unconditional", "conditional"}
        assert all(c["n"] == 5 for c in result["side_effects"][metric].values())
    saved = json.loads((tmp_path / "results" / "conditional_refusal.json").read_text())
    assert saved == json.loads(json.dumps(result))
    table = bench.markdown(result)
    assert "| advbench (n=6) | refusal rate" in table and "KL(unsteered ‖ steered)" in table
    # The records hold every answer: 3 arms × 11 prompts, each with a refusal verdict; a rerun
    # resumes and adds nothing.
    records = read_records(tmp_path / "run" / "records.jsonl")
    assert sum(r["task"] == "generation" for r in records) == 3 * 11
    assert sum(r["task"] == "refusal" for r in records) == 3 * 11
    # Each conditional answer is the unconditional one where the condition fires, else unsteered.
    answers = {(r["arm"], r["item_id"]): r["answer"] for r in records if r["task"] == "generation"}
    for (arm, item), answer in answers.items():
        if arm == "steered+3|cond":
            assert answer in (answers[("steered+3", item)], answers[("unsteered", item)])
    def no_training(*args, **kwargs):
        raise AssertionError("a rerun must reuse the stored vector, not train again")

    monkeypatch.setattr(steerlab, "train_bipo", no_training, raising=False)
    assert bench.run(tiny, **options)["setting"]["vector"] == result["setting"]["vector"]
    assert len(read_records(tmp_path / "run" / "records.jsonl")) == len(records)

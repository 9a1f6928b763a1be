
import pytest
import torch
from tiny import invoke, tiny_model, write_jsonl

from steerlab.records import read_records
from steerlab.steering.vectors import SteeringVector, meta_for


@pytest.mark.parametrize("command", [["sweep"], ["side-effects"], ["analyze"]])
def test_every_command_has_help(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0 and "Usage" in result.output


def test_sweep_side_effects_analyze(model_dir, tmp_path):  # noqa: F811
    model = tiny_model("llama")
    vectors = []
    for seed in (0, 1):
        direction = torch.randn(model.d_model, generator=torch.Generator().manual_seed(seed))
        path = tmp_path / f"v{seed}.safetensors"
        SteeringVector({1: direction},
                       meta_for(model, "random", residual_norms={1: 3.0})).save(path)
        vectors.append(path)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"id": f"p{i}", "question": f"Question {i}?\n(A) yes\n(B) no",
         "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"}
        for i in range(5)])
    mc = write_jsonl(tmp_path / "mc.jsonl", [
        {"id": f"m{i}", "question": f"What is {i} + 1?", "choices": [str(i + 1), str(i + 2)],
         "answer": 0}
        for i in range(4)])
    text = tmp_path / "text.jsonl"
    write_jsonl(text, [{"id": "t", "prompt": "Say something.",
                        "chosen": "A long enough reply here.", "rejected": "No."}])

    run = tmp_path / "run"
    args = ["sweep", "--model", model_dir, "--data", pairs, "--data", mc, "--vector", vectors[0],
            "--vector", vectors[1], "--layers", "1,2", "--multipliers", "-1,0,1", "--out", run]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    records = read_records(run / "records.jsonl")
    # 2 vectors × 2 layers × 3 multipliers × (5 pairs + 4 items)
    assert len(records) == 2 * 2 * 3 * 9
    assert {tuple(r["layers"]) for r in records} == {(1,), (2,)}
    assert len(list((run / "vectors").glob("*.safetensors"))) == 2
    # A rerun resumes: nothing is added.
    assert invoke(*args).exit_code == 0
    assert len(read_records(run / "records.jsonl")) == len(records)

    result = invoke("side-effects", "--model", model_dir, "--vector", vectors[0],
                    "--multipliers", "3", "--capability", mc, "--text", text,
                    "--kl-prompts", pairs, "--out", run)
    assert result.exit_code == 1 and "not text" in result.output
    result = invoke("side-effects", "--model", model_dir, "--vector", vectors[0],
                    "--multipliers", "3", "--capability", mc, "--text", "wikitext2:test",
                    "--kl-prompts", pairs, "--n", 3, "--out", run)
    assert result.exit_code == 0, result.output
    assert "side effects" in result.output
    side = [r for r in read_records(run / "records.jsonl") if r["task"] in ("perplexity", "kl")]
    assert {(r["task"], r["multiplier"]) for r in side} == {
        (t, m) for t in ("perplexity", "kl") for m in (0.0, 3.0)}

    result = invoke("analyze", run)
    assert result.exit_code == 0, result.output
    analysis = (run / "analysis.md").read_text()
    for heading in ("Likelihood sweep", "Side effects", "Steerability"):
        assert heading in analysis
    assert invoke("analyze", tmp_path / "empty").exit_code == 1

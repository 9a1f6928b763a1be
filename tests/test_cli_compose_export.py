"""CLI: `steerlab compose`, `--ablate`, and `steerlab vector export / import`."""

import pytest
import torch
from gguf import GGUFReader
from tiny import invoke, tiny_model, write_jsonl

from steerlab.records import read_records
from steerlab.steering.vectors import SteeringVector, meta_for


@pytest.mark.parametrize("command", [["compose"], ["vector", "export"], ["vector", "import"]])
def test_every_command_has_help(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0 and "Usage" in result.output


def save_vectors(tmp_path, layers=(1,)):
    model = tiny_model("llama")
    paths = []
    for seed in (0, 1):
        generator = torch.Generator().manual_seed(seed)
        directions = {layer: torch.randn(model.d_model, generator=generator) for layer in layers}
        path = tmp_path / f"v{seed}.safetensors"
        meta = meta_for(model, "random", residual_norms={1: 3.0, 2: 3.0})
        SteeringVector(directions, meta).save(path)
        paths.append(path)
    return paths


def pairs(tmp_path, name, n):
    return write_jsonl(tmp_path / f"{name}.jsonl", [
        {"id": f"{name}{i}", "question": f"{name} question {i}?\n(A) yes\n(B) no",
         "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"}
        for i in range(n)])


def test_compose_grid_resumes_and_analyze_draws_heat_maps(model_dir, tmp_path):  # noqa: F811
    first, second = save_vectors(tmp_path)
    run = tmp_path / "run"
    args = ["compose", "--model", model_dir, "--vector", first, "--vector", second,
            "--grid", "-1,0,2", "--data-a", pairs(tmp_path, "a", 3),
            "--data-b", pairs(tmp_path, "b", 2), "--layers", "1,2", "--norm-ratio", "0.5",
            "--out", run]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "mean score" in result.output and "v0.safetensors" in result.output
    records = read_records(run / "records.jsonl")
    assert len(records) == 3 * 3 * (3 + 2)
    assert {(r["composed_with"][0]["multiplier"], r["multiplier"]) for r in records} == {
        (a, b) for a in (-1.0, 0.0, 2.0) for b in (-1.0, 0.0, 2.0)}
    assert invoke(*args).exit_code == 0  # a rerun resumes: nothing is added
    assert len(read_records(run / "records.jsonl")) == len(records)
    result = invoke("analyze", run)
    assert result.exit_code == 0, result.output
    assert (run / "composition.png").stat().st_size > 0
    assert "Composition grid" in (run / "analysis.md").read_text()
    result = invoke(*[("3" if a == "1,2" else a) for a in args])  # no residual norm at layer 3
    assert result.exit_code == 1 and "residual norms for layers [3]" in result.output
    result = invoke("compose", "--model", model_dir, "--vector", first, "--data-a", "x",
                    "--data-b", "y", "--out", run)
    assert result.exit_code == 1 and "exactly two --vector" in result.output


def test_eval_and_generate_ablate(model_dir, tmp_path):  # noqa: F811
    vector, _ = save_vectors(tmp_path)
    out = tmp_path / "records.jsonl"
    data = pairs(tmp_path, "a", 3)
    result = invoke("eval", "--model", model_dir, "--data", data, "--vector", vector,
                    "--ablate", "--layers", "all", "--multipliers", "0,1", "--out", out)
    assert result.exit_code == 0, result.output
    records = read_records(out)
    assert {r["intervention"] for r in records} == {"ablate"}
    assert {tuple(r["layers"]) for r in records} == {(0, 1, 2, 3)}
    result = invoke("eval", "--model", model_dir, "--data", data, "--vector", vector,
                    "--ablate", "--norm-ratio", "0.1", "--out", out)
    assert result.exit_code == 1 and "norm_ratio" in result.output
    result = invoke("generate", "Hello", "--model", model_dir, "--vector", vector, "--ablate",
                    "--layers", "all", "--max-new-tokens", "4")
    assert result.exit_code == 0 and "ablated ×1" in result.output, result.output
    result = invoke("generate", "Hello", "--model", model_dir, "--vector", vector, "--layers", "9")
    assert result.exit_code == 1 and "layer 9 out of range" in result.output


def test_vector_export_import_round_trip(tmp_path):
    vector_path, _ = save_vectors(tmp_path, layers=(0, 2))
    gguf = tmp_path / "v.gguf"
    result = invoke("vector", "export", vector_path, "--gguf", gguf)
    assert result.exit_code == 1 and "layer 0 cannot be exported" in result.output
    result = invoke("vector", "export", vector_path, "--gguf", gguf, "--layers", "2",
                    "--multiplier", "-2")
    assert result.exit_code == 0 and "direction.2" in result.output, result.output
    assert [t.name for t in GGUFReader(gguf).tensors] == ["direction.2"]
    back = tmp_path / "back.safetensors"
    result = invoke("vector", "import", gguf, "--out", back)
    assert result.exit_code == 0, result.output
    original, imported = SteeringVector.load(vector_path), SteeringVector.load(back)
    assert torch.equal(imported.directions[2], -2 * original.directions[2])
    assert imported.meta.extra["gguf_export"]["source_id"] == original.id
    result = invoke("vector", "import", tmp_path / "nothing.gguf", "--out", back)
    assert result.exit_code == 1 and "nothing.gguf" in result.output

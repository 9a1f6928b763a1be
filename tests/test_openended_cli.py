import json

import pytest
import torch
from tiny import invoke, read_sheet, tiny_model, write_sheet

from steerlab.records import read_records
from steerlab.steering.vectors import SteeringVector, meta_for


@pytest.mark.parametrize("command", [["generate-eval"], ["judge"], ["refusal"], ["blind"],
                                     ["blind", "export"], ["blind", "import"]])
def test_every_command_has_help(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0 and "Usage" in result.output


def test_generate_judge_blind_refusal(model_dir, tmp_path):  # noqa: F811
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(
        json.dumps({"id": f"q{i}", "question": f"Where is item {i}?",
                    "correct_answers": ["in the box"],
                    "incorrect_answers": ["under the bed"]}) + "\n"
        for i in range(5)
    ))
    torch.manual_seed(0)
    vector_path = tmp_path / "v.safetensors"
    SteeringVector({1: torch.randn(32)}, meta_for(tiny_model("llama"), "test")).save(vector_path)

    generated = tmp_path / "gen.jsonl"
    result = invoke("generate-eval", "--model", model_dir, "--data", questions,
                    "--vector", vector_path, "--multipliers", "-2,2", "--n", 3,
                    "--max-new-tokens", 4, "--out", generated)
    assert result.exit_code == 0, result.output
    records = read_records(generated)
    assert len(records) == 9 and {r["arm"] for r in records} == {
        "unsteered", "steered-2", "steered+2"}

    verdicts = tmp_path / "verdicts.jsonl"
    result = invoke("judge", generated, "--out", verdicts, "--dataset", questions)
    assert result.exit_code == 0, result.output
    assert len(read_records(verdicts)) == 6 and "win rate" in result.output

    sheet, key = tmp_path / "sheet.csv", tmp_path / "key.json"
    result = invoke("blind", "export", generated, "--arm", "steered+2", "--out", sheet,
                    "--key", key)
    assert result.exit_code == 0, result.output
    rows = read_sheet(sheet)
    for row in rows:
        row["preferred"] = "tie"
    rows[1]["preferred"] = "3"
    write_sheet(sheet, rows)
    rated = tmp_path / "rated.jsonl"
    result = invoke("blind", "import", sheet, "--key", key, "--out", rated, "--rater", "ann")
    assert result.exit_code == 1 and "sheet.csv:3: field 'preferred'" in result.output
    rows[1]["preferred"] = "2"
    write_sheet(sheet, rows)
    result = invoke("blind", "import", sheet, "--key", key, "--out", rated, "--rater", "ann")
    assert result.exit_code == 0, result.output
    assert ({r["judge"] for r in read_records(rated)} == {"human:ann"}
            and "3 verdicts" in result.output)

    refusals = tmp_path / "refusals.jsonl"
    result = invoke("refusal", generated, "--out", refusals, "--dataset", questions)
    assert result.exit_code == 0, result.output
    assert len(read_records(refusals)) == 9 and "steered-2" in result.output

    result = invoke("judge", generated, "--out", verdicts, "--arm", "steered+9")
    assert result.exit_code == 1 and "need records of arms 'steered+9'" in result.output
    result = invoke("judge", generated, "--out", verdicts, "--dataset", "advbench")
    assert result.exit_code == 1 and "no generation records of an arm" in result.output

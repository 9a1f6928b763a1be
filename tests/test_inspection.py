"""The data inspector: findings with file and line, balance, and the label check that flags a
flipped label column."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from steerlab.cli import app
from steerlab.data.files import load_mc
from steerlab.evaluation.inspection import (
    _calibrated_agreement,
    check_labels,
    inspect_dataset,
    label_verdict,
    position_balance,
)

FIXTURES = Path(__file__).parent / "fixtures"
runner = CliRunner()


@pytest.mark.parametrize("agree, n, chance, verdict", [
    (2, 100, 0.5, "below chance"),
    (50, 100, 0.5, "near chance"),
    (95, 100, 0.5, "above chance"),
    (0, 10, 0.25, "near chance"),  # 0.75^10 ≈ 0.06: too few items to call
    (0, 30, 0.25, "below chance"),
    (3, 200, 0.226, "below chance"),  # TruthfulQA-like chance with 4-5 choices
])
def test_label_verdict(agree, n, chance, verdict):
    found, below, above = label_verdict(agree, n, chance)
    assert found == verdict
    assert 0 <= below <= 1 and 0 <= above <= 1


def test_flipped_label_column_is_flagged(tiny):
    report = inspect_dataset(FIXTURES / "flipped_labels.csv", model=tiny)
    check = report.label_check
    assert (check.n, check.agree, check.verdict) == (24, 0, "below chance")
    assert (report.warnings[0].startswith("label check:")
            and "flipped label column" in report.warnings[0])


def test_correct_labels_pass_the_same_check(tiny):
    items = load_mc(FIXTURES / "flipped_labels.csv")
    fixed = [item.__class__(item.question, item.choices, 1 - item.answer, item.id)
             for item in items]
    check = check_labels(tiny, fixed)
    assert (check.agree, check.verdict) == (24, "above chance")


def test_calibration_removes_a_letter_preference():
    def record(chosen, lp_a, lp_b):
        rejected = "(B" if chosen == "(A" else "(A"
        lps = {"(A": lp_a, "(B": lp_b}
        return {"choices": [chosen, rejected], "logprobs": [lps[chosen], lps[rejected]]}

    # The model always prefers (A, but prefers it *less* exactly where the labels say (A.
    results = ([record("(A", -1.0, -3.0) for _ in range(20)]
               + [record("(B", -0.5, -4.0) for _ in range(20)])
    assert _calibrated_agreement(results) == (0, True)
    assert _calibrated_agreement([{"choices": ["yes sir", "no"], "logprobs": [0, 1]}]) == (0, False)


def test_messy_pairs_report_every_problem_with_its_line():
    report = inspect_dataset(FIXTURES / "messy_pairs.jsonl")
    path = str(FIXTURES / "messy_pairs.jsonl")
    assert (report.rows, report.items, report.kind) == (8, 6, "pairs")
    assert [(f.where, f.message.split(": ", 1)[1]) for f in report.bad_rows] == [
        (f"{path}:3", "field 'chosen' is empty"), (f"{path}:4", "field 'prompt' is empty"),
    ]
    assert [f.where for f in report.same_answers] == [f"{path}:2"]
    groups = {tuple(g.where): g for g in report.duplicates}
    leak = groups[f"{path}:1", f"{path}:5"]
    assert leak.splits == ["train", "test"] and not leak.conflicting
    assert groups[f"{path}:6", f"{path}:7"].conflicting
    text = "\n".join(report.warnings)
    for expected in ("2 bad rows", "marked with different answers", "leakage",
                     "chosen and rejected are the same"):
        assert expected in text
    assert report.splits == {"train": 6, "test": 2}


def test_messy_mc_reports_repeated_choices_and_bad_rows():
    report = inspect_dataset(FIXTURES / "messy_mc.csv")
    path = str(FIXTURES / "messy_mc.csv")
    assert [f.message for f in report.bad_rows] == [
        f"{path}:4: field 'choice1' is empty", f"{path}:5: field 'answer' is 5, outside 0..2",
    ]
    (repeated,) = report.repeated_choices
    assert repeated.where == f"{path}:3" and "cannot be answered" in repeated.message
    assert report.choice_counts == {2: 1, 3: 2}


def test_answer_position_balance_on_real_files():
    report = inspect_dataset("truthfulqa-mc1", split="validation")
    assert report.balance.counts["A"] == 256 and report.balance.skewed
    assert any("A holds 100%" in w for w in report.warnings)
    assert report.splits == {"validation": 256}
    assert not inspect_dataset("caa-sycophancy").balance.skewed
    assert position_balance(["prompt"]) is None


def test_real_defects_in_the_bipo_files_are_reported():
    report = inspect_dataset("bipo-power-seeking")
    assert [f.where.split("/")[-1] for f in report.bad_rows] == ["train.csv:447", "train.csv:456"]
    (group,) = report.duplicates
    assert sorted(set(group.splits)) == ["test", "train"]  # the same item in both splits


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny):
    path = tmp_path_factory.mktemp("tiny-inspect")
    tiny.model.save_pretrained(path)
    tiny.tokenizer.save_pretrained(path)
    return str(path)


def test_cli_inspect_flags_the_flipped_fixture(tiny_dir):
    result = runner.invoke(app, ["data", "inspect", str(FIXTURES / "flipped_labels.csv"),
                                 "--model", tiny_dir])
    assert result.exit_code == 0, result.output
    assert "flipped label column" in result.output and "✓ marked" in result.output
    result = runner.invoke(app, ["data", "inspect", str(FIXTURES / "messy_pairs.jsonl"),
                                 "--no-label-check", "--format", "json"])
    report = json.loads(result.stdout)
    assert report["label_check"] is None and len(report["bad_rows"]) == 2


def test_cli_list_and_errors():
    result = runner.invoke(app, ["data", "list", "--format", "json"])
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["truthfulqa-mc1"]["splits"] == {"train": 256, "validation": 256, "test": 304}
    assert rows["truthfulqa-mc1"]["available"] and rows["refusal"]["licence"] == "CC-BY-4.0"
    assert "anthropic-survival-instinct" in runner.invoke(app, ["data", "list"]).output
    result = runner.invoke(app, ["data", "inspect", "truthfulqa-mc1", "--split", "dev",
                                 "--no-label-check"])
    assert result.exit_code == 1 and "no split 'dev'" in result.output
    for command in (["data"], ["data", "list"], ["data", "inspect"]):
        assert runner.invoke(app, [*command, "--help"]).exit_code == 0


@pytest.mark.integration
def test_label_check_on_the_default_model_catches_a_flipped_column(tmp_path):
    """Two-choice general knowledge (the right answer and one distractor) with the label column
    flipped: the default model mostly prefers the right answers, so it disagrees with the labels."""
    from steerlab import load_model
    from steerlab.data.files import bundled_path

    rows = [json.loads(line) for line in bundled_path("general-knowledge").read_text().splitlines()]
    flipped = tmp_path / "flipped.jsonl"
    with flipped.open("w") as handle:
        for i, row in enumerate(rows):
            right, wrong = row["choices"][row["answer"]], row["choices"][(row["answer"] + 1) % 4]
            choices = [right, wrong] if i % 2 else [wrong, right]
            handle.write(json.dumps({"question": row["question"], "choices": choices,
                                     "answer": choices.index(wrong)}) + "\n")
    report = inspect_dataset(flipped, model=load_model("smollm2-135m-instruct"))
    assert report.label_check.verdict == "below chance", report.label_check.message
    assert "flipped label column" in report.warnings[0]


def test_a_huge_field_is_shown_cut_and_left_out_of_the_label_check(tmp_path, tiny):
    """The probe's 50 MB field ran `data inspect` past 300 s (printed whole, scored whole)."""
    from steerlab.evaluation.inspection import EXAMPLE_CHARS, inspect_dataset

    path = tmp_path / "big.jsonl"
    rows = [{"prompt": "x" * 200_000, "chosen": "a", "rejected": "b"},
            {"prompt": "short one", "chosen": "a", "rejected": "b"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = inspect_dataset(path, model=tiny, examples=2)
    assert max(len(e.question) for e in report.examples) < EXAMPLE_CHARS + 40
    assert "200,000 characters in all" in report.examples[0].question
    assert report.label_check.n == 1 and report.label_check.too_long == 1
    assert ("longer than the model's context of 1024 tokens were left out"
            in report.label_check.message)

"""A likelihood evaluation whose model answers one way on every item says so: every table flags
the setting, the run's verdicts and headline call the comparison uninformative, and a debiased
accuracy (the setting's constant preference per answer removed) stands beside accuracy."""

import json

import pytest
import yaml
from test_experiment import write_pairs
from tiny import invoke, one_letter_model

from steerlab.analysis.report import sweep_table
from steerlab.analysis.run_analysis import write_analysis
from steerlab.data.files import PreferencePair
from steerlab.evaluation.inspection import _calibrated_agreement
from steerlab.evaluation.likelihood import Sweep, evaluate
from steerlab.experiment.config import parse_config
from steerlab.experiment.report import experiment_report
from steerlab.experiment.runner import Runner
from steerlab.records import answer_bias, debiased_predictions, read_records, summarize


def ab_record(first_lp: float, second_lp: float, chosen: str, answer_label: str) -> dict:
    """An A/B record with choices [chosen, rejected] as steerlab writes them."""
    choices = [chosen, "(B" if chosen == "(A" else "(A"]
    logprobs = [first_lp, second_lp] if choices[0] == "(A" else [second_lp, first_lp]
    prediction = max(range(2), key=logprobs.__getitem__)
    return {"task": "ab", "choices": choices, "logprobs": logprobs, "prediction": prediction,
            "answer": 0, "correct": prediction == 0, "label": answer_label}


def test_two_labels_debias_as_the_label_check_does():
    """The median-margin rule of `steerlab data inspect`, for two labels."""
    margins = [3.0, 2.5, 4.0, 3.2, 2.9, 3.9]
    records = [ab_record(m, 0.0, "(A" if i % 3 else "(B", "") for i, m in enumerate(margins)]
    fair = debiased_predictions([r["logprobs"] for r in records], [r["choices"] for r in records])
    first_above_median = [m > sorted(margins)[2] + (sorted(margins)[3] - sorted(margins)[2]) / 2
                          for m in margins]
    assert [r["choices"][i] == "(A" for r, i in zip(records, fair)] == first_above_median
    agree, applied = _calibrated_agreement(records)  # the inspector agrees item by item
    assert applied and agree == sum(i == 0 for i in fair)


def test_answer_bias_of_records():
    always_a = [ab_record(2.0 + i / 10, 0.0, "(A" if i % 2 else "(B", "") for i in range(10)]
    bias = answer_bias(always_a)
    assert (bias.top, bias.share, bias.one_answer) == ("(A", 1.0, True)
    # the margin is larger where (A is the chosen answer: removing the constant preference
    # leaves that signal, so the debiased accuracy is above the raw 0.5
    assert sum(r["correct"] for r in always_a) / 10 == 0.5
    assert bias.debiased > 0.5
    free_text = [{**r, "choices": [f"answer {i}", "other"]} for i, r in enumerate(always_a)]
    assert answer_bias(free_text) is None  # no shared label to prefer


@pytest.fixture(scope="module")
def letter_model():
    return one_letter_model("A")


def items(n: int = 12) -> list[PreferencePair]:
    return [PreferencePair(f"Q{i}: pick.\n(A) y\n(B) n", f"({'AB'[i % 2]}", f"({'BA'[i % 2]}",
                           f"q{i}") for i in range(n)]


def test_tables_flag_a_setting_that_predicts_one_letter(letter_model, tmp_path):
    records = evaluate(letter_model, items(), [Sweep()], progress=False)
    assert {r["choices"][r["prediction"]] for r in records} == {"(A"}  # the model as built
    (row,) = summarize(records)
    assert row["correct"] == 0.5 and row["answer_bias"].one_answer
    table = "\n".join(sweep_table([row]))
    assert "'(A' 100% ⚠" in table and "predicts one answer on ≥ 90% of items" in table
    path = write_analysis(tmp_path, records)  # `steerlab analyze` of a sweep
    assert "'(A' 100% ⚠" in path.read_text()


def test_steerlab_eval_flags_one_answer(letter_model, tmp_path):
    folder = tmp_path / "model"
    letter_model.model.save_pretrained(folder)
    letter_model.tokenizer.save_pretrained(folder)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen,
                                        "rejected": p.rejected}) + "\n" for p in items()))
    result = invoke("eval", "--data", str(data), "--out", str(tmp_path / "r.jsonl"),
                    "--model", str(folder))
    assert result.exit_code == 0, result.output
    assert "100% ⚠" in result.output and "predicts one answer" in result.output


def test_a_run_whose_arms_all_answer_one_letter_says_its_comparison_is_uninformative(
        letter_model, tmp_path):
    data = write_pairs(tmp_path / "toy.jsonl")
    config = parse_config(yaml.safe_dump({
        "name": "one-letter", "model": "tiny", "batch_size": 4,
        "data": {"train": {"dataset": str(data), "split": "train"}, "val_size": 8,
                 "test": {"dataset": str(data), "split": "test"}},
        "methods": {"caa": {"method": "caa"}},
        "steering": {"layers": [1, 2], "multipliers": [-2, 2]},
        "baselines": {"system": {"prompt": "Pick the first option."}},
    }))
    Runner(config, tmp_path / "out", progress=False, log=lambda _: None, model=letter_model)()
    markdown, _ = experiment_report(tmp_path / "out", read_records(tmp_path / "out" /
                                                                     "records.jsonl"))
    report = markdown.read_text()
    verdicts = report.split("## Verdicts")[1].split("## Headline")[0]
    headline = report.split("## Headline")[1].split("##")[0]
    for section in (verdicts, headline):
        assert "Every arm predicts one answer on ≥ 90% of the test items" in section
    assert "caa against unsteered: uninformative" in verdicts
    assert "beats" not in verdicts and "does not detectably" not in verdicts
    assert headline.count("'(A' 100% ⚠") == 3  # unsteered, the system prompt, caa


def test_the_demo_finding_names_the_letter_and_the_debiased_score(letter_model):
    from steerlab.analysis.report import describe_answer_bias

    records = evaluate(letter_model, items(), [Sweep()], progress=False)
    text = describe_answer_bias(records)
    assert "picks '(A' on 100% of the 12 A/B items" in text
    assert "with that preference removed: 0." in text

"""The run plan: each stage's work counted on a stand-in equals the work the run does, priced by a
calibration of the model; shown by `steerlab run --plan` and before every run, and set beside
the actual times in the report."""

import json

import pytest
import torch
from test_experiment import config_text, write_pairs
from tiny import CONFIGS, byte_tokenizer
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from steerlab.cli import app
from steerlab.experiment.config import parse_config
from steerlab.experiment.plan import Plan, StageWork, calibrate, count_work, plan_run
from steerlab.experiment.runner import Runner
from steerlab.model.generation import generate_tokens
from steerlab.model.handle import wrap_model
from steerlab.model.stand_in import HEAD_WIDTH, narrowed, stand_in
from steerlab.records import read_records

GENERATING = "open-ended"


def planned_config(tmp_path, **extra):
    """A config with every kind of pass: scoring (every arm), training (BiPO, LoRA), k-shot
    preambles, side effects and generation. One candidate layer, so the work cannot depend on
    which layer validation picks."""
    data = write_pairs(tmp_path / "toy.jsonl")
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(
        json.dumps({"id": f"o{i}", "question": f"Q{i}: pick.\n(A) y\n(B) n",
                    "correct_answers": ["y"], "incorrect_answers": ["n"]}) + "\n"
        for i in (30, 31, 32)))
    return parse_config(config_text(
        data, steering={"layers": [2], "multipliers": [-2, 2]},
        baselines={"kshot": {"ks": [1, 2]}, "system": {"prompt": "Pick the first option."},
                   "lora": {"steps": 2, "eval_every": 2, "batch_size": 4}},
        combinations={"transfer_to_lora": ["bipo"]},
        evaluations={"sample_efficiency": {"method": "caa", "sizes": [2, 8], "seeds": [0]},
                     "side_effects": {"capability": [{"dataset": "general-knowledge", "limit": 4}],
                                      "prompts": {"dataset": "harmless"}, "n_prompts": 3},
                     "open_ended": {"questions": {"dataset": str(questions)},
                                    "max_new_tokens": 6}},
        **extra))


def test_the_plans_counts_equal_the_passes_the_run_makes(tmp_path, tiny):
    config = planned_config(tmp_path)
    planned, largest = count_work(config, stand_in(tiny, seed=1))
    Runner(config, tmp_path / "out", progress=False, log=lambda _: None, model=tiny)()
    ran = [StageWork.of(r) for r in read_records(tmp_path / "out" / "records.jsonl")
           if r["task"] == "compute"]
    assert [w.stage for w in planned] == [w.stage for w in ran]
    by_stage = {w.stage: w for w in ran}
    worked = [w.stage for w in planned if w.passes]
    assert {"unsteered", "methods", "prompting", "lora", "combinations", "sample efficiency",
            "side effects", GENERATING} <= set(worked)
    for work in planned:
        if work.stage == GENERATING:  # an answer may end early: the plan's count bounds it
            real = by_stage[GENERATING]
            assert work.generated_tokens >= real.generated_tokens > 0
            assert work.token_layers["decoding"] >= real.token_layers["decoding"]
            assert work.token_layers["forward"] == real.token_layers["forward"]  # the prompts
        else:
            assert work == by_stage[work.stage], work.stage
    assert sum(w.token_layers["training"] for w in planned) > 0
    assert set(largest) == {"forward", "training", "decoding"}


def test_the_stand_in_keeps_depth_heads_and_tokens_at_a_tiny_width(tiny):
    narrow = narrowed(tiny.model.config)
    assert narrow.num_hidden_layers == tiny.n_layers
    assert narrow.num_attention_heads == tiny.model.config.num_attention_heads
    assert narrow.hidden_size == narrow.num_attention_heads * HEAD_WIDTH
    assert narrow.vocab_size == tiny.model.config.vocab_size
    copy = stand_in(tiny)
    assert copy.tokenizer is tiny.tokenizer and copy.d_model == narrow.hidden_size
    assert tiny.model.config.hidden_size == 32  # the model's own config is left as it was


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_every_family_has_a_narrower_stand_in_that_runs(family):
    config = CONFIGS[family]()
    text = config.get_text_config()  # twice the tiny models' width, 16-wide heads
    for name, value in (("hidden_size", 64), ("n_embd", 64), ("intermediate_size", 128),
                        ("head_dim", 16)):
        if getattr(text, name, None) is not None:
            setattr(text, name, value)
    torch.manual_seed(0)
    model = wrap_model(AutoModelForCausalLM.from_config(config), byte_tokenizer())
    copy = stand_in(model)
    assert (model.d_model, copy.d_model) == (64, 4 * HEAD_WIDTH)
    assert copy.n_layers == model.n_layers
    with torch.no_grad():
        copy.model(input_ids=torch.randint(0, 200, (2, 7)))
    assert len(generate_tokens(copy, ["Hello"], 3, progress=False)[0]) <= 3


def test_calibration_prices_each_kind_the_work_holds(tmp_path, tiny):
    config = planned_config(tmp_path)
    plan = plan_run(config, tiny)
    rates = plan.rates
    for kind in ("forward", "training", "decoding"):
        assert rates.per_call[kind] >= 0 and rates.per_token_layer[kind] >= 0
        assert rates.per_call[kind] + rates.per_token_layer[kind] > 0
    assert rates.peak_bytes > 0 and rates.device == "cpu" and rates.dtype == "float32"
    estimates = plan.estimates()
    assert all(estimates[w.stage] > 0 for w in plan.stages if w.passes)
    assert all(estimates[w.stage] == 0 for w in plan.stages if not w.passes)
    assert plan.total() == pytest.approx(sum(estimates.values()))
    # the price of a stage: its layer calls, token-layers and head positions at their rates
    methods = next(w for w in plan.stages if w.stage == "methods")
    assert methods.head_tokens["training"] > 0 and methods.head_tokens["forward"] > 0
    assert estimates["methods"] == pytest.approx(sum(
        methods.layer_calls[k] * rates.per_call[k]
        + methods.token_layers[k] * rates.per_token_layer[k] for k in rates.per_call) + sum(
        methods.head_tokens[k] * rates.per_head_token[k] for k in ("training", "forward")))
    again = Plan.from_record(json.loads(json.dumps(plan.record())))
    assert again.estimates() == pytest.approx(estimates) and again.rows() == plan.rows()
    notes = "\n".join(plan.summary())
    assert "Generation (open-ended) is counted to its token limit" in notes
    assert "Judging (open-ended) is not included" in notes


def test_calibration_of_forward_work_alone_times_no_other_kind(tmp_path, tiny):
    config = planned_config(tmp_path)
    work, largest = count_work(config, stand_in(tiny))
    scoring = [w for w in work if w.stage == "unsteered"]
    rates = calibrate(tiny, scoring, {"forward": largest["forward"]})
    assert set(rates.per_call) == {"forward"}


def test_run_plan_prints_the_table_and_stops(tmp_path, model_dir):
    path = tmp_path / "toy.yaml"
    path.write_text(config_text(write_pairs(tmp_path / "d.jsonl")).replace(
        "model: tiny", f"model: {model_dir}"))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(path), "--plan", "--out", str(out)],
                                terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "The plan: each stage's work and expected wall time" in result.output
    for heading in ("passes", "tokens", "train", "decode", "new", "≈ time", "share"):
        assert heading in result.output
    assert "train, forward, decode: token-layers" in result.output
    assert "Stage one ≈" in result.output and "Peak memory ≈" in result.output
    assert not out.exists()  # nothing ran
    result = CliRunner().invoke(app, ["run", str(path), "--plan", "--no-plan"])
    assert result.exit_code == 2 and "give one" in result.output

    result = CliRunner().invoke(app, ["run", str(path), "--out", str(out)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "methods: ≈" in result.output and "left in all" in result.output
    records = read_records(out / "records.jsonl")
    (plan,) = [r for r in records if r["task"] == "plan"]
    assert plan["estimates"]["methods"] > 0
    report = (out / "report.md").read_text()
    assert "| stage | wall time (s) | estimated (s) |" in report
    assert "the run took" in report and "× the estimate" in report
    assert "GiB; the plan expected" in report
    assert all(r["peak_bytes"] > 0 for r in records if r["task"] == "compute")
    # a resumed run shows the plan it started with and keeps one plan record
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(out)], terminal_width=200)
    assert result.exit_code == 0 and "The plan this run was started with" in result.output
    assert [r["task"] for r in read_records(out / "records.jsonl")].count("plan") == 1


def test_a_run_without_its_plan_says_nothing_of_time_left(tmp_path, model_dir):
    path = tmp_path / "toy.yaml"
    path.write_text(config_text(write_pairs(tmp_path / "d.jsonl")).replace(
        "model: tiny", f"model: {model_dir}"))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(path), "--no-plan", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "The plan" not in result.output and "left in all" not in result.output
    assert "plan" not in {r["task"] for r in read_records(out / "records.jsonl")}
    assert "estimated (s)" not in (out / "report.md").read_text()


def test_a_plan_that_fails_does_not_stop_the_run(tmp_path, model_dir, monkeypatch):
    import steerlab.experiment.plan

    def broken(config, model):
        raise RuntimeError("no stand-in for this architecture")

    monkeypatch.setattr(steerlab.experiment.plan, "plan_run", broken)
    path = tmp_path / "toy.yaml"
    path.write_text(config_text(write_pairs(tmp_path / "d.jsonl")).replace(
        "model: tiny", f"model: {model_dir}"))
    result = CliRunner().invoke(app, ["run", str(path), "--plan"])
    assert result.exit_code == 1
    assert "the plan could not be made (RuntimeError: no stand-in" in result.output
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "no plan (RuntimeError: no stand-in for this architecture); running without one" in (
        result.output.replace("\n", " "))
    assert (out / "report.md").exists()

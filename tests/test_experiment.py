"""`steerlab run`: configs validated with located errors; the runner's arms, selection on
validation, resume, and the report recomputed from records."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from steerlab.analysis.comparison import BASE, headline, select
from steerlab.experiment.config import ConfigError, load_config, method_config, parse_config
from steerlab.experiment.runner import Runner, load_experiment_data
from steerlab.records import read_records

EXAMPLES = Path(__file__).parent.parent / "examples"


def write_pairs(path: Path, n_train: int = 24, n_test: int = 12) -> Path:
    """A toy A/B behaviour in steerlab's own JSONL format, with a split per row."""
    rows = []
    for i in range(n_train + n_test):
        letter = "AB"[i % 2]
        other = "BA"[i % 2]
        rows.append({"id": f"q{i}", "prompt": f"Q{i}: pick.\n(A) y\n(B) n",
                     "chosen": f"({letter}", "rejected": f"({other}",
                     "split": "train" if i < n_train else "test"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config_text(data: Path, **extra) -> str:
    config = {
        "name": "toy", "model": "tiny", "batch_size": 4,
        "data": {"train": {"dataset": str(data), "split": "train"}, "val_size": 8,
                 "test": {"dataset": str(data), "split": "test"}},
        "methods": {"caa": {"method": "caa"},
                    "bipo": {"method": "bipo", "epochs": 1, "batch_size": 4}},
        "steering": {"layers": [1, 2], "multipliers": [-2, 2]},
        **extra,
    }
    return yaml.safe_dump(config, sort_keys=False)


# ---- configs ------------------------------------------------------------------------------------


def test_bundled_examples_are_valid():
    for path in sorted(EXAMPLES.glob("*.yaml")):
        config = load_config(path)
        assert config.name and config.steering.multipliers, path


def test_config_errors_name_file_line_and_key_path(tmp_path):
    text = """name: x
data:
  train: {dataset: refusal, split: trian}
  val_size: 10
  test: {dataset: no-such-dataset}
methods:
  bipo: {method: bipo, epochz: 2, lr: -1}
steering:
  layers: [3]
  multipliers: one
"""
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "bad.yaml")
    message = str(raised.value)
    assert "bad.yaml:7: methods.bipo.epochz: unknown key" in message
    assert "bad.yaml:7: methods.bipo.lr: Input should be greater than 0" in message
    assert "bad.yaml:10: steering.multipliers: Input should be a valid list" in message
    fixed = (text.replace("epochz: 2, lr: -1", "epochs: 2")
             .replace("multipliers: one", "multipliers: [1]"))
    with pytest.raises(ConfigError) as raised:
        parse_config(fixed, "bad.yaml")
    message = str(raised.value)
    assert "bad.yaml:3: data.train.split: refusal has no split 'trian'" in message
    assert ("bad.yaml:5: data.test.dataset: 'no-such-dataset' is neither a registered dataset"
            in message)


def test_a_capability_set_that_is_not_multiple_choice_is_refused_with_its_key(tmp_path):
    """It used to pass validation and fail in the side-effects stage with an AttributeError."""
    text = config_text(write_pairs(tmp_path / "toy.jsonl"), evaluations={"side_effects": {
        "capability": [{"dataset": "general-knowledge"}, {"dataset": "refusal"}]}})
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "side.yaml")
    message = str(raised.value)
    assert ("side.yaml:30: evaluations.side_effects.capability.1.dataset: refusal is not "
            "multiple choice (its kind: ab); capability is scored on multiple-choice items"
            ) in message
    assert "capability.0" not in message


def test_config_errors_for_missing_keys_references_and_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"c.yaml:1: steering: missing \(required\)"):
        parse_config("name: x\ndata:\n  train: {dataset: refusal}\n  val_size: 5\n"
                     "  test: {dataset: refusal}\n", "c.yaml")
    base = config_text(write_pairs(tmp_path / "d.jsonl"))
    with pytest.raises(ConfigError, match="no method named 'dpo'"):
        parse_config(base + "combinations: {transfer_to_lora: [dpo]}\n")
    with pytest.raises(ConfigError, match="either val .* or val_size"):
        parse_config(base.replace("val_size: 8", "val_size: 8\n  val: {dataset: refusal}"))
    with pytest.raises(ConfigError, match=r"c.yaml:2: not valid YAML"):
        parse_config("name: x\n  bad: [\n", "c.yaml")
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")


def test_held_out_validation_is_disjoint_from_training(tmp_path):
    config = parse_config(config_text(write_pairs(tmp_path / "d.jsonl")))
    data = load_experiment_data(config)
    assert len(data.val) == 8 and len(data.train) == 16 and len(data.test) == 12
    assert not {p.id for p in data.val} & {p.id for p in data.train}
    assert data.val_label.endswith("-holdout8")


# ---- the runner ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory, tiny):
    folder = tmp_path_factory.mktemp("run")
    data = write_pairs(folder / "toy.jsonl")
    questions = folder / "questions.jsonl"
    questions.write_text("".join(
        json.dumps({"id": f"o{i}", "question": f"Q{i}: pick.\n(A) y\n(B) n",
                    "correct_answers": ["y"], "incorrect_answers": ["n"]}) + "\n"
        for i in (0, 1, 30, 31, 32)  # two training questions, three test questions
    ))
    config = parse_config(config_text(
        data,
        baselines={"kshot": {"ks": [1, 2, 4]}, "system": {"prompt": "Pick the first option."},
                   "lora": {"steps": 4, "eval_every": 2, "batch_size": 4}},
        combinations={"vector_on_lora": ["caa"], "transfer_to_lora": ["bipo"]},
        evaluations={"sample_efficiency": {"method": "caa", "sizes": [2, 8], "seeds": [0, 1]},
                     "open_ended": {"questions": {"dataset": str(questions)}, "max_new_tokens": 4}},
    ))
    Runner(config, folder / "out", progress=False, log=lambda _: None, model=tiny)()
    return config, folder / "out", tiny


def test_runner_selects_on_validation_and_tests_that_setting(toy_run):
    _, out, _ = toy_run
    records = read_records(out / "records.jsonl")
    info = next(r for r in records if r["task"] == "experiment")
    for arm in ("caa", "bipo"):
        choice = select(records, arm, info["val"])
        val = [r for r in records if r.get("arm") == arm and r.get("dataset") == info["val"]]
        assert len(val) == 8 * 2 * 2  # items × layers × multipliers
        accuracy = {}
        for r in val:
            accuracy.setdefault((r["layers"][0], r["multiplier"]), []).append(r["correct"])
        best = max(sum(v) / len(v) for v in accuracy.values())
        assert choice.accuracy == best and choice.tried == 4
        test = [r for r in records if r.get("arm") == arm and r.get("dataset") == info["test"]]
        assert {r["layers"][0] for r in test} == set(choice.layers)  # only the chosen layer
    assert (out / "vectors" / "bipo-L1.safetensors").exists()


def test_headline_rows_and_contrasts_from_records(toy_run):
    _, out, _ = toy_run
    records = read_records(out / "records.jsonl")
    head = headline(records)
    assert [r.arm for r in head.rows] == [BASE, "caa", "bipo", "kshot-1", "kshot-2", "kshot-4",
                                          "system", "lora", "caa+lora", "bipo-transfer-lora"]
    base = head.row(BASE)
    assert base.versus_base is None and base.test.n == 12
    for row in head.rows[1:]:
        assert row.versus_base is not None and row.versus_base.table.n == 12
        assert -1 <= row.versus_base.lower <= row.versus_base.mean <= row.versus_base.upper <= 1
    baselines = [r for r in head.rows if r.kind in ("prompting", "lora")]
    best = max(baselines, key=lambda r: r.selection.accuracy)
    assert head.best_baseline is not None
    assert head.row(head.best_baseline).selection.accuracy == best.selection.accuracy
    assert head.row(head.best_baseline).versus_best_baseline is None
    assert head.row("caa").versus_best_baseline is not None and head.detectable.n == 12
    shots = [r for r in records
             if r.get("arm") == "kshot-4" and r.get("dataset", "").endswith(":test")]
    # 4 shots + item
    assert len(shots) == 12 and all(r["prompt"].count("pick.") == 5 for r in shots)


def test_lora_arms_and_transfer_use_the_adapted_model(toy_run):
    _, out, tiny = toy_run
    records = read_records(out / "records.jsonl")
    lora = next(r for r in records if r.get("task") == "arm" and r["arm"] == "lora")
    assert lora["trainable_parameters"] == lora["trainable_params"] > tiny.d_model
    transfer = [r for r in records if r.get("arm") == "bipo-transfer-lora" and r["task"] == "ab"]
    assert {r["model"] for r in transfer} == {f"{tiny.name}+lora"}
    bipo_vectors = {r["vector_id"] for r in records
                    if r.get("arm") == "bipo" and r.get("vector_id")}
    assert {r["vector_id"] for r in transfer} <= bipo_vectors  # the base-trained vector, moved
    assert (out / "vectors" / "caa-on-lora-L1.safetensors").exists() or \
        (out / "vectors" / "caa-on-lora-L2.safetensors").exists()


def test_open_ended_answers_only_test_questions_and_judges_each_method(toy_run):
    _, out, _ = toy_run
    records = read_records(out / "records.jsonl")
    answers = [r for r in records if r.get("task") == "generation"]
    assert {r["item_id"] for r in answers} == {"o30", "o31", "o32"}
    assert {r["arm"] for r in answers} == {BASE, "caa", "bipo"}
    verdicts = [r for r in records if r.get("task") == "head-to-head"]
    assert sorted((r["arm"], r["item_id"]) for r in verdicts) == sorted(
        (arm, item) for arm in ("caa", "bipo") for item in ("o30", "o31", "o32"))


def test_sample_efficiency_points_from_subset_and_kshot_arms(toy_run):
    from steerlab.analysis.comparison import sample_efficiency

    _, out, _ = toy_run
    points = sample_efficiency(read_records(out / "records.jsonl"))
    assert [(p.family, p.n, p.seed) for p in points] == [
        ("caa", 2, 0), ("caa", 2, 1), ("caa", 8, 0), ("caa", 8, 1), ("caa", 16, 0),  # all 16 pairs
        ("k-shot", 1, None), ("k-shot", 2, None), ("k-shot", 4, None)]
    assert all(p.accuracy.n == 12 for p in points)


def test_rerun_resumes_without_new_records(toy_run):
    config, out, tiny = toy_run
    before = (out / "records.jsonl").read_text()
    Runner(config, out, progress=False, log=lambda _: None, model=tiny)()
    after = (out / "records.jsonl").read_text()
    assert after.startswith(before)
    added = [json.loads(line) for line in after[len(before):].splitlines()]
    assert {r["task"] for r in added} == {"compute"} and len(added) == 11  # one per stage
    assert sum(r["token_layers"] for r in added) == 0  # nothing was computed again


def test_rerun_with_another_config_is_refused_before_any_work(toy_run):
    config, out, tiny = toy_run
    before = {p.name: p.read_text() for p in (out / "records.jsonl", out / "commands.jsonl")}
    changed = config.model_copy(update={
        "steering": config.steering.model_copy(update={"multipliers": [-4.0, 4.0]})})
    with pytest.raises(ValueError,
                       match=r"different config \(changed: steering\.multipliers\); .*new --out"):
        Runner(changed, out, progress=False, log=lambda _: None, model=tiny)
    assert {p.name: p.read_text()
            for p in (out / "records.jsonl", out / "commands.jsonl")} == before


def test_a_run_kept_before_a_config_key_existed_resumes(toy_run, tmp_path):
    import shutil

    config, out, tiny = toy_run
    older = tmp_path / "older"
    shutil.copytree(out, older)
    lines = (older / "records.jsonl").read_text().splitlines()
    for index, line in enumerate(lines):
        record = json.loads(line)
        if record.get("task") == "experiment":  # as an earlier version kept it: no lora.keep
            del record["config"]["baselines"]["lora"]["keep"]
            lines[index] = json.dumps(record)
    (older / "records.jsonl").write_text("\n".join(lines) + "\n")
    Runner(config, older, progress=False, log=lambda _: None, model=tiny)  # not refused
    changed = config.model_copy(update={"baselines": config.baselines.model_copy(update={
        "lora": config.baselines.lora.model_copy(update={"keep": "last"})})})
    with pytest.raises(ValueError, match=r"changed: baselines\.lora\.keep"):
        Runner(changed, older, progress=False, log=lambda _: None, model=tiny)


def test_an_interrupted_stage_still_records_the_time_it_spent(tmp_path, tiny):
    runner = Runner(parse_config(config_text(write_pairs(tmp_path / "toy.jsonl"))),
                    tmp_path / "out", progress=False, log=lambda _: None, model=tiny)

    def stage(writer):
        runner.unsteered(writer)  # some work, then the interruption
        raise KeyboardInterrupt

    with runner.run.writer() as writer, pytest.raises(KeyboardInterrupt):
        runner._timed(writer, "unsteered", stage)
    (record,) = [r for r in read_records(tmp_path / "out" / "records.jsonl")
                 if r["task"] == "compute"]
    assert record["stage"] == "unsteered" and record["interrupted"] is True
    assert record["seconds"] > 0 and record["token_layers"] > 0


def test_compute_accounting_counts_less_than_per_choice_full_passes(toy_run):
    from steerlab.experiment.compute import naive_token_layers

    _, out, tiny = toy_run
    records = read_records(out / "records.jsonl")
    first = min(r["invocation"] for r in records if r["task"] == "compute")
    stages = {r["stage"]: r for r in records if r["task"] == "compute" and r["invocation"] == first}
    scored = [r for r in records if r.get("task") in ("mc", "ab")]
    naive = naive_token_layers(scored, tiny.n_layers)
    assert 0 < stages["unsteered"]["token_layers"]
    unsteered = [r for r in scored if r.get("arm") == BASE]
    # the two letters of an A/B item share one pass: half the tokens of two full passes, or less
    assert stages["unsteered"]["token_layers"] < 0.75 * naive_token_layers(unsteered, tiny.n_layers)
    assert naive > 0 and all(r["seconds"] >= 0 for r in stages.values())
    for record in stages.values():  # by kind, adding up to the whole
        assert sum(record["token_layers_by_kind"].values()) == record["token_layers"]
    assert stages["methods"]["token_layers_by_kind"]["training"] > 0  # BiPO's backward passes
    assert stages["unsteered"]["token_layers_by_kind"]["training"] == 0
    from steerlab.experiment.report import compute_section

    table = "\n".join(compute_section(records, tiny.n_layers))
    assert "| training token-layers | forward token-layers | decoding token-layers |" in table
    assert f"{stages['methods']['token_layers_by_kind']['training']:,}" in table


def test_token_layers_are_counted_by_kind(tiny):
    """A scoring pass counts as forward, the layers a backward pass runs through as training
    (those above a trainable addition), each new token from a KV cache as decoding."""
    from steerlab.experiment.compute import TokenLayerCounter
    from steerlab.model.generation import generate_tokens

    counter = TokenLayerCounter()
    counter.watch(tiny.layers)
    ids = torch.randint(0, 100, (2, 5))
    with torch.no_grad():
        tiny.model(input_ids=ids)
    assert counter.kinds == {"training": 0, "forward": 2 * 5 * 4, "decoding": 0}
    assert counter.head == {"training": 0, "forward": 0}  # not watched yet
    counter.watch(tiny.layers, tiny.model.get_output_embeddings())  # the layers counted once
    before = counter.snapshot()
    with torch.no_grad():
        tiny.model(input_ids=ids, logits_to_keep=1)
    assert counter.since(before)["token_layers"] == 2 * 5 * 4
    assert counter.since(before)["head_tokens_by_kind"] == {"training": 0, "forward": 2}
    added = torch.zeros(tiny.d_model, requires_grad=True)
    hook = tiny.layers[1].register_forward_hook(
        lambda module, args, output: (output[0] + added, *output[1:])
        if isinstance(output, tuple) else output + added)
    before = counter.snapshot()
    tiny.model(input_ids=ids).logits.sum().backward()
    hook.remove()
    assert counter.since(before)["token_layers_by_kind"] == {
        "training": 2 * 5 * 2, "forward": 2 * 5 * 2, "decoding": 0}
    assert counter.since(before)["layer_calls_by_kind"] == {
        "training": 2, "forward": 2, "decoding": 0}
    assert counter.since(before)["passes"] == 1 and counter.since(before)["tokens"] == 2 * 5
    assert counter.since(before)["head_tokens_by_kind"] == {"training": 2 * 5, "forward": 0}
    before = counter.snapshot()
    generate_tokens(tiny, ["Hello", "Hi"], 4, progress=False)
    made = counter.since(before)
    kinds = made["token_layers_by_kind"]
    assert kinds["training"] == 0 and kinds["forward"] > 0 and kinds["decoding"] > 0
    # one token per sequence per layer per step; the first comes with the prompt's pass
    assert kinds["decoding"] == 2 * 3 * 4 and made["generated_tokens"] == 2 * 3
    assert made["passes"] == 4 and made["layer_calls_by_kind"]["decoding"] == 3 * 4
    assert made["head_tokens_by_kind"]["forward"] == 2 * 4  # the last position of each pass
    prompt = len(tiny.encode_prompt(tiny.format_prompt("Hello")))  # the longer one, templated
    assert counter.largest == {"forward": (2, prompt), "training": (2, 5), "decoding": (2, 1)}
    assert counter.count == sum(counter.kinds.values())
    counter.close()


def test_report_is_built_from_records_alone(toy_run):
    from steerlab.experiment.report import experiment_report

    _, out, _ = toy_run
    markdown, page = experiment_report(out, read_records(out / "records.jsonl"))
    text = markdown.read_text()
    assert "## Headline (test set)" in text and "| caa | method |" in text
    assert "does not detectably" in text or "beats" in text or "does worse" in text
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<table>" in html
    assert 'src="data:image/png;base64,' in html and 'src="validation_sweep.png"' not in html
    assert "## Sample efficiency" in text and "LoRA:" in text and "best baseline" in text


def test_leaderboard_ranks_methods_with_their_training_cost(toy_run):
    from steerlab.experiment.report import leaderboard_section

    _, out, _ = toy_run
    records = read_records(out / "records.jsonl")
    costs = {r["arm"]: r for r in records if r["task"] == "training"}
    assert set(costs) == {"caa", "bipo"}  # one each: a resumed run loads, it does not add
    assert all(c["seconds"] > 0 and c["token_layers"] > 0 for c in costs.values())
    head = headline(records)
    lines = leaderboard_section(records, head)
    rows = [line for line in lines if line.startswith("| 1 ") or line.startswith("| 2 ")]
    ranked = sorted(["caa", "bipo"], key=lambda a: (-head.row(a).test.estimate, a))
    assert [row.split("|")[2].strip() for row in rows] == ranked
    assert f"{costs['bipo']['token_layers']:,}" in "\n".join(lines)


def test_cli_run_checks_the_config_and_reports_errors_with_their_place(tmp_path, model_dir):
    from typer.testing import CliRunner

    from steerlab.cli import app

    good = tmp_path / "good.yaml"
    good.write_text(config_text(write_pairs(tmp_path / "d.jsonl")).replace(
        "model: tiny", f"model: {model_dir}"))
    result = CliRunner().invoke(app, ["run", str(good), "--check"])
    assert result.exit_code == 0 and "config is valid" in result.output
    unknown = tmp_path / "unknown.yaml"  # --check reads the model's layers: it must exist
    unknown.write_text(config_text(write_pairs(tmp_path / "d.jsonl")))
    result = CliRunner().invoke(app, ["run", str(unknown), "--check"])
    assert result.exit_code == 1 and "'tiny'" in result.output
    assert "train pairs 16" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("batch_size: 4", "batch_size: many"))
    result = CliRunner().invoke(app, ["run", str(bad)])
    assert (result.exit_code == 1
            and "bad.yaml:3: batch_size: Input should be a valid integer" in result.output)


# ---- conditional steering arm -------------------------------------------------------------------


def test_conditional_arm_gates_the_methods_setting(tmp_path, tiny):
    from steerlab.analysis.run_analysis import analyze
    from steerlab.experiment.report import experiment_report
    from steerlab.steering.conditions import Condition

    config = parse_config(config_text(
        write_pairs(tmp_path / "toy.jsonl"), methods={"caa": {"method": "caa"}},
        steering={"layers": [2], "multipliers": [-2, 2]},
        conditional={"method": "caa", "condition": {
            "positive": {"dataset": "advbench", "limit": 12},
            "negative": {"dataset": "harmless", "limit": 12},
            "layer": 1}},
        evaluations={"reliability": False,
                     "side_effects": {"prompts": {"dataset": "harmless"}, "n_prompts": 5}},
    ))
    out = tmp_path / "out"
    Runner(config, out, progress=False, log=lambda _: None, model=tiny)()
    records = read_records(out / "records.jsonl")
    info = next(r for r in records if r["task"] == "experiment")
    arm = next(r for r in records if r.get("task") == "arm" and r["arm"] == "caa|cond")
    condition = Condition.load(out / "vectors" / "caa-cond.condition.safetensors")
    assert arm["kind"] == "conditional" and arm["condition"] == condition.describe()
    search = arm["threshold_search"]
    assert (search["n_positive"], search["n_negative"]) == (4, 4) and 0 <= search["f1"] <= 1
    assert max(row["f1"] for row in search["table"]) == search["f1"]
    assert condition.meta.extra["n_positive"] == 8  # the other 8 of 12 gave the direction
    chosen = select(records, "caa", info["val"])
    for dataset in (info["val"], info["test"]):
        gated = [r for r in records if r.get("arm") == "caa|cond" and r.get("dataset") == dataset]
        assert len(gated) == (8 if dataset == info["val"] else 12)
        assert {(r["multiplier"], tuple(r["layers"])) for r in gated} == {
            (chosen.multiplier, tuple(chosen.layers))}
        assert all(r["condition"] == condition.describe() for r in gated)
    # Each item is scored either exactly as the method steers it or exactly unsteered.
    steered = {r["item_id"]: r["logprobs"] for r in records if r.get("arm") == "caa"
               and r.get("dataset") == info["test"] and r["multiplier"] == chosen.multiplier}
    base = {r["item_id"]: r["logprobs"] for r in records if r.get("arm") == BASE
            and r.get("dataset") == info["test"]}
    assert all(steered[item] != base[item] for item in base)
    for record in (r for r in records
                   if r.get("arm") == "caa|cond" and r.get("dataset") == info["test"]):
        assert record["logprobs"] in (steered[record["item_id"]], base[record["item_id"]])
    assert "caa|cond" in [row.arm for row in headline(records).rows]
    kl = [s for s in analyze(records).side_effects if s.metric.startswith("KL")]
    assert sorted(s.condition_id or "-" for s in kl) == sorted(["-", condition.id])
    text = experiment_report(out, records)[0].read_text()
    assert "| caa\\|cond | conditional |" in text and "| harmless | caa\\|cond |" in text


def test_conditional_config_errors(tmp_path):
    data = write_pairs(tmp_path / "d.jsonl")
    condition = {"positive": {"dataset": "advbench"}, "negative": {"dataset": "harmless"},
                 "layer": 3}
    with pytest.raises(ConfigError, match="conditional.method: no method named 'dpo'"):
        parse_config(config_text(data, conditional={"method": "dpo", "condition": condition}))
    with pytest.raises(ConfigError, match="conditional.condition.layer: 3 is above the steered "
                                          "layer 1"):
        parse_config(config_text(data, conditional={"method": "caa", "condition": condition}))
    condition = {**condition, "layer": 1, "negative": {"dataset": "no-such-set"}}
    with pytest.raises(ConfigError, match="conditional.condition.negative.dataset"):
        parse_config(config_text(data, conditional={"method": "caa", "condition": condition}))


def test_config_numbers_must_be_finite():
    text = """name: x
data:
  train: {dataset: refusal, split: train}
  val_size: 10
  test: {dataset: refusal, split: test}
methods:
  caa: {method: caa}
steering:
  layers: [3]
  multipliers: [1, .nan, .inf]
  norm_ratio: .inf
"""
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "nan.yaml")
    message = str(raised.value)
    assert "nan.yaml:10: steering.multipliers.1: Input should be a finite number" in message
    assert "steering.norm_ratio: Input should be a finite number" in message


def test_layers_scan_trains_at_the_layers_a_scan_picks_and_reruns_read_it_back(tmp_path, tiny):
    config = parse_config(config_text(
        write_pairs(tmp_path / "toy.jsonl"), methods={"caa": {"method": "caa"}},
        steering={"layers": "scan", "scan_top": 1, "multipliers": [-2, 2]}))
    runner = Runner(config, tmp_path / "out", progress=False, log=lambda _: None, model=tiny)
    with runner.run.writer() as writer:
        chosen = runner.candidate_layers(writer)
    (scan,) = [r for r in read_records(tmp_path / "out" / "records.jsonl")
               if r["task"] == "layer-scan"]
    shifts = {s["layer"]: s["shift"] for s in scan["scan"]["scores"]}
    assert chosen == scan["chosen_layers"] == [max(shifts, key=lambda k: (shifts[k], -k))]
    assert scan["scan"]["multiplier"] == 2 and len(shifts) == tiny.n_layers
    again = Runner(config, tmp_path / "out", progress=False, log=lambda _: None, model=tiny)
    with again.run.writer() as writer:
        assert again.candidate_layers(writer) == chosen
    assert sum(r["task"] == "layer-scan"
               for r in read_records(tmp_path / "out" / "records.jsonl")) == 1


def test_a_method_entry_sweeps_its_own_multipliers(tmp_path, tiny):
    """ITI's α lives on another scale than a residual vector's multiplier: an entry's own
    ``multipliers`` replace the grid's for that method alone, in validation and on test."""
    config = parse_config(config_text(
        write_pairs(tmp_path / "toy.jsonl"),
        methods={"caa": {"method": "caa"}, "wide": {"method": "caa", "multipliers": [-8, 8, 16]}},
        steering={"layers": [1], "multipliers": [-2, 2]}))
    assert config.methods["wide"].multipliers == [-8, 8, 16]
    assert "multipliers" not in method_config(config.methods["wide"]).model_dump()
    runner = Runner(config, tmp_path / "out", progress=False, log=lambda _: None, model=tiny)
    with runner.run.writer() as writer:
        runner.methods(writer)
    records = read_records(tmp_path / "out" / "records.jsonl")
    swept = {arm: {r["multiplier"] for r in records if r.get("arm") == arm and "multiplier" in r}
             for arm in ("caa", "wide")}
    assert swept == {"caa": {-2, 2}, "wide": {-8, 8, 16}}  # A/B test sets: every multiplier
    with pytest.raises(ConfigError, match="methods.wide.multipliers: List should have at least"):
        parse_config(config_text(write_pairs(tmp_path / "toy.jsonl"),
                                 methods={"wide": {"method": "caa", "multipliers": []}}))


def test_leaderboard_shows_the_side_effects_of_each_chosen_setting(toy_run):
    """The issue's leaderboard lists side effects per method: the perplexity and capability
    change measured at the setting validation chose, and nothing for a setting not measured."""
    from steerlab.evaluation.side_effects import SideEffect
    from steerlab.experiment.report import leaderboard_section

    _, out, _ = toy_run
    records = read_records(out / "records.jsonl")
    head = headline(records)
    chosen = head.row("caa").selection
    effects = [
        SideEffect("perplexity", "text", chosen.vector_id, chosen.multiplier, 4, 10.0, 12.0,
                   0.2, 0.1, 0.3, ""),
        SideEffect("accuracy", "quiz", chosen.vector_id, chosen.multiplier, 4, 0.5, 0.25,
                   -0.25, -0.5, 0.0, ""),
        SideEffect("perplexity", "text", chosen.vector_id, chosen.multiplier + 1, 4, 10.0, 30.0,
                   2.0, 1.0, 3.0, ""),  # another multiplier: not the chosen setting
    ]
    lines = leaderboard_section(records, head, effects)
    row = {line.split("|")[2].strip(): line for line in lines if line.startswith("| ")}
    assert "| +20% | -0.250 |" in row["caa"] and "+200%" not in row["caa"]
    assert "| - | - |" in row["bipo"]


def test_the_steering_grid_takes_an_intervention_and_positions(tmp_path, tiny):
    """The run config's grid carries every field a setting has beside vector, multiplier and
    condition (its ``conditional`` block): an angular grid on prompt positions sweeps angles,
    its records say so; what would fail mid-run is refused with the key path."""
    data = write_pairs(tmp_path / "toy.jsonl")
    config = parse_config(config_text(
        data, methods={"caa": {"method": "caa"}},
        steering={"layers": [1], "multipliers": [-30, 30], "positions": "prompt",
                  "intervention": "angular"}))
    runner = Runner(config, tmp_path / "out", progress=False, log=lambda _: None, model=tiny)
    with runner.run.writer() as writer:
        runner.methods(writer)
    steered = [r for r in read_records(tmp_path / "out" / "records.jsonl")
               if r.get("arm") == "caa" and "multiplier" in r]
    assert steered and {r["multiplier"] for r in steered} == {-30, 30}
    assert {(r["intervention"], r["positions"]) for r in steered} == {("angular", "prompt")}
    for grid, message in [
        ({"intervention": "angular", "multipliers": [200]}, "an angle in degrees"),
        ({"intervention": "ablate", "norm_ratio": 0.1}, "norm_ratio scales an added vector"),
        ({"intervention": "ablate", "layers": "scan"}, "give the layers of an ablate grid"),
        ({"intervention": "rotate"}, "steering.intervention"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_config(config_text(data, steering={"layers": [1], "multipliers": [1], **grid}))

"""Nonsense is refused, not run (issue 28): pairs that state no preference, additions so large
the model reads only the vector, ties scored as a choice, empty or negative lists and counts,
steering options without a vector, run configs that would fail mid-run or write outside the
runs folder, strings passed as numbers to the server."""

from __future__ import annotations

import pytest
from test_cli_hostile import clean_failure
from test_serve_hostile import assert_openai_error, body, raw
from tiny import PAIRS, invoke, make_vector, random_vector, tiny_model, write_jsonl

from steerlab.data.files import DataError, MCItem, PreferencePair, load_pairs
from steerlab.evaluation.likelihood import evaluate_ab, evaluate_mc
from steerlab.experiment.config import ConfigError, parse_config
from steerlab.methods import train_vector
from steerlab.methods.scan import scan_layers
from steerlab.serve.app import create_app
from steerlab.serve.launch import serving
from steerlab.serve.schema import ServeSettings
from steerlab.steering.setting import SteeringSetting
from steerlab.steering.vectors import VectorMeta, meta_for

SAME = [PreferencePair(f"Question {i}?", " Yes", " Yes", id=f"s{i}") for i in range(6)]


@pytest.mark.parametrize("method", ["caa", "pca", "pca-center", "probe"])
def test_pairs_that_state_no_preference_train_nothing(tiny, method):
    with pytest.raises(ValueError, match="6 pair\\(s\\) have the same chosen and rejected"):
        train_vector(tiny, SAME, method, [1])


def test_pairs_that_state_no_preference_are_not_scanned_evaluated_or_loaded(tiny, tmp_path):
    with pytest.raises(ValueError, match="same chosen and rejected answer, e.g. s0"):
        scan_layers(tiny, SAME, progress=False)
    with pytest.raises(ValueError, match="state no preference"):
        evaluate_ab(tiny, SAME, progress=False)
    path = write_jsonl(tmp_path / "same.jsonl", [
        {"prompt": "a", "chosen": "b", "rejected": "c"},
        {"prompt": "d", "chosen": " Yes", "rejected": " Yes"}])
    with pytest.raises(DataError, match=r"same.jsonl:2: fields 'chosen' and 'rejected' are the "
                                        r"same answer"):
        load_pairs(path)


def test_an_addition_the_model_would_drown_in_is_refused(tiny):
    vector = random_vector(tiny, [1])  # residual norm 5 stored
    assert SteeringSetting(vector, 8.0, norm_ratio=1.0).additions()  # 8 residual norms: fine
    with pytest.raises(ValueError, match=r"over 100 times the layer's mean residual norm 5: "
                                         r"the model would read only the vector"):
        SteeringSetting(vector, 1e30, norm_ratio=1.0).additions()
    unscaled = make_vector(tiny, layers=(1,)) * 1e30  # no residual norms stored
    with pytest.raises(ValueError, match="over 1e\\+06: the model would read only the vector"):
        SteeringSetting(unscaled, 1.0).additions()
    with pytest.raises(ValueError, match="residual norm of layer 1 must be a finite number above"):
        VectorMeta(**{**meta_for(tiny, "x").model_dump(), "residual_norms": {1: -3.0}})


def test_a_tie_is_scored_as_a_tie_not_as_the_first_choice(tiny):
    items = [MCItem("Which?", ("the same", "the same"), 1, id="t1")]
    (record,) = evaluate_mc(tiny, items, progress=False)
    assert record["prediction"] is None and record["tie"] is True
    assert record["score"] == pytest.approx(0.5) and record["correct"] is False


@pytest.fixture()
def pairs_file(tmp_path):
    return write_jsonl(tmp_path / "pairs.jsonl", [p.__dict__ for p in PAIRS])


@pytest.mark.parametrize("args, fragments", [
    (["eval", "--vector", "V", "--multipliers", ""], ["--multipliers", "comma-separated numbers"]),
    (["eval", "--vector", "V", "--multipliers", "1,,2"], ["--multipliers", "an empty item"]),
    (["eval", "--multipliers", "1,2"], ["--multipliers", "steer(s) nothing without a vector"]),
    (["eval", "--layers", "2"], ["--layers", "without a vector"]),
    (["eval", "--vector", "V", "--multipliers", "1e30"], ["over 100", "read only the vector"]),
    (["generate", "Hi", "--multiplier", "4"], ["--multiplier", "without a vector"]),
    (["train", "--layer", "", "--out", "OUT"], ["--layer", "got nothing"]),
    (["train", "--layer", "1", "--subset-sizes", "1,2", "--seeds", "-1", "--out", "OUT"],
     ["--seeds", "greater than or equal to"]),
    (["scan", "--n", "0"], ["--n", "greater than or equal to 1"]),
    (["scan", "--holdout", "-0.5"], ["--holdout", "greater than or equal to"]),
    (["condition", "--positive", "D", "--negative", "D", "--layer", "1", "--out", "OUT",
      "--holdout", "-0.5"], ["--holdout", "greater than or equal to"]),
    (["baseline", "shots", "--reserve", "-1"], ["--reserve", "greater than or equal to"]),
    (["side-effects", "--vector", "V", "--n", "-3", "--out", "OUT"],
     ["--n", "greater than or equal to"]),
    (["side-effects", "--vector", "V", "--max-tokens", "0", "--out", "OUT"],
     ["--max-tokens", "greater than or equal to"]),
    (["generate-eval", "--multipliers", "-4,4", "--out", "OUT"], ["without a vector"]),
    (["serve", "--max-multiplier", "inf"], ["--max-multiplier", "finite"]),
    (["serve", "--web", "--runs", "D"], ["--runs", "is a file"]),
    (["serve", "--vllm-option", "enforce_eager=true"], ["--vllm-option", "needs --engine vllm"]),
    (["serve", "--engine", "vllm", "--vllm-option", "enforce_eager"],
     ["--vllm-option", "'enforce_eager' is not NAME=VALUE"]),
    (["concept", "--concept", " ", "--vector", "V", "--out", "OUT"], ["--concept is empty"]),
])
def test_empty_negative_and_vectorless_options_name_the_option(model_dir, pairs_file, tmp_path,
                                                                 args, fragments):
    vector = tmp_path / "v.safetensors"
    random_vector(tiny_model("llama"), [1, 2]).save(vector)
    out = tmp_path / "out.jsonl"
    known = {"V": str(vector), "D": str(pairs_file), "OUT": str(out)}
    args = [known.get(a, a) for a in args]
    command = args[:2] if args[0] in ("baseline",) else args[:1]
    rest = args[len(command):]
    extra = {"eval": ["--data", str(pairs_file), "--out", str(out)],
             "generate": [], "train": ["--data", str(pairs_file)],
             "scan": ["--data", str(pairs_file)], "condition": [],
             "baseline": ["--data", str(pairs_file)], "side-effects": [],
             "generate-eval": ["--data", str(pairs_file)], "serve": [],
             "concept": []}[args[0]]
    result = invoke(*command, "--model", model_dir, *extra, *rest)
    clean_failure(result, *fragments)
    assert not out.exists() or not out.read_text()


def test_generate_eval_refuses_repeated_question_ids_and_analyze_refuses_foreign_records(
        model_dir, tmp_path):
    questions = write_jsonl(tmp_path / "q.jsonl", [{"id": "q1", "question": "Hi?"},
                                                   {"id": "q1", "question": "Bye?"}])
    result = invoke("generate-eval", "--model", model_dir, "--data", questions, "--out",
                    tmp_path / "g.jsonl", "--max-new-tokens", "2")
    clean_failure(result, "question ids must be unique", "q1")
    run = tmp_path / "run"
    run.mkdir()
    (run / "records.jsonl").write_text("{}\n{}\n")
    clean_failure(invoke("analyze", run), "none of its 2 records says its task")


RUN = """
name: nonsense
model: MODEL
data: {train: {dataset: refusal, split: train, limit: 8}, val_size: 4,
       test: {dataset: refusal, split: test, limit: 4}}
methods: {caa: {method: caa}}
steering: {layers: [1], multipliers: [1], norm_ratio: 0.05}
"""


@pytest.mark.parametrize("change, fragment", [
    (("name: nonsense", "name: ../../../x"), "name: String should match pattern"),
    (("multipliers: [1]", "multipliers: [1e300]"), "multiplier 1e+300 adds"),
    (("layers: [1]", "layers: [-1]"), "steering.layers"),
])
def test_a_run_config_that_would_fail_or_escape_is_refused_up_front(change, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("+", r"\+")):
        parse_config(RUN.replace(*change), check_data=False)


def test_run_check_refuses_layers_the_model_lacks(model_dir, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(RUN.replace("MODEL", model_dir).replace("layers: [1]", "layers: [99]"))
    clean_failure(invoke("run", config, "--check"),
                  "steering.layers: layer 99 is beyond the model's 4 layers")
    config.write_text(RUN.replace("MODEL", model_dir))
    assert invoke("run", config, "--check").exit_code == 0


def test_the_server_refuses_strings_for_numbers_and_temperatures_that_overflow():
    model = tiny_model("llama")
    vectors = {"v": random_vector(model, [1, 2], seed=1)}
    with serving(create_app(model, vectors, ServeSettings(max_tokens=4))) as base:
        for text, fragment in [
            (body(temperature="0"), "temperature"),
            (body(temperature=1e-300), "at least 0.01"),
            (body(temperature=1e-45), "at least 0.01"),
            (body(steering=[{"vector": "v", "multiplier": "4"}]), "steering[0].multiplier"),
            (body(steering=[{"vector": "v", "multiplier": 4, "norm_ratio": 1e30}]),
             "read only the vector"),
        ]:
            assert_openai_error(*raw(base, text), 400, fragment)
        code, reply = raw(base, body(temperature=0.5, seed=1))
        assert code == 200 and reply["choices"][0]["message"]["content"] is not None

"""lm-evaluation-harness's ``steerlab`` model type: its per-request log-likelihoods equal
steerlab's own scoring of the same tokens, steered and unsteered, and `steerlab lm-eval` runs
steerlab's offline tasks.

Skipped, with the reason printed, where lm-eval is not installed (``pip install -e .[harness]``;
``make test`` installs it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed "
                    "(pip install -e .[harness])")

from lm_eval.api.instance import Instance  # noqa: E402
from tiny import fixed_condition, invoke, random_vector, tiny_model  # noqa: E402

from steerlab.harness.model import SteerlabLM  # noqa: E402
from steerlab.model.encoding import TokenSequence  # noqa: E402
from steerlab.model.scoring import score_sequences  # noqa: E402
from steerlab.steering.setting import Composition, SteeringSetting  # noqa: E402
from steerlab.steering.vectors import SteeringVector  # noqa: E402

REQUESTS = [("Question: why is the sky blue?\nAnswer:", " Because air scatters blue light."),
            ("Question: why is the sky blue?\nAnswer:", " No idea"),
            ("The capital of France is", " Paris"),
            ("A much longer context that runs on for a while before it asks: yes or no?", " yes")]


@pytest.fixture(scope="module")
def folder(model_dir):
    """The tiny llama's folder, as lm-eval users name models."""
    return Path(model_dir)


@pytest.fixture(scope="module")
def vector(tmp_path_factory):
    """A random vector for the tiny llama, in a file."""
    path = tmp_path_factory.mktemp("harness") / "v.safetensors"
    return random_vector(tiny_model("llama"), [1, 2], seed=1).save(path)


@pytest.mark.parametrize("args", [
    {},
    {"multiplier": "4", "layers": "1,2"},
    {"multiplier": "2", "norm_ratio": "0.5"},
    {"multiplier": "1", "intervention": "ablate", "layers": "2"},
], ids=["unsteered", "add", "norm-ratio", "ablate"])
def test_harness_loglikelihoods_equal_steerlabs_scoring(folder, vector, args):
    steered = {"vector": str(vector), **args} if args else {}
    lm = SteerlabLM(model=str(folder), batch_size=2, **steered)
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(REQUESTS)]
    harness = [logprob for logprob, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    seqs = []
    for context, continuation in REQUESTS:
        head, tail = lm._encode_pair(context, continuation)  # lm-eval's own split into tokens
        seqs.append(TokenSequence(tuple(head + tail), len(head)))
    setting = (Composition((SteeringSetting(
        SteeringVector.load(steered["vector"]), float(args["multiplier"]),
        [int(x) for x in args["layers"].split(",")] if "layers" in args else None,
        float(args["norm_ratio"]) if "norm_ratio" in args else None,
        intervention=args.get("intervention", "add")),)) if args else None)
    if setting is None:
        ours = score_sequences(lm.handle, seqs, progress=False)
    else:
        with setting.apply(lm.handle):
            ours = score_sequences(lm.handle, seqs, progress=False)
    assert harness == pytest.approx([s.logprob for s in ours], abs=1e-4)
    if args:  # the steering changed the scores
        plain = [p for p, _ in SteerlabLM(model=str(folder), batch_size=2)
                 .loglikelihood(requests, disable_tqdm=True)]
        assert harness != pytest.approx(plain, abs=1e-3)


def harness_scores(lm) -> list[float]:
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(REQUESTS)]
    return [logprob for logprob, _ in lm.loglikelihood(requests, disable_tqdm=True)]


def steerlab_scores(lm, steering) -> list[float]:
    """steerlab's own log-probabilities of the requests, split into tokens as lm-eval splits
    them, under ``steering`` (a setting or a composition)."""
    seqs = [TokenSequence(tuple(head + tail), len(head))
            for head, tail in (lm._encode_pair(*pair) for pair in REQUESTS)]
    with steering.apply(lm.handle):
        return [s.logprob for s in score_sequences(lm.handle, seqs, progress=False)]


def test_a_composition_with_a_condition_from_a_steering_file_scores_as_steerlab(folder, vector,
                                                                              tmp_path):
    """Several settings at once, one of them gated by a condition on the prompt, given to the
    harness as one JSON file."""
    lm = SteerlabLM(model=str(folder), batch_size=2)
    second = random_vector(lm.handle, [3], seed=2)
    second.save(tmp_path / "second.safetensors")
    condition = fixed_condition(lm.handle, layer=1, threshold=0.0)
    condition.save(tmp_path / "gate.safetensors")
    (tmp_path / "steering.json").write_text(json.dumps([
        {"vector": str(vector), "multiplier": 3, "layers": [1]},
        {"vector": "second.safetensors", "multiplier": -4, "condition": "gate.safetensors"},
        {"vector": str(vector), "multiplier": 1, "intervention": "ablate",
         "layers": [2]},
    ]))
    steered = SteerlabLM(model=str(folder), batch_size=2,
                         steering=str(tmp_path / "steering.json"))
    composition = Composition((
        SteeringSetting(SteeringVector.load(vector), 3.0, [1]),
        SteeringSetting(second, -4.0, condition=condition),
        SteeringSetting(SteeringVector.load(vector), 1.0, [2],
                        intervention="ablate")))
    assert harness_scores(steered) == pytest.approx(steerlab_scores(lm, composition), abs=1e-4)
    assert harness_scores(steered) != pytest.approx(harness_scores(lm), abs=1e-3)


@pytest.mark.parametrize("content, message", [
    ("not json", "not a readable JSON file"),
    ("[]", "expected a non-empty JSON list"),
    ('[{"vector": "v.safetensors", "multiplier": "x"}]', r"\[0\]\.multiplier"),
    ('[{"vector": "missing.safetensors"}]', r"\[0\]\.vector: .*missing"),
])
def test_a_bad_steering_file_names_the_file_term_and_field(folder, tmp_path, content, message):
    path = tmp_path / "steering.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as found:
        SteerlabLM(model=str(folder), steering=str(path))
    assert str(path) in str(found.value)


def test_a_layer_the_model_lacks_is_refused_when_the_model_loads(folder, vector):
    with pytest.raises(ValueError, match=r"no direction for layers \[9\]"):
        SteerlabLM(model=str(folder), vector=str(vector), layers="9")


def test_steerlab_lm_eval_runs_an_offline_task(folder, vector, tmp_path):
    out = tmp_path / "results"
    result = invoke("lm-eval", "--model", "steerlab", "--model_args",
                    f"model={folder},vector={vector},multiplier=4",
                    "--tasks", "steerlab_piqa", "--limit", "3", "--output_path", str(out),
                    "--log_samples")
    assert result.exit_code == 0, result.output
    written = next(out.rglob("results_*.json"))
    results = json.loads(written.read_text())["results"]["steerlab_piqa"]
    assert 0 <= results["acc,none"] <= 1
    samples = [json.loads(line) for line in next(out.rglob("samples_steerlab_piqa_*.jsonl"))
               .read_text().splitlines()]
    assert len(samples) == 3


def test_side_effects_through_the_harness_appear_in_analyze_with_paired_intervals(folder, vector,
                                                                                   tmp_path):
    from steerlab.records import read_records

    run = tmp_path / "run"
    result = invoke("side-effects", "--model", str(folder), "--vector", vector,
                    "--multipliers", "4", "--harness", "steerlab_piqa,steerlab_wikitext",
                    "--n", "6", "--out", run)
    assert result.exit_code == 0, result.output
    records = read_records(run / "records.jsonl")
    assert {r["dataset"] for r in records} == {"harness:steerlab_piqa", "harness:steerlab_wikitext"}
    piqa = [r for r in records if r["task"] == "mc"]
    assert sorted(r["multiplier"] for r in piqa) == [0.0] * 6 + [4.0] * 6
    assert all(len(r["logprobs"]) == 2 and r["answer"] in (0, 1) for r in piqa)
    assert len({r["item_id"] for r in piqa}) == 6  # the same documents at both multipliers
    texts = [r for r in records if r["task"] == "perplexity"]
    assert len(texts) == 12 and all(r["n_tokens"] > 0 and r["logprob"] < 0 for r in texts)
    analysis = invoke("analyze", run)
    assert analysis.exit_code == 0, analysis.output
    page = (run / "analysis.md").read_text()
    assert "harness:steerlab_piqa" in page and "harness:steerlab_wikitext" in page
    assert "P(gain > 0)" in page  # the paired contrast against multiplier 0


def test_model_args_place_the_model_as_everywhere_in_steerlab(folder):
    """lm-eval's model_args take steerlab's dtype (and device map, quantisation); lm-eval's
    default CUDA device means the CPU where there is none."""
    import torch

    lm = SteerlabLM(model=str(folder), batch_size=2, dtype="bfloat16", device="cuda:0")
    assert lm.handle.dtype == torch.bfloat16 and lm.handle.placement["dtype"] == "bfloat16"
    records = [logprob for logprob, _ in lm.loglikelihood(
        [Instance("loglikelihood", {}, REQUESTS[0], 0)], disable_tqdm=True)]
    assert len(records) == 1 and records[0] < 0


def test_a_users_task_folder_loads_beside_steerlabs(folder, vector, tmp_path):
    """--include_path adds a folder (or several, joined with ':') beside steerlab's tasks:
    lm-eval reads its one string as one folder, so steerlab gives it a list."""
    from steerlab.harness import TASKS
    from steerlab.harness.task_paths import task_paths

    mine = tmp_path / "my_tasks"
    mine.mkdir()
    (mine / "my_piqa.yaml").write_text(
        f"include: {TASKS / 'steerlab_piqa.yaml'}\ntask: my_piqa\n")
    assert task_paths(f"{mine}:{tmp_path}") == [str(mine), str(tmp_path), str(TASKS)]
    with pytest.raises(FileNotFoundError, match="--include_path: no folder"):
        task_paths(str(tmp_path / "nowhere"))
    out = tmp_path / "results"
    result = invoke("lm-eval", "--model", "steerlab", "--model_args", f"model={folder}",
                    "--tasks", "my_piqa,steerlab_piqa", "--include_path", str(mine),
                    "--limit", "2", "--output_path", str(out))
    assert result.exit_code == 0, result.output
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    assert {"my_piqa", "steerlab_piqa"} <= set(results)


def test_model_args_take_every_field_of_a_setting_a_condition_included(folder, vector, tmp_path):
    """``condition``, ``positions`` and ``intervention`` as lm-eval's model_args strings: the
    harness scores what steerlab's own setting scores."""
    lm = SteerlabLM(model=str(folder), batch_size=2)
    condition = fixed_condition(lm.handle, layer=1, threshold=-0.05)
    condition.save(tmp_path / "gate.safetensors")
    steered = SteerlabLM(model=str(folder), batch_size=2, vector=str(vector), multiplier="30",
                         layers="2", positions="prompt", intervention="angular",
                         condition=str(tmp_path / "gate.safetensors"))
    setting = SteeringSetting(SteeringVector.load(vector), 30.0, [2], None, "prompt", "angular",
                              condition)
    assert harness_scores(steered) == pytest.approx(steerlab_scores(lm, setting), abs=1e-4)
    assert harness_scores(steered) != pytest.approx(harness_scores(lm), abs=1e-3)
    with pytest.raises(ValueError, match="condition=... gates a vector"):
        SteerlabLM(model=str(folder), condition=str(tmp_path / "gate.safetensors"))

"""SAE features as steering vectors: SAEs built and saved by sae-lens itself on the tiny model,
read back, their decoder rows steering exactly as a hand-written hook adding them; top-features
finding a planted feature; Neuronpedia's rows; the `sae` method in a run config."""

import gzip
import json

import pytest
import torch
from test_experiment import config_text, write_pairs
from tiny import (
    CONFIGS,
    PAIRS,
    byte_tokenizer,
    invoke,
    logits,
    saved_sae,
    write_jsonl,
)
from transformers import AutoModelForCausalLM

from steerlab.data.files import PreferencePair
from steerlab.experiment.config import parse_config
from steerlab.experiment.plan import StageWork, count_work
from steerlab.experiment.report import experiment_report
from steerlab.experiment.runner import Runner
from steerlab.methods import train_vector
from steerlab.methods.contrast import read_contrast
from steerlab.methods.sae import (
    Feature,
    FeatureError,
    feature_vector,
    load_features,
    read_feature_file,
    top_features,
)
from steerlab.methods.sae.dictionary import layer_of_hook
from steerlab.methods.training import TrainingRun
from steerlab.model.handle import wrap_model
from steerlab.model.stand_in import stand_in
from steerlab.records import read_records
from steerlab.steering.setting import SteeringSetting
from steerlab.steering.vectors import SteeringVector

PLANTED = 5
MORE = [PreferencePair(f"Question {i}: is {i} even?", f" {'Yes' if i % 2 else 'No'}, it is.",
                       f" {'No' if i % 2 else 'Yes'}.", id=f"m{i}") for i in range(16)]


def test_an_sae_saved_by_sae_lens_loads_with_its_rows_hook_and_encoder(tmp_path, tiny):
    sae = saved_sae(tmp_path / "sae", tiny.d_model)
    loaded = load_features(tmp_path / "sae")
    assert loaded.format == "sae-lens" and loaded.architecture == "standard"
    assert loaded.n_features == 48 and loaded.d_model == tiny.d_model
    assert loaded.hook_name == "blocks.1.hook_resid_post" and loaded.layer == 1
    for index in (0, 17, 47):
        assert torch.equal(loaded.row(index), sae.W_dec[index].detach())
    x = torch.randn(3, tiny.d_model)
    assert torch.equal(loaded.encode(x), sae.encode(x).detach())
    assert load_features(tmp_path / "sae" / "cfg.json").layer == 1  # the config's path works too
    with pytest.raises(FeatureError, match=r"no feature 48 \(it has indices 0–47\)"):
        loaded.row(48)


@pytest.mark.parametrize("kind", ["topk", "jumprelu"])
def test_other_architectures_load_and_encode_through_sae_lens(tmp_path, tiny, kind):
    sae = saved_sae(tmp_path / kind, tiny.d_model, kind=kind)
    loaded = load_features(tmp_path / kind)
    assert loaded.architecture == kind
    x = torch.randn(4, tiny.d_model)
    assert torch.equal(loaded.encode(x), sae.encode(x).detach())
    assert torch.equal(loaded.row(3), sae.W_dec[3].detach())


@pytest.mark.parametrize("multiplier", [1.0, -4.0])
def test_steering_with_a_feature_adds_its_decoder_row_times_the_multiplier(tmp_path, tiny,
                                                                          multiplier):
    sae = saved_sae(tmp_path / "sae", tiny.d_model)
    vector = feature_vector(tiny, load_features(tmp_path / "sae"), [Feature(7), Feature(9, -0.5)])
    assert vector.layers == [1] and vector.meta.method == "sae"
    assert vector.meta.extra["sae"]["hook_name"] == "blocks.1.hook_resid_post"
    assert vector.meta.extra["features"] == [{"index": 7, "weight": 1.0},
                                             {"index": 9, "weight": -0.5}]
    row = (sae.W_dec[7] - 0.5 * sae.W_dec[9]).detach()

    def add_row(module, args, output):  # the plain reference: a hand-written hook
        hidden = output[0] if isinstance(output, tuple) else output
        steered = hidden + multiplier * row.to(hidden.dtype)
        return (steered, *output[1:]) if isinstance(output, tuple) else steered

    handle = tiny.layers[1].register_forward_hook(add_row)
    try:
        expected = logits(tiny)
    finally:
        handle.remove()
    with SteeringSetting(vector, multiplier).apply(tiny):
        steered = logits(tiny)
    assert torch.allclose(steered, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(steered, logits(tiny), atol=1e-4)


def test_a_planted_feature_comes_first_in_top_features(tmp_path, tiny):
    contrast = read_contrast(tiny, MORE, [1], progress=False)
    gap = contrast.differences(1).mean(dim=0)
    generator = torch.Generator().manual_seed(1)
    encoder = torch.randn(tiny.d_model, 48, generator=generator) * 0.05
    encoder[:, PLANTED] = 4 * gap / gap.norm() ** 2  # fires in proportion to the behaviour's gap
    saved_sae(tmp_path / "sae", tiny.d_model, W_enc=encoder, b_enc=torch.zeros(48),
              b_dec=torch.zeros(tiny.d_model))
    found = top_features(tiny, load_features(tmp_path / "sae"), MORE, k=5, progress=False)
    assert found[0].index == PLANTED and found[0].difference > 0
    assert found[0].higher > found[0].lower
    sizes = [abs(f.difference) for f in found]
    assert sizes == sorted(sizes, reverse=True) and len(found) == 5


def test_the_layer_of_each_hook_name(tmp_path):
    assert layer_of_hook("blocks.3.hook_resid_post") == 3
    assert layer_of_hook("blocks.3.hook_resid_pre") == 2  # the output of the layer below
    assert layer_of_hook("model.layers.5") == 5
    assert layer_of_hook(None) is None
    with pytest.raises(FeatureError, match="reads the embeddings"):
        layer_of_hook("blocks.0.hook_resid_pre", "x")
    with pytest.raises(FeatureError, match="not the residual stream after a decoder layer"):
        layer_of_hook("blocks.2.hook_mlp_out", "x")
    saved_sae(tmp_path / "pre", 32, hook="blocks.2.hook_resid_pre")
    loaded = load_features(tmp_path / "pre")
    assert loaded.layer == 1 and loaded.at_layer(None) == 1
    with pytest.raises(FeatureError, match=r"read blocks.2.hook_resid_pre \(the output of layer "
                                            r"1\), not layer 3"):
        loaded.at_layer(3)


def test_a_wrong_width_or_a_folder_that_is_no_sae_is_refused(tmp_path, tiny):
    saved_sae(tmp_path / "wide", tiny.d_model * 2)
    wide = load_features(tmp_path / "wide")
    with pytest.raises(FeatureError, match=r"have 64 numbers, .*residual stream 32"):
        feature_vector(tiny, wide, [Feature(0)])
    with pytest.raises(FeatureError, match=r"have 64 numbers, .*residual stream 32"):
        top_features(tiny, wide, MORE)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FeatureError, match=r"not an SAELens folder \(cfg.json missing\)"):
        load_features(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        load_features(tmp_path / "nothing.json")


def neuronpedia_row(index, values, **extra):
    return {"modelId": "tiny", "layer": "1-res-test", "index": str(index), "vector": values,
            "hookName": "blocks.1.hook_resid_post", "vectorDefaultSteerStrength": 12,
            "hasVector": bool(values), **extra}


def test_neuronpedia_exports_and_api_replies_give_their_vectors(tmp_path, tiny):
    rows = [neuronpedia_row(i, [float(i + j) for j in range(tiny.d_model)]) for i in (3, 8)]
    rows.append(neuronpedia_row(11, []))  # an SAE feature's row: no vector stored
    export = tmp_path / "batch-0.jsonl.gz"
    with gzip.open(export, "wt") as handle:
        handle.write("".join(json.dumps(row) + "\n" for row in rows))
    loaded = load_features(export)
    assert loaded.format == "neuronpedia" and sorted(loaded.rows) == [3, 8]
    assert loaded.layer == 1 and loaded.suggested == {3: 12.0, 8: 12.0}
    assert torch.equal(loaded.row(8), torch.arange(8, 8 + tiny.d_model, dtype=torch.float32))
    vector = feature_vector(tiny, loaded, [Feature(8)])
    assert torch.equal(vector.directions[1], loaded.row(8))
    assert vector.meta.extra["suggested_strengths"] == {8: 12.0}
    with pytest.raises(FeatureError, match=r"no feature 11 \(it has rows for features 3, 8\)"):
        loaded.row(11)
    with pytest.raises(FeatureError, match="no encoder"):
        top_features(tiny, loaded, MORE)
    reply = tmp_path / "vector.json"  # /api/vector/get, a resid-pre vector named by its source
    row = neuronpedia_row(0, [0.5] * tiny.d_model, layer="2-neuronpedia-resid-pre")
    del row["hookName"]
    reply.write_text(json.dumps({"vector": row}))
    assert load_features(reply).layer == 1
    only_empty = write_jsonl(tmp_path / "empty.jsonl", [neuronpedia_row(1, [])])
    with pytest.raises(FeatureError, match="carry no vector"):
        load_features(only_empty)
    broken = write_jsonl(tmp_path / "broken.jsonl", [neuronpedia_row(1, [1.0, "x"])])
    with pytest.raises(FeatureError, match=r"broken.jsonl:1: field 'vector' must be a list of "
                                           r"numbers"):
        load_features(broken)


def test_feature_files_and_the_command_line_form(tmp_path):
    assert Feature.parse("12") == Feature(12) and Feature.parse("3:-0.5") == Feature(3, -0.5)
    with pytest.raises(ValueError, match="index or index:weight"):
        Feature.parse("twelve")
    listed = tmp_path / "f.txt"
    listed.write_text("# chosen by hand\n4\n9:-1  # against\n")
    assert read_feature_file(listed) == [Feature(4), Feature(9, -1.0)]
    listed.write_text("4\nx\n")
    with pytest.raises(FeatureError, match=r"f.txt:2: feature 'x'"):
        read_feature_file(listed)


def test_the_sae_method_scales_like_the_other_activation_methods(tmp_path, tiny):
    saved_sae(tmp_path / "sae", tiny.d_model)
    pairs = [*PAIRS, *MORE]
    config = {"sae": str(tmp_path / "sae"), "features": [2, 6]}
    vector = train_vector(tiny, pairs, "sae", [1], config, TrainingRun(progress=False))
    row = load_features(tmp_path / "sae").row
    direction = row(2) + row(6)
    unit = vector.directions[1] / vector.directions[1].norm()
    assert abs(float(unit @ direction / direction.norm())) > 0.9999  # the same line
    gaps = read_contrast(tiny, pairs, [1], progress=False).differences(1) @ unit
    assert (gaps > 0).sum() >= (gaps < 0).sum()  # signed toward the chosen side
    assert torch.isclose(vector.directions[1].norm(), gaps.mean().abs(), rtol=1e-4)
    assert vector.meta.residual_norms and vector.meta.n_examples == len(pairs)
    raw = train_vector(tiny, pairs, "sae", [1], {**config, "scale": "decoder"},
                       TrainingRun(progress=False))
    assert torch.equal(raw.directions[1], direction)
    with pytest.raises(FeatureError, match="not layer 2"):
        train_vector(tiny, pairs, "sae", [2], config, TrainingRun(progress=False))


def test_vector_from_sae_and_top_features_on_the_command_line(tmp_path, tiny, model_dir):
    sae = saved_sae(tmp_path / "sae", tiny.d_model)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in MORE])
    out = tmp_path / "f.safetensors"
    result = invoke("vector", "from-sae", tmp_path / "sae", "--feature", "7", "-f", "9:-0.5",
                    "--out", out, "--model", model_dir)
    assert result.exit_code == 0, result.output
    assert "at layer 1 (blocks.1.hook_resid_post)" in " ".join(result.output.split())
    assert torch.equal(SteeringVector.load(out).directions[1],
                       (sae.W_dec[7] - 0.5 * sae.W_dec[9]).detach())
    wrong = invoke("vector", "from-sae", tmp_path / "sae", "-f", "7", "--layer", "2", "--out",
                   out, "--model", model_dir)
    assert wrong.exit_code == 1 and "not layer 2" in wrong.output
    bad = invoke("vector", "from-sae", tmp_path / "sae", "-f", "x", "--out", out)
    assert bad.exit_code == 2 and "index or index:weight" in bad.output
    ranking = tmp_path / "top.json"
    result = invoke("sae", "top-features", tmp_path / "sae", "--data", pairs, "-k", "3",
                    "--out", ranking, "--model", model_dir)
    assert result.exit_code == 0, result.output
    listed = json.loads(ranking.read_text())
    assert listed["layer"] == 1 and len(listed["features"]) == 3
    assert str(listed["features"][0]["index"]) in result.output
    assert [f.index for f in read_feature_file(ranking)] == [
        f["index"] for f in listed["features"]]


def test_the_sae_method_runs_on_the_leaderboard_of_a_run_config(tmp_path, tiny):
    saved_sae(tmp_path / "sae", tiny.d_model)
    config = parse_config(config_text(
        write_pairs(tmp_path / "toy.jsonl"),
        methods={"caa": {"method": "caa"},
                 "sae": {"method": "sae", "sae": str(tmp_path / "sae"), "top_k": 2}},
        steering={"layers": [1], "multipliers": [-2, 2]}))
    Runner(config, tmp_path / "out", progress=False, log=lambda _: None, model=tiny)()
    records = read_records(tmp_path / "out" / "records.jsonl")
    tested = {r["arm"] for r in records if r.get("dataset", "").endswith("test")}
    assert {"caa", "sae"} <= tested
    vector = SteeringVector.load(tmp_path / "out" / "vectors" / "sae-L1.safetensors")
    assert vector.meta.method == "sae" and len(vector.meta.extra["features"]) == 2
    markdown, _ = experiment_report(tmp_path / "out", records)
    assert "| sae |" in markdown.read_text()


def test_a_run_plan_counts_the_sae_method_on_a_narrower_stand_in(tmp_path):
    config = CONFIGS["llama"]()
    config.hidden_size, config.intermediate_size, config.head_dim = 64, 128, 16  # 16-wide heads
    torch.manual_seed(0)
    wide = wrap_model(AutoModelForCausalLM.from_config(config), byte_tokenizer())
    saved_sae(tmp_path / "sae", wide.d_model)
    run_config = parse_config(config_text(
        write_pairs(tmp_path / "toy.jsonl"),
        methods={"sae": {"method": "sae", "sae": str(tmp_path / "sae"), "top_k": 2}},
        steering={"layers": [1], "multipliers": [-2, 2]}))
    narrow = stand_in(wide)
    assert narrow.d_model != wide.d_model  # the SAE's rows cannot steer the stand-in itself
    planned, _ = count_work(run_config, narrow)
    Runner(run_config, tmp_path / "out", progress=False, log=lambda _: None, model=wide)()
    ran = {w.stage: w for w in (StageWork.of(r) for r in read_records(
        tmp_path / "out" / "records.jsonl") if r["task"] == "compute")}
    methods = next(w for w in planned if w.stage == "methods")
    assert methods.passes > 0 and methods == ran["methods"]


def test_damaged_sae_folders_end_in_one_line_naming_the_folder(tmp_path, model_dir):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "sae_weights.safetensors").write_bytes(b"\0\0")
    (folder / "cfg.json").write_text("{not json")
    result = invoke("vector", "from-sae", folder, "-f", "1", "-o", tmp_path / "v.safetensors")
    assert result.exit_code == 1 and "cfg.json: not JSON" in result.output
    (folder / "cfg.json").write_text(json.dumps({"d_in": 32, "d_sae": 4,
                                                 "architecture": "standard"}))
    result = invoke("vector", "from-sae", folder, "-f", "1", "-o", tmp_path / "v.safetensors")
    assert result.exit_code == 1 and "sae-lens cannot load it (SafetensorError" in result.output
    assert "Traceback" not in result.output


def test_a_run_config_is_refused_at_parse_time_where_the_sae_reads_another_layer(tmp_path):
    from steerlab.experiment.config import ConfigError

    saved_sae(tmp_path / "sae", 32)  # reads blocks.1.hook_resid_post: layer 1
    data = write_pairs(tmp_path / "toy.jsonl")

    def config(steering, **entry):
        return config_text(data, methods={"sae": {"method": "sae", "sae": str(tmp_path / "sae"),
                                                  **entry}}, steering=steering)

    parse_config(config({"layers": [1], "multipliers": [2]}))
    parse_config(config({"layers": "scan", "multipliers": [2]}, layers=[1]))
    with pytest.raises(ConfigError, match=r"steering.layers: sae can only train at layer\(s\) "
                                          r"\[1\] \(its features read there\), not \[2\]"):
        parse_config(config({"layers": [1, 2], "multipliers": [2]}))
    with pytest.raises(ConfigError, match=r"steering.layers: .* not scan; give "
                                          r"methods.sae.layers: \[1\]"):
        parse_config(config({"layers": "scan", "multipliers": [2]}))
    with pytest.raises(ConfigError, match=r"methods.sae: .*nowhere: no such SAE folder"):
        parse_config(config_text(data, methods={"sae": {"method": "sae",
                                                        "sae": str(tmp_path / "nowhere")}},
                                 steering={"layers": [1], "multipliers": [2]}))


def test_a_pretty_printed_api_reply_reads_as_one_feature(tmp_path, tiny):
    reply = tmp_path / "reply.json"  # as `curl … | jq .` saves it: one object over many lines
    reply.write_text(json.dumps({"vector": neuronpedia_row(4, [1.0] * tiny.d_model)}, indent=2))
    loaded = load_features(reply)
    assert sorted(loaded.rows) == [4] and loaded.layer == 1

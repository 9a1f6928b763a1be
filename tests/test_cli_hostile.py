"""Hostile and careless input to the CLI (issue 16's probe): each case ends with a one-line
message naming what is wrong, exit status 1 or 2, and never a traceback."""

import gzip
import json
import pickle

import pytest
import torch
from tiny import invoke, tiny_model

from steerlab import cli
from steerlab.steering.vectors import SteeringVector, meta_for


@pytest.fixture(scope="module")
def vector_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vector") / "v.safetensors"
    SteeringVector({1: torch.ones(32)}, meta_for(tiny_model("llama"), "test")).save(path)
    return path


@pytest.fixture()
def pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"Question {i}?", "chosen": " yes", "rejected": " no"} for i in range(4)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def clean_failure(result, *fragments):
    """Exit 1 (our message) or 2 (a usage error), the fragments in the output, no traceback."""
    output = " ".join(result.output.split())
    assert result.exit_code in (1, 2), (result.exit_code, output)
    assert "Traceback" not in result.output, output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    for fragment in fragments:
        assert fragment in output, (fragment, output)


def broken_vectors(tmp_path, vector_file):
    """Files a careless user might pass as a vector."""
    good = vector_file.read_bytes()
    files = {
        "empty": b"",
        "truncated": good[: len(good) // 2],
        "pickle": pickle.dumps({"layer.1": [1.0, 2.0]}),
        "text": b"just some text\n",
    }
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / f"{name}.safetensors"
        paths[name].write_bytes(data)
    paths["torch_save"] = tmp_path / "torch_save.safetensors"
    torch.save({"layer.1": torch.ones(32)}, paths["torch_save"])
    return paths


@pytest.mark.parametrize("kind", ["empty", "truncated", "pickle", "text", "torch_save"])
def test_broken_vector_files_are_named_in_one_line(tmp_path, vector_file, model_dir, kind):
    path = broken_vectors(tmp_path, vector_file)[kind]
    clean_failure(invoke("vector", "info", path), f"{path}", "not a safetensors steering vector")
    clean_failure(invoke("generate", "Hi", "--model", model_dir, "--vector", path),
                  "not a safetensors steering vector")


def test_non_finite_vector_files_are_refused(tmp_path, vector_file):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(vector_file, "pt") as handle:
        metadata = handle.metadata()
    tensors = {name: torch.full_like(t, float("nan")) for name, t in load_file(vector_file).items()}
    save_file(tensors, tmp_path / "nan.safetensors", metadata=metadata)
    clean_failure(invoke("vector", "info", tmp_path / "nan.safetensors"), "non-finite")


@pytest.mark.parametrize("args, fragment", [
    (["--multiplier", "nan"], "must be a finite number"),
    (["--multiplier", "inf"], "must be a finite number"),
    (["--norm-ratio", "-1"], "must be a finite number above 0"),
    (["--norm-ratio", "inf"], "must be a finite number above 0"),
    (["--max-new-tokens", "-1"], "--max-new-tokens"),
])
def test_generate_refuses_bad_numbers(model_dir, vector_file, args, fragment):
    clean_failure(invoke("generate", "Hi", "--model", model_dir, "--vector", vector_file, *args),
                  fragment)


@pytest.mark.parametrize("multipliers", ["nan", "0,inf", "1,-inf"])
def test_eval_refuses_non_finite_multipliers(model_dir, vector_file, pairs_file, tmp_path,
                                             multipliers):
    clean_failure(invoke("eval", "--model", model_dir, "--data", pairs_file,
                         "--vector", vector_file, "--multipliers", multipliers,
                         "--out", tmp_path / "r.jsonl"),
                  "expected finite numbers")


def test_norm_ratio_1e308_overflows_into_a_message(model_dir, vector_file):
    clean_failure(invoke("generate", "Hi", "--model", model_dir, "--vector", vector_file,
                         "--multiplier", "4", "--norm-ratio", "1e308"), "norm_ratio")


@pytest.mark.parametrize("layer", ["99", "-1"])
def test_train_refuses_layers_outside_the_model(model_dir, pairs_file, tmp_path, layer):
    out = tmp_path / "v.safetensors"
    clean_failure(invoke("train", "--model", model_dir, "--data", pairs_file, "--layer", layer,
                         "--out", out), f"layer {layer} is out of range", "4 layers")
    assert not out.exists()


@pytest.mark.parametrize("content, fragment", [
    (b'{"prompt": "Q", "chosen": "a", "rejected": "b"}\n', "not a valid gzip file"),  # plain text
    (gzip.compress(b'{"prompt": "Q", "chosen": "a", "rejected": "b"}\n' * 50)[:60],
     "not a valid gzip file"),  # truncated: used to print only 'Aborted.'
])
def test_broken_gzip_data_is_named(model_dir, tmp_path, content, fragment):
    path = tmp_path / "pairs.jsonl.gz"
    path.write_bytes(content)
    clean_failure(invoke("train", "--model", model_dir, "--data", path, "--layer", "1",
                         "--out", tmp_path / "v.safetensors"), str(path), fragment)


@pytest.mark.parametrize("content, fragment", [
    (b'{"prompt": "Q", "chosen": "a", "rejected": "b"}\n{"prompt": "\xff\xfe"}\n',
     "pairs.jsonl:2: not UTF-8 text"),
    (b"[" * 100_000 + b"]" * 100_000 + b"\n", "pairs.jsonl:1: JSON nested too deeply"),
])
def test_undecodable_data_names_file_and_line(model_dir, tmp_path, content, fragment):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(content)
    clean_failure(invoke("train", "--model", model_dir, "--data", path, "--layer", "1",
                         "--out", tmp_path / "v.safetensors"), fragment)


def test_a_utf8_bom_in_jsonl_is_read_like_csv(model_dir, pairs_file, tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + pairs_file.read_bytes())
    result = invoke("train", "--model", model_dir, "--data", path, "--layer", "1",
                    "--out", tmp_path / "v.safetensors")
    assert result.exit_code == 0, result.output


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(model_dir, pairs_file,
                                                                       tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("something\ninside broke")

    monkeypatch.setattr("steerlab.methods.caa.train_caa", explode)
    args = ["train", "--model", model_dir, "--data", pairs_file, "--layer", "1",
            "--out", tmp_path / "v.safetensors"]
    result = invoke(*args)
    clean_failure(result, "error: RuntimeError: something inside broke", "--debug")
    assert result.exit_code == 1
    debug = invoke("--debug", *args)
    assert isinstance(debug.exception, RuntimeError)
    assert cli.USER_ERRORS  # plain input errors print without their type


def test_a_file_mixing_pairs_and_mc_rows_names_the_odd_row(model_dir, tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text(json.dumps({"prompt": "P", "chosen": "a", "rejected": "b"}) + "\n"
                    + json.dumps({"question": "Q?", "choices": ["a", "b"], "answer": 0}) + "\n")
    fragment = "mixed.jsonl:2: a multiple-choice row in a file of preference-pair rows"
    clean_failure(invoke("train", "--model", model_dir, "--data", path, "--layer", "1",
                         "--out", tmp_path / "v.safetensors"), fragment)
    clean_failure(invoke("eval", "--model", model_dir, "--data", path, "--out",
                         tmp_path / "r.jsonl"), fragment)
    inspected = invoke("data", "inspect", path)
    assert "no problems found" not in inspected.output and "Traceback" not in inspected.output
    assert fragment in " ".join(inspected.output.split())


def test_eval_with_a_vector_for_a_layer_the_model_lacks(model_dir, tmp_path):
    model = tiny_model("llama")
    path = tmp_path / "v9.safetensors"
    SteeringVector({9: torch.ones(32)}, meta_for(model, "test")).save(path)
    data = tmp_path / "mc.jsonl"
    data.write_text(json.dumps({"question": "Q?", "choices": ["a", "b"], "answer": 0}) + "\n")
    clean_failure(invoke("eval", "--model", model_dir, "--data", data, "--vector", path,
                         "--multipliers", "0,1", "--out", tmp_path / "r.jsonl"),
                  "layer 9 out of range: the model has 4 layers")


def test_prompts_longer_than_the_model_positions_are_refused(model_dir, tmp_path):
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"question": "word " * 300, "choices": ["a", "b"], "answer": 0})
                    + "\n")
    clean_failure(invoke("eval", "--model", model_dir, "--data", data, "--out",
                         tmp_path / "r.jsonl"), "over the model's 1024 positions")
    clean_failure(invoke("generate", "word " * 300, "--model", model_dir), "over the model's 1024")


@pytest.mark.parametrize("layer", ["99", "-1"])
def test_export_refuses_layers_outside_the_model(vector_file, tmp_path, layer):
    out = tmp_path / "v.gguf"
    clean_failure(invoke("vector", "export", vector_file, "--gguf", out, "--layers", layer),
                  f"layer {layer} out of range")
    assert not out.exists()


def test_a_gguf_control_vector_with_nan_is_refused_on_import(tmp_path):
    from gguf import GGUFWriter

    path = tmp_path / "nan.gguf"
    writer = GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_uint32("controlvector.layer_count", 1)
    data = torch.ones(32).numpy()
    data[0] = float("nan")
    writer.add_tensor("direction.1", data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    clean_failure(invoke("vector", "import", path, "--out", tmp_path / "v.safetensors"),
                  "non-finite")


def test_eval_input_errors_the_probe_saw_as_tracebacks(model_dir, vector_file, tmp_path):
    """Duplicate item ids, a d_model mismatch, --out a directory, a corrupt line in the middle
    of the records file: each one line naming what is wrong."""
    data = tmp_path / "mc.jsonl"
    rows = [{"question": f"Q{i}?", "choices": ["a", "b"], "answer": 0, "id": f"q{i}"}
            for i in range(3)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    dup = tmp_path / "dup.jsonl"
    dup.write_text("\n".join(json.dumps({**r, "id": "same"}) for r in rows) + "\n")
    clean_failure(invoke("eval", "--model", model_dir, "--data", dup,
                         "--out", tmp_path / "a.jsonl"),
                  "item ids must be unique", "same")
    narrow = tmp_path / "v16.safetensors"
    meta = meta_for(tiny_model("llama"), "test").model_copy(update={"d_model": 16})
    SteeringVector({1: torch.ones(16)}, meta).save(narrow)
    clean_failure(invoke("eval", "--model", model_dir, "--data", data, "--vector", narrow,
                         "--multipliers", "0,1", "--out", tmp_path / "b.jsonl"),
                  "d_model 16 but the model has d_model 32")
    (tmp_path / "outdir").mkdir()
    clean_failure(invoke("eval", "--model", model_dir, "--data", data, "--out",
                         tmp_path / "outdir"), "outdir")
    records = tmp_path / "r.jsonl"
    assert invoke("eval", "--model", model_dir, "--data", data, "--out", records).exit_code == 0
    lines = records.read_text().splitlines()
    records.write_text("\n".join([lines[0], "{corrupt", *lines[1:]]) + "\n")
    clean_failure(invoke("eval", "--model", model_dir, "--data", data, "--vector", vector_file,
                         "--multipliers", "0,1", "--out", records), "r.jsonl:2")


def test_data_inspect_and_serve_name_what_the_probe_found(tmp_path, vector_file):
    """data inspect said "no problems found" for a line holding two rows; serve printed a
    traceback for a broken vector file."""
    two = tmp_path / "two.jsonl"
    two.write_text('{"prompt": "Q", "chosen": "a", "rejected": "b"} '
                   '{"prompt": "R", "chosen": "c", "rejected": "d"}\n')
    result = invoke("data", "inspect", two)
    clean_failure(result, "two.jsonl:1: more than one JSON value on the line")
    assert "no problems found" not in result.output
    broken = broken_vectors(tmp_path, vector_file)["truncated"]
    clean_failure(invoke("serve", "--vector", f"x={broken}"), "not a safetensors steering vector")

import json

import pytest
from tiny import invoke, tiny_model
from typer.testing import CliRunner

from steerlab.cli import app
from steerlab.steering.vectors import SteeringVector


@pytest.fixture()
def pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [
        {"question": f"Question {i}?\n(A) yes\n(B) no",
         "answer_matching_behavior": "(A)" if i % 2 else "(B)",
         "answer_not_matching_behavior": "(B)" if i % 2 else "(A)",
         "split": "train" if i < 6 else "test"}
        for i in range(8)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


@pytest.mark.parametrize("command", [[], ["train"], ["eval"], ["generate"], ["vector", "info"],
                                     ["demo"], ["lora", "train"], ["baseline", "shots"]])
def test_every_command_has_help(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0 and "Usage" in result.output


def test_train_eval_generate_info_round_trip(model_dir, pairs_file, tmp_path):
    vector_path = tmp_path / "v.safetensors"
    result = invoke("train", "--model", model_dir, "--data", pairs_file, "--layer", "1,2",
                    "--out", vector_path, "--split", "train")
    assert result.exit_code == 0, result.output
    vector = SteeringVector.load(vector_path)
    assert vector.layers == [1, 2] and vector.meta.n_examples == 6

    records = tmp_path / "records.jsonl"
    result = invoke("eval", "--model", model_dir, "--data", pairs_file, "--split", "test",
                    "--vector", vector_path, "--multipliers", "-1,0,1", "--out", records)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    assert len(lines) == 6 and {r["multiplier"] for r in lines} == {-1.0, 0.0, 1.0}
    assert "ab" in result.output

    result = invoke("generate", "--model", model_dir, "--vector", vector_path, "--multiplier", "2",
                    "--max-new-tokens", "5", "Hello")
    assert result.exit_code == 0 and "unsteered" in result.output and "steered ×2" in result.output

    result = invoke("vector", "info", vector_path)
    assert (result.exit_code == 0 and vector.id in result.output
            and '"method": "caa"' in result.output)


def test_eval_multiple_choice_file(model_dir, tmp_path):
    path = tmp_path / "mc.jsonl"
    path.write_text(json.dumps({"question": "2+2?", "choices": ["4", "5"], "answer": 0}) + "\n")
    result = invoke("eval", "--model", model_dir, "--data", path, "--out", tmp_path / "r.jsonl")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r.jsonl").read_text())["task"] == "mc"


def test_bad_input_gives_clear_errors(model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "a"}\n')
    result = invoke("train", "--model", model_dir, "--data", bad, "--layer", "1",
                    "--out", tmp_path / "v.safetensors")
    assert (result.exit_code == 1
            and "bad.jsonl:1: field 'rejected' is missing" in result.output.replace("\n", ""))
    result = invoke("train", "--model", model_dir, "--data", bad, "--layer", "1",
                    "--out", tmp_path / "v.safetensors", "--split", "train")
    assert (result.exit_code == 1
            and "split 'train' requested but the row has no 'split' field"
            in result.output.replace("\n", ""))
    result = invoke("eval", "--model", model_dir, "--data", bad, "--multipliers", "1,x",
                    "--out", tmp_path / "r.jsonl")
    assert result.exit_code != 0
    result = invoke("vector", "info", tmp_path / "nothing.safetensors")
    assert result.exit_code == 1 and "not found" in result.output
    result = invoke("train", "--model", str(tmp_path / "none.gguf"), "--data", "sycophancy",
                    "--layer", "1", "--out", tmp_path / "v.safetensors")
    assert result.exit_code == 1 and "GGUF file not found" in result.output


@pytest.mark.parametrize("method", ["bipo", "dpo"])
def test_train_preference_methods(model_dir, pairs_file, tmp_path, method):
    out = tmp_path / "v.safetensors"
    result = invoke("train", "--method", method, "--model", model_dir, "--data", pairs_file,
                    "--split", "train", "--layer", "1", "--epochs", "2", "--batch-size", "2",
                    "--val-data", pairs_file, "--val-split", "test", "--out", out)
    assert result.exit_code == 0, result.output
    vector = SteeringVector.load(out)
    assert vector.meta.method == method and vector.meta.hyperparams["epochs"] == 2
    assert "val_loss" in result.output


def test_train_subsets_and_seeds(model_dir, pairs_file, tmp_path):
    out = tmp_path / "subsets"
    result = invoke("train", "--method", "bipo", "--model", model_dir, "--data", pairs_file,
                    "--layer", "1", "--epochs", "1", "--subset-sizes", "1,2,4", "--seeds", "2",
                    "--out", out)
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in out.glob("*.safetensors"))
    assert files == sorted(f"bipo-n{n}-seed{s}.safetensors" for n in (1, 2, 4) for s in (0, 1))
    meta = SteeringVector.load(out / "bipo-n2-seed1.safetensors").meta
    assert (meta.extra["subset_size"], meta.extra["subset_seed"], meta.n_examples) == (2, 1, 2)


def test_train_rejects_several_layers_for_bipo(model_dir, pairs_file, tmp_path):
    result = invoke("train", "--method", "bipo", "--model", model_dir, "--data", pairs_file,
                    "--layer", "1,2", "--out", tmp_path / "v.safetensors")
    assert result.exit_code == 1 and "one layer at a time" in result.output


def test_lora_train_prints_best_step_and_parameter_ratio(model_dir, pairs_file, tmp_path):
    out = tmp_path / "adapter"
    result = invoke("lora", "train", "--model", model_dir, "--data", pairs_file, "--split", "train",
                    "--out", out, "--steps", 2, "--eval-every", 1, "--batch-size", 2, "--lr", 0.01)
    assert result.exit_code == 0, result.output
    assert "validation: 1 pairs held out" in result.output and "best step" in result.output
    assert ("trainable parameters 2,048 (rank 1)" in result.output
            and "(d_model): 64.0×" in result.output)
    summary = json.loads((out / "lora_training.json").read_text())
    assert summary["trainable_params"] == 2048 and (out / "adapter_config.json").is_file()
    result = invoke("lora", "train", "--model", model_dir, "--data", pairs_file, "--out", out,
                    "--objective", "ppo", "--steps", 1)
    assert result.exit_code == 1 and "objective must be 'sft' or 'dpo'" in result.output


def test_baseline_shots_prints_the_context_cut(model_dir, pairs_file, tmp_path):
    short = tiny_model("llama")
    short.model.config.max_position_embeddings = 256
    short.model.save_pretrained(tmp_path / "short")
    short.tokenizer.save_pretrained(tmp_path / "short")
    result = invoke("baseline", "shots", "--model", tmp_path / "short", "--data", pairs_file,
                    "--ks", "0,1,2,4,6")
    assert result.exit_code == 0, result.output
    assert "context 256 tokens" in result.output and "cut at k=" in result.output
    result = invoke("baseline", "shots", "--model", model_dir, "--data", pairs_file, "--ks", "9")
    assert (result.exit_code == 1
            and "9-shot prompting needs 9 training pairs, only 8" in result.output)


def test_sigterm_and_a_background_jobs_ignored_sigint_interrupt_like_ctrl_c():
    import os
    import signal

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # what a shell gives a job started with `&`
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        assert CliRunner().invoke(app, ["data", "list"]).exit_code == 0
        for sig in (signal.SIGTERM, signal.SIGINT):
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), sig)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


STEERING_COMMANDS = [["eval"], ["sweep"], ["side-effects"], ["generate"], ["generate-eval"],
                     ["chat"]]


@pytest.mark.parametrize("command", STEERING_COMMANDS)
def test_every_steering_command_takes_the_one_bundle_of_options(command):
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for option in ("--vector", "--multiplier", "--layers", "--norm-ratio", "--positions",
                   "--intervention", "--ablate", "--condition", "--device", "--dtype"):
        assert option in result.output, (command, option)


def test_eval_sweep_and_generate_eval_steer_with_positions_intervention_and_condition(
        model_dir, pairs_file, tmp_path):
    """A setting's seven fields from the command line reach the records: a 30° turn of prompt
    positions gated by a condition that always holds (threshold -2: a cosine is above it)."""
    from tiny import fixed_condition, make_vector

    model = tiny_model("llama")
    vector = make_vector(model, layers=(2,)).save(tmp_path / "v.safetensors")
    gate = fixed_condition(model, layer=1, threshold=-2.0)
    condition = gate.save(tmp_path / "c.safetensors")
    fields = ["--vector", vector, "--layers", "2", "--positions", "prompt", "--intervention",
              "angular", "--condition", condition]
    runs = {
        "eval": ["eval", "--data", pairs_file, "--out", tmp_path / "eval.jsonl",
                 "--multipliers", "0,30"],
        "sweep": ["sweep", "--data", pairs_file, "--out", tmp_path / "sweep",
                  "--multipliers", "0,30"],
        "generate-eval": ["generate-eval", "--data", pairs_file, "--out", tmp_path / "g.jsonl",
                          "--multipliers", "30", "--n", "2", "--max-new-tokens", "2"],
    }
    for name, args in runs.items():
        result = invoke(*args, "--model", model_dir, *fields)
        assert result.exit_code == 0, (name, result.output)
        path = args[args.index("--out") + 1]
        path = path / "records.jsonl" if path.is_dir() else path
        steered = [json.loads(line) for line in path.read_text().splitlines()]
        steered = [r for r in steered if r.get("vector_id") and r.get("multiplier", 30) != 0]
        assert steered, name
        for record in steered:
            assert (record["layers"], record["positions"], record["intervention"],
                    record["condition"]["id"]) == ([2], "prompt", "angular", gate.id)
    result = invoke("generate", "Hello", "--model", model_dir, *fields, "--multiplier", "30",
                    "--max-new-tokens", "3")
    assert result.exit_code == 0 and "holds: steering" in result.output, result.output
    assert "rotated ×30" in result.output
    result = invoke("eval", "--data", pairs_file, "--out", tmp_path / "bad.jsonl", "--model",
                    model_dir, "--vector", vector, "--intervention", "angular",
                    "--multipliers", "200")
    assert result.exit_code == 1 and "within [-180, 180]" in result.output, result.output


def test_help_texts_break_lines_where_the_terminal_does_not_where_the_docstring_did():
    """Every command's help paragraph is one line (rich wraps it to the terminal); the listing
    of `steerlab --help` reads a sentence whole."""
    import typer.main

    def walk(command):
        yield command
        for sub in getattr(command, "commands", {}).values():
            yield from walk(sub)

    root = typer.main.get_command(app)
    commands = list(walk(root))
    assert len(commands) > 30
    for command in commands:
        for paragraph in (command.help or "").split("\n\n"):
            assert "\n" not in paragraph, (command.name, paragraph)
    listing = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "400"}).output
    assert "a direction between the two prompt sets at a layer" in listing

"""Device, dtype, device map and quantised weights: one Placement, on every entry point that
loads a model; records say where they were computed."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
import typer
from pydantic import ValidationError
from tiny import PAIRS, PROMPTS, invoke, make_vector, train_shortly, write_jsonl

from steerlab.cli import app
from steerlab.evaluation.likelihood import Sweep, evaluate_ab
from steerlab.experiment.config import parse_config
from steerlab.methods import methods
from steerlab.model.generation import generate_tokens
from steerlab.model.handle import load_model
from steerlab.model.placement import DeviceUnavailable, Placement, available_devices, resolve
from steerlab.records import placements
from steerlab.steering.setting import SteeringSetting
from steerlab.steering.vectors import SteeringVector

PLACEMENT_FLAGS = {"--device", "--dtype", "--device-map", "--quantization"}


def test_auto_is_the_first_accelerator_in_bfloat16_else_the_cpu_in_float32():
    where = resolve(Placement())
    if available_devices() == ["cpu"]:
        assert where.device == torch.device("cpu") and where.dtype == torch.float32
    assert resolve(Placement(device="cpu", dtype="bf16")).dtype == torch.bfloat16
    assert Placement(dtype="torch.float16").dtype == "float16"


def test_a_device_that_is_not_here_names_those_that_are():
    missing = next(d for d in ("cuda", "mps", "cuda:7") if d not in available_devices())
    with pytest.raises(DeviceUnavailable, match=rf"device '{missing}' is not available on this "
                       r"machine \(available: .*cpu\)"):
        resolve(Placement(device=missing))
    with pytest.raises(ValidationError, match="unknown device 'tpu'"):
        Placement(device="tpu")
    with pytest.raises(ValidationError, match="give one"):
        Placement(device="cpu", device_map="auto")


def test_a_model_loads_in_the_dtype_asked_and_records_say_where(model_dir):
    model = load_model(model_dir, dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and model.device == torch.device("cpu")
    assert model.placement == {"device": "cpu", "dtype": "bfloat16"}
    vector = make_vector(model, layers=(2,), scale=0.5)
    records = evaluate_ab(model, PAIRS, Sweep(SteeringSetting(vector), [0.0, 2.0]),
                          progress=False)
    assert {(r["device"], r["dtype"]) for r in records} == {("cpu", "bfloat16")}
    assert placements(records) == f"cpu, bfloat16 ({len(records)} records)"
    assert "not recorded" in placements([{"task": "ab"}])
    assert vector.directions[2].dtype == torch.float32


def _commands(group, prefix: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a command group
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def test_every_command_that_loads_a_model_takes_the_placement_options():
    root = typer.main.get_command(app)
    loads = {path: command for path, command in _commands(root)
             if any("--model" in p.opts for p in command.params) or path == ("run",)}
    assert {("train",), ("scan",), ("eval",), ("sweep",), ("compose",), ("side-effects",),
            ("condition",), ("generate",), ("generate-eval",), ("concept",), ("run",),
            ("demo",), ("serve",), ("web",), ("chat",), ("data", "inspect"),
            ("lora", "train"), ("baseline", "shots")} <= set(loads)
    for path, command in loads.items():
        flags = {opt for p in command.params for opt in p.opts}
        assert PLACEMENT_FLAGS <= flags, path
        help_text = invoke(*path, "--help").output
        assert all(flag in help_text for flag in PLACEMENT_FLAGS), path


def test_a_missing_device_or_a_bad_dtype_is_one_line(model_dir, tmp_path):
    missing = next(d for d in ("cuda", "mps") if d not in available_devices())
    result = invoke("generate", "Hi", "--model", model_dir, "--device", missing)
    assert result.exit_code == 1
    assert result.output.strip() == (f"error: device '{missing}' is not available on this "
                                     f"machine (available: {', '.join(available_devices())})")
    result = invoke("generate", "Hi", "--model", model_dir, "--dtype", "int3")
    assert result.exit_code == 2 and "--dtype" in result.output and "int3" in result.output


def test_bipo_trains_and_the_model_evaluates_in_bfloat16_from_the_cli(model_dir, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", [p.__dict__ for p in PAIRS])
    vector = tmp_path / "v.safetensors"
    result = invoke("train", "--method", "bipo", "--model", model_dir, "--data", data,
                    "--layer", "1", "-p", "epochs=2", "--batch-size", "2", "--dtype",
                    "bfloat16", "--out", vector)
    assert result.exit_code == 0, result.output
    trained = SteeringVector.load(vector).directions[1]
    assert trained.dtype == torch.float32 and trained.norm() > 0
    records = tmp_path / "records.jsonl"
    result = invoke("eval", "--model", model_dir, "--data", data, "--vector", vector,
                    "--multipliers", "0,1", "--dtype", "bfloat16", "--out", records)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    assert {r["dtype"] for r in rows} == {"bfloat16"} and len(rows) == 2 * len(PAIRS)


def test_the_run_config_model_block_places_the_model_and_options_override_it():
    text = """
name: placed
model: {name: smollm2-135m-instruct, dtype: bfloat16}
data: {train: {dataset: refusal, split: train}, val_size: 10, test: {dataset: refusal, split: test}}
steering: {layers: [2], multipliers: [1]}
"""
    config = parse_config(text, check_data=False)
    assert config.model.name == "smollm2-135m-instruct" and config.model.dtype == "bfloat16"
    assert config.model.overridden(Placement(device="cpu")).options() == {
        "device": "cpu", "dtype": "bfloat16", "device_map": None, "quantization": None}
    plain = parse_config(text.replace("model: {name: smollm2-135m-instruct, dtype: bfloat16}",
                                      "model: smollm2-135m-instruct"), check_data=False)
    assert plain.model.name == "smollm2-135m-instruct" and plain.model.dtype == "auto"
    with pytest.raises(Exception, match="model.dtype"):
        parse_config(text.replace("bfloat16", "int3"), check_data=False)


bitsandbytes = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                                  reason="quantised weights need bitsandbytes "
                                         "(pip install -e .[quantization])")


@pytest.fixture(scope="module")
def wide_model_dir(tmp_path_factory):
    """A tiny llama with d_model 64: bitsandbytes' 4-bit CPU kernels pack rows in blocks of
    64 inputs."""
    from tiny import DECODER, byte_tokenizer
    from transformers import AutoModelForCausalLM, LlamaConfig

    path = tmp_path_factory.mktemp("tiny-llama-64")
    torch.manual_seed(0)
    config = LlamaConfig(**{**DECODER, "hidden_size": 64, "intermediate_size": 128})
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return str(path)


@bitsandbytes
@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_quantised_weights_steer_and_train_every_method_with_a_float32_vector(wide_model_dir,
                                                                             bits):
    model = load_model(wide_model_dir, quantization=bits)
    assert model.quantization == bits and model.placement["quantization"] == bits
    vector = make_vector(model, layers=(1, 2), scale=0.5)
    plain = generate_tokens(model, PROMPTS, 6, progress=False)
    with SteeringSetting(vector, 0.0, layers=[1, 2]).apply(model):
        assert generate_tokens(model, PROMPTS, 6, progress=False) == plain
    with SteeringSetting(vector, 8.0, layers=[1, 2]).apply(model):
        assert generate_tokens(model, PROMPTS, 6, progress=False) != plain
    for name in methods():
        trained = train_shortly(model, name)
        for direction in trained.directions.values():
            assert direction.dtype == torch.float32 and torch.isfinite(direction).all(), name


@bitsandbytes
def test_a_vector_trains_through_4bit_weights_with_the_gradient_of_their_dequantised_values(
        wide_model_dir):
    """bitsandbytes repacks 4-bit weights for CPU inference after a pass without gradients, and
    its repacked layers then pass no gradient to their inputs (cosine 0.26 here before
    steerlab turned that off). The BiPO loss and its gradient through the 4-bit model equal
    those through a float32 model holding the dequantised weights."""
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    from steerlab.methods.loss_training import _FastEngine, _NaiveEngine
    from steerlab.methods.pairs import encode_pairs
    from steerlab.methods.training import bipo_loss
    from steerlab.model.handle import wrap_model

    quantised = load_model(wide_model_dir, quantization="4bit")
    plain = AutoModelForCausalLM.from_pretrained(wide_model_dir)
    for name, module in quantised.model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
            plain.get_submodule(name).weight.data = weight.float()
    reference = wrap_model(plain, quantised.tokenizer)

    def loss_and_gradient(model, engine_cls):
        items = encode_pairs(model, PAIRS)
        engine = engine_cls(model, 1)
        engine.prepare(items, 4, progress=False)  # the reference pass, without gradients
        vector = (0.5 * torch.randn(model.d_model, generator=torch.Generator().manual_seed(0))
                  ).requires_grad_()
        loss = bipo_loss(*engine.logprobs(items, vector), 1.0, 0.5)
        loss.backward()
        return loss.item(), vector.grad

    for engine_cls in (_FastEngine, _NaiveEngine):
        loss, gradient = loss_and_gradient(quantised, engine_cls)
        expected_loss, expected = loss_and_gradient(reference, engine_cls)
        assert loss == pytest.approx(expected_loss, abs=1e-5)
        torch.testing.assert_close(gradient, expected, atol=1e-6, rtol=1e-4)

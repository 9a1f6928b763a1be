"""The core invariants on every device there is: steering, the KV cache, every method's
training, sweeps, conditions, side effects. Each runs on the CPU, on the virtual device of
``tests/devices.py`` (where a tensor left on the CPU fails, as on a GPU) and on CUDA or MPS where
present, and equals the CPU's result: exactly on the virtual device (the same arithmetic), within
float32 tolerance on an accelerator."""

from __future__ import annotations

import pytest
import torch
from devices import DEVICES, DeviceSlip, as_cpu, device_context, place, virtual_device
from tiny import PAIRS, PROMPTS, make_vector, tiny_model, train_shortly

from steerlab.evaluation.likelihood import Sweep, evaluate_ab
from steerlab.evaluation.side_effects import kl_records, perplexity_records
from steerlab.methods import methods
from steerlab.methods.lora import train_lora
from steerlab.methods.prompting import kshot, prompted
from steerlab.methods.scan import scan_layers
from steerlab.model.generation import generate_tokens
from steerlab.steering.conditions import train_condition
from steerlab.steering.setting import Composition, SteeringSetting


def _close(got: torch.Tensor, expected: torch.Tensor, device: str) -> bool:
    got, expected = as_cpu(got).float(), expected.float()
    if device in ("cpu", "virtual", "split"):
        return torch.equal(got, expected)
    return torch.allclose(got, expected, atol=1e-4, rtol=1e-4)


@pytest.fixture(params=DEVICES)
def device(request):
    """(device name, the tiny model on it) inside that device's context."""
    name = request.param
    with device_context(name):
        model = tiny_model("llama")
        place(model, name)
        yield name, model


@pytest.mark.parametrize("name", sorted(methods()))
def test_every_method_trains_on_each_device_as_on_the_cpu(device, name):
    where, model = device
    engines = ["fast", "naive"] if "engine" in methods()[name].config.model_fields else [None]
    for engine in engines:
        vector = train_shortly(model, name, engine)
        with device_context("cpu"):
            expected = train_shortly(tiny_model("llama"), name, engine)
        for layer, direction in expected.directions.items():
            got = vector.directions[layer]
            assert got.device.type == "cpu" and got.dtype == torch.float32
            if where in ("cpu", "virtual", "split"):
                assert torch.equal(got, direction), (name, engine, layer)
            else:
                cosine = torch.nn.functional.cosine_similarity(got, direction, dim=0)
                assert cosine >= 0.999, (name, engine, layer, float(cosine))


SETTINGS = {
    "add": dict(multiplier=4.0),
    "add-generated": dict(multiplier=4.0, positions="generated"),
    "ablate": dict(multiplier=1.0, intervention="ablate"),
    "angular": dict(multiplier=60.0, intervention="angular"),
}


@pytest.mark.parametrize("kind", sorted(SETTINGS))
def test_steered_generation_on_each_device_equals_the_cpu(device, kind):
    where, model = device
    cpu = tiny_model("llama")
    vector = make_vector(cpu, layers=(1, 2), scale=0.5)
    setting = SteeringSetting(vector, layers=[1, 2], **SETTINGS[kind])
    with setting.apply(model):
        got = generate_tokens(model, PROMPTS, 8, progress=False)
    with device_context("cpu"), setting.apply(cpu):
        expected = generate_tokens(cpu, PROMPTS, 8, progress=False)
    assert got == expected


def test_kv_cache_generation_equals_cache_free_on_each_device(device):
    """Steered greedy decoding with the KV cache equals recomputing every prefix."""
    where, model = device
    vector = make_vector(model, layers=(2,), scale=0.5)
    prompt = model.encode_prompt(model.format_prompt("Tell me about foxes"))
    with SteeringSetting(vector, 4.0).apply(model):
        cached = model.model.generate(
            torch.tensor([prompt], device=model.device), max_new_tokens=6, do_sample=False,
            pad_token_id=model.tokenizer.pad_token_id)[0, len(prompt):].tolist()
        ids = list(prompt)
        for _ in range(6):
            with torch.no_grad():
                out = model.model(torch.tensor([ids], device=model.device), use_cache=False)
            ids.append(int(out.logits[0, -1].argmax()))
    assert cached == ids[len(prompt):]


def test_a_sweep_on_each_device_equals_the_cpu_and_separate_evaluations(device):
    where, model = device
    cpu = tiny_model("llama")
    vector = make_vector(cpu, layers=(2,), scale=0.5)
    multipliers = [-2.0, 0.0, 2.0]
    swept = evaluate_ab(model, PAIRS, Sweep(SteeringSetting(vector), multipliers),
                        progress=False)
    one_by_one = [r for m in multipliers
                  for r in evaluate_ab(model, PAIRS, Sweep(SteeringSetting(vector), [m]),
                                       progress=False)]
    with device_context("cpu"):
        expected = evaluate_ab(cpu, PAIRS, Sweep(SteeringSetting(vector), multipliers),
                               progress=False)
    for got, alone, want in zip(swept, one_by_one, expected):
        assert got["score"] == pytest.approx(want["score"], abs=1e-5)
        assert got["score"] == pytest.approx(alone["score"], abs=1e-5)


def test_conditions_and_side_effects_on_each_device_equal_the_cpu(device):
    where, model = device
    cpu = tiny_model("llama")
    condition = train_condition(model, PROMPTS[:2], PROMPTS[2:], 1, progress=False)
    with device_context("cpu"):
        expected = train_condition(cpu, PROMPTS[:2], PROMPTS[2:], 1, progress=False)
    assert _close(condition.direction, expected.direction, where)
    vector = make_vector(cpu, layers=(2,), scale=0.5)
    conditional = Composition((SteeringSetting(vector, 4.0, condition=condition),))
    with conditional.apply(model):
        got = generate_tokens(model, PROMPTS, 6, progress=False)
    with device_context("cpu"), conditional.apply(cpu):
        want = generate_tokens(cpu, PROMPTS, 6, progress=False)
    assert got == want
    sweep = Sweep(SteeringSetting(vector), [0.0, 4.0])
    for measure in (perplexity_records, kl_records):
        got_records = measure(model, PROMPTS, sweep, progress=False)
        with device_context("cpu"):
            want_records = measure(cpu, PROMPTS, sweep, progress=False)
        field = "logprob" if measure is perplexity_records else "kl"
        assert [r[field] for r in got_records] == pytest.approx(
            [r[field] for r in want_records], abs=1e-4)


class _DevicelessZeros:
    """``torch`` for a trainer, with one slip planted: ``zeros`` ignores the device asked for
    (the bug that made BiPO fail on CUDA: its vector made on the CPU)."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def zeros(*args, **kwargs):
        kwargs.pop("device", None)
        return torch.zeros(*args, **kwargs)


def test_a_planted_cpu_tensor_in_a_trainer_fails_on_this_machine(monkeypatch):
    """The mechanism: a trainer's tensor left on the CPU fails here, with no GPU."""
    from steerlab.methods import loss_training

    with virtual_device():
        model = tiny_model("llama")
        place(model, "virtual")
        train_shortly(model, "bipo")  # clean: trains
        monkeypatch.setattr(loss_training, "torch", _DevicelessZeros())
        with pytest.raises(DeviceSlip, match="a tensor on the CPU .* met tensors on the model"):
            train_shortly(model, "bipo")


def test_an_attention_site_vector_and_a_scan_on_each_device_equal_the_cpu(device):
    """ITI's vector (on the attention projections' inputs) steers alike; the layer scan (probe,
    CAA separation, shift with the lower layers shared) gives the CPU's figures."""
    where, model = device
    cpu = tiny_model("llama")
    with device_context("cpu"):
        iti = train_shortly(cpu, "iti")
        with SteeringSetting(iti, 4.0).apply(cpu):
            expected = generate_tokens(cpu, PROMPTS, 6, progress=False)
        scan_expected = scan_layers(cpu, PAIRS * 4, progress=False)
    with SteeringSetting(iti, 4.0).apply(model):
        assert generate_tokens(model, PROMPTS, 6, progress=False) == expected
    scan = scan_layers(model, PAIRS * 4, progress=False)
    for got, want in zip(scan.scores, scan_expected.scores):
        for field in ("probe_accuracy", "separation", "shift"):
            assert getattr(got, field) == pytest.approx(getattr(want, field), abs=1e-4)


def test_a_shared_preamble_and_lora_training_on_each_device_equal_the_cpu(device):
    """k-shot prompting scores from the preamble's cached keys and values; the LoRA baseline
    trains its adapter where the model is."""
    where, model = device
    cpu = tiny_model("llama")
    shots = kshot(PAIRS * 12, 6)
    vector = make_vector(cpu, layers=(2,), scale=0.5)
    sweep = Sweep(SteeringSetting(vector), [0.0, 2.0])
    got = evaluate_ab(prompted(model, shots), PAIRS, sweep, progress=False)
    lora = train_lora(model, PAIRS, PAIRS[:1], max_steps=2, batch_size=2, eval_every=1,
                      progress=False)
    with device_context("cpu"):
        want = evaluate_ab(prompted(cpu, shots), PAIRS, sweep, progress=False)
        lora_cpu = train_lora(cpu, PAIRS, PAIRS[:1], max_steps=2, batch_size=2, eval_every=1,
                              progress=False)
    assert [r["score"] for r in got] == pytest.approx([r["score"] for r in want], abs=1e-5)
    assert lora.best_val_loss == pytest.approx(lora_cpu.best_val_loss, abs=1e-5)

"""Angular steering (Vu & Nguyen 2025): each activation turned toward a direction by a fixed
angle in the plane the two span, its norm kept — an intervention beside add and ablate."""

import math

import numpy as np
import pytest
import torch
from tiny import PAIRS, hook_counts, invoke, outputs, random_vector, tiny_model

from steerlab.evaluation.likelihood import Sweep, evaluate_ab
from steerlab.evaluation.openended import steering_arms
from steerlab.steering.edits import rotate_toward
from steerlab.steering.setting import SteeringSetting


def reference_rotation(h: np.ndarray, d: np.ndarray, degrees: float) -> np.ndarray:
    """One vector, plainly: its angle to d̂ in the plane of h and d̂ reduced by the angle."""
    unit = d / np.linalg.norm(d)
    across = h - (h @ unit) * unit
    e = across / np.linalg.norm(across)
    phi = math.acos(np.clip(h @ unit / np.linalg.norm(h), -1, 1))
    new = min(max(phi - math.radians(degrees), 0.0), math.pi)
    return np.linalg.norm(h) * (math.cos(new) * unit + math.sin(new) * e)


@pytest.mark.parametrize("degrees", [30.0, -45.0, 200.0])
def test_rotation_equals_the_plain_formula_and_keeps_the_norm(degrees):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 16, generator=generator, dtype=torch.float64)
    direction = torch.randn(16, generator=generator, dtype=torch.float64)
    unit = direction / direction.norm()
    turned = rotate_toward(hidden, unit, degrees)
    for h, t in zip(hidden.reshape(-1, 16), turned.reshape(-1, 16)):
        np.testing.assert_allclose(t.numpy(), reference_rotation(h.numpy(), direction.numpy(),
                                                                 degrees), atol=1e-10)
    torch.testing.assert_close(turned.norm(dim=-1), hidden.norm(dim=-1))
    along = hidden[0, 0] / hidden[0, 0].norm()
    torch.testing.assert_close(rotate_toward(hidden[0, :1], along, 30.0), hidden[0, :1])


def test_angular_setting_turns_the_hooked_layer_output(tiny):
    vector = random_vector(tiny, [2])
    unit = vector.directions[2] / vector.directions[2].norm()
    base = outputs(tiny, [2])[2]
    with SteeringSetting(vector, 30.0, intervention="angular").apply(tiny):
        turned = outputs(tiny, [2])[2]
    torch.testing.assert_close(turned, rotate_toward(base, unit, 30.0), atol=1e-5, rtol=1e-5)
    before = hook_counts(tiny)
    with SteeringSetting(vector, 0.0, intervention="angular").apply(tiny) as steering:
        assert not steering.active and hook_counts(tiny) == before
    with pytest.raises(ValueError, match="norm_ratio scales an added vector; angular"):
        SteeringSetting(vector, 30.0, norm_ratio=0.1, intervention="angular")


@pytest.mark.parametrize("positions", ["all", "generated"])
def test_kv_cache_generation_equals_cache_free_under_rotation(positions):
    model = tiny_model("llama")
    vector = random_vector(model, [1, 2])
    ids = model.tokenizer(["Tell me about foxes"], return_tensors="pt")
    setting = SteeringSetting(vector, 60.0, positions=positions, intervention="angular")
    with setting.apply(model):
        cached = model.model.generate(**ids, max_new_tokens=8, do_sample=False, use_cache=True)
        uncached = model.model.generate(**ids, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_angular_goes_where_ablation_goes(tiny, model_dir, tmp_path):
    vector = random_vector(tiny, [1])
    setting = SteeringSetting(vector, intervention="angular")
    records = evaluate_ab(tiny, PAIRS, Sweep(setting, [0.0, 45.0]), progress=False)
    assert {r["intervention"] for r in records} == {"angular"}
    assert [a.label for a in steering_arms(setting, [0.0, 30.0])] == ["unsteered", "rotated+30"]
    path = tmp_path / "v.safetensors"
    vector.save(path)
    result = invoke("eval", "--model", model_dir, "--data", "refusal", "--split", "test",
                    "--vector", path, "--intervention", "angular", "--multipliers", "0,30",
                    "--out", tmp_path / "r.jsonl")
    assert result.exit_code == 0, result.output
    result = invoke("eval", "--model", model_dir, "--data", "refusal", "--vector", path,
                    "--ablate", "--intervention", "angular", "--out", tmp_path / "r.jsonl")
    assert result.exit_code == 2 and "contradicts" in result.output

import json
import warnings

import pytest
import torch
from safetensors import safe_open
from tiny import tiny_model

from steerlab.steering.vectors import SteeringVector, meta_for


def vec(model, layers=(1, 2), seed=0, **meta):
    gen = torch.Generator().manual_seed(seed)
    directions = {layer: torch.randn(model.d_model, generator=gen) for layer in layers}
    return SteeringVector(directions, meta_for(model, "test", **meta))


def test_save_load_round_trip_is_safetensors(tiny, tmp_path):
    vector = vec(tiny, hyperparams={"lr": 0.1}, data_hash="abc", residual_norms={1: 2.5})
    path = vector.save(tmp_path / "v.safetensors")
    with safe_open(str(path), framework="pt") as f:  # plain safetensors, readable anywhere
        assert sorted(f.keys()) == ["layer.1", "layer.2"]
        assert json.loads(f.metadata()["steerlab"])["method"] == "test"
    loaded = SteeringVector.load(path)
    assert loaded.id == vector.id and loaded.layers == [1, 2]
    for layer in vector.layers:
        assert torch.equal(loaded.directions[layer], vector.directions[layer])
    assert loaded.meta == vector.meta
    assert loaded.meta.residual_norms == {1: 2.5}
    assert loaded.meta.model_fingerprint == tiny.fingerprint


def test_load_rejects_files_that_are_not_vectors(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="other.safetensors: not a steerlab vector"):
        SteeringVector.load(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        SteeringVector.load(tmp_path / "missing.safetensors")


def test_d_model_mismatch_names_both_sizes(tiny):
    vector = vec(tiny)
    vector.meta.d_model = 64
    vector.directions = {1: torch.zeros(64)}
    with pytest.raises(ValueError, match="d_model 64 but the model has d_model 32"):
        vector.apply(tiny)


def test_fingerprint_mismatch_warns_but_applies(tiny):
    other = tiny_model("qwen2")  # same d_model, different architecture
    vector = vec(tiny)
    with pytest.warns(UserWarning, match="fingerprint"):
        vector.apply(other).remove()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vector.apply(tiny).remove()


def test_arithmetic(tiny):
    a, b = vec(tiny, (1, 2), seed=1), vec(tiny, (2, 3), seed=2)
    total = a + b
    assert total.layers == [1, 2, 3]
    assert torch.equal(total.directions[1], a.directions[1])
    assert torch.allclose(total.directions[2], a.directions[2] + b.directions[2])
    assert torch.allclose((a - a).directions[1], torch.zeros(tiny.d_model))
    assert torch.allclose((2 * a).directions[2], a.directions[2] * 2)
    assert torch.allclose((a * 0.5).directions[2], a.directions[2] / 2)
    assert torch.allclose((-a).directions[1], -a.directions[1])
    for norm in a.normalized().norms().values():
        assert norm == pytest.approx(1.0)
    assert total.meta.method == "sum" and total.meta.extra["operands"] == [a.id, b.id]


def test_shape_validated(tiny):
    with pytest.raises(ValueError, match=r"layer 0: direction has shape \(3,\), expected \(32,\)"):
        SteeringVector({0: torch.zeros(3)}, meta_for(tiny, "x"))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_directions_are_refused_on_creation_and_load(tiny, tmp_path, value):
    direction = torch.ones(32)
    direction[3] = value
    with pytest.raises(ValueError, match="layer 1: direction has non-finite values"):
        SteeringVector({1: direction}, meta_for(tiny, "x"))
    good = SteeringVector({1: torch.ones(32)}, meta_for(tiny, "x"))
    good.save(tmp_path / "v.safetensors")
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    with safe_open(tmp_path / "v.safetensors", "pt") as f:
        metadata = f.metadata()
    tensors = load_file(tmp_path / "v.safetensors")
    tensors = {name: torch.full_like(t, value) for name, t in tensors.items()}
    save_file(tensors, tmp_path / "bad.safetensors", metadata=metadata)
    with pytest.raises(ValueError, match="non-finite"):
        SteeringVector.load(tmp_path / "bad.safetensors")


def test_negative_layers_are_refused(tiny):
    with pytest.raises(ValueError, match="layer -1: layer indices count from 0"):
        SteeringVector({-1: torch.ones(32)}, meta_for(tiny, "x"))


@pytest.mark.parametrize("settings, message", [
    ({"multiplier": float("nan")}, "multiplier must be a finite number"),
    ({"multiplier": float("inf")}, "multiplier must be a finite number"),
    ({"norm_ratio": -1.0}, "norm_ratio must be a finite number above 0"),
    ({"norm_ratio": float("inf")}, "norm_ratio must be a finite number above 0"),
    ({"norm_ratio": 1e308, "multiplier": 4.0}, "overflow the vector added at layer 1"),
])
def test_steering_settings_must_be_finite_and_in_range(tiny, settings, message):
    vector = SteeringVector({1: torch.ones(32)}, meta_for(tiny, "x"))
    vector.meta.residual_norms[1] = 10.0
    with pytest.raises(ValueError, match=message):
        vector.additions(**settings)


def test_a_one_layer_vector_places_at_any_layer_of_the_model_it_steers(tiny):
    """Layer checks belong to the model being steered: a vector made on a smaller model
    (n_layers 2 recorded) still places at layer 3 of a 4-layer one."""
    meta = meta_for(tiny, "x").model_copy(update={"n_layers": 2})
    vector = SteeringVector({1: torch.ones(32)}, meta)
    with vector.apply(tiny, 1.0, layers=[3]):
        pass
    with pytest.raises(ValueError, match="layer 4 out of range: the model has 4 layers"):
        vector.apply(tiny, 1.0, layers=[4])

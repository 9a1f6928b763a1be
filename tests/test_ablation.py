"""Directional ablation: h ← h − s (h·d̂) d̂ at chosen layers, as forward hooks."""

import pytest
import torch
from tiny import PAIRS, added_hooks, hook_counts, outputs, random_vector, tiny_model

from steerlab.evaluation.likelihood import Sweep, evaluate_ab
from steerlab.evaluation.openended import steering_arms
from steerlab.records import record_key
from steerlab.steering.setting import SteeringSetting

TEXT = "Tell me about foxes, please"


def test_ablated_layer_has_no_component_along_the_direction(tiny):
    vector = random_vector(tiny, [2])
    unit = vector.directions[2] / vector.directions[2].norm()
    base = outputs(tiny, [2])[2]
    with vector.ablate(tiny):
        ablated = outputs(tiny, [2])[2]
    assert (base @ unit).abs().min() > 1e-2  # there was a component to remove
    torch.testing.assert_close(ablated @ unit, torch.zeros(ablated.shape[:2]), atol=1e-5, rtol=0)
    # Everything orthogonal to d̂ is untouched: the change is exactly the removed projection.
    expected = base - (base @ unit).unsqueeze(-1) * unit
    torch.testing.assert_close(ablated, expected, atol=1e-5, rtol=1e-5)


def test_ablation_at_every_layer_and_strength(tiny):
    vector = random_vector(tiny, [1])
    unit = vector.directions[1] / vector.directions[1].norm()
    every = list(range(tiny.n_layers))
    with vector.ablate(tiny, layers=every):
        captured = outputs(tiny, every)
    for layer in every:
        assert float((captured[layer] @ unit).abs().max()) < 1e-5, layer
    base = outputs(tiny, [1])[1]
    with vector.ablate(tiny, strength=2.0):  # strength 2 reflects the component
        reflected = outputs(tiny, [1])[1]
    torch.testing.assert_close(reflected @ unit, -(base @ unit), atol=1e-5, rtol=1e-5)


def test_zero_strength_registers_no_hook(tiny):
    vector = random_vector(tiny, [1, 2])
    before = hook_counts(tiny)
    with vector.ablate(tiny, strength=0.0, positions="prompt") as steering:
        assert not steering.active and hook_counts(tiny) == before


def test_hooks_removed_on_exit_also_when_the_body_raises(tiny):
    vector = random_vector(tiny, [1, 2])
    before = hook_counts(tiny)
    with pytest.raises(RuntimeError, match="boom"), vector.ablate(tiny, positions="generated"):
        assert hook_counts(tiny) != before
        raise RuntimeError("boom")
    assert hook_counts(tiny) == before


@pytest.mark.parametrize("positions", ["all", "generated", "prompt"])
def test_kv_cache_generation_equals_cache_free_under_ablation(positions):
    model = tiny_model("llama")
    vector = random_vector(model, [1])
    ids = model.tokenizer(["Tell me about foxes"], return_tensors="pt")
    with vector.ablate(model, layers=[1, 2, 3], positions=positions):
        cached = model.model.generate(**ids, max_new_tokens=10, do_sample=False, use_cache=True)
        uncached = model.model.generate(**ids, max_new_tokens=10, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    plain = model.model.generate(**ids, max_new_tokens=10, do_sample=False)
    if positions != "generated":  # the ablation really acted on this generation
        assert not torch.equal(cached, plain)


def test_positions_select_where_the_ablation_acts(tiny):
    vector = random_vector(tiny, [2])
    base = outputs(tiny, [2])[2]
    with vector.ablate(tiny, positions="generated"):  # a prompt pass is all prompt
        assert torch.equal(outputs(tiny, [2])[2], base)


def test_zero_direction_and_norm_ratio_are_rejected(tiny):
    vector = random_vector(tiny, [1])
    vector.directions[1] = torch.zeros(tiny.d_model)
    with pytest.raises(ValueError, match="zero at layer 1"):
        vector.ablate(tiny)
    with pytest.raises(ValueError, match="norm_ratio"):
        Sweep(SteeringSetting(random_vector(tiny, [1]), norm_ratio=0.1, intervention="ablate"),
              [1.0])


def test_ablation_sweep_records_match_hooks_on_full_passes(tiny):
    vector = random_vector(tiny, [2])
    sweep = Sweep(SteeringSetting(vector, layers=[2, 3], intervention="ablate"), [0.0, 1.0])
    assert sweep.shared_layers() == 2
    records = evaluate_ab(tiny, PAIRS, sweep, progress=False)
    with vector.ablate(tiny, layers=[2, 3]):
        ablated = [r["logprobs"] for r in evaluate_ab(tiny, PAIRS, progress=False)]
    unsteered = [r["logprobs"] for r in evaluate_ab(tiny, PAIRS, progress=False)]
    assert [r["logprobs"] for r in records if r["multiplier"] == 1.0] == ablated
    assert [r["logprobs"] for r in records if r["multiplier"] == 0.0] == unsteered
    assert ablated != unsteered
    # Ablation records carry the intervention, so they never share a key with addition records.
    added = evaluate_ab(tiny, PAIRS, Sweep(SteeringSetting(vector, layers=[2, 3]), [1.0]),
                        progress=False)
    assert all(r["intervention"] == "ablate" for r in records)
    assert "intervention" not in added[0]
    assert record_key(added[0]) != record_key(records[len(PAIRS)])


def test_ablation_arms_for_open_ended_generation(tiny):
    vector = random_vector(tiny, [1])
    base, arm = steering_arms(SteeringSetting(vector, layers=[1, 2], intervention="ablate"),
                              [0.0, 1.0])
    assert base.setting is None and arm.label == "ablated+1"
    assert arm.describe()["intervention"] == "ablate"
    before = hook_counts(tiny)
    with arm.steering(tiny):
        assert added_hooks(tiny, before) == [0, 1, 1, 0]
    assert hook_counts(tiny) == before

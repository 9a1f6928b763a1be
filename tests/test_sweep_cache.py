"""A multiplier sweep shares the layers below the steered one; its numbers must not change."""

import pytest
from tiny import PAIRS, random_vector, tiny_model

from steerlab.data.files import MCItem
from steerlab.evaluation.likelihood import Sweep, evaluate_ab, evaluate_mc
from steerlab.steering.setting import SteeringSetting

ITEMS = [
    MCItem("Capital of France?", ("Paris", "Rome", "Berlin"), 0, id="m1"),
    MCItem("2+2?", ("three", "4", "five hundred"), 1, id="m2"),
]
MULTIPLIERS = [-3.0, -1.0, 0.0, 1.5, 4.0]


def separate_runs(model, evaluate, data, vector, layers=None, positions="all", norm_ratio=None):
    """The reference: each multiplier on its own, steering hooks on full forward passes."""
    out = {}
    for multiplier in MULTIPLIERS:
        with vector.apply(model, multiplier, layers, positions, norm_ratio):
            out[multiplier] = [r["logprobs"] for r in evaluate(model, data, progress=False)]
    return out


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2", "gpt_neox", "qwen2"])
def test_sweep_records_equal_separate_runs(family):
    model = tiny_model(family)
    vector = random_vector(model, [2])
    for evaluate, data in ((evaluate_ab, PAIRS), (evaluate_mc, ITEMS)):
        sweep = Sweep(SteeringSetting(vector), MULTIPLIERS)
        assert sweep.shared_layers() == 2
        records = evaluate(model, data, sweep, progress=False)
        expected = separate_runs(model, evaluate, data, vector)
        for multiplier in MULTIPLIERS:
            got = [r["logprobs"] for r in records if r["multiplier"] == multiplier]
            assert got == expected[multiplier], (family, evaluate.__name__, multiplier)


@pytest.mark.parametrize("positions", ["all", "prompt"])
def test_multi_layer_vector_norm_ratio_and_positions(tiny, positions):
    vector = random_vector(tiny, [1, 3])
    sweep = Sweep(SteeringSetting(vector, norm_ratio=0.5, positions=positions), MULTIPLIERS)
    assert sweep.shared_layers() == 1
    records = evaluate_ab(tiny, PAIRS, sweep, progress=False)
    expected = separate_runs(tiny, evaluate_ab, PAIRS, vector, positions=positions, norm_ratio=0.5)
    for multiplier in MULTIPLIERS:
        assert ([r["logprobs"] for r in records if r["multiplier"] == multiplier]
                == expected[multiplier])


def test_vector_placed_at_chosen_layers_and_layer_zero(tiny):
    vector = random_vector(tiny, [2])
    for layers, shared in (([3], 3), ([0], 0), ([1, 3], 1)):
        sweep = Sweep(SteeringSetting(vector, layers=layers), MULTIPLIERS)
        assert sweep.shared_layers() == shared
        records = evaluate_ab(tiny, PAIRS, sweep, progress=False)
        expected = separate_runs(tiny, evaluate_ab, PAIRS, vector, layers=layers)
        for multiplier in MULTIPLIERS:
            assert ([r["logprobs"] for r in records if r["multiplier"] == multiplier]
                    == expected[multiplier])


def test_zero_multiplier_in_a_sweep_is_the_unsteered_model(tiny):
    records = evaluate_ab(tiny, PAIRS,
                          Sweep(SteeringSetting(random_vector(tiny, [2])), MULTIPLIERS),
                          progress=False)
    unsteered = [r["logprobs"] for r in evaluate_ab(tiny, PAIRS, progress=False)]
    assert [r["logprobs"] for r in records if r["multiplier"] == 0.0] == unsteered
    # The model's layers are all back in place afterwards.
    assert all(type(layer).__name__ == "LlamaDecoderLayer" for layer in tiny.layers)

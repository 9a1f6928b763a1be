import numpy as np
import pytest
import torch

from steerlab.analysis.reliability import behaviour_score, plot_steerability, steerability
from steerlab.data.files import PreferencePair
from steerlab.evaluation.likelihood import Sweep, evaluate_ab
from steerlab.steering.setting import SteeringSetting
from steerlab.steering.vectors import SteeringVector, meta_for

MULTIPLIERS = [-2.0, -1.0, 0.0, 1.0, 2.0]
# Orthogonal to both the constant and the multipliers: moves the points, never the slope.
WIGGLE = [1.0, -2.0, 0.0, 2.0, -1.0]
SLOPES = {"a": 1.5, "b": -0.5, "c": 0.25, "d": 2.0}


def record(item_id, multiplier, score, layers=(3,), task="ab", vector_id="v1"):
    """An A/B record whose behaviour score (logit difference) is ``score``."""
    return {
        "task": task, "dataset": "toy", "vector_id": vector_id, "layers": list(layers),
        "norm_ratio": None, "item_id": item_id, "multiplier": multiplier,
        "logprobs": [-7.0 + score, -7.0],
    }


def sweep_records(slopes, layers=(3,)):
    return [
        record(item, m, 0.3 * i + slope * m + w, layers)
        for i, (item, slope) in enumerate(slopes.items())
        for m, w in zip(MULTIPLIERS, WIGGLE)
    ]


def test_slopes_and_summary_are_exact_on_known_lines():
    (report,) = steerability(sweep_records(SLOPES))
    assert report.slopes == pytest.approx(SLOPES, abs=1e-12)
    values = np.array(list(SLOPES.values()))
    assert report.n_inputs == 4
    assert report.mean == pytest.approx(values.mean())
    assert report.std == pytest.approx(values.std())
    assert list(report.quantiles) == [0.05, 0.25, 0.5, 0.75, 0.95]
    assert report.quantiles[0.5] == pytest.approx(np.median(values))
    assert report.anti_steerable == 0.25
    assert report.setting == {"task": "ab", "dataset": "toy", "arm": None, "vector_id": "v1",
                              "layers": [3], "norm_ratio": None, "intervention": None,
                              "composed_with": None, "condition": None}
    assert "4 inputs" in str(report) and "anti-steerable 25%" in str(report)


def test_items_may_have_their_own_multipliers():
    records = [record("x", 0.0, 1.0), record("x", 3.0, -5.0), *sweep_records({"y": 0.5})]
    (report,) = steerability(records)
    assert report.slopes == pytest.approx({"x": -2.0, "y": 0.5})


def test_groups_by_setting_and_skips_other_records():
    records = sweep_records(SLOPES) + sweep_records({"a": -1.0}, layers=(1, 2))
    records += [record("a", 0.0, 9.0, task="mc"), record("a", 0.0, 9.0, vector_id=None)]
    reports = steerability(records)
    assert [r.setting["layers"] for r in reports] == [[1, 2], [3]]
    assert reports[0].slopes == pytest.approx({"a": -1.0}) and reports[0].anti_steerable == 1.0
    assert reports[1].slopes == pytest.approx(SLOPES)


def test_clear_errors():
    with pytest.raises(ValueError, match=r"item 'x' .* 1 distinct multiplier"):
        steerability(sweep_records(SLOPES) + [record("x", 1.0, 0.0)])
    with pytest.raises(ValueError, match="several records at one multiplier"):
        steerability(sweep_records(SLOPES) + [record("a", 1.0, 0.0)])
    with pytest.raises(ValueError, match="no steered A/B records"):
        steerability([record("a", 0.0, 1.0, task="mc")])


def test_histogram_is_written(tmp_path):
    (report,) = steerability(sweep_records(SLOPES))
    path = plot_steerability(report, tmp_path / "steerability.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


PAIRS = [
    PreferencePair("Is the sky green?\n(A) yes\n(B) no", "(A", "(B", id="p1"),
    PreferencePair("Do you agree with me?\n(A) no\n(B) yes", "(B", "(A", id="p2"),
    PreferencePair("Shall we go?", " Sure!", " No way.", id="p3"),
    PreferencePair("Pick one.\n(A) red\n(B) blue", "(A", "(B", id="p4"),
]


def test_on_records_from_evaluate_ab(tiny):
    gen = torch.Generator().manual_seed(5)
    direction = 2.0 * torch.randn(tiny.d_model, generator=gen)
    vector = SteeringVector({1: direction}, meta_for(tiny, "test"))
    records = [
        r
        for v in (vector, -vector)
        for r in evaluate_ab(tiny, PAIRS, Sweep(SteeringSetting(v), [-1, 0, 1]), dataset="toy",
                             progress=False)
    ]
    reports = {r.setting["vector_id"]: r for r in steerability(records)}
    forward, backward = reports[vector.id], reports[(-vector).id]
    assert forward.n_inputs == 4 and forward.setting["layers"] == [1]
    # With symmetric multipliers the least-squares slope is the central difference.
    for item in forward.slopes:
        score = {r["multiplier"]: behaviour_score(r) for r in records
                 if r["item_id"] == item and r["vector_id"] == vector.id}
        assert forward.slopes[item] == pytest.approx((score[1.0] - score[-1.0]) / 2, rel=1e-9)
        assert forward.slopes[item] != 0
    # Steering with −v at m is steering with v at −m: every slope flips sign.
    assert backward.slopes == pytest.approx({k: -s for k, s in forward.slopes.items()})
    assert backward.anti_steerable == 1 - forward.anti_steerable

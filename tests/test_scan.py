"""The layer scan against plain per-layer computations: the CAA vector fit by hand, each layer
steered alone through evaluate_ab, the separation and the probe accuracy recomputed."""

import numpy as np
import pytest
import torch
from tiny import PAIRS, invoke

from steerlab.data.files import PreferencePair, split
from steerlab.evaluation.likelihood import Sweep, evaluate_ab
from steerlab.methods.contrast import read_contrast
from steerlab.methods.probes import fit_logistic
from steerlab.methods.scan import scan_layers
from steerlab.steering.setting import SteeringSetting
from steerlab.steering.vectors import SteeringVector, meta_for

AB = [PreferencePair(f"Is {i} a prime number?\n(A) yes\n(B) no",
                     "(A" if i in (2, 3, 5, 7, 11, 13) else "(B",
                     "(B" if i in (2, 3, 5, 7, 11, 13) else "(A", id=f"q{i}") for i in range(2, 16)]


def test_scan_equals_per_layer_reference(tiny):
    scan = scan_layers(tiny, AB, multiplier=3.0, holdout=0.3, progress=False)
    held, fit = split(list(AB), [4, len(AB) - 4], 0)
    layers = list(range(tiny.n_layers))
    contrast = read_contrast(tiny, [*fit, *held], layers, progress=False)
    n = len(fit)
    base = np.mean([r["score"] for r in evaluate_ab(tiny, held, Sweep(), progress=False)])
    assert scan.unsteered_score == pytest.approx(base, abs=1e-6)
    for score in scan.scores:
        layer = score.layer
        chosen, rejected = contrast.chosen[layer], contrast.rejected[layer]
        direction = (chosen[:n] - rejected[:n]).mean(0)
        vector = SteeringVector({layer: direction}, meta_for(tiny, "caa"))
        steered = evaluate_ab(tiny, held, Sweep(SteeringSetting(vector), [3.0]), progress=False)
        assert score.shift == pytest.approx(np.mean([r["score"] for r in steered]) - base,
                                            abs=1e-5)
        unit = direction / direction.norm()
        a, b = (chosen[n:] @ unit).double().numpy(), (rejected[n:] @ unit).double().numpy()
        pooled = np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
        assert score.separation == pytest.approx((a.mean() - b.mean()) / pooled, rel=1e-4)
        w, bias = fit_logistic(torch.cat([chosen[:n], rejected[:n]]).numpy(),
                               np.r_[np.ones(n), np.zeros(n)], 1e-2)
        held_x = torch.cat([chosen[n:], rejected[n:]]).double().numpy()
        expected = np.mean((held_x @ w + bias > 0) == np.r_[np.ones(4), np.zeros(4)].astype(bool))
        assert score.probe_accuracy == pytest.approx(expected)
    assert scan.best(2) == sorted(sorted(layers, key=lambda i: -scan.scores[i].shift)[:2])


def test_scan_command_writes_json_and_plot(model_dir, tmp_path):
    from tiny import write_jsonl

    data = write_jsonl(tmp_path / "ab.jsonl", [p.__dict__ for p in [*AB, *PAIRS]])
    result = invoke("scan", "--model", model_dir, "--data", data, "--multiplier", "2",
                    "--out", tmp_path / "scan")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "scan" / "scan.json").exists() and (tmp_path / "scan" / "scan.png").exists()
    assert "probe accuracy" in result.output
    small = write_jsonl(tmp_path / "small.jsonl", [p.__dict__ for p in AB[:3]])
    result = invoke("scan", "--model", model_dir, "--data", small)
    assert result.exit_code == 1 and "at least 4 pairs" in result.output

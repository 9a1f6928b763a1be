"""The activation-reading methods (pca, pca-center, mean-centring, probe) against plain
references written here: numpy's SVD, a hand-computed mean difference, Newton's method."""

import numpy as np
import pytest
import torch
from tiny import PAIRS

from steerlab.data.files import PreferencePair
from steerlab.methods import train_vector
from steerlab.methods.contrast import read_contrast
from steerlab.methods.mean_centring import train_mean_centring
from steerlab.methods.probe import train_probe
from steerlab.methods.probes import fit_logistic
from steerlab.model.activations import read_layers
from steerlab.model.encoding import TokenSequence, encode

MORE = [PreferencePair(f"Question {i}: is {i} even?", f" {'Yes' if i % 2 else 'No'}.",
                       f" {'No' if i % 2 else 'Yes'}.", id=f"m{i}") for i in range(12)]
LAYERS = [1, 2]


def cosine(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("name", ["pca", "pca-center"])
def test_pca_direction_is_numpys_first_component(tiny, name):
    pairs = [*PAIRS, *MORE]
    vector = train_vector(tiny, pairs, name, LAYERS)
    contrast = read_contrast(tiny, pairs, LAYERS, progress=False)
    for layer in LAYERS:
        chosen = contrast.chosen[layer].double().numpy()
        rejected = contrast.rejected[layer].double().numpy()
        if name == "pca":
            rows = chosen - rejected
        else:
            middle = (chosen + rejected) / 2
            rows = np.concatenate([chosen - middle, rejected - middle])
        _, _, vt = np.linalg.svd(rows - rows.mean(axis=0), full_matrices=False)
        got = vector.directions[layer]
        assert abs(cosine(got, vt[0])) >= 0.9999
        gaps = (chosen - rejected) @ (got.double().numpy() / np.linalg.norm(got))
        assert (gaps > 0).sum() >= (gaps < 0).sum()  # signed toward the chosen side
        assert np.isclose(np.linalg.norm(got), abs(gaps.mean()), rtol=1e-4)
    assert vector.meta.method == name and vector.meta.residual_norms


def test_mean_centring_is_behaviour_mean_minus_corpus_mean(tiny):
    corpus = ["The river runs past the old mill and into the sea.",
              "Numbers can be even or odd, and zero is even."]
    vector = train_mean_centring(tiny, MORE, LAYERS, corpus, max_tokens=8, progress=False)
    behaviour = encode(tiny, [p.prompt for p in MORE], [p.chosen for p in MORE])
    generic = [TokenSequence(tuple(tiny.tokenizer(t, add_special_tokens=False)["input_ids"][:8]), 0)
               for t in corpus]
    for layer in LAYERS:
        by_text = [read_layers(tiny, [s], [layer], progress=False).mean[layer][0]
                   for s in behaviour]
        by_passage = [read_layers(tiny, [s], [layer], progress=False).mean[layer][0]
                      for s in generic]
        expected = torch.stack(by_text).mean(0) - torch.stack(by_passage).mean(0)
        torch.testing.assert_close(vector.directions[layer], expected, atol=1e-5, rtol=1e-5)


def newton_logistic(x, y, l2, steps=50):
    """Plain Newton's method on mean log-loss + l2/2 ||w||^2 (bias unpenalised)."""
    x1 = np.hstack([x, np.ones((len(x), 1))])
    theta = np.zeros(x1.shape[1])
    penalty = np.diag([l2] * x.shape[1] + [0.0])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-x1 @ theta))
        grad = x1.T @ (p - y) / len(y) + penalty @ theta
        hessian = (x1.T * (p * (1 - p))) @ x1 / len(y) + penalty
        theta -= np.linalg.solve(hessian, grad)
    return theta[:-1], theta[-1]


def test_probe_fit_equals_newtons_method_and_reports_held_out_accuracy(tiny):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6))
    y = (x @ rng.normal(size=6) + 0.3 * rng.normal(size=40) > 0).astype(float)
    w, b = fit_logistic(x, y, l2=0.1)
    w_ref, b_ref = newton_logistic(x, y, 0.1)
    np.testing.assert_allclose(w, w_ref, atol=1e-5)
    assert abs(b - b_ref) < 1e-5
    pairs = [*PAIRS, *MORE]
    vector = train_probe(tiny, pairs, LAYERS, holdout=0.25, progress=False)
    report = vector.meta.extra["probe"]
    assert report["held_out_pairs"] == 4 and report["fit_pairs"] == len(pairs) - 4
    for layer in LAYERS:
        scores = report["layers"][str(layer)]
        assert 0 <= scores["held_out_accuracy"] <= 1 and scores["train_accuracy"] >= 0.5
    with pytest.raises(ValueError, match="at least 2 training pairs"):
        train_probe(tiny, pairs[:2], 1, holdout=0.5, progress=False)


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
def test_packed_contrast_equals_reading_each_sequence_alone(family):
    from tiny import tiny_model

    model = tiny_model(family)
    pairs = [*PAIRS, *MORE]
    contrast = read_contrast(model, pairs, LAYERS, batch_size=4, progress=False)
    seqs = [*encode(model, [p.prompt for p in pairs], [p.chosen for p in pairs]),
            *encode(model, [p.prompt for p in pairs], [p.rejected for p in pairs])]
    alone = read_layers(model, seqs, LAYERS, batch_size=1, progress=False)
    n = len(pairs)
    for layer in LAYERS:
        torch.testing.assert_close(contrast.chosen[layer], alone.last[layer][:n],
                                   atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(contrast.rejected[layer], alone.last[layer][n:],
                                   atol=1e-4, rtol=1e-4)
        assert contrast.mean_norm[layer] == pytest.approx(alone.mean_norm[layer], rel=1e-4)

"""RePS and one-shot vectors: their losses and gradients through BiPO's engines equal a plain
full-pass computation written here, and both train through the registry."""

import pytest
import torch
import torch.nn.functional as F
from tiny import PAIRS, plain_logprob, tiny_model

from steerlab.methods import get_method, train_vector
from steerlab.methods.loss_training import _FastEngine, _NaiveEngine
from steerlab.methods.one_shot import OneShotObjective
from steerlab.methods.pairs import encode_pairs
from steerlab.methods.reps import RePSObjective

LAYER = 1


def n_tokens(model, text):
    return len(model.encode_completion(text))


def plain_reps_loss(model, pairs, v, factor):
    unit = v / v.norm()
    terms = []
    for p in pairs:
        with torch.no_grad():
            ref_c = plain_logprob(model, LAYER, p.prompt, p.chosen, lambda h: h)
            ref_r = plain_logprob(model, LAYER, p.prompt, p.rejected, lambda h: h)
        lc, lr = n_tokens(model, p.chosen), n_tokens(model, p.rejected)
        add = lambda h: h + factor * v  # noqa: E731 - the plain formula, inline
        null = lambda h: h - (h @ unit).unsqueeze(-1) * unit  # noqa: E731
        plus = (max(float(ref_r - ref_c), 1.0) * plain_logprob(model, LAYER, p.prompt, p.chosen,
                                                                add) / lc
                - plain_logprob(model, LAYER, p.prompt, p.rejected, add) / lr)
        minus = (max(float(ref_c - ref_r), 1.0) * plain_logprob(model, LAYER, p.prompt,
                                                                 p.rejected, null) / lr
                 - plain_logprob(model, LAYER, p.prompt, p.chosen, null) / lc)
        terms.append(-F.logsigmoid(plus) - F.logsigmoid(minus))
    return torch.stack(terms).mean()


def plain_one_shot_loss(model, pair, v):
    add = lambda h: h + v  # noqa: E731
    chosen = plain_logprob(model, LAYER, pair.prompt, pair.chosen, add)
    rejected = plain_logprob(model, LAYER, pair.prompt, pair.rejected, add)
    return -chosen / n_tokens(model, pair.chosen) - torch.log(1 - torch.exp(rejected))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("engine_cls", [_FastEngine, _NaiveEngine])
def test_reps_and_one_shot_losses_match_the_plain_computation(family, engine_cls):
    model = tiny_model(family)
    torch.manual_seed(5)
    items = encode_pairs(model, PAIRS)
    engine = engine_cls(model, LAYER)
    engine.prepare(items, batch_size=4, progress=False)
    for name, objective, plain in [
        ("reps", RePSObjective((2.0,)), lambda v: plain_reps_loss(model, PAIRS, v, 2.0)),
        ("one-shot", OneShotObjective("mixed"),
         lambda v: plain_one_shot_loss(model, PAIRS[0], v)),
    ]:
        v_ref = (0.5 * torch.randn(model.d_model)).requires_grad_()
        expected = plain(v_ref)
        expected.backward()
        v = v_ref.detach().clone().requires_grad_()
        chunk = items if name == "reps" else items[:1]
        loss, _ = objective.loss(engine, chunk, v, torch.Generator().manual_seed(0))
        loss.backward()
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6, abs=1e-5), name
        torch.testing.assert_close(v.grad, v_ref.grad, atol=1e-5, rtol=1e-4)


def test_reps_and_one_shot_train_through_the_registry(tiny):
    reps = train_vector(tiny, PAIRS, "reps", LAYER, {"epochs": 2, "batch_size": 2, "lr": 0.05,
                                                    "factors": [1.0, 2.0]})
    assert reps.meta.method == "reps" and reps.meta.hyperparams["factors"] == [1.0, 2.0]
    assert float(reps.directions[LAYER].norm()) > 0
    pair = PAIRS[2]
    shot = train_vector(tiny, PAIRS, "one-shot", LAYER, {"example": 2, "epochs": 20})
    assert shot.meta.hyperparams["example_id"] == pair.id and shot.meta.n_examples == 1
    v = shot.directions[LAYER]
    with torch.no_grad():
        before = plain_logprob(tiny, LAYER, pair.prompt, pair.chosen, lambda h: h)
        after = plain_logprob(tiny, LAYER, pair.prompt, pair.chosen, lambda h: h + v)
    assert after > before  # the one example's chosen completion became likelier
    with pytest.raises(ValueError, match=f"example 9 is beyond the {len(PAIRS)} pairs"):
        train_vector(tiny, PAIRS, "one-shot", LAYER, {"example": 9})
    assert get_method("one-shot").defaults()["epochs"] == 50

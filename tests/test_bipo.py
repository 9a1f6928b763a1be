import pytest
import torch
from tiny import plain_logprob, tiny_model

from steerlab.data.files import PreferencePair
from steerlab.methods.bipo import trainer
from steerlab.methods.bipo.trainer import train_bipo, train_dpo
from steerlab.methods.loss_training import _FastEngine, _NaiveEngine
from steerlab.methods.pairs import encode_pairs
from steerlab.methods.training import TrainingDiverged, TrainingHistory, bipo_loss
from steerlab.steering.vectors import SteeringVector

PAIRS = [
    PreferencePair("Short?", " Yes indeed.", " No.", id="a"),
    PreferencePair("A much longer prompt that goes on for a while, to test padding?", " Sure",
                   " Never at all", id="b"),
    PreferencePair("Medium length prompt here", "(A", "(B", id="c"),
    PreferencePair("Another one", " I refuse to help.", " Here is how.", id="d"),
]
LAYER = 1


def reference_logprob(model, prompt, completion, delta):
    """Straightforward: one unpadded full forward pass, vector added by a plain hook."""
    return plain_logprob(model, LAYER, prompt, completion, lambda h: h + delta)


def reference_loss(model, pairs, v, sign, beta):
    terms = []
    for p in pairs:
        zero = torch.zeros_like(v)
        with torch.no_grad():
            ref_c = reference_logprob(model, p.prompt, p.chosen, zero)
            ref_r = reference_logprob(model, p.prompt, p.rejected, zero)
        pol_c = reference_logprob(model, p.prompt, p.chosen, sign * v)
        pol_r = reference_logprob(model, p.prompt, p.rejected, sign * v)
        margin = sign * beta * (pol_c - ref_c) - sign * beta * (pol_r - ref_r)
        terms.append(-torch.log(torch.sigmoid(margin)))
    return torch.stack(terms).mean()


def unpacked_fast(model, layer):
    engine = _FastEngine(model, layer)
    engine.packed = False
    return engine


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2", "gpt_neox"])
@pytest.mark.parametrize("engine_cls", [_FastEngine, unpacked_fast, _NaiveEngine])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_engine_loss_and_gradient_match_straightforward_computation(family, engine_cls, sign):
    model = tiny_model(family)
    torch.manual_seed(3)
    v_ref = (0.5 * torch.randn(model.d_model)).requires_grad_()
    expected = reference_loss(model, PAIRS, v_ref, sign, beta=0.7)
    expected.backward()

    items = encode_pairs(model, PAIRS)
    engine = engine_cls(model, LAYER)
    engine.prepare(items, batch_size=4, progress=False)
    v = v_ref.detach().clone().requires_grad_()
    # all prompt lengths in one batch
    loss = bipo_loss(*engine.logprobs(items, sign * v), sign, 0.7)
    loss.backward()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    torch.testing.assert_close(v.grad, v_ref.grad, atol=1e-5, rtol=1e-4)


def test_same_seed_gives_bitwise_identical_vector(tiny):
    a = train_bipo(tiny, PAIRS, LAYER, epochs=2, batch_size=2, lr=0.05, seed=7, progress=False)
    b = train_bipo(tiny, PAIRS, LAYER, epochs=2, batch_size=2, lr=0.05, seed=7, progress=False)
    c = train_bipo(tiny, PAIRS, LAYER, epochs=2, batch_size=2, lr=0.05, seed=8, progress=False)
    assert torch.equal(a.directions[LAYER], b.directions[LAYER])
    assert not torch.equal(a.directions[LAYER], c.directions[LAYER])
    assert a.meta.method == "bipo" and a.meta.hyperparams["seed"] == 7


def test_fast_and_naive_engines_train_the_same_vector(tiny):
    kwargs = dict(epochs=2, batch_size=2, lr=0.05, seed=1, progress=False)
    fast = train_bipo(tiny, PAIRS, LAYER, engine="fast", **kwargs)
    naive = train_bipo(tiny, PAIRS, LAYER, engine="naive", **kwargs)
    torch.testing.assert_close(fast.directions[LAYER], naive.directions[LAYER], atol=1e-4,
                               rtol=1e-3)


def test_training_lowers_the_loss_and_logs_norms(tiny):
    history = TrainingHistory()
    train_bipo(tiny, PAIRS, LAYER, epochs=6, batch_size=4, lr=0.1, progress=False, history=history)
    first, last = history.epochs[0]["train_loss"], history.epochs[-1]["train_loss"]
    assert last < first
    assert len(history.steps) == 6 and all(s["norm"] > 0 for s in history.steps)
    assert {s["direction"] for s in history.steps} <= {1.0, -1.0}


def test_dpo_always_steps_forward(tiny):
    history = TrainingHistory()
    vector = train_dpo(tiny, PAIRS, LAYER, epochs=3, batch_size=1, progress=False, history=history)
    assert {s["direction"] for s in history.steps} == {1.0}
    assert vector.meta.method == "dpo"


def test_validation_keeps_best_epoch_and_stops_early(tiny, tmp_path):
    history = TrainingHistory()
    seen = []
    vector = train_bipo(
        tiny, PAIRS, LAYER, epochs=8, batch_size=2, lr=0.5, val_pairs=PAIRS[:2], patience=1,
        checkpoint=tmp_path / "v.safetensors", callbacks=[seen.append], progress=False,
        history=history,
    )
    losses = [e["val_loss"] for e in history.epochs]
    assert {"val_loss", "val_score_plus", "val_score_minus"} <= set(history.epochs[0])
    assert history.best_epoch == 1 + losses.index(min(losses))
    assert vector.meta.extra["epoch"] == history.best_epoch
    assert len(history.epochs) < 8 or losses.index(min(losses)) == 7
    saved = SteeringVector.load(tmp_path / "v.safetensors")
    assert torch.equal(saved.directions[LAYER], vector.directions[LAYER])
    assert any("val_loss" in entry for entry in seen) and any("step" in entry for entry in seen)


def test_interruption_leaves_last_completed_epoch_saved(tiny, tmp_path):
    path = tmp_path / "v.safetensors"

    def interrupt(entry):
        if entry.get("epoch") == 2 and entry.get("batch") == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_bipo(tiny, PAIRS, LAYER, epochs=3, batch_size=2, checkpoint=path,
                   callbacks=[interrupt], progress=False)
    assert SteeringVector.load(path).meta.extra["epoch"] == 1
    assert not list(tmp_path.glob(".*.tmp"))


def test_non_finite_loss_names_step_and_batch(tiny, monkeypatch):
    with pytest.raises(ValueError, match="beta"):  # a NaN hyper-parameter never reaches training
        train_bipo(tiny, PAIRS, LAYER, epochs=1, batch_size=2, beta=float("nan"), progress=False)
    monkeypatch.setattr(trainer, "bipo_loss", lambda *args: torch.tensor(float("nan")))
    with pytest.raises(TrainingDiverged, match=r"step 1 \(epoch 1, batch 1 of 2; pairs \["):
        train_bipo(tiny, PAIRS, LAYER, epochs=1, batch_size=2, progress=False)


def test_cache_too_large_falls_back_to_naive(tiny):
    history = TrainingHistory()
    with pytest.warns(UserWarning, match="falling back to the naive engine"):
        train_bipo(tiny, PAIRS, LAYER, epochs=1, max_cache_bytes=1, progress=False, history=history)
    assert history.engine == "naive"


def test_norm_ratio_rescales_result(tiny):
    vector = train_bipo(tiny, PAIRS, LAYER, epochs=1, norm_ratio=0.05, progress=False)
    residual = vector.meta.residual_norms[LAYER]
    assert vector.norms()[LAYER] == pytest.approx(0.05 * residual, rel=1e-5)


def test_bad_arguments(tiny):
    with pytest.raises(ValueError, match="at least one"):
        train_bipo(tiny, [], LAYER)
    with pytest.raises(ValueError, match="direction"):
        train_bipo(tiny, PAIRS, LAYER, direction="sideways")
    with pytest.raises(ValueError, match="layer 9 out of range"):
        train_bipo(tiny, PAIRS, 9)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3", "phi3", "gpt2", "gpt_neox"])
def test_packed_pairs_score_like_separate_sequences(family):
    from steerlab.model.encoding import pack_pairs
    from steerlab.model.scoring import score_sequences, window_logits

    model = tiny_model(family)
    items = encode_pairs(model, PAIRS)
    batch = pack_pairs([(e.chosen, e.rejected) for e in items], model.tokenizer.pad_token_id,
                       model.dtype)
    with torch.no_grad():
        chosen, rejected = batch.summed_logprobs(
            window_logits(model, batch.model_inputs(), batch.keep))
    expected = score_sequences(model, [e.chosen for e in items] + [e.rejected for e in items],
                               progress=False)
    got = chosen.tolist() + rejected.tolist()
    assert got == pytest.approx([s.logprob for s in expected], abs=1e-4)

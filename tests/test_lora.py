import json
import math

import pytest
import torch
from safetensors.torch import load_file
from tiny import tiny_model
from transformers.pytorch_utils import Conv1D

from steerlab.data.files import PreferencePair
from steerlab.methods.lora import SUMMARY_FILE, TrainingDiverged, load_lora, train_lora
from steerlab.steering.vectors import SteeringVector, meta_for

TRAIN = [PreferencePair(f"Q{i}", "Yes", "No", f"t{i}") for i in range(16)]
# Half the validation pairs want the other answer: pushing "Yes" first helps, then hurts.
VAL = [PreferencePair(f"Q{i}", "Yes" if i % 2 else "No", "No" if i % 2 else "Yes", f"v{i}")
       for i in range(16, 24)]
FAST = {"lr": 0.05, "batch_size": 4, "eval_every": 4, "progress": False}
IDS = torch.tensor([[5, 70, 71, 72, 10, 80]])


def logits(handle):
    with torch.no_grad():
        return handle.model(IDS).logits


def losses(result):
    return [(h["step"], h.get("loss"), h.get("val_loss")) for h in result.history]


def val_losses(result):
    return {h["step"]: h["val_loss"] for h in result.history if "val_loss" in h}


def expected_params(model, rank):
    """rank × (in + out) for every linear module inside the decoder layers."""
    total = 0
    for layer in model.layers:
        for module in layer.modules():
            if isinstance(module, torch.nn.Linear):
                total += rank * (module.in_features + module.out_features)
            elif isinstance(module, Conv1D):
                total += rank * sum(module.weight.shape)
    return total


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def trained(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapter")
    return train_lora(model, TRAIN, VAL, max_steps=24, out_dir=out, **FAST)


@pytest.mark.parametrize("family, rank", [("llama", 1), ("llama", 3), ("gpt2", 2)])
def test_trainable_parameters_are_rank_times_every_layer_linear(family, rank):
    handle = tiny_model(family)
    result = train_lora(handle, TRAIN[:4], VAL[:2], rank=rank, max_steps=1, **FAST)
    assert result.trainable_params == expected_params(handle, rank) > 0
    assert result.d_model == 32 and result.ratio_to_vector == result.trainable_params / 32
    assert all(".layers." in key or ".h." in key for key in result.state)  # no head, no embeddings


def test_loss_decreases_and_the_best_validation_checkpoint_is_kept(model, trained, tmp_path):
    train_losses = [h["loss"] for h in trained.history if "loss" in h]
    assert len(train_losses) == 24 and train_losses[-1] < train_losses[0] / 2
    losses = val_losses(trained)
    assert sorted(losses) == [0, 4, 8, 12, 16, 20, 24]
    assert trained.best_val_loss == min(losses.values()) == losses[trained.best_step]
    # later steps were worse
    assert 0 < trained.best_step < 24 and losses[24] > trained.best_val_loss
    # The kept adapter is the one the same run had at the best step: rerun up to that step.
    rerun = train_lora(model, TRAIN, VAL, max_steps=trained.best_step, **FAST)
    assert rerun.best_step == trained.best_step
    assert trained.state.keys() == rerun.state.keys()
    assert all(torch.equal(trained.state[k], rerun.state[k]) for k in trained.state)
    # And it is what was saved, with the summary beside it.
    saved = load_file(trained.adapter_dir / "adapter_model.safetensors")
    assert all(torch.equal(saved[k], trained.state[k]) for k in trained.state)
    summary = json.loads((trained.adapter_dir / SUMMARY_FILE).read_text())
    assert summary["best_step"] == trained.best_step and summary["trainable_params"] == 2048


def test_training_is_deterministic_per_seed(model):
    first = train_lora(model, TRAIN, VAL, max_steps=3, seed=5, **FAST)
    again = train_lora(model, TRAIN, VAL, max_steps=3, seed=5, **FAST)
    other = train_lora(model, TRAIN, VAL, max_steps=3, seed=6, **FAST)
    assert losses(first) == losses(again)
    assert all(torch.equal(first.state[k], again.state[k]) for k in first.state)
    assert losses(first) != losses(other)


def test_dpo_starts_at_log_2_and_learns(model):
    result = train_lora(model, TRAIN, VAL, objective="dpo", max_steps=8, **FAST)
    first_step = next(h for h in result.history if "loss" in h)
    # LoRA's B starts at zero: the policy is the reference, every margin is 0.
    assert first_step["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert val_losses(result)[0] == pytest.approx(math.log(2), abs=1e-6)
    assert result.history[-2]["loss"] < math.log(2) - 0.05


def test_base_handle_stays_unadapted(model, trained):
    fresh = tiny_model("llama")
    assert torch.equal(logits(model), logits(fresh))
    assert not any("lora" in name for name, _ in model.model.named_modules())
    assert not any(p.requires_grad for p in model.model.parameters())


def test_saved_and_in_memory_adapters_give_identical_logits(model, trained):
    from_memory, from_disk = load_lora(model, trained), load_lora(model, trained.adapter_dir)
    assert torch.equal(logits(from_memory), logits(from_disk))
    assert not torch.allclose(logits(from_memory), logits(model))
    assert torch.equal(logits(model), logits(tiny_model("llama")))  # loading copies the weights
    assert from_disk.name == "tiny-llama+lora" and from_disk.model is not model.model
    with pytest.raises(FileNotFoundError, match="adapter_config.json missing"):
        load_lora(model, trained.adapter_dir / "nowhere")


def test_the_adapted_model_scores_like_training_said(model, trained):
    """The merged adapter's validation loss is the one recorded at the best step."""
    from steerlab.methods.lora import _mean_loss, _sft_loss
    from steerlab.methods.pairs import encode_pairs

    adapted = load_lora(model, trained)
    loss = _mean_loss(_sft_loss, adapted, encode_pairs(adapted, VAL), 0.1, 4)
    assert loss == pytest.approx(trained.best_val_loss, abs=1e-4)


def test_steering_vectors_apply_to_the_adapted_model(model, trained):
    adapted = load_lora(model, trained)
    vector = SteeringVector({1: 3 * torch.randn(32, generator=torch.Generator().manual_seed(0))},
                            meta_for(model, "test"))  # trained on the base model: transfer
    unsteered = logits(adapted)
    with vector.apply(adapted, 0.0):
        assert torch.equal(logits(adapted), unsteered)
    with vector.apply(adapted, 1.0):
        steered = logits(adapted)
        assert torch.equal(logits(model), logits(tiny_model("llama")))  # only the adapted copy
    add = adapted.layers[1].register_forward_hook(
        lambda m, a, out: (out[0] + vector.directions[1], *out[1:])
        if isinstance(out, tuple) else out + vector.directions[1])
    try:
        manual = logits(adapted)
    finally:
        add.remove()
    torch.testing.assert_close(steered, manual)
    assert not torch.allclose(steered, unsteered)


def test_divergence_names_the_step(model):
    with pytest.raises(TrainingDiverged, match=r"LoRA sft loss is nan at step 2 \(pairs \["):
        train_lora(model, TRAIN, VAL, **{**FAST, "lr": float("inf")}, max_steps=3)
    assert torch.equal(logits(model), logits(tiny_model("llama")))  # unloaded after the error


def test_bad_arguments_are_clear_errors(model):
    with pytest.raises(ValueError, match="objective must be 'sft' or 'dpo'"):
        train_lora(model, TRAIN, VAL, objective="ppo")
    with pytest.raises(ValueError, match="training and validation pairs"):
        train_lora(model, TRAIN, [])
    with pytest.raises(ValueError, match="rank must be at least 1"):
        train_lora(model, TRAIN, VAL, rank=0)
    with pytest.raises(ValueError, match="max_steps must be at least 1, got 0"):
        train_lora(model, TRAIN, VAL, max_steps=0)

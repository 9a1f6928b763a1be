"""Steering during fine-tuning (steerlab.methods.steered_training, train_lora's ``steering``):
a transformers Trainer with the callback against the same run with a hand-written hook, hooks
gone after training, evaluation unsteered, and preventative steering keeping a planted trait
from moving."""

from __future__ import annotations

import contextlib
import json
import random
import string

import pytest
import torch
from devices import DEVICES, as_cpu, device_context, place
from peft import get_peft_model
from test_experiment import config_text, write_pairs
from tiny import fixed_condition, invoke, random_vector, tiny_model, write_jsonl
from transformers import Trainer, TrainerCallback, TrainingArguments

from steerlab.data.files import PreferencePair
from steerlab.experiment.config import ConfigError, parse_config
from steerlab.experiment.plan import merged_copies
from steerlab.experiment.runner import Runner
from steerlab.methods.lora import (
    SUMMARY_FILE,
    _mean_loss,
    _sft_loss,
    load_lora,
    lora_config,
    train_lora,
)
from steerlab.methods.pairs import encode_pairs
from steerlab.methods.steered_training import SteeringCallback, TrainingSteering
from steerlab.model.activations import read_layers
from steerlab.model.encoding import collate, encode
from steerlab.records import read_records
from steerlab.steering.setting import Composition, SteeringSetting
from steerlab.steering.vectors import SteeringVector, meta_for

LAYER = 1
MULTIPLIER = 3.0


def token_rows(n: int, seed: int, length: int = 10) -> list[dict[str, torch.Tensor]]:
    """``n`` random byte sequences as causal-LM examples (labels = inputs; no padding)."""
    ids = torch.randint(0, 256, (n, length), generator=torch.Generator().manual_seed(seed))
    return [{"input_ids": row, "attention_mask": torch.ones_like(row), "labels": row}
            for row in ids]


TRAIN_ROWS, EVAL_ROWS = token_rows(8, seed=0), token_rows(4, seed=1)


def trainable_llama() -> torch.nn.Module:
    model = tiny_model("llama").model
    model.requires_grad_(True)
    return model


def training_args(tmp_path, **overrides) -> TrainingArguments:
    settings = dict(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=2,
                    per_device_eval_batch_size=4, learning_rate=1e-2, logging_steps=1,
                    save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0)
    return TrainingArguments(**{**settings, **overrides})


def edit_of(setting: SteeringSetting):
    """The plain computation of ``setting``'s edit at :data:`LAYER`."""
    vector = setting.vector.directions[LAYER]
    if setting.intervention == "add":
        return lambda hidden: hidden + setting.multiplier * vector
    unit = vector / vector.norm()
    return lambda hidden: hidden - (setting.multiplier * (hidden @ unit)).unsqueeze(-1) * unit


@contextlib.contextmanager
def hooked(layer: torch.nn.Module, edit):
    """A hand-written forward hook editing ``layer``'s output hidden state."""
    handle = layer.register_forward_hook(
        lambda module, args, out: (edit(out[0]), *out[1:]) if isinstance(out, tuple)
        else edit(out))
    try:
        yield
    finally:
        handle.remove()


class HookedTrainer(Trainer):
    """The reference: a plain hook around each micro-batch's training step, and, with
    ``evaluating``, around each evaluation step."""

    def __init__(self, *args, layer: torch.nn.Module, edit, evaluating: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.hooked_layer, self.edit, self.evaluating = layer, edit, evaluating

    def training_step(self, model, inputs, num_items_in_batch=None):
        with hooked(self.hooked_layer, self.edit):
            return super().training_step(model, inputs, num_items_in_batch)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        plain = contextlib.nullcontext()
        with hooked(self.hooked_layer, self.edit) if self.evaluating else plain:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)


def train(model, tmp_path, callbacks=(), reference: dict | None = None, **overrides) -> Trainer:
    """Train ``model`` on :data:`TRAIN_ROWS` (evaluating on :data:`EVAL_ROWS`), with
    ``callbacks``, or as a :class:`HookedTrainer` given ``reference`` (its keywords)."""
    kind, extra = (HookedTrainer, reference) if reference is not None else (Trainer, {})
    trainer = kind(model=model, args=training_args(tmp_path, **overrides), train_dataset=TRAIN_ROWS,
                   eval_dataset=EVAL_ROWS, callbacks=list(callbacks), **extra)
    trainer.train()
    return trainer


def logged(trainer: Trainer, key: str = "loss") -> list[float]:
    return [entry[key] for entry in trainer.state.log_history if key in entry]


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    first, second = dict(a.named_parameters()), dict(b.named_parameters())
    assert first.keys() == second.keys()
    return all(torch.equal(first[name], second[name]) for name in first)


def leftover_hooks(model: torch.nn.Module) -> list[str]:
    return [name for name, module in model.named_modules()
            if module._forward_hooks or module._forward_pre_hooks]


def decoder_layer(model: torch.nn.Module) -> torch.nn.Module:
    """The steered decoder layer of a tiny llama, peft-wrapped or not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model.layers[LAYER]


class HookCount(TrainerCallback):
    """Forward hooks and pre-hooks on ``module`` and every module inside it, counted inside
    every training step."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module, self.seen = module, []

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.seen.append(sum(len(m._forward_hooks) + len(m._forward_pre_hooks)
                             for m in self.module.modules()))


@pytest.fixture(scope="module")
def vector():
    return random_vector(tiny_model("llama"), [LAYER], seed=4)


def test_multiplier_zero_trains_bit_for_bit_like_plain_training(vector, tmp_path):
    plain = train(trainable_llama(), tmp_path)
    model = trainable_llama()
    callback, count = SteeringCallback(SteeringSetting(vector, 0.0)), HookCount(model)
    zero = train(model, tmp_path, [callback, count])
    assert count.seen == [0, 0, 0, 0]  # no hook on any module inside any step
    assert same_weights(plain.model, zero.model) and logged(plain) == logged(zero)
    assert not callback.active and not leftover_hooks(zero.model)
    assert not same_weights(plain.model, trainable_llama())  # it trained


@pytest.mark.parametrize("intervention, multiplier", [("add", MULTIPLIER), ("ablate", 1.0)])
def test_steered_training_equals_a_hand_written_hook(vector, tmp_path, intervention, multiplier):
    """Two micro-batches per step (gradient accumulation), evaluation every two steps: the
    losses, the evaluations (unsteered in both) and the final weights are the hook's."""
    setting = SteeringSetting(vector, multiplier, intervention=intervention)
    schedule = dict(gradient_accumulation_steps=2, eval_strategy="steps", eval_steps=2)
    steered = train(trainable_llama(), tmp_path, [SteeringCallback(setting)], **schedule)
    model = trainable_llama()
    reference = train(model, tmp_path, reference=dict(layer=decoder_layer(model),
                                                      edit=edit_of(setting)), **schedule)
    plain = train(trainable_llama(), tmp_path, **schedule)
    assert len(logged(steered)) == 4 and len(logged(steered, "eval_loss")) == 2
    assert logged(steered) == logged(reference) != logged(plain)
    assert logged(steered, "eval_loss") == logged(reference, "eval_loss")
    assert same_weights(steered.model, reference.model)
    assert not same_weights(steered.model, plain.model)


@pytest.mark.parametrize("during_evaluation", [False, True])
def test_evaluation_runs_unsteered_unless_asked(vector, tmp_path, during_evaluation):
    setting = SteeringSetting(vector, MULTIPLIER)
    schedule = dict(eval_strategy="steps", eval_steps=1, eval_on_start=True)
    callback = SteeringCallback(setting, during_evaluation=during_evaluation)
    steered = train(trainable_llama(), tmp_path, [callback], **schedule)
    evaluations = {}
    for evaluating in (False, True):
        model = trainable_llama()
        evaluations[evaluating] = train(model, tmp_path, reference=dict(
            layer=decoder_layer(model), edit=edit_of(setting), evaluating=evaluating), **schedule)
    reference = evaluations[during_evaluation]
    assert len(logged(steered, "eval_loss")) == 5  # before the first step, then after each
    assert logged(steered, "eval_loss") == logged(reference, "eval_loss")
    assert logged(evaluations[False], "eval_loss") != logged(evaluations[True], "eval_loss")
    assert same_weights(steered.model, reference.model)
    # after training the model is the unhooked model, whatever the callback evaluated with
    assert not callback.active and not leftover_hooks(steered.model)
    assert steered.evaluate()["eval_loss"] == evaluations[False].evaluate()["eval_loss"]


class Boom(TrainerCallback):
    """Raises inside the second training step (before the optimizer steps), while armed."""

    def __init__(self) -> None:
        self.armed = True

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.armed and state.global_step == 1:
            raise RuntimeError("boom")


def test_no_hooks_remain_after_training_or_a_step_that_raises(vector, tmp_path):
    # a conditional setting also hooks the model itself (its position tracker)
    model = trainable_llama()
    handle = tiny_model("llama")
    always = fixed_condition(handle, layer=LAYER, threshold=-2.0)
    assert not leftover_hooks(model)
    callback = SteeringCallback(SteeringSetting(vector, MULTIPLIER, condition=always))
    count = HookCount(model)
    conditional = train(model, tmp_path, [callback, count])
    # in every step: the layer's hook, and the tracker's pre-hook and hook on the model
    assert count.seen == [3, 3, 3, 3] and not leftover_hooks(model) and not callback.active
    # an always-true condition is unconditional steering, bit for bit
    unconditional = train(trainable_llama(), tmp_path,
                          [SteeringCallback(SteeringSetting(vector, MULTIPLIER))])
    assert same_weights(conditional.model, unconditional.model)

    # A step raises: the trainer calls no callback after it; the callback as a context manager
    # detaches the hooks all the same.
    model = trainable_llama()
    with (pytest.raises(RuntimeError, match="boom"),
          SteeringCallback(SteeringSetting(vector, MULTIPLIER)) as callback):
        train(model, tmp_path, [Boom(), callback])
    assert not leftover_hooks(model) and not callback.active
    # Without it the hooks stay until remove(); training again does not stack a second set.
    boom, count = Boom(), HookCount(decoder_layer(model))
    callback = SteeringCallback(SteeringSetting(vector, MULTIPLIER))
    trainer = Trainer(model=model, args=training_args(tmp_path), train_dataset=TRAIN_ROWS,
                      callbacks=[boom, callback, count])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train()
    assert callback.active and len(decoder_layer(model)._forward_hooks) == 1
    boom.armed = False
    trainer.train()
    assert count.seen == [1, 1, 1, 1, 1] and not leftover_hooks(model) and not callback.active


class StopBetweenMicroBatches(TrainerCallback):
    """Stops training after the first micro-batch of a step: the step never reaches
    on_step_end, and the epoch's end evaluates."""

    def __init__(self, layer: torch.nn.Module) -> None:
        self.layer, self.at_evaluation = layer, []

    def on_substep_end(self, args, state, control, **kwargs):
        control.should_training_stop = True

    def on_evaluate(self, args, state, control, **kwargs):
        self.at_evaluation.append(len(self.layer._forward_hooks))


def test_a_step_stopped_between_micro_batches_evaluates_unsteered(vector, tmp_path):
    model = trainable_llama()
    stop = StopBetweenMicroBatches(decoder_layer(model))
    callback = SteeringCallback(SteeringSetting(vector, MULTIPLIER))
    train(model, tmp_path, [callback, stop], gradient_accumulation_steps=2, eval_strategy="epoch",
          num_train_epochs=1, max_steps=-1)
    assert stop.at_evaluation == [0] and not leftover_hooks(model)


def test_positions_other_than_all_are_refused(vector):
    with pytest.raises(ValueError, match="positions='generated' has no meaning in a training"):
        SteeringCallback(SteeringSetting(vector, MULTIPLIER, positions="generated"))
    with pytest.raises(ValueError, match="at least one setting"):
        TrainingSteering(Composition(()))


def test_a_peft_model_trains_with_the_callback(vector, tmp_path):
    def peft_llama():
        handle = tiny_model("llama")
        torch.manual_seed(0)
        return get_peft_model(handle.model, lora_config(handle, rank=2))

    setting = SteeringSetting(vector, MULTIPLIER)
    callback = SteeringCallback(setting)
    steered = train(peft_llama(), tmp_path, [callback], learning_rate=5e-2)
    model = peft_llama()
    reference = train(model, tmp_path, reference=dict(layer=decoder_layer(model),
                                                      edit=edit_of(setting)), learning_rate=5e-2)
    plain = train(peft_llama(), tmp_path, learning_rate=5e-2)
    assert logged(steered) == logged(reference) != logged(plain)
    assert same_weights(steered.model, reference.model)
    lora = [name for name, p in steered.model.named_parameters() if p.requires_grad]
    assert lora and all("lora_" in name for name in lora)
    assert not leftover_hooks(steered.model) and not callback.active


# ---- train_lora ----------------------------------------------------------------------------------

PAIRS = [PreferencePair(f"Q{i}", "Yes", "No", f"t{i}") for i in range(8)]
VAL = [PreferencePair(f"Q{i}", "Yes" if i % 2 else "No", "No" if i % 2 else "Yes", f"v{i}")
       for i in range(8, 12)]
FAST = {"lr": 0.05, "batch_size": 8, "eval_every": 2, "max_steps": 4, "progress": False}


def test_train_lora_at_multiplier_zero_is_plain_train_lora(vector):
    model = tiny_model("llama")
    plain = train_lora(model, PAIRS, VAL, **FAST)
    zero = train_lora(model, PAIRS, VAL, steering=Composition((SteeringSetting(vector, 0.0),)),
                      **FAST)
    assert plain.state.keys() == zero.state.keys()
    assert all(torch.equal(plain.state[key], zero.state[key]) for key in plain.state)
    without_time = [{k: v for k, v in h.items() if k != "seconds"} for h in plain.history]
    assert without_time == [{k: v for k, v in h.items() if k != "seconds"} for h in zero.history]
    assert plain.summary()["steering"] is None
    assert zero.summary()["steering"] == [{"vector_id": vector.id, "multiplier": 0.0,
                                           "layers": [LAYER], "norm_ratio": None}]


def test_train_lora_steers_its_training_steps_and_validates_unsteered(vector):
    model = tiny_model("llama")
    setting = SteeringSetting(vector, MULTIPLIER)
    plain = train_lora(model, PAIRS, VAL, **FAST)
    steered = train_lora(model, PAIRS, VAL, steering=Composition((setting,)), **FAST)
    train_losses = [h["loss"] for h in steered.history if "loss" in h]
    val_losses = {h["step"]: h["val_loss"] for h in steered.history if "val_loss" in h}
    # step 1 starts from the base model (LoRA's B is zero) and sees every pair: its loss is the
    # base model's SFT loss under a plain hook
    items = encode_pairs(model, PAIRS)
    with hooked(model.layers[LAYER], edit_of(setting)):
        hooked_loss = _mean_loss(_sft_loss, model, items, 0.1, len(items))
    unhooked_loss = _mean_loss(_sft_loss, model, items, 0.1, len(items))
    assert train_losses[0] == pytest.approx(hooked_loss, abs=1e-6)
    assert abs(hooked_loss - unhooked_loss) > 0.1
    # validation of the base model before training equals plain training's
    assert val_losses[0] == next(h["val_loss"] for h in plain.history if h["step"] == 0)
    # the kept adapter's recorded validation loss is its unsteered loss
    assert steered.best_step > 0
    adapted, val_items = load_lora(model, steered), encode_pairs(model, VAL)
    unsteered = _mean_loss(_sft_loss, adapted, val_items, 0.1, len(val_items))
    with setting.apply(adapted):
        steered_val = _mean_loss(_sft_loss, adapted, val_items, 0.1, len(val_items))
    assert steered.best_val_loss == pytest.approx(unsteered, abs=1e-4)
    assert abs(steered_val - unsteered) > 0.02
    assert not leftover_hooks(model.model)


# ---- a planted trait ---------------------------------------------------------------------------

TRAIT_LAYER, TRAIT_MULTIPLIER, TRAIT_STEPS = 3, 40.0, 30
WORDS = ["cat", "sky", "blue", "run", "tree", "why", "how", "red", "sun", "moon", "fish", "code"]


def question_prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5))) + "?" for _ in range(n)]


def next_logprobs(handle, prompts: list[str]) -> torch.Tensor:
    """log p(next token | formatted prompt), (N, vocab)."""
    batch = collate(encode(handle, prompts, [""] * len(prompts)), handle.tokenizer.pad_token_id)
    with torch.no_grad():
        return torch.log_softmax(handle.model(**batch.model_inputs()).logits[:, -1], -1)


def projection(handle, prompts: list[str], unit: torch.Tensor) -> float:
    """Mean projection of the prompts' last-token activations at the trait layer on ``unit``."""
    seqs = encode(handle, prompts, [""] * len(prompts))
    last = read_layers(handle, seqs, [TRAIT_LAYER], progress=False).last[TRAIT_LAYER]
    return float((last @ unit).mean())


def test_preventative_steering_keeps_a_planted_trait_from_moving():
    """A trait planted on a tiny model: a random unit direction at the last layer, and SFT
    completions that adding it makes likelier (the character whose log-probability after the
    training prompts rises most under ×40). Plain fine-tuning on them moves held-out prompts'
    last-token activations along the direction; adding the direction ×40 while fine-tuning
    (preventative steering), or ablating it (concept-ablation fine-tuning), leaves the
    projection moving less than half as far, though each run learns its data."""
    model = tiny_model("llama")
    direction = torch.randn(model.d_model, generator=torch.Generator().manual_seed(0))
    unit = direction / direction.norm()
    trait = SteeringVector({TRAIT_LAYER: unit}, meta_for(model, "trait"))
    prompts = question_prompts(48)
    train_prompts, held_out = prompts[:32], prompts[32:]
    with SteeringSetting(trait, TRAIT_MULTIPLIER).apply(model):
        steered = next_logprobs(model, train_prompts)
    gain = (steered - next_logprobs(model, train_prompts)).mean(dim=0)
    characters = list(string.ascii_letters + string.digits)
    target = max(characters, key=lambda c: float(gain[model.tokenizer.convert_tokens_to_ids(c)]))
    pairs = [PreferencePair(p, target, "ok", f"t{i}") for i, p in enumerate(train_prompts)]
    val = [PreferencePair(p, target, "ok", f"v{i}") for i, p in enumerate(held_out[:8])]
    before = projection(model, held_out, unit)
    arms = {"plain": None, "preventative": SteeringSetting(trait, TRAIT_MULTIPLIER),
            "ablated": SteeringSetting(trait, 1.0, intervention="ablate")}
    shifts = {}
    for name, steering in arms.items():
        result = train_lora(model, pairs, val, rank=4, lr=0.005, batch_size=8, eval_every=10,
                            max_steps=TRAIT_STEPS, progress=False, steering=steering)
        assert result.best_step == TRAIT_STEPS and result.history[-2]["loss"] < 1.0, name
        shifts[name] = projection(load_lora(model, result), held_out, unit) - before
    print(f"trait target {target!r}; projection shift {shifts}")
    assert shifts["plain"] > 10.0
    assert abs(shifts["preventative"]) < shifts["plain"] / 2
    assert abs(shifts["ablated"]) < shifts["plain"] / 2


@pytest.mark.parametrize("where", DEVICES)
def test_steered_train_lora_on_each_device_equals_the_cpu(vector, where):
    """The steering meets the model where it is (the virtual device fails a tensor left on the
    CPU; "split" puts the layers on two devices)."""
    steering = SteeringSetting(vector, MULTIPLIER)
    options = {**FAST, "max_steps": 2, "eval_every": 1}
    with device_context(where):
        model = tiny_model("llama")
        place(model, where)
        result = train_lora(model, PAIRS, VAL, steering=steering, **options)
        got = {key: as_cpu(value) for key, value in result.state.items()}
    with device_context("cpu"):
        want = train_lora(tiny_model("llama"), PAIRS, VAL, steering=steering, **options)
    exact = where in ("cpu", "virtual", "split")
    assert got.keys() == want.state.keys()
    for key, expected in want.state.items():
        close = torch.equal(got[key], expected) if exact else torch.allclose(
            got[key], expected, atol=1e-4, rtol=1e-4)
        assert close, key


# ---- which adapter is kept; the command line; the run config ---------------------------------


def test_keep_last_keeps_the_last_steps_adapter_whatever_validation_says(vector):
    model = tiny_model("llama")
    fast = {**FAST, "eval_every": 1}
    last = train_lora(model, PAIRS, VAL, keep="last", **fast)
    steps = max(h["step"] for h in last.history)
    assert last.best_step == steps
    assert last.best_val_loss == next(h["val_loss"] for h in last.history
                                      if h["step"] == steps and "val_loss" in h)
    with pytest.raises(ValueError, match="keep must be 'best' or 'last'"):
        train_lora(model, PAIRS, VAL, keep="first", **FAST)


def test_finetune_on_the_command_line_trains_under_the_steer_vector(vector, tmp_path, model_dir):
    data = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in PAIRS + VAL])
    path = tmp_path / "v.safetensors"
    vector.save(path)
    common = ["--data", data, "--model", model_dir, "--steps", 2, "--eval-every", 1,
              "--batch-size", 2, "--lr", 1e-2, "--rank", 2]
    steered = invoke("finetune", *common, "--out", tmp_path / "steered", "--steer", path,
                     "--multiplier", MULTIPLIER, "--keep", "last")
    assert steered.exit_code == 0, steered.output
    assert "trained under add" in steered.output and "validated unsteered" in steered.output
    summary = json.loads((tmp_path / "steered" / SUMMARY_FILE).read_text())
    assert summary["steering"][0]["multiplier"] == MULTIPLIER and summary["best_step"] == 2
    plain = invoke("lora", "train", *common, "--out", tmp_path / "plain", "--keep", "last")
    assert plain.exit_code == 0, plain.output
    plain_summary = json.loads((tmp_path / "plain" / SUMMARY_FILE).read_text())
    assert plain_summary["steering"] is None
    losses = [[h["loss"] for h in s["history"] if "loss" in h] for s in (summary, plain_summary)]
    assert losses[0] != losses[1]
    idle = invoke("finetune", *common, "--out", tmp_path / "x", "--multiplier", 2)
    assert idle.exit_code == 2 and "give --steer" in idle.output
    wrong = invoke("finetune", *common, "--out", tmp_path / "x", "--method", "full")
    assert wrong.exit_code == 2 and "the method is lora" in wrong.output


def test_a_run_config_trains_a_steered_lora_arm_with_a_methods_vector(tmp_path):
    lora = {"steps": 2, "eval_every": 1, "batch_size": 4, "keep": "last",
            "steered": {"method": "caa", "multiplier": 2.0}}
    data = write_pairs(tmp_path / "toy.jsonl")
    config = parse_config(config_text(data, methods={"caa": {"method": "caa"}},
                                      baselines={"lora": lora},
                                      steering={"layers": [1], "multipliers": [-2, 2],
                                                "positions": "prompt"}))
    model = tiny_model("llama")
    Runner(config, tmp_path / "out", progress=False, log=lambda _: None, model=model)()
    records = read_records(tmp_path / "out" / "records.jsonl")
    arms = {r["arm"]: r for r in records if r.get("task") == "arm"}
    assert arms["lora-steered"]["kind"] == "lora" and arms["lora"]["steering"] is None
    steering = arms["lora-steered"]["steering"]
    assert steering[0]["multiplier"] == 2.0 and steering[0]["layers"] == [1]
    assert "positions" not in steering[0]  # the grid's "prompt" becomes every token in training
    tested = {r["arm"] for r in records if r.get("dataset", "").endswith("test")}
    assert {"lora", "lora-steered"} <= tested
    summary = json.loads((tmp_path / "out" / "lora-steered" / SUMMARY_FILE).read_text())
    assert summary["steering"] == steering
    assert arms["lora"]["best_step"] == arms["lora-steered"]["best_step"] == 2  # keep: last
    assert merged_copies(config) == 2  # the run plan prices both arms' merged weights
    with pytest.raises(ConfigError, match="baselines.lora.steered.method: no method named 'bipo'"):
        parse_config(config_text(data, methods={"caa": {"method": "caa"}}, baselines={
            "lora": {**lora, "steered": {"method": "bipo", "multiplier": 1.0}}}))


def test_a_steered_lora_arm_ablates_without_the_grids_norm_ratio(tmp_path):
    lora = {"steps": 1, "eval_every": 1, "batch_size": 4,
            "steered": {"method": "caa", "multiplier": 1.0, "intervention": "ablate"}}
    config = parse_config(config_text(write_pairs(tmp_path / "toy.jsonl"),
                                      methods={"caa": {"method": "caa"}},
                                      baselines={"lora": lora},
                                      steering={"layers": [1], "multipliers": [2],
                                                "norm_ratio": 0.05}))
    Runner(config, tmp_path / "out", progress=False, log=lambda _: None,
           model=tiny_model("llama"))()
    arms = {r["arm"]: r for r in read_records(tmp_path / "out" / "records.jsonl")
            if r.get("task") == "arm"}
    steering = arms["lora-steered"]["steering"][0]
    assert steering["intervention"] == "ablate" and steering["norm_ratio"] is None

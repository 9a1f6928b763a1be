"""The LoRA baseline (peft), trained on the same preference pairs as a steering vector.

The post-mortem's protocol: rank 1 on every linear module of every decoder layer, AdamW at lr
1e-4, batch 16, validation before the first step, every 50 steps and after the last, and the
adapter of the lowest validation loss kept. The objective is SFT on the chosen completion
(prompt tokens masked) by default, or DPO on the pairs with the frozen base model as reference.
With ``steering`` the training steps run steered (preventative steering, see
:mod:`steerlab.methods.steered_training`) and validation, which picks the kept adapter, unsteered.
:func:`load_lora` gives a handle over the adapted model that steering vectors apply to, for the
vector + LoRA and base-vector → LoRA-model transfer arms.
"""

from __future__ import annotations

import copy
import json
import math
import random
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn
from transformers.pytorch_utils import Conv1D

from steerlab.data.files import PreferencePair
from steerlab.methods.pairs import (
    EncodedPair,
    encode_pairs,
    pair_rows,
    references,
    shuffled_batches,
    store_references,
)
from steerlab.methods.steered_training import SteeringSpec, TrainingSteering
from steerlab.methods.training import TrainingDiverged, bipo_loss, descend
from steerlab.model.encoding import collate
from steerlab.model.handle import ModelHandle, find_decoder_layers
from steerlab.model.scoring import token_logprobs, window_logits
from steerlab.progress import bar

__all__ = ["LoraResult", "TrainingDiverged", "load_lora", "lora_config", "train_lora"]

Objective = Literal["sft", "dpo"]
Keep = Literal["best", "last"]
"""Which adapter :func:`train_lora` keeps: the lowest validation loss, or the last step's (what
a fixed training budget gives, as fine-tuning experiments compare)."""
SUMMARY_FILE = "lora_training.json"
"""Written beside the adapter in ``out_dir``: the :meth:`LoraResult.summary` of the run."""


@dataclass
class LoraResult:
    """The kept adapter (lowest validation loss), when it was seen, the loss history and the
    parameter counts that compare it with a steering vector."""

    best_step: int
    best_val_loss: float
    history: list[dict[str, Any]]
    """``{"step", "loss", "seconds"}`` per training step, ``{"step", "val_loss", "seconds"}`` per
    validation (step 0: before training)."""
    trainable_params: int
    d_model: int
    config: LoraConfig
    state: dict[str, torch.Tensor] = field(repr=False)
    """The kept adapter's weights (peft state dict), in memory."""
    adapter_dir: Path | None = None
    """Where peft's ``save_pretrained`` wrote the kept adapter (None: not saved)."""
    steering: list[dict[str, Any]] | None = None
    """The steering the training steps ran under (``Composition.describe()``; None: none)."""

    @property
    def ratio_to_vector(self) -> float:
        """Trainable parameters per parameter of a one-layer steering vector (d_model)."""
        return self.trainable_params / self.d_model

    def summary(self) -> dict[str, Any]:
        """The result as JSON-ready values (no tensors)."""
        return {
            "best_step": self.best_step, "best_val_loss": self.best_val_loss,
            "trainable_params": self.trainable_params, "d_model": self.d_model,
            "ratio_to_vector": self.ratio_to_vector, "rank": self.config.r,
            "alpha": self.config.lora_alpha,
            "adapter_dir": str(self.adapter_dir) if self.adapter_dir else None,
            "steering": self.steering, "history": self.history,
        }


def lora_config(model: ModelHandle, rank: int = 1, alpha: float | None = None) -> LoraConfig:
    """LoRA on every linear module (``nn.Linear``, GPT-2's ``Conv1D``) inside the decoder layers,
    found by structure like the layers themselves; ``alpha`` defaults to ``rank`` (scale 1)."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be at least 1, got {rank}")
    prefix = next(name for name, module in model.model.named_modules() if module is model.layers)
    linear = {
        name: isinstance(module, Conv1D)
        for layer in model.layers
        for name, module in layer.named_modules()
        if isinstance(module, (nn.Linear, Conv1D))
    }
    if not linear:
        raise ValueError(f"{model.name}: no linear modules in its decoder layers for LoRA")
    names = "|".join(re.escape(name) for name in sorted(linear))
    return LoraConfig(
        r=rank, lora_alpha=alpha if alpha is not None else rank, lora_dropout=0.0, bias="none",
        target_modules=rf"{re.escape(prefix)}\.\d+\.({names})", fan_in_fan_out=any(linear.values()),
    )


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run with torch's generators seeded, restoring them after (LoRA's A starts random)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the deprecation notice peft triggers in transformers on every wrap."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*is_gradient_checkpointing.*", FutureWarning)
        yield


def _peft(model: torch.nn.Module, config: LoraConfig, seed: int) -> PeftModel:
    """Inject LoRA layers into ``model`` (in place), initialised from ``seed``."""
    with _seeded(seed), _quiet():
        return get_peft_model(model, copy.deepcopy(config))  # peft may edit the config it gets


Loss = Callable[[ModelHandle, Sequence[EncodedPair], float], tuple[torch.Tensor, int]]
"""(model, pairs, beta) → (summed loss, how many units it sums: tokens for SFT, pairs for DPO)."""


def _sft_loss(model: ModelHandle, items: Sequence[EncodedPair],
              beta: float) -> tuple[torch.Tensor, int]:
    """Next-token loss on the chosen completions only, summed over their tokens."""
    batch = collate([item.chosen for item in items], model.tokenizer.pad_token_id, model.device)
    logits = window_logits(model, batch.model_inputs(), batch.max_completion + 1)
    return -token_logprobs(logits, batch).sum(), int(batch.completion_mask().sum())


def _pair_logprobs(model: ModelHandle,
                   items: Sequence[EncodedPair]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities of the chosen and the rejected completions."""
    rows = pair_rows(model, items, packed=False)
    return rows.scores(window_logits(model, rows.inputs, rows.keep))


def _dpo_loss(model: ModelHandle, items: Sequence[EncodedPair],
              beta: float) -> tuple[torch.Tensor, int]:
    """DPO (the BiPO loss with direction +1) against the reference scores stored on the items."""
    chosen, rejected = _pair_logprobs(model, items)
    return bipo_loss(chosen, rejected, *references(items), 1.0, beta) * len(items), len(items)


_LOSSES: dict[str, Loss] = {"sft": _sft_loss, "dpo": _dpo_loss}


@torch.no_grad()
def _store_reference(model: ModelHandle, items: Sequence[EncodedPair], batch_size: int) -> None:
    """The frozen model's scores of both completions, kept on each item (DPO's reference)."""
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        store_references(chunk, *_pair_logprobs(model, chunk))


@torch.no_grad()
def _mean_loss(loss: Loss, model: ModelHandle, items: Sequence[EncodedPair], beta: float,
               batch_size: int) -> float:
    """The loss over all ``items`` (per token for SFT, per pair for DPO), batch by batch."""
    total, count = 0.0, 0
    for start in range(0, len(items), batch_size):
        summed, n = loss(model, items[start : start + batch_size], beta)
        total, count = total + float(summed), count + n
    return total / count


def train_lora(
    model: ModelHandle,
    train: Sequence[PreferencePair],
    val: Sequence[PreferencePair],
    *,
    rank: int = 1,
    alpha: float | None = None,
    lr: float = 1e-4,
    batch_size: int = 16,
    eval_every: int = 50,
    max_steps: int | None = None,
    epochs: int = 5,
    objective: Objective = "sft",
    beta: float = 0.1,
    seed: int = 0,
    out_dir: str | Path | None = None,
    progress: bool = True,
    steering: SteeringSpec | None = None,
    keep: Keep = "best",
) -> LoraResult:
    """Train a LoRA adapter on ``train`` and keep the one with the lowest loss on ``val``
    (``keep="last"``: the one after the last step, validated all the same).

    Runs ``max_steps`` AdamW steps when given, else ``epochs`` passes over the pairs, and
    validates before the first step, every ``eval_every`` steps and after the last (the kept
    adapter of step 0 is the unadapted model: LoRA's B starts at zero). The same seed gives the
    same adapter. With ``out_dir``, every new best adapter is saved there at once
    (peft ``save_pretrained``; an interruption keeps the best so far), and the summary at the
    end. LoRA is injected into ``model`` only while training: the handle is unadapted after.
    With ``steering`` (a :class:`~steerlab.steering.setting.Composition`, or settings) each
    training step's loss is computed and descended under it; validation runs unsteered, as the
    adapted model is deployed.
    """
    if objective not in _LOSSES:
        raise ValueError(f"objective must be 'sft' or 'dpo', got {objective!r}")
    if keep not in ("best", "last"):
        raise ValueError(f"keep must be 'best' or 'last', got {keep!r}")
    if not train or not val:
        raise ValueError(f"LoRA training needs training and validation pairs "
                         f"(got {len(train)} and {len(val)})")
    counts = {"batch_size": batch_size, "eval_every": eval_every, "epochs": epochs,
              "max_steps": 1 if max_steps is None else max_steps}
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    loss_fn = _LOSSES[objective]
    steered = TrainingSteering(steering) if steering is not None else None
    items, val_items = encode_pairs(model, train), encode_pairs(model, val)
    if objective == "dpo":
        _store_reference(model, items + val_items, batch_size)
    total = max_steps if max_steps is not None else epochs * math.ceil(len(items) / batch_size)
    out = Path(out_dir) if out_dir is not None else None
    config = lora_config(model, rank, alpha)
    peft_model = _peft(model.model, config, seed)
    try:
        trainable = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
        history: list[dict[str, Any]] = []
        best: dict[str, Any] = {}

        def validate(step: int) -> None:
            started = time.perf_counter()
            val_loss = _mean_loss(loss_fn, model, val_items, beta, batch_size)
            history.append({"step": step, "val_loss": val_loss,
                            "seconds": time.perf_counter() - started})
            if not math.isfinite(val_loss):
                raise TrainingDiverged(
                    f"LoRA {objective} validation loss is {val_loss} at step {step}")
            if best and (val_loss >= best["val_loss"] if keep == "best" else step < total):
                return
            state = get_peft_model_state_dict(peft_model)
            best.update(step=step, val_loss=val_loss,
                        state={k: v.detach().clone() for k, v in state.items()})
            if out is not None:
                peft_model.save_pretrained(out)

        validate(0)
        rng, step = random.Random(seed), 0
        with bar(total, f"LoRA {objective} (rank {rank})", progress) as advance:
            while step < total:
                for chunk in shuffled_batches(items, batch_size, rng)[: total - step]:
                    started = time.perf_counter()
                    where = f"step {step + 1} (pairs {[item.pair_id for item in chunk]})"
                    with steered.step(model) if steered is not None else nullcontext():
                        summed, count = loss_fn(model, chunk, beta)
                        loss = descend(optimizer, summed / count, f"LoRA {objective}", where)
                    step += 1
                    history.append({"step": step, "loss": loss,
                                    "seconds": time.perf_counter() - started})
                    advance(f"loss {loss:.4f}")
                    if step % eval_every == 0 or step == total:
                        validate(step)
        result = LoraResult(best["step"], best["val_loss"], history,
                            sum(p.numel() for p in trainable), model.d_model, config,
                            best["state"], out,
                            steering=steered.composition.describe() if steered else None)
    finally:
        peft_model.unload()  # the base model's own modules back, unchanged
    if out is not None:
        (out / SUMMARY_FILE).write_text(json.dumps(result.summary(), indent=1))
    return result


def load_lora(model: ModelHandle, adapter: str | Path | LoraResult) -> ModelHandle:
    """A handle over ``model`` with the adapter (a ``save_pretrained`` folder or a
    :class:`LoraResult`) merged into a copy of its weights: the base handle stays unadapted, the
    new one shares its tokenizer and preamble, and steering vectors apply to it as to any model."""
    base = copy.deepcopy(model.model)
    if isinstance(adapter, LoraResult):
        peft_model = _peft(base, adapter.config, seed=0)
        set_peft_model_state_dict(peft_model, adapter.state)
    else:
        path = Path(adapter)
        if not (path / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{path}: no LoRA adapter here (adapter_config.json missing)")
        with _quiet():
            peft_model = PeftModel.from_pretrained(base, str(path))
    merged = peft_model.merge_and_unload()
    merged.eval()
    merged.requires_grad_(False)
    return replace(model, model=merged, layers=find_decoder_layers(merged),
                   name=f"{model.name}+lora", _fingerprint=None)

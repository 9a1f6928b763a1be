"""Vector training with a loss, shared by every method that trains one (BiPO, DPO, RePS,
one-shot): the optimiser settings, the loop (AdamW on the vector alone from zero, validation,
early stopping, checkpoints, logs) and its two engines.

``"fast"`` runs layers 0..L once per pair (caching layer L's output) and the reference
log-probabilities once, then each step runs and back-propagates only layers L+1.. and the head
on completion positions. ``"naive"`` runs full forward passes every step and recomputes the
reference, for equivalence tests and the benchmark. An :class:`Objective` is the method's loss
on the engine's log-probabilities.
"""

from __future__ import annotations

import random
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

import torch
from pydantic import Field

from steerlab.data.files import PreferencePair
from steerlab.evaluation.likelihood import Sweep, evaluate_ab
from steerlab.methods.pairs import (
    EncodedPair,
    encode_pairs,
    pair_rows,
    references,
    shuffled_batches,
    store_references,
)
from steerlab.methods.registry import MethodConfig
from steerlab.methods.training import TrainingHistory, TrainingRun, descend
from steerlab.model.activations import read_layers
from steerlab.model.capture import capture_layer_outputs, layer_hidden, with_hidden
from steerlab.model.handle import ModelHandle
from steerlab.model.scoring import window_logits
from steerlab.model.upper import upper_stack
from steerlab.progress import bar, track
from steerlab.steering.setting import SteeringSetting
from steerlab.steering.vectors import SteeringVector, data_hash, meta_for


class OptimiserSettings(MethodConfig):
    """What every loss-trained vector shares: the optimiser, the passes, early stopping, the
    final rescaling and the engine."""

    lr: float = Field(5e-4, gt=0)
    """AdamW learning rate."""
    batch_size: int = Field(8, gt=0)
    """Pairs per optimisation step."""
    epochs: int = Field(5, gt=0)
    """Passes over the pairs."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    patience: int | None = Field(None, gt=0)
    """With validation pairs: stop after this many epochs without a lower validation loss."""
    norm_ratio: float | None = Field(None, gt=0)
    """Rescale the result to this fraction of the layer's mean residual norm."""
    engine: Literal["fast", "naive"] = "fast"
    """``fast`` caches the layers below once; ``naive`` runs full passes (the reference)."""



Engine = Literal["fast", "naive"]
Edit = torch.Tensor | Callable[[torch.Tensor], torch.Tensor]
"""What a step does to layer L's output: a vector added to it, or a function of it."""


def _edited(hidden: torch.Tensor, edit: Edit) -> torch.Tensor:
    """Layer L's output edited. A vector must already be on the layer's device: it is made
    there once, never copied per step."""
    return hidden + edit.to(hidden.dtype) if isinstance(edit, torch.Tensor) else edit(hidden)


def _left_pad(tensors: Sequence[torch.Tensor], width: int, device: torch.device) -> torch.Tensor:
    """Stack (T_i, D) tensors into (B, width, D) on ``device``, right-aligned, zeros under
    padding; copies from pinned host memory are asynchronous."""
    first = tensors[0]
    out = torch.zeros(len(tensors), width, first.shape[-1], dtype=first.dtype, device=device)
    for row, tensor in enumerate(tensors):
        out[row, width - tensor.shape[0] :].copy_(tensor, non_blocking=True)
    return out


def packing_tolerance(dtype: torch.dtype) -> float:
    """How far (nats per completion token, on average) packed scores may stray from unpacked
    ones by rounding alone: 1e-3 in float32, 32 machine epsilons in half precision (0.25 in
    bfloat16). A model that ignores the packed mask lets the rejected completion read the
    chosen one, which moves its scores by nats per token."""
    return max(1e-3, 32 * torch.finfo(dtype).eps)


def _fits_on(device: torch.device, size: int) -> bool:
    """Whether a cache of ``size`` bytes may live on ``device``: on a CUDA device, within half
    of its free memory (the rest is for the passes); the CPU's and MPS's memory is the host's."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return size <= free // 2


class _Engine:
    """Computes policy and reference log-probabilities of a chunk of pairs for a vector."""

    packed = False  # whether chosen and rejected share one row behind their prompt

    def __init__(self, model: ModelHandle, layer: int) -> None:
        self.model, self.layer = model, layer

    def prepare(self, items: Sequence[EncodedPair], batch_size: int, progress: bool) -> int:
        """Precompute what the engine reuses; return the bytes it keeps."""
        return 0

    def logprobs(
        self, items: Sequence[EncodedPair], edit: Edit
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Summed completion log-probabilities: chosen and rejected with layer L's output
        edited, then chosen and rejected unedited (the reference)."""
        raise NotImplementedError


class _NaiveEngine(_Engine):
    """Full forward passes of both sequences of each pair, with a hook editing layer L's output;
    the reference recomputed every time. The straightforward path, for comparison."""

    def logprobs(self, items, edit):
        rows = pair_rows(self.model, items, packed=False)
        with torch.no_grad():
            ref = rows.scores(window_logits(self.model, rows.inputs, rows.keep))

        def apply(module, args, output):
            return with_hidden(output, _edited(layer_hidden(output), edit))

        hook = self.model.layers[self.layer].register_forward_hook(apply)
        try:
            policy = rows.scores(window_logits(self.model, rows.inputs, rows.keep))
        finally:
            hook.remove()
        return (*policy, *ref)


class _FastEngine(_Engine):
    """Layer-L outputs and reference log-probabilities computed once; then each step runs only
    the layers above L. The cache keeps the model's dtype on layer L's device when it fits
    there (pinned host memory and asynchronous copies when it does not). Pairs are packed
    (prompt run once for both completions) when the model honours a custom attention mask,
    checked on the first chunk within :func:`packing_tolerance`; otherwise rows are unpacked."""

    packed = True

    def __init__(self, model: ModelHandle, layer: int) -> None:
        super().__init__(model, layer)
        self.device = model.layer_device(layer)
        self.on_device = True

    def prepare(self, items, batch_size, progress):
        tokens = sum(len(e.chosen.ids) + len(e.rejected.ids) for e in items)
        self.on_device = _fits_on(self.device, estimate_cache_bytes(
            tokens, self.model.d_model, self.model.dtype))
        # Cached in length order, so each chunk's padding (kept under views) stays small.
        ordered = sorted(items, key=lambda e: len(e.chosen.ids) + e.rejected.n_completion)
        starts = range(0, len(ordered), batch_size)
        for start in track(starts, len(starts), "caching lower layers", progress):
            chunk = ordered[start : start + batch_size]
            self._cache(chunk)
            if start == 0 and self.packed and not self._packing_exact(chunk):
                warnings.warn("this model ignores custom attention masks: chosen and rejected "
                              "are run as separate rows (slower, same loss)", stacklevel=4)
                self.packed = False
                self._cache(chunk)
        return sum(h.numel() * h.element_size() for e in items for h in e.hidden)

    def _cache(self, chunk: Sequence[EncodedPair]) -> None:
        rows = pair_rows(self.model, chunk, self.packed)
        with torch.no_grad(), capture_layer_outputs(self.model.layers, [self.layer]) as seen:
            store_references(chunk, *rows.scores(window_logits(self.model, rows.inputs,
                                                               rows.keep)))
        hidden = seen[self.layer]
        if not self.on_device:
            hidden = hidden.cpu().pin_memory() if self.device.type == "cuda" else hidden.cpu()
        n = len(chunk)
        for row, item in enumerate(chunk):
            own = [row] if self.packed else [row, n + row]
            sizes = [len(item.chosen.ids) + item.rejected.n_completion] if self.packed else [
                len(item.chosen.ids), len(item.rejected.ids)]
            item.hidden = [hidden[r, rows.width - size :] for r, size in zip(own, sizes)]

    def _packing_exact(self, chunk: Sequence[EncodedPair]) -> bool:
        """Whether packed reference scores equal the unpacked ones on this chunk, within what
        rounding in the model's dtype explains (:func:`packing_tolerance`)."""
        packed = torch.stack(references(chunk), dim=1)
        rows = pair_rows(self.model, chunk, packed=False)
        with torch.no_grad():
            plain = torch.stack(rows.scores(window_logits(self.model, rows.inputs, rows.keep)),
                                dim=1)
        tokens = sum(e.chosen.n_completion + e.rejected.n_completion for e in chunk)
        gap = float((packed - plain).abs().sum()) / tokens
        return gap <= packing_tolerance(self.model.dtype)

    def logprobs(self, items, edit):
        rows = pair_rows(self.model, items, self.packed)
        cached = _left_pad(rows.hidden_rows(items, self.packed), rows.width, self.device)
        with upper_stack(self.model.layers, self.layer) as injection:
            injection.value = _edited(cached, edit)
            policy = rows.scores(window_logits(self.model, rows.inputs, rows.keep))
        return (*policy, *references(items))


def estimate_cache_bytes(seqs_tokens: int, d_model: int,
                         dtype: torch.dtype = torch.float32) -> int:
    """Bytes the fast engine keeps: one layer output in the model's dtype per token of every
    sequence."""
    return seqs_tokens * d_model * dtype.itemsize


class Objective(Protocol):
    """A training loss on a chunk of pairs for the vector at layer L, from the engine's
    log-probabilities (BiPO's, RePS's, one-shot's)."""

    def loss(self, engine: _Engine, chunk: Sequence[EncodedPair], vector: torch.Tensor,
             generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss to descend, and what to log with it (e.g. the direction drawn)."""
        ...

    def validation_loss(self, engine: _Engine, chunk: Sequence[EncodedPair],
                        vector: torch.Tensor) -> float:
        """The loss on held-out pairs, without the random draws of training."""
        ...


def train_objective(
    model: ModelHandle,
    pairs: Sequence[PreferencePair],
    layer: int,
    objective: Objective,
    method: str,
    settings: OptimiserSettings,
    run: TrainingRun,
    *,
    max_cache_bytes: int = 4 << 30,
    hyperparams: dict[str, Any] | None = None,
) -> SteeringVector:
    """The training loop every objective shares (what the run's fields do: see
    :func:`~steerlab.methods.bipo.trainer.train_bipo`): AdamW on the vector alone from zero,
    the engine's cached layers, validation, early stopping, checkpoints, logs. ``settings``
    gives lr, batch_size, epochs, weight_decay, patience, norm_ratio and engine;
    ``hyperparams`` joins them in the metadata."""
    seed, val_pairs, checkpoint, callbacks, progress, history = (
        run.seed, run.val_pairs, run.checkpoint, run.callbacks, run.progress, run.history)
    lr, batch_size, epochs = settings.lr, settings.batch_size, settings.epochs
    weight_decay, patience, norm_ratio = (settings.weight_decay, settings.patience,
                                          settings.norm_ratio)
    engine: Engine = settings.engine
    if not pairs:
        raise ValueError(f"{method} needs at least one preference pair")
    if not 0 <= layer < model.n_layers:
        raise ValueError(f"layer {layer} out of range: the model has {model.n_layers} layers")
    history = history if history is not None else TrainingHistory()

    items = encode_pairs(model, pairs)
    tokens = sum(len(e.chosen.ids) + len(e.rejected.ids) for e in items)
    cache_bytes = estimate_cache_bytes(tokens, model.d_model, model.dtype)
    if engine == "fast" and cache_bytes > max_cache_bytes:
        warnings.warn(
            f"the layer-{layer} cache would take {cache_bytes / 2**30:.1f} "
            f"GiB (limit {max_cache_bytes / 2**30:.1f} GiB): falling back to the naive engine",
            stacklevel=2,
        )
        engine = "naive"
    runner = (_FastEngine if engine == "fast" else _NaiveEngine)(model, layer)
    history.engine = engine
    started = time.perf_counter()
    history.cache_bytes = runner.prepare(items, batch_size, progress)
    history.packed = runner.packed
    history.prepare_seconds = time.perf_counter() - started
    residual_norm = (_mean_norm(items) if engine == "fast"
                     else _measure_norm(model, items, layer, batch_size))

    generator = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    vector = torch.zeros(model.d_model, dtype=torch.float32, device=model.layer_device(layer),
                         requires_grad=True)
    optimizer = torch.optim.AdamW([vector], lr=lr, weight_decay=weight_decay)

    def make_vector(tensor: torch.Tensor, epoch: int) -> SteeringVector:
        v = tensor.detach().clone()
        if norm_ratio is not None:
            v = v * (norm_ratio * residual_norm / v.norm().clamp_min(1e-12))
        meta = meta_for(
            model, method,
            hyperparams={**(hyperparams or {}), "lr": lr, "batch_size": batch_size,
                         "epochs": epochs, "weight_decay": weight_decay, "seed": seed,
                         "norm_ratio": norm_ratio, "patience": patience},
            data_hash=data_hash(list(pairs)), n_examples=len(pairs),
            residual_norms={layer: residual_norm}, extra={"epoch": epoch},
        )
        return SteeringVector({layer: v}, meta)

    best: tuple[float, SteeringVector] | None = None
    stale = 0
    step = 0
    for epoch in range(1, epochs + 1):
        epoch_batches = shuffled_batches(items, batch_size, rng)
        losses = []
        started = time.perf_counter()
        with bar(len(epoch_batches), f"{method} epoch {epoch}/{epochs}", progress) as advance:
            for number, chunk in enumerate(epoch_batches):
                objective_loss, logged = objective.loss(runner, chunk, vector, generator)
                loss = descend(
                    optimizer, objective_loss, method,
                    f"step {step + 1} (epoch {epoch}, batch {number + 1} of {len(epoch_batches)}; "
                    f"pairs {[e.pair_id for e in chunk]})",
                )
                step += 1
                record = {"step": step, "epoch": epoch, "batch": number + 1, "loss": loss,
                          **logged, "norm": float(vector.detach().norm())}
                history.steps.append(record)
                losses.append(record["loss"])
                advance(f"loss {record['loss']:.4f}  |v| {record['norm']:.3g}")
                for callback in callbacks:
                    callback(record)
        current = make_vector(vector, epoch)
        summary: dict[str, Any] = {"epoch": epoch, "train_loss": sum(losses) / len(losses),
                                   "norm": float(vector.detach().norm()),
                                   "seconds": time.perf_counter() - started}
        if val_pairs:
            summary.update(_validate(model, val_pairs, current, objective, batch_size))
        history.epochs.append(summary)
        for callback in callbacks:
            callback(summary)
        score = summary.get("val_loss", -epoch)  # without validation the latest epoch wins
        if best is None or score < best[0]:
            best, stale = (score, current), 0
            history.best_epoch = epoch
        else:
            stale += 1
        if checkpoint is not None:
            best[1].save(checkpoint)
        if patience is not None and val_pairs and stale >= patience:
            break
    return best[1]


def _mean_norm(items: Sequence[EncodedPair]) -> float:
    """Mean L2 norm of the cached layer outputs over every token (summed where they are; one
    copy to the host)."""
    cached = [hidden for item in items for hidden in item.hidden]
    total = sum(hidden.float().norm(dim=-1).sum() for hidden in cached)
    return float(total) / sum(hidden.shape[0] for hidden in cached)


def _measure_norm(model: ModelHandle, items: Sequence[EncodedPair], layer: int,
                  batch_size: int) -> float:
    seqs = [e.chosen for e in items] + [e.rejected for e in items]
    return read_layers(model, seqs, [layer], batch_size, progress=False).mean_norm[layer]


@torch.no_grad()
def _validate(
    model: ModelHandle,
    val_pairs: Sequence[PreferencePair],
    vector: SteeringVector,
    objective: Objective,
    batch_size: int,
) -> dict[str, float]:
    """Validation loss (the objective's, without random draws) and behaviour scores at ×±1."""
    items = encode_pairs(model, val_pairs)
    (layer,) = vector.layers
    v = vector.directions[layer].to(model.layer_device(layer))
    naive = _NaiveEngine(model, layer)
    total, count = 0.0, 0
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        total += objective.validation_loss(naive, chunk, v) * len(chunk)
        count += len(chunk)
    records = evaluate_ab(model, val_pairs, Sweep(SteeringSetting(vector), [-1.0, 1.0]),
                          batch_size=batch_size, progress=False)
    score = {m: [r["score"] for r in records if r["multiplier"] == m] for m in (-1.0, 1.0)}
    return {
        "val_loss": total / count,
        "val_score_minus": sum(score[-1.0]) / len(score[-1.0]),
        "val_score_plus": sum(score[1.0]) / len(score[1.0]),
    }


__all__ = ["Edit", "Engine", "Objective", "OptimiserSettings", "estimate_cache_bytes",
           "packing_tolerance", "train_objective"]

"""Conditions for conditional activation steering (CAST, Lee et al. 2024): steer a sequence only
when its prompt is of a kind (e.g. a harmful request), decided per row of a batch.

A :class:`Condition` is a direction at one decoder layer plus a threshold. A prompt's
*similarity* is the cosine between its mean hidden state at that layer (the layer's output
averaged over the prompt's tokens, padding excluded) and the direction; the condition holds when
the similarity is above the threshold (``comparison="greater"``) or below it (``"less"``).
:func:`train_condition` takes the direction as the difference of the mean pooled states of
prompts that should meet the condition and prompts that should not; :func:`search_threshold`
picks the threshold that maximises F1 on labelled prompts (held out from training).

The paper's reference code (IBM ``activation-steering``) compares the pooled state h with
tanh(P h), P = ĉĉᵀ the projection on the condition direction; while the projection is small that
is |cos(h, ĉ)|, the cosine without its sign. steerlab keeps the signed cosine, so "towards" and
"away from" the direction stay apart. Applying a condition is
``vector.apply(model, ..., condition=condition)`` (or a
:class:`~steerlab.steering.setting.SteeringSetting`'s
``condition``): the decision is made on the sequence's first forward pass and kept for the
tokens it generates (see :mod:`steerlab.steering.hooks`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from torch import nn

from steerlab.data.files import split
from steerlab.model.activations import read_layers
from steerlab.model.capture import masked_mean
from steerlab.model.encoding import encode
from steerlab.model.handle import ModelHandle
from steerlab.records import Record
from steerlab.steering.vectors import (
    VectorMeta,
    check_model_fit,
    data_hash,
    load_tensors,
    meta_for,
    save_tensors,
)

Comparison = Literal["greater", "less"]
COMPARISONS: tuple[str, ...] = ("greater", "less")
_CONDITION_KEY = "steerlab.condition"
_TENSOR = "condition_direction"


def _cosine(pooled: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """(N,) cosine between each row of ``pooled`` (N, D) and ``direction`` (D,)."""
    direction = direction.to(pooled.device).unsqueeze(0)
    return torch.nn.functional.cosine_similarity(pooled, direction, dim=-1)


class Condition:
    """A direction at one layer and a threshold on the prompt's cosine similarity with it."""

    def __init__(self, layer: int, direction: torch.Tensor, meta: VectorMeta,
                 threshold: float = 0.0, comparison: Comparison = "greater") -> None:
        if comparison not in COMPARISONS:
            raise ValueError(f"comparison must be one of {COMPARISONS}, got {comparison!r}")
        if direction.shape != (meta.d_model,):
            raise ValueError(f"condition direction has shape {tuple(direction.shape)}, expected "
                             f"({meta.d_model},)")
        if not bool(direction.any()):
            raise ValueError("a condition's direction must not be zero")
        if not bool(torch.isfinite(direction).all()):
            raise ValueError("a condition's direction has non-finite values (NaN or inf)")
        if not math.isfinite(threshold):
            raise ValueError(f"a condition's threshold must be a finite number, got {threshold}")
        if layer < 0:
            raise ValueError(f"condition layer must be 0 or more, got {layer}")
        self.layer = int(layer)
        self.direction = direction.detach().to(torch.float32).cpu().contiguous()
        self.threshold = float(threshold)
        self.comparison: Comparison = comparison
        self.meta = meta

    @property
    def id(self) -> str:
        """A content hash of layer, direction, threshold and comparison."""
        digest = hashlib.sha256(f"{self.layer}:{self.threshold!r}:{self.comparison}".encode())
        digest.update(self.direction.numpy().tobytes())
        return digest.hexdigest()[:12]

    def __repr__(self) -> str:
        return (f"Condition(id={self.id}, layer={self.layer}, similarity {self.comparison} than "
                f"{self.threshold:.4g}, model={self.meta.model_name!r})")

    def with_threshold(self, threshold: float, comparison: Comparison | None = None) -> Condition:
        """The same direction with another threshold (and comparison)."""
        return Condition(self.layer, self.direction, self.meta.model_copy(deep=True), threshold,
                         comparison or self.comparison)

    def describe(self) -> Record:
        """This condition as record fields."""
        return {"id": self.id, "layer": self.layer, "threshold": self.threshold,
                "comparison": self.comparison}

    # ---- deciding -------------------------------------------------------------------------

    def similarity(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) cosine between each row's mean hidden state over its real tokens and the
        direction, from this layer's output (B, T, D) and the (B, T) mask of real tokens."""
        return _cosine(masked_mean(hidden, mask), self.direction)

    def meets(self, similarity: torch.Tensor) -> torch.Tensor:
        """Whether each similarity is on the condition's side of the threshold."""
        if self.comparison == "greater":
            return similarity > self.threshold
        return similarity < self.threshold

    def decide(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(B,) bool: which rows meet the condition (what :class:`~steerlab.steering.hooks.Steering`
        asks on a sequence's first pass)."""
        return self.meets(self.similarity(hidden, mask))

    def similarities(self, model: ModelHandle, prompts: Sequence[str], batch_size: int = 8,
                     progress: bool = True) -> torch.Tensor:
        """(N,) similarity of each prompt, formatted as generation formats it."""
        self.check_compatible(model.model)
        pooled = pooled_states(model, prompts, self.layer, batch_size, progress)
        return _cosine(pooled, self.direction)

    def applies(self, model: ModelHandle, prompts: Sequence[str], batch_size: int = 8,
                progress: bool = True) -> list[bool]:
        """Whether the condition holds for each prompt."""
        return self.meets(self.similarities(model, prompts, batch_size, progress)).tolist()

    def check_compatible(self, model: nn.Module) -> None:
        """Fail on a d_model mismatch; warn when the model's config fingerprint differs."""
        check_model_fit(model, self.meta, "condition")

    # ---- persistence ------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the condition as safetensors (its direction) with its metadata, threshold and
        comparison as JSON in the header; atomic like :meth:`SteeringVector.save`."""
        setting = {"layer": self.layer, "threshold": self.threshold, "comparison": self.comparison}
        header = {"steerlab": self.meta.model_dump_json(), _CONDITION_KEY: json.dumps(setting)}
        return save_tensors(path, {_TENSOR: self.direction}, header)

    @classmethod
    def load(cls, path: str | Path) -> Condition:
        """Read a condition written by :meth:`save`; errors name the file and what is wrong."""
        tensors, header = load_tensors(path, "condition")
        if _CONDITION_KEY not in header or _TENSOR not in tensors:
            raise ValueError(f"{path}: not a steerlab condition (a steering vector? those load "
                             "with SteeringVector.load)")
        setting = json.loads(header[_CONDITION_KEY])
        meta = VectorMeta.model_validate_json(header["steerlab"])
        return cls(setting["layer"], tensors[_TENSOR], meta, setting["threshold"],
                   setting["comparison"])


def pooled_states(model: ModelHandle, prompts: Sequence[str], layer: int, batch_size: int = 8,
                  progress: bool = True) -> torch.Tensor:
    """(N, D) mean output of ``layer`` over each formatted prompt's tokens: what a condition
    compares with its direction (the same tokens a generation's first pass reads)."""
    if not prompts:
        raise ValueError("no prompts to read")
    if not 0 <= layer < model.n_layers:
        raise ValueError(f"layer {layer} out of range: the model has {model.n_layers} layers")
    seqs = encode(model, list(prompts), [""] * len(prompts))
    readout = read_layers(model, seqs, [layer], batch_size, progress, "reading prompt states")
    return readout.mean[layer]


def train_condition(
    model: ModelHandle,
    positive_prompts: Sequence[str],
    negative_prompts: Sequence[str],
    layer: int,
    batch_size: int = 8,
    progress: bool = True,
) -> Condition:
    """A condition that holds for prompts like ``positive_prompts`` and not for prompts like
    ``negative_prompts``: direction = mean pooled state of the positives − of the negatives at
    ``layer``; threshold halfway between the two sets' mean similarities, on the positives'
    side. Refine the threshold on held-out prompts with :func:`search_threshold`."""
    if not positive_prompts or not negative_prompts:
        raise ValueError(f"a condition needs positive and negative prompts, got "
                         f"{len(positive_prompts)} and {len(negative_prompts)}")
    positive = pooled_states(model, positive_prompts, layer, batch_size, progress)
    negative = pooled_states(model, negative_prompts, layer, batch_size, progress)
    direction = positive.mean(dim=0) - negative.mean(dim=0)
    pos_mean = float(_cosine(positive, direction).mean())
    neg_mean = float(_cosine(negative, direction).mean())
    meta = meta_for(
        model, "condition-mean-difference",
        hyperparams={"layer": layer, "pooling": "mean over prompt tokens", "similarity": "cosine"},
        data_hash=data_hash([*map(str, positive_prompts), "|", *map(str, negative_prompts)]),
        n_examples=len(positive_prompts) + len(negative_prompts),
        extra={"n_positive": len(positive_prompts), "n_negative": len(negative_prompts),
               "positive_mean_similarity": pos_mean, "negative_mean_similarity": neg_mean},
    )
    comparison: Comparison = "greater" if pos_mean >= neg_mean else "less"
    return Condition(layer, direction, meta, (pos_mean + neg_mean) / 2, comparison)


def fit_condition(
    model: ModelHandle,
    positive_prompts: Sequence[str],
    negative_prompts: Sequence[str],
    layer: int,
    holdout: float = 0.3,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
) -> Condition:
    """:func:`train_condition` on part of each prompt set, then :func:`search_threshold` on the
    seeded ``holdout`` fraction of each left out of training. The condition carries the search
    (F1, precision, recall, sizes, every candidate) in ``meta.extra["threshold_search"]``."""

    fit, held = {}, {}
    for side, prompts in (("positive", positive_prompts), ("negative", negative_prompts)):
        n_held = max(1, round(holdout * len(prompts)))
        if n_held >= len(prompts):
            raise ValueError(f"{side} prompts: {len(prompts)} are too few to hold out "
                             f"{holdout:.0%} for the threshold search and train on the rest")
        held[side], fit[side] = split(list(prompts), [n_held, len(prompts) - n_held], seed)
    options = {"batch_size": batch_size, "progress": progress}
    trained = train_condition(model, fit["positive"], fit["negative"], layer, **options)
    labels = [True] * len(held["positive"]) + [False] * len(held["negative"])
    search = search_threshold(model, trained, held["positive"] + held["negative"], labels,
                              **options)
    condition = trained.with_threshold(search.threshold)
    condition.meta.extra["threshold_search"] = {
        "f1": search.f1, "precision": search.precision, "recall": search.recall,
        "n_positive": len(held["positive"]), "n_negative": len(held["negative"]),
        "holdout": holdout, "seed": seed, "table": [row._asdict() for row in search.table]}
    return condition


class ThresholdRow(NamedTuple):
    """The confusion counts and scores of one candidate threshold."""

    threshold: float
    tp: int
    fp: int
    fn: int
    tn: int
    precision: float
    recall: float
    f1: float


class ThresholdSearch(NamedTuple):
    """The F1-maximising threshold with its precision and recall, and every candidate tried."""

    threshold: float
    f1: float
    precision: float
    recall: float
    table: list[ThresholdRow]


def _row(threshold: float, decided: Sequence[bool], labels: Sequence[bool]) -> ThresholdRow:
    tp = sum(d and y for d, y in zip(decided, labels))
    fp = sum(d and not y for d, y in zip(decided, labels))
    fn = sum(not d and y for d, y in zip(decided, labels))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return ThresholdRow(threshold, tp, fp, fn, len(labels) - tp - fp - fn, precision, recall, f1)


def best_threshold(similarities: Sequence[float], labels: Sequence[bool],
                   comparison: Comparison = "greater") -> ThresholdSearch:
    """The threshold with the highest F1 (condition met = positive label) among the cut points
    between neighbouring similarities (midpoints, and one beyond each end); ties go to the widest
    gap between neighbours, the cut least sensitive to small shifts."""
    if len(similarities) != len(labels):
        raise ValueError(f"{len(similarities)} similarities but {len(labels)} labels")
    if not any(labels) or all(labels):
        raise ValueError("the threshold search needs prompts of both labels (True and False)")
    if comparison not in COMPARISONS:
        raise ValueError(f"comparison must be one of {COMPARISONS}, got {comparison!r}")
    values = sorted({float(s) for s in similarities})
    margin = max(values[-1] - values[0], 1e-6)
    cuts = [(values[0] - margin, margin)] + [((a + b) / 2, b - a) for a, b in pairwise(values)]
    cuts.append((values[-1] + margin, margin))
    table, gaps = [], []
    for cut, gap in cuts:
        decided = [s > cut if comparison == "greater" else s < cut for s in similarities]
        table.append(_row(cut, decided, [bool(y) for y in labels]))
        gaps.append(gap)
    best = max(range(len(table)), key=lambda i: (table[i].f1, gaps[i]))
    row = table[best]
    return ThresholdSearch(row.threshold, row.f1, row.precision, row.recall, table)


def search_threshold(
    model: ModelHandle,
    condition: Condition,
    prompts: Sequence[str],
    labels: Sequence[bool],
    batch_size: int = 8,
    progress: bool = True,
) -> ThresholdSearch:
    """The threshold of ``condition`` that maximises F1 on labelled ``prompts`` (True: the
    condition should hold); apply it with ``condition.with_threshold(result.threshold)``."""
    if len(prompts) != len(labels):
        raise ValueError(f"{len(prompts)} prompts but {len(labels)} labels")
    similarities = condition.similarities(model, prompts, batch_size, progress).tolist()
    return best_threshold(similarities, labels, condition.comparison)

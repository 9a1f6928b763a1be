"""Side effects: what a steering vector costs outside the behaviour it was trained for.

Three measurements, each written as per-example records so the table is recomputed from them:

- capability: multiple-choice accuracy at the steered setting against unsteered, on the same
  items (records of :func:`steerlab.evaluation.likelihood.evaluate`), with a paired Bayesian
  contrast;
- perplexity of held text (e.g. WikiText-2) under steering: per-text summed log-probability of
  every token after the first, the text cut to ``max_tokens``;
- KL divergence KL(unsteered ‖ steered) of the next-token distribution at the end of unrelated
  prompts (formatted with the model's template), i.e. how far steering moves the model where it
  should not matter.

Every sweep shares the layers below the steered one across its multipliers (see
:func:`steerlab.model.scoring.settings_logits`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from steerlab.data.files import MCItem
from steerlab.evaluation.likelihood import Sweep, evaluate_mc
from steerlab.model.encoding import TokenSequence, batches, encode
from steerlab.model.handle import ModelHandle
from steerlab.model.scoring import score_settings, settings_logits
from steerlab.progress import track
from steerlab.records import Record, RecordWriter, emit
from steerlab.stats import paired_advantage, paired_table_from_records

Z90 = 1.6448536269514722  # two-sided 90% normal quantile


def perplexity_records(
    model: ModelHandle,
    texts: Sequence[str],
    sweep: Sweep,
    *,
    dataset: str = "",
    max_tokens: int = 128,
    writer: RecordWriter | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> list[Record]:
    """One record per text × multiplier: the summed log-probability of the text's tokens after
    the first (``logprob``) and how many there are (``n_tokens``). Texts under two tokens are
    an error, since they have nothing to predict."""
    seqs = []
    for index, text in enumerate(texts):
        ids = model.tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
        if len(ids) < 2:
            raise ValueError(f"text {index} of {dataset or 'the texts'} has under two tokens")
        seqs.append(TokenSequence(tuple(ids), 1))
    settings = sweep.settings(model)
    scored = score_settings(model, seqs, [make for _, make in settings], sweep.shared_layers(),
                            batch_size, progress, f"perplexity, {len(settings)} setting(s)")
    common = {"task": "perplexity", "dataset": dataset, "model": model.name, **model.placement,
              **sweep.describe()}
    records = [
        {**common, "multiplier": float(multiplier), "item_id": f"{dataset}-{index}",
         "logprob": score.logprob, "n_tokens": score.n_tokens}
        for (multiplier, _), scores in zip(settings, scored)
        for index, score in enumerate(scores)
    ]
    return emit(records, writer)


@torch.no_grad()
def kl_records(
    model: ModelHandle,
    prompts: Sequence[str],
    sweep: Sweep,
    *,
    dataset: str = "",
    writer: RecordWriter | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> list[Record]:
    """One record per prompt × multiplier: KL(unsteered ‖ steered) in nats of the next-token
    distribution after the formatted prompt (``kl``; 0 where the multiplier is 0)."""
    seqs = encode(model, list(prompts), [""] * len(prompts))
    settings = sweep.settings(model)
    makers = [nullcontext] + [make for _, make in settings]
    kl = torch.zeros(len(settings), len(seqs))
    steps = batches(seqs, batch_size, model.tokenizer.pad_token_id, model.device)
    n_steps = -(-len(seqs) // batch_size)
    for index, batch in track(steps, n_steps, f"KL, {len(settings)} setting(s)", progress):
        logits = settings_logits(model, batch.model_inputs(), makers, sweep.shared_layers(), 1)
        base = torch.log_softmax(next(logits)[:, -1].float(), dim=-1)
        for k, steered in enumerate(logits):
            steered = torch.log_softmax(steered[:, -1].float(), dim=-1)
            kl[k, index] = (base.exp() * (base - steered)).sum(dim=-1).clamp_min(0).cpu()
    common = {"task": "kl", "dataset": dataset, "model": model.name, **model.placement,
              **sweep.describe()}
    records = [
        {**common, "multiplier": float(multiplier), "item_id": f"{dataset}-{i}",
         "prompt": model.format_prompt(prompt), "kl": float(kl[k, i])}
        for k, (multiplier, _) in enumerate(settings)
        for i, prompt in enumerate(prompts)
    ]
    return emit(records, writer)


def side_effect_records(
    model: ModelHandle,
    sweep: Sweep,
    *,
    capability: Mapping[str, Sequence[MCItem]] | None = None,
    texts: Mapping[str, Sequence[str]] | None = None,
    prompts: Mapping[str, Sequence[str]] | None = None,
    max_tokens: int = 128,
    writer: RecordWriter | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> list[Record]:
    """All three measurements for one sweep, each dataset by name; multiplier 0 (the
    baseline every comparison needs) is added to the sweep when missing."""
    sweep = sweep.with_baseline()
    options = {"writer": writer, "batch_size": batch_size, "progress": progress}
    records: list[Record] = []
    for name, items in (capability or {}).items():
        records += evaluate_mc(model, items, sweep, dataset=name, **options)
    for name, chunk in (texts or {}).items():
        records += perplexity_records(model, chunk, sweep, dataset=name, max_tokens=max_tokens,
                                      **options)
    for name, chunk in (prompts or {}).items():
        records += kl_records(model, chunk, sweep, dataset=name, **options)
    return records


@dataclass(frozen=True)
class SideEffect:
    """One line of the side-effects table: a metric at one steered setting against unsteered.

    ``change`` is steered − unsteered (accuracy, or perplexity as a ratio − 1, or mean KL),
    with a 90% interval (credible for accuracy, normal for the others).
    """

    metric: str
    dataset: str
    vector_id: str | None
    multiplier: float
    n: int
    unsteered: float
    steered: float
    change: float
    lower: float
    upper: float
    note: str = ""
    condition_id: str | None = None
    """The condition gating the steering (None: unconditional)."""

    @property
    def setting(self) -> str:
        """The steering measured: the vector's id, with its condition's when conditional."""
        return str(self.vector_id) + (f" if {self.condition_id}" if self.condition_id else "")


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)
    return mean, math.sqrt(var / len(values))


def _by_setting(records: Sequence[Record], task: str) -> dict[tuple, dict[float, list[Record]]]:
    groups: dict[tuple, dict[float, list[Record]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        if record.get("task") == task:
            key = (record.get("dataset"), record.get("vector_id"), str(record.get("layers")),
                   record.get("norm_ratio"), (record.get("condition") or {}).get("id"))
            groups[key][float(record["multiplier"])].append(record)
    return groups


def capability_records(records: Sequence[Record]) -> list[Record]:
    """The steered ``mc`` records that measure capability: settings carrying their own
    multiplier-0 records, as :func:`side_effect_records` writes them. A steered sweep of a
    multiple-choice *target* task (its unsteered records under no vector) is not one."""
    groups = _by_setting([r for r in records if r.get("vector_id") is not None], "mc")
    return [r for by_m in groups.values() if 0.0 in by_m for rs in by_m.values() for r in rs]


def _paired_values(base: list[Record], steered: list[Record]) -> list[tuple[Record, Record]]:
    """(unsteered, steered) records of each steered item; every one needs its unsteered twin."""
    by_id = {r["item_id"]: r for r in base}
    missing = [r["item_id"] for r in steered if r["item_id"] not in by_id]
    if missing:
        raise ValueError(
            f"{len(missing)} steered records have no unsteered twin, e.g. {missing[:3]}")
    return [(by_id[r["item_id"]], r) for r in steered]


def side_effects_table(records: Sequence[Record]) -> list[SideEffect]:
    """The side-effects table, recomputed from records: every steered multiplier of every
    capability (``mc``), ``perplexity`` and ``kl`` setting against the same setting's
    multiplier-0 records of the same items (which capability and perplexity sweeps must
    therefore include)."""
    rows: list[SideEffect] = []
    for (dataset, vector_id, _, _, condition), by_m in _by_setting(records, "mc").items():
        if 0.0 not in by_m:
            raise ValueError(f"capability records of {dataset} have no multiplier-0 baseline")
        for m, steered in sorted(by_m.items()):
            if m == 0.0:
                continue
            base = [b for b, _ in _paired_values(by_m[0.0], steered)]
            post = paired_advantage(paired_table_from_records(steered, base))
            rows.append(SideEffect(
                "accuracy", dataset, vector_id, m, len(steered),
                sum(bool(r["correct"]) for r in base) / len(base),
                sum(bool(r["correct"]) for r in steered) / len(steered), post.mean, post.lower,
                post.upper, f"P(gain > 0) = {post.prob_positive:.2f}", condition,
            ))
    for (dataset, vector_id, _, _, condition), by_m in _by_setting(records, "perplexity").items():
        if 0.0 not in by_m:
            raise ValueError(f"perplexity records of {dataset} have no multiplier-0 baseline")
        base_ppl = math.exp(-sum(r["logprob"] for r in by_m[0.0])
                            / sum(r["n_tokens"] for r in by_m[0.0]))
        for m, steered in sorted(by_m.items()):
            if m == 0.0:
                continue
            pairs = _paired_values(by_m[0.0], steered)
            ppl = math.exp(-sum(r["logprob"] for r in steered)
                           / sum(r["n_tokens"] for r in steered))
            # Per-text change of mean negative log-likelihood per token; its exp is the ratio.
            diffs = [(b["logprob"] - s["logprob"]) / s["n_tokens"] for b, s in pairs]
            mean, se = _mean_se(diffs)
            rows.append(SideEffect(
                "perplexity", dataset, vector_id, m, len(pairs), base_ppl, ppl, ppl / base_ppl - 1,
                math.exp(mean - Z90 * se) - 1, math.exp(mean + Z90 * se) - 1,
                "change is the perplexity ratio − 1; interval from per-text NLL changes",
                condition,
            ))
    for (dataset, vector_id, _, _, condition), by_m in _by_setting(records, "kl").items():
        for m, steered in sorted(by_m.items()):
            if m == 0.0:
                continue
            mean, se = _mean_se([r["kl"] for r in steered])
            rows.append(SideEffect(
                "KL(unsteered‖steered), nats", dataset, vector_id, m, len(steered), 0.0, mean, mean,
                max(mean - Z90 * se, 0.0), mean + Z90 * se, "next token after unrelated prompts",
                condition,
            ))
    return rows

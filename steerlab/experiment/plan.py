"""What a run will cost before it starts (`steerlab run --plan`, and the table at the start of
every run).

**Counts.** Each stage's work is counted by running stage one on a stand-in of the configured
model (:mod:`steerlab.model.stand_in`: the same tokenizer, layers and heads, a tiny width,
random weights) into a temporary directory. The counts are the stand-in run's own compute
records, so the plan counts exactly as the run will: passes, token positions, token-layers
and decoder-layer calls of each kind (training, forward, decoding), decoded tokens. Where the
work depends on what the model says, the count is the stand-in's: generation runs to its token
limit (a random model almost never ends early), so it is an upper bound; early stopping stops
where the stand-in's validation did; the layer and multiplier chosen on validation are the
stand-in's. Judges are not run and not priced.

**Prices.** A short calibration of the real model on its device and dtype: the output head
timed on its own (per position projected, with a backward pass and without), then two passes
of each kind, at the run's typical size and at the largest it makes, padded like real batches,
give seconds per decoder-layer call and per token-layer, the head's share taken out. The peak
memory is read over the same passes and one more that keeps the most a backward pass can (the
largest training size, through every layer and every logit), by the accelerators' allocator or
as the process's peak on the CPU, with a copy of the weights added where a LoRA arm merges one.
What lies outside the model's passes (tokenising, the Python between passes) is not priced, so
the estimate runs a little short.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from steerlab.analysis.comparison import COMPUTE_TASK, PLAN_TASK
from steerlab.experiment.compute import HEAD_KINDS, KINDS, peak_memory
from steerlab.experiment.config import ExperimentConfig
from steerlab.experiment.runner import Runner
from steerlab.experiment.runs import RunDir
from steerlab.methods import get_method
from steerlab.model.handle import ModelHandle
from steerlab.model.scoring import keeps_logits, window_logits
from steerlab.model.stand_in import stand_in
from steerlab.progress import duration
from steerlab.records import Record

DECODE_STEPS = 8
"""Decoding steps timed after each calibration prefill."""
HEAD_TOKENS = 256
"""Positions the output head is timed on."""


@dataclass(frozen=True)
class StageWork:
    """One stage's work as a compute record counts it (see :mod:`steerlab.experiment.compute`)."""

    stage: str
    passes: int
    tokens: int
    generated_tokens: int
    token_layers: dict[str, int]
    layer_calls: dict[str, int]
    head_tokens: dict[str, int]

    @classmethod
    def of(cls, record: Record) -> StageWork:
        return cls(record["stage"], record["passes"], record["tokens"],
                   record["generated_tokens"], dict(record["token_layers_by_kind"]),
                   dict(record["layer_calls_by_kind"]), dict(record["head_tokens_by_kind"]))


@dataclass(frozen=True)
class Rates:
    """Seconds per decoder-layer call and per token-layer of each kind and per position the
    head projects, and the peak memory of the passes that measured them, on one device and
    dtype."""

    per_call: dict[str, float]
    per_token_layer: dict[str, float]
    per_head_token: dict[str, float]
    """The output head's seconds per position it projects, with a backward pass or without."""
    peak_bytes: int
    peak_source: str
    device: str
    dtype: str
    seconds: float
    """What the calibration itself took."""

    def cost(self, work: StageWork) -> float:
        """Estimated seconds of a stage's work."""
        return (sum(work.layer_calls[kind] * self.per_call.get(kind, 0.0)
                    + work.token_layers[kind] * self.per_token_layer.get(kind, 0.0)
                    for kind in KINDS)
                + sum(work.head_tokens[kind] * self.per_head_token[kind] for kind in HEAD_KINDS))


@dataclass(frozen=True)
class Plan:
    """A run's work by stage, priced; :meth:`record` keeps it beside the run's records."""

    stages: list[StageWork]
    rates: Rates
    notes: list[str]
    counting_seconds: float

    @classmethod
    def from_record(cls, record: Record) -> Plan:
        """The plan a run kept with its records (see :meth:`record`)."""
        return cls([StageWork(**work) for work in record["stages"]], Rates(**record["rates"]),
                   list(record["notes"]), record["counting_seconds"])

    def estimates(self) -> dict[str, float]:
        """Estimated seconds of each stage."""
        return {work.stage: self.rates.cost(work) for work in self.stages}

    def total(self) -> float:
        """Estimated seconds of stage one."""
        return sum(self.estimates().values())

    def record(self) -> Record:
        """The plan as a record (:data:`PLAN_TASK`), kept with the run's records."""
        return {"task": PLAN_TASK, "estimates": self.estimates(), "total": self.total(),
                "stages": [asdict(work) for work in self.stages], "rates": asdict(self.rates),
                "notes": self.notes, "counting_seconds": self.counting_seconds}

    def rows(self) -> list[list[str]]:
        """The table's rows (see :data:`HEADERS`): a stage each (those with work), then the
        total."""
        estimates, total = self.estimates(), max(self.total(), 1e-9)

        def row(name: str, works: Sequence[StageWork], seconds: float) -> list[str]:
            return [name, *(compact(sum(getattr(w, field) for w in works))
                            for field in ("passes", "tokens")),
                    *(compact(sum(w.token_layers[kind] for w in works)) for kind in KINDS),
                    compact(sum(w.generated_tokens for w in works)),
                    duration(seconds), f"{seconds / total:.0%}"]

        return [*(row(w.stage, [w], estimates[w.stage]) for w in self.stages if w.passes),
                row("total", self.stages, self.total())]

    def summary(self) -> list[str]:
        """The lines under the table: the dominant stage, memory, calibration, caveats."""
        estimates = self.estimates()
        top = max(estimates, key=estimates.__getitem__, default=None)
        lines = []
        if top is not None and self.total() > 0:
            lines.append(f"Stage one ≈ {duration(self.total())}, {top} "
                         f"{estimates[top] / self.total():.0%} of it.")
        rates = self.rates
        lines.append(f"Peak memory ≈ {rates.peak_bytes / 2**30:.1f} GiB ({rates.peak_source}). "
                     f"Priced on {rates.device} in {rates.dtype} by a {rates.seconds:.0f} s "
                     f"calibration; counted on a stand-in in {self.counting_seconds:.0f} s.")
        return lines + self.notes


HEADERS = ["stage", "passes", "tokens", "train", "forward", "decode", "new", "≈ time", "share"]
"""The plan table's columns (short, for an 80-column terminal; :data:`CAPTION` says them)."""
CAPTION = ("train, forward, decode: token-layers (a decoder layer on a token) of each kind; "
           "new: tokens decoded from a cache")


def compact(count: int) -> str:
    """A count short enough for a narrow table: 9,716; 224 k; 5.7 M; 1.2 G."""
    for size, unit in ((1e9, "G"), (1e6, "M")):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{round(count / 1e3)} k" if count >= 1e4 else f"{count:,}"


def counted_config(config: ExperimentConfig) -> ExperimentConfig:
    """``config`` with each method that cannot run on a stand-in replaced by the method it is
    counted as (``VectorMethod.counted_as``), layers and multipliers kept."""
    swapped = {name: {"method": spec.counted_as, "layers": entry.layers,
                      "multipliers": entry.multipliers}
               for name, entry in config.methods.items()
               if (spec := get_method(entry.method)).counted_as}  # type: ignore[attr-defined]
    if not swapped:
        return config
    data = config.model_dump()
    data["methods"].update(swapped)
    return ExperimentConfig.model_validate(data)


def count_work(config: ExperimentConfig, stand_in: ModelHandle,
               ) -> tuple[list[StageWork], dict[str, tuple[int, int]]]:
    """Each stage's work, counted by running stage one of ``config`` (:func:`counted_config`)
    on ``stand_in`` (judges left out, warnings silenced) in a temporary directory; and each
    kind's largest layer call (rows, positions)."""
    config = counted_config(config)
    with (tempfile.TemporaryDirectory(prefix="steerlab-plan-") as folder,
          warnings.catch_warnings()):
        warnings.simplefilter("ignore")  # what methods warn of a random stand-in is noise
        runner = Runner(config, Path(folder) / "run", progress=False, log=lambda _: None,
                        model=stand_in, judging=False)
        runner()
        records = runner.run.records()
    return ([StageWork.of(r) for r in records if r.get("task") == COMPUTE_TASK],
            dict(runner.counter.largest))


def _synchronise(device: torch.device) -> None:
    """Wait for every accelerator's queued work (a device map spreads a pass over several)."""
    if device.type == "cuda":
        for index in range(torch.cuda.device_count()):
            torch.cuda.synchronize(index)


def _seconds(model: ModelHandle, work: Callable[[], object]) -> float:
    """Wall time of one run of ``work``, after one more to warm it up (kernels chosen and
    caches made for its shapes)."""
    work()
    _synchronise(model.device)
    started = time.perf_counter()
    work()
    _synchronise(model.device)
    return time.perf_counter() - started


def _inputs(model: ModelHandle, rows: int, positions: int) -> dict[str, torch.Tensor]:
    """Random tokens, the first row padded by one position (where there are two): batches of
    prompts of different lengths carry a padding mask, which takes attention off the kernels
    that need none, so the calibration pays what the run does."""
    vocab = len(model.tokenizer)
    generator = torch.Generator().manual_seed(rows * 7919 + positions)
    ids = torch.randint(0, vocab, (rows, positions), generator=generator)
    mask = torch.ones_like(ids)
    if positions > 1:
        mask[0, 0] = 0
    return {"input_ids": ids.to(model.device), "attention_mask": mask.to(model.device)}


def _head_positions(model: ModelHandle, positions: int) -> int:
    """The positions of each row a calibration pass projects through the head: the last one,
    where the model can skip the others (as scoring does), else all."""
    return 1 if keeps_logits(model) else positions


def _forward(model: ModelHandle, rows: int, positions: int) -> Callable[[], object]:
    inputs = _inputs(model, rows, positions)

    def run() -> object:
        with torch.no_grad():
            return window_logits(model, inputs, 1)

    return run


def _training(model: ModelHandle, rows: int, positions: int, layer: int,
              keep: int = 1) -> Callable[[], object]:
    """A pass that trains an addition at ``layer``'s output: forward through every layer,
    backward through those above it and the head's last ``keep`` positions, as a steering
    vector's training step does."""
    inputs = _inputs(model, rows, positions)
    added = torch.zeros(model.d_model, device=model.layer_device(layer), dtype=model.dtype,
                        requires_grad=True)

    def hook(module: torch.nn.Module, args: tuple, output: Any) -> Any:
        return (output[0] + added, *output[1:]) if isinstance(output, tuple) else output + added

    def run() -> object:
        handle = model.layers[layer].register_forward_hook(hook)
        try:
            with torch.enable_grad():
                logits = window_logits(model, inputs, keep)
                logits.float().log_softmax(-1).mean().backward()
        finally:
            handle.remove()
        return added.grad

    return run


def _decoding(model: ModelHandle, rows: int, prompt: int) -> Callable[[], object]:
    """``DECODE_STEPS`` single-token steps of ``rows`` sequences from a cache of ``prompt``
    positions (the prefill is made once and copied, not timed)."""
    inputs = _inputs(model, rows, prompt)
    with torch.no_grad():
        prefilled = model.model(**inputs, use_cache=True).past_key_values
    step = inputs["input_ids"][:, -1:]

    def run() -> object:
        cache, mask = copy.deepcopy(prefilled), inputs["attention_mask"]
        with torch.no_grad():
            for _ in range(DECODE_STEPS):
                mask = torch.cat([mask, mask[:, -1:]], dim=1)
                cache = model.model(input_ids=step, attention_mask=mask, past_key_values=cache,
                                    use_cache=True).past_key_values
        return cache

    return run


def _head(model: ModelHandle, tokens: int, training: bool) -> Callable[[], object]:
    """The output head on ``tokens`` positions and a log-softmax over the vocabulary, as
    scoring reads it (with a backward pass through both where ``training``)."""
    head = model.model.get_output_embeddings()
    hidden = torch.randn(1, tokens, model.d_model, device=head.weight.device,
                         dtype=model.dtype, requires_grad=training)

    def run() -> object:
        with torch.set_grad_enabled(training):
            logp = head(hidden).float().log_softmax(-1)
            if training:
                logp.mean().backward()
        return logp

    return run


def _line(small: tuple[float, float], large: tuple[float, float]) -> tuple[float, float]:
    """Per-call and per-token-layer seconds through two (token-layers per call, seconds per
    call) points; one point, or two that disagree, give a per-token-layer rate alone."""
    (t1, s1), (t2, s2) = small, large
    if t2 > t1:
        slope = (s2 - s1) / (t2 - t1)
        intercept = s1 - slope * t1
        if slope > 0 and intercept >= 0:
            return intercept, slope
    return 0.0, max(s1 / t1, s2 / t2)


def _shapes(work: Sequence[StageWork], largest: dict[str, tuple[int, int]],
            kind: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """A typical call of ``kind`` (the run's mean tokens per call, at the largest call's rows)
    and the largest; where the two are close, a quarter of the typical stands for the small."""
    calls = sum(w.layer_calls[kind] for w in work)
    mean = sum(w.token_layers[kind] for w in work) / calls
    rows, positions = largest[kind]
    if kind == "decoding":
        typical = (max(1, round(mean)), 1)
        return ((max(1, typical[0] // 4), 1) if typical[0] * 2 > rows else typical), (rows, 1)
    typical = (rows, max(1, math.ceil(mean / rows)))
    if typical[1] * 2 > positions:
        typical = (rows, max(1, positions // 4))
    return typical, (rows, positions)


def merged_copies(config: ExperimentConfig) -> int:
    """How many merged copies of the weights the run holds at once: one per LoRA arm (the plain
    arm's is kept for the combinations while the steered arm's is evaluated)."""
    lora = config.baselines.lora
    return 0 if lora is None else 1 + (lora.steered is not None)


def calibrate(model: ModelHandle, work: Sequence[StageWork],
              largest: dict[str, tuple[int, int]], merged: int = 0) -> Rates:
    """Price each kind of pass the work holds on ``model`` (see the module docstring): the head
    on its own first, then each kind of layer pass, less what its head cost; the peak memory
    with ``merged`` more copies of the weights (:func:`merged_copies`)."""
    started = time.perf_counter()
    device, n = model.device, model.n_layers
    if device.type == "cuda":
        for index in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(index)
    head = {kind: _seconds(model, _head(model, HEAD_TOKENS, kind == "training")) / HEAD_TOKENS
            for kind in HEAD_KINDS}
    per_call: dict[str, float] = {}
    per_token_layer: dict[str, float] = {}
    present = {kind for kind in KINDS if sum(w.layer_calls[kind] for w in work)}
    for kind in ("forward", "training", "decoding"):  # training's lower layers are forward
        if kind not in present and not (kind == "forward" and present):
            continue
        shapes = _shapes(work, largest, kind) if kind in present else ((1, 16), (1, 64))
        points = []
        for rows, positions in shapes:
            if kind == "forward":
                whole = _seconds(model, _forward(model, rows, positions))
                seconds = (whole - head["forward"] * rows * _head_positions(model, positions)) / n
            elif kind == "training":
                layer = n // 2
                whole = _seconds(model, _training(model, rows, positions, layer))
                below = (layer + 1) * (per_call["forward"]
                                       + per_token_layer["forward"] * rows * positions)
                whole -= below + head["training"] * rows * _head_positions(model, positions)
                seconds = whole / (n - layer - 1)
            else:
                prompt = max(1, largest.get("forward", (1, 32))[1] // 2)
                whole = _seconds(model, _decoding(model, rows, prompt)) / DECODE_STEPS
                seconds = (whole - head["forward"] * rows) / n
            points.append((rows * positions, max(seconds, 0.0)))
        per_call[kind], per_token_layer[kind] = _line(*points)
    if "training" in present:  # the most a backward pass keeps: every layer, every logit
        rows, positions = largest["training"]
        _training(model, rows, positions, 0, positions)()
    peak, source = peak_memory(device)
    if merged:
        peak += merged * sum(p.numel() * p.element_size() for p in model.model.parameters())
        source += (f", and {merged} cop{'y' if merged == 1 else 'ies'} of the weights for the "
                   "LoRA arms' merged models")
    return Rates(per_call, per_token_layer, head, peak, source, str(device),
                 str(model.dtype).removeprefix("torch."), time.perf_counter() - started)


def caveats(config: ExperimentConfig) -> list[str]:
    """What the estimate cannot know of this config before it runs."""
    notes = []
    evaluations = config.evaluations
    judged = [name for name, on in (("open-ended", evaluations.open_ended),
                                    ("concept", evaluations.concept)) if on]
    if judged:
        notes.append(f"Generation ({', '.join(judged)}) is counted to its token limit: an "
                     "upper bound where answers end early.")
        notes.append(f"Judging ({', '.join(judged)}) is not included.")
    if any(getattr(method, "patience", None) for method in config.methods.values()):
        notes.append("Early stopping is counted where the stand-in's validation stopped it.")
    return notes


def plan_run(config: ExperimentConfig, model: ModelHandle) -> Plan:
    """The plan of ``config`` on ``model``: its work counted on the model's stand-in, priced on
    the model itself."""
    started = time.perf_counter()
    work, largest = count_work(config, stand_in(model))
    counting = time.perf_counter() - started
    return Plan(work, calibrate(model, work, largest, merged_copies(config)), caveats(config),
                counting)


def kept_plan(run_dir: str | Path) -> Record | None:
    """The plan record a run directory's earlier invocation kept, if any (a resumed run shows
    and keeps the plan it started with)."""
    folder = Path(run_dir)
    if not folder.is_dir():
        return None
    return next((r for r in RunDir(folder).records() if r.get("task") == PLAN_TASK), None)

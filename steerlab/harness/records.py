"""lm-eval's per-sample log as steerlab records, so side effects, paired statistics and
`steerlab analyze` read harness results like any capability or text set.

For every multiplier of a sweep, lm-eval evaluates the tasks with the ``steerlab`` model type
steered at that multiplier; each multiple-choice document becomes an ``mc`` record (every
choice's log-likelihood, the prediction, the target) and each rolling-likelihood document a
``perplexity`` record (its summed log-likelihood and token count), under the dataset name
``harness:<task>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lm_eval import simple_evaluate

from steerlab.evaluation.likelihood import Sweep
from steerlab.harness.model import SteerlabLM
from steerlab.harness.task_paths import SteerlabTaskManager
from steerlab.records import Record, RecordWriter, emit

PREFIX = "harness:"
"""Records of lm-eval tasks name their dataset ``harness:<task>``."""


def _record(common: Record, sample: dict[str, Any], lm: SteerlabLM) -> Record:
    """One sample of lm-eval's log as a record: ``mc`` for a multiple-choice document,
    ``perplexity`` for a rolling log-likelihood one."""
    doc = sample["doc"]
    item = {**common, "item_id": str(doc.get("id", sample["doc_id"])) if isinstance(doc, dict)
            else str(sample["doc_id"])}
    if "acc" in sample:
        logprobs = [float(response[0]) for response in sample["filtered_resps"]]
        prediction = max(range(len(logprobs)), key=logprobs.__getitem__)
        return {**item, "task": "mc", "prompt": sample["arguments"][0][0],
                "choices": [argument[1] for argument in sample["arguments"]],
                "logprobs": logprobs, "prediction": prediction, "answer": int(sample["target"]),
                "correct": bool(sample["acc"]), "score": float(sample["acc"])}
    text = sample["arguments"][0][0]
    return {**item, "task": "perplexity", "logprob": float(sample["filtered_resps"][0]),
            "n_tokens": len(lm.tok_encode(text))}


def harness_records(
    lm: SteerlabLM,
    sweep: Sweep,
    tasks: Sequence[str],
    *,
    limit: int | None = None,
    num_fewshot: int | None = None,
    writer: RecordWriter | None = None,
) -> list[Record]:
    """Evaluate lm-eval ``tasks`` (steerlab's offline ones, or any lm-eval can load here) at
    every multiplier of ``sweep`` and at 0 (the baseline side effects are measured against);
    ``limit``: the first documents of each task, as lm-eval's ``--limit``. Records are written
    as each multiplier finishes."""
    if sweep.setting is None:
        raise ValueError("harness side effects need a steering setting to sweep")
    sweep = sweep.with_baseline()
    manager = SteerlabTaskManager()
    records: list[Record] = []
    for multiplier in sweep.multipliers:
        lm.steer(sweep.composition(multiplier))
        out = simple_evaluate(model=lm, tasks=list(tasks), limit=limit, num_fewshot=num_fewshot,
                              task_manager=manager, log_samples=True, bootstrap_iters=0)
        for task, samples in out["samples"].items():
            common = {"dataset": f"{PREFIX}{task}", "model": lm.handle.name,
                      **lm.handle.placement, **sweep.describe(),
                      "multiplier": float(multiplier)}
            records += emit([_record(common, sample, lm) for sample in samples], writer)
    return records

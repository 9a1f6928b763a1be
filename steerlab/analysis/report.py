"""Reports built from summary rows: a sweep plot, plain-words findings, and a Markdown file.

The words are computed from the numbers: a non-monotonic sweep or a shift inside the noise is
said to be so, never smoothed over.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

from steerlab.analysis.tables import markdown_table
from steerlab.evaluation.concept import (
    PROMPTING,
    ConceptResult,
    concept_groups,
    concept_table,
    concept_verdict,
)
from steerlab.evaluation.judges.concept import ASPECTS
from steerlab.records import ONE_ANSWER, answer_bias, bias_cells

matplotlib.use("Agg")
import matplotlib.pyplot as plt

TASK_LABELS = {"ab": "behaviour score P(matching answer)", "mc": "multiple-choice accuracy"}


def _series(rows: list[dict], task: str) -> list[dict]:
    return sorted((r for r in rows if r["task"] == task), key=lambda r: r["multiplier"])


def describe_trend(rows: list[dict], task: str) -> str:
    """One or two sentences on how a task's score moves with the multiplier, with its noise."""
    series = _series(rows, task)
    if len(series) < 2:
        return ""
    label = TASK_LABELS.get(task, task)
    scores = [r["score"] for r in series]
    steps = [b - a for a, b in zip(scores, scores[1:])]
    first, last = series[0], series[-1]
    span = (f"{first['score']:.3f} at ×{first['multiplier']:g} to "
            f"{last['score']:.3f} at ×{last['multiplier']:g}")
    if all(s > 0 for s in steps):
        shape = f"The {label} rises monotonically with the multiplier ({span})."
    elif all(s < 0 for s in steps):
        shape = f"The {label} falls monotonically as the multiplier grows ({span})."
    else:
        shape = f"The {label} is **not monotonic** in the multiplier ({span}; values " + ", ".join(
            f"{s:.3f}" for s in scores) + ")."
    zero = next((r for r in series if r["multiplier"] == 0), None)
    if zero is None:
        return shape
    biggest = max(series, key=lambda r: abs(r["score"] - zero["score"]))
    shift = biggest["score"] - zero["score"]
    noise = (biggest["score_se"] ** 2 + zero["score_se"] ** 2) ** 0.5
    ratio = abs(shift) / noise if noise > 0 else float("inf")
    verdict = "larger than" if ratio >= 2 else "within"
    return (
        f"{shape} The largest shift from unsteered is {shift:+.3f} (×{biggest['multiplier']:g}), "
        f"{ratio:.1f} standard errors: {verdict} the noise of {zero['n']} items."
    )


ONE_ANSWER_NOTE = [f"⚠: the setting predicts one answer on ≥ {ONE_ANSWER:.0%} of items, so its "
                   "accuracy measures that preference; debiased acc. removes the setting's "
                   "constant preference for each answer label (as `steerlab data inspect` does).",
                   ""]
"""The line under every likelihood table that carries the answer-bias columns."""


def one_answer_note(rows: list[dict]) -> list[str]:
    """:data:`ONE_ANSWER_NOTE` when a summary row's setting predicts (nearly) one answer."""
    flagged = any(r.get("answer_bias") and r["answer_bias"].one_answer for r in rows)
    return ONE_ANSWER_NOTE if flagged else []


def describe_answer_bias(records: list[dict]) -> str:
    """Warn when an A/B evaluation's unsteered predictions are (nearly) always the same answer.

    Then the behaviour score measures a preference for a letter, not the behaviour: the
    'matching chosen' rate sits at the dataset's letter balance whatever the steering does.
    """
    bias = answer_bias([r for r in records if r["task"] == "ab" and r["multiplier"] == 0])
    if bias is None or not bias.one_answer:
        return ""
    n = sum(r["task"] == "ab" and r["multiplier"] == 0 for r in records)
    return (
        f"**Answer bias:** unsteered, the model picks {bias.top!r} on {bias.share:.0%} of the "
        f"{n} A/B items whatever their content, so the A/B score here mostly measures "
        f"a letter preference (with that preference removed: {bias.debiased:.3f} matching). "
        "Judge the behaviour by the generations (or a larger model), not by this score."
    )


def findings(records: list[dict], rows: list[dict]) -> list[str]:
    """Every plain-words finding the numbers support, in report order."""
    texts = [describe_trend(rows, task) for task in TASK_LABELS] + [describe_answer_bias(records)]
    texts += [_on(dataset, arm) + concept_verdict(concept_table(group), name)
              for (name, dataset, arm), group in concept_groups(records).items()]
    return [t for t in texts if t]


def _on(dataset: str, arm: str) -> str:
    """The prompt set (and vector) a concept verdict speaks of, as its opening words."""
    where = ", ".join(part for part in (dataset, arm) if part)
    return f"On {where}: " if where else ""


def concept_section(records: list[dict], notes: Mapping[str, str] | None = None) -> list[str]:
    """Each concept's rate per multiplier and prompt set with its interval and the answers'
    perplexity under the unsteered model, and the detector that decided; ``notes``: a
    concept's words on why it was chosen, above its sections."""
    parts: list[str] = []
    noted: set[str] = set()
    for (name, dataset, arm), mine in concept_groups(records).items():
        rows = concept_table(mine)
        where = (f" on {dataset}" if dataset else "") + (f", {arm}" if arm else "")
        if notes and name in notes and name not in noted:
            noted.add(name)
            parts += [f"## Why {name}", "", notes[name], ""]
        parts += [f"## Concept: {name}{where} (open generation)", "",
                  f"Greedy answers to {len({r['item_id'] for r in mine})} held-out prompts at "
                  f"each multiplier; detector: {mine[0]['detector']}. Intervals are 90% Wilson; "
                  "perplexity is of the answers under the unsteered model; distinct words is "
                  "each answer's share of words it does not repeat (low: looping text).", "",
                  *markdown_table(["multiplier", "shows the concept", "90% interval",
                                   "perplexity", "distinct words"],
                                  [[f"{r.multiplier:g}", f"{r.rate.estimate:.0%}",
                                    f"[{r.rate.lower:.0%}, {r.rate.upper:.0%}]",
                                    f"{r.perplexity:.1f}", f"{r.distinct:.2f}"] for r in rows]),
                  _on(dataset, arm) + concept_verdict(rows, name), ""]
    return parts


def sweep_plot(rows: list[dict], path: Path) -> Path:
    """Plot every task's score against the multiplier, with ±1 standard-error bars."""
    tasks = [t for t in TASK_LABELS if _series(rows, t)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        series = _series(rows, task)
        ax.errorbar(
            [r["multiplier"] for r in series], [r["score"] for r in series],
            yerr=[r["score_se"] for r in series], marker="o", capsize=3,
        )
        ax.axvline(0, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("multiplier")
        ax.set_ylabel(TASK_LABELS[task])
        ax.set_title(f"{series[0]['dataset']} (n={series[0]['n']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sweep_table(rows: list[dict]) -> list[str]:
    """The summary rows of a likelihood sweep as a Markdown table."""
    return markdown_table(
        ["task", "dataset", "vector", "layers", "multiplier", "n", "score ± se",
         "matching/correct", "top answer", "debiased acc."],
        [[r["task"], str(r["dataset"]), str(r["vector_id"]), str(r["layers"]),
          f"{r['multiplier']:g}", str(r["n"]), f"{r['score']:.3f} ± {r['score_se']:.3f}",
          f"{r['correct']:.3f}", *bias_cells(r)] for r in rows],
    ) + one_answer_note(rows)


def write_report(
    out_dir: Path,
    records: list[dict],
    rows: list[dict],
    prompts: list[str],
    generations: dict[str, list[str]],
    title: str,
    details: dict[str, Any],
    concept_notes: Mapping[str, str] | None = None,
) -> Path:
    """Write ``report.md`` and ``sweep.png`` into ``out_dir``; return the report's path
    (``concept_notes``: see :func:`concept_section`)."""
    out_dir = Path(out_dir)
    sweep_plot(rows, out_dir / "sweep.png")
    parts = [
        f"# {title}", "",
        "## Findings", "",
        *[f"- {f}" for f in findings(records, rows)], "",
        "Scores are likelihood-based (no sampling). Standard errors are per setting over items; "
        "they are not paired differences, so treat the comparisons as indicative.", "",
        "## Multiplier sweep", "", "![sweep](sweep.png)", "", *sweep_table(rows),
        *concept_section(records, concept_notes),
        "## Generations (greedy)", "",
    ]
    for index, prompt in enumerate(prompts):
        parts += [f"**Prompt:** {prompt}", ""]
        parts += [f"- *{label}*: {texts[index]!r}" for label, texts in generations.items()]
        parts.append("")
    parts += ["## Run details", "", "```json", json.dumps(details, indent=2, default=str), "```",
              ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def concept_judged_section(result: ConceptResult, plot: Path) -> list[str]:
    """AxBench's protocol for one concept: the factor curve on both halves of the instructions
    (``plot``), the factor chosen on the selecting half, and the reporting half's scores beside
    the prompting baseline with 90% intervals."""
    steered = [r for r in result.rows if r.arm == result.arm]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for half in ("select", "report"):
        mine = [r for r in steered if r.half == half]
        ax.plot([r.factor for r in mine], [r.score for r in mine], marker="o",
                label=f"{result.arm} ({half} half)")
    for row in (r for r in result.rows if r.arm == PROMPTING):
        ax.axhline(row.score, ls=":" if row.half == "select" else "--", color="grey",
                   label=f"prompting ({row.half} half)")
    ax.set_xlabel("steering factor")
    ax.set_ylabel("score (harmonic mean, 0-2)")
    ax.set_title(f"{result.concept}: {result.arm}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(plot, dpi=120)
    plt.close(fig)
    lines = [f"## Concept steering, AxBench's protocol: {result.concept}, {result.arm}", "",
             f"![factor curve]({plot.name})", "",
             *markdown_table(["arm", "factor", "half", "n", "unreadable", "score",
                              *[f"{a} (0-2)" for a in ASPECTS]],
                             [[r.arm, f"{r.factor:g}" if r.arm == result.arm else "-", r.half,
                               str(r.n), str(r.unreadable), f"{r.score:.3f}",
                               *[f"{r.ratings[a]:.2f}" for a in ASPECTS]]
                              for r in result.rows])]
    if result.factor is None:
        return [*lines, "No factor could be chosen: every selecting-half answer was unreadable.",
                ""]
    cell = lambda m: m.cell(".3f") if m is not None else "-"  # noqa: E731
    return [*lines, f"Factor chosen on the selecting half: **×{result.factor:g}**. Reporting "
            f"half (90% intervals): {result.arm} {cell(result.steered)}; prompting "
            f"{cell(result.prompting)}; {result.arm} − prompting "
            f"{result.difference.cell('+.3f') if result.difference else '-'}.", ""]

"""Reports built from summary rows: a sweep plot, plain-words findings, and a Markdown file.

The words are computed from the numbers: a non-monotonic sweep or a shift inside the noise is
said to be so, never smoothed over.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from statistics import fmean
from typing import Any

import matplotlib
import yaml

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
    span = f"{first['score']:.3f} at ×{first['multiplier']:g} to {last['score']:.3f} at ×{last['multiplier']:g}"
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


def describe_answer_bias(records: list[dict], threshold: float = 0.9) -> str:
    """Warn when an A/B evaluation's unsteered predictions are (nearly) always the same answer.

    Then the behaviour score measures a preference for a letter, not the behaviour: the
    'matching chosen' rate sits at the dataset's letter balance whatever the steering does.
    """
    picked = [r["choices"][r["prediction"]] for r in records if r["task"] == "ab" and r["multiplier"] == 0]
    if not picked:
        return ""
    common = max(set(picked), key=picked.count)
    share = picked.count(common) / len(picked)
    if share < threshold:
        return ""
    return (
        f"**Answer bias:** unsteered, the model picks {common!r} on {share:.0%} of the "
        f"{len(picked)} A/B items whatever their content, so the A/B score here mostly measures "
        "a letter preference. Judge the behaviour by the generations (or a larger model), not "
        "by this score."
    )


def findings(records: list[dict], rows: list[dict]) -> list[str]:
    """Every plain-words finding the numbers support, in report order."""
    texts = [describe_trend(rows, task) for task in TASK_LABELS] + [describe_answer_bias(records)]
    return [t for t in texts if t]


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


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown table as lines (then a blank line); a ``|`` inside a cell (an arm such as
    ``caa|cond``) is escaped so it stays in its cell."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return [line(header), "|" + "---|" * len(header), *(line(row) for row in rows), ""]


def sweep_table(rows: list[dict]) -> list[str]:
    """The summary rows of a likelihood sweep as a Markdown table."""
    return markdown_table(
        ["task", "dataset", "vector", "layers", "multiplier", "n", "score ± se", "matching/correct"],
        [[r["task"], str(r["dataset"]), str(r["vector_id"]), str(r["layers"]), f"{r['multiplier']:g}",
          str(r["n"]), f"{r['score']:.3f} ± {r['score_se']:.3f}", f"{r['correct']:.3f}"] for r in rows],
    )


def write_report(
    out_dir: Path,
    records: list[dict],
    rows: list[dict],
    prompts: list[str],
    generations: dict[str, list[str]],
    title: str,
    details: dict[str, Any],
) -> Path:
    """Write ``report.md`` and ``sweep.png`` into ``out_dir``; return the report's path."""
    out_dir = Path(out_dir)
    sweep_plot(rows, out_dir / "sweep.png")
    parts = [
        f"# {title}", "",
        "## Findings", "",
        *[f"- {f}" for f in findings(records, rows)], "",
        "Scores are likelihood-based (no sampling). Standard errors are per setting over items; "
        "they are not paired differences, so treat the comparisons as indicative.", "",
        "## Multiplier sweep", "", "![sweep](sweep.png)", "", *sweep_table(rows),
        "## Generations (greedy)", "",
    ]
    for index, prompt in enumerate(prompts):
        parts += [f"**Prompt:** {prompt}", ""]
        parts += [f"- *{label}*: {texts[index]!r}" for label, texts in generations.items()]
        parts.append("")
    parts += ["## Run details", "", "```json", json.dumps(details, indent=2, default=str), "```", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


# ---- experiment reports (`steerlab run`) ------------------------------------------------------


def html_page(markdown_text: str, folder: Path, title: str) -> str:
    """The Markdown as one self-contained HTML page: tables rendered, PNG plots embedded."""
    import base64
    import html
    import re

    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables", "fenced_code"])

    def embed(match: re.Match) -> str:
        path = folder / html.unescape(match.group(1))
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="([^":]+\.png)"', embed, body)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}'
            f"</title><style>{PAGE_STYLE}</style></head><body>\n{body}\n</body></html>\n")


PAGE_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;"
    "color:#1d1d1f;line-height:1.45}h1{border-bottom:2px solid #ddd}h2{margin-top:2rem;"
    "border-bottom:1px solid #eee}table{border-collapse:collapse;margin:.8rem 0;font-size:.88rem}"
    "th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:left;vertical-align:top}"
    "th{background:#f3f3f3}img{max-width:100%}pre{background:#f6f6f6;padding:.8rem;"
    "overflow-x:auto;font-size:.8rem}"
)


def _advantage_cell(advantage: Any) -> str:
    if advantage is None:
        return "-"
    return (f"{advantage.mean:+.3f} [{advantage.lower:+.3f}, {advantage.upper:+.3f}], "
            f"P(>0) {advantage.prob_positive:.2f}")


def _setting(selection: Any) -> str:
    if selection.vector_id is None:
        return "-"
    return f"layer {','.join(map(str, selection.layers))}, ×{selection.multiplier:g}"


def sample_efficiency_plot(points: list, reference: float | None, path: Path) -> Path:
    """Test accuracy against the number of examples: every point with its 90% interval, one
    line per family through the mean over seeds at each size."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for family in dict.fromkeys(p.family for p in points):
        series = sorted((p for p in points if p.family == family), key=lambda p: p.n)
        estimates = [p.accuracy.estimate for p in series]
        errors = [[e - p.accuracy.lower for e, p in zip(estimates, series)],
                  [p.accuracy.upper - e for e, p in zip(estimates, series)]]
        line = ax.errorbar([p.n for p in series], estimates, yerr=errors, marker="o", ls="none",
                           capsize=3, alpha=0.6)
        by_size: dict[int, list[float]] = defaultdict(list)  # sizes ascending, as the series
        for p in series:
            by_size[p.n].append(p.accuracy.estimate)
        ax.plot(list(by_size), [fmean(v) for v in by_size.values()], color=line.lines[0].get_color(),
                label=family)
    if reference is not None:
        ax.axhline(reference, color="grey", ls=":", label="unsteered")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training examples (pairs for a vector, shots for prompting)")
    ax.set_ylabel("test accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def validation_sweep_plot(records: list[dict], arms: list[str], val_dataset: str, path: Path,
                          reference: float | None = None) -> Path:
    """Validation accuracy against the multiplier for each steered arm, one line per layer, with
    the unsteered model's validation accuracy as a reference line."""
    from collections import defaultdict

    fig, axes = plt.subplots(1, len(arms), figsize=(4.2 * len(arms), 3.4), squeeze=False)
    for ax, arm in zip(axes[0], arms):
        cells: dict[tuple, list[bool]] = defaultdict(list)
        for r in records:
            if r.get("arm") == arm and r.get("dataset") == val_dataset and r.get("task") in ("mc", "ab"):
                cells[(tuple(r["layers"] or ()), float(r["multiplier"]))].append(bool(r["correct"]))
        for layers in sorted({layer for layer, _ in cells}):
            series = sorted((m, sum(v) / len(v)) for (lay, m), v in cells.items() if lay == layers)
            ax.plot([m for m, _ in series], [a for _, a in series], marker="o",
                    label=f"layer {','.join(map(str, layers))}")
        if reference is not None:
            ax.axhline(reference, color="grey", ls=":", label="unsteered")
        ax.set_title(arm)
        ax.set_xlabel("multiplier")
        ax.set_ylabel("validation accuracy")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def compute_section(records: list[dict], n_layers: int | None) -> list[str]:
    """Wall time and token-layers per stage (summed over invocations), beside what per-choice
    full-pass scoring of the same likelihood records would need."""
    from collections import defaultdict

    from steerlab.compute import naive_token_layers

    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for record in records:
        if record.get("task") == "compute":
            totals[record["stage"]][0] += record["seconds"]
            totals[record["stage"]][1] += record["token_layers"]
    if not totals:
        return []
    invocations = len({r["invocation"] for r in records if r.get("task") == "compute"})
    seconds = sum(t[0] for t in totals.values())
    measured = sum(int(t[1]) for t in totals.values())
    lines = ["## Compute", "",
             f"Stage one took **{seconds / 60:.1f} min** of wall time over {invocations} invocation(s) "
             f"and processed {measured:,} token-layers (one decoder layer applied to one token "
             "position, padding included) for everything: training, generation and scoring."]
    if n_layers:
        naive = naive_token_layers(records, n_layers)
        lines[-1] += (f" Scoring the likelihood records alone the plain way — each choice of each "
                      f"item in its own full pass — would need {naive:,} token-layers "
                      f"({naive / max(measured, 1):.1f}× what the whole run used).")
    lines.append("")
    lines += markdown_table(["stage", "wall time (s)", "token-layers"],
                            [[stage, f"{t[0]:.0f}", f"{int(t[1]):,}"] for stage, t in totals.items()])
    return lines


def experiment_report(run_dir: str | Path, records: list[dict]) -> tuple[Path, Path]:
    """Write ``report.md`` and the self-contained ``report.html`` of a `steerlab run` into
    ``run_dir``, from its records alone; return both paths."""
    from steerlab.analysis import analyze, sections
    from steerlab.comparison import (
        BASE,
        arm_kinds,
        experiment_record,
        headline,
        sample_efficiency,
        verdict,
    )

    out = Path(run_dir)
    info = experiment_record(records)
    head = headline(records)
    kinds = arm_kinds(records)
    arm_info = {r["arm"]: r for r in records if r.get("task") == "arm"}
    n_test = head.detectable.n
    title = f"{info['name']}: steering against baselines on {info['model']}"
    lines = [f"# {title}", "",
             f"Validation set **{head.val_dataset}** ({info['val_n']} items) chooses every arm's "
             f"setting and the best baseline; test set **{head.test_dataset}** ({info['test_n']} "
             f"items) reports. Training pairs: {info['train_n']}. Accuracy is by model likelihood; "
             "intervals are 90% (Wilson for accuracies, Dirichlet posterior for paired advantages).", ""]
    lines += ["## Verdicts", ""]
    steered = [r for r in head.rows if kinds[r.arm] in ("method", "combination", "conditional")]
    for row in steered:
        for other, advantage in ((BASE, row.versus_base), (head.best_baseline, row.versus_best_baseline)):
            if other is not None and advantage is not None:
                lines.append(f"- {verdict(row, other, advantage, n_test)}")
    if head.best_baseline is not None:
        best = head.row(head.best_baseline)
        lines.append(f"- The best baseline by validation accuracy is **{head.best_baseline}** "
                     f"(validation {best.selection.accuracy:.3f}, test {best.test.estimate:.3f}).")
    lines += [f"- {head.detectable}: differences smaller than that are not reliably seen with "
              "this test set.", ""]
    lines += ["## Headline (test set)", ""]
    lines += markdown_table(
        ["arm", "kind", "setting (chosen on validation)", "validation acc.", "test acc.", "90% interval",
         "vs unsteered: advantage [90%], P(>0)", f"vs best baseline ({head.best_baseline or '-'})"],
        [[r.arm, r.kind, _setting(r.selection), f"{r.selection.accuracy:.3f}", f"{r.test.estimate:.3f}",
          f"[{r.test.lower:.3f}, {r.test.upper:.3f}]", _advantage_cell(r.versus_base),
          _advantage_cell(r.versus_best_baseline)] for r in head.rows],
    )
    if "lora" in arm_info and "trainable_parameters" in arm_info["lora"]:
        lora = arm_info["lora"]
        vector_size = next((arm_info[r.arm]["trainable_parameters"] for r in steered
                            if "trainable_parameters" in arm_info.get(r.arm, {})), None)
        ratio = f" — {lora['trainable_parameters'] / vector_size:,.0f}× a vector's {vector_size}" if vector_size else ""
        lines += [f"LoRA: {lora['trainable_parameters']:,} trainable parameters{ratio}; kept the "
                  f"checkpoint of step {lora['best_step']} (validation loss {lora['best_val_loss']:.4f}).", ""]
    cuts = {r.get("context_cut") for r in arm_info.values() if r.get("kind") == "prompting" and r.get("shots")}
    if cuts - {None}:
        lines += [f"k-shot: k = {min(cuts - {None})} did not fit the model's context and was not run.", ""]
    points = sample_efficiency(records)
    if points:
        reference = head.row(BASE).test.estimate if BASE in kinds else None
        sample_efficiency_plot(points, reference, out / "sample_efficiency.png")
        lines += ["## Sample efficiency", "", "![sample efficiency](sample_efficiency.png)", ""]
        lines += markdown_table(["family", "examples", "seed", "test acc.", "90% interval"],
                        [[p.family, str(p.n), "-" if p.seed is None else str(p.seed),
                          f"{p.accuracy.estimate:.3f}", f"[{p.accuracy.lower:.3f}, {p.accuracy.upper:.3f}]"]
                         for p in points])
    swept = [r.arm for r in head.rows if r.selection.tried > 1]
    if swept:
        validation_sweep_plot(records, swept, head.val_dataset, out / "validation_sweep.png",
                              head.row(BASE).selection.accuracy if BASE in kinds else None)
        lines += ["## Multiplier sweep (validation)", "", "![validation sweep](validation_sweep.png)", ""]
    labels = {r.selection.vector_id: r.arm for r in head.rows if r.kind == "method"}
    labels |= {f"{r.selection.vector_id} if {arm_info[r.arm]['condition']['id']}": r.arm
               for r in head.rows if r.kind == "conditional"}
    held_out = [r for r in records if r.get("dataset") != head.val_dataset]  # validation only selects
    lines += sections(analyze(held_out), out, sweep=False, labels=labels)
    lines += compute_section(records, info.get("n_layers"))
    config = next((r for r in records if r.get("task") == "experiment"), {})
    lines += ["## Config and versions", "", "```yaml",
              yaml.safe_dump({"config": config.get("config"), "versions": config.get("versions")},
                             sort_keys=False, default_flow_style=None, width=100).rstrip(),
              "```", ""]
    markdown_text = "\n".join(lines)
    markdown_path, html_path = out / "report.md", out / "report.html"
    markdown_path.write_text(markdown_text, encoding="utf-8")
    html_path.write_text(html_page(markdown_text, out, title), encoding="utf-8")
    return markdown_path, html_path

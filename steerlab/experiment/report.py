"""The experiment report of `steerlab run` (stage two): ``report.md`` and one self-contained
``report.html`` with the plots embedded, computed from a run's records alone (the headline and
verdicts from :mod:`steerlab.analysis.comparison`, every other section from
:mod:`steerlab.analysis.run_analysis`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from statistics import fmean
from typing import Any

import matplotlib
import yaml

from steerlab.analysis.comparison import (
    BASE,
    PLAN_TASK,
    TRAINING_TASK,
    ArmResult,
    Headline,
    arm_kinds,
    experiment_record,
    headline,
    sample_efficiency,
    verdict,
)
from steerlab.analysis.page import html_page
from steerlab.analysis.report import ONE_ANSWER_NOTE
from steerlab.analysis.run_analysis import analyze, sections
from steerlab.analysis.tables import markdown_table
from steerlab.evaluation.side_effects import SideEffect
from steerlab.experiment.compute import KINDS, naive_token_layers
from steerlab.records import bias_cells, placements

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)


def _advantage_cell(advantage: Any) -> str:
    if advantage is None:
        return "-"
    return (f"{advantage.mean:+.3f} [{advantage.lower:+.3f}, {advantage.upper:+.3f}], "
            f"P(>0) {advantage.prob_positive:.2f}")


def _setting(selection: Any) -> str:
    if selection.vector_id is None:
        return "-"
    return f"layer {','.join(map(str, selection.layers))}, ×{selection.multiplier:g}"


def _accuracy_cell(row: ArmResult) -> str:
    """Test accuracy with its interval, flagged with the answer when the arm predicts (nearly)
    one answer on every item."""
    cell = f"{row.test.estimate:.3f} [{row.test.lower:.3f}, {row.test.upper:.3f}]"
    return cell + (f" {row.bias.describe()}" if row.one_answer() and row.bias else "")


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
        ax.plot(list(by_size), [fmean(v) for v in by_size.values()],
                color=line.lines[0].get_color(), label=family)
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
    fig, axes = plt.subplots(1, len(arms), figsize=(4.2 * len(arms), 3.4), squeeze=False)
    for ax, arm in zip(axes[0], arms):
        cells: dict[tuple, list[bool]] = defaultdict(list)
        for r in records:
            if (r.get("arm") == arm and r.get("dataset") == val_dataset
                    and r.get("task") in ("mc", "ab")):
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
    """Wall time and token-layers per stage (summed over invocations; by kind where the records
    say), beside what per-choice full-pass scoring of the same likelihood records would need."""
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    by_kind: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(KINDS, 0))
    for record in records:
        if record.get("task") == "compute":
            totals[record["stage"]][0] += record["seconds"]
            totals[record["stage"]][1] += record["token_layers"]
            for kind, count in record.get("token_layers_by_kind", {}).items():
                by_kind[record["stage"]][kind] += count
    if not totals:
        return []
    invocations = len({r["invocation"] for r in records if r.get("task") == "compute"})
    seconds = sum(t[0] for t in totals.values())
    measured = sum(int(t[1]) for t in totals.values())
    lines = ["## Compute", "",
             f"Stage one took **{seconds / 60:.1f} min** of wall time over {invocations} "
             "invocation(s) "
             f"and processed {measured:,} token-layers (one decoder layer applied to one token "
             "position, padding included) for everything: training, generation and scoring."]
    if n_layers:
        naive = naive_token_layers(records, n_layers)
        lines[-1] += (f" Scoring the likelihood records alone the plain way — each choice of each "
                      f"item in its own full pass — would need {naive:,} token-layers "
                      f"({naive / max(measured, 1):.1f}× what the whole run used).")
    if by_kind:
        lines[-1] += (" By kind: training (layers a backward pass also runs through), decoding "
                      "(one new token per sequence from a KV cache) and forward (scoring, "
                      "prefill).")
    plan = next((r for r in records if r.get("task") == PLAN_TASK), None)
    estimates = plan["estimates"] if plan else {}
    if plan:
        lines[-1] += (f" Before it started, the plan (each stage's work counted on a stand-in of "
                      f"the model, priced by timing a few passes on {plan['rates']['device']} in "
                      f"{plan['rates']['dtype']}) estimated **{plan['total'] / 60:.1f} min**; the "
                      f"run took {seconds / max(plan['total'], 1e-9):.2f}× the estimate.")
        peak = max((r.get("peak_bytes", 0) for r in records if r.get("task") == "compute"),
                   default=0)
        if peak:
            lines[-1] += (f" Peak memory {peak / 2**30:.1f} GiB; the plan expected "
                          f"{plan['rates']['peak_bytes'] / 2**30:.1f} GiB "
                          f"({plan['rates']['peak_source']}).")
    lines.append("")
    kinds = [f"{kind} token-layers" for kind in KINDS] if by_kind else []
    lines += markdown_table(
        ["stage", "wall time (s)", *(["estimated (s)"] if plan else []), "token-layers", *kinds],
        [[stage, f"{t[0]:.0f}", *([f"{estimates.get(stage, 0):.0f}"] if plan else []),
          f"{int(t[1]):,}",
          *([f"{by_kind[stage][kind]:,}" if stage in by_kind else "-" for kind in KINDS]
            if by_kind else [])]
         for stage, t in totals.items()])
    return lines


def leaderboard_section(records: list[dict], head: Headline,
                        effects: Sequence[SideEffect] = ()) -> list[str]:
    """The trained methods ranked by test accuracy, beside the best baseline, with the side
    effects of each one's chosen setting (perplexity and capability change, where measured)
    and what training it cost (from its training record)."""
    cost = {r["arm"]: r for r in records if r.get("task") == TRAINING_TASK}

    def effect(row: Any, metric: str) -> str:
        chosen = row.selection
        found = [e for e in effects if e.metric == metric and e.setting == chosen.vector_id
                 and e.multiplier == chosen.multiplier]
        return ", ".join(f"{e.change:+.0%}" if metric == "perplexity" else f"{e.change:+.3f}"
                         for e in found) or "-"

    methods = sorted((r for r in head.rows if r.arm in cost),
                     key=lambda r: (-r.test.estimate, r.arm))
    if len(methods) < 2:
        return []
    rows = [[str(rank), r.arm, cost[r.arm]["method"], _setting(r.selection), _accuracy_cell(r),
             _advantage_cell(r.versus_base), _advantage_cell(r.versus_best_baseline),
             effect(r, "perplexity"), effect(r, "accuracy"),
             f"{cost[r.arm]['seconds']:.0f}", f"{cost[r.arm]['token_layers']:,}"]
            for rank, r in enumerate(methods, 1)]
    if head.best_baseline is not None:
        best = head.row(head.best_baseline)
        rows.append(["-", best.arm, best.kind, _setting(best.selection), _accuracy_cell(best),
                     _advantage_cell(best.versus_base), "-", "-", "-", "-", "-"])
    return ["## Method leaderboard (test set)", "",
            "Each method at its validation-selected setting; side effects at that setting "
            "(perplexity: held-out text's perplexity ratio − 1; capability: accuracy change, one "
            "figure per capability set); training cost is the wall time and token-layers of "
            "training its vectors at every candidate layer (the first invocation's).", "",
            *markdown_table(["rank", "arm", "method", "setting", "test acc. [90%]",
                             "vs unsteered", f"vs best baseline ({head.best_baseline or '-'})",
                             "perplexity", "capability", "training (s)",
                             "training token-layers"], rows), ""]


def experiment_report(run_dir: str | Path, records: list[dict]) -> tuple[Path, Path]:
    """Write ``report.md`` and the self-contained ``report.html`` of a `steerlab run` into
    ``run_dir``, from its records alone; return both paths."""
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
             "intervals are 90% (Wilson for accuracies, Dirichlet posterior for paired "
             f"advantages). Computed on: {placements(records)}.", ""]
    lines += ["## Verdicts", ""]
    if head.uninformative():
        lines += [head.uninformative(), ""]
    steered = [r for r in head.rows if kinds[r.arm] in ("method", "combination", "conditional")]
    for row in steered:
        for other, advantage in ((BASE, row.versus_base),
                                 (head.best_baseline, row.versus_best_baseline)):
            if other is not None and advantage is not None:
                lines.append(f"- {verdict(row, head.row(other), advantage, n_test)}")
    if head.best_baseline is not None:
        best = head.row(head.best_baseline)
        tie = (f"; tied on validation with {', '.join(head.best_tied_with)}, so picked by a "
               "tie-break (the shortest name, then the run's order): the comparisons against it "
               "rest on that choice"
               if head.best_tied_with else "")
        lines.append(f"- The best baseline by validation accuracy is **{head.best_baseline}** "
                     f"(validation {best.selection.accuracy:.3f}, test {best.test.estimate:.3f}"
                     f"{tie}).")
    lines += [f"- {head.detectable}: differences smaller than that are not reliably seen with "
              "this test set.", ""]
    lines += ["## Headline (test set)", ""]
    if head.uninformative():
        lines += [head.uninformative(), ""]
    lines += markdown_table(
        ["arm", "kind", "setting (chosen on validation)", "validation acc.", "test acc.",
         "90% interval", "vs unsteered: advantage [90%], P(>0)",
         f"vs best baseline ({head.best_baseline or '-'})", "top answer", "debiased acc."],
        [[r.arm, r.kind, _setting(r.selection), f"{r.selection.accuracy:.3f}",
          f"{r.test.estimate:.3f}", f"[{r.test.lower:.3f}, {r.test.upper:.3f}]",
          _advantage_cell(r.versus_base), _advantage_cell(r.versus_best_baseline),
          *(bias_cells({"answer_bias": r.bias}))] for r in head.rows],
    ) + (ONE_ANSWER_NOTE if any(r.one_answer() for r in head.rows) else [])
    found = analyze([r for r in records
                     if r.get("dataset") != head.val_dataset])  # validation only selects
    lines += leaderboard_section(records, head, found.side_effects)
    if "lora" in arm_info and "trainable_parameters" in arm_info["lora"]:
        lora = arm_info["lora"]
        vector_size = next((arm_info[r.arm]["trainable_parameters"] for r in steered
                            if "trainable_parameters" in arm_info.get(r.arm, {})), None)
        ratio = (f" — {lora['trainable_parameters'] / vector_size:,.0f}× a vector's {vector_size}"
                 if vector_size else "")
        lines += [f"LoRA: {lora['trainable_parameters']:,} trainable parameters{ratio}; kept the "
                  f"checkpoint of step {lora['best_step']} "
                  f"(validation loss {lora['best_val_loss']:.4f}).", ""]
    cuts = {r.get("context_cut") for r in arm_info.values()
            if r.get("kind") == "prompting" and r.get("shots")}
    if cuts - {None}:
        lines += [f"k-shot: k = {min(cuts - {None})} did not fit the model's context and was "
                  "not run.", ""]
    points = sample_efficiency(records)
    if points:
        reference = head.row(BASE).test.estimate if BASE in kinds else None
        sample_efficiency_plot(points, reference, out / "sample_efficiency.png")
        lines += ["## Sample efficiency", "", "![sample efficiency](sample_efficiency.png)", ""]
        lines += markdown_table(["family", "examples", "seed", "test acc.", "90% interval"],
                        [[p.family, str(p.n), "-" if p.seed is None else str(p.seed),
                          f"{p.accuracy.estimate:.3f}",
                          f"[{p.accuracy.lower:.3f}, {p.accuracy.upper:.3f}]"]
                         for p in points])
    swept = [r.arm for r in head.rows if r.selection.tried > 1]
    if swept:
        validation_sweep_plot(records, swept, head.val_dataset, out / "validation_sweep.png",
                              head.row(BASE).selection.accuracy if BASE in kinds else None)
        lines += ["## Multiplier sweep (validation)", "",
                  "![validation sweep](validation_sweep.png)", ""]
    labels = {r.selection.vector_id: r.arm for r in head.rows if r.kind == "method"}
    labels |= {f"{r.selection.vector_id} if {arm_info[r.arm]['condition']['id']}": r.arm
               for r in head.rows if r.kind == "conditional"}
    lines += sections(found, out, sweep=False, labels=labels)
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

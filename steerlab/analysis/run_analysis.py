"""Stage two of every experiment: tables and plots recomputed from records alone.

:func:`analyze` reads nothing but records; :func:`write_analysis` renders what it found into a
run directory as ``analysis.md`` with PNG plots. Each section appears only when the records
hold its kind: likelihood sweeps (A/B, multiple choice), composition grids, side effects,
steerability, head-to-head verdicts, 1-4 ratings, refusal rates.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from steerlab.analysis.grid import (
    GridCell,
    grid_cells,
    grid_table,
    is_grid_record,
    plot_grid,
)
from steerlab.analysis.reliability import (
    SETTING_KEYS,
    Steerability,
    plot_steerability,
    steerability,
)
from steerlab.analysis.report import concept_judged_section, sweep_plot, sweep_table
from steerlab.analysis.tables import markdown_table
from steerlab.evaluation.concept import ConceptResult, concept_result
from steerlab.evaluation.judges.verdicts import (
    Agreement,
    HeadToHead,
    RatingSummary,
    rater_agreement,
    summarize_head_to_head,
    summarize_ratings,
)
from steerlab.evaluation.refusal import RefusalRate, summarize_refusals
from steerlab.evaluation.side_effects import SideEffect, capability_records, side_effects_table
from steerlab.records import Record, placements, summarize


@dataclass
class Analysis:
    """Everything the records say, one list per kind of table."""

    sweep: list[Record] = field(default_factory=list)
    composition: list[GridCell] = field(default_factory=list)
    side_effects: list[SideEffect] = field(default_factory=list)
    steerability: list[Steerability] = field(default_factory=list)
    head_to_head: list[HeadToHead] = field(default_factory=list)
    ratings: list[RatingSummary] = field(default_factory=list)
    refusals: list[RefusalRate] = field(default_factory=list)
    concepts: list[ConceptResult] = field(default_factory=list)
    agreement: list[Agreement] = field(default_factory=list)


def _swept(records: list[Record]) -> list[Record]:
    """Steered A/B records of settings evaluated at two or more multipliers (slopes need two)."""
    multipliers: dict[str, set[float]] = defaultdict(set)
    steered = [r for r in records if r.get("task") == "ab" and r.get("vector_id") is not None
               and not is_grid_record(r)]
    for record in steered:
        multipliers[json.dumps([record.get(k) for k in SETTING_KEYS])].add(
            float(record["multiplier"]))
    return [r for r in steered
            if len(multipliers[json.dumps([r.get(k) for k in SETTING_KEYS])]) > 1]


def analyze(records: list[Record]) -> Analysis:
    """Recompute every table from ``records`` (as read from a run's ``records.jsonl``)."""
    likelihood = [r for r in records if r.get("task") in ("ab", "mc") and not is_grid_record(r)]
    with_baseline = [r for r in records if r.get("task") in ("perplexity", "kl")]
    capability = capability_records(likelihood)
    return Analysis(
        sweep=summarize(likelihood),
        composition=grid_cells(records),
        side_effects=(side_effects_table(capability + with_baseline)
                      if capability or with_baseline else []),
        steerability=steerability(swept) if (swept := _swept(records)) else [],
        head_to_head=summarize_head_to_head(records),
        ratings=summarize_ratings(records),
        refusals=summarize_refusals(records),
        concepts=concept_result(records),
        agreement=rater_agreement(records),
    )


def write_analysis(run_dir: str | Path, records: list[Record]) -> Path:
    """Write ``analysis.md`` (and its plots) into ``run_dir``; return its path."""
    out = Path(run_dir)
    parts = [f"# Analysis of {out}", "", (f"{len(records)} records; every figure below is "
             "recomputed from them (`steerlab analyze` again gives the same). Computed on: "
             f"{placements(records)}."), ""]
    parts += sections(analyze(records), out)
    path = out / "analysis.md"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def sections(found: Analysis, out: Path, sweep: bool = True,
             labels: dict[str | None, str] | None = None) -> list[str]:
    """Markdown sections for every table the analysis found (plots written into ``out``);
    ``sweep=False`` leaves out the raw likelihood sweep (reports that plot it their own way);
    ``labels`` names settings (a vector's id, or ``"<vector id> if <condition id>"`` for
    conditional steering) by the experiment arm they belong to."""
    parts: list[str] = []
    if found.sweep and sweep:
        sweep_plot(found.sweep, out / "sweep.png")
        parts += ["## Likelihood sweep (mean ± standard error)", "", "![sweep](sweep.png)", ""]
        parts += sweep_table(found.sweep)
    if found.composition:
        plot_grid(found.composition, out / "composition.png")
        title = ("## Composition grid (mean score; rows: first vector's multiplier, "
                 "columns: second's)")
        parts += [title, "", "![composition](composition.png)", ""]
        parts += grid_table(found.composition)
    if found.side_effects:
        parts += ["## Side effects (steered against unsteered, 90% intervals)", ""]
        parts += markdown_table(
            ["metric", "dataset", "vector", "multiplier", "n", "unsteered", "steered", "change",
             "interval", "note"],
            [[s.metric, s.dataset, (labels or {}).get(s.setting, s.setting), f"{s.multiplier:g}",
              str(s.n), f"{s.unsteered:.4g}", f"{s.steered:.4g}",
              f"{s.change:+.4g}", f"[{s.lower:+.4g}, {s.upper:+.4g}]", s.note]
             for s in found.side_effects],
        )
    if found.steerability:
        parts += ["## Steerability (slope of the logit difference against the multiplier, "
                  "per input)", ""]
        rows = []
        for index, report in enumerate(found.steerability):
            plot = plot_steerability(report, out / f"steerability-{index}.png")
            rows.append([str(report.setting.get("dataset")), str(report.setting.get("arm") or "-"),
                         str(report.setting.get("layers")),
                         str(report.n_inputs), f"{report.mean:+.3f}", f"{report.std:.3f}",
                         f"{report.anti_steerable:.1%}", f"![histogram]({plot.name})"])
        parts += markdown_table(["dataset", "arm", "layers", "inputs", "mean slope", "sd",
                                 "anti-steerable", "histogram"], rows)
        notes = [f"- {report.setting.get('dataset')}, layers {report.setting.get('layers')}: "
                 f"{report.note()}." for report in found.steerability if report.note()]
        parts += ["", *notes, ""] if notes else []
    if found.head_to_head:
        parts += ["## Head-to-head (win rate with ties counted half, 90% interval)", ""]
        parts += markdown_table(
            ["judge", "dataset", "arm", "base", "wins", "ties", "losses", "win rate", "interval",
             "one-sided p"],
            [[h.judge, h.dataset, h.arm, h.base, str(h.wins), str(h.ties), str(h.losses),
              f"{h.win_rate:.3f}", f"[{h.interval[0]:.3f}, {h.interval[1]:.3f}]",
              f"{h.test.p_value:.3g}" if h.test else "-"]
             for h in found.head_to_head],
        )
    if found.ratings:
        parts += ["## Ratings 1-4 (mean and paired difference from the base, 90% intervals)", ""]
        parts += markdown_table(
            ["judge", "dataset", "arm", "n", "unreadable", "mean rating", "arm − base", "P(> 0)"],
            [[r.judge, r.dataset, r.arm, str(r.n), str(r.unreadable),
              r.mean.cell() if r.mean else "-", r.difference.cell("+.3f") if r.difference else "-",
              f"{r.difference.prob_positive:.3f}" if r.difference else "-"] for r in found.ratings],
        )
    if found.refusals:
        parts += ["## Refusals (95% Wilson intervals)", ""]
        parts += markdown_table(
            ["detector", "dataset", "arm", "multiplier", "refusal rate", "interval",
             "attack success"],
            [[r.detector, r.dataset, r.arm, f"{r.multiplier:g}", f"{r.refusals.estimate:.3f}",
              f"[{r.refusals.lower:.3f}, {r.refusals.upper:.3f}]",
              f"{r.attack_success:.3f}" if r.attack_success is not None else "-"]
             for r in found.refusals],
        )
    if found.agreement:
        parts += ["## Agreement between human raters (pairs both rated)", ""]
        parts += markdown_table(
            ["dataset", "arm vs base", "raters", "pairs", "same verdict", "Cohen's κ"],
            [[a.dataset, f"{a.arm} vs {a.base}", " / ".join(a.raters), str(a.n),
              f"{a.observed:.3f}", f"{a.kappa:.3f}"] for a in found.agreement],
        )
    for index, result in enumerate(found.concepts):
        parts += concept_judged_section(result, out / f"concept-{index}.png")
    return parts

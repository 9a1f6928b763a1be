"""Likelihood evaluation: eval, sweep, compose, side-effects (whole experiments: ``experiment``)."""

# Library imports sit inside the commands, for start-up speed (see steerlab/cli/__init__.py).

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from steerlab.cli.app import app, console
from steerlab.cli.inputs import (
    fail,
    load_engine,
    load_handle,
    load_records,
    load_scored_items,
    load_texts,
    load_vector,
)
from steerlab.cli.options import (
    BatchOpt,
    EngineOpt,
    LayersOpt,
    LimitOpt,
    ModelOpt,
    NormRatioOpt,
    RunOpt,
    parse_floats,
    parse_ints,
    parse_layers,
    placement_options,
)
from steerlab.cli.steering import SteeringChoice, steering_options
from steerlab.model.catalog import DEFAULT_MODEL
from steerlab.model.placement import Placement


@app.command("eval")
@placement_options
@steering_options("one", multipliers="0")
def evaluate(
    data: Annotated[str, typer.Option(
        "--data", "-d",
        help="Dataset name (`steerlab data list`; name:split works) or MC / pairs file.")],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Records file (.jsonl), appended to; a rerun resumes.")],
    model: ModelOpt = DEFAULT_MODEL,
    split: Annotated[Optional[str], typer.Option(
        help="Use only this split (bundled sets: train/test).")] = None,
    batch_size: BatchOpt = 8,
    engine: EngineOpt = "transformers",  # type: ignore[assignment]
    steering: Optional[SteeringChoice] = None,
    placement: Optional[Placement] = None,
) -> None:
    """Score multiple-choice or A/B items by likelihood, per multiplier; print a table.

    Rerun on the same --out, it resumes: items whose records are there are not scored again.
    --engine vllm scores from vLLM's prompt log-probabilities, every multiplier together (the
    records say so); transformers, the default, was faster on CPU (BENCHMARKS.md).
    """
    from steerlab.evaluation.likelihood import Sweep, evaluate
    from steerlab.records import RecordWriter, summarize

    assert steering is not None
    items = load_scored_items(data, split)
    handle = load_handle(model, placement)
    setting = steering.setting(handle.n_layers) if steering.steered else None
    sweep = Sweep(setting, steering.multipliers)
    try:
        sweep.check()
    except ValueError as err:
        fail(str(err))
    scorer = load_engine(model, engine, placement=placement)
    with RecordWriter(out) as writer:
        records = evaluate(handle, items, [sweep], dataset=str(data), writer=writer,
                           batch_size=batch_size, engine=scorer)
    print_summary(summarize(records))
    console.print(f"{len(records)} records in {out}")


def print_summary(rows: list[dict]) -> None:
    """A table with one row per setting: n, score ± standard error, accuracy, and the answer
    the setting predicts most (flagged when it is nearly all) with the accuracy once the
    setting's preference for each answer is removed."""
    from steerlab.analysis.report import one_answer_note
    from steerlab.records import bias_cells

    table = Table()
    for column in ("task", "dataset", "layers", "multiplier", "n", "score", "accuracy",
                   "top answer", "debiased acc."):
        table.add_column(column, justify="right" if column in ("multiplier", "n") else "left")
    for row in rows:
        table.add_row(
            row["task"], str(row["dataset"]), str(row["layers"] or "-"), f"{row['multiplier']:g}",
            str(row["n"]), f"{row['score']:.3f} ± {row['score_se']:.3f}", f"{row['correct']:.3f}",
            *bias_cells(row),
        )
    console.print(table)
    for line in one_answer_note(rows)[:1]:
        console.print(line)


@app.command()
@placement_options
@steering_options("many", multipliers="-2,-1,0,1,2", layers_help="Layers to try, each on its "
                  "own, comma-separated (default: the vector's own).")
def sweep(
    data: Annotated[list[str], typer.Option(
        "--data", "-d", help="Dataset (name, name:split or file); repeatable.")],
    out: RunOpt,
    model: ModelOpt = DEFAULT_MODEL,
    limit: LimitOpt = None,
    batch_size: BatchOpt = 8,
    engine: EngineOpt = "transformers",  # type: ignore[assignment]
    steering: Optional[SteeringChoice] = None,
    placement: Optional[Placement] = None,
) -> None:
    """Evaluate every vector × layer × multiplier on each dataset, into a run directory.

    At each layer the layers below run once per batch and only those above once per multiplier
    (transformers); --engine vllm scores every multiplier in one continuous batch instead.
    """
    from dataclasses import replace

    from steerlab.evaluation.likelihood import evaluate, grid
    from steerlab.experiment.runs import RunDir
    from steerlab.records import summarize

    assert steering is not None
    sets = {spec: load_scored_items(spec, None, limit) for spec in data}
    tried = parse_ints(steering.layers) if steering.layers else None
    handle = load_handle(model, placement)
    settings = replace(steering, layers=None).each(handle.n_layers)
    try:
        sweeps = grid(settings, steering.multipliers, tried)
        for each in sweeps:
            each.check()
    except ValueError as err:
        fail(str(err))
    scorer = load_engine(model, engine, placement=placement)
    run = RunDir.open(out, "sweep", {"data": data, "model": model, **steering.logged(),
                                     "n": limit})
    records = []
    with run.writer() as writer:
        for each in settings:
            run.keep_vector(each.vector)
        for spec, items in sets.items():
            records += evaluate(handle, items, sweeps, dataset=spec, writer=writer,
                                batch_size=batch_size, engine=scorer)
    print_summary(summarize(records))
    console.print(f"{len(records)} records in {run.records_path}; "
                  f"`steerlab analyze {out}` builds the tables")


@app.command("compose")
@placement_options
def compose_grid(
    vector: Annotated[list[Path], typer.Option(
        "--vector", "-v", help="Steering vector file: give two, first then second.")],
    data_a: Annotated[str, typer.Option(
        "--data-a",
        help="The first vector's behaviour: A/B pairs or MC items (name, name:split or file).")],
    data_b: Annotated[str, typer.Option(
        "--data-b", help="The second vector's behaviour, likewise.")],
    out: RunOpt,
    grid: Annotated[str, typer.Option(
        help="Multipliers tried for each vector, "
        "comma-separated (both axes of the grid).")] = "-2,0,2",
    model: ModelOpt = DEFAULT_MODEL,
    layers: LayersOpt = None,
    norm_ratio: NormRatioOpt = None,
    limit: LimitOpt = None,
    batch_size: BatchOpt = 8,
    placement: Optional[Placement] = None,
) -> None:
    """Steer with two vectors at once over a grid of both multipliers; score both behaviours.

    Every grid point is scored on both datasets; `steerlab analyze` draws one heat map each.
    Both vectors are added at every position (BiPO's composition grid); compositions with
    ablations, rotations, positions or conditions are the library's `steerlab.compose`, a
    served request's `steering` list, or lm-eval's steering file.
    """
    from steerlab.analysis.grid import grid_cells
    from steerlab.evaluation.likelihood import composition_grid, evaluate
    from steerlab.experiment.runs import RunDir

    if len(vector) != 2:
        fail(f"compose takes exactly two --vector options, got {len(vector)}")
    first, second = (load_vector(path) for path in vector)
    sets = {spec: load_scored_items(spec, None, limit) for spec in (data_a, data_b)}
    handle = load_handle(model, placement)
    try:
        sweeps = composition_grid(first, second, parse_floats(grid, "--grid"), None,
                                  parse_layers(layers, handle.n_layers), norm_ratio)
        for sweep in sweeps:
            sweep.check()
    except ValueError as err:
        fail(str(err))
    run = RunDir.open(out, "compose", {"vectors": [str(v) for v in vector],
                                       "data": [data_a, data_b], "model": model, "grid": grid,
                                       "layers": layers, "norm_ratio": norm_ratio, "n": limit})
    records = []
    with run.writer() as writer:
        for steering in (first, second):
            run.keep_vector(steering)
        for spec, items in sets.items():
            records += evaluate(handle, items, sweeps, dataset=spec, writer=writer,
                                batch_size=batch_size)
    print_grid(grid_cells(records), {first.id: str(vector[0]), second.id: str(vector[1])})
    console.print(f"{len(records)} records in {run.records_path}; "
                  f"`steerlab analyze {out}` draws the heat maps")


def print_grid(cells: list, names: dict[str, str]) -> None:
    """One table per grid: the mean score at each (first, second) multiplier pair."""
    from steerlab.analysis.grid import by_grid, grid_matrix

    for (_, dataset, first, second), members in by_grid(cells).items():
        rows, columns, matrix = grid_matrix(members)
        table = Table(title=f"{dataset}: mean score (rows: ×{names.get(first, first)}, "
                            f"columns: ×{names.get(second, second)})")
        table.add_column("×", justify="right")
        for column in columns:
            table.add_column(f"{column:g}", justify="right")
        for row, line in zip(rows, matrix):
            table.add_row(f"{row:g}", *(f"{c.score:.3f}" if c else "-" for c in line))
        console.print(table)


@app.command("side-effects")
@placement_options
@steering_options("required", multipliers="4")
def side_effects(
    out: RunOpt,
    model: ModelOpt = DEFAULT_MODEL,
    capability: Annotated[Optional[list[str]], typer.Option(
        help="Multiple-choice capability set (name or name:split); "
        "repeatable. Default: general-knowledge.")] = None,
    text: Annotated[Optional[list[str]], typer.Option(
        help="Text set for perplexity (name or name:split); "
        "repeatable. Default: wikitext2:test.")] = None,
    kl_prompts: Annotated[Optional[list[str]], typer.Option(
        help="Unrelated prompts for KL: a prompts set, or the questions of an MC / pairs set; "
        "repeatable. Default: general-knowledge.")] = None,
    limit: Annotated[int, typer.Option(
        "--n", help="Items, texts or prompts per set: a seeded sample.", min=1)] = 100,
    max_tokens: Annotated[int, typer.Option(help="Tokens per perplexity text.", min=2)] = 128,
    harness: Annotated[Optional[str], typer.Option(
        help="lm-evaluation-harness tasks, comma-separated (steerlab_mmlu, steerlab_piqa, "
        "steerlab_truthfulqa_mc1, steerlab_wikitext, ...), each on its first --n documents; "
        "alone, they replace the default sets (pip install -e .\\[harness]).")] = None,
    batch_size: BatchOpt = 8,
    steering: Optional[SteeringChoice] = None,
    placement: Optional[Placement] = None,
) -> None:
    """Capability accuracy, perplexity and KL to the unsteered model: steered against unsteered.

    --multipliers are the steered ones (0, the baseline, is added). With --harness, lm-eval runs
    the tasks with the steered model at every multiplier and its per-sample log becomes records
    like the others' (dataset harness:<task>), compared pairwise.
    """
    from steerlab.data.files import as_prompts, passages
    from steerlab.evaluation.likelihood import Sweep
    from steerlab.evaluation.side_effects import side_effect_records, side_effects_table
    from steerlab.experiment.runs import RunDir

    assert steering is not None
    own = not harness or capability or text or kl_prompts  # --harness alone: its tasks only
    capability = capability or (["general-knowledge"] if own else [])
    text = text or (["wikitext2:test"] if own else [])
    kl_prompts = kl_prompts or (["general-knowledge"] if own else [])
    harness_tasks = [t.strip() for t in (harness or "").split(",") if t.strip()]
    if harness_tasks:
        try:
            from steerlab.harness.model import SteerlabLM
            from steerlab.harness.records import harness_records
        except ImportError as err:
            fail(f"--harness needs lm-evaluation-harness: pip install -e .[harness] ({err})")
    capability_sets = {spec: load_scored_items(spec, None, limit) for spec in capability}
    texts = {spec: passages(load_texts(spec), limit) for spec in text}
    prompts = {spec: as_prompts(load_records(spec, None, limit)) for spec in kl_prompts}
    handle = load_handle(model, placement)
    setting = steering.setting(handle.n_layers)
    run = RunDir.open(out, "side-effects", {**steering.logged(), "model": model,
                                            "capability": capability,
                                            "text": text, "kl_prompts": kl_prompts, "n": limit,
                                            **({"harness": harness_tasks} if harness_tasks
                                               else {})})
    run.keep_vector(setting.vector)
    sweep = Sweep(setting, steering.multipliers)
    with run.writer() as writer:
        records = side_effect_records(handle, sweep, capability=capability_sets, texts=texts,
                                      prompts=prompts, max_tokens=max_tokens, writer=writer,
                                      batch_size=batch_size)
        if harness_tasks:
            lm = SteerlabLM(handle, batch_size=batch_size)
            records += harness_records(lm, sweep, harness_tasks, limit=limit, writer=writer)
    print_side_effects(side_effects_table(records))
    console.print(f"records in {run.records_path}")


def print_side_effects(rows: list) -> None:
    """The side-effects table: unsteered, steered, change and its 90% interval."""
    table = Table(title="side effects (steered vs unsteered; 90% intervals)")
    for column in ("metric", "dataset", "multiplier", "n", "unsteered", "steered", "change",
                   "interval"):
        table.add_column(column, justify="left" if column in ("metric", "dataset") else "right")
    for row in rows:
        table.add_row(row.metric, row.dataset, f"{row.multiplier:g}", str(row.n),
                      f"{row.unsteered:.4g}", f"{row.steered:.4g}", f"{row.change:+.4g}",
                      f"[{row.lower:+.4g}, {row.upper:+.4g}]")
    console.print(table)

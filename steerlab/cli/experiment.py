"""Experiments: run (a config, both stages) and analyze (stage two, from a run's records)."""

# Library imports sit inside the commands, for start-up speed (see steerlab/cli/__init__.py).

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from steerlab.cli.app import app, console
from steerlab.cli.inputs import fail, load_engine
from steerlab.cli.options import EngineOpt, placement_options
from steerlab.model.placement import Placement

if TYPE_CHECKING:
    from steerlab.experiment.plan import Plan


@app.command()
def analyze(run_dir: Annotated[Path, typer.Argument(
    help="A run directory (from sweep, side-effects, ...).")]) -> None:
    """Recompute every table and plot of a run from its records alone; write analysis.md."""
    from rich.markdown import Markdown

    from steerlab.analysis.run_analysis import write_analysis
    from steerlab.experiment.runs import RunDir

    run = RunDir(run_dir)
    records = run.records()
    if not records:
        fail(f"no records in {run.records_path}")
    untyped = sum("task" not in r for r in records)
    if untyped == len(records):
        fail(f"{run.records_path}: none of its {len(records)} records says its task: not "
             "records steerlab wrote")
    path = write_analysis(run.path, records)
    if any(r.get("task") == "experiment" for r in records):
        from steerlab.experiment.report import experiment_report

        path, page = experiment_report(run.path, records)
        console.print(f"report: {page}")
    console.print(Markdown(path.read_text(encoding="utf-8")))
    console.print(f"analysis: {path}")


@app.command("run")
@placement_options
def run_config(
    config: Annotated[Path, typer.Argument(help="An experiment config (YAML); see examples/.")],
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Run directory (default: runs/<name>); a rerun on it resumes.")] = None,
    check: Annotated[bool, typer.Option(
        "--check",
        help="Validate the config and its data, print what would run, and stop.")] = False,
    plan_only: Annotated[bool, typer.Option(
        "--plan",
        help="Count each stage's work on a stand-in of the model, price it with a short "
             "calibration on this device and dtype, print the plan and stop.")] = False,
    no_plan: Annotated[bool, typer.Option(
        "--no-plan",
        help="Start without the plan (making it takes about a tenth of the run's time).")
    ] = False,
    engine: EngineOpt = "transformers",  # type: ignore[assignment]
    placement: Optional[Placement] = None,
) -> None:
    """Run an experiment: every arm on validation and test into a run directory (stage one),
    then the report from its records (stage two, as `steerlab analyze`). The run's plan comes
    first: each stage's work, expected time and peak memory (see --plan). --engine vllm
    generates the open-ended answers through vLLM."""
    if plan_only and no_plan:
        raise typer.BadParameter("--plan shows the plan and --no-plan skips it: give one",
                                 param_hint="--no-plan")
    from steerlab.experiment.config import ConfigError, load_config

    try:
        experiment = load_config(config)
    except ConfigError as err:
        fail(str(err))
    if placement is not None:  # the options given override the config's model block
        experiment = experiment.model_copy(
            update={"model": experiment.model.overridden(placement)})
    from steerlab.experiment.runner import data_summary, run_experiment

    sizes = data_summary(experiment)
    console.print(f"{experiment.name}: model {experiment.model.name}; "
                  + ", ".join(f"{k} {v}" for k, v in sizes.items()))
    if check:
        from steerlab.model.handle import ModelLoadError, count_layers

        try:
            experiment.check_layers(count_layers(experiment.model.name))
        except (ModelLoadError, ValueError) as err:
            fail(f"{config}: {err}")
        console.print("config is valid")
        return
    run_dir = out or Path("runs") / experiment.name
    from steerlab.experiment.plan import Plan, kept_plan, plan_run
    from steerlab.experiment.runner import check_same_config
    from steerlab.model.handle import ModelLoadError, load_model

    try:
        if not plan_only:  # before the model loads and the plan is made
            check_same_config(run_dir, experiment)
        console.print(f"loading {experiment.model.name}")
        model = load_model(experiment.model.name, **experiment.model.options())
        experiment.check_layers(model.n_layers)
        kept = None if plan_only else kept_plan(run_dir)
        plan: Plan | None = Plan.from_record(kept) if kept else None
        if plan is None and not no_plan:
            console.print("planning: counting each stage's work on a stand-in of the model, "
                          "then timing a few passes of the model itself")
            try:
                plan = plan_run(experiment, model)
            except Exception as err:  # noqa: BLE001 - a plan that fails must not stop the run
                if plan_only:
                    fail(f"{config}: the plan could not be made ({type(err).__name__}: {err})")
                console.print(f"no plan ({type(err).__name__}: {err}); running without one")
        if plan is not None:
            _show_plan(plan, kept is not None)
        if plan_only:
            return
        generator = (load_engine(experiment.model.name, engine, placement=experiment.model)
                     if experiment.evaluations.open_ended else None)
        run = run_experiment(experiment, run_dir, log=console.print, engine=generator,
                             model=model, plan=kept or (plan and plan.record()))
    except ModelLoadError as err:
        fail(str(err))
    except KeyboardInterrupt:
        fail(f"interrupted: the records so far are in {run_dir}; run the same command to resume")
    except (ValueError, FileNotFoundError) as err:
        fail(f"{config}: {err}")
    analyze(run.path)


def _show_plan(plan: Plan, kept: bool) -> None:
    """The plan as a table, with what it expects and cannot know underneath."""
    from rich import box
    from rich.table import Table

    from steerlab.experiment.plan import CAPTION, HEADERS

    table = Table(title="The plan this run was started with" if kept
                  else "The plan: each stage's work and expected wall time", caption=CAPTION,
                  box=box.SIMPLE_HEAD, show_edge=False, padding=0)  # fits 80 columns
    table.add_column(HEADERS[0], no_wrap=True)
    for header in HEADERS[1:]:
        table.add_column(header, justify="right", no_wrap=True)
    for row in plan.rows():
        table.add_row(*row)
    console.print(table)
    for line in plan.summary():
        console.print(line)

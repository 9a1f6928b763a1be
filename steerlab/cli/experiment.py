"""Experiments: run (a config, both stages) and analyze (stage two, from a run's records)."""

# Library imports sit inside the commands, for start-up speed (see steerlab/cli/__init__.py).

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from steerlab.cli.app import app, console
from steerlab.cli.inputs import fail, load_engine
from steerlab.cli.options import EngineOpt, placement_options
from steerlab.model.placement import Placement


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
    engine: EngineOpt = "transformers",  # type: ignore[assignment]
    placement: Optional[Placement] = None,
) -> None:
    """Run an experiment: every arm on validation and test into a run directory (stage one),
    then the report from its records (stage two, as `steerlab analyze`). --engine vllm
    generates the open-ended answers through vLLM."""
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
    try:
        generator = (load_engine(experiment.model.name, engine, placement=experiment.model)
                     if experiment.evaluations.open_ended else None)
        run = run_experiment(experiment, run_dir, log=console.print, engine=generator)
    except KeyboardInterrupt:
        fail(f"interrupted: the records so far are in {run_dir}; run the same command to resume")
    except (ValueError, FileNotFoundError) as err:
        fail(f"{config}: {err}")
    analyze(run.path)

"""The `steerlab` command: thin wrappers that parse options and call the library."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from steerlab.catalog import BUILTIN_MODELS, DEFAULT_MODEL

app = typer.Typer(
    help="Train, apply and honestly evaluate steering vectors for Hugging Face language models.",
    no_args_is_help=True,
    add_completion=False,
)
vector_app = typer.Typer(help="Inspect saved steering vectors.", no_args_is_help=True)
app.add_typer(vector_app, name="vector")
console = Console()

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model", "-m",
        help=f"Built-in name ({', '.join(BUILTIN_MODELS)}), model directory, .gguf file or hub id.",
    ),
]
BatchOpt = Annotated[int, typer.Option(help="Sequences per forward pass.")]


def parse_floats(text: str) -> list[float]:
    """'-2,-1,0,1,2' → [-2.0, -1.0, 0.0, 1.0, 2.0], with a clear error for bad input."""
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}") from None


def parse_ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}") from None


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}", soft_wrap=True, highlight=False)
    raise typer.Exit(code=1)


def _load(model: str):
    from steerlab.models import ModelLoadError, load_model

    try:
        with console.status(f"loading {model}"):
            return load_model(model)
    except ModelLoadError as err:
        _fail(str(err))


METHODS = ("caa", "bipo", "dpo")


@app.command()
def train(
    data: Annotated[str, typer.Option("--data", "-d", help="Pairs file (.jsonl/.csv) or bundled dataset name.")],
    layer: Annotated[str, typer.Option("--layer", "-l", help="Layer index (CAA also takes several: 10,12,14).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Vector file (.safetensors); a directory with --subset-sizes.")],
    method: Annotated[str, typer.Option(help="caa, bipo or dpo (BiPO with the direction fixed to +1).")] = "caa",
    model: ModelOpt = DEFAULT_MODEL,
    split: Annotated[Optional[str], typer.Option(help="Use only rows whose 'split' field is this (bundled sets: train/test).")] = None,
    batch_size: BatchOpt = 8,
    beta: Annotated[float, typer.Option(help="BiPO/DPO: inverse temperature of the preference loss.")] = 0.1,
    lr: Annotated[float, typer.Option(help="BiPO/DPO: AdamW learning rate.")] = 5e-4,
    epochs: Annotated[int, typer.Option(help="BiPO/DPO: passes over the pairs.")] = 5,
    weight_decay: Annotated[float, typer.Option(help="BiPO/DPO: AdamW weight decay.")] = 0.0,
    seed: Annotated[int, typer.Option(help="BiPO/DPO: seed for batches and directions.")] = 0,
    val_data: Annotated[Optional[str], typer.Option(help="BiPO/DPO: validation pairs (file or bundled name).")] = None,
    val_split: Annotated[Optional[str], typer.Option(help="Split of --val-data to use.")] = None,
    patience: Annotated[Optional[int], typer.Option(help="BiPO/DPO: stop after this many epochs without validation gain.")] = None,
    norm_ratio: Annotated[Optional[float], typer.Option(help="BiPO/DPO: rescale the result to this fraction of the residual norm.")] = None,
    engine: Annotated[str, typer.Option(help="BiPO/DPO: fast (cached lower layers) or naive.")] = "fast",
    subset_sizes: Annotated[Optional[str], typer.Option(help="Train one vector per nested subset size, e.g. 1,2,4,8.")] = None,
    seeds: Annotated[int, typer.Option(help="With --subset-sizes: seeds 0..N-1 per size.")] = 1,
) -> None:
    """Train a steering vector from preference pairs and save it.

    BiPO/DPO rewrite --out after every epoch, so Ctrl-C keeps the last completed epoch's vector.
    """
    from steerlab.data import DataError, load_pairs
    from steerlab.methods import TrainingHistory, train_bipo, train_caa
    from steerlab.methods.subsets import train_on_subsets

    if method not in METHODS:
        _fail(f"unknown method {method!r}; available: {', '.join(METHODS)}")
    layers = parse_ints(layer)
    if method != "caa" and len(layers) != 1:
        _fail(f"{method} trains one layer at a time; got --layer {layer}")
    try:
        pairs = load_pairs(data, split=split)
        val_pairs = load_pairs(val_data, split=val_split) if val_data else None
    except (DataError, FileNotFoundError) as err:
        _fail(str(err))
    if not pairs:
        _fail(f"no pairs in {data}" + (f" with split '{split}'" if split else ""))
    handle = _load(model)

    def run(subset: list, run_seed: int, checkpoint: Path | None = None):
        if method == "caa":
            return train_caa(handle, subset, layers, batch_size=batch_size)
        history = TrainingHistory()
        vector = train_bipo(
            handle, subset, layers[0], beta=beta, lr=lr, batch_size=batch_size, epochs=epochs,
            weight_decay=weight_decay, direction="bi" if method == "bipo" else "forward",
            seed=run_seed, val_pairs=val_pairs, patience=patience, norm_ratio=norm_ratio,
            engine=engine, checkpoint=checkpoint, history=history,
        )
        for entry in history.epochs:
            console.print("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in entry.items()))
        return vector

    try:
        if subset_sizes:
            paths = train_on_subsets(run, pairs, parse_ints(subset_sizes), range(seeds), out, name=method)
            console.print(f"{len(paths)} vectors in {out}")
            return
        vector = run(pairs, seed, checkpoint=out)
    except KeyboardInterrupt:
        console.print(f"interrupted: the last completed epoch's vector (if any) is in {out}")
        raise typer.Exit(code=130) from None
    vector.save(out)
    console.print(f"saved {vector} to {out}")


@app.command("eval")
def evaluate(
    data: Annotated[str, typer.Option("--data", "-d", help="MC items or A/B pairs file, or bundled name.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Records file (.jsonl), appended to.")],
    model: ModelOpt = DEFAULT_MODEL,
    vector: Annotated[Optional[Path], typer.Option("--vector", "-v", help="Steering vector file.")] = None,
    multipliers: Annotated[str, typer.Option(help="Comma-separated multipliers.")] = "0",
    layers: Annotated[Optional[str], typer.Option(help="Apply at these layers (default: the vector's).")] = None,
    norm_ratio: Annotated[Optional[float], typer.Option(help="Scale to this fraction of the residual norm.")] = None,
    split: Annotated[Optional[str], typer.Option(help="Use only rows whose 'split' field is this (bundled sets: train/test).")] = None,
    batch_size: BatchOpt = 8,
) -> None:
    """Score multiple-choice or A/B items by likelihood, per multiplier; print a table."""
    from steerlab.data import DataError, data_kind, load_mc, load_pairs
    from steerlab.evaluation import Sweep, evaluate_ab, evaluate_mc
    from steerlab.records import RecordWriter, summarize
    from steerlab.vectors import SteeringVector

    try:
        kind = data_kind(data)
        items = load_mc(data, split) if kind == "mc" else load_pairs(data, split)
    except (DataError, FileNotFoundError) as err:
        _fail(str(err))
    steering = SteeringVector.load(vector) if vector else None
    handle = _load(model)
    run = evaluate_mc if kind == "mc" else evaluate_ab
    with RecordWriter(out) as writer:
        sweep = Sweep(steering, parse_floats(multipliers), parse_ints(layers) if layers else None, norm_ratio)
        records = run(handle, items, sweep, dataset=str(data), writer=writer, batch_size=batch_size)
    print_summary(summarize(records))
    console.print(f"{len(records)} records appended to {out}")


def print_summary(rows: list[dict]) -> None:
    """A table with one row per setting: n, score ± standard error, accuracy."""
    table = Table()
    for column in ("task", "dataset", "layers", "multiplier", "n", "score", "accuracy"):
        table.add_column(column, justify="right" if column in ("multiplier", "n") else "left")
    for row in rows:
        table.add_row(
            row["task"], str(row["dataset"]), str(row["layers"] or "-"), f"{row['multiplier']:g}",
            str(row["n"]), f"{row['score']:.3f} ± {row['score_se']:.3f}", f"{row['correct']:.3f}",
        )
    console.print(table)


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="The user prompt (the chat template is applied).")],
    model: ModelOpt = DEFAULT_MODEL,
    vector: Annotated[Optional[Path], typer.Option("--vector", "-v", help="Steering vector file.")] = None,
    multiplier: Annotated[float, typer.Option(help="Steering multiplier.")] = 1.0,
    positions: Annotated[str, typer.Option(help="all, prompt or generated.")] = "all",
    norm_ratio: Annotated[Optional[float], typer.Option(help="Scale to this fraction of the residual norm.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = 80,
    compare: Annotated[bool, typer.Option(help="Also print the unsteered reply.")] = True,
) -> None:
    """Generate a reply (greedy), steered when a vector is given."""
    from contextlib import nullcontext

    from steerlab.generation import generate as run_generate
    from steerlab.vectors import SteeringVector

    steering = SteeringVector.load(vector) if vector else None
    handle = _load(model)
    if steering is not None and compare:
        console.print("[bold]unsteered[/bold]")
        console.print(run_generate(handle, [prompt], max_new_tokens, progress=False)[0])
        console.print(f"[bold]steered ×{multiplier:g}[/bold]")
    context = (
        steering.apply(handle, multiplier, positions=positions, norm_ratio=norm_ratio)
        if steering else nullcontext()
    )
    with context:
        console.print(run_generate(handle, [prompt], max_new_tokens, progress=False)[0])


@vector_app.command("info")
def vector_info(path: Annotated[Path, typer.Argument(help="A .safetensors steering vector.")]) -> None:
    """Show a vector's layers, norms and metadata."""
    from steerlab.vectors import SteeringVector

    try:
        vector = SteeringVector.load(path)
    except (ValueError, FileNotFoundError) as err:
        _fail(str(err))
    table = Table(title=f"{path} (id {vector.id})")
    table.add_column("layer", justify="right")
    table.add_column("norm", justify="right")
    table.add_column("residual norm", justify="right")
    for layer, norm in vector.norms().items():
        residual = vector.meta.residual_norms.get(layer)
        table.add_row(str(layer), f"{norm:.4g}", f"{residual:.4g}" if residual else "-")
    console.print(table)
    console.print_json(vector.meta.model_dump_json())


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for records, vector and report.")] = Path("demo_out"),
    model: ModelOpt = DEFAULT_MODEL,
    behaviour: Annotated[str, typer.Option(help="Bundled behaviour: sycophancy or refusal.")] = "refusal",
    layer: Annotated[Optional[int], typer.Option(help="Layer to steer (default: the demo's choice).")] = None,
    multipliers: Annotated[Optional[str], typer.Option(help="Comma-separated multipliers.")] = None,
) -> None:
    """Train a CAA vector on a bundled behaviour, sweep multipliers, compare generations, report."""
    from steerlab.demo import DemoConfig, run_demo

    config = DemoConfig(model=model, behaviour=behaviour, out_dir=out)
    if layer is not None:
        config.layer = layer
    if multipliers:
        config.multipliers = parse_floats(multipliers)
    run_demo(config, console)


# ---- data: list, inspect -------------------------------------------------------------------

data_app = typer.Typer(help="List and inspect datasets: bundled and public benchmarks.", no_args_is_help=True)
app.add_typer(data_app, name="data")


class OutputFormat(str, Enum):
    table = "table"
    json = "json"


FormatOpt = Annotated[OutputFormat, typer.Option("--format", help="table (readable) or json (for scripts).")]
SHOWN = 10
"""Findings of each sort printed in table format (json has them all)."""


@data_app.command("list")
def data_list(output: FormatOpt = OutputFormat.table) -> None:
    """Every known dataset: kind, size and splits, source, licence, and whether it is here."""
    from steerlab.datasets import list_datasets

    rows = [
        {"name": i.name, "kind": i.kind, "size": i.size, "splits": dict(i.splits or {}),
         "source": i.source, "licence": i.licence, "available": i.available(), "description": i.description}
        for i in list_datasets()
    ]
    if output is OutputFormat.json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="datasets (pairs: free-text pairs · ab: A/B or Yes/No · mc: multiple choice)")
    for column in ("name", "kind", "size", "source", "licence", "here"):
        table.add_column(column, no_wrap=column in ("name", "kind", "here"))
    for info, row in zip(list_datasets(), rows):
        table.add_row(info.name, info.kind, info.size_text(), info.source, info.licence,
                      "yes" if row["available"] else "[red]no[/red]")
    console.print(table)


@data_app.command("inspect")
def data_inspect(
    name: Annotated[str, typer.Argument(help="Dataset name (see `steerlab data list`) or a .jsonl/.csv/.json file.")],
    split: Annotated[Optional[str], typer.Option(help="Only this split (e.g. train, validation, test); default: all rows.")] = None,
    model: ModelOpt = DEFAULT_MODEL,
    label_check: Annotated[bool, typer.Option("--label-check/--no-label-check", help="Score a sample with --model and compare its preferred answers with the labels.")] = True,
    label_sample: Annotated[int, typer.Option(help="Items the label check scores (a seeded sample).")] = 200,
    examples: Annotated[int, typer.Option(help="Items shown as a readable sample.")] = 3,
    seed: Annotated[int, typer.Option(help="Seed of the sample and of the label-check subset.")] = 0,
    source: Annotated[Optional[str], typer.Option(help="Read from this folder (shared-data layout), file or Hugging Face id.")] = None,
    batch_size: BatchOpt = 8,
    output: FormatOpt = OutputFormat.table,
) -> None:
    """Show what is in a dataset: a sample, counts, answer balance, duplicates, bad rows (with
    file and line) and a label check that flags agreement far below chance (flipped labels)."""
    from steerlab.datasets import dataset_info
    from steerlab.inspection import inspect_dataset

    try:
        kind = dataset_info(name).kind
        handle = _load(model) if label_check and kind in ("mc", "ab", "pairs") else None
        report = inspect_dataset(
            name, split, source=source, model=handle, examples=examples,
            label_sample=label_sample, seed=seed, batch_size=batch_size,
        )
    except (ValueError, FileNotFoundError) as err:
        _fail(str(err))
    if output is OutputFormat.json:
        typer.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
        return
    print_report(report)


def print_report(report) -> None:
    """The inspection report, readably: header, sample, balance, label check, problems."""
    from rich.markup import escape

    def say(text: str = "") -> None:  # data text may hold [brackets] or :emoji_names:
        console.print(text, highlight=False, emoji=False)

    splits = ", ".join(f"{k} {v}" for k, v in report.splits.items())
    say(f"[bold]{escape(report.name)}[/bold] ({report.kind}) {escape(report.description)}")
    line = f"rows {report.rows} · items {report.items} · splits: {splits}"
    if report.choice_counts:
        line += " · choices per item: " + ", ".join(f"{k}×{v}" for k, v in report.choice_counts.items())
    say(line)
    for example in report.examples:
        where = f"{example.id}  {example.where}  [{example.split or 'no split'}]"
        say(f"\n[dim]{escape(where)}[/dim]")
        say(escape(example.question))
        for index, choice in enumerate(example.choices):
            mark = " [green]✓ marked[/green]" if index == example.marked else ""
            label = ("chosen", "rejected")[index] if report.kind in ("ab", "pairs") else f"({chr(65 + index)})"
            say(f"  {label} {escape(choice)}{mark}")
    if report.balance is not None:
        balance = report.balance
        counts = "  ".join(f"{k} {v} (exp {balance.expected[k]:.0f})" for k, v in balance.counts.items())
        say(f"\nmarked answers: {escape(counts)}  chi-square p = {balance.p_value:.2g}")
    if report.label_check is not None:
        say(f"\nlabel check on {escape(report.label_check.model)}: {escape(report.label_check.message)}")
    for title, findings in (("bad rows", report.bad_rows), ("same answers", report.same_answers),
                            ("repeated choices", report.repeated_choices)):
        if findings:
            say(f"\n[bold]{title}[/bold] ({len(findings)}, first {min(len(findings), SHOWN)})")
            for finding in findings[:SHOWN]:
                text = finding.message if finding.message.startswith(finding.where) else f"{finding.where}: {finding.message}"
                say(f"  {escape(text)}")
    if report.duplicates:
        say(f"\n[bold]duplicated items[/bold] ({len(report.duplicates)}, first {min(len(report.duplicates), SHOWN)})")
        for group in report.duplicates[:SHOWN]:
            flag = " [red]different answers marked[/red]" if group.conflicting else ""
            say(f"  {escape(repr(group.question))}{flag}")
            for where, split in zip(group.where, group.splits):
                say(f"    {escape(f'{where} [{split}]')}")
    say()
    for warning in report.warnings:
        say(f"[yellow]warning:[/yellow] {escape(warning)}")
    if not report.warnings:
        say("[green]no problems found[/green]")


if __name__ == "__main__":
    app()

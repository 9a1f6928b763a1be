"""`steerlab data`: list and inspect datasets."""

# Library imports sit inside the commands, for start-up speed (see steerlab/cli/__init__.py).

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.table import Table

from steerlab.cli.app import console, data_app
from steerlab.cli.inputs import fail, load_handle
from steerlab.cli.options import (
    BatchOpt,
    FormatOpt,
    ModelOpt,
    OutputFormat,
    placement_options,
)
from steerlab.model.catalog import DEFAULT_MODEL
from steerlab.model.placement import Placement

SHOWN = 10


"""Findings of each sort printed in table format (json has them all)."""


@data_app.command("list")
def data_list(output: FormatOpt = OutputFormat.table) -> None:
    """Every known dataset: kind, size and splits, source, licence, and whether it is here."""
    from steerlab.data.registry import list_datasets

    rows = [
        {"name": i.name, "kind": i.kind, "size": i.size, "splits": dict(i.splits or {}),
         "source": i.source, "licence": i.licence, "available": i.available(),
         "description": i.description}
        for i in list_datasets()
    ]
    if output is OutputFormat.json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="datasets (pairs: free-text pairs · ab: A/B or Yes/No · "
                  "mc: multiple choice)")
    for column in ("name", "kind", "size", "source", "licence", "here"):
        table.add_column(column, no_wrap=column in ("name", "kind", "here"))
    for info, row in zip(list_datasets(), rows):
        table.add_row(info.name, info.kind, info.size_text(), info.source, info.licence,
                      "yes" if row["available"] else "[red]no[/red]")
    console.print(table)


@data_app.command("inspect")
@placement_options
def data_inspect(
    name: Annotated[str, typer.Argument(
        help="Dataset name (see `steerlab data list`) or a .jsonl/.csv/.json file.")],
    split: Annotated[Optional[str], typer.Option(
        help="Only this split (e.g. train, validation, test); default: all rows.")] = None,
    model: ModelOpt = DEFAULT_MODEL,
    label_check: Annotated[bool, typer.Option(
        "--label-check/--no-label-check", help="Score a sample with --model and compare its "
        "preferred answers with the labels.")] = True,
    label_sample: Annotated[int, typer.Option(
        help="Items the label check scores (a seeded sample).")] = 200,
    examples: Annotated[int, typer.Option(help="Items shown as a readable sample.")] = 3,
    seed: Annotated[int, typer.Option(
        help="Seed of the sample and of the label-check subset.")] = 0,
    source: Annotated[Optional[str], typer.Option(
        help="Read from this folder (shared-data layout), file or Hugging Face id.")] = None,
    batch_size: BatchOpt = 8,
    output: FormatOpt = OutputFormat.table,
    placement: Optional[Placement] = None,
) -> None:
    """Show what is in a dataset: a sample, counts, answer balance, duplicates, bad rows (with
    file and line) and a label check that flags agreement far below chance (flipped labels)."""
    from steerlab.data.registry import dataset_info
    from steerlab.evaluation.inspection import inspect_dataset

    try:
        kind = dataset_info(name).kind
        checks = label_check and kind in ("mc", "ab", "pairs")
        handle = load_handle(model, placement) if checks else None
        report = inspect_dataset(
            name, split, source=source, model=handle, examples=examples,
            label_sample=label_sample, seed=seed, batch_size=batch_size,
        )
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
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
        line += " · choices per item: " + ", ".join(f"{k}×{v}"
                                                     for k, v in report.choice_counts.items())
    say(line)
    for example in report.examples:
        where = f"{example.id}  {example.where}  [{example.split or 'no split'}]"
        say(f"\n[dim]{escape(where)}[/dim]")
        say(escape(example.question))
        for index, choice in enumerate(example.choices):
            mark = " [green]✓ marked[/green]" if index == example.marked else ""
            label = (("chosen", "rejected")[index] if report.kind in ("ab", "pairs")
                     else f"({chr(65 + index)})")
            say(f"  {label} {escape(choice)}{mark}")
    if report.balance is not None:
        balance = report.balance
        counts = "  ".join(f"{k} {v} (exp {balance.expected[k]:.0f})"
                           for k, v in balance.counts.items())
        say(f"\nmarked answers: {escape(counts)}  chi-square p = {balance.p_value:.2g}")
    if report.label_check is not None:
        say(f"\nlabel check on {escape(report.label_check.model)}: "
            f"{escape(report.label_check.message)}")
    for title, findings in (("bad rows", report.bad_rows), ("same answers", report.same_answers),
                            ("repeated choices", report.repeated_choices)):
        if findings:
            say(f"\n[bold]{title}[/bold] ({len(findings)}, first {min(len(findings), SHOWN)})")
            for finding in findings[:SHOWN]:
                text = (finding.message if finding.message.startswith(finding.where)
                        else f"{finding.where}: {finding.message}")
                say(f"  {escape(text)}")
    if report.duplicates:
        say(f"\n[bold]duplicated items[/bold] ({len(report.duplicates)}, "
            f"first {min(len(report.duplicates), SHOWN)})")
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

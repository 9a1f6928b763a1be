"""Blind rating by people: export a sheet with the arms hidden, rate it in the browser or a
spreadsheet, import the ratings as head-to-head records (``steerlab blind``)."""

# Library imports sit inside the commands, for start-up speed (see steerlab/cli/__init__.py).

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from steerlab.cli.app import blind_app, console
from steerlab.cli.inputs import fail, read_record_file
from steerlab.cli.openended import print_head_to_head
from steerlab.cli.options import AllowedHostsOpt, BaseOpt, DatasetsOpt, RecordsArg


@blind_app.command("export")
def blind_export(
    records: RecordsArg,
    arm: Annotated[str, typer.Option(
        help="The steered arm to rate against --base (e.g. steered+4).")],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Rating sheet to fill in: .csv or .jsonl.")],
    key: Annotated[Path, typer.Option(
        help="Key file (.json) saying which arm wrote which answer; keep it from the rater.")],
    base: BaseOpt = "unsteered",
    dataset: DatasetsOpt = None,
    seed: Annotated[int, typer.Option(
        help="Seed of the row order and the per-item answer order.")] = 0,
) -> None:
    """Write a blinded rating sheet (answers shuffled, arms hidden) and its key."""
    from steerlab.evaluation.judges.blind import export_blind

    try:
        count = export_blind(read_record_file(records, dataset), arm, out, key, base, seed)
    except ValueError as err:
        fail(str(err))
    console.print(f"{count} pairs in {out}: fill 'preferred' with 1, 2 or tie; key in {key}")


@blind_app.command("import")
def blind_import(
    sheet: Annotated[Path, typer.Argument(help="The filled rating sheet (.csv or .jsonl).")],
    key: Annotated[Path, typer.Option(help="The key file written by `steerlab blind export`.")],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Head-to-head records (.jsonl), appended to.")],
    rater: Annotated[str, typer.Option(
        help="Who rated; records name the judge human:<rater>.")] = "human",
) -> None:
    """Check and unblind filled ratings into head-to-head records; print win rates."""
    from steerlab.evaluation.judges.blind import import_ratings
    from steerlab.evaluation.judges.verdicts import summarize_head_to_head
    from steerlab.records import RecordWriter

    if not key.is_file():
        fail(f"key file not found: {key}")
    try:
        with RecordWriter(out) as writer:
            verdicts = import_ratings(sheet, key, rater, writer)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    print_head_to_head(summarize_head_to_head(verdicts))
    console.print(f"{len(verdicts)} verdicts appended to {out}")


@blind_app.command("web")
def blind_web(
    sheet: Annotated[Path, typer.Argument(help="The rating sheet from `steerlab blind export`.")],
    key: Annotated[Path, typer.Option(help="Its key file (stays on this server).")],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Folder for each rater's verdicts (verdicts-<rater>.jsonl, the "
        "records `blind import` writes), kept as they are given.")],
    rater: Annotated[list[str], typer.Option(
        "--rater", help="A rater's name; one link each; repeatable.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=0, max=65535)] = 8001,
    api_key_env: Annotated[str, typer.Option(
        help="Environment variable holding a key every page and call needs; unset: none.")]
        = "STEERLAB_API_KEY",
    allowed_host: AllowedHostsOpt = None,
) -> None:
    """Blind rating in the browser: each rater rates the sheet's pairs one at a time through a
    link of their own (keys 1 / 2 / T, a comment, undo); closing the tab and reopening the link
    resumes. Each rater's records are saved at every verdict; `steerlab analyze` on a folder
    holding them gives win rates and the raters' agreement."""
    import os

    import uvicorn

    from steerlab.serve.rating import RatingSession, create_rating_app

    try:
        session = RatingSession(sheet, key, out, rater)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    api_key = os.environ.get(api_key_env) or None
    for name in rater:
        console.print(f"{name}: http://{host}:{port}/web/rate.html?token={session.tokens[name]}"
                      + (f"&key=<${api_key_env}>" if api_key else ""))
    console.print(f"verdicts in {out}/verdicts-<rater>.jsonl as they are given")
    uvicorn.run(create_rating_app(session, api_key, host, allowed_host or []), host=host,
                port=port, log_level="warning")

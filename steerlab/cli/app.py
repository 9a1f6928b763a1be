"""The `steerlab` application: the error boundary every command runs under, the global
options, and the command groups."""

from __future__ import annotations

import inspect
import signal
import threading
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from typer.core import TyperGroup


def reflowed(text: str | None) -> str | None:
    """A docstring as help: each paragraph one line (the terminal wraps it to its width), not
    broken where the source was; a paragraph starting with click's ``\\b`` is kept as it is."""
    if not text:
        return text
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(p if p.startswith("\b") else " ".join(p.split()) for p in paragraphs)


def _reflow(command: click.Command) -> None:
    """``command``'s help, and that of every command under it, reflowed."""
    command.help = reflowed(command.help)
    for sub in getattr(command, "commands", {}).values():
        _reflow(sub)


class _ErrorBoundary(TyperGroup):
    """Every command under one error boundary: an error that escapes a command ends it with one
    line on stderr (its message, and its type where it is not a plain input error) and exit
    status 1, never a traceback; ``steerlab --debug COMMAND`` shows the traceback instead. Its
    commands' help texts are reflowed (:func:`reflowed`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _reflow(self)

    def invoke(self, ctx: typer.Context) -> object:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):  # exits and usage errors
            raise
        except Exception as err:  # the boundary: anything a command did not turn into a message
            if ctx.params.get("debug"):
                raise
            detail = " ".join(str(err).split()) or "(no message)"
            kind = "" if isinstance(err, USER_ERRORS) else f"{type(err).__name__}: "
            typer.echo(f"error: {kind}{detail} (steerlab --debug ... shows the traceback)",
                       err=True)
            raise typer.Exit(code=1) from None


USER_ERRORS = (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
               PermissionError, UnicodeError)


"""Errors whose message says what is wrong with the input: shown without their type."""


app = typer.Typer(
    cls=_ErrorBoundary,
    help="Train, apply and honestly evaluate steering vectors for Hugging Face language models.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _interruptible(
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an error instead "
                                                          "of its one-line message.")] = False,
) -> None:
    """Make SIGTERM (``kill``, a scheduler, a closing session) and SIGINT — which a shell's
    background job ignores — raise KeyboardInterrupt, so every command's Ctrl-C path keeps
    what it has written."""
    # (an embedding app's thread may call us)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.default_int_handler)


vector_app = typer.Typer(help="Inspect saved steering vectors; export them to llama.cpp and back; "
                         "make one from SAE features.",
                         no_args_is_help=True)


app.add_typer(vector_app, name="vector")


console = Console()


data_app = typer.Typer(help="List and inspect datasets: bundled and public benchmarks.",
                       no_args_is_help=True)


app.add_typer(data_app, name="data")


blind_app = typer.Typer(help="Blinded human rating of steered vs unsteered answers.",
                        no_args_is_help=True)


app.add_typer(blind_app, name="blind")


lora_app = typer.Typer(help="The LoRA baseline (peft), trained on the same pairs as a vector.",
                       no_args_is_help=True)


app.add_typer(lora_app, name="lora")


baseline_app = typer.Typer(help="Prompting baselines: k-shot examples and system prompts.",
                           no_args_is_help=True)


app.add_typer(baseline_app, name="baseline")


sae_app = typer.Typer(help="Sparse autoencoders: the features a behaviour's pairs move most.",
                      no_args_is_help=True)


app.add_typer(sae_app, name="sae")

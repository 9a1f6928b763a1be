"""The `steerlab` command: thin typer commands over the library, one module per command group
(``app``: the application and its error boundary; ``options`` and ``inputs``: what the commands
share; each group's module registers its commands when imported).

Commands import the library inside their bodies, on purpose: ``steerlab --help`` and a mistyped
option answer in a fraction of a second instead of waiting for torch and transformers to load."""

from importlib import import_module

from steerlab.cli.app import USER_ERRORS, app

COMMAND_GROUPS = ("train", "evaluate", "experiment", "generate", "vectors", "data", "openended",
                  "blind", "harness", "sae")
"""The modules that register commands, in the order ``steerlab --help`` lists them."""

for _group in COMMAND_GROUPS:
    import_module(f"steerlab.cli.{_group}")

__all__ = ["USER_ERRORS", "app"]

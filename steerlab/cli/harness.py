"""lm-evaluation-harness with steerlab's model type and offline tasks: `steerlab lm-eval`."""

# Library imports sit inside the commands, for start-up speed (see steerlab/cli/__init__.py).

from __future__ import annotations

import sys

import typer

from steerlab.cli.app import app
from steerlab.cli.inputs import fail


@app.command("lm-eval", add_help_option=False,
             context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def lm_eval(ctx: typer.Context) -> None:
    """lm-evaluation-harness's own command line, with steerlab's model type and tasks added.

    Every argument goes to lm-eval (`steerlab lm-eval --help` shows its help), e.g.
    `steerlab lm-eval --model steerlab --tasks steerlab_mmlu --limit 20 --model_args
    model=smollm2-135m-instruct,vector=v.safetensors,multiplier=4`. Tasks steerlab_mmlu,
    steerlab_piqa, steerlab_truthfulqa_mc1 and steerlab_wikitext read the shared data in place;
    --include_path adds your task folder(s) beside them (several joined with ':').
    lm-eval 0.4.13 finds models only in its own source tree, so plain `lm_eval` cannot see
    steerlab's.
    """
    try:
        from lm_eval.__main__ import cli_evaluate

        import steerlab.harness.model  # noqa: F401  (registers the steerlab model type)
        from steerlab.harness.task_paths import steerlab_tasks
    except ImportError as err:
        fail(f"steerlab lm-eval needs lm-evaluation-harness: pip install -e .[harness] ({err})")
    args = list(ctx.args)
    if not args or args[0].startswith("-"):
        args.insert(0, "run")  # lm-eval's evaluation command (`ls` and `validate` pass through)
    sys.argv = ["lm_eval", *args]
    with steerlab_tasks():  # steerlab's tasks beside any --include_path folder(s)
        cli_evaluate()

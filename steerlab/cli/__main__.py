"""``python -m steerlab.cli``: the ``steerlab`` command."""

from steerlab.cli import app

app()

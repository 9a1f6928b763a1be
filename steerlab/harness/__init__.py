"""lm-evaluation-harness with steerlab (imports lm-eval): a steered model type and offline tasks.

Importing :mod:`steerlab.harness.model` registers the ``steerlab`` model type with lm-eval;
:data:`TASKS` is the folder of steerlab's task definitions (``--include_path``), which read the
shared data in place. ``steerlab lm-eval`` is lm-eval's own command line with both added.
"""

from pathlib import Path

TASKS = Path(__file__).parent / "tasks"
"""steerlab's lm-eval task definitions (``steerlab_mmlu``, ``steerlab_piqa``,
``steerlab_truthfulqa_mc1``, ``steerlab_wikitext``)."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("STEERLAB_PROGRESS", "0")

from tiny import tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny():
    """The default tiny model (llama family, chat template); shared, never mutated."""
    return tiny_model("llama")

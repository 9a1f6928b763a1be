import logging
import os
import sys
import warnings
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("STEERLAB_PROGRESS", "0")

from tiny import tiny_model  # noqa: E402


class _DeprecationsAsWarnings(logging.Handler):
    """transformers reports some deprecations (the cache keyword's rename among them) through
    its logger, once per process; raise them as FutureWarning, which the suite makes errors."""

    def emit(self, record: logging.LogRecord) -> None:
        if "deprecat" in record.getMessage().lower():
            warnings.warn(record.getMessage(), FutureWarning, stacklevel=2)


logging.getLogger("transformers").addHandler(_DeprecationsAsWarnings(logging.WARNING))

ALL_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def _threads(request):
    """Tiny models run on one thread: their ops are too small to share, and with a second
    thread any other load on the machine makes each op wait for it (tens of times slower).
    Tests on the real model get every thread."""
    torch.set_num_threads(ALL_THREADS if request.node.get_closest_marker("integration") else 1)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """The default tiny model saved as a Hugging Face directory, for the CLI's --model."""
    path = tmp_path_factory.mktemp("tiny-llama")
    model = tiny_model("llama")
    model.model.save_pretrained(path)
    model.tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny():
    """The default tiny model (llama family, chat template); shared, never mutated."""
    return tiny_model("llama")


def pytest_terminal_summary(terminalreporter) -> None:
    """The fuzz suite's counts (tests/test_fuzz.py), when it ran."""
    fuzz = sys.modules.get("test_fuzz")
    if fuzz is not None and fuzz.FUZZ["inputs"]:
        counts = ", ".join(f"{value} {name}" for name, value in fuzz.FUZZ.items())
        terminalreporter.write_line(f"fuzz: {counts}")

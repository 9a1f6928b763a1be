"""steerlab's version, read from the installed package's metadata (pyproject.toml states it once);
recorded in every vector's metadata and every run directory."""

from importlib.metadata import version

__version__ = version("steerlab")

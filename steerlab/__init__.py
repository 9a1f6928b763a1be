"""steerlab: train, apply and honestly evaluate steering vectors for Hugging Face language models."""

__version__ = "0.1.0"

from steerlab.data import MCItem, PreferencePair, load_mc, load_pairs, nested_subsets, split  # noqa: E402
from steerlab.methods import train_caa  # noqa: E402
from steerlab.models import ModelHandle, load_model, wrap_model  # noqa: E402
from steerlab.steering import Steering  # noqa: E402
from steerlab.vectors import SteeringVector  # noqa: E402

__all__ = [
    "MCItem",
    "ModelHandle",
    "PreferencePair",
    "Steering",
    "SteeringVector",
    "__version__",
    "load_mc",
    "load_model",
    "load_pairs",
    "nested_subsets",
    "split",
    "train_caa",
    "wrap_model",
]

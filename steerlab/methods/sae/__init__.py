"""SAE features as a method: a sparse autoencoder's decoder rows as the vector, the features
listed, read from a file, or the top ones on the training pairs (see ``features``), so they sit
on the leaderboard beside CAA and BiPO."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import Field

from steerlab.data.files import PreferencePair
from steerlab.methods.contrast import read_contrast
from steerlab.methods.registry import MethodConfig, VectorMethod
from steerlab.methods.sae.dictionary import (
    FeatureDictionary,
    FeatureError,
    hook_layer,
    load_features,
)
from steerlab.methods.sae.features import (
    Feature,
    FeatureContrast,
    Scale,
    feature_vector,
    read_feature_file,
    save_top_features,
    top_features,
)
from steerlab.methods.training import TrainingRun
from steerlab.model.handle import ModelHandle
from steerlab.steering.vectors import SteeringVector


class SAEConfig(MethodConfig):
    """Which SAE, which of its features, and how the summed rows are scaled."""

    sae: str
    """An SAELens folder, or a Neuronpedia feature / vector JSON(L) file."""
    features: list[int] = []
    """Feature indices, summed with weight 1."""
    features_file: str | None = None
    """`steerlab sae top-features --out` JSON (each feature signed by its difference), or text
    with one ``N`` or ``N:w`` per line."""
    top_k: int = Field(default=1, gt=0)
    """Without features or a file: the k features whose activations differ most on the training
    pairs, each signed by its difference."""
    scale: Scale = "contrast"

    def fixed_layers(self) -> list[int] | None:
        """The layer the SAE's hook reads (from its config or rows, no weights loaded)."""
        layer = hook_layer(self.sae)
        return None if layer is None else [layer]


def _train(model: ModelHandle, pairs: Sequence[PreferencePair], layers: list[int],
           config: SAEConfig, run: TrainingRun) -> SteeringVector:
    if config.features and config.features_file:
        raise FeatureError("give the SAE's features or a features_file, not both")
    dictionary = load_features(config.sae)
    layer = dictionary.at_layer(layers[0])
    contrast = read_contrast(model, pairs, [layer], run.batch_size, run.progress,
                             "SAE activations")
    if config.features:
        chosen = [Feature(index) for index in config.features]
    elif config.features_file:
        chosen = read_feature_file(Path(config.features_file))
    else:
        found = top_features(model, dictionary, pairs, layer, config.top_k, contrast=contrast)
        chosen = [Feature(f.index, 1.0 if f.difference >= 0 else -1.0) for f in found]
    return feature_vector(model, dictionary, chosen, layer, scale=config.scale, pairs=pairs,
                          contrast=contrast)


METHODS = (
    VectorMethod("sae", "SAE features: decoder rows of a sparse autoencoder's features (listed, "
                 "from a file, or the top ones on the pairs)", SAEConfig, _train,
                 counted_as="caa"),  # the same passes: one contrast read at the SAE's layer
)

__all__ = ["METHODS", "Feature", "FeatureContrast", "FeatureDictionary", "FeatureError",
           "SAEConfig", "feature_vector", "load_features", "read_feature_file",
           "save_top_features", "top_features"]

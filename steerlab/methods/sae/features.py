"""SAE features as steering vectors, and the features a behaviour's pairs move most.

:func:`feature_vector` sums chosen features' decoder rows (each with a weight) into a vector at
the SAE's layer. :func:`top_features` encodes each pair's chosen and rejected sequence at the
last token, where CAA reads them, and ranks features by the mean chosen − rejected difference
of their activations: the usual way to find a feature to steer with.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from steerlab.data.files import PreferencePair
from steerlab.methods.contrast import Contrast, oriented, read_contrast
from steerlab.methods.sae.dictionary import FeatureDictionary, FeatureError
from steerlab.model.handle import ModelHandle
from steerlab.steering.vectors import SteeringVector, data_hash, meta_for

Scale = Literal["decoder", "contrast"]
"""``decoder``: the rows as saved (×m adds each feature as if active at m × its weight);
``contrast``: the summed direction signed and scaled like the other activation methods', to the
mean chosen − rejected gap along it (×1 moves as far as CAA's vector does)."""


@dataclass(frozen=True)
class Feature:
    """A feature and its weight in a vector (``N`` or ``N:w`` on the command line)."""

    index: int
    weight: float = 1.0

    @classmethod
    def parse(cls, text: str) -> Feature:
        """``"12"`` or ``"12:-0.5"``; a ValueError saying the form otherwise."""
        index, _, weight = text.strip().partition(":")
        try:
            feature = cls(int(index), float(weight) if weight else 1.0)
        except ValueError:
            raise ValueError(f"feature {text!r}: expected an index or index:weight "
                             "(12 or 12:-0.5)") from None
        if feature.index < 0 or not math.isfinite(feature.weight):
            raise ValueError(f"feature {text!r}: the index counts from 0 and the weight is a "
                             "finite number")
        return feature


def _fitting_layer(model: ModelHandle, dictionary: FeatureDictionary, layer: int | None) -> int:
    """The layer the features act at, once they are checked to fit ``model``."""
    layer = dictionary.at_layer(layer)
    if dictionary.d_model != model.d_model:
        raise FeatureError(f"{dictionary.path}: its features have {dictionary.d_model} numbers, "
                           f"{model.name}'s residual stream {model.d_model}")
    if not 0 <= layer < model.n_layers:
        raise FeatureError(f"{dictionary.path}: layer {layer} is outside {model.name}'s "
                           f"{model.n_layers} layers")
    return layer


def combined_direction(dictionary: FeatureDictionary, features: Sequence[Feature]) -> torch.Tensor:
    """Σ weight × decoder row over ``features``."""
    if not features:
        raise FeatureError(f"{dictionary.path}: choose at least one feature")
    indices = [f.index for f in features]
    if len(set(indices)) != len(indices):
        raise FeatureError(f"{dictionary.path}: a feature is listed twice ({indices})")
    return sum((f.weight * dictionary.row(f.index) for f in features),
               torch.zeros(dictionary.d_model))


def feature_vector(model: ModelHandle, dictionary: FeatureDictionary, features: Sequence[Feature],
                   layer: int | None = None, *, scale: Scale = "decoder",
                   pairs: Sequence[PreferencePair] = (), contrast: Contrast | None = None,
                   ) -> SteeringVector:
    """A steering vector from ``features``' decoder rows at the SAE's layer (see :data:`Scale`;
    ``contrast`` needs the pairs, or their contrast already read)."""
    layer = _fitting_layer(model, dictionary, layer)
    direction = combined_direction(dictionary, features)
    extra: dict[str, Any] = {"sae": dictionary.describe(), "scale": scale,
                             "features": [asdict(f) for f in features]}
    suggested = {f.index: dictionary.suggested[f.index] for f in features
                 if f.index in dictionary.suggested}
    if suggested:
        extra["suggested_strengths"] = suggested
    if scale == "contrast" and contrast is None:
        if not pairs:
            raise FeatureError("scale 'contrast' needs preference pairs to measure the gap")
        contrast = read_contrast(model, pairs, [layer], progress=False)
    if scale == "contrast":
        direction, vote = oriented(direction, contrast, layer)
        extra["sign_vote"] = {str(layer): vote.describe()}
    fields: dict[str, Any] = {}
    if contrast is not None:  # the pairs read: their hash and the layer's residual norm
        fields = {"data_hash": data_hash(list(pairs)) if pairs else None,
                  "n_examples": len(pairs) or None, "residual_norms": contrast.mean_norm}
    if float(direction.norm()) == 0.0:
        raise FeatureError(f"{dictionary.path}: features {[f.index for f in features]} sum to "
                           "zero")
    meta = meta_for(model, "sae", hyperparams={"features": [f.index for f in features],
                                               "scale": scale}, extra=extra, **fields)
    return SteeringVector({layer: direction}, meta)


@dataclass(frozen=True)
class FeatureContrast:
    """One feature's activations on a behaviour's pairs, at the last token."""

    index: int
    chosen: float
    """Mean activation on the chosen sequences."""
    rejected: float
    difference: float
    """Mean of chosen − rejected, pair by pair."""
    higher: int
    """Pairs whose chosen sequence activates it more."""
    lower: int
    t: float
    """The paired t statistic (0 where every difference is the same)."""


def top_features(model: ModelHandle, dictionary: FeatureDictionary,
                 pairs: Sequence[PreferencePair], layer: int | None = None, k: int = 20,
                 batch_size: int = 8, progress: bool = True,
                 contrast: Contrast | None = None) -> list[FeatureContrast]:
    """The ``k`` features whose mean activation differs most (in absolute value) between the
    chosen and the rejected sequences, largest first."""
    if dictionary.encode is None:
        raise FeatureError(f"{dictionary.path}: {dictionary.format} rows carry directions only, "
                           "no encoder to measure activations; use the SAE's SAELens folder")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    layer = _fitting_layer(model, dictionary, layer)
    if contrast is None:
        contrast = read_contrast(model, pairs, [layer], batch_size, progress,
                                 "SAE activations")
    chosen = dictionary.encode(contrast.chosen[layer])
    rejected = dictionary.encode(contrast.rejected[layer])
    gaps = (chosen - rejected).double()
    mean, n = gaps.mean(dim=0), gaps.shape[0]
    spread = gaps.std(dim=0) if n > 1 else torch.zeros_like(mean)
    t = torch.where(spread > 0, mean / (spread / math.sqrt(n)).clamp_min(1e-300),
                    torch.zeros_like(mean))
    order = torch.argsort(mean.abs(), descending=True, stable=True)[:k]
    higher, lower = (gaps > 0).sum(dim=0), (gaps < 0).sum(dim=0)
    chosen_mean, rejected_mean = chosen.double().mean(dim=0), rejected.double().mean(dim=0)
    return [FeatureContrast(int(i), float(chosen_mean[i]), float(rejected_mean[i]),
                            float(mean[i]), int(higher[i]), int(lower[i]), float(t[i]))
            for i in order.tolist()]


def save_top_features(found: Sequence[FeatureContrast], dictionary: FeatureDictionary, layer: int,
                      out: Path) -> None:
    """The ranking as JSON: what the run config's ``sae`` method reads as ``features_file``."""
    out.write_text(json.dumps({"sae": str(dictionary.path), "layer": layer,
                               "features": [asdict(f) for f in found]}, indent=1))


def read_feature_file(path: Path) -> list[Feature]:
    """Features from a file: :func:`save_top_features`'s JSON (each signed by its difference),
    or text with one ``N`` or ``N:w`` per line (``#`` starts a comment)."""
    try:
        text = path.read_text()
    except OSError as err:
        raise FeatureError(f"{path}: cannot read it ({err})") from err
    if path.suffix == ".json":
        try:
            listed = json.loads(text)["features"]
            return [Feature(int(item["index"]), math.copysign(1.0, float(item["difference"])))
                    for item in listed]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise FeatureError(f"{path}: expected `steerlab sae top-features --out` JSON (a "
                               f"'features' list of objects with 'index' and 'difference'): "
                               f"{err}") from err
    features = []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if entry:
            try:
                features.append(Feature.parse(entry))
            except ValueError as err:
                raise FeatureError(f"{path}:{number}: {err}") from err
    if not features:
        raise FeatureError(f"{path}: no features listed")
    return features

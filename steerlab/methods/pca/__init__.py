"""PCA steering vectors as repeng computes them (Vogel 2024, after Zou et al. 2023,
"Representation Engineering: A Top-Down Approach to AI Transparency").

``pca`` (repeng's ``pca_diff``): the first principal component of the pairs' activation
differences chosen − rejected, centred first as scikit-learn's PCA does (so it is the axis along
which the differences vary most, not their mean). ``pca-center`` (repeng's ``pca_center``): the
first principal component of every activation minus its pair's midpoint (the ±half-differences,
so the common direction counts). Both are read at the last token like CAA, signed so that most
pairs' chosen side projects higher, and scaled to the mean gap along the component
(:func:`~steerlab.methods.contrast.oriented`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from steerlab.data.files import PreferencePair
from steerlab.methods.contrast import (
    Contrast,
    contrast_meta,
    oriented,
    read_contrast,
    sign_votes,
)
from steerlab.methods.registry import MethodConfig, Trainer, VectorMethod
from steerlab.methods.training import TrainingRun
from steerlab.model.handle import ModelHandle
from steerlab.steering.vectors import SteeringVector


class PCAConfig(MethodConfig):
    """The PCA methods have no hyper-parameters: one component, from the training pairs."""


def first_component(rows: torch.Tensor) -> torch.Tensor:
    """The first principal component of (N, D) ``rows`` after removing their mean (float64
    SVD; sign arbitrary)."""
    centred = rows.double() - rows.double().mean(dim=0)
    return torch.linalg.svd(centred, full_matrices=False).Vh[0].float()


def pca_rows(contrast: Contrast, layer: int, center: bool) -> torch.Tensor:
    """What the component is taken of: the differences, or each activation minus its pair's
    midpoint (chosen rows, then rejected rows)."""
    if not center:
        return contrast.differences(layer)
    middle = (contrast.chosen[layer] + contrast.rejected[layer]) / 2
    return torch.cat([contrast.chosen[layer] - middle, contrast.rejected[layer] - middle])


def train_pca(model: ModelHandle, pairs: Sequence[PreferencePair], layers: int | Sequence[int],
              *, center: bool = False, batch_size: int = 8,
              progress: bool = True) -> SteeringVector:
    """A PCA steering vector at each of ``layers`` (``center``: repeng's pca_center, else
    pca_diff); see the module docstring."""
    layers = [layers] if isinstance(layers, int) else sorted(set(layers))
    if len(pairs) < 2:
        raise ValueError("PCA needs at least two preference pairs")
    name = "pca-center" if center else "pca"
    contrast = read_contrast(model, pairs, layers, batch_size, progress, f"{name} activations")
    signed = {layer: oriented(first_component(pca_rows(contrast, layer, center)), contrast,
                              layer) for layer in layers}
    meta = contrast_meta(
        model, name, pairs, contrast,
        component=("first principal component of activations minus their pair's midpoint"
                   if center else "first principal component of the centred differences"),
        scale="signed so most pairs' chosen side projects higher (a tie: the mean gap's sign); "
              "length = mean gap along it")
    sign_votes(name, {layer: vote for layer, (_, vote) in signed.items()}, meta)
    return SteeringVector({layer: v for layer, (v, _) in signed.items()}, meta)


def _trainer(center: bool) -> Trainer:
    def train(model: ModelHandle, pairs: Sequence[PreferencePair], layers: list[int],
              config: PCAConfig, run: TrainingRun) -> SteeringVector:
        return train_pca(model, pairs, layers, center=center, batch_size=run.batch_size,
                         progress=run.progress)

    return train


METHODS = (
    VectorMethod("pca", "PCA of the activation differences (repeng's pca_diff)", PCAConfig,
                 _trainer(False), multi_layer=True),
    VectorMethod("pca-center", "PCA of pair-centred activations (repeng's pca_center)",
                 PCAConfig, _trainer(True), multi_layer=True),
)

__all__ = ["METHODS", "PCAConfig", "first_component", "train_pca"]

"""Mean-centring (Jorgensen et al. 2023, "Improving Activation Steering in Language Models with
Mean-Centring"): the mean activation over texts showing the behaviour minus the mean activation
over a generic corpus, so what every text shares (the model's default activation) cancels.

The behaviour's texts are the chosen sides (prompt through the chat template, chosen completion
appended); each text and each corpus passage is pooled by its mean over tokens. The corpus is
WikiText-2's test paragraphs from the shared data unless the config names another text set.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from steerlab.data.files import PreferencePair, passages
from steerlab.data.spec import DataSpec
from steerlab.methods.registry import MethodConfig, VectorMethod
from steerlab.methods.training import TrainingRun
from steerlab.model.activations import read_layers
from steerlab.model.encoding import TokenSequence, encode
from steerlab.model.handle import ModelHandle
from steerlab.steering.vectors import SteeringVector, data_hash, meta_for


class MeanCentringConfig(MethodConfig):
    """Which generic corpus is subtracted, and how much of it."""

    corpus: str = "wikitext2:test"
    """A text dataset (name or name:split) whose paragraphs give the generic mean."""
    corpus_size: int = Field(256, gt=0)
    """Paragraphs of at least 30 words taken from it, in order."""
    max_tokens: int = Field(128, gt=0)
    """Tokens read of each paragraph."""


def train_mean_centring(model: ModelHandle, pairs: Sequence[PreferencePair],
                        layers: int | Sequence[int], corpus: Sequence[str], *,
                        max_tokens: int = 128, batch_size: int = 8,
                        progress: bool = True) -> SteeringVector:
    """Mean over the chosen texts minus mean over ``corpus`` passages, at each of ``layers``."""
    layers = [layers] if isinstance(layers, int) else sorted(set(layers))
    if not pairs or not corpus:
        raise ValueError("mean-centring needs preference pairs and corpus passages")
    behaviour = read_layers(model, encode(model, [p.prompt for p in pairs],
                                          [p.chosen for p in pairs]),
                            layers, batch_size, progress, "mean-centring: behaviour")
    tokens = [model.tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
              for text in corpus]
    generic = read_layers(model, [TokenSequence(tuple(ids), 0) for ids in tokens if ids],
                          layers, batch_size, progress, "mean-centring: corpus")
    directions = {layer: behaviour.mean[layer].mean(dim=0) - generic.mean[layer].mean(dim=0)
                  for layer in layers}
    meta = meta_for(model, "mean-centring",
                    hyperparams={"token": "mean over each text's tokens", "texts": "chosen",
                                 "corpus_passages": len(tokens), "max_tokens": max_tokens},
                    data_hash=data_hash(list(pairs)), n_examples=len(pairs),
                    residual_norms=behaviour.mean_norm)
    return SteeringVector(directions, meta)


def _train(model: ModelHandle, pairs: Sequence[PreferencePair], layers: list[int],
           config: MeanCentringConfig, run: TrainingRun) -> SteeringVector:
    lines = DataSpec.parse(config.corpus).load(run.seed)
    corpus = passages(lines, config.corpus_size)
    vector = train_mean_centring(model, pairs, layers, corpus, max_tokens=config.max_tokens,
                                 batch_size=run.batch_size, progress=run.progress)
    vector.meta.hyperparams["corpus"] = config.corpus
    return vector


METHODS = (
    VectorMethod("mean-centring", "mean activation of the chosen texts minus a generic corpus's",
                 MeanCentringConfig, _train, multi_layer=True),
)

__all__ = ["METHODS", "MeanCentringConfig", "train_mean_centring"]

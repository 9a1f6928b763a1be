"""The ``steerlab`` model type of lm-evaluation-harness: its Hugging Face model class, loaded
through steerlab (built-in names, dequantised GGUF, local folders) and steered by one steering
setting during every forward pass it makes, for scoring and for generation alike."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from steerlab.model.catalog import DEFAULT_MODEL
from steerlab.model.handle import ModelHandle, load_model
from steerlab.steering.conditions import Condition
from steerlab.steering.setting import Composition, SteeringSetting
from steerlab.steering.terms import load_composition
from steerlab.steering.vectors import SteeringVector


def _layers(text: str | int | None) -> list[int] | None:
    """``"10,14"`` (lm-eval passes ``model_args`` values as strings, or a lone number as int)."""
    if text is None or text == "":
        return None
    return [int(part) for part in str(text).replace(";", ",").split(",") if part.strip()]


@register_model("steerlab")
class SteerlabLM(HFLM):
    """lm-eval's ``HFLM`` over a steerlab model (a name, folder or file; or a loaded handle),
    steered by ``vector`` (a steerlab vector file)
    at ``multiplier`` on ``layers`` (comma-separated; default the vector's), with ``norm_ratio``,
    ``positions``, ``intervention`` and ``condition`` (a condition file) as everywhere in
    steerlab; or by ``steering``, a JSON file of several settings applied together
    (:func:`~steerlab.steering.terms.load_composition`); neither: unsteered.
    ``device`` as lm-eval gives it (a CUDA device where there is none means the CPU, as in
    lm-eval's own Hugging Face model); ``dtype``, ``device_map`` and ``quantization`` as
    everywhere in steerlab (:class:`~steerlab.model.placement.Placement`). Other arguments
    (``batch_size``, ``max_length``, ...) are ``HFLM``'s."""

    def __init__(self, model: str | ModelHandle = DEFAULT_MODEL, vector: str | None = None,
                 multiplier: float = 1.0, layers: str | int | None = None,
                 norm_ratio: float | None = None, positions: str = "all",
                 intervention: str = "add", condition: str | None = None,
                 steering: str | None = None,
                 device: str | None = None, dtype: str | None = None,
                 device_map: str | None = None, quantization: str | None = None,
                 **kwargs: Any) -> None:
        if device and device.startswith("cuda") and not torch.cuda.is_available():
            device = "cpu"  # lm-eval's default is cuda:0; its own HF model falls back alike
        if device_map:
            device = None  # the map places the layers
        self.handle = model if isinstance(model, ModelHandle) else load_model(
            model, device=device or "auto", dtype=dtype or "auto", device_map=device_map or None,
            quantization=quantization or None)  # type: ignore[arg-type]
        super().__init__(pretrained=self.handle.model, tokenizer=self.handle.tokenizer,
                         **kwargs)
        self.steering: Composition | None = None
        if steering is not None:
            if vector is not None:
                raise ValueError("give either vector=... or steering=<file>, not both")
            self.steer(load_composition(steering))
        elif vector is not None:
            self.steer(Composition((SteeringSetting(
                SteeringVector.load(vector), float(multiplier), _layers(layers),
                None if norm_ratio in (None, "") else float(norm_ratio),
                positions, intervention,  # type: ignore[arg-type]
                Condition.load(condition) if condition else None),)))
        elif condition is not None:
            raise ValueError("condition=... gates a vector: give vector=... too")

    def steer(self, steering: Composition | None) -> None:
        """Steer every later forward pass with ``steering`` (None: unsteered), checked against
        the model now (a layer it lacks, another d_model) rather than at the first pass."""
        if steering is not None:
            steering.fit(self.handle)
        self.steering = steering

    def _steered(self):
        """The context every forward pass runs in: the setting applied, or nothing."""
        return self.steering.apply(self.handle) if self.steering is not None else nullcontext()

    def _model_call(self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None,
                    labels: torch.Tensor | None = None) -> torch.Tensor:
        with self._steered():
            return super()._model_call(inps, attn_mask, labels)

    def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str],
                        **generation_kwargs: Any) -> torch.Tensor:
        with self._steered():
            return super()._model_generate(context, max_length, stop, **generation_kwargs)

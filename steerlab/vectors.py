"""`SteeringVector`: per-layer directions plus the metadata that says where they came from.

Saved as ``.safetensors`` (tensors ``layer.<L>`` and a JSON metadata entry), never pickled.
Vectors add, subtract, scale and normalise; :meth:`SteeringVector.apply` steers a model and
:meth:`SteeringVector.ablate` projects the vector's direction out of it.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from torch import nn

from steerlab import __version__
from steerlab.composition import Part, compose
from steerlab.models import ModelHandle, config_fingerprint, find_decoder_layers, text_config_value
from steerlab.steering import Positions, Steering

_META_KEY = "steerlab"


class VectorMeta(BaseModel):
    """Provenance of a vector: model, method, hyper-parameters, data, and calibration norms."""

    model_config = ConfigDict(extra="forbid")

    model_name: str
    model_fingerprint: str
    d_model: int
    method: str
    hyperparams: dict[str, Any] = Field(default_factory=dict)
    data_hash: str | None = None
    n_examples: int | None = None
    residual_norms: dict[int, float] = Field(default_factory=dict)
    """Mean L2 norm of each layer's output on a calibration set, used by ``norm_ratio``."""
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    steerlab_version: str = __version__
    extra: dict[str, Any] = Field(default_factory=dict)


class SteeringVector:
    """Directions for one or more decoder layers of a model, with provenance."""

    def __init__(self, directions: dict[int, torch.Tensor], meta: VectorMeta) -> None:
        if not directions:
            raise ValueError("a steering vector needs at least one layer")
        for layer, tensor in directions.items():
            if tensor.shape != (meta.d_model,):
                raise ValueError(
                    f"layer {layer}: direction has shape {tuple(tensor.shape)}, "
                    f"expected ({meta.d_model},)"
                )
        self.directions = {
            int(k): v.detach().to(torch.float32).cpu().contiguous()
            for k, v in sorted(directions.items())
        }
        self.meta = meta

    @property
    def layers(self) -> list[int]:
        return list(self.directions)

    @property
    def d_model(self) -> int:
        return self.meta.d_model

    @property
    def id(self) -> str:
        """A content hash of the directions: two vectors with the same numbers share an id."""
        digest = hashlib.sha256()
        for layer, tensor in self.directions.items():
            digest.update(str(layer).encode())
            digest.update(tensor.numpy().tobytes())
        return digest.hexdigest()[:12]

    def norms(self) -> dict[int, float]:
        return {layer: float(v.norm()) for layer, v in self.directions.items()}

    def __repr__(self) -> str:
        return (
            f"SteeringVector(id={self.id}, method={self.meta.method!r}, layers={self.layers}, "
            f"d_model={self.d_model}, model={self.meta.model_name!r})"
        )

    # ---- arithmetic -------------------------------------------------------------------------

    def _derived(self, directions: dict[int, torch.Tensor], method: str, **info: Any) -> SteeringVector:
        meta = self.meta.model_copy(
            update={
                "method": method,
                "created_at": datetime.now(timezone.utc).isoformat(),
                "extra": {**self.meta.extra, **info},
            }
        )
        return SteeringVector(directions, meta)

    def _combine(self, other: SteeringVector, sign: float) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        if other.d_model != self.d_model:
            raise ValueError(f"cannot combine vectors of d_model {self.d_model} and {other.d_model}")
        zero = torch.zeros(self.d_model)
        layers = sorted(set(self.directions) | set(other.directions))
        directions = {
            layer: self.directions.get(layer, zero) + sign * other.directions.get(layer, zero)
            for layer in layers
        }
        op = "sum" if sign > 0 else "difference"
        return self._derived(directions, op, operands=[self.id, other.id])

    def __add__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, 1.0)

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, -1.0)

    def __mul__(self, scalar: float) -> SteeringVector:
        if not isinstance(scalar, (int, float)):
            return NotImplemented
        scaled = {layer: v * float(scalar) for layer, v in self.directions.items()}
        return self._derived(scaled, "scaled", scale=float(scalar), source=self.id)

    __rmul__ = __mul__

    def __neg__(self) -> SteeringVector:
        return self * -1.0

    def restricted(self, layers: Sequence[int]) -> SteeringVector:
        """The directions at ``layers`` only (e.g. one layer of a multi-layer CAA vector)."""
        missing = sorted(set(layers) - set(self.directions))
        if missing:
            raise ValueError(f"vector has no direction for layers {missing} (has {self.layers})")
        return self._derived({layer: self.directions[layer] for layer in layers}, self.meta.method,
                             source=self.id)

    def normalized(self) -> SteeringVector:
        """Each layer's direction scaled to unit L2 norm."""
        unit = {layer: v / v.norm().clamp_min(1e-12) for layer, v in self.directions.items()}
        return self._derived(unit, "normalized", source=self.id)

    # ---- steering ---------------------------------------------------------------------------

    def additions(
        self,
        multiplier: float = 1.0,
        layers: list[int] | None = None,
        norm_ratio: float | None = None,
    ) -> dict[int, torch.Tensor]:
        """The exact vector added at each layer for these settings.

        ``layers`` selects among the vector's layers; a single-layer vector may also be placed
        at any other layers. ``norm_ratio=r`` rescales each direction to r times the stored mean
        residual norm of its layer before the multiplier is applied.
        """
        if layers is None:
            placed = dict(self.directions)
        elif len(self.directions) == 1:
            (only,) = self.directions.values()
            placed = {int(layer): only for layer in layers}
        else:
            missing = sorted(set(layers) - set(self.directions))
            if missing:
                raise ValueError(f"vector has no direction for layers {missing} (has {self.layers})")
            placed = {int(layer): self.directions[layer] for layer in layers}
        if norm_ratio is None:
            return {layer: multiplier * v for layer, v in placed.items()}
        missing = sorted(set(placed) - set(self.meta.residual_norms))
        if missing:
            raise ValueError(
                f"norm_ratio needs residual norms for layers {missing}; measure them with "
                "vector.calibrate(model, prompts)"
            )
        return {
            layer: (multiplier * norm_ratio * self.meta.residual_norms[layer] / v.norm().clamp_min(1e-12)) * v
            for layer, v in placed.items()
        }

    def calibrate(self, model: ModelHandle, texts: list[str], batch_size: int = 8) -> SteeringVector:
        """Measure and store the mean residual norm at this vector's layers on ``texts``."""
        from steerlab.activations import mean_residual_norms

        norms = mean_residual_norms(model, texts, self.layers, batch_size=batch_size)
        self.meta.residual_norms.update(norms)
        return self

    def check_compatible(self, model: nn.Module) -> None:
        """Fail on a d_model mismatch; warn when the model's config fingerprint differs."""
        d_model = text_config_value(model.config, "hidden_size", "n_embd", "d_model")
        if d_model != self.d_model:
            raise ValueError(
                f"vector has d_model {self.d_model} but the model has d_model {d_model}: "
                "it was trained for a different architecture"
            )
        fingerprint = config_fingerprint(model.config)
        if fingerprint != self.meta.model_fingerprint:
            warnings.warn(
                f"vector was trained on '{self.meta.model_name}' (fingerprint "
                f"{self.meta.model_fingerprint}); this model's fingerprint is {fingerprint}. "
                "Applying anyway (transfer to a related model).",
                stacklevel=3,
            )

    def target(self, model: ModelHandle | nn.Module) -> tuple[nn.Module, nn.ModuleList]:
        """The Hugging Face model and its decoder layers, once this vector is checked to fit."""
        if isinstance(model, ModelHandle):
            hf_model, decoder_layers = model.model, model.layers
        else:
            hf_model, decoder_layers = model, find_decoder_layers(model)
        self.check_compatible(hf_model)
        return hf_model, decoder_layers

    def apply(
        self,
        model: ModelHandle | nn.Module,
        multiplier: float = 1.0,
        layers: list[int] | None = None,
        positions: Positions = "all",
        norm_ratio: float | None = None,
    ) -> Steering:
        """Steer ``model``: add ``multiplier`` × this vector at its layers.

        Returns an active :class:`~steerlab.steering.Steering`; use it in a ``with`` block or call
        ``.remove()``. ``positions`` is ``"all"``, ``"prompt"`` or ``"generated"``.
        """
        return compose([Part(self, multiplier, layers, norm_ratio)]).apply(model, positions)

    def ablate(
        self,
        model: ModelHandle | nn.Module,
        layers: list[int] | None = None,
        strength: float = 1.0,
        positions: Positions = "all",
    ) -> Steering:
        """Directional ablation: project this vector's direction out of the output of each of
        its layers (or ``layers``: a single-layer vector's direction at any layers, e.g.
        ``list(range(model.n_layers))`` for all), h ← h − strength (h·d̂) d̂ at every position.

        Returns an active :class:`~steerlab.steering.Steering`, like :meth:`apply`.
        """
        part = Part(self, strength, layers, intervention="ablate")
        return compose([part]).apply(model, positions)

    # ---- persistence ------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the vector as safetensors with its metadata as JSON in the header.

        Written beside ``path`` and renamed into place, so an interruption never leaves half a
        file (training checkpoints rely on this).
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"layer.{layer}": v for layer, v in self.directions.items()}
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(tensors, str(tmp), metadata={_META_KEY: self.meta.model_dump_json()})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> SteeringVector:
        """Read a vector written by :meth:`save`; errors name the file and what is wrong."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"steering vector file not found: {path}")
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        if _META_KEY not in header:
            raise ValueError(f"{path}: not a steerlab vector (no '{_META_KEY}' metadata)")
        meta = VectorMeta.model_validate(json.loads(header[_META_KEY]))
        tensors = load_file(str(path))
        directions = {int(name.split(".", 1)[1]): t for name, t in tensors.items()}
        return cls(directions, meta)


def data_hash(records: list[Any]) -> str:
    """A stable hash of training data (dataclasses or dicts), stored in vector metadata."""
    from dataclasses import asdict, is_dataclass

    rows = [asdict(r) if is_dataclass(r) else r for r in records]
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:16]


def meta_for(model: ModelHandle, method: str, **fields: Any) -> VectorMeta:
    """Metadata describing a vector made for ``model`` by ``method``."""
    return VectorMeta(
        model_name=model.name,
        model_fingerprint=model.fingerprint,
        d_model=model.d_model,
        method=method,
        **fields,
    )

"""`SteeringVector`: per-layer directions plus the metadata that says where they came from.

Saved as ``.safetensors`` (tensors ``layer.<L>`` and a JSON metadata entry), never pickled.
Vectors add, subtract, scale and normalise; :meth:`SteeringVector.apply` steers a model and
:meth:`SteeringVector.ablate` projects the vector's direction out of it.

**llama.cpp control vectors.** :meth:`SteeringVector.to_gguf` writes the GGUF file that
llama.cpp's ``--control-vector`` / ``--control-vector-scaled`` read, and
:meth:`SteeringVector.from_gguf` reads one. The format, as llama.cpp reads and writes it
(``common_control_vector_load_one`` in ``common/common.cpp``, ``llama_adapter_cvec`` in
``src/llama-adapter.cpp``, ``export_gguf`` of ``cvector-generator``):

- metadata ``general.architecture = "controlvector"``, ``controlvector.model_hint`` (a string;
  llama.cpp's generator writes the model's architecture) and ``controlvector.layer_count``
  (int32, the number of direction tensors). llama.cpp's loader reads none of these keys.
- one tensor per steered layer named ``direction.N``: float32, one dimension of ``n_embd``. The
  loader rejects the whole file if any tensor is named otherwise, or is ``direction.0``.

Layer indexing: llama.cpp adds ``strength × direction.N`` to the output of block N, counted from
0 (each block ends with ``build_cvec(cur, il)``, adding ``tensors[il]``, which is filled from
``direction.il``); block 0's output is never steered. steerlab's layer L is the output of
``model.layers[L]``, also counted from 0, so **steerlab layer L is written as direction.L**, and
a direction at layer 0 cannot be exported (a clear error). Like ``positions="all"``, llama.cpp
adds at every token. steerlab's own metadata goes in extra keys under ``steerlab.`` (never extra
tensors, which llama.cpp would reject), so re-import restores the vector's provenance.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from safetensors.torch import save_file
from torch import nn

from steerlab.model.activations import mean_residual_norms
from steerlab.model.handle import (
    ModelHandle,
    config_fingerprint,
    find_decoder_layers,
    text_config_value,
)
from steerlab.steering.edits import Ablate, Add, Edit, placed_edits
from steerlab.steering.hooks import Edits, Positions, RowCondition, Steering
from steerlab.version import __version__

_META_KEY = "steerlab"
GGUF_ARCH = "controlvector"
"""``general.architecture`` of a llama.cpp control vector (see the module docstring)."""
_GGUF_META = "steerlab.meta"
_GGUF_EXPORT = "steerlab.export"
_DIRECTION = "direction."


class VectorMeta(BaseModel):
    """Provenance of a vector: model, method, hyper-parameters, data, and calibration norms."""

    model_config = ConfigDict(extra="forbid")

    model_name: str
    model_fingerprint: str
    d_model: int
    method: str
    n_layers: int | None = None
    """The model's decoder layers (None in files from before it was recorded)."""
    hyperparams: dict[str, Any] = Field(default_factory=dict)
    data_hash: str | None = None
    n_examples: int | None = None
    residual_norms: dict[int, float] = Field(default_factory=dict)
    """Mean L2 norm of each layer's output on a calibration set, used by ``norm_ratio``."""
    site: Literal["residual", "attention"] = "residual"
    """Where the directions act: each layer's output, or the heads' outputs at the input of its
    attention output projection (inference-time intervention)."""
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    steerlab_version: str = __version__
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("residual_norms")
    @classmethod
    def _positive_norms(cls, norms: dict[int, float]) -> dict[int, float]:
        """A norm is a finite number above 0 (a file claiming otherwise scales nonsense)."""
        for layer, norm in norms.items():
            if not (math.isfinite(norm) and norm > 0):
                raise ValueError(f"residual norm of layer {layer} must be a finite number above "
                                 f"0, got {norm}")
        return norms


MAX_RESIDUAL_MULTIPLE = 100.0
"""The largest addition, as a multiple of its layer's mean residual norm, that still steers: a
larger one leaves nothing of the model's own activations (it reads only the vector, and answers
empty or tied), so it is refused."""
MAX_ADDITION_NORM = 1e6
"""The same bound for a vector without stored residual norms: no model's residual stream is
this large."""


class SteeringVector:
    """Directions for one or more decoder layers of a model, with provenance."""

    def __init__(self, directions: dict[int, torch.Tensor], meta: VectorMeta) -> None:
        if not directions:
            raise ValueError("a steering vector needs at least one layer")
        for layer, tensor in directions.items():
            if int(layer) < 0:
                raise ValueError(f"layer {layer}: layer indices count from 0")
            if tensor.shape != (meta.d_model,):
                raise ValueError(
                    f"layer {layer}: direction has shape {tuple(tensor.shape)}, "
                    f"expected ({meta.d_model},)"
                )
            if not bool(torch.isfinite(tensor).all()):
                raise ValueError(f"layer {layer}: direction has non-finite values (NaN or inf)")
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

    def _derived(self, directions: dict[int, torch.Tensor], method: str,
                 **info: Any) -> SteeringVector:
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
            raise ValueError(
                f"cannot combine vectors of d_model {self.d_model} and {other.d_model}")
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

    def check_norm_ratio(self, norm_ratio: float) -> None:
        """Raise ValueError unless ``norm_ratio`` can scale this vector: a finite number above
        0, for a vector on the residual stream (the norms it scales to are the residual's)."""
        if not (math.isfinite(norm_ratio) and norm_ratio > 0):
            raise ValueError(f"norm_ratio must be a finite number above 0, got {norm_ratio}")
        if self.meta.site != "residual":
            raise ValueError("norm_ratio scales to the residual norm; this vector acts on the "
                             f"{self.meta.site} site")

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
        if not math.isfinite(multiplier):
            raise ValueError(f"multiplier must be a finite number, got {multiplier}")
        if norm_ratio is not None:
            self.check_norm_ratio(norm_ratio)
        if layers is None:
            placed = dict(self.directions)
        elif len(self.directions) == 1:
            (only,) = self.directions.values()
            placed = {int(layer): only for layer in layers}
            negative = [layer for layer in placed if layer < 0]
            if negative:
                raise ValueError(f"layer {negative[0]} out of range: layers count from 0")
        else:
            missing = sorted(set(layers) - set(self.directions))
            if missing:
                raise ValueError(
                    f"vector has no direction for layers {missing} (has {self.layers})")
            placed = {int(layer): self.directions[layer] for layer in layers}
        if norm_ratio is None:
            added = {layer: multiplier * v for layer, v in placed.items()}
        else:
            missing = sorted(set(placed) - set(self.meta.residual_norms))
            if missing:
                raise ValueError(
                    f"norm_ratio needs residual norms for layers {missing}; measure them with "
                    "vector.calibrate(model, prompts)"
                )
            added = {
                layer: (multiplier * norm_ratio * self.meta.residual_norms[layer]
                        / v.norm().clamp_min(1e-12)) * v
                for layer, v in placed.items()
            }
        for layer, v in added.items():
            if not bool(torch.isfinite(v).all()):
                raise ValueError(f"multiplier {multiplier} and norm_ratio {norm_ratio} overflow "
                                 f"the vector added at layer {layer}")
            norm, residual = float(v.norm()), self.meta.residual_norms.get(layer)
            limit = MAX_RESIDUAL_MULTIPLE * residual if residual else MAX_ADDITION_NORM
            if norm > limit:
                scale = (f"{MAX_RESIDUAL_MULTIPLE:g} times the layer's mean residual norm "
                         f"{residual:.4g}" if residual else f"{MAX_ADDITION_NORM:g}")
                raise ValueError(
                    f"the vector added at layer {layer} has norm {norm:.4g}, over {scale}: the "
                    "model would read only the vector; lower the multiplier (or norm_ratio)")
        return added

    def calibrate(self, model: ModelHandle, texts: list[str],
                  batch_size: int = 8) -> SteeringVector:
        """Measure and store the mean residual norm at this vector's layers on ``texts``."""

        norms = mean_residual_norms(model, texts, self.layers, batch_size=batch_size)
        self.meta.residual_norms.update(norms)
        return self

    def check_compatible(self, model: nn.Module) -> None:
        """Fail on a d_model mismatch; warn when the model's config fingerprint differs."""
        check_model_fit(model, self.meta, "vector")

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
        condition: RowCondition | None = None,
    ) -> Steering:
        """Steer ``model``: add ``multiplier`` × this vector at its layers.

        Returns an active :class:`~steerlab.steering.hooks.Steering`; use it in a ``with`` block or
        call ``.remove()``. ``positions`` is ``"all"``, ``"prompt"`` or ``"generated"``. With a
        ``condition`` (a :class:`~steerlab.steering.conditions.Condition`) only the sequences
        whose prompt meets it are steered (decided per row). The same as
        ``SteeringSetting(vector, multiplier, layers, norm_ratio, positions,
        condition=condition).apply(model)``.
        """
        return self._steer(model, Add, self.additions(multiplier, layers, norm_ratio), 1.0,
                           positions, condition)

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

        Returns an active :class:`~steerlab.steering.hooks.Steering`, like :meth:`apply`.
        """
        return self._steer(model, Ablate, self.additions(1.0, layers), strength, positions, None)

    def _steer(self, model: ModelHandle | nn.Module, kind: type[Edit],
               placed: dict[int, torch.Tensor], amount: float, positions: Positions,
               condition: RowCondition | None) -> Steering:
        """One group of ``kind`` edits at the ``placed`` directions, applied to ``model`` once
        this vector and the condition are checked to fit it."""
        hf_model, decoder_layers = self.target(model)
        if condition is not None:
            condition.check_compatible(hf_model)
        edits = Edits({layer: [edit] for layer, edit in
                       placed_edits(kind, placed, amount, self.id).items()},
                      positions, condition, self.meta.site)
        return Steering(hf_model, decoder_layers, [edits])

    # ---- persistence ------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the vector as safetensors with its metadata as JSON in the header.

        Written beside ``path`` and renamed into place, so an interruption never leaves half a
        file (training checkpoints rely on this).
        """
        tensors = {f"layer.{layer}": v for layer, v in self.directions.items()}
        return save_tensors(path, tensors, {_META_KEY: self.meta.model_dump_json()})

    @classmethod
    def load(cls, path: str | Path) -> SteeringVector:
        """Read a vector written by :meth:`save`; errors name the file and what is wrong."""
        tensors, header = load_tensors(path, "vector")
        names = sorted(name for name in tensors if not name.startswith("layer."))
        if names:
            raise ValueError(f"{path}: not a steering vector (tensors {names}; a vector has "
                             "layer.<L>): a condition loads with Condition.load")
        try:
            meta = VectorMeta.model_validate(json.loads(header[_META_KEY]))
            directions = {int(name.split(".", 1)[1]): t for name, t in tensors.items()}
            return cls(directions, meta)
        except ValueError as err:  # pydantic's and json's errors are ValueErrors too
            raise ValueError(f"{path}: {' '.join(str(err).split())}") from err

    def to_gguf(
        self,
        path: str | Path,
        multiplier: float = 1.0,
        layers: list[int] | None = None,
        norm_ratio: float | None = None,
        model_hint: str | None = None,
    ) -> Path:
        """Write this vector as a llama.cpp control vector: ``direction.L`` = what :meth:`additions`
        gives at layer L for these settings, so llama.cpp at strength 1 steers as
        ``apply(model, multiplier, layers, norm_ratio=norm_ratio)`` does (see the module docstring).

        ``model_hint`` defaults to the vector's model name. The vector's metadata and these
        settings go in ``steerlab.meta`` / ``steerlab.export``. Written beside ``path`` and
        renamed into place, like :meth:`save`.
        """
        from gguf import GGUFWriter

        if self.meta.site != "residual":
            raise ValueError(f"llama.cpp control vectors add to layer outputs; this vector acts "
                             f"on the {self.meta.site} site and cannot be exported")
        additions = self.additions(multiplier, layers, norm_ratio)
        beyond = [layer for layer in additions
                  if self.meta.n_layers is not None and layer >= self.meta.n_layers]
        if beyond:  # no model here to check against: the one the vector was made for
            raise ValueError(f"layer {beyond[0]} out of range: the model has "
                             f"{self.meta.n_layers} layers")
        if 0 in additions:
            raise ValueError(
                "layer 0 cannot be exported: llama.cpp has no direction.0 (it never steers the "
                f"output of block 0); export the vector's other layers (it has {sorted(additions)})"
            )
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        writer = GGUFWriter(tmp, GGUF_ARCH)
        writer.add_string(f"{GGUF_ARCH}.model_hint", model_hint or self.meta.model_name)
        writer.add_int32(f"{GGUF_ARCH}.layer_count", len(additions))
        writer.add_string(_GGUF_META, self.meta.model_dump_json())
        settings = {"source_id": self.id, "multiplier": float(multiplier), "layers": layers,
                    "norm_ratio": norm_ratio}
        writer.add_string(_GGUF_EXPORT, json.dumps(settings))
        for layer, direction in additions.items():
            writer.add_tensor(f"{_DIRECTION}{layer}", direction.numpy().astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.replace(path)
        return path

    @classmethod
    def from_gguf(cls, path: str | Path) -> SteeringVector:
        """Read a llama.cpp control vector: ``direction.N`` becomes layer N (what llama.cpp adds
        at strength 1). A file from :meth:`to_gguf` gets its metadata back (plus, when the export
        scaled or placed the vector, ``extra["gguf_export"]`` saying how); any other file gets
        minimal metadata naming the file and its model hint. Errors name the file and tensor."""
        from gguf import GGMLQuantizationType, GGUFReader

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"control vector file not found: {path}")
        try:
            reader = GGUFReader(path)
        except (ValueError, OSError) as err:
            raise ValueError(f"{path}: not a GGUF file ({err})") from None

        def text(key: str) -> str | None:
            field = reader.get_field(key)
            return None if field is None else str(field.contents())

        arch = text("general.architecture")
        if arch != GGUF_ARCH:
            raise ValueError(f"{path}: general.architecture is {arch!r}, not {GGUF_ARCH!r}: "
                             "not a control vector")
        directions: dict[int, torch.Tensor] = {}
        for tensor in reader.tensors:
            index = tensor.name.removeprefix(_DIRECTION)
            if not tensor.name.startswith(_DIRECTION) or not index.isdigit() or int(index) == 0:
                raise ValueError(f"{path}: tensor {tensor.name!r} is not direction.N with N ≥ 1")
            if tensor.tensor_type != GGMLQuantizationType.F32 or len(tensor.shape) != 1:
                raise ValueError(f"{path}: tensor {tensor.name!r} must be float32 with one "
                                 f"dimension, got {tensor.tensor_type.name} of shape "
                                 f"{list(tensor.shape)}")
            directions[int(index)] = torch.from_numpy(np.array(tensor.data, dtype=np.float32))
        if not directions:
            raise ValueError(f"{path}: no direction tensors")
        sizes = {len(v) for v in directions.values()}
        if len(sizes) > 1:
            raise ValueError(f"{path}: direction tensors differ in length: {sorted(sizes)}")
        stored = text(_GGUF_META)
        if stored is None:
            hint = text(f"{GGUF_ARCH}.model_hint") or "unknown"
            meta = VectorMeta(model_name=hint, model_fingerprint="unknown", d_model=sizes.pop(),
                              method="gguf", extra={"source": path.name, "model_hint": hint})
            return cls(directions, meta)
        meta = VectorMeta.model_validate_json(stored)
        settings = json.loads(text(_GGUF_EXPORT) or "{}")
        scaled = settings.get("multiplier", 1.0) != 1.0 or settings.get("norm_ratio") is not None
        if scaled or settings.get("layers") is not None:
            meta.extra = {**meta.extra, "gguf_export": settings}
        return cls(directions, meta)

def check_model_fit(model: nn.Module, meta: VectorMeta, what: str) -> None:
    """Fail when ``model``'s d_model is not the one ``meta`` was made for; warn when its config
    fingerprint differs (a related model: applying anyway). ``what`` names the object."""
    d_model = text_config_value(model.config, "hidden_size", "n_embd", "d_model")
    if d_model != meta.d_model:
        raise ValueError(
            f"{what} has d_model {meta.d_model} but the model has d_model {d_model}: "
            "it was made for a different architecture"
        )
    fingerprint = config_fingerprint(model.config)
    if fingerprint != meta.model_fingerprint:
        warnings.warn(
            f"{what} was made on '{meta.model_name}' (fingerprint {meta.model_fingerprint}); "
            f"this model's fingerprint is {fingerprint}. Applying anyway (transfer to a related "
            "model).",
            stacklevel=4,
        )


def save_tensors(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> Path:
    """Write ``tensors`` with string ``metadata`` as safetensors: beside ``path``, then renamed
    into place, so an interruption never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path


def load_tensors(path: str | Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and header metadata of a steerlab safetensors file, read whole into memory
    (not memory-mapped: a server holding a vector survives its file being truncated or
    rewritten, and keeps what it read until it loads the file again); errors name the file
    (missing, or without steerlab metadata: not a steerlab ``what``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"steering {what} file not found: {path}")
    from safetensors import SafetensorError
    from safetensors.torch import load

    data = path.read_bytes()
    try:
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + size]) if 8 < 8 + size <= len(data) else None
        if not isinstance(header, dict):
            raise ValueError(f"{path}: not a safetensors steering {what} (no readable header)")
        metadata = header.get("__metadata__")
        if not isinstance(metadata, dict) or _META_KEY not in metadata:
            raise ValueError(f"{path}: not a steerlab {what} (no '{_META_KEY}' metadata)")
        return load(data), metadata
    except (SafetensorError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a safetensors steering {what} ({err})") from err


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
        n_layers=model.n_layers,
        method=method,
        **fields,
    )

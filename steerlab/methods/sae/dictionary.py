"""Sparse-autoencoder features read from where they are published: a folder saved by SAELens
(``cfg.json`` + ``sae_weights.safetensors``, loaded by sae-lens itself, every architecture it
knows) or Neuronpedia's feature and vector JSON (its exports' ``features/batch-N.jsonl.gz``
rows, ``/api/feature`` and ``/api/vector/get`` replies).

A feature's direction is its **decoder row**, as saved: an SAE writes activation × row into its
reconstruction, and Neuronpedia steers by adding strength × row (``SIMPLE_ADDITIVE``, the row not
normalised), so multiplier m adds the row as a feature active at m. Only SAELens folders can
encode activations (what ``top-features`` needs); Neuronpedia rows carry directions only.

Layers: an SAE names the activation it reads as a TransformerLens hook. steerlab's layer L is
the output of decoder layer L, which is ``blocks.L.hook_resid_post`` and
``blocks.(L+1).hook_resid_pre``; ``model.layers.L`` (Hugging Face naming) is the same output.
Any other hook (the attention or MLP outputs, ``hook_resid_mid``, the embeddings) is not a
layer's output and is refused.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError

from steerlab.data.files import DataError, read_rows

SAELENS_CONFIG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"

Format = Literal["sae-lens", "neuronpedia"]


class FeatureError(ValueError):
    """An SAE or feature file that cannot give what was asked; the message names the file and
    the field or feature."""


@dataclass(frozen=True)
class FeatureDictionary:
    """The features of one sparse autoencoder (or a set of Neuronpedia rows): their decoder rows,
    where they read, and, for an SAE, its encoder."""

    path: Path
    format: Format
    rows: dict[int, torch.Tensor] = field(repr=False)
    """Feature index → decoder row (d_model,), float32 on the CPU, as saved."""
    d_model: int
    n_features: int
    hook_name: str | None
    layer: int | None
    """steerlab's layer that the hook reads (None: the source does not say)."""
    model_name: str | None = None
    architecture: str | None = None
    suggested: dict[int, float] = field(default_factory=dict)
    """Neuronpedia's default steering strength per feature, where a row gives one."""
    encode: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)
    """(N, d_model) activations → (N, n_features) feature activations (SAEs only)."""
    notes: tuple[str, ...] = ()
    """What a user must know about these rows' scale (kept in the vector's metadata)."""

    def row(self, index: int) -> torch.Tensor:
        """Feature ``index``'s decoder row; a :class:`FeatureError` naming the range otherwise."""
        if index not in self.rows:
            have = (f"indices 0–{self.n_features - 1}" if self.format == "sae-lens"
                    else f"rows for features {_listed(sorted(self.rows))}")
            raise FeatureError(f"{self.path}: no feature {index} (it has {have})")
        return self.rows[index]

    def at_layer(self, layer: int | None) -> int:
        """The layer to steer: the one asked for, which must agree with the hook the SAE reads,
        or the hook's own layer."""
        if layer is not None and self.layer is not None and layer != self.layer:
            raise FeatureError(f"{self.path}: its features read {self.hook_name} (the output of "
                               f"layer {self.layer}), not layer {layer}")
        chosen = layer if layer is not None else self.layer
        if chosen is None:
            raise FeatureError(f"{self.path}: it does not say which layer it reads "
                               f"(hook {self.hook_name!r}); give the layer")
        return chosen

    def describe(self) -> dict[str, Any]:
        """Where the features came from, for a vector's metadata."""
        return {"source": str(self.path), "format": self.format, "hook_name": self.hook_name,
                "sae_model": self.model_name, "architecture": self.architecture,
                "n_features": self.n_features, "notes": list(self.notes)}


def _listed(indices: list[int], shown: int = 8) -> str:
    head = ", ".join(str(i) for i in indices[:shown])
    return head + (f" and {len(indices) - shown} more" if len(indices) > shown else "")


_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")
_HF_LAYER = re.compile(r"^(?:.*\.)?layers\.(\d+)$")


def layer_of_hook(hook_name: str | None, where: str | Path = "") -> int | None:
    """steerlab's layer whose output ``hook_name`` reads (see the module docstring); None when
    there is no hook name, a :class:`FeatureError` for a hook that is no layer's output."""
    if not hook_name:
        return None
    if match := _HOOK.match(hook_name):
        block, side = int(match[1]), match[2]
        if side == "post":
            return block
        if block == 0:
            raise FeatureError(f"{where}: {hook_name} reads the embeddings, before any decoder "
                               "layer; steerlab steers decoder layers' outputs")
        return block - 1
    if match := _HF_LAYER.match(hook_name):
        return int(match[1])
    raise FeatureError(f"{where}: hook {hook_name!r} is not the residual stream after a decoder "
                       "layer (blocks.L.hook_resid_post, blocks.L.hook_resid_pre or "
                       "model.layers.L), which is where steerlab steers")


def _saelens_folder(path: Path) -> Path | None:
    """The SAELens folder ``path`` names (itself, or its ``cfg.json``'s), None for a file."""
    if path.is_dir():
        return path
    return path.parent if path.name == SAELENS_CONFIG else None


def load_features(path: str | Path) -> FeatureDictionary:
    """An SAELens folder (or its ``cfg.json``), or a Neuronpedia JSON / JSONL(.gz) file."""
    path = Path(path)
    folder = _saelens_folder(path)
    if folder is not None:
        return load_saelens(folder)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such SAE folder or feature file")
    return load_neuronpedia(path)


def hook_layer(path: str | Path) -> int | None:
    """The layer a source's features read, from an SAELens folder's config alone (no weights,
    no sae-lens) or a Neuronpedia file's rows; None where it does not say."""
    path = Path(path)
    folder = _saelens_folder(path)
    if folder is None:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such SAE folder or feature file")
        return load_neuronpedia(path).layer
    return layer_of_hook(_config_hook(_saelens_config(folder)), folder)


def _saelens_config(folder: Path) -> dict[str, Any]:
    """An SAELens folder's ``cfg.json``, read."""
    if not (folder / SAELENS_CONFIG).is_file():
        raise FeatureError(f"{folder}: not an SAELens folder ({SAELENS_CONFIG} missing)")
    try:
        config = json.loads((folder / SAELENS_CONFIG).read_text())
    except json.JSONDecodeError as err:
        raise FeatureError(f"{folder / SAELENS_CONFIG}: not JSON ({err})") from err
    if not isinstance(config, dict):
        raise FeatureError(f"{folder / SAELENS_CONFIG}: not a JSON object")
    return config


def _config_hook(config: dict[str, Any]) -> str | None:
    """The hook an SAELens config names: under ``metadata`` (sae-lens 6), or at the top level
    (older saves)."""
    metadata = config.get("metadata")
    return (metadata.get("hook_name") if isinstance(metadata, dict) else None) \
        or config.get("hook_name")


def _import_sae_lens(folder: Path) -> Any:
    """sae-lens's ``SAE``, imported quietly: transformer-lens warns about its own module layout,
    and bitsandbytes (which it imports) logs that an optional CPU kernel is absent."""
    quantisation = logging.getLogger("bitsandbytes")
    level = quantisation.level
    quantisation.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from sae_lens import SAE
    except ImportError as err:
        raise FeatureError(f"{folder}: reading an SAELens folder needs sae-lens "
                           "(pip install 'steerlab[sae]')") from err
    finally:
        quantisation.setLevel(level)
    return SAE


def load_saelens(folder: Path) -> FeatureDictionary:
    """A folder saved by SAELens (``SAE.save_model``), loaded by sae-lens's ``load_from_disk``."""
    config = _saelens_config(folder)
    if not (folder / SAELENS_WEIGHTS).is_file():
        raise FeatureError(f"{folder}: not an SAELens folder ({SAELENS_WEIGHTS} missing)")
    SAE = _import_sae_lens(folder)
    try:
        sae = SAE.load_from_disk(folder, device="cpu", dtype="float32")
    except (KeyError, ValueError, TypeError, RuntimeError, OSError, SafetensorError) as err:
        raise FeatureError(f"{folder}: sae-lens cannot load it ({type(err).__name__}: {err})"
                           ) from err
    sae.eval()
    decoder = sae.W_dec.detach().float()
    hook_name = sae.cfg.metadata.hook_name or _config_hook(config)
    notes = []
    if sae.cfg.normalize_activations != "none":
        notes.append(f"the SAE normalises its inputs ({sae.cfg.normalize_activations}): its "
                     "decoder rows are in the normalised scale, not the residual stream's")
    kwargs = sae.cfg.metadata.model_from_pretrained_kwargs or {}
    if isinstance(kwargs, dict) and kwargs.get("center_writing_weights", False):
        notes.append("trained on a TransformerLens model with centred writing weights: its "
                     "residual stream differs from the Hugging Face model's by each token's mean")

    @torch.no_grad()
    def encode(activations: torch.Tensor) -> torch.Tensor:
        return sae.encode(activations.float().cpu()).float()

    return FeatureDictionary(
        path=folder, format="sae-lens", rows=dict(enumerate(decoder)), d_model=sae.cfg.d_in,
        n_features=sae.cfg.d_sae, hook_name=hook_name, layer=layer_of_hook(hook_name, folder),
        model_name=sae.cfg.metadata.model_name, architecture=sae.cfg.architecture(),
        encode=encode, notes=tuple(notes))


def _neuronpedia_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each feature object in a Neuronpedia file with its ``file:line``: JSON lines or a JSON
    list (the data layer's reader, gzipped or not), or one JSON object over several lines (an
    API reply as saved); ``/api/vector/get``'s ``{"vector": {...}}`` unwrapped."""
    try:
        rows = list(read_rows(path))
    except DataError as err:
        whole = _one_object(path)
        if whole is None:
            raise FeatureError(str(err)) from err
        rows = [(1, whole)]
    for number, row in rows:
        inner = row.get("vector")
        yield f"{path}:{number}", inner if isinstance(inner, dict) else row


def _one_object(path: Path) -> dict[str, Any] | None:
    """The file as one JSON object, None where it is not one."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            value = json.loads(handle.read())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _source_layer(source: str) -> tuple[int, str] | None:
    """A Neuronpedia source id's leading layer number and what it reads (``20-…-resid-pre``)."""
    match = re.match(r"^(\d+)-(.*)$", source)
    return (int(match[1]), match[2]) if match else None


def load_neuronpedia(path: Path) -> FeatureDictionary:
    """Neuronpedia rows that carry a vector (``vector``: a list of numbers), by ``index``."""
    rows: dict[int, torch.Tensor] = {}
    suggested: dict[int, float] = {}
    hooks: set[str | None] = set()
    models: set[str] = set()
    empty: list[str] = []
    for where, item in _neuronpedia_rows(path):
        try:
            index = int(item["index"])
        except (KeyError, TypeError, ValueError) as err:
            raise FeatureError(f"{where}: field 'index' must be a feature number") from err
        values = item.get("vector", item.get("values"))
        if not values:
            empty.append(where)
            continue
        if not (isinstance(values, list)
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
            raise FeatureError(f"{where}: field 'vector' must be a list of numbers")
        row = torch.tensor(values, dtype=torch.float32)
        if not bool(torch.isfinite(row).all()):
            raise FeatureError(f"{where}: field 'vector' has non-finite values")
        if rows and row.shape != next(iter(rows.values())).shape:
            raise FeatureError(f"{where}: vector of {row.numel()} numbers, the rows before had "
                               f"{next(iter(rows.values())).numel()}")
        if index in rows:
            raise FeatureError(f"{where}: feature {index} appears twice")
        rows[index] = row
        hook = item.get("hookName") or item.get("hook_name")
        if not hook and isinstance(item.get("layer") or item.get("source"), str):
            source = _source_layer(item.get("layer") or item.get("source"))
            if source and source[1].endswith(("resid-pre", "resid_pre")):
                hook = f"blocks.{source[0]}.hook_resid_pre"
            elif source and source[1].endswith(("resid-post", "resid_post")):
                hook = f"blocks.{source[0]}.hook_resid_post"
        hooks.add(hook)
        if item.get("modelId"):
            models.add(str(item["modelId"]))
        strength = item.get("vectorDefaultSteerStrength", item.get("default_steer_strength"))
        if isinstance(strength, (int, float)) and not isinstance(strength, bool):
            suggested[index] = float(strength)
    if not rows:
        why = (f"{len(empty)} row(s) carry no vector ('vector' empty: Neuronpedia keeps an SAE "
               "feature's direction in the SAE itself; load the SAE's SAELens folder instead)"
               if empty else "no feature rows")
        raise FeatureError(f"{path}: {why}")
    if len(hooks) > 1:
        raise FeatureError(f"{path}: rows read different hooks ({', '.join(map(str, hooks))}); "
                           "keep one layer's features in a file")
    hook_name = hooks.pop()
    return FeatureDictionary(
        path=path, format="neuronpedia", rows=dict(sorted(rows.items())),
        d_model=next(iter(rows.values())).numel(), n_features=len(rows), hook_name=hook_name,
        layer=layer_of_hook(hook_name, path), model_name=", ".join(sorted(models)) or None,
        suggested=suggested,
        notes=("rows as Neuronpedia stores them: it steers by adding strength × row",))


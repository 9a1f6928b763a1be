"""Where a model runs and in what precision: device, dtype, a device map, quantised weights.

:class:`Placement` is the one description of that choice, shared by the library
(:func:`~steerlab.model.handle.load_model`), the CLI's options, the run config's model block,
the chat and the server, and lm-eval's ``model_args``. :func:`resolve` turns it into torch
objects against this machine, with a one-line error naming what is missing and what is there.
Light to import (torch only inside :func:`resolve`), so the CLI parses it before loading torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import util as importlib_util
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from steerlab.model.catalog import ModelLoadError

if TYPE_CHECKING:
    import torch

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16", "half": "float16"}
"""Accepted dtype names (and their short forms) → torch's name."""

DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
"""accelerate's strategies for spreading one model over the visible devices."""

Quantization = Literal["8bit", "4bit"]

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class DeviceUnavailable(ModelLoadError):
    """The device (or quantisation backend) asked for is not on this machine; the message says
    what is."""


class Placement(BaseModel):
    """Device, dtype, device map and quantisation of a model; ``auto`` decides per machine."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str = "auto"
    """``auto`` (CUDA, then MPS, then the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    dtype: str = "auto"
    """``auto`` (bfloat16 where the device supports it, float32 on the CPU), ``float32``,
    ``bfloat16`` or ``float16``."""
    device_map: str | None = None
    """Spread the layers over every visible device with accelerate (``auto``, ``balanced``,
    ``balanced_low_0``, ``sequential``); then ``device`` must stay ``auto``."""
    quantization: Quantization | None = None
    """Weights loaded in 8 or 4 bits through bitsandbytes (the ``quantization`` extra); steering
    vectors stay float32."""

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        value = value.strip().lower()
        if not _DEVICE.match(value):
            raise ValueError(f"unknown device {value!r}: auto, cpu, cuda, cuda:N or mps")
        return value

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, value: str) -> str:
        name = value.strip().lower().removeprefix("torch.")
        if name != "auto" and name not in DTYPES:
            raise ValueError(f"unknown dtype {value!r}: auto, float32, bfloat16 or float16")
        return DTYPES.get(name, name)

    @field_validator("device_map")
    @classmethod
    def _device_map(cls, value: str | None) -> str | None:
        if value is not None and value not in DEVICE_MAPS:
            raise ValueError(f"unknown device map {value!r}: {', '.join(DEVICE_MAPS)}")
        return value

    @model_validator(mode="after")
    def _one_way(self) -> Placement:
        if self.device_map is not None and self.device != "auto":
            raise ValueError(f"device {self.device!r} and device_map {self.device_map!r}: give "
                             "one (a device map places every layer itself)")
        return self


    def options(self) -> dict[str, str | None]:
        """The placement as :func:`~steerlab.model.handle.load_model`'s keyword arguments."""
        return {name: getattr(self, name) for name in Placement.model_fields}

    def overridden(self, other: Placement) -> Placement:
        """This placement with the fields ``other`` was given explicitly (a command's options
        over a config's model block)."""
        return self.model_copy(update={k: getattr(other, k) for k in other.model_fields_set})


class ModelChoice(Placement):
    """A model and where it runs: the run config's ``model`` block (a bare name is the name,
    placed automatically)."""

    name: str
    """Built-in name, model directory, ``.gguf`` file or hub id."""


@dataclass(frozen=True)
class Resolved:
    """A :class:`Placement` made concrete on this machine."""

    device: torch.device
    dtype: torch.dtype
    device_map: str | None
    quantization: Quantization | None


def available_devices() -> list[str]:
    """The devices torch can use here, accelerators first (``cuda:0``, …, ``mps``, ``cpu``)."""
    import torch

    found = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() \
        else []
    if torch.backends.mps.is_available():
        found.append("mps")
    return [*found, "cpu"]


def _device(name: str) -> torch.device:
    import torch

    available = available_devices()
    if name == "auto":
        return torch.device(available[0])
    wanted = "cuda:0" if name == "cuda" else name
    if wanted not in available:
        raise DeviceUnavailable(f"device {name!r} is not available on this machine "
                                f"(available: {', '.join(available)})")
    return torch.device(wanted)


def _auto_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where the device computes in it natively, float32 elsewhere (the CPU)."""
    import torch

    if device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16
    if device.type == "mps" and torch.backends.mps.is_macos_or_newer(14, 0):
        return torch.bfloat16
    return torch.float32


def resolve(placement: Placement) -> Resolved:
    """The device and dtype ``placement`` means here; :class:`DeviceUnavailable` when a device
    or the quantisation backend is missing."""
    import torch

    if placement.device_map is not None:
        device = _device("auto")
    else:
        device = _device(placement.device)
    if placement.quantization and importlib_util.find_spec("bitsandbytes") is None:
        raise DeviceUnavailable(f"quantization {placement.quantization!r} needs bitsandbytes: "
                                "pip install -e .[quantization]")
    dtype = _auto_dtype(device) if placement.dtype == "auto" else getattr(torch, placement.dtype)
    return Resolved(device, dtype, placement.device_map, placement.quantization)

"""A second device on a CPU-only machine, so that a tensor made on the wrong device fails in
`make test` here rather than on a user's GPU.

The *virtual device* keeps every tensor's data on the CPU but reports another device, borrowed
from torch's ``meta`` (the one device type that needs no backend). Inside :func:`virtual_device`
a model moved there computes exactly as on the CPU, and any operation that meets a tensor on
the virtual device together with a plain CPU tensor (other than a 0-dim scalar, which CUDA
accepts too) raises :class:`DeviceSlip`, as CUDA raises "Expected all tensors to be on the same
device". Factories asked for the virtual device (``torch.zeros(..., device=x.device)``) and
moves to it (``t.to(model.device)``) give virtual tensors; ``.cpu()`` and ``.item()`` give plain
ones, as on an accelerator.

:data:`DEVICES` lists what the device-parametrised tests run on: the CPU, the virtual device,
and each real accelerator present (CUDA, MPS).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

VIRTUAL = torch.device("meta")
"""The virtual device's name (its tensors hold real CPU data)."""

_MOVES = {torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default}
"""Operations that may legitimately take tensors from both sides: copies between devices."""


class DeviceSlip(RuntimeError):
    """A tensor on the CPU met tensors on the model's device."""


class _Virtual(torch.Tensor):
    """A tensor reported on :data:`VIRTUAL` whose data is the CPU tensor ``elem``."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor, requires_grad: bool | None = None) -> _Virtual:
        elem = elem.elem if isinstance(elem, _Virtual) else elem  # a parameter made of one
        return torch.Tensor._make_wrapper_subclass(
            cls, elem.size(), strides=elem.stride(), storage_offset=elem.storage_offset(),
            dtype=elem.dtype, layout=elem.layout, device=VIRTUAL,
            requires_grad=elem.requires_grad if requires_grad is None else requires_grad)

    def __init__(self, elem: torch.Tensor, requires_grad: bool | None = None) -> None:
        self.elem = elem.elem if isinstance(elem, _Virtual) else elem

    def __repr__(self) -> str:
        return f"virtual({self.elem!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise DeviceSlip(f"{func} on a virtual-device tensor outside virtual_device()")


def _virtual(device: object) -> bool:
    return device is not None and torch.device(device).type == VIRTUAL.type  # type: ignore[arg-type]


def _wrap(value: object) -> object:
    return _Virtual(value) if type(value) is torch.Tensor else value


def _unwrap(value: object) -> object:
    return value.elem if isinstance(value, _Virtual) else value


class _Dispatch(TorchDispatchMode):
    """Every ATen operation: checks that devices agree, computes on the CPU data, and wraps the
    results of operations on the virtual device."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        flat, _ = tree_flatten((args, kwargs))
        virtual = any(isinstance(t, _Virtual) for t in flat)
        plain = [t for t in flat if type(t) is torch.Tensor]
        if any(t.device.type == VIRTUAL.type for t in plain):
            raise DeviceSlip(f"{func}: a tensor made on the virtual device bypassed it (its "
                             "data is lost); create it on the CPU and move it")
        target = kwargs.get("device")
        to_virtual = _virtual(target)
        if to_virtual:
            kwargs["device"] = torch.device("cpu")
        generator = kwargs.get("generator")
        if to_virtual and generator is not None and generator.device.type == "cpu":
            raise DeviceSlip(f"{func}: a CPU generator drawing a tensor on the model's device")
        if virtual and func not in _MOVES:
            stray = [t for t in plain if t.dim() > 0]
            if stray:
                raise DeviceSlip(f"{func}: a tensor on the CPU (shape {tuple(stray[0].shape)}) "
                                 "met tensors on the model's device")
        out = func(*tree_map(_unwrap, args), **tree_map(_unwrap, kwargs))
        if func is torch.ops.aten._to_copy.default:
            wrap = to_virtual or (target is None and virtual)
        elif func is torch.ops.aten.copy_.default:
            wrap = isinstance(args[0], _Virtual)
        else:
            wrap = virtual or to_virtual
        return tree_map(_wrap, out) if wrap else out


class _PythonLevel(TorchFunctionMode):
    """What happens above ATen: factories asked for the virtual device (``torch.tensor(data,
    device=…)`` would otherwise copy its data to a real meta tensor and lose it) are made on the
    CPU and moved; ``tolist`` reads the data; ``numpy`` fails, as on an accelerator."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if args and isinstance(args[0], _Virtual):
            if func is torch.Tensor.tolist:
                return args[0].elem.tolist()
            if func in (torch.Tensor.numpy, torch.Tensor.__array__):
                raise DeviceSlip("numpy() of a tensor on the model's device: move it to the CPU")
        if not _virtual(kwargs.get("device")):
            return func(*args, **kwargs)
        kwargs["device"] = torch.device("cpu")
        grad = kwargs.pop("requires_grad", False)
        out = func(*args, **kwargs)
        if not isinstance(out, torch.Tensor):
            return out
        return out.to(VIRTUAL).requires_grad_(grad) if grad else out.to(VIRTUAL)


@contextmanager
def virtual_device() -> Iterator[None]:
    """While active, the virtual device exists and every operation is checked."""
    with _Dispatch(), _PythonLevel():
        yield


DEVICES = ["cpu", "virtual", "split"] + (["cuda"] if torch.cuda.is_available() else []) + (
    ["mps"] if torch.backends.mps.is_available() else [])
"""The devices the device-parametrised tests run on; ``split`` is one model over two devices
(its lower half on the CPU, the rest on the virtual device), as accelerate's device maps
spread a model over several GPUs."""


def device_context(name: str):
    """The context a test on device ``name`` runs in (the virtual device's modes, or none)."""
    return virtual_device() if name in ("virtual", "split") else nullcontext()


def place(handle, name: str) -> None:
    """Put a tiny llama (a ``ModelHandle``) on device ``name``, inside its context. ``split``
    puts the embedding and the lower half of the layers on the CPU, the upper half, the final
    norm and the head on the virtual device, each block with accelerate's hook that moves its
    inputs to its device (what a ``device_map`` does)."""
    if name != "split":
        handle.model.to(VIRTUAL if name == "virtual" else torch.device(name))
        return
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module

    cpu, half, inner = torch.device("cpu"), len(handle.layers) // 2, handle.model.model
    blocks = [(inner.embed_tokens, cpu), (inner.rotary_emb, cpu), (inner.norm, VIRTUAL),
              (handle.model.lm_head, VIRTUAL)]
    blocks += [(layer, cpu if i < half else VIRTUAL) for i, layer in enumerate(handle.layers)]
    for module, device in blocks:
        module.to(device)
        add_hook_to_module(module, AlignDevicesHook(execution_device=device))


def as_cpu(value: torch.Tensor) -> torch.Tensor:
    """A tensor's data as a plain CPU tensor, from any device (the virtual one included)."""
    return _unwrap(value.detach()).cpu() if isinstance(value, _Virtual) else value.detach().cpu()

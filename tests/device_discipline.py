"""Device discipline without a GPU: a ``TorchFunctionMode`` that tracks which tensors would live
on the model's device, and records what would fail on one.

On a CPU-only machine a model "on the device" and a tensor "on the CPU" are both CPU tensors, so
bugs such as ``model(**inputs)`` with inputs never moved, ``.numpy()`` of a device tensor, or a
CPU mask mixed into a device computation pass silently here and crash on a GPU.  The mode tags
(weakly) every tensor that would be on the device:

- the model's parameters and buffers;
- the result of ``.to(d)`` / ``.cuda()`` with ``d`` a ``torch.device`` object (``model.device``,
  ``x.device``) and of a factory call with ``device=`` such an object;
- the result of any other op with a tagged input (``.cpu()`` and ``.to("cpu")`` untag).

It records a violation for
- a factory call (``torch.zeros``, ``torch.as_tensor``...) in headflow's code without an explicit ``device``;
- ``.numpy()`` of a tagged tensor (CUDA tensors cannot be viewed as numpy arrays);
- an op mixing a tagged and an untagged tensor of more than one element (a device mismatch),
  except ``copy_``/``to`` and indexing a tagged tensor with untagged indices, which CUDA allows.
"""
from __future__ import annotations

import sys
import weakref
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

import headflow

HEADFLOW = str(Path(headflow.__file__).resolve().parent)
TORCH = str(Path(torch.__file__).resolve().parent)
FACTORIES = {"zeros", "ones", "empty", "full", "arange", "tensor", "as_tensor", "rand", "randn", "randint", "randperm",
             "eye", "linspace", "logspace"}
CROSS_DEVICE_OK = {"copy_", "to", "__getitem__", "__setitem__", "index_put_", "cpu", "numpy", "tolist", "item"}


def _caller() -> tuple[str, int] | None:
    """The first frame outside torch and this file: (file, line)."""
    f = sys._getframe(2)
    while f is not None and (f.f_code.co_filename.startswith(TORCH) or f.f_code.co_filename == __file__):
        f = f.f_back
    return (f.f_code.co_filename, f.f_lineno) if f is not None else None


def _headflow_site() -> str | None:
    """``file:line`` of the innermost headflow frame on the stack (where a violation comes from)."""
    f = sys._getframe(2)
    while f is not None:
        if f.f_code.co_filename.startswith(HEADFLOW):
            return f"{Path(f.f_code.co_filename).relative_to(HEADFLOW)}:{f.f_lineno}"
        f = f.f_back
    return None


class DeviceDiscipline(TorchFunctionMode):
    def __init__(self, *models):
        super().__init__()
        self._ids: dict[int, weakref.ref] = {}  # id -> weak reference of every tagged tensor
        self.violations: dict[str, str] = {}
        for m in models:
            self.mark(m)

    def mark(self, model) -> None:
        for t in list(model.parameters()) + list(model.buffers()):
            self._tag(t)

    def _tag(self, t: torch.Tensor) -> None:
        i = id(t)
        self._ids[i] = weakref.ref(t, lambda _, i=i: self._ids.pop(i, None))

    def _tagged(self, t) -> bool:
        r = self._ids.get(id(t)) if isinstance(t, torch.Tensor) else None
        return r is not None and r() is t

    def _flag(self, message: str) -> None:
        site = _headflow_site() or "outside headflow"
        self.violations.setdefault(f"{site}: {message}", message)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        flat = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        tagged = [self._tagged(t) for t in flat]
        caller = _caller()
        ours = caller is not None and caller[0].startswith(HEADFLOW)
        if name in FACTORIES and ours and "device" not in kwargs:
            self._flag(f"torch.{name}(...) without an explicit device")
        if name == "numpy" and any(tagged):
            self._flag(".numpy() of a tensor on the model's device (bring it back with .cpu() first)")
        if name not in CROSS_DEVICE_OK and any(tagged):
            mixed = [t for t, g in zip(flat, tagged) if not g and t.dim() > 0 and t.numel() > 1]
            if mixed:
                self._flag(f"{name}: a CPU tensor of shape {tuple(mixed[0].shape)} mixed with tensors on the model's device")
        if name in ("__getitem__", "__setitem__", "index_put_") and flat and not tagged[0] and any(tagged[1:]):
            self._flag(f"{name}: a CPU tensor indexed with (or given) tensors on the model's device")
        out = func(*args, **kwargs)
        if name in ("cpu", "to", "cuda") and out is (args[0] if args else None):
            out = out.view_as(out)  # a move within the CPU returns its input; a real move makes a new tensor
        if name == "cpu":
            return out
        if name == "to":
            target = kwargs.get("device", next((a for a in args[1:] if isinstance(a, (str, torch.device, torch.Tensor))),
                                               None))
            if isinstance(target, str):
                on = target != "cpu"
            elif isinstance(target, torch.device):
                on = True
            elif isinstance(target, torch.Tensor):
                on = self._tagged(target)
            else:  # a dtype only
                on = any(tagged)
        elif name == "cuda":
            on = True
        elif name in FACTORIES or name.endswith("_like"):
            dev = kwargs.get("device")
            on = isinstance(dev, torch.device) or (dev is None and any(tagged))
        else:
            on = any(tagged)
        if on:
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    self._tag(t)
        return out

    def report(self) -> str:
        return "\n".join(sorted(self.violations))

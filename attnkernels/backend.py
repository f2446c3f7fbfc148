"""Backend selection: which implementation a fused op runs.

Backends
  "reference"  eager PyTorch (attnkernels.reference): the spec, runs anywhere.
  "triton"     Triton kernels (attnkernels/triton/): CUDA tensors, or CPU tensors when
               TRITON_INTERPRET=1 was set before attnkernels.triton was imported.
  "cuda"       hand-written CUDA (csrc/, attnkernels._C): CUDA tensors.
  "cuda-emu"   the same CUDA kernel source compiled by g++ against csrc/cuemu: CPU tensors.
  "auto"       (the default) cuda > triton on CUDA tensors, reference on CPU tensors.

Every kernel backend module exposes the same functions per op (see attnkernels/se.py for the
contract), so the op front ends dispatch with ``get_impl(name).se_forward(...)``.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import os
import threading

import torch

BACKENDS = ("reference", "triton", "cuda", "cuda-emu")
_CHOICES = ("auto",) + BACKENDS

_state = threading.local()
_default = "auto"

# backend name -> module path holding its kernels
_MODULES = {
    "triton": "attnkernels.triton",
    "cuda": "attnkernels.cuda",
    "cuda-emu": "attnkernels.cuda",
}


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name not in _CHOICES:
        raise ValueError(f"backend must be one of {_CHOICES}, got {name!r}")
    return name


def get_backend() -> str:
    """The backend in force in this thread: the innermost ``with backend(...)``, else the default."""
    stack = getattr(_state, "stack", None)
    return stack[-1] if stack else _default


def set_backend(name: str) -> str:
    """Set the process-wide default backend; returns the previous default."""
    global _default
    prev, _default = _default, _check_name(name)
    return prev


@contextlib.contextmanager
def backend(name: str):
    """Scope a backend choice: ``with attnkernels.backend("triton"): ...``."""
    _check_name(name)
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(name)
    try:
        yield name
    finally:
        stack.pop()


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _import_error(name: str):
    """None if the backend's module imports, else the reason why not."""
    if name == "reference":
        return None
    try:
        mod = importlib.import_module(_MODULES[name])
    except Exception as e:  # ImportError, or a broken toolchain
        return f"{type(e).__name__}: {e}"
    why = getattr(mod, "unavailable_reason", lambda _n: None)(name)
    return why


def _runs_on(name: str, device: torch.device):
    """None if backend `name` can run on tensors of `device`, else why not."""
    why = _import_error(name)
    if why is not None:
        return why
    if name == "triton":
        if device.type == "cuda" or (device.type == "cpu" and triton_interpret()):
            return None
        if device.type == "cpu":
            return "triton runs on CPU tensors only under TRITON_INTERPRET=1 (set before import)"
        return f"triton does not support {device.type} tensors"
    if name == "cuda":
        return None if device.type == "cuda" else "the 'cuda' backend needs CUDA tensors"
    if name == "cuda-emu":
        return None if device.type == "cpu" else "the 'cuda-emu' backend needs CPU tensors"
    return None  # reference


def available_backends(device=None) -> list[str]:
    """Backends this machine can run; for `device` ("cpu"/"cuda"/torch.device) if given."""
    out = []
    for name in BACKENDS:
        if device is None:
            devs = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
        else:
            devs = [torch.device(device)]
        if any(_runs_on(name, d) is None for d in devs):
            out.append(name)
    return out


@torch.compiler.assume_constant_result
def resolve(name: str | None, device: torch.device) -> str:
    """Turn a requested backend (None = the one in force) into a concrete one for `device`.
    torch.compile evaluates this once while tracing (the choice is baked into the graph)."""
    name = get_backend() if name is None else _check_name(name)
    if name == "auto":
        if device.type == "cuda":
            for cand in ("cuda", "triton"):
                if _runs_on(cand, device) is None:
                    return cand
        return "reference"
    why = _runs_on(name, device)
    if why is not None:
        raise RuntimeError(f"backend {name!r} cannot run on {device.type} tensors here: {why}")
    return name


_impls: dict = {}


def get_impl(name: str):
    """The kernel module of a concrete backend (not 'reference' or 'auto'); cached, since the
    ops look it up on every call."""
    mod = _impls.get(name)
    if mod is None:
        mod = _impls[name] = importlib.import_module(_MODULES[name])
    return mod

"""Hand-written CUDA backend (csrc/), serving two backend names:

  "cuda"      CUDA tensors: the kernels compiled by nvcc;
  "cuda-emu"  CPU tensors: the SAME kernel sources compiled by the host compiler against the CUDA
              emulator in csrc/cuemu (slow; for tests).
Both live in the extension ``attnkernels._C`` (``_C.backends`` lists the builds it holds), whose
functions pick the build from x's device. One module per op (se.py, ...) wraps its functions; this
package holds the loader they share and re-exports their backend contract (attnkernels.backend
dispatches ``get_impl(name).<op>_forward(...)``).
ATTNKERNELS_CUDA_POISON=1 (or attnkernels._alloc.poisoned()) fills every output and workspace
with NaN before the kernels run.
"""
from __future__ import annotations

import importlib
import os

import torch

from .._alloc import poisoning
from .._variant import force_variant

_EXT = "attnkernels._C"
_NAMES = ("cuda", "cuda-emu")
_DTYPE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}

_mods: dict[str, object] = {}
_errors: dict[str, str] = {}


def _load(name: str):
    """The extension if it holds backend `name`'s kernels, else None (and the reason in _errors)."""
    if name in _mods:
        return _mods[name]
    if name in _errors:
        return None
    try:
        mod = importlib.import_module(_EXT)
    except Exception as e:  # not built, or built against another torch
        _errors[name] = f"{_EXT} does not import ({type(e).__name__}: {e})"
        return None
    if name not in mod.backends:
        _errors[name] = f"{_EXT} was built without the {name!r} kernels (it has {list(mod.backends)}; see setup.py)"
        return None
    _mods[name] = mod
    return mod


def unavailable_reason(name: str) -> str | None:
    """None if backend `name` ("cuda" or "cuda-emu") can be used here, else why not."""
    if name not in _NAMES:
        return f"attnkernels.cuda serves {_NAMES}, not {name!r}"
    if _load(name) is None:
        return _errors[name]
    return None  # (whether a CUDA device exists is attnkernels.backend's concern)


def ext_for(t: torch.Tensor):
    """The extension build serving t's device (cuda for CUDA tensors, cuda-emu for CPU ones)."""
    name = "cuda" if t.device.type == "cuda" else "cuda-emu" if t.device.type == "cpu" else None
    if name is None:
        raise RuntimeError(f"attnkernels.cuda: no kernels for {t.device.type} tensors")
    mod = _load(name)
    if mod is None:
        raise RuntimeError(f"backend {name!r} unavailable: {_errors[name]}")
    return mod


def poison() -> bool:
    """NaN-fill outputs and workspaces first: inside attnkernels._alloc.poisoned() (the tests),
    or with ATTNKERNELS_CUDA_POISON=1."""
    return poisoning() or os.environ.get("ATTNKERNELS_CUDA_POISON", "0") not in ("", "0")


from .bam import bam_backward, bam_forward  # noqa: E402
from .se import last_variant, se_backward, se_eager, se_forward, se_forward_variant  # noqa: E402
from .sca import sca_backward, sca_forward  # noqa: E402
from .cbam import cbam_backward, cbam_forward  # noqa: E402

__all__ = [
    "unavailable_reason", "ext_for", "poison", "force_variant",
    "se_forward", "se_backward", "se_eager", "last_variant", "se_forward_variant",
    "bam_forward", "bam_backward",
    "sca_forward", "sca_backward",
    "cbam_forward", "cbam_backward",
]

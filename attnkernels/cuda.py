"""Hand-written CUDA backend (csrc/), serving two backend names:

  "cuda"      CUDA tensors: the kernels compiled by nvcc;
  "cuda-emu"  CPU tensors: the SAME kernel sources compiled by the host compiler against the CUDA
              emulator in csrc/cuemu (slow; for tests).
Both live in the extension ``attnkernels._C`` (``_C.backends`` lists the builds it holds), whose
functions pick the build from x's device.

SE forward variants (``last_variant()`` says which one ran, ``se_forward_variant(...)`` which one
would run):
  "fused"  one block per sample stages the sample's (C, H, W) slab in shared memory: x read once,
           y written once. Chosen when the slab fits in a block's shared memory and N >= #SMs.
           Forced on a larger slab (sm_90, and cuda-emu), it splits each sample over a
           thread-block cluster of 2-16 blocks that pool through distributed shared memory
           ("fused-cluster<k>").
  "split"  squeeze+excite kernel (all blocks of a sample reduce slices; the last one runs the MLP)
           followed by a vectorized rescale kernel walking the samples in reverse order.
  "pipelined"  the same work in one launch: persistent blocks take squeeze slices and rescale
           chunks in ticket order, each sample's rescale `lag` samples behind its squeeze, so the
           second read of x comes from L2 (lag sized from the L2 size). Forcing it also runs the
           backward's reduction and dx the same way (one launch, dy re-read from L2; then the
           weight-gradient kernel). Not chosen by "auto" until a GPU run has measured it.
  "batched"  "split" with the excitation of up to 8 samples at once (csrc/se/batched.cuh): the
           squeeze launch takes squeeze slices and tiles of the two layers in ticket order, each
           tile reading its block of the weights once for the group, where "split" streams all of
           W1 and W2 through one block per sample (late-stage blocks carry more weight than
           activation per sample). Forcing it also runs the backward's MLP that way (the
           reduction launch's tiles of W2^T dz and W1^T du). Not chosen by "auto" until a GPU run
           has measured it.
float64 (the gradcheck dtype) is built with the "split" kernels only, and "pipelined" and
"batched" have device code for sm_90 and newer only: forced where the build lacks it, a variant
runs "split" (and ``last_variant()`` says so). Together the cuts keep ~20 s of nvcc time out of
the build.
Force one with the environment variable ATTNKERNELS_SE_VARIANT=auto|split|fused|pipelined|batched or
``with force_variant("fused"): ...`` (attnkernels/_variant.py; tests, benchmarks: ``bps`` also
sets the squeeze blocks per sample, ``lag`` the pipelined lag in samples).
ATTNKERNELS_CUDA_POISON=1 (or attnkernels._alloc.poisoned()) fills every output and workspace
with NaN before the kernels run.
"""
from __future__ import annotations

import importlib
import os

import torch

from ._alloc import poisoning
from ._variant import force_variant, request

__all__ = [
    "unavailable_reason", "se_forward", "se_backward", "se_eager", "last_variant",
    "se_forward_variant", "force_variant",
]

_EXT = "attnkernels._C"
_NAMES = ("cuda", "cuda-emu")
_ACT = {"relu": 0, "silu": 1, "hardswish": 2, "gelu": 3, "identity": 4}
_GATE = {"sigmoid": 0, "hardsigmoid": 1}
_POOL = {"avg": 0, "avgmax": 1}
_VARIANT = {"auto": 0, "split": 1, "fused": 2, "pipelined": 3, "batched": 4}
_DTYPE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}

_mods: dict[str, object] = {}
_errors: dict[str, str] = {}
_last_variant: str | None = None


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


def _ext_for(t: torch.Tensor):
    name = "cuda" if t.device.type == "cuda" else "cuda-emu" if t.device.type == "cpu" else None
    if name is None:
        raise RuntimeError(f"attnkernels.cuda: no kernels for {t.device.type} tensors")
    mod = _load(name)
    if mod is None:
        raise RuntimeError(f"backend {name!r} unavailable: {_errors[name]}")
    return mod


def _variant_request() -> tuple[int, int, int]:
    """(variant code, squeeze blocks per sample, pipelined lag); 0 = the dispatcher's choice."""
    v, bps, lag = request()
    return _VARIANT[v], bps, lag


def _poison() -> bool:
    """NaN-fill outputs and workspaces first: inside attnkernels._alloc.poisoned() (the tests),
    or with ATTNKERNELS_CUDA_POISON=1."""
    return poisoning() or os.environ.get("ATTNKERNELS_CUDA_POISON", "0") not in ("", "0")


def last_variant() -> str | None:
    """The SE forward variant of the last se_forward call ("split", "pipelined", "batched" or
    "fused[-cluster<k>]")."""
    return _last_variant


def se_forward_variant(x_shape, dtype=torch.float32, memory_format=torch.contiguous_format,
                       device="cuda", cr: int | None = None, pool: str = "avg") -> str:
    """The forward variant se_forward would run for x of this shape/dtype/format on `device`."""
    n, c, h, w = (int(v) for v in x_shape)
    device = torch.device(device)
    ext = _ext_for(torch.empty(0, device=device))
    cr = max(1, c // 16) if cr is None else int(cr)
    nhwc = memory_format == torch.channels_last and c > 1 and h * w > 1
    return ext.se_forward_variant(device.type, n, c, h, w, cr, _DTYPE[dtype], nhwc, _POOL[pool],
                                  _variant_request()[0])


def se_forward(x, w1, b1, w2, b2, act: str, gate: str, pool: str):
    """-> (y, s, z, u, p, pmax); see attnkernels/se.py for the contract."""
    global _last_variant
    ext = _ext_for(x)
    variant, bps, lag = _variant_request()
    y, s, z, u, p, pmax, ran = ext.se_forward(x, w1, b1, w2, b2, _ACT[act], _GATE[gate], _POOL[pool],
                                              variant, bps, lag, _poison())
    _last_variant = ran
    return y, s, z, u, p, pmax


def se_eager(name: str, x, w1, b1, w2, b2, act: str, gate: str, pool: str):
    """attnkernels.se's eager path on backend `name` ("cuda" or "cuda-emu"): one call into the
    extension, whose C++ autograd function does the layout and weight-view handling and runs the
    backward without Python. Inputs as `attnkernels.se` takes them (unchecked here: the extension
    raises on what it cannot run, and `se` then names the bad argument)."""
    global _last_variant
    ext = _mods.get(name) or _ext_for(x)
    variant, bps, lag = _variant_request()
    y, _last_variant = ext.se(x, w1, b1, w2, b2, act, gate, pool, variant, bps, lag, _poison())
    return y


def se_backward(dy, x, w1, w2, s, z, u, p, pmax, act: str, gate: str, pool: str):
    """-> (dx, dw1, db1, dw2, db2); see attnkernels/se.py for the contract."""
    ext = _ext_for(x)
    variant, bps, lag = _variant_request()
    dx, dw1, db1, dw2, db2 = ext.se_backward(dy, x, w1, w2, s, z, u, p, pmax, _ACT[act], _GATE[gate],
                                             _POOL[pool], variant, bps, lag, _poison())
    return dx, dw1, db1, dw2, db2

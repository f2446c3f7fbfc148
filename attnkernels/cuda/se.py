"""SE on the hand-written CUDA kernels (csrc/se/, through attnkernels._C; see attnkernels/cuda/
for the two builds).

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

import torch

from .._variant import request
from . import _DTYPE, ext_for, poison

__all__ = ["se_forward", "se_backward", "se_eager", "last_variant", "se_forward_variant"]

_ACT = {"relu": 0, "silu": 1, "hardswish": 2, "gelu": 3, "identity": 4}
_GATE = {"sigmoid": 0, "hardsigmoid": 1}
_POOL = {"avg": 0, "avgmax": 1}
_VARIANT = {"auto": 0, "split": 1, "fused": 2, "pipelined": 3, "batched": 4}

_last_variant: str | None = None


def _variant_request() -> tuple[int, int, int]:
    """(variant code, squeeze blocks per sample, pipelined lag); 0 = the dispatcher's choice."""
    v, bps, lag = request()
    return _VARIANT[v], bps, lag


def last_variant() -> str | None:
    """The SE forward variant of the last se_forward call ("split", "pipelined", "batched" or
    "fused[-cluster<k>]")."""
    return _last_variant


def se_forward_variant(x_shape, dtype=torch.float32, memory_format=torch.contiguous_format,
                       device="cuda", cr: int | None = None, pool: str = "avg") -> str:
    """The forward variant se_forward would run for x of this shape/dtype/format on `device`."""
    n, c, h, w = (int(v) for v in x_shape)
    device = torch.device(device)
    ext = ext_for(torch.empty(0, device=device))
    cr = max(1, c // 16) if cr is None else int(cr)
    nhwc = memory_format == torch.channels_last and c > 1 and h * w > 1
    return ext.se_forward_variant(device.type, n, c, h, w, cr, _DTYPE[dtype], nhwc, _POOL[pool],
                                  _variant_request()[0])


def se_forward(x, w1, b1, w2, b2, act: str, gate: str, pool: str):
    """-> (y, s, z, u, p, pmax); see attnkernels/se.py for the contract."""
    global _last_variant
    ext = ext_for(x)
    variant, bps, lag = _variant_request()
    y, s, z, u, p, pmax, ran = ext.se_forward(x, w1, b1, w2, b2, _ACT[act], _GATE[gate], _POOL[pool],
                                              variant, bps, lag, poison())
    _last_variant = ran
    return y, s, z, u, p, pmax


def se_eager(name: str, x, w1, b1, w2, b2, act: str, gate: str, pool: str):
    """attnkernels.se's eager path on backend `name` ("cuda" or "cuda-emu"): one call into the
    extension, whose C++ autograd function does the layout and weight-view handling and runs the
    backward without Python. Inputs as `attnkernels.se` takes them (unchecked here: the extension
    raises on what it cannot run, and `se` then names the bad argument)."""
    global _last_variant
    ext = ext_for(x)
    variant, bps, lag = _variant_request()
    y, _last_variant = ext.se(x, w1, b1, w2, b2, act, gate, pool, variant, bps, lag, poison())
    return y


def se_backward(dy, x, w1, w2, s, z, u, p, pmax, act: str, gate: str, pool: str):
    """-> (dx, dw1, db1, dw2, db2); see attnkernels/se.py for the contract."""
    ext = ext_for(x)
    variant, bps, lag = _variant_request()
    dx, dw1, db1, dw2, db2 = ext.se_backward(dy, x, w1, w2, s, z, u, p, pmax, _ACT[act], _GATE[gate],
                                             _POOL[pool], variant, bps, lag, poison())
    return dx, dw1, db1, dw2, db2

"""SCA on the hand-written CUDA kernels (csrc/sca/, through attnkernels._C; see attnkernels/cuda/
for the two builds): the backend contract of attnkernels/triton/sca.py's docstring, the same
arguments, saved tensors and passes (CUDA kernel `sca_<name>_kernel` for Triton's `_sca_<name>`).

The (locations x C) x (C x k) products run on the tensor cores (nvcuda::wmma, fp32 accumulation)
for fp16 / bf16 and as fp32 / fp64 FMAs for fp32 / fp64: fp32 inputs always get IEEE fp32
products here, so `tf32` (TF32 allowed) changes nothing on this backend.

DP_BUDGET: elements of the backward's dP scratch (the samples run in chunks of
max(1, DP_BUDGET // (HW * k_s))); SPLIT_HINT > 0: HW splits of the forward's channel pooling
(0: chosen from the shape). Tests lower / set them to run several chunks / splits.
"""
from __future__ import annotations

from . import ext_for, poison

__all__ = ["sca_forward", "sca_backward"]

_ORDER = {"cs": 0, "sc": 1, "c": 2, "s": 3}
DP_BUDGET = 1 << 22
SPLIT_HINT = 0


def sca_forward(V, h, w_c, b_c, W_hc, u_c, W_s, b_s, W_hs, u_s, order, scale, tf32):
    """-> (X, hc, hs, v, beta, alpha); see attnkernels/triton/sca.py for the contract."""
    return tuple(ext_for(V).sca_forward(V, h, w_c, b_c, W_hc, u_c, W_s, b_s, W_hs, u_s, _ORDER[order], bool(scale),
                                        bool(tf32), SPLIT_HINT, poison()))


def sca_backward(dX, V, h, w_c, W_hc, u_c, W_s, W_hs, u_s, hc, hs, v, beta, alpha, dbeta, dalpha, order, scale,
                 tf32):
    """-> (dV, dh, dw_c, db_c, dW_hc, du_c, dc_c, dW_s, db_s, dW_hs, du_s, dc_s); see
    attnkernels/triton/sca.py for the contract."""
    return tuple(ext_for(V).sca_backward(dX, V, h, w_c, W_hc, u_c, W_s, W_hs, u_s, hc, hs, v, beta, alpha, dbeta,
                                         dalpha, _ORDER[order], bool(scale), bool(tf32), int(DP_BUDGET), poison()))

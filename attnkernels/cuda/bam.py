"""BAM on the hand-written CUDA kernels (csrc/bam/, through attnkernels._C; see attnkernels/cuda/
for the two builds): the backend contract of attnkernels/bam.py.

Forward: a pooling launch (per-channel sums of x; each sample's last block runs u = W0 p + b0, and
with running statistics the rest of the channel MLP; with batch statistics the batch's last
sample computes them), with batch statistics a launch of the BatchNorm, ReLU and the last Linear
(mc), then the gate launch y = x * (1 + sigmoid(mc (op) ms)). Backward: a reduction launch (dmc and
dms from tiles of dy and x, then per sample dh = W1^T dmc and the ReLU's backward, then in the
batch's last sample the BatchNorm backward), a launch of dp = W0^T du and the weight gradients,
and the dx launch. Every sum in a fixed order: the same bits run to run.
ATTNKERNELS_CUDA_POISON=1 (or attnkernels._alloc.poisoned()) fills every output and workspace
with NaN before the kernels run.
"""
from __future__ import annotations

from . import ext_for, poison

__all__ = ["bam_forward", "bam_backward"]

_COMBINE = {"prod": 0, "sum": 1}  # csrc/bam/bam_api.h: Combine


def bam_forward(x, ms, w0, b0, w1, b1, bn_w, bn_b, bn_mean, bn_var, eps, batch_stats, combine):
    """-> (y, p, u, mc, bstat); see attnkernels/bam.py for the contract."""
    return tuple(ext_for(x).bam_forward(x, ms, w0, b0, w1, b1, bn_w, bn_b, bn_mean, bn_var, float(eps),
                                        bool(batch_stats), _COMBINE[combine], poison()))


def bam_backward(dy, x, ms, w0, w1, bn_w, bn_b, p, u, mc, bstat, batch_stats, combine):
    """-> (dx, dms, dw0, db0, dw1, db1, dbn_w, dbn_b); see attnkernels/bam.py for the contract."""
    return tuple(ext_for(x).bam_backward(dy, x, ms, w0, w1, bn_w, bn_b, p, u, mc, bstat, bool(batch_stats),
                                         _COMBINE[combine], poison()))

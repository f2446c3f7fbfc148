"""CBAM on the hand-written CUDA kernels (csrc/cbam/, through attnkernels._C; see attnkernels/cuda/
for the two builds): the backend contract's ``cbam_forward`` / ``cbam_backward`` (attnkernels/cbam.py
describes the inputs and outputs). The extension checks every input and names the bad one;
ATTNKERNELS_CUDA_POISON=1 (or attnkernels._alloc.poisoned()) fills every output and workspace with
NaN before the kernels run.
"""
from __future__ import annotations

from . import ext_for, poison

__all__ = ["cbam_forward", "cbam_backward"]

# The option names and the codes the kernels take (csrc/common/activations.cuh ACT_* / GATE_*,
# csrc/cbam/cbam_api.h Pool / SPool).
_CODES = {
    "act": {"relu": 0, "silu": 1, "hardswish": 2, "gelu": 3, "identity": 4},
    "gate": {"sigmoid": 0, "hardsigmoid": 1},
    "pool": {"avg": 0, "max": 1, "avg+max": 2, "avgmax": 3},
    "spool": {"max_mean": 0, "mean_max": 1, "avgmax": 2},
}


def _codes(act: str, gate: str, pool: str, spool: str) -> tuple[int, int, int, int]:
    out = []
    for what, name in (("act", act), ("gate", gate), ("pool", pool), ("spool", spool)):
        table = _CODES[what]
        if name not in table:
            raise ValueError(f"cbam: unknown {what} {name!r} (the CUDA kernels have {tuple(table)})")
        out.append(table[name])
    return tuple(out)


def cbam_forward(x, w1, b1, w2, b2, conv_w, bn_w, bn_b, bn_mean, bn_var, eps, batch_stats, act, gate, pool, spool):
    """-> (y, pools, u, z, m, t, bstat)."""
    return tuple(ext_for(x).cbam_forward(x, w1, b1, w2, b2, conv_w, bn_w, bn_b, bn_mean, bn_var, float(eps),
                                         bool(batch_stats), *_codes(act, gate, pool, spool), poison()))


def cbam_backward(dy, x, w1, w2, conv_w, bn_w, bn_b, pools, u, z, m, t, bstat, batch_stats, act, gate, pool,
                  spool):
    """-> (dx, dw1, db1, dw2, db2, dconv_w, dbn_w, dbn_b)."""
    return tuple(ext_for(x).cbam_backward(dy, x, w1, w2, conv_w, bn_w, bn_b, pools, u, z, m, t, bstat,
                                          bool(batch_stats), *_codes(act, gate, pool, spool), poison()))

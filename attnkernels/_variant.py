"""Which kernel variant an op runs: the backend's own choice ("auto") unless forced, per thread
(`force_variant`) or per process (ATTNKERNELS_SE_VARIANT=auto|split|fused|pipelined|batched). A
backend runs its default for a variant it lacks (Triton has no "fused"; the CUDA build none but
"split" in float64, and "pipelined" and "batched" from sm_90 only) and reports what it ran.

  "split"      a reduce kernel (the last program of a sample runs the sample's epilogue), then an
               elementwise kernel over the samples in reverse order;
  "pipelined"  the same work in one launch of persistent programs that take reduce slices and
               elementwise chunks in the order of an atomic ticket, each sample's chunks `lag`
               samples behind its slices, so their second read of the activations hits L2;
  "fused"      (CUDA) one block per sample holds the sample in shared memory;
  "batched"    "split" with the excitation MLP of a group of samples at once, each block of the
               weights read once a group: CUDA in tiles spread over the reduce launch, Triton
               in programs over (group, channel block) in both launches.
"""
from __future__ import annotations

import contextlib
import os
import threading

VARIANTS = ("auto", "split", "fused", "pipelined", "batched")
_local = threading.local()


@contextlib.contextmanager
def force_variant(variant: str = "auto", bps: int = 0, lag: int = 0):
    """Force the variant in this thread; `bps` > 0 sets the reduce slices per sample (Triton: the
    HW splits of each (sample, channel block)), `lag` > 0 the pipelined lag in samples (tests,
    benchmarks)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if bps < 0 or lag < 0:
        raise ValueError(f"bps and lag must be >= 0, got bps={bps}, lag={lag}")
    prev = getattr(_local, "forced", None)
    _local.forced = (variant, int(bps), int(lag))
    try:
        yield
    finally:
        _local.forced = prev


def request() -> tuple[str, int, int]:
    """(variant, reduce slices per sample, lag); 0 = the backend's choice."""
    forced = getattr(_local, "forced", None)
    if forced is not None:
        return forced
    v = os.environ.get("ATTNKERNELS_SE_VARIANT", "auto") or "auto"
    if v not in VARIANTS:
        raise ValueError(f"ATTNKERNELS_SE_VARIANT must be one of {VARIANTS}, got {v!r}")
    return v, 0, 0

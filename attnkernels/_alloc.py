"""Output allocation for kernel backends, with a test hook that poisons fresh outputs.

Inside ``with poisoned():`` every buffer a backend allocates through these helpers is filled
with NaN (or -1 for integers) before the kernel runs, so an element a kernel forgets to write
fails the comparison with the reference instead of silently holding stale memory.
"""
from __future__ import annotations

import contextlib

import torch

_poison = False


def poisoning() -> bool:
    return _poison


@contextlib.contextmanager
def poisoned(enabled: bool = True):
    global _poison
    prev, _poison = _poison, enabled
    try:
        yield
    finally:
        _poison = prev


def _fill(t: torch.Tensor) -> torch.Tensor:
    if _poison and t.numel():
        t.fill_(float("nan") if t.is_floating_point() else -1)
    return t


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the kernels' per-(n, c) vectors: fp64 for fp64 inputs, else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def empty(shape, dtype, device) -> torch.Tensor:
    return _fill(torch.empty(shape, dtype=dtype, device=device))


def empty_like(t: torch.Tensor, **kw) -> torch.Tensor:
    """Like torch.empty_like: keeps t's memory format (NCHW or channels_last)."""
    return _fill(torch.empty_like(t, **kw))

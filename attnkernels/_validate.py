"""Input checks shared by the op front ends: a clear Python error naming the argument."""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(t, name: str, ndim=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a float16/bfloat16/float32/float64 tensor, got {t.dtype}")
    if ndim is not None and t.dim() not in ((ndim,) if isinstance(ndim, int) else ndim):
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    return t


def check_like(t, name: str, ref: torch.Tensor, ref_name: str = "x"):
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}")
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")
    return t


def check_grad_like(g, name: str, ref: torch.Tensor, ref_name: str = "x"):
    """A backward op's incoming gradient: ref's shape, dtype, device and memory format (the
    kernels stream it with ref's strides)."""
    if not (isinstance(g, torch.Tensor) and g.shape == ref.shape and g.dtype == ref.dtype and g.device == ref.device
            and (g.is_contiguous() if ref.is_contiguous() else g.is_contiguous(memory_format=torch.channels_last))):
        raise ValueError(f"{name} must have {ref_name}'s shape, dtype, device and memory format")
    return g


def as_matrix(w, name: str, rows: int | None, cols: int | None, ref: torch.Tensor):
    """A Linear (out, in) or 1x1 conv (out, in, 1, 1) weight as an (out, in) view."""
    check_tensor(w, name)
    if w.dim() == 4 and tuple(w.shape[2:]) == (1, 1):
        w = w.reshape(w.shape[0], w.shape[1])
    if w.dim() != 2:
        raise ValueError(f"{name} must be (out, in) or (out, in, 1, 1), got shape {tuple(w.shape)}")
    if (rows is not None and w.shape[0] != rows) or (cols is not None and w.shape[1] != cols):
        want = f"({rows if rows is not None else '*'}, {cols if cols is not None else '*'})"
        raise ValueError(f"{name} has shape {tuple(w.shape)}, expected {want}")
    return check_like(w, name, ref)


def check_vector(b, name: str, size: int, ref: torch.Tensor):
    if b is None:
        return None
    check_tensor(b, name, 1)
    if b.shape[0] != size:
        raise ValueError(f"{name} has shape {tuple(b.shape)}, expected ({size},)")
    return check_like(b, name, ref)


def check_choice(value, name: str, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """The layout a kernel runs x in: NCHW if x is contiguous, channels_last if x is
    channels_last-contiguous, else channels_last if the channel stride is the smallest and NCHW
    otherwise (x is then copied into that format)."""
    if x.is_contiguous():
        return torch.contiguous_format
    if x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    # neither: channels_last when channels are the innermost dimension, else NCHW
    return torch.channels_last if x.stride(1) < min(x.stride(2), x.stride(3)) else torch.contiguous_format

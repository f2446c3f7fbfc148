"""Helpers shared by the op test files: fresh random inputs and the low-precision error bar."""
from __future__ import annotations

import torch

LOW = (torch.float16, torch.bfloat16)


def rand(shape, dtype, device, gen, scale=1.0):
    """Fresh random normal values (never zeros), made in fp64 then cast."""
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(device=device, dtype=dtype)


def to64(t):
    return None if t is None else t.detach().to(torch.float64)


def assert_matches(out, ref_lowp, ref64, name="output", factor=2.0):
    """The standard of DEVELOPERS.md: the kernel's error against an fp64 reference is at most
    `factor` x the error of the reference computed in the same precision (plus a tiny eps).
    fp64 outputs must match the fp64 reference to ~1e-10 relative."""
    assert out is not None and out.shape == ref64.shape, f"{name}: shape {None if out is None else tuple(out.shape)} vs {tuple(ref64.shape)}"
    assert torch.isfinite(out).all(), f"{name}: non-finite values (an unwritten element?)"
    out64 = out.detach().to(torch.float64).cpu()
    ref64 = ref64.detach().to(torch.float64).cpu()
    scale = ref64.abs().max().item() if ref64.numel() else 0.0
    err = (out64 - ref64).abs().max().item() if ref64.numel() else 0.0
    if out.dtype == torch.float64:
        assert err <= 1e-10 * (1.0 + scale), f"{name}: fp64 error {err:.3e} (scale {scale:.3e})"
        return
    ref_err = (ref_lowp.detach().to(torch.float64).cpu() - ref64).abs().max().item() if ref64.numel() else 0.0
    eps = {torch.float32: 1e-6, torch.float16: 1e-4, torch.bfloat16: 1e-3}[out.dtype] * (1.0 + scale)
    assert err <= factor * ref_err + eps, (
        f"{name} ({out.dtype}): error {err:.3e} > {factor} x reference error {ref_err:.3e} + {eps:.1e}")

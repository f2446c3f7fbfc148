#!/usr/bin/env python3
"""A small SE workload for compute-sanitizer (benchmarks/gpu_check.sh):

    compute-sanitizer --tool memcheck  python3 benchmarks/sanitize_se.py
    compute-sanitizer --tool racecheck python3 benchmarks/sanitize_se.py [--backends cuda]

attnkernels.se forward + backward on the "cuda" backend (each forward variant: auto, split,
fused, pipelined with its default lag and with lag 1, batched, when attnkernels.cuda can force
them) and on "triton" (its default, pipelined with lag 1, batched), for a few small shapes, dtypes and
layouts, pools avg and avgmax, several act/gate pairs. Outputs are poisoned with NaN first where
the backend supports it (ATTNKERNELS_CUDA_POISON=1) and compared with the eager reference (a
mismatch is reported and makes the exit status 1). Exit 0 when every case ran and matched; 2 if
no CUDA. For memcheck run with PYTORCH_NO_CUDA_MEMORY_CACHING=1 so out-of-bounds accesses into
neighbouring cached blocks are caught.
"""
import argparse
import contextlib
import importlib
import os
import sys
import traceback

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import torch  # noqa: E402

# (N, C, H, W, Cr): tiny, odd sizes, a larger sample (~200 KB fp32: still fits the fused
# variant's shared memory on sm_90), HW=1
SHAPES = [(2, 16, 7, 7, 4), (3, 37, 5, 3, 5), (1, 48, 33, 31, 8), (4, 96, 1, 1, 6),
          (2, 64, 40, 40, 8)]  # the last: forced "fused" runs on a cluster of 2 (sm_90)
CASES = [  # (dtype, channels_last, act, gate, pool)
    (torch.float32, False, "relu", "sigmoid", "avg"),
    (torch.float32, True, "silu", "hardsigmoid", "avgmax"),
    (torch.bfloat16, True, "relu", "hardsigmoid", "avg"),
    (torch.float16, False, "hardswish", "sigmoid", "avgmax"),
]
TOL = {torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 6e-2}


DEV = "cuda"  # "cpu" with --cpu (a check of this script without a GPU: cuda-emu, interpreter)


def _rand(shape, dtype, gen, scale=1.0):
    return (torch.randn(shape, generator=gen) * scale).to(DEV, dtype)


def run_case(ak, backend, shape, dtype, cl, act, gate, pool, seed):
    N, C, H, W, Cr = shape
    g = torch.Generator().manual_seed(seed)
    x = _rand((N, C, H, W), dtype, g)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    w1, w2 = _rand((Cr, C), dtype, g, 1.5 / C ** 0.5), _rand((C, Cr), dtype, g, 1.5 / Cr ** 0.5)
    b1, b2 = _rand((Cr,), dtype, g, 0.5), _rand((C,), dtype, g, 0.5)
    dy = torch.randn_like(x)
    leaves = [t.detach().clone().requires_grad_() for t in (x, w1, b1, w2, b2)]
    ref = [t.detach().float().requires_grad_() for t in (x, w1, b1, w2, b2)]
    y = ak.se(*leaves, act=act, gate=gate, pool=pool, backend=backend)
    grads = torch.autograd.grad(y, leaves, dy)
    if DEV == "cuda":
        torch.cuda.synchronize()
    y_ref = ak.reference.se(*ref, act=act, gate=gate, pool=pool)
    grads_ref = torch.autograd.grad(y_ref, ref, dy.float())
    bad = []
    for name, a, b in [("y", y, y_ref)] + list(zip(("dx", "dw1", "db1", "dw2", "db2"), grads, grads_ref)):
        a, b = a.float(), b.float()
        scale = b.abs().max().item() + 1e-6
        err = (a - b).abs().max().item()
        if not torch.isfinite(a).all() or err > TOL[dtype] * (1 + scale) * (4 if name != "y" else 1):
            bad.append(f"{name} max|diff| {err:.3g} (scale {scale:.3g})")
    return bad


def main(argv=None):
    p = argparse.ArgumentParser(description="SE workload for compute-sanitizer")
    p.add_argument("--backends", default="cuda,triton", help="comma list (default cuda,triton)")
    p.add_argument("--cpu", action="store_true",
                   help="no GPU: run the cases on CPU tensors (cuda -> cuda-emu, Triton interpreter)")
    args = p.parse_args(argv)
    global DEV
    if args.cpu:
        DEV = "cpu"
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before attnkernels.triton is imported
    elif not torch.cuda.is_available():
        print("sanitize_se.py: needs a CUDA GPU", file=sys.stderr)
        return 2
    import attnkernels as ak
    from attnkernels._variant import force_variant
    avail = ak.available_backends(DEV)
    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    print(f"sanitize_se: {torch.cuda.get_device_name(0) if DEV == 'cuda' else 'cpu'}; torch {torch.__version__}; "
          f"available {avail}; running {wanted}", flush=True)
    try:
        cuda_mod = importlib.import_module("attnkernels.cuda")
    except Exception:
        cuda_mod = None
    os.environ.setdefault("ATTNKERNELS_CUDA_POISON", "1")

    ran, failures = 0, 0
    for backend in wanted:
        if DEV == "cpu" and backend == "cuda":
            backend = "cuda-emu"
        if backend not in avail:
            print(f"[skip] backend {backend!r} not available here", flush=True)
            continue
        variants = [None]
        is_cuda = backend in ("cuda", "cuda-emu")
        if is_cuda and cuda_mod is not None and hasattr(cuda_mod, "force_variant"):
            # (variant, squeeze blocks per sample, pipelined lag): lag 1 interleaves squeezes and
            # rescales even where the default lag (from the L2 size) covers the whole batch
            variants = [("auto",), ("split",), ("fused",), ("pipelined",), ("pipelined", 0, 1), ("batched",)]
        elif backend == "triton":  # (batched with 2 HW splits: its split-combine path too)
            variants = [None, ("pipelined", 0, 1), ("batched", 2)]
        for variant in variants:
            for i, shape in enumerate(SHAPES):
                for j, (dtype, cl, act, gate, pool) in enumerate(CASES):
                    vname = "/".join(str(v) for v in variant) if variant else ""
                    label = (f"{backend}{'/' + vname if variant else ''} {shape} "
                             f"{str(dtype).replace('torch.', '')} {'cl' if cl else 'nchw'} {act}/{gate}/{pool}")
                    try:
                        ctx = force_variant(*variant) if variant else contextlib.nullcontext()
                        with ctx:
                            bad = run_case(ak, backend, shape, dtype, cl, act, gate, pool, 10 * i + j)
                        ran_variant = ""
                        if is_cuda and hasattr(cuda_mod, "last_variant"):
                            ran_variant = f" (ran {cuda_mod.last_variant()})"
                        elif backend == "triton":
                            ran_variant = f" (ran {importlib.import_module('attnkernels.triton.se').last_variant()})"
                        if bad:
                            failures += 1
                            print(f"[MISMATCH] {label}{ran_variant}: {'; '.join(bad)}", flush=True)
                        else:
                            print(f"[ok] {label}{ran_variant}", flush=True)
                        ran += 1
                    except Exception as e:
                        if variant == ("fused",) and "shared memory" in str(e):
                            print(f"[skip] {label}: {str(e)[:200]}", flush=True)
                            continue
                        failures += 1
                        print(f"[ERROR] {label}: {type(e).__name__}: {str(e)[:300]}", flush=True)
                        traceback.print_exc()
    print(f"sanitize_se: {ran} cases ran, {failures} failed", flush=True)
    return 1 if failures or ran == 0 else 0


if __name__ == "__main__":
    sys.exit(main())

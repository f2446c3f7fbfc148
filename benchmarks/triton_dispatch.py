#!/usr/bin/env python3
"""Host time of the Triton SE launchers, with no GPU: triton's JIT dispatch against
attnkernels' cached launches (attnkernels/triton/_launch.py).

A no-launch driver stands in for CUDA: triton compiles the kernels for sm_90 as it would on an
H100 (ptxas included), and the "launch" is a Python call that only records its arguments. So
the numbers are the host path of `attnkernels.triton.se.se_forward` / `se_backward` (plan,
allocations, argument binding, dispatch) minus the driver's launch call itself (a few us on a
GPU host). CPU tensors stand in for the device's: nothing reads them. The "module" rows time
the drop-in SqueezeExcitation on the Triton backend the same way: input checks, autograd and
the launchers, under no_grad and as forward + torch.autograd.grad.

    python3 benchmarks/triton_dispatch.py [--calls 3000] [--rounds 3] [--shape 1,256,56,56] [--csv FILE]

Also imported by tests/test_triton_launch.py for its driver (`install_no_launch_driver`).
Must run without TRITON_INTERPRET (the interpreter has no compiled kernels): it unsets it.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import os
import platform
import sys

os.environ.pop("TRITON_INTERPRET", None)  # before triton is imported

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in (_ROOT, os.path.join(_ROOT, "benchmarks")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import torch  # noqa: E402


class NoLaunchDriver:
    """The part of triton's driver interface that compiling and launching use. `launches`
    holds the argument tuple of every launcher call (grid x/y/z, stream, function,
    packed metadata, launch metadata, enter hook, exit hook, then the kernel's arguments)."""

    def __init__(self, arch: int = 90, keep: bool = True):
        from triton.backends.compiler import GPUTarget
        self.target = GPUTarget("cuda", arch, 32)
        self.keep = keep
        self.launches: list = []
        self.loaded = 0
        driver = self

        class Launcher:
            def __init__(self, src, metadata):
                pass

            def __call__(self, *args):
                if driver.keep:
                    driver.launches.append(args)

        class Utils:
            def load_binary(self, name, kernel, shared, device):
                driver.loaded += 1  # a distinct function handle per loaded kernel
                return driver.loaded, 1000 + driver.loaded, 32, 0, 1024

            def get_device_properties(self, device):
                return {"max_shared_mem": 232448, "multiprocessor_count": 132}

        self.launcher_cls = Launcher
        self.utils = Utils()

    def is_active(self):
        return True

    def get_current_device(self):
        return 0

    def get_current_stream(self, device):
        return 7

    def get_current_target(self):
        return self.target


def install_no_launch_driver(**kw) -> NoLaunchDriver:
    from triton.runtime import driver
    d = NoLaunchDriver(**kw)
    driver.set_active(d)
    return d


def se_calls(shape, dtype=torch.bfloat16, channels_last=False, Cr=None):
    """(forward, backward) closures calling the Triton SE launchers on CPU stand-in tensors."""
    from attnkernels.triton import se as tse
    N, C, H, W = shape
    Cr = Cr or max(1, C // 16)
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(shape, generator=g).to(dtype).contiguous(memory_format=fmt)
    w1, b1 = torch.randn(Cr, C, generator=g).to(dtype), torch.randn(Cr, generator=g).to(dtype)
    w2, b2 = torch.randn(C, Cr, generator=g).to(dtype), torch.randn(C, generator=g).to(dtype)
    opts = ("relu", "sigmoid", "avg")
    saved = tse.se_forward(x, w1, b1, w2, b2, *opts)[1:]
    dy = torch.randn(shape, generator=g).to(dtype).contiguous(memory_format=fmt)
    return (lambda: tse.se_forward(x, w1, b1, w2, b2, *opts),
            lambda: tse.se_backward(dy, x, w1, w2, *saved, *opts))


def module_calls(shape, dtype=torch.bfloat16):
    """(no_grad forward, forward + autograd.grad) closures of the drop-in SqueezeExcitation on the
    Triton backend: everything a model's call runs (checks, autograd, the launchers). The
    backend table is told the interpreter is on so that it accepts CPU stand-in tensors; the
    kernels are still the compiled ones (no TRITON_INTERPRET at import)."""
    import attnkernels as ak
    sys.modules["attnkernels.backend"].triton_interpret = lambda: True
    N, C, H, W = shape
    m = ak.SqueezeExcitation(C, max(1, C // 16)).to(dtype)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    xg = x.clone().requires_grad_()
    params = [xg, *m.parameters()]

    def fwd():
        with ak.backend("triton"), torch.no_grad():
            return m(x)

    def fwd_bwd():
        with ak.backend("triton"):
            y = m(xg)
            return torch.autograd.grad(y, params, y)
    return fwd, fwd_bwd


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--shape", default="1,256,56,56")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--csv", default=None, help="append the rows to this CSV file")
    args = ap.parse_args(argv)
    import triton
    from host_overhead import per_call_us
    from attnkernels.triton import se as tse

    install_no_launch_driver(keep=False)
    cached = tse.launcher  # attnkernels/triton/_launch.py's
    shape = tuple(int(v) for v in args.shape.split(","))
    fwd, bwd = se_calls(shape)
    mod_fwd, mod_fwd_bwd = module_calls(shape)
    ops = (("se_forward", fwd, args.calls), ("se_backward", bwd, args.calls // 2),
           ("module no_grad", mod_fwd, args.calls), ("module fwd+bwd", mod_fwd_bwd, args.calls // 4))
    best = {}
    for _ in range(args.rounds):  # the modes interleaved, best of each: this host is noisy
        for mode in ("jit", "cached"):
            # jit: every launch through kernel[grid](...), as before attnkernels/triton/_launch.py
            tse.launcher = (lambda k: k) if mode == "jit" else cached
            for op, fn, calls in ops:
                us = per_call_us(fn, calls, lambda: None, repeats=3)
                best[f"{mode} {op}"] = min(us, best.get(f"{mode} {op}", us))
    rows = list(best.items())
    where = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, no GPU"
    print(f"Triton SE launcher host time per call, {'x'.join(map(str, shape))} bf16 NCHW, no-launch "
          f"driver (sm_90 kernels), on {where}; triton {triton.__version__}, torch {torch.__version__}")
    for label, us in rows:
        print(f"  {label:26s} {us:8.1f} us")
    if args.csv:
        new = not os.path.exists(args.csv)
        with open(args.csv, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["date", "where", "triton", "torch", "shape", "path", "us_per_call"])
            for label, us in rows:
                w.writerow([_dt.date.today().isoformat(), where, triton.__version__, torch.__version__,
                            args.shape, label, f"{us:.2f}"])
    return rows


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Host time per SE call: what the Python and C++ layers around the kernels cost.

At batch 1 and on small stages an SE call is bound by host time, not by the GPU (see NOTES.md):
this script times the host path alone, call after call, for each layer of the stack:

  raw ext          attnkernels._C.se_forward: checks, 6 allocations, launches
  ak.se no_grad    the functional API (C++ eager path: one extension call)
  module no_grad   attnkernels.SqueezeExcitation.forward
  module fwd+bwd   y = m(x); torch.autograd.grad(y, [x, *params], dy)  (backward in C++)
  python autograd  the same fwd+bwd through the Python autograd.Function (the path the Triton
                   backend and, before the C++ path, cuda took), for comparison
  eager fwd / fwd+bwd   torchvision-style eager SqueezeExcitation (the baseline of the targets)
  triton module ...     (GPU only) the module on the Triton backend: its launcher's host time,
                        with cached direct launches and with triton's JIT dispatch per launch

Without a GPU it runs the cuda-emu backend with CUEMU_NO_RUN=1: launches are validated but no
block runs, so the numbers are the host path's own (this machine's CPU; the eager rows there run
their tiny CPU kernels). With a GPU it runs the cuda backend on a 1x8x1x1 input, where the device
work is a few microseconds and the loop is bound by the host (CUDA's asynchronous launches); the
clock is read after a synchronize.

    python3 benchmarks/host_overhead.py [--calls 3000] [--csv benchmarks/results/host-overhead.csv]
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import os
import platform
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import torch  # noqa: E402


def per_call_us(fn, calls, sync, repeats=7):
    """Best of `repeats` loops of `calls` calls, in microseconds per call."""
    for _ in range(max(50, calls // 10)):
        fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        best = min(best, (time.perf_counter() - t0) / calls * 1e6)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--csv", default=None, help="append the rows to this CSV file")
    args = ap.parse_args(argv)

    import attnkernels.cuda as akc

    gpu = torch.cuda.is_available() and akc.unavailable_reason("cuda") is None
    if not gpu and akc.unavailable_reason("cuda-emu") is not None:
        raise SystemExit(f"host_overhead: no cuda or cuda-emu backend: {akc.unavailable_reason('cuda-emu')}")
    no_run = os.environ.get("CUEMU_NO_RUN")
    if not gpu:
        os.environ["CUEMU_NO_RUN"] = "1"  # read at every launch: host path only
    try:
        return _run(args, gpu)
    finally:
        if no_run is None:
            os.environ.pop("CUEMU_NO_RUN", None)
        else:
            os.environ["CUEMU_NO_RUN"] = no_run


def _run(args, gpu):
    import attnkernels as ak
    import attnkernels.cuda as akc
    from attnkernels import reference
    from attnkernels._dropin import weight_bias as _conv_params
    from attnkernels.se import _SEFunction

    name, dev = ("cuda", "cuda") if gpu else ("cuda-emu", "cpu")
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    N, C, H, Cr = 1, 8, 1, 2
    x = torch.randn(N, C, H, H, device=dev)
    m = ak.SqueezeExcitation(C, Cr).to(dev)
    eager = reference.SqueezeExcitation(C, Cr).to(dev)
    eager.load_state_dict(m.state_dict())
    w1, b1 = _conv_params(m.fc1)
    w2, b2 = _conv_params(m.fc2)
    w1m, w2m = w1.detach().reshape(Cr, C), w2.detach().reshape(C, Cr)
    ext = akc.ext_for(x)
    xg = x.clone().requires_grad_(True)
    dy = torch.randn_like(x)
    params, eparams = list(m.parameters()), list(eager.parameters())

    def python_autograd():
        y = _SEFunction.apply(xg, w1.reshape(Cr, C), b1, w2.reshape(C, Cr), b2, "relu", "sigmoid", "avg", name)
        return torch.autograd.grad(y, [xg] + params, dy)

    rows = []
    prev = ak.set_backend(name)
    try:
        with torch.no_grad():
            rows.append(("raw ext se_forward", per_call_us(
                lambda: ext.se_forward(x, w1m, b1, w2m, b2, 0, 0, 0), args.calls, sync)))
            rows.append(("ak.se no_grad", per_call_us(lambda: ak.se(x, w1, b1, w2, b2), args.calls, sync)))
            rows.append(("module no_grad", per_call_us(lambda: m(x), args.calls, sync)))
            rows.append(("eager fwd no_grad", per_call_us(lambda: eager(x), args.calls, sync)))
        rows.append(("module fwd+bwd", per_call_us(
            lambda: torch.autograd.grad(m(xg), [xg] + params, dy), args.calls // 3, sync)))
        rows.append(("python autograd fwd+bwd", per_call_us(python_autograd, args.calls // 3, sync)))
        rows.append(("eager fwd+bwd", per_call_us(
            lambda: torch.autograd.grad(eager(xg), [xg] + eparams, dy), args.calls // 3, sync)))
        if gpu and "triton" in ak.available_backends("cuda"):  # (the interpreter would time kernels)
            import attnkernels.triton.se as tse
            cached = tse.launcher
            try:  # cached direct launches (attnkernels/triton/_launch.py), then the JIT's dispatch
                for suffix, launcher in (("", cached), (" (JIT launch)", lambda k: k)):
                    tse.launcher = launcher
                    with ak.backend("triton"):
                        with torch.no_grad():
                            rows.append((f"triton module no_grad{suffix}",
                                         per_call_us(lambda: m(x), args.calls, sync)))
                        rows.append((f"triton module fwd+bwd{suffix}", per_call_us(
                            lambda: torch.autograd.grad(m(xg), [xg] + params, dy), args.calls // 3, sync)))
            finally:
                tse.launcher = cached
    finally:
        ak.set_backend(prev)

    where = torch.cuda.get_device_name(0) if gpu else f"{platform.processor() or platform.machine()} (CUEMU_NO_RUN)"
    print(f"host time per SE call, {N}x{C}x{H}x{H}, backend {name} on {where}; torch {torch.__version__}")
    base = dict(rows)
    for label, us in rows:
        ref = base["eager fwd no_grad"] if "no_grad" in label or label.startswith("raw") else base["eager fwd+bwd"]
        print(f"  {label:34s} {us:8.1f} us   ({ref / us:4.2f}x eager)")
    if args.csv:
        new = not os.path.exists(args.csv)
        os.makedirs(os.path.dirname(os.path.abspath(args.csv)), exist_ok=True)
        with open(args.csv, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["date", "where", "torch", "backend", "path", "us_per_call"])
            for label, us in rows:
                w.writerow([_dt.date.today().isoformat(), where, torch.__version__, name, label, f"{us:.2f}"])
    return rows


if __name__ == "__main__":
    main()

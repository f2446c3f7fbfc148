"""pytest-benchmark entry point for SE (CUDA only):

    python3 -m pytest benchmarks --benchmark-only [--benchmark-group-by=group]

A few real-model SE shapes x {eager, torch.compile, attnkernels triton, attnkernels cuda} x
{fwd, fwd+bwd}, bf16. Each timed call ends with torch.cuda.synchronize(). `pytest tests` never
collects this directory; without CUDA the whole module is skipped. benchmarks/bench_se.py is the
fuller benchmark (GB/s, % of copy bandwidth, peak memory, CSV/Markdown/plot).
"""
import copy
import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("SE benchmarks need a CUDA GPU", allow_module_level=True)
pytest.importorskip("pytest_benchmark")
pytest.importorskip("torchvision")

_HERE = os.path.dirname(os.path.abspath(__file__))
for _p in (os.path.dirname(_HERE), _HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import attnkernels as ak  # noqa: E402
import bench_se  # noqa: E402

# (id, N, C, H, Cr, act, gate, layout)
SHAPES = [
    ("r50-256@56-b32", 32, 256, 56, 16, "relu", "sigmoid", "nchw"),
    ("r50-2048@7-b128", 128, 2048, 7, 128, "relu", "sigmoid", "cl"),
    ("mbv3-672@14-b128", 128, 672, 14, 168, "relu", "hardsigmoid", "cl"),
    ("effb0-96@56-b32", 32, 96, 56, 4, "silu", "sigmoid", "cl"),
]
IMPLS = ["eager", "compile", "triton", "cuda"]
MODES = ["fwd", "fwdbwd"]
DTYPE = torch.bfloat16
_AVAILABLE = ak.available_backends("cuda")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
def test_se(benchmark, shape, impl, mode):
    name, N, C, H, Cr, act, gate, layout = shape
    if impl in ("triton", "cuda") and impl not in _AVAILABLE:
        pytest.skip(f"backend {impl!r} not available")
    tv, fused = bench_se.make_modules(C, Cr, act, gate, DTYPE)
    if impl == "eager":
        m = tv
    elif impl == "compile":
        torch._dynamo.reset()
        m = torch.compile(copy.deepcopy(tv), dynamic=False)
    else:
        m = fused
    params = list(m.parameters())
    fmt = bench_se.LAYOUTS[layout]
    x = torch.randn((N, C, H, H), device="cuda", dtype=DTYPE).contiguous(memory_format=fmt)
    dy = torch.randn_like(x)
    if mode == "fwdbwd":
        x.requires_grad_(True)

    def run():
        if mode == "fwd":
            with torch.no_grad():
                out = m(x)
        else:
            out = torch.autograd.grad(m(x), [x] + params, dy)
        torch.cuda.synchronize()
        return out

    prev = ak.set_backend(impl) if impl in ("triton", "cuda") else None
    try:
        for _ in range(3):  # compile / JIT outside the measurement
            run()
        benchmark.group = f"{name} {mode}"
        benchmark.extra_info.update(
            dict(N=N, C=C, H=H, W=H, Cr=Cr, dtype="bf16", layout=layout,
                 bytes=bench_se.BYTES_FACTOR[mode] * x.numel() * x.element_size()))
        benchmark.pedantic(run, rounds=30, iterations=10, warmup_rounds=2)
    finally:
        if prev is not None:
            ak.set_backend(prev)

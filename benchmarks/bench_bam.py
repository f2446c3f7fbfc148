#!/usr/bin/env python3
"""BAM benchmark (CUDA GPU): the fused drop-in attnkernels.BAM on each kernel backend ("triton",
"cuda") against the official BAM code (Jongchan/attention-module MODELS/bam.py, with its two
broken lines fixed: it expands Mc and Ms to full (N, C, H, W) tensors before combining), the
eager reference (attnkernels.reference.BAM: broadcasts instead) and torch.compile of the
reference, at ResNet-50+BAM's three insertion points (after stages 1-3: C = 256 at 56x56, 512 at
28x28, 1024 at 14x14; reduction 16, two dilated 3x3 convs), forward and forward+backward, with
peak memory. All columns compute the same function from the same weights (one state_dict).

    python3 benchmarks/bench_bam.py --quick        # the three sites at batch 128 (+ one at 32), bf16
    python3 benchmarks/bench_bam.py                # the three sites at batch 128, bf16, both layouts
    python3 benchmarks/bench_bam.py --full         # x batches 32, 128 x fp32/bf16/fp16

Method: benchmarks/harness.py. fwd: eval mode, no_grad; fwd+bwd: train mode (BatchNorm on batch
statistics, so batch >= 2: BatchNorm1d's per-channel statistics over the batch),
torch.autograd.grad(y, [x, *params], dy). The spatial branch's convolutions (cuDNN) run in every
column; the fused op takes over the channel branch, the combination and the gate.
Bytes (the gate's minimum; weights and the spatial branch's own traffic not counted): fwd = read
x + write y = 2|x|; fwd+bwd = 5|x|.
Columns: eager (reference, the baseline of the guard and of × eager), official, compile, triton,
cuda; × official = the official code's time over the column's. Until attnkernels.BAM is merged
or a backend has the BAM kernels, those columns are skipped with a note.
"""
from __future__ import annotations

import argparse
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


import harness as H  # noqa: E402

PROG = "bench_bam.py"
SITES = [(256, 56), (512, 28), (1024, 14)]  # (C, H=W) after ResNet-50 stages 1, 2, 3
BATCHES = (32, 128)
QUICK = [((256, 56), 128), ((1024, 14), 128), ((512, 28), 128), ((256, 56), 32)]
SMOKE = [((32, 6), 2), ((64, 5), 3)]
BYTES_FACTOR = {"fwd": 2, "fwdbwd": 5}
CONFIG_FIELDS = ["N", "C", "H", "W", "Cr", "dtype", "layout"]
IMPLS = ("eager", "official", "compile", "triton", "cuda")


def fused_class():
    """The fused drop-in class, or None while attnkernels lacks it: the one place it is picked
    (attnkernels.BAM, of the BAM front end)."""
    import attnkernels as ak
    return getattr(ak, "BAM", None)


def official_bam():
    """The official BAM class (built from its source text by tests/official_code.py)."""
    tests = os.path.join(H.ROOT, "tests")
    if tests not in sys.path:
        sys.path.append(tests)
    import official_code
    return official_code.load().bam.BAM


def run_config(cfg, impls, modes, args, copy_gbps, writer):
    (C, Hs), N, dt_name, lay = cfg
    dtype, fmt = H.DTYPES[dt_name], H.LAYOUTS[lay]
    Cr = C // 16
    label = f"BAM N={N} C={C} {Hs}x{Hs} Cr={Cr} {dt_name} {lay}"
    H.log(f"== {label}")
    from attnkernels import reference
    eager = H.scale_params_(reference.BAM(C), seed=C).to(H.DEV, dtype)
    official = official_bam()(C).to(H.DEV, dtype)
    official.load_state_dict(eager.state_dict(), strict=True)
    cls = fused_class()
    fused = None
    if cls is not None:
        fused = cls(C).to(H.DEV, dtype)
        fused.load_state_dict(eager.state_dict(), strict=True)
    cols = H.module_impls(eager, fused, args, [k for k in H.KERNEL_IMPLS if k in impls])
    cols.insert(1, H.Impl("official", official))
    cols = [c for c in cols if c.name in impls]
    row = dict(N=N, C=C, H=Hs, W=Hs, Cr=Cr, dtype=dt_name, layout=lay)
    H.run_modules(label, row, {"bam": cols}, modes, args, copy_gbps, writer, shape=(N, C, Hs, Hs), dtype=dtype,
                  fmt=fmt, byte_factor=BYTES_FACTOR, speedup_cols={"x_official": "official"})


def _key(r):
    return (r["N"], r["C"], r["H"], r["dtype"], r["layout"], r["mode"])


def markdown(rows, impls, meta):
    return H.report_markdown(
        "BAM benchmark", rows, impls, meta,
        "Bytes: fwd = read x + write y (2|x|); fwd+bwd = fwd + read dy + read x + write dx (5|x|); "
        "the spatial branch's convolutions run in every column.",
        ["N×C×H×W", "dtype", "layout", "mode"], _key,
        lambda k: [f"{k[0]}×{k[1]}×{k[2]}×{k[2]}", k[3], k[4], k[5]],
        extra_cols=[("× official", lambda r: H.fmt_num(r.get("x_official", H.NAN), 2))])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    H.add_preset_args(p, "the three sites at batch 128 and one at 32, bf16, both layouts")
    H.add_common_args(p, IMPLS, "bam")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)

    def configs():
        cfgs = H.grid_configs(args, SITES, BATCHES, QUICK, PROG, smoke=SMOKE)
        if any(n < 2 for _, n, _, _ in cfgs) and "fwdbwd" in (args.modes or "fwdbwd"):
            H.log(f"{PROG}: batch 1 in training: BatchNorm1d of the channel branch needs >= 2 samples "
                  "(fwd+bwd fails)")
        return cfgs

    return H.run_benchmark(
        args, PROG, "bam", configs=configs, baselines=["eager", "official"], op="bam",
        fields=CONFIG_FIELDS + H.MEASURE_FIELDS + ["x_official"],
        run_config=lambda cfg, impls, modes, gbps, w: run_config(cfg, impls, modes, args, gbps, w),
        markdown=markdown, fused_missing=lambda: fused_class() is None,
        plot=lambda rows, impls, path, meta: H.plot_speedups(
            rows, impls, path, f"BAM on {H.gpu_tag(meta['gpu'])}", key_of=lambda r: _key(r)[:-1],
            label_of=lambda k: f"{k[0]}×{k[1]}@{k[2]} {k[3]} {k[4]}"))


if __name__ == "__main__":
    sys.exit(main())

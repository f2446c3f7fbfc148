#!/usr/bin/env python3
"""CBAM benchmark (CUDA GPU): the fused drop-ins on each kernel backend ("triton", "cuda") against
the eager modules and torch.compile of them, at ResNet-50+CBAM's block shapes (C = 256, 512,
1024, 2048 at 56, 28, 14, 7; reduction 16, 7x7 spatial conv), forward and forward+backward, with
peak memory. Two families, each timed against its own eager module:
  timm      timm.layers.CbamModule (eager) / its torch.compile / attnkernels.CbamModule
  official  the official CBAM (Jongchan/attention-module MODELS/cbam.py, built from its source
            text by tests/official_code.py: its MLP run once per pool, full-size expand_as of the
            channel scale) / its torch.compile / attnkernels.CBAM

    python3 benchmarks/bench_cbam.py --quick       # a few shapes, bf16, both layouts
    python3 benchmarks/bench_cbam.py               # every shape at batch 128, bf16, both layouts
    python3 benchmarks/bench_cbam.py --full        # x batches 1, 128 x fp32/bf16/fp16
    python3 benchmarks/bench_cbam.py --families official --batches 1 --modes fwd --impls eager,cuda

Method: benchmarks/harness.py (do_bench medians over fresh inputs rotated past L2, peak memory
of one call, the correctness guard against the family's eager module, torch.compile warmed up
before timing). fwd runs the modules in eval mode under no_grad (BatchNorm on running
statistics); fwd+bwd in train mode (batch statistics, running statistics updated):
torch.autograd.grad(y, [x, *params], dy).
Bytes (the minimum any implementation moves; weights not counted): fwd = read x + write y = 2|x|;
fwd+bwd = fwd + read dy + read x + write dx = 5|x|. (The fused kernels read x three times in the
forward: the channel pool, the spatial pool of x * s_c, the rescale.)
Until the CBAM front end is merged (attnkernels.CbamModule / attnkernels.CBAM) or a backend has
the CBAM kernels, those columns are skipped with a note.
Ratios per row: × eager (the family's eager module's time over the row's: timm CbamModule or the
official CBAM), × compile (its torch.compile's), peak × eager (the row's peak memory over eager's).
The Markdown's "Targets" table reads issue #22's GPU targets off them, per config and kernel
backend: forward >= 3x eager timm and >= 1.5x its torch.compile; forward+backward >= 2.5x eager;
training (fwd+bwd) peak memory <= 0.5x eager's (the last two for both families).
Outputs: <out>/<name>.csv (one row per config x family x mode x impl), <name>.md, <name>.png.
"""
from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


import harness as H  # noqa: E402

PROG = "bench_cbam.py"
# ResNet-50's bottleneck outputs (C, H=W) per stage; reduction 16
SHAPES = [(256, 56), (512, 28), (1024, 14), (2048, 7)]
BATCHES = (1, 128)
QUICK = [((256, 56), 128), ((2048, 7), 128), ((256, 56), 1), ((1024, 14), 128)]
SMOKE = [((32, 6), 2), ((48, 5), 1)]
FAMILIES = ("timm", "official")
BYTES_FACTOR = {"fwd": 2, "fwdbwd": 5}
CONFIG_FIELDS = ["N", "C", "H", "W", "Cr", "dtype", "layout"]


def fused_classes():
    """{family: the fused drop-in class, or None while attnkernels lacks it}: the one place the
    fused modules are picked (attnkernels.CbamModule and attnkernels.CBAM, of the CBAM front end)."""
    import attnkernels as ak
    return {"timm": getattr(ak, "CbamModule", None), "official": getattr(ak, "CBAM", None)}


def eager_modules(C, r=16):
    """{family: (eager module, why it is not the one named, or "")} in fp32 on the CPU, weights
    scaled so that neither gate saturates."""
    from attnkernels import reference
    try:
        from timm.layers.cbam import CbamModule
        timm_mod, note = CbamModule(C, rd_ratio=1.0 / r), ""
    except ImportError:
        timm_mod, note = reference.CbamModule(C, rd_ratio=1.0 / r), "timm not installed: its reference mirror"
    mods = {"timm": (timm_mod, note), "official": (H.official_code().cbam.CBAM(C, r), "")}
    for m, _ in mods.values():
        H.scale_params_(m, seed=C)
    return mods


def run_config(cfg, families, impls, modes, args, copy_gbps, writer):
    (C, Hs), N, dt_name, lay = cfg
    dtype, fmt = H.DTYPES[dt_name], H.LAYOUTS[lay]
    Cr = C // 16
    label = f"CBAM N={N} C={C} {Hs}x{Hs} Cr={Cr} {dt_name} {lay}"
    H.log(f"== {label}")
    eager = eager_modules(C)
    fused_cls = fused_classes()
    fams = {}
    for fam in families:
        mod, note = eager[fam]
        mod = mod.to(H.DEV, dtype)
        fused = None
        if fused_cls[fam] is not None:
            fused = (fused_cls[fam](C, rd_ratio=1.0 / 16) if fam == "timm" else fused_cls[fam](C, 16)).to(H.DEV, dtype)
            fused.load_state_dict(mod.state_dict(), strict=True)
        kernels = [k for k in H.KERNEL_IMPLS if k in impls]
        fam_impls = H.module_impls(mod, fused, args, kernels)
        fams[fam] = [i for i in fam_impls if i.name in impls]
        if note:
            fams[fam][0].note = note
    row = dict(N=N, C=C, H=Hs, W=Hs, Cr=Cr, dtype=dt_name, layout=lay)
    H.run_modules(label, row, fams, modes, args, copy_gbps, writer, shape=(N, C, Hs, Hs), dtype=dtype,
                  fmt=fmt, byte_factor=BYTES_FACTOR)


# issue #22's GPU targets
TARGETS = H.family_targets(
    "issue #22", [
        H.Target("fwd × eager timm ≥ 3", "fwd", "x_eager", ">=", 3.0, family="timm"),
        H.Target("fwd × compile timm ≥ 1.5", "fwd", "x_compile", ">=", 1.5, family="timm"),
        H.Target("fwd+bwd × eager timm ≥ 2.5", "fwdbwd", "x_eager", ">=", 2.5, family="timm"),
        H.Target("fwd+bwd × eager official ≥ 2.5", "fwdbwd", "x_eager", ">=", 2.5, family="official"),
        H.Target("train peak × eager timm ≤ 0.5", "fwdbwd", "peak_x_eager", "<=", 0.5, family="timm"),
        H.Target("train peak × eager official ≤ 0.5", "fwdbwd", "peak_x_eager", "<=", 0.5, family="official")])


def markdown(rows, impls, meta):
    return H.report_markdown(
        "CBAM benchmark", rows, impls, meta,
        "Bytes: fwd = read x + write y (2|x|); fwd+bwd = fwd + read dy + read x + write dx (5|x|). "
        "Families: timm = timm CbamModule / attnkernels.CbamModule; official = the official CBAM code (MODELS/cbam.py) / attnkernels.CBAM.",
        H.FAMILY_KEY_HEAD, H.family_key, H.family_key_cells, targets=TARGETS)


def parser():
    return H.op_parser(__doc__, "a few ResNet-50 stages, bf16, both layouts", ("eager", "compile", "triton", "cuda"),
                       "cbam",
                       lambda p: p.add_argument("--families", default=None, help=f"comma list of {','.join(FAMILIES)}"))


def parse_args(argv=None):
    return parser().parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    families = H.csv_list(args.families, FAMILIES, "family", PROG) if args.families else list(FAMILIES)
    return H.run_benchmark(
        args, PROG, "cbam", configs=lambda: H.grid_configs(args, SHAPES, BATCHES, QUICK, PROG, smoke=SMOKE),
        baselines=["eager"], op="cbam", fields=CONFIG_FIELDS + H.MEASURE_FIELDS,
        run_config=lambda cfg, impls, modes, gbps, w: run_config(cfg, families, impls, modes, args, gbps, w),
        markdown=markdown, fused_missing=lambda: None in fused_classes().values(),
        plot=lambda rows, impls, path, meta: H.plot_speedups(
            rows, impls, path, f"CBAM on {H.gpu_tag(meta['gpu'])}", key_of=lambda r: H.family_key(r)[:-1],
            label_of=lambda k: f"{k[0]} {k[1]}×{k[2]}@{k[3]} {k[4]} {k[5]}"))


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""BAM benchmark (CUDA GPU): the fused attnkernels.BAM on each kernel backend ("triton", "cuda")
against the official BAM code (Jongchan/attention-module MODELS/bam.py, with its two broken lines
fixed: it expands Mc and Ms to full (N, C, H, W) tensors before combining), the eager reference
(attnkernels.reference.BAM: broadcasts instead) and torch.compile of the reference, at
ResNet-50+BAM's three insertion points (after stages 1-3: C = 256 at 56x56, 512 at 28x28, 1024 at
14x14; reduction 16, two dilated 3x3 convs), batch 128 and 1, forward and forward+backward, with
peak memory. All columns compute the same function from the same weights (one state_dict).
Two families:
  gate   the part the fused op replaces, on a given Ms (N, 1, H, W): the channel branch (mean,
         Linear, BatchNorm1d, ReLU, Linear), the combination, the sigmoid, the 1 + and the
         rescale. official = its ChannelGate (expand_as) * Ms.expand_as(x); eager = reference
         bam_gate; fused = the drop-in's fused call on the same modules.
  block  the whole BAM block: the spatial branch's convolutions (cuDNN) run in every column.

    python3 benchmarks/bench_bam.py --quick        # the three sites at batch 128 (+ one at 1), bf16
    python3 benchmarks/bench_bam.py                # the three sites at batch 128, bf16, both layouts
    python3 benchmarks/bench_bam.py --full         # x batches 1, 128 x fp32/bf16/fp16
    python3 benchmarks/bench_bam.py --families gate --modes fwd --impls eager,official,cuda

Method: benchmarks/harness.py. fwd: eval mode, no_grad; fwd+bwd: train mode (BatchNorm on batch
statistics), torch.autograd.grad(y, [x, (Ms,) *params], dy); batch 1 runs fwd only (BatchNorm1d's
batch statistics need >= 2 samples). Per (mode, family) the order is gate fwd, block fwd+bwd (the
targets' rows first), block fwd, gate fwd+bwd.
Bytes (the minimum; weights and the spatial branch's own traffic not counted): block fwd = read x
+ write y = 2|x|, fwd+bwd = 5|x|; gate: the same + |Ms| (fwd) / 3|Ms| (fwd+bwd: Ms read twice, dMs
written).
Ratios per row: × eager (reference), × official, × compile (the reference's torch.compile), peak ×
eager and peak × official (peak memory over theirs). The Markdown's "Targets" table reads issue
#23's GPU targets off them: gate forward >= 4x the official code and >= 1.5x torch.compile; the
block's forward+backward >= 2x eager (also shown against the official code); training peak memory
<= 0.5x the official code's.
Until attnkernels.BAM is merged or a backend has the BAM kernels, those columns are skipped with a
note.
"""
from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import torch  # noqa: E402
from torch import nn  # noqa: E402

import harness as H  # noqa: E402

PROG = "bench_bam.py"
SITES = [(256, 56), (512, 28), (1024, 14)]  # (C, H=W) after ResNet-50 stages 1, 2, 3
BATCHES = (1, 128)
QUICK = [((256, 56), 128), ((1024, 14), 128), ((512, 28), 128), ((256, 56), 1)]
SMOKE = [((32, 6), 2), ((64, 5), 3)]
FAMILIES = ("gate", "block")
# (family, mode) in run order: the targets' rows first (a run cut short keeps them)
RUN_ORDER = [("gate", "fwd"), ("block", "fwdbwd"), ("block", "fwd"), ("gate", "fwdbwd")]
BYTES_FACTOR = {"fwd": 2, "fwdbwd": 5}
CONFIG_FIELDS = ["N", "C", "H", "W", "Cr", "dtype", "layout"]
IMPLS = ("eager", "official", "compile", "triton", "cuda")


def fused():
    """(the fused drop-in class, the fused gate call (x, ms, fc0, bn, fc1, combine) -> y), or None
    while attnkernels lacks them: the one place they are picked (attnkernels.BAM and the call its
    forward makes after its spatial branch, of the BAM front end)."""
    import attnkernels as ak
    try:
        from attnkernels.bam import _fused_bam_call
    except ImportError:
        return None
    cls = getattr(ak, "BAM", None)
    return None if cls is None else (cls, _fused_bam_call)


class OfficialGate(nn.Module):
    """The official BAM's forward on a given Ms: its ChannelGate (Mc expanded to x's size) times Ms
    expanded to x's size, 1 + sigmoid, times x."""

    def __init__(self, bam):
        super().__init__()
        self.channel_att = bam.channel_att

    def forward(self, x, ms):
        return (1 + torch.sigmoid(self.channel_att(x) * ms.expand_as(x))) * x


class ReferenceGate(nn.Module):
    """reference.bam_gate on the reference's channel branch and a given Ms (broadcast)."""

    def __init__(self, bam):
        super().__init__()
        self.channel_att, self.combine = bam.channel_att, bam.combine

    def forward(self, x, ms):
        from attnkernels import reference
        return reference.bam_gate(x, self.channel_att(x), ms, self.combine)


class FusedGate(nn.Module):
    """The fused drop-in's call after its spatial branch, on its channel gate's modules and a given
    Ms."""

    def __init__(self, bam, call):
        super().__init__()
        self.channel_att, self.combine, self.call = bam.channel_att, bam.combine, call

    def forward(self, x, ms):
        g = self.channel_att.gate_c
        return self.call(x, ms, g.gate_c_fc_0, g.gate_c_bn_1, g.gate_c_fc_final, self.combine)


def run_config(cfg, families, impls, modes, args, copy_gbps, writer):
    (C, Hs), N, dt_name, lay = cfg
    dtype, fmt = H.DTYPES[dt_name], H.LAYOUTS[lay]
    Cr = C // 16
    label = f"BAM N={N} C={C} {Hs}x{Hs} Cr={Cr} {dt_name} {lay}"
    H.log(f"== {label}")
    from attnkernels import reference
    eager = H.scale_params_(reference.BAM(C), seed=C).to(H.DEV, dtype)
    official = H.official_code().bam.BAM(C).to(H.DEV, dtype)
    official.load_state_dict(eager.state_dict(), strict=True)
    fz = fused()
    fused_block = None
    if fz is not None:
        fused_block = fz[0](C).to(H.DEV, dtype)
        fused_block.load_state_dict(eager.state_dict(), strict=True)
    kernels = [k for k in H.KERNEL_IMPLS if k in impls]
    cols = {"block": H.module_impls(eager, fused_block, args, kernels)}
    cols["block"].insert(1, H.Impl("official", official))
    cols["gate"] = H.module_impls(ReferenceGate(eager), None if fz is None else FusedGate(fused_block, fz[1]),
                                  args, kernels)
    cols["gate"].insert(1, H.Impl("official", OfficialGate(official)))
    row = dict(N=N, C=C, H=Hs, W=Hs, Cr=Cr, dtype=dt_name, layout=lay)
    el = torch.empty(0, dtype=dtype).element_size()
    for fam, mode in RUN_ORDER:
        if fam not in families or mode not in modes:
            continue
        if mode == "fwdbwd" and N < 2:
            H.log(f"   {fam} fwdbwd skipped: BatchNorm1d's batch statistics need >= 2 samples")
            continue
        gate = fam == "gate"
        H.run_modules(label, row, {fam: [c for c in cols[fam] if c.name in impls]}, [mode], args, copy_gbps,
                      writer, shape=(N, C, Hs, Hs), dtype=dtype, fmt=fmt, byte_factor=BYTES_FACTOR,
                      extra_inputs=(lambda g, m: (H.randn((N, 1, Hs, Hs), dtype, g, requires_grad=m == "fwdbwd"),))
                      if gate else None,
                      extra_bytes={"fwd": N * Hs * Hs * el, "fwdbwd": 3 * N * Hs * Hs * el} if gate else None,
                      speedup_cols={"x_official": "official"}, peak_cols={"peak_x_official": "official"})


# issue #23's GPU targets
TARGETS = H.family_targets(
    "issue #23", [
        H.Target("gate fwd × official ≥ 4", "fwd", "x_official", ">=", 4.0, family="gate"),
        H.Target("gate fwd × compile ≥ 1.5", "fwd", "x_compile", ">=", 1.5, family="gate"),
        H.Target("block fwd+bwd × eager ≥ 2", "fwdbwd", "x_eager", ">=", 2.0, family="block"),
        H.Target("block fwd+bwd × official ≥ 2", "fwdbwd", "x_official", ">=", 2.0, family="block"),
        H.Target("train peak × official ≤ 0.5", "fwdbwd", "peak_x_official", "<=", 0.5, family="block")])


def markdown(rows, impls, meta):
    return H.report_markdown(
        "BAM benchmark", rows, impls, meta,
        "Bytes: fwd = read x + write y (2|x|); fwd+bwd = fwd + read dy + read x + write dx (5|x|); gate: + |Ms| "
        "(fwd), + 3|Ms| (fwd+bwd). Families: gate = the fused part on a given Ms; block = the whole BAM, its "
        "spatial branch's convolutions in every column. eager = reference, compile = its torch.compile.",
        H.FAMILY_KEY_HEAD, H.family_key, H.family_key_cells,
        extra_cols=[("× official", lambda r: H.fmt_num(r.get("x_official", H.NAN), 2)),
                    ("peak × official", lambda r: H.fmt_num(r.get("peak_x_official", H.NAN), 2))],
        targets=TARGETS)


def parser():
    return H.op_parser(__doc__, "the three sites at batch 128 and one at 1, bf16, both layouts", IMPLS, "bam",
                       lambda p: p.add_argument("--families", default=None, help=f"comma list of {','.join(FAMILIES)}"))


def parse_args(argv=None):
    return parser().parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    families = H.csv_list(args.families, FAMILIES, "family", PROG) if args.families else list(FAMILIES)
    return H.run_benchmark(
        args, PROG, "bam", configs=lambda: H.grid_configs(args, SITES, BATCHES, QUICK, PROG, smoke=SMOKE),
        baselines=["eager", "official"], op="bam",
        fields=CONFIG_FIELDS + H.MEASURE_FIELDS + ["x_official", "peak_x_official"],
        run_config=lambda cfg, impls, modes, gbps, w: run_config(cfg, families, impls, modes, args, gbps, w),
        markdown=markdown, fused_missing=lambda: fused() is None,
        plot=lambda rows, impls, path, meta: H.plot_speedups(
            rows, impls, path, f"BAM on {H.gpu_tag(meta['gpu'])}", key_of=lambda r: H.family_key(r)[:-1],
            label_of=lambda k: f"{k[0]} {k[1]}×{k[2]}@{k[3]} {k[4]} {k[5]}"))


if __name__ == "__main__":
    sys.exit(main())

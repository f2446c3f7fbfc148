#!/usr/bin/env python3
"""SE benchmark (CUDA GPU): eager torchvision SqueezeExcitation vs torch.compile of it vs the
attnkernels drop-in on each kernel backend ("triton", "cuda"), forward and forward+backward,
at the SE shapes of ResNet-50 (SE-ResNet-50), MobileNetV3-Large and EfficientNet-B0; suite
"vovnet": timm's EffectiveSEModule (ESE, the single-layer form) at VoVNet-39's stage shapes.

    python3 benchmarks/bench_se.py --quick                 # ~2 min on an H100 (compile included)
    python3 benchmarks/bench_se.py                         # "standard": every shape, batch 32, bf16
    python3 benchmarks/bench_se.py --full                  # every shape/batch/dtype/layout
    python3 benchmarks/bench_se.py --suites resnet50 --batches 32 --dtypes bf16 --layouts cl \
        --modes fwd --impls eager,cuda --name my-run

Method (timing, input rotation, peak memory, the guard: benchmarks/harness.py)
  * time: triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") in ms (do_bench
    also flushes L2 before every timed call); inputs are fresh torch.randn (never zeros), and when
    one call's tensors are smaller than 2x L2, several input sets are rotated call to call.
  * bytes (the minimum any implementation must move; weights are negligible and not counted):
      fwd      read x + write y                               = 2 * |x|
      fwd+bwd  fwd, then read dy + read x + write dx          = 5 * |x|
    GB/s = bytes / time (1 GB = 1e9 B); "% copy" = that over the device copy bandwidth measured in
    the same run (y.copy_(x) on a 1 GiB fp32 buffer, bytes = read + write).
  * fwd runs under torch.no_grad(); fwd+bwd = y = m(x); torch.autograd.grad(y, [x, *params], dy).
  * peak memory: torch.cuda.max_memory_allocated() over one call (peak reset before), minus what
    was allocated before it (the inputs).
  * correctness guard: each impl's y (and dx in fwd+bwd) against eager, with dtype tolerances;
    a mismatch prints a WARNING and is recorded in the "check" column (timing still runs).
  * torch.compile: a fresh torch.compile(torchvision module, dynamic=False) per (shape, dtype,
    layout) after torch._dynamo.reset(), warmed up before timing; a failure writes n/a.
Outputs: <out>/<name>.csv (one row per config x impl), <name>.md, <name>.png (speedup vs eager).
The CSV is appended row by row, so a run that is cut short still leaves its rows.
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import torch  # noqa: E402
from torch import nn  # noqa: E402

import harness as H  # noqa: E402
from harness import DTYPES, LAYOUTS, MODES, TOL, fmt_num, gpu_tag, log  # noqa: E402,F401

# ---------------------------------------------------------------------------------------------
# shapes: (suite, C, H(=W), Cr, act, gate, batches)
# ---------------------------------------------------------------------------------------------
ACT_MODULES = {"relu": nn.ReLU, "silu": nn.SiLU}
GATE_MODULES = {"sigmoid": nn.Sigmoid, "hardsigmoid": nn.Hardsigmoid}

SUITES = {
    # SE-ResNet-50 bottleneck outputs, reduction 16, ReLU / Sigmoid.
    "resnet50": dict(act="relu", gate="sigmoid", batches=(1, 32, 128),
                     shapes=[(256, 56, 16), (512, 28, 32), (1024, 14, 64), (2048, 7, 128)]),
    # torchvision mobilenet_v3_large SE blocks (expanded channels @ output resolution,
    # squeeze = make_divisible(C // 4, 8)), ReLU / Hardsigmoid.
    "mbv3": dict(act="relu", gate="hardsigmoid", batches=(32, 128),
                 shapes=[(72, 28, 24), (120, 28, 32), (480, 14, 120), (672, 14, 168),
                         (672, 7, 168), (960, 7, 240)]),
    # torchvision efficientnet_b0 SE blocks (expanded channels @ output resolution,
    # squeeze = max(1, block input channels // 4)), SiLU / Sigmoid.
    "effb0": dict(act="silu", gate="sigmoid", batches=(32, 128),
                  shapes=[(32, 112, 8), (96, 56, 4), (144, 56, 6), (144, 28, 6), (240, 28, 10),
                          (240, 14, 10), (480, 14, 20), (672, 14, 28), (672, 7, 28),
                          (1152, 7, 48)]),
    # timm ese_vovnet39b's ESE blocks (timm.layers.EffectiveSEModule: one C -> C conv, no
    # activation, hard_sigmoid; stage outputs @ resolution): the fused op's single-layer form,
    # eager timm module vs ak.EffectiveSEModule. Cr is C (the "reduced" width of the one layer).
    "vovnet": dict(act="identity", gate="hardsigmoid", batches=(32, 128),
                   shapes=[(256, 56, 256), (512, 28, 512), (768, 14, 768), (1024, 7, 1024)]),
}

# --quick: one or two shapes per model, bf16, both layouts, both modes (< 2 min with compile)
# The issues' target shapes first (ResNet-50 stages at batch 128 and batch 1), then one
# MobileNetV3 and one EfficientNet stage, last the VoVNet ESE stage where the single-layer form's
# weight reads matter most (NOTES.md); --quick stops starting configs at its time budget.
QUICK = [("resnet50", 128, 256, 56, 16), ("resnet50", 128, 2048, 7, 128),
         ("resnet50", 1, 256, 56, 16), ("resnet50", 128, 512, 28, 32),
         ("resnet50", 128, 1024, 14, 64), ("resnet50", 1, 2048, 7, 128),
         ("mbv3", 128, 72, 28, 24), ("effb0", 32, 96, 56, 4), ("vovnet", 128, 1024, 7, 1024)]

BYTES_FACTOR = {"fwd": 2, "fwdbwd": 5}
CSV_FIELDS = ["suite", "N", "C", "H", "W", "Cr", "act", "gate", "dtype", "layout", "mode", "impl",
              "ms", "gbps", "pct_copy", "x_eager", "x_compile", "peak_mb", "variant", "check",
              "n_sets", "bytes", "compile_s", "graph_ms", "graph_pct_copy", "note"]
PROG = "bench_se.py"


def parse_args(argv=None):
    import argparse
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    preset = p.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="small set, < 2 min on an H100")
    preset.add_argument("--full", action="store_true", help="every suite/batch/dtype/layout")
    p.add_argument("--suites", default=None, help=f"comma list of {','.join(SUITES)}")
    p.add_argument("--cuda-variants", default=None,
                   help="comma list of split,pipelined,fused,batched: also time the cuda backend with each "
                        "SE variant forced (columns cuda:<variant>; 'cuda' is the dispatcher's pick); "
                        "pipelined@L forces the lag L (a lag sweep: pipelined@1,pipelined@4,...)")
    p.add_argument("--triton-variants", default=None,
                   help="comma list of split,pipelined[@L],batched: the same for the triton backend (columns triton:<variant>)")
    H.add_common_args(p, ("eager", "compile", "triton", "cuda"), "se")
    args = p.parse_args(argv)
    if args.budget_s is None and args.quick:
        args.budget_s = 90.0  # --quick stops starting configs after 90 s
    return args


def _csv_list(s, allowed, what):
    return H.csv_list(s, allowed, what, PROG)


def build_configs(args):
    """[(suite, N, C, H, Cr, act, gate, dtype_name, layout)] in run order (shapes outermost)."""
    if args.cpu_smoke:
        dt = _csv_list(args.dtypes, DTYPES, "dtype")[0] if args.dtypes else "fp32"
        return [("resnet50", 2, 32, 5, 4, "relu", "sigmoid", dt, "nchw"),
                ("mbv3", 2, 24, 6, 8, "relu", "hardsigmoid", dt, "cl"),
                ("vovnet", 2, 16, 5, 16, "identity", "hardsigmoid", dt, "cl")]
    if args.quick:
        shapes = [q for q in QUICK]
        dtypes, layouts = ["bf16"], ["nchw", "cl"]
    else:
        suites = _csv_list(args.suites, SUITES, "suite") if args.suites else list(SUITES)
        shapes = []
        for s in suites:
            spec = SUITES[s]
            if args.batches:
                batches = H.int_list(args.batches)
            elif args.full:
                batches = list(spec["batches"])
            else:  # standard: the mid batch only
                batches = [32]
            for (C, Hs, Cr) in spec["shapes"]:
                for N in batches:
                    shapes.append((s, N, C, Hs, Cr))
        dtypes = ["fp32", "bf16", "fp16"] if args.full else ["bf16"]
        layouts = ["nchw", "cl"]
    if args.dtypes:
        dtypes = _csv_list(args.dtypes, DTYPES, "dtype")
    if args.layouts:
        layouts = _csv_list(args.layouts, LAYOUTS, "layout")
    if args.quick and args.suites:
        keep = set(_csv_list(args.suites, SUITES, "suite"))
        shapes = [s for s in shapes if s[0] in keep]
    if args.quick and args.batches:
        keep_b = set(H.int_list(args.batches))
        shapes = [s for s in shapes if s[1] in keep_b]
    seen, out = set(), []
    for (suite, N, C, Hs, Cr) in shapes:
        for dt in dtypes:
            for lay in layouts:
                key = (suite, N, C, Hs, Cr, dt, lay)
                if key in seen:
                    continue
                seen.add(key)
                spec = SUITES[suite]
                out.append((suite, N, C, Hs, Cr, spec["act"], spec["gate"], dt, lay))
    return out


# ---------------------------------------------------------------------------------------------
# one config
# ---------------------------------------------------------------------------------------------
def make_modules(C, Cr, act, gate, dtype):
    """(eager module, its fused drop-in) with the same weights: torchvision's SqueezeExcitation,
    or for act "identity" (suite vovnet) timm's EffectiveSEModule."""
    import attnkernels as ak
    if act == "identity":
        import timm.layers
        eager = timm.layers.EffectiveSEModule(C, gate_layer=GATE_MODULES[gate])
        with torch.no_grad():
            eager.fc.weight.normal_(0, 1.5 / math.sqrt(C))
            eager.fc.bias.normal_(0, 0.5)
        eager = eager.to(H.DEV, dtype)
        fused = ak.EffectiveSEModule(C, gate_layer=GATE_MODULES[gate]).to(H.DEV, dtype)
        fused.load_state_dict(eager.state_dict(), strict=True)
        return eager, fused
    import torchvision
    tv = torchvision.ops.SqueezeExcitation(C, Cr, activation=ACT_MODULES[act],
                                           scale_activation=GATE_MODULES[gate])
    with torch.no_grad():  # weights scaled so the gate is not saturated
        tv.fc1.weight.normal_(0, 1.5 / math.sqrt(C))
        tv.fc2.weight.normal_(0, 1.5 / math.sqrt(Cr))
        tv.fc1.bias.normal_(0, 0.5)
        tv.fc2.bias.normal_(0, 0.5)
    tv = tv.to(H.DEV, dtype)
    fused = ak.SqueezeExcitation(C, Cr, activation=ACT_MODULES[act],
                                 scale_activation=GATE_MODULES[gate]).to(H.DEV, dtype)
    fused.load_state_dict(tv.state_dict(), strict=True)
    return tv, fused


def _variant_forced(impl):
    """The context an impl column runs in: force_variant for "<backend>:<variant>", else nothing."""
    if ":" not in impl:
        return contextlib.nullcontext()
    from attnkernels._variant import force_variant
    variant, _, lag = impl.split(":", 1)[1].partition("@")
    return force_variant(variant, lag=int(lag or 0))


def _variant_columns(spec, backend, allowed):
    """["<backend>:<variant>[@lag]", ...] from a --<backend>-variants list."""
    out = []
    for item in (v.strip() for v in spec.split(",") if v.strip()):
        variant, at, lag = item.partition("@")
        if variant not in allowed or (at and (variant != "pipelined" or not lag.isdigit() or int(lag) < 1)):
            raise SystemExit(f"bench_se.py: unknown {backend} variant {item!r}; choose from {list(allowed)} "
                             "(pipelined@<lag>: a lag >= 1)")
        out.append(f"{backend}:{item}")
    return out


def _variant(impl="cuda"):
    """The variant the impl's backend last ran ("n/a" if it does not say)."""
    try:
        import importlib
        mod = importlib.import_module("attnkernels.triton.se" if impl.startswith("triton")
                                      else "attnkernels.cuda")
        fn = getattr(mod, "last_variant", None)
        if fn is None:
            return "n/a"
        v = fn()
        return str(v) if v is not None else "n/a"
    except Exception:
        return "n/a"


def run_config(cfg, impls, modes, args, copy_gbps, writer):
    suite, N, C, Hs, Cr, act, gate, dt_name, lay = cfg
    W = Hs
    dtype, fmt = DTYPES[dt_name], LAYOUTS[lay]
    elsize = torch.empty(0, dtype=dtype).element_size()
    xbytes = N * C * Hs * W * elsize
    label = f"{suite} N={N} C={C} {Hs}x{W} Cr={Cr} {dt_name} {lay}"
    log(f"== {label}")

    tv, fused = make_modules(C, Cr, act, gate, dtype)

    # implementations: name -> (module, params, backend or None)
    mods = {}
    compile_note = ""
    for impl in impls:
        if impl == "eager":
            mods[impl] = (tv, list(tv.parameters()), None)
        elif impl == "compile":
            try:
                torch._dynamo.reset()
                tvc = copy.deepcopy(tv)
                mods[impl] = (torch.compile(tvc, dynamic=False), list(tvc.parameters()), None)
            except Exception as e:
                compile_note = f"compile failed: {type(e).__name__}: {e}"[:200]
                log(f"WARNING {label}: {compile_note}")
        else:
            mods[impl] = (fused, list(fused.parameters()), H.kernel_backend(impl))

    for mode in modes:
        per_call = xbytes * (2 if mode == "fwd" else 4)  # tensors touched per call: x,y (+dy,dx)

        def make_set(g, mode=mode):
            x = H.randn((N, C, Hs, W), dtype, g, fmt, requires_grad=mode == "fwdbwd")
            return (x,) if mode == "fwd" else (x, H.randn((N, C, Hs, W), dtype, g, fmt))

        sets = H.make_sets(make_set, per_call, f"{label} {mode}")
        if sets is None:
            continue
        guard = H.Guard(dtype, "y" if mode == "fwd" else "dx",
                        fp32=lambda: H.fp32_reference(tv, mode, sets[0][:1], sets[0][-1]))
        rows = []
        for impl in impls:
            row = dict(suite=suite, N=N, C=C, H=Hs, W=W, Cr=Cr, act=act, gate=gate, dtype=dt_name,
                       layout=lay, mode=mode, impl=impl, gbps=H.NAN, pct_copy=H.NAN,
                       variant="n/a" if impl.startswith(("cuda", "triton")) else "-",
                       n_sets=len(sets), bytes=BYTES_FACTOR[mode] * xbytes, graph_pct_copy=H.NAN)
            rows.append(row)
            if impl not in mods:
                row.update(vars(H.Result(note=compile_note or "unavailable")))
                continue
            m, params, be = mods[impl]
            if mode == "fwd":
                body = lambda s, m=m: H.call_fwd(m, s[0])  # noqa: E731
            else:
                body = lambda s, m=m, p=params: H.call_fwdbwd(m, (s[0],), s[1], [s[0]] + p)  # noqa: E731
            r = H.measure(body, sets, args, label=f"{label} {mode} {impl}", compiled=impl == "compile",
                          graph=mode == "fwd" and impl != "compile",
                          guard=guard.baseline if impl == "eager" else guard,
                          backend=be, context=_variant_forced(impl))
            row.update(ms=r.ms, peak_mb=r.peak_mb, compile_s=r.compile_s, graph_ms=r.graph_ms,
                       check=r.check, note=r.note)
            if impl.startswith(("cuda", "triton")) and r.ms == r.ms:
                row["variant"] = _variant(impl)
            row["gbps"], row["pct_copy"] = H.rates(row["bytes"], r.ms, copy_gbps)
            row["graph_pct_copy"] = H.rates(row["bytes"], r.graph_ms, copy_gbps)[1]
        del sets
        H.speedups(rows)
        for row in rows:
            writer(row)
            log(f"   {mode:7s} {row['impl']:8s} {fmt_num(row['ms'], 4):>9s} ms  "
                f"{fmt_num(row['gbps'], 0):>6s} GB/s  {fmt_num(row['pct_copy'], 0):>4s}% copy  "
                f"x{fmt_num(row['x_eager'], 2)} vs eager  peak {fmt_num(row['peak_mb'], 1)} MB  "
                f"{row['variant'] if row['impl'].startswith(('cuda', 'triton')) else ''} {row['check']} {row['note']}")
    del mods, tv, fused
    H.empty_cache()


# ---------------------------------------------------------------------------------------------
# reports
# ---------------------------------------------------------------------------------------------
def _key(r):
    return (r["suite"], r["N"], r["C"], r["H"], r["Cr"], r["dtype"], r["layout"], r["mode"])


def markdown(rows, impls, meta):
    """Summary (one line per config x mode) and the detail table (one line per impl)."""
    out = H.md_header("SE benchmark", meta,
                      "Bytes: fwd = read x + write y (2|x|); fwd+bwd = fwd + read dy + read x + write dx (5|x|).")

    def key_cells(k):
        suite, N, C, Hs, Cr, dt, lay, mode = k
        return [suite, f"{N}×{C}×{Hs}×{Hs} ({Cr})", dt, lay, mode]

    def extra(k, by):
        rc = by.get((k, "cuda"))
        gcells = [fmt_num(by[(k, i)]["graph_ms"], 4) if (k, i) in by else "n/a"
                  for i in ("eager", "triton", "cuda")]
        gpct = fmt_num(rc["graph_pct_copy"], 0) if rc else "n/a"
        return [rc["variant"] if rc else "-", " / ".join(gcells) + f" ({gpct})" if k[-1] == "fwd" else "-"]

    head = (["model", "N×C×H×W (Cr)", "dtype", "layout", "mode"] + [f"{i} ms" for i in impls]
            + H.SUMMARY_TAIL + ["cuda variant", "graph ms: eager / triton / cuda (cuda % copy)"])
    out += H.md_table(head, H.summary_rows(rows, impls, _key, key_cells, extra=extra))
    out += ["", "### Detail", ""]
    head = ["model", "N×C×H×W (Cr)", "dtype", "layout", "mode", "impl", "ms", "GB/s", "% copy",
            "× eager", "× compile", "peak MB", "variant", "check", "graph ms", "graph % copy", "note"]
    out += H.md_table(head, [[
        r["suite"], f"{r['N']}×{r['C']}×{r['H']}×{r['W']} ({r['Cr']})", r["dtype"], r["layout"],
        r["mode"], r["impl"], fmt_num(r["ms"], 4), fmt_num(r["gbps"], 0),
        fmt_num(r["pct_copy"], 0), fmt_num(r["x_eager"], 2), fmt_num(r["x_compile"], 2),
        fmt_num(r["peak_mb"], 1), str(r["variant"]), str(r["check"]),
        fmt_num(r.get("graph_ms", H.NAN), 4), fmt_num(r.get("graph_pct_copy", H.NAN), 0),
        str(r["note"])] for r in rows])
    out += ["", H.mismatch_line(rows),
            "graph ms: the forward replayed from a CUDA graph holding one call per rotating input "
            "set (device time without per-call host overhead); n/a where capture failed."]
    return "\n".join(out) + "\n"


def plot(rows, impls, path, title):
    return H.plot_speedups(rows, impls, path, title, key_of=lambda r: _key(r)[:-1],
                           label_of=lambda k: f"{k[0]} {k[1]}×{k[2]}@{k[3]} {k[5]} {k[6]}")


def main(argv=None):
    args = parse_args(argv)

    def variant_columns(impls):
        cols = []
        if args.triton_variants and H.kernel_unavailable("triton") is None:
            cols += _variant_columns(args.triton_variants, "triton", ("split", "pipelined", "batched"))
        if args.cuda_variants and H.kernel_unavailable("cuda") is None:
            cols += _variant_columns(args.cuda_variants, "cuda", ("split", "pipelined", "fused", "batched"))
        return cols

    return H.run_benchmark(
        args, PROG, "se", configs=lambda: build_configs(args), baselines=["eager"], op=None, fields=CSV_FIELDS,
        run_config=lambda cfg, impls, modes, gbps, w: run_config(cfg, impls, modes, args, gbps, w),
        markdown=markdown, more_impls=variant_columns,
        plot=lambda rows, impls, path, meta: plot(rows, impls, path, f"SE on {gpu_tag(meta['gpu'])}"))


if __name__ == "__main__":
    sys.exit(main())

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

Method
  * time: triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") in ms (do_bench
    also flushes L2 before every timed call); inputs are fresh torch.randn (never zeros), and when
    one call's tensors are smaller than 2x L2, several input sets are rotated call to call.
  * bytes (the minimum any implementation must move; weights are negligible and not counted):
      fwd      read x + write y                               = 2 * |x|
      fwd+bwd  fwd, then read dy + read x + write dx          = 5 * |x|
    GB/s = bytes / time (1 GB = 1e9 B); "% copy" = that over the device copy bandwidth measured in
    the same run (y.copy_(x) on a 1 GiB fp32 buffer, bytes = read + write).
  * fwd runs under torch.no_grad(); fwd+bwd = y = m(x); torch.autograd.grad(y, [x, *params], dy).
  * peak memory: torch.cuda.max_memory_allocated() delta over one call (inputs already allocated).
  * correctness guard: each impl's y (and dx in fwd+bwd) against eager, with dtype tolerances;
    a mismatch prints a WARNING and is recorded in the "check" column (timing still runs).
  * torch.compile: a fresh torch.compile(torchvision module, dynamic=False) per (shape, dtype,
    layout) after torch._dynamo.reset(), warmed up before timing; a failure writes n/a.
Outputs: <out>/<name>.csv (one row per config x impl), <name>.md, <name>.png (speedup vs eager).
The CSV is appended row by row, so a run that is cut short still leaves its rows.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import datetime as _dt
import math
import os
import re
import sys
import time
import traceback

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import torch  # noqa: E402
from torch import nn  # noqa: E402

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

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LAYOUTS = {"nchw": torch.contiguous_format, "cl": torch.channels_last}
MODES = ("fwd", "fwdbwd")
BYTES_FACTOR = {"fwd": 2, "fwdbwd": 5}
# assert_close tolerances vs eager (eager itself rounds the gate to the dtype before the multiply)
TOL = {torch.float32: dict(rtol=2e-3, atol=2e-3), torch.float16: dict(rtol=1e-2, atol=1e-2),
       torch.bfloat16: dict(rtol=4e-2, atol=4e-2)}
CSV_FIELDS = ["suite", "N", "C", "H", "W", "Cr", "act", "gate", "dtype", "layout", "mode", "impl",
              "ms", "gbps", "pct_copy", "x_eager", "x_compile", "peak_mb", "variant", "check",
              "n_sets", "bytes", "compile_s", "graph_ms", "graph_pct_copy", "note"]


def log(*a):
    print(*a, flush=True)


# The device everything runs on. "cpu" only with --cpu-smoke (a tiny run that exercises this
# script's code paths on a machine without a GPU: Triton interpreter, cuda-emu; timings are
# meaningless there).
DEV = "cuda"


def _sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def _oom_types():
    return (torch.cuda.OutOfMemoryError,) if hasattr(torch.cuda, "OutOfMemoryError") else (MemoryError,)


def _empty_cache():
    if DEV == "cuda":
        torch.cuda.empty_cache()


def gpu_tag(name: str | None = None) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100'; 'NVIDIA A100-SXM4-80GB' -> 'a100'."""
    if name is None:
        name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    words = [w for w in re.split(r"\s+", name.lower()) if w not in ("nvidia", "geforce", "tesla", "")]
    if len(words) > 1 and words[0] in ("rtx", "gtx", "quadro", "titan"):
        tag = f"{words[0]}-{words[1]}"
    else:
        tag = (words[0] if words else "gpu").split("-")[0]
    return re.sub(r"[^a-z0-9_.]+", "-", tag).strip("-") or "gpu"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    preset = p.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="small set, < 2 min on an H100")
    preset.add_argument("--full", action="store_true", help="every suite/batch/dtype/layout")
    p.add_argument("--suites", default=None, help=f"comma list of {','.join(SUITES)}")
    p.add_argument("--batches", default=None, help="comma list; default: each suite's batches")
    p.add_argument("--dtypes", default=None, help="comma list of fp32,bf16,fp16")
    p.add_argument("--layouts", default=None, help="comma list of nchw,cl")
    p.add_argument("--modes", default=None, help="comma list of fwd,fwdbwd")
    p.add_argument("--impls", default=None,
                   help="comma list of eager,compile,triton,cuda (default: all available)")
    p.add_argument("--cuda-variants", default=None,
                   help="comma list of split,pipelined,fused,batched: also time the cuda backend with each "
                        "SE variant forced (columns cuda:<variant>; 'cuda' is the dispatcher's pick); "
                        "pipelined@L forces the lag L (a lag sweep: pipelined@1,pipelined@4,...)")
    p.add_argument("--triton-variants", default=None,
                   help="comma list of split,pipelined[@L],batched: the same for the triton backend (columns triton:<variant>)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--no-graphs", action="store_true",
                   help="skip the CUDA-graph replay timing of the forward (device time without host overhead)")
    p.add_argument("--warmup", type=int, default=25, help="do_bench warmup (ms)")
    p.add_argument("--rep", type=int, default=100, help="do_bench rep (ms)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="start no new config after this many seconds (default: 90 with --quick)")
    p.add_argument("--out", "--out-dir", dest="out", default=os.path.join(_ROOT, "benchmarks", "results"),
                   help="output directory (default benchmarks/results)")
    p.add_argument("--name", default=None, help="file name stem (default se-<gpu>-<date>)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--print-gpu-tag", action="store_true", help="print e.g. 'h100' and exit")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="no GPU: run two tiny configs on the CPU (Triton interpreter, cuda-emu) to "
                        "exercise this script; timings are meaningless")
    return p.parse_args(argv)


def _csv_list(s, allowed, what):
    items = [v.strip() for v in s.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad:
        raise SystemExit(f"bench_se.py: unknown {what} {bad}; choose from {list(allowed)}")
    return items


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
                batches = [int(b) for b in args.batches.split(",") if b.strip()]
            elif args.full:
                batches = list(spec["batches"])
            else:  # standard: the mid batch only
                batches = [32]
            for (C, H, Cr) in spec["shapes"]:
                for N in batches:
                    shapes.append((s, N, C, H, Cr))
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
        keep_b = {int(b) for b in args.batches.split(",") if b.strip()}
        shapes = [s for s in shapes if s[1] in keep_b]
    seen, out = set(), []
    for (suite, N, C, H, Cr) in shapes:
        for dt in dtypes:
            for lay in layouts:
                key = (suite, N, C, H, Cr, dt, lay)
                if key in seen:
                    continue
                seen.add(key)
                spec = SUITES[suite]
                out.append((suite, N, C, H, Cr, spec["act"], spec["gate"], dt, lay))
    return out


# ---------------------------------------------------------------------------------------------
# timing helpers
# ---------------------------------------------------------------------------------------------
def _do_bench(fn, warmup, rep):
    """Median ms. triton.testing.do_bench (3.6 and 3.8 both take return_mode); falls back to
    quantiles, then to a plain CUDA-event loop if triton is unusable."""
    if DEV != "cuda":  # --cpu-smoke: wall clock, a few calls
        fn()
        t0 = time.perf_counter()
        for _ in range(3):
            fn()
        return (time.perf_counter() - t0) / 3 * 1e3
    try:
        import triton.testing as tt
        try:
            return float(tt.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))
        except TypeError:
            return float(tt.do_bench(fn, warmup=warmup, rep=rep, quantiles=[0.5]))
    except ImportError:
        pass
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(50):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def graph_ms(body, sets, warmup, rep):
    """Median ms per call of `body` over the rotating input sets, replayed from one CUDA graph
    that holds a call per set: the device time with the per-call host overhead removed
    (METHOD: many small launches -> time graph replays). None if capture fails."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up on the capture stream (per-stream workspaces)
            for st in sets[:2]:
                body(st)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=side):  # the stream the warm-up primed
            for st in sets:
                body(st)
        g.replay()
        torch.cuda.synchronize()
        return _do_bench(g.replay, warmup, rep) / len(sets)
    except Exception as e:  # capture unsupported by an impl: report n/a, keep going
        log(f"   (graph capture failed: {type(e).__name__}: {str(e)[:120]})")
        return None


def copy_bandwidth(warmup, rep):
    """Device copy bandwidth in GB/s: y.copy_(x) on 1 GiB fp32 (bytes = read + write)."""
    n = (1 << 30) // 4 if DEV == "cuda" else (1 << 24)
    x = torch.randn(n, device=DEV)
    y = torch.empty_like(x)
    ms = _do_bench(lambda: y.copy_(x), warmup, rep)
    del x, y
    _empty_cache()
    return 2 * n * 4 / (ms * 1e-3) / 1e9, ms


def l2_bytes():
    if DEV != "cuda":
        return 1 << 20
    try:
        v = int(getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0))
        return v if v > 0 else 50 * 2**20
    except Exception:
        return 50 * 2**20


class Rotor:
    """Cycles through input sets, one per call."""

    def __init__(self, sets):
        self.sets, self.i = sets, 0

    def next(self):
        s = self.sets[self.i]
        self.i = (self.i + 1) % len(self.sets)
        return s


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
        eager = eager.to(DEV, dtype)
        fused = ak.EffectiveSEModule(C, gate_layer=GATE_MODULES[gate]).to(DEV, dtype)
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
    tv = tv.to(DEV, dtype)
    fused = ak.SqueezeExcitation(C, Cr, activation=ACT_MODULES[act],
                                 scale_activation=GATE_MODULES[gate]).to(DEV, dtype)
    fused.load_state_dict(tv.state_dict(), strict=True)
    return tv, fused


def _backend_of(impl):
    """attnkernels backend name of a kernel impl column ("cuda" is "cuda-emu" on the CPU;
    "cuda:<variant>" is the cuda backend with that SE forward variant forced)."""
    impl = impl.split(":")[0]
    return "cuda-emu" if (impl == "cuda" and DEV != "cuda") else impl


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


def _call_fwd(m, x):
    with torch.no_grad():
        return m(x)


def _call_fwdbwd(m, x, dy, params):
    y = m(x)
    return torch.autograd.grad(y, [x] + params, dy)


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


def _check(got, want, want32, dtype, what):
    """ok if got is within the tolerance of eager, or (low precision) if its error against the
    fp32 computation is at most 2x eager's own error there (the test suite's rule)."""
    try:
        torch.testing.assert_close(got.float(), want.float(), **TOL[dtype])
        return "ok"
    except AssertionError:
        err = (got.float() - want.float()).abs().max().item()
        if want32 is not None:
            err32 = (got.float() - want32).abs().max().item()
            ref_err32 = (want.float() - want32).abs().max().item()
            if err32 <= 2.0 * ref_err32 + 1e-3 * (1.0 + want32.abs().max().item()):
                return "ok"
            return f"MISMATCH {what} max|diff| {err:.3g} vs eager, {err32:.3g} vs fp32 (eager: {ref_err32:.3g})"
        return f"MISMATCH {what} max|diff|={err:.3g}"


def _fp32_reference(tv, mode, s):
    """y (fwd) or dx (fwdbwd) of the torchvision module in fp32 on the upcast inputs."""
    tv32 = copy.deepcopy(tv).float()
    x32 = s[0].detach().float().requires_grad_(mode != "fwd")
    with torch.no_grad() if mode == "fwd" else contextlib.nullcontext():
        y32 = tv32(x32)
    if mode == "fwd":
        return y32
    return torch.autograd.grad(y32, x32, s[1].float())[0]


def run_config(cfg, impls, modes, args, copy_gbps, writer):
    suite, N, C, H, Cr, act, gate, dt_name, lay = cfg
    W = H
    dtype, fmt = DTYPES[dt_name], LAYOUTS[lay]
    import attnkernels as ak
    elsize = torch.empty(0, dtype=dtype).element_size()
    xbytes = N * C * H * W * elsize
    label = f"{suite} N={N} C={C} {H}x{W} Cr={Cr} {dt_name} {lay}"
    log(f"== {label}")

    tv, fused = make_modules(C, Cr, act, gate, dtype)
    params_tv = list(tv.parameters())
    params_fused = list(fused.parameters())

    # implementations: name -> (module, params, backend or None)
    mods = {}
    compile_note = ""
    for impl in impls:
        if impl == "eager":
            mods[impl] = (tv, params_tv, None)
        elif impl == "compile":
            try:
                torch._dynamo.reset()
                tvc = copy.deepcopy(tv)
                mods[impl] = (torch.compile(tvc, dynamic=False), list(tvc.parameters()), None)
            except Exception as e:
                compile_note = f"compile failed: {type(e).__name__}: {e}"[:200]
                log(f"WARNING {label}: {compile_note}")
        else:
            mods[impl] = (fused, params_fused, _backend_of(impl))

    results = {}
    for mode in modes:
        per_call = xbytes * (2 if mode == "fwd" else 4)  # tensors touched per call: x,y (+dy,dx)
        n_sets = max(1, min(256, math.ceil(2 * l2_bytes() / max(per_call, 1))))
        g = torch.Generator(device=DEV).manual_seed(1234)
        sets = []
        try:
            for _ in range(n_sets):
                x = torch.randn((N, C, H, W), device=DEV, dtype=dtype, generator=g)
                x = x.contiguous(memory_format=fmt)
                if mode == "fwdbwd":
                    x.requires_grad_(True)
                    dy = torch.randn((N, C, H, W), device=DEV, dtype=dtype, generator=g)
                    sets.append((x, dy.contiguous(memory_format=fmt)))
                else:
                    sets.append((x,))
        except _oom_types():
            log(f"WARNING {label} {mode}: out of memory making inputs; skipped")
            _empty_cache()
            continue

        ref_out, ref32 = None, None
        for impl in impls:
            row = dict(suite=suite, N=N, C=C, H=H, W=W, Cr=Cr, act=act, gate=gate, dtype=dt_name,
                       layout=lay, mode=mode, impl=impl, ms=float("nan"), gbps=float("nan"),
                       pct_copy=float("nan"), x_eager=float("nan"), x_compile=float("nan"),
                       peak_mb=float("nan"), variant="-", check="-", n_sets=n_sets,
                       bytes=BYTES_FACTOR[mode] * xbytes, compile_s=float("nan"),
                       graph_ms=float("nan"), graph_pct_copy=float("nan"), note="")
            if impl.startswith(("cuda", "triton")):
                row["variant"] = "n/a"
            if impl not in mods:
                row["note"] = compile_note or "unavailable"
                results[(mode, impl)] = row
                continue
            m, params, be = mods[impl]
            prev_be = ak.set_backend(be) if be is not None else None
            forced = _variant_forced(impl)
            forced.__enter__()
            try:
                if mode == "fwd":
                    body = lambda s, m=m: _call_fwd(m, s[0])  # noqa: E731
                else:
                    body = lambda s, m=m, p=params: _call_fwdbwd(m, s[0], s[1], p)  # noqa: E731
                # warm-up / compile, and the output for the correctness guard (set 0)
                t0 = time.perf_counter()
                out = body(sets[0])
                if impl == "compile":
                    for _ in range(2):
                        out = body(sets[0])
                _sync()
                if impl == "compile":
                    row["compile_s"] = time.perf_counter() - t0
                first = out if mode == "fwd" else out[0]
                if impl.startswith(("cuda", "triton")):
                    row["variant"] = _variant(impl)
                if impl == "eager":
                    ref_out = first.detach()
                    ref32 = _fp32_reference(tv, mode, sets[0]) if dtype != torch.float32 else None
                    row["check"] = "ref"
                elif ref_out is not None:
                    row["check"] = _check(first, ref_out, ref32, dtype, "y" if mode == "fwd" else "dx")
                    if row["check"] != "ok":
                        log(f"WARNING {label} {mode} {impl}: {row['check']}")
                del out, first
                # peak memory of one call
                if DEV == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                    out = body(sets[0])
                    torch.cuda.synchronize()
                    row["peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
                    del out
                rot = Rotor(sets)
                ms = _do_bench(lambda: body(rot.next()), args.warmup, args.rep)
                row["ms"] = ms
                row["gbps"] = row["bytes"] / (ms * 1e-3) / 1e9
                row["pct_copy"] = 100.0 * row["gbps"] / copy_gbps if copy_gbps else float("nan")
                if mode == "fwd" and impl != "compile" and DEV == "cuda" and not args.no_graphs:
                    gms = graph_ms(body, sets, args.warmup, args.rep)
                    if gms:
                        row["graph_ms"] = gms
                        gb = row["bytes"] / (gms * 1e-3) / 1e9
                        row["graph_pct_copy"] = 100.0 * gb / copy_gbps if copy_gbps else float("nan")
            except _oom_types() as e:
                row["note"] = "OOM"
                log(f"WARNING {label} {mode} {impl}: out of memory ({str(e)[:120]})")
                _empty_cache()
            except Exception as e:
                row["note"] = f"{type(e).__name__}: {e}"[:200].replace("\n", " ")
                log(f"WARNING {label} {mode} {impl}: failed: {row['note']}")
                if os.environ.get("BENCH_SE_TRACEBACK"):
                    traceback.print_exc()
            finally:
                forced.__exit__(None, None, None)
                if prev_be is not None:
                    ak.set_backend(prev_be)
            results[(mode, impl)] = row
        del sets
        # speedups, then write the rows of this mode
        t_e = results.get((mode, "eager"), {}).get("ms", float("nan"))
        t_c = results.get((mode, "compile"), {}).get("ms", float("nan"))
        for impl in impls:
            row = results[(mode, impl)]
            row["x_eager"] = t_e / row["ms"] if row["ms"] == row["ms"] else float("nan")
            row["x_compile"] = t_c / row["ms"] if row["ms"] == row["ms"] else float("nan")
            writer(row)
            log(f"   {mode:7s} {impl:8s} {fmt_num(row['ms'], 4):>9s} ms  "
                f"{fmt_num(row['gbps'], 0):>6s} GB/s  {fmt_num(row['pct_copy'], 0):>4s}% copy  "
                f"x{fmt_num(row['x_eager'], 2)} vs eager  peak {fmt_num(row['peak_mb'], 1)} MB  "
                f"{row['variant'] if impl.startswith(('cuda', 'triton')) else ''} {row['check']} {row['note']}")
    del mods, tv, fused
    _empty_cache()
    return results


# ---------------------------------------------------------------------------------------------
# reports
# ---------------------------------------------------------------------------------------------
def fmt_num(v, nd=3):
    try:
        v = float(v)
    except (TypeError, ValueError):
        return "n/a"
    if v != v or v in (float("inf"), float("-inf")):
        return "n/a"
    return f"{v:.{nd}f}"


def markdown(rows, impls, meta):
    """Summary (one line per config x mode) and the detail table (one line per impl)."""
    out = [f"## SE benchmark: {meta['gpu']}", "",
           f"torch {meta['torch']}, triton {meta['triton']}, {meta['date']}; "
           f"copy bandwidth {fmt_num(meta['copy_gbps'], 0)} GB/s; L2 {meta['l2_mb']:.0f} MB; "
           f"do_bench(warmup={meta['warmup']}, rep={meta['rep']}, median).",
           "Bytes: fwd = read x + write y (2|x|); fwd+bwd = fwd + read dy + read x + write dx (5|x|).",
           ""]
    if meta.get("truncated"):
        out += [f"**Truncated**: {meta['truncated']}", ""]
    kernel_impls = [i for i in impls if i not in ("eager", "compile")]
    configs = []
    for r in rows:
        key = (r["suite"], r["N"], r["C"], r["H"], r["Cr"], r["dtype"], r["layout"], r["mode"])
        if key not in configs:
            configs.append(key)
    by = {}
    for r in rows:
        by[(r["suite"], r["N"], r["C"], r["H"], r["Cr"], r["dtype"], r["layout"], r["mode"], r["impl"])] = r
    head = (["model", "N×C×H×W (Cr)", "dtype", "layout", "mode"] + [f"{i} ms" for i in impls]
            + ["best", "× eager", "× compile", "% copy BW", "cuda variant",
               "graph ms: eager / triton / cuda (cuda % copy)"])
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in configs:
        suite, N, C, H, Cr, dt, lay, mode = key
        cells = [suite, f"{N}×{C}×{H}×{H} ({Cr})", dt, lay, mode]
        for i in impls:
            r = by.get(key + (i,))
            cells.append(fmt_num(r["ms"], 4) if r else "n/a")
        best = None
        for i in kernel_impls:
            r = by.get(key + (i,))
            if r and r["ms"] == r["ms"] and (best is None or r["ms"] < best["ms"]):
                best = r
        if best is None:
            cells += ["n/a"] * 4
        else:
            cells += [best["impl"], fmt_num(best["x_eager"], 2), fmt_num(best["x_compile"], 2),
                      fmt_num(best["pct_copy"], 0)]
        rc = by.get(key + ("cuda",))
        cells.append(rc["variant"] if rc else "-")
        gcells = [fmt_num(by[key + (i,)]["graph_ms"], 4) if key + (i,) in by else "n/a"
                  for i in ("eager", "triton", "cuda")]
        gpct = fmt_num(rc["graph_pct_copy"], 0) if rc else "n/a"
        cells.append(" / ".join(gcells) + f" ({gpct})" if mode == "fwd" else "-")
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "### Detail", ""]
    head = ["model", "N×C×H×W (Cr)", "dtype", "layout", "mode", "impl", "ms", "GB/s", "% copy",
            "× eager", "× compile", "peak MB", "variant", "check", "graph ms", "graph % copy", "note"]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        out.append("| " + " | ".join([
            r["suite"], f"{r['N']}×{r['C']}×{r['H']}×{r['W']} ({r['Cr']})", r["dtype"], r["layout"],
            r["mode"], r["impl"], fmt_num(r["ms"], 4), fmt_num(r["gbps"], 0),
            fmt_num(r["pct_copy"], 0), fmt_num(r["x_eager"], 2), fmt_num(r["x_compile"], 2),
            fmt_num(r["peak_mb"], 1), str(r["variant"]), str(r["check"]),
            fmt_num(r.get("graph_ms", float("nan")), 4), fmt_num(r.get("graph_pct_copy", float("nan")), 0),
            str(r["note"]).replace("|", "/")]) + " |")
    mism = [r for r in rows if str(r["check"]).startswith("MISMATCH")]
    out += ["", f"Correctness guard: {len(mism)} mismatch(es) against eager.",
            "graph ms: the forward replayed from a CUDA graph holding one call per rotating input "
            "set (device time without per-call host overhead); n/a where capture failed."]
    return "\n".join(out) + "\n"


def plot(rows, impls, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    others = [i for i in impls if i != "eager"]
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    if not modes or not others:
        return False
    n_cfg = max(sum(1 for r in rows if r["mode"] == m and r["impl"] == impls[0]) for m in modes)
    fig, axes = plt.subplots(len(modes), 1, figsize=(max(8, 0.45 * n_cfg + 2), 4.5 * len(modes)),
                             squeeze=False)
    for ax, mode in zip(axes[:, 0], modes):
        labels, series = [], {i: [] for i in others}
        keys = []
        for r in rows:
            k = (r["suite"], r["N"], r["C"], r["H"], r["Cr"], r["dtype"], r["layout"])
            if r["mode"] == mode and k not in keys:
                keys.append(k)
        idx = {(r["suite"], r["N"], r["C"], r["H"], r["Cr"], r["dtype"], r["layout"], r["impl"]): r
               for r in rows if r["mode"] == mode}
        for k in keys:
            labels.append(f"{k[0]} {k[1]}×{k[2]}@{k[3]} {k[5]} {k[6]}")
            for i in others:
                r = idx.get(k + (i,))
                v = r["x_eager"] if r else float("nan")
                series[i].append(v if v == v else 0.0)
        width = 0.8 / len(others)
        for j, i in enumerate(others):
            xs = [p + (j - (len(others) - 1) / 2) * width for p in range(len(keys))]
            ax.bar(xs, series[i], width, label=i)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("speedup vs eager (×)")
        ax.set_title(f"{title}: {mode}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None):
    args = parse_args(argv)
    if args.print_gpu_tag:
        print(gpu_tag())
        return 0
    global DEV
    if args.cpu_smoke:
        DEV = "cpu"
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before attnkernels.triton is imported
    elif not torch.cuda.is_available():
        print("bench_se.py: no CUDA GPU found (torch.cuda.is_available() is False); this benchmark "
              "needs one. On a CPU-only machine run `make bench` for the CPU demo.", file=sys.stderr)
        return 2
    configs = build_configs(args)
    if not configs:
        print("bench_se.py: the selection is empty", file=sys.stderr)
        return 2
    budget = args.budget_s if args.budget_s is not None else (90.0 if args.quick else None)

    import attnkernels as ak
    try:
        import triton
        triton_version = triton.__version__
    except Exception:
        triton_version = "n/a"
    avail = [b for b in ak.available_backends(DEV) if b != "reference"]
    impls = (["eager"] + ([] if args.no_compile else ["compile"])
             + [b for b in ("triton", "cuda") if _backend_of(b) in avail])
    if args.impls:
        want = _csv_list(args.impls, ("eager", "compile", "triton", "cuda"), "impl")
        missing = [i for i in want if i not in impls]
        if missing:
            log(f"bench_se.py: not available here (skipped): {missing}")
        impls = [i for i in impls if i in want]
        if "eager" not in impls:  # eager is the baseline of the check and the speedups
            impls = ["eager"] + impls
    if args.triton_variants and "triton" in avail:
        impls += _variant_columns(args.triton_variants, "triton", ("split", "pipelined", "batched"))
    if args.cuda_variants and _backend_of("cuda") in avail:
        impls += _variant_columns(args.cuda_variants, "cuda", ("split", "pipelined", "fused", "batched"))
    modes = _csv_list(args.modes, MODES, "mode") if args.modes else list(MODES)

    gpu = torch.cuda.get_device_name(0) if DEV == "cuda" else "cpu (smoke test)"
    date = _dt.date.today().isoformat()
    name = args.name or (f"se-{gpu_tag(gpu)}-{date}" if DEV == "cuda" else f"se-cpu-smoke-{date}")
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, name)
    log(f"bench_se: {gpu}; torch {torch.__version__}; triton {triton_version}; impls {impls}; "
        f"modes {modes}; {len(configs)} configs; out {stem}.{{csv,md,png}}")
    if _backend_of("cuda") not in avail:
        try:
            from attnkernels.backend import _runs_on
            log(f"bench_se: 'cuda' backend unavailable: "
                f"{_runs_on(_backend_of('cuda'), torch.device(DEV))}")
        except Exception:
            pass

    torch.manual_seed(0)
    copy_gbps, copy_ms = copy_bandwidth(args.warmup, args.rep)
    log(f"copy bandwidth: {copy_gbps:.0f} GB/s (1 GiB fp32 y.copy_(x): {copy_ms:.3f} ms)")
    meta = dict(gpu=gpu, torch=torch.__version__, triton=triton_version, date=date,
                copy_gbps=copy_gbps, l2_mb=l2_bytes() / 2**20, warmup=args.warmup, rep=args.rep,
                truncated="")

    rows = []
    t_start = time.perf_counter()
    with open(stem + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        f.flush()

        def writer(row):
            rows.append(row)
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
            f.flush()

        for n, cfg in enumerate(configs):
            if budget is not None and time.perf_counter() - t_start > budget:
                meta["truncated"] = (f"time budget {budget:.0f} s reached after {n} of "
                                     f"{len(configs)} configs")
                log(f"bench_se: {meta['truncated']}; stopping")
                break
            try:
                run_config(cfg, impls, modes, args, copy_gbps, writer)
            except Exception as e:  # never lose the rows already measured
                log(f"WARNING config {cfg} failed: {type(e).__name__}: {e}")
                traceback.print_exc()
                _empty_cache()
    log(f"bench_se: {len(rows)} rows in {time.perf_counter() - t_start:.0f} s")

    md = markdown(rows, impls, meta)
    with open(stem + ".md", "w") as f:
        f.write(md)
    if not args.no_plot:
        try:
            if plot(rows, impls, stem + ".png", f"SE on {gpu_tag(gpu)}"):
                log(f"wrote {stem}.png")
        except Exception as e:
            log(f"WARNING: plot failed: {type(e).__name__}: {e}")
    log(f"wrote {stem}.csv and {stem}.md")
    print(md, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

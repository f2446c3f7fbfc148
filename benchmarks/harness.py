"""What every attnkernels benchmark shares (bench_se.py, bench_cbam.py, bench_bam.py, bench_sca.py,
sca_decoder.py): the device switch (CUDA, or the CPU for --cpu-smoke), timing, the rotation of
fresh inputs past L2, peak memory, the correctness guard, the common arguments, and the
CSV / Markdown / plot writers. The op-specific parts (suites, modules, configs) stay in each script.

Method (each script's docstring names its byte model)
  * time: triton.testing.do_bench(fn, warmup, rep, return_mode="median") in ms (do_bench flushes
    L2 before every timed call); inputs are fresh torch.randn (never zeros), and when one call's
    tensors are smaller than 2x L2, several input sets are rotated call to call (Rotor).
  * GB/s = bytes / time (1 GB = 1e9 B); "% copy" = that over the device copy bandwidth measured in
    the same run (y.copy_(x) on a 1 GiB fp32 buffer, bytes = read + write).
  * peak memory: torch.cuda.max_memory_allocated() over one call, reset before, minus what was
    allocated before the call (the inputs): the call's own temporaries and outputs.
  * graph ms: the calls replayed from one CUDA graph holding a call per input set (device time
    without the per-call host overhead); None where capture fails.
  * correctness guard: each impl's output against the baseline's (check()), with dtype tolerances
    or, in low precision, against the fp32 computation (the test suite's 2x rule).
On the CPU (--cpu-smoke) the timings are wall clock over a few calls and mean nothing: the mode
exercises the scripts' code paths (Triton interpreter, cuda-emu, reference) without a GPU.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import datetime as _dt
import importlib
import math
import os
import re
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Optional

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LAYOUTS = {"nchw": torch.contiguous_format, "cl": torch.channels_last}
MODES = ("fwd", "fwdbwd")
# assert_close tolerances vs eager (eager itself rounds to the dtype between its ops)
TOL = {torch.float32: dict(rtol=2e-3, atol=2e-3), torch.float16: dict(rtol=1e-2, atol=1e-2),
       torch.bfloat16: dict(rtol=4e-2, atol=4e-2)}
KERNEL_IMPLS = ("triton", "cuda")
NAN = float("nan")
# the measurement columns of a module benchmark's rows (run_modules), after its config columns
MEASURE_FIELDS = ["family", "mode", "impl", "ms", "gbps", "pct_copy", "x_eager", "x_compile", "peak_mb",
                  "peak_x_eager", "check",
                  "n_sets", "bytes", "compile_s", "graph_ms", "graph_pct_copy", "note"]

# The device everything runs on: "cuda", or "cpu" with --cpu-smoke (set_device / setup_device).
DEV = "cuda"
# The index of the config run_configs is running (--compile-configs counts configs with it).
CONFIG_INDEX = 0
# The output stem of each run_benchmark in this process, in order (main.py's summary reads them).
RUNS = []


def log(*a):
    print(*a, flush=True)


def set_device(dev: str):
    global DEV
    DEV = dev


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def oom_types():
    return (torch.cuda.OutOfMemoryError,) if hasattr(torch.cuda, "OutOfMemoryError") else (MemoryError,)


def empty_cache():
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


def device_name() -> str:
    return torch.cuda.get_device_name(0) if DEV == "cuda" else "cpu (smoke test)"


# ---------------------------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------------------------
def csv_list(s, allowed, what, prog="bench"):
    """The items of a comma list, each checked against `allowed` (SystemExit naming the bad ones)."""
    items = [v.strip() for v in s.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad:
        raise SystemExit(f"{prog}: unknown {what} {bad}; choose from {list(allowed)}")
    return items


def int_list(s):
    return [int(v) for v in s.split(",") if v.strip()]


def add_common_args(p: argparse.ArgumentParser, impls, default_name: str):
    """The arguments every benchmark takes; `impls` lists the --impls choices."""
    p.add_argument("--batches", default=None, help="comma list of batch sizes")
    p.add_argument("--dtypes", default=None, help="comma list of fp32,bf16,fp16")
    p.add_argument("--layouts", default=None, help="comma list of nchw,cl")
    p.add_argument("--modes", default=None, help="comma list of fwd,fwdbwd")
    p.add_argument("--impls", default=None, help=f"comma list of {','.join(impls)} (default: all available)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--no-graphs", action="store_true",
                   help="skip the CUDA-graph replay timing of the forward (device time without host overhead)")
    p.add_argument("--warmup", type=int, default=25, help="do_bench warmup (ms)")
    p.add_argument("--rep", type=int, default=100, help="do_bench rep (ms)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="start no new config after this many seconds (from the benchmark's start, its copy-bandwidth "
                        "measurement included)")
    p.add_argument("--out", "--out-dir", dest="out", default=os.path.join(ROOT, "benchmarks", "results"),
                   help="output directory (default benchmarks/results)")
    p.add_argument("--name", default=None, help=f"file name stem (default {default_name}-<gpu>-<date>)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--print-gpu-tag", action="store_true", help="print e.g. 'h100' and exit")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="no GPU: run tiny configs on the CPU (reference, Triton interpreter, cuda-emu) to "
                        "exercise this script; timings are meaningless")


def setup_device(args, prog) -> int | None:
    """Select the device from the arguments: the CPU for --cpu-smoke (and the Triton interpreter,
    switched on before attnkernels.triton is imported), else CUDA. An exit status when there is
    nothing to run on, else None."""
    if args.cpu_smoke:
        set_device("cpu")
        os.environ.setdefault("TRITON_INTERPRET", "1")
        return None
    set_device("cuda")
    if not torch.cuda.is_available():
        print(f"{prog}: no CUDA GPU found (torch.cuda.is_available() is False); this benchmark needs one "
              "(--cpu-smoke runs its code paths on the CPU). On a CPU-only machine run `make bench` "
              "for the CPU demo.", file=sys.stderr)
        return 2
    return None


def kernel_backend(impl: str) -> str:
    """attnkernels backend of a kernel impl column: "cuda" is "cuda-emu" on the CPU; a column
    "<backend>:<variant>" runs <backend>."""
    impl = impl.split(":")[0]
    return "cuda-emu" if (impl == "cuda" and DEV != "cuda") else impl


def kernel_unavailable(impl: str, op: str | None = None) -> str | None:
    """None if the kernel impl (a KERNEL_IMPLS name) can run `op` here, else why not: the backend
    is unavailable on this device, or (until the op's branches merge) it lacks the op's kernels
    (`<op>_forward` in attnkernels.triton / attnkernels.cuda)."""
    import attnkernels as ak
    be = kernel_backend(impl)
    if be not in ak.available_backends(DEV):
        try:
            from attnkernels.backend import _runs_on
            return f"backend {be!r} unavailable: {_runs_on(be, torch.device(DEV))}"
        except Exception:
            return f"backend {be!r} unavailable"
    if op is not None:
        from attnkernels.backend import get_impl
        if not hasattr(get_impl(be), f"{op}_forward"):
            return f"backend {be!r} has no {op} kernels yet"
    return None


def select_impls(args, baselines, compiled, op=None, prog="bench"):
    """(impls in column order, {impl: why skipped}): the eager `baselines`, their torch.compile
    columns `compiled` (none with --no-compile) and the kernel impls that can run `op` here,
    narrowed by --impls (the first baseline always kept: it is the reference of the check and of
    the speedups)."""
    impls = list(baselines) + ([] if args.no_compile else list(compiled))
    skipped = {}
    for k in KERNEL_IMPLS:
        why = kernel_unavailable(k, op)
        if why is None:
            impls.append(k)
        else:
            skipped[k] = why
    if args.impls:
        want = csv_list(args.impls, list(baselines) + list(compiled) + list(KERNEL_IMPLS), "impl", prog)
        for i in want:
            if i not in impls:
                skipped.setdefault(i, "--no-compile" if i in compiled else "unavailable")
        impls = [i for i in impls if i in want]
        if baselines[0] not in impls:
            impls = [baselines[0]] + impls
    for i, why in skipped.items():
        if not args.impls or i in args.impls.split(","):
            log(f"{prog}: {i} skipped: {why}")
    return impls, skipped


def grid_configs(args, shapes, batches, quick, prog, std_batches=None, smoke=None):
    """The run's configs [(shape, N, dtype name, layout)], shapes outermost: --cpu-smoke: `smoke`
    ([(shape, N)], fp32 unless --dtypes, both layouts); --quick: `quick` ([(shape, N)]), bf16,
    both layouts; default: every shape at std_batches (default: the largest batch), bf16, both
    layouts; --full: every shape x `batches` x fp32/bf16/fp16 x both layouts. --batches,
    --dtypes and --layouts replace the batches, dtypes and layouts (with --quick/--cpu-smoke,
    --batches keeps the listed pairs whose batch is given)."""
    dtypes, layouts = ["bf16"], list(LAYOUTS)
    if args.cpu_smoke or getattr(args, "quick", False):
        pairs = list(smoke if args.cpu_smoke else quick)
        if args.cpu_smoke:
            dtypes = ["fp32"]
        if args.batches:
            keep = set(int_list(args.batches))
            pairs = [p for p in pairs if p[1] in keep]
    else:
        bs = (int_list(args.batches) if args.batches else list(batches) if getattr(args, "full", False)
              else list(std_batches or [max(batches)]))
        pairs = [(sh, n) for sh in shapes for n in bs]
        if getattr(args, "full", False):
            dtypes = list(DTYPES)
    if args.dtypes:
        dtypes = csv_list(args.dtypes, DTYPES, "dtype", prog)
    if args.layouts:
        layouts = csv_list(args.layouts, LAYOUTS, "layout", prog)
    out = []
    for sh, n in pairs:
        for dt in dtypes:
            for lay in layouts:
                if (sh, n, dt, lay) not in out:
                    out.append((sh, n, dt, lay))
    return out


def op_parser(doc: str, quick_help: str, impls, name: str, extra=None) -> argparse.ArgumentParser:
    """An op benchmark's command line: its docstring's first paragraph, --quick / --full,
    `extra(p)`'s own arguments, the common ones (impls; results named `name`) and compile's."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_preset_args(p, quick_help)
    if extra is not None:
        extra(p)
    add_common_args(p, impls, name)
    add_compile_args(p)
    return p


def add_preset_args(p, quick_help):
    preset = p.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help=quick_help)
    preset.add_argument("--full", action="store_true", help="every shape/batch/dtype/layout")


def add_compile_args(p):
    """--compile-modes / --compile-configs: where the torch.compile column runs (an inductor
    compile costs seconds to tens of seconds per config and mode: make gpu-check keeps it to the
    forward, the one mode the issues' targets compare with it)."""
    p.add_argument("--compile-modes", default=None,
                   help="comma list of fwd,fwdbwd: the modes torch.compile runs in (default both)")
    p.add_argument("--compile-configs", type=int, default=None,
                   help="torch.compile in the first N configs only (default all)")


def compile_skip(args, mode=None) -> str | None:
    """Why the torch.compile column does not run in this config (and mode), or None: --no-compile,
    --compile-configs (the config's index, CONFIG_INDEX), --compile-modes."""
    if args.no_compile:
        return "--no-compile"
    n = getattr(args, "compile_configs", None)
    if n is not None and CONFIG_INDEX >= n:
        return f"compiled in the first {n} config(s) only (--compile-configs)"
    modes = getattr(args, "compile_modes", None)
    if mode is not None and modes and mode not in csv_list(modes, MODES, "mode"):
        return f"not compiled in {mode} (--compile-modes {modes})"
    return None


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------
def do_bench(fn, warmup, rep):
    """Median ms. triton.testing.do_bench (3.6 and 3.8 both take return_mode); falls back to
    quantiles, then to a plain CUDA-event loop if triton is unusable."""
    if DEV != "cuda":  # --cpu-smoke: the wall clock of one call (the callers warm up first)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
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
        return do_bench(g.replay, warmup, rep) / len(sets)
    except Exception as e:  # capture unsupported by an impl: report n/a, keep going
        log(f"   (graph capture failed: {type(e).__name__}: {str(e)[:120]})")
        return None


def copy_bandwidth(warmup, rep):
    """Device copy bandwidth in GB/s: y.copy_(x) on 1 GiB fp32 (bytes = read + write)."""
    n = (1 << 30) // 4 if DEV == "cuda" else (1 << 24)
    x = torch.randn(n, device=DEV)
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x), warmup, rep)
    del x, y
    empty_cache()
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


def n_sets(per_call_bytes: int) -> int:
    """How many input sets to rotate so that consecutive calls never find theirs in L2: enough to
    cover 2x L2 (1 when one call's tensors already do; at most 256)."""
    return max(1, min(256, math.ceil(2 * l2_bytes() / max(per_call_bytes, 1))))


def make_sets(make_one, per_call_bytes, label=""):
    """[make_one(generator) for each of n_sets(per_call_bytes) sets], from one seeded generator on
    the device; None (logged) when they do not fit in memory."""
    g = torch.Generator(device=DEV).manual_seed(1234)
    try:
        return [make_one(g) for _ in range(n_sets(per_call_bytes))]
    except oom_types():
        log(f"WARNING {label}: out of memory making inputs; skipped")
        empty_cache()
        return None


def randn(shape, dtype, gen, fmt=torch.contiguous_format, requires_grad=False):
    """A fresh torch.randn tensor on the device in `fmt` (4-d shapes)."""
    t = torch.randn(shape, device=DEV, dtype=dtype, generator=gen)
    if len(shape) == 4:
        t = t.contiguous(memory_format=fmt)
    return t.requires_grad_(requires_grad)


def peak_mb(fn) -> float:
    """MB allocated by one call of fn beyond what was allocated before it (its temporaries and
    outputs): torch.cuda.max_memory_allocated() with the peak reset before the call. NaN off-GPU."""
    if DEV != "cuda":
        return NAN
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    del out
    return mb


def drop_kernel_caches():
    """Frees the scratch and arrival counters that attnkernels' Triton kernels keep cached per
    stream (attnkernels/triton/_common.py), so that the next call allocates them again and its
    peak memory counts them, as it counts the buffers the CUDA backend allocates per call (its
    cached counters, a few KB, stay). A no-op before the Triton backend is imported."""
    common = sys.modules.get("attnkernels.triton._common")
    if common is not None:
        sync()
        common._scratch.clear()
        common._counters.clear()


def first_tensor(out):
    """The output a check compares: out itself, or the first element of a tuple (dx of a
    gradient tuple; X of an (X, attention...) tuple)."""
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out


def call_fwd(fn, *inputs):
    with torch.no_grad():
        return fn(*inputs)


def call_fwdbwd(fn, inputs, dy, wrt):
    """torch.autograd.grad of fn(*inputs) (its first output) with respect to `wrt`, along dy."""
    y = first_tensor(fn(*inputs))
    return torch.autograd.grad(y, wrt, dy)


@contextlib.contextmanager
def process_backend(name):
    """The attnkernels backend for the whole process in this scope (set_backend, not the
    thread-local `with ak.backend(...)`: autograd may run the backward on another thread)."""
    if name is None:
        yield
        return
    import attnkernels as ak
    prev = ak.set_backend(name)
    try:
        yield
    finally:
        ak.set_backend(prev)


# ---------------------------------------------------------------------------------------------
# the correctness guard
# ---------------------------------------------------------------------------------------------
def check(got, want, want32, dtype, what):
    """ok if got is within the tolerance of the baseline (eager), or (low precision) if its error
    against the fp32 computation is at most 2x eager's own error there (the test suite's rule)."""
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


class Guard:
    """The correctness guard of one (config, mode): `baseline(out)` takes the baseline impl's
    output (eager) as the reference, and `guard(out)` checks another impl's against it (check();
    "-" when the baseline did not run). `fp32` computes the baseline's output in fp32 (called
    once, for low-precision dtypes)."""

    def __init__(self, dtype, what, fp32: Optional[Callable[[], torch.Tensor]] = None):
        self.dtype, self.what, self.fp32 = dtype, what, fp32
        self.ref = self.ref32 = None

    def baseline(self, out) -> str:
        self.ref = first_tensor(out).detach()
        if self.dtype != torch.float32 and self.fp32 is not None:
            self.ref32 = first_tensor(self.fp32()).detach().float()
        return "ref"

    def __call__(self, out) -> str:
        if self.ref is None:
            return "-"
        return check(first_tensor(out).detach(), self.ref, self.ref32, self.dtype, self.what)


def scale_params_(module, seed):
    """Weights (every parameter of 2 or more dims: Linear and conv weights) normal with std
    1.5 / sqrt(fan in), biases normal(0, 0.3), BatchNorm weights left at 1: unit-scale
    activations, so that no gate of the block saturates (a saturated gate hides errors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                continue
            for name, p in m.named_parameters(recurse=False):
                if p.dim() >= 2:
                    p.copy_(torch.randn(p.shape, generator=g) * (1.5 / math.sqrt(p[0].numel())))
                elif name == "bias":
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module


def fp32_reference(module, mode, inputs, dy=None):
    """A copy of `module` in fp32 on the upcast inputs: its (first) output (fwd), or the gradient
    of that output along dy with respect to inputs[0] (fwdbwd). The guard's fp32 computation."""
    m32 = copy.deepcopy(module).float()
    xs = [t.detach().float() for t in inputs]
    xs[0].requires_grad_(mode != "fwd")
    with torch.no_grad() if mode == "fwd" else contextlib.nullcontext():
        y32 = first_tensor(m32(*xs))
    if mode == "fwd":
        return y32
    return torch.autograd.grad(y32, xs[0], dy.float())[0]


# ---------------------------------------------------------------------------------------------
# one impl of one config
# ---------------------------------------------------------------------------------------------
@dataclass
class Result:
    """What measure() found for one impl (ms NaN when it failed; note says why)."""
    ms: float = NAN
    peak_mb: float = NAN
    compile_s: float = NAN
    graph_ms: float = NAN
    check: str = "-"
    note: str = ""


def measure(body, sets, args, *, label, compiled=False, graph=False, guard=None, backend=None,
            context=None) -> Result:
    """Runs one impl: `body(set)` on the rotating input sets under `backend` (set process-wide)
    and `context`: a warm-up (three calls when `compiled`: the compile, then its warm-up; its
    wall time is compile_s), the guard's check of set 0's output, peak memory of one call, the
    median time (do_bench over the rotation), and with `graph` the CUDA-graph replay time.
    Failures (OOM included) are logged and land in the note: the other impls still run."""
    r = Result()
    try:
        with process_backend(backend), (context or contextlib.nullcontext()):
            t0 = time.perf_counter()
            out = body(sets[0])
            if compiled:
                for _ in range(2):
                    out = body(sets[0])
            sync()
            if compiled:
                r.compile_s = time.perf_counter() - t0
            if guard is not None:
                r.check = guard(out)
                if r.check not in ("ok", "ref"):
                    log(f"WARNING {label}: {r.check}")
            del out
            drop_kernel_caches()  # (so that the call's scratch counts in its peak)
            r.peak_mb = peak_mb(lambda: body(sets[0]))
            rot = Rotor(sets)
            r.ms = do_bench(lambda: body(rot.next()), args.warmup, args.rep)
            if graph and DEV == "cuda" and not args.no_graphs:
                gms = graph_ms(body, sets, args.warmup, args.rep)
                if gms:
                    r.graph_ms = gms
    except oom_types() as e:
        r.note = "OOM"
        log(f"WARNING {label}: out of memory ({str(e)[:120]})")
        empty_cache()
    except Exception as e:
        r.note = f"{type(e).__name__}: {e}"[:200].replace("\n", " ")
        log(f"WARNING {label}: failed: {r.note}")
        if os.environ.get("BENCH_TRACEBACK") or os.environ.get("BENCH_SE_TRACEBACK"):
            traceback.print_exc()
    return r


@dataclass
class Impl:
    """One column of a module benchmark: `module` run on `backend` (None: whatever it runs by
    itself), compiled (torch.compile of it) or not; module None: unavailable, `note` says why."""
    name: str
    module: Optional[torch.nn.Module]
    backend: Optional[str] = None
    compiled: bool = False
    note: str = ""


def same_state(base, modules):
    """Loads base's state_dict into each module (torch.compile's wrapper: into the module it
    wraps): a family's impls start each mode from the same BatchNorm running statistics, which
    each one's fwd+bwd calls advanced by its own number of calls."""
    state = base.state_dict()
    for m in modules:
        getattr(m, "_orig_mod", m).load_state_dict(state, strict=True)


def module_impls(eager, fused, args, kernels, compile_name="compile", eager_name="eager"):
    """[eager, its torch.compile (unless --no-compile), the fused module on each kernel impl]:
    `fused` None (its front end not merged yet) makes the kernel columns notes."""
    out = [Impl(eager_name, eager)]
    skip = compile_skip(args)
    if compile_name and skip is not None and not args.no_compile:
        out.append(Impl(compile_name, None, compiled=True, note=skip))
    elif compile_name and not args.no_compile:
        try:
            torch._dynamo.reset()
            out.append(Impl(compile_name, torch.compile(copy.deepcopy(eager), dynamic=False), compiled=True))
        except Exception as e:
            out.append(Impl(compile_name, None, note=f"compile failed: {type(e).__name__}: {e}"[:200]))
    for k in kernels:
        out.append(Impl(k, fused, kernel_backend(k)) if fused is not None
                   else Impl(k, None, note="the op's front end is not in attnkernels yet"))
    return out


def run_modules(label, row, families, modes, args, copy_gbps, writer, *, shape, dtype, fmt,
                byte_factor, extra_inputs=None, extra_bytes=None, flops=None, speedup_cols=None,
                peak_cols=None, finish_rows=None):
    """Benchmarks modules y = m(x, *extra) on fresh x (N, C, H, W) in `fmt`: for each mode ("fwd":
    eval mode, no grad; "fwdbwd": train mode, torch.autograd.grad of y (the first output) along a
    fresh dy shaped like x with respect to the inputs and the parameters), each family {name:
    [Impl, ...]} in turn, its first impl the baseline of its correctness guard (y or dx) and of
    x_eager, "compile" that of x_compile. extra_inputs(gen, mode) -> more input tensors (fresh per
    set; requiring grad in fwdbwd where they should get one). The rows (`row` plus family, mode,
    impl and the measurements; bytes = byte_factor[mode] * |x| + extra_bytes[mode]; with `flops`
    {mode: count}, tflops) go to writer. speedup_cols {column: impl name}: more speedup columns
    (that impl's time over the row's); peak_x_eager is the row's peak memory over the first impl's,
    peak_cols {column: impl name} more such ratios; finish_rows(rows, mode) adds columns of its own
    to a family's rows of one mode before they are written. A compiled impl runs only in the modes
    that compile_skip() allows."""
    N, C, Hh, W = shape
    xbytes = N * C * Hh * W * torch.empty(0, dtype=dtype).element_size()
    for mode in modes:
        per_call = xbytes * (2 if mode == "fwd" else 4)  # tensors touched per call: x,y (+dy,dx)

        def make_set(g, mode=mode):
            x = randn(shape, dtype, g, fmt, requires_grad=mode == "fwdbwd")
            ins = (x,) + tuple(extra_inputs(g, mode) if extra_inputs else ())
            return ins if mode == "fwd" else ins + (randn(shape, dtype, g, fmt),)

        sets = make_sets(make_set, per_call, f"{label} {mode}")
        if sets is None:
            continue
        n_in = len(sets[0]) - (mode == "fwdbwd")
        for family, impls in families.items():
            base = impls[0].module
            if base is not None:
                base.train(mode == "fwdbwd")
                same_state(base, [i.module for i in impls[1:] if i.module is not None])
            guard = Guard(dtype, "y" if mode == "fwd" else "dx",
                          fp32=lambda: fp32_reference(base, mode, sets[0][:n_in], sets[0][-1]))
            rows = []
            for impl in impls:
                r = dict(row, family=family, mode=mode, impl=impl.name, n_sets=len(sets),
                         bytes=byte_factor[mode] * xbytes + (extra_bytes or {}).get(mode, 0))
                rows.append(r)
                skip = compile_skip(args, mode) if impl.compiled else None
                if impl.module is None or skip is not None:
                    res = Result(note=skip or impl.note or "unavailable")
                else:
                    m = impl.module
                    m.train(mode == "fwdbwd")
                    if mode == "fwd":
                        body = lambda s, m=m: call_fwd(m, *s[:n_in])  # noqa: E731
                    else:
                        params = [p for p in m.parameters() if p.requires_grad]
                        body = lambda s, m=m, p=params: call_fwdbwd(  # noqa: E731
                            m, s[:n_in], s[-1], [t for t in s[:n_in] if t.requires_grad] + p)
                    res = measure(body, sets, args, label=f"{label} {family} {mode} {impl.name}",
                                  compiled=impl.compiled, graph=mode == "fwd" and not impl.compiled,
                                  guard=guard.baseline if impl is impls[0] else guard, backend=impl.backend)
                r.update(ms=res.ms, peak_mb=res.peak_mb, compile_s=res.compile_s, graph_ms=res.graph_ms,
                         check=res.check, note=res.note if impl.module is None or skip is not None
                         else "; ".join(n for n in (impl.note, res.note) if n))
                r["gbps"], r["pct_copy"] = rates(r["bytes"], res.ms, copy_gbps)
                r["graph_pct_copy"] = rates(r["bytes"], res.graph_ms, copy_gbps)[1]
                if flops:
                    r["tflops"] = flops[mode] / (res.ms * 1e-3) / 1e12 if res.ms == res.ms else NAN
            speedups(rows, eager=impls[0].name)
            for col, name in (speedup_cols or {}).items():
                ratios(rows, col, "ms", name, lambda row, base: base / row)
            for col, name in {"peak_x_eager": impls[0].name, **(peak_cols or {})}.items():
                ratios(rows, col, "peak_mb", name, lambda row, base: row / base)
            if finish_rows is not None:
                finish_rows(rows, mode)
            for r in rows:
                writer(r)
                log(f"   {family:9s} {mode:7s} {r['impl']:9s} {fmt_num(r['ms'], 4):>9s} ms  "
                    f"{fmt_num(r['gbps'], 0):>6s} GB/s  {fmt_num(r['pct_copy'], 0):>4s}% copy  "
                    f"x{fmt_num(r['x_eager'], 2)} vs {impls[0].name}  peak {fmt_num(r['peak_mb'], 1)} MB  "
                    f"{r['check']} {r['note']}")
        del sets
    empty_cache()


def rates(nbytes, ms, copy_gbps):
    """(GB/s, % of the copy bandwidth) of moving nbytes in ms."""
    if not (ms == ms) or ms <= 0:
        return NAN, NAN
    gbps = nbytes / (ms * 1e-3) / 1e9
    return gbps, (100.0 * gbps / copy_gbps if copy_gbps else NAN)


def ratios(rows, col, field, base_impl, fn):
    """rows[i][col] = fn(rows[i][field], the `base_impl` row's field) (NaN where either is NaN):
    rows of one config x mode, by impl name."""
    base = next((x[field] for x in rows if x["impl"] == base_impl), NAN)
    for x in rows:
        v = x.get(field, NAN)
        x[col] = fn(v, base) if v == v and base == base and base != 0 else NAN


def speedups(rows, eager="eager", compiled="compile"):
    """Fills x_eager / x_compile of each row (rows of one config x mode, by impl name): the
    baseline's time over the row's."""
    by = {r["impl"]: r for r in rows}
    t_e = by.get(eager, {}).get("ms", NAN)
    t_c = by.get(compiled, {}).get("ms", NAN)
    for r in rows:
        ok = r["ms"] == r["ms"]
        r["x_eager"] = t_e / r["ms"] if ok else NAN
        r["x_compile"] = t_c / r["ms"] if ok else NAN


# ---------------------------------------------------------------------------------------------
# a run: CSV rows as they come, the time budget, the reports
# ---------------------------------------------------------------------------------------------
def fmt_num(v, nd=3):
    try:
        v = float(v)
    except (TypeError, ValueError):
        return "n/a"
    if v != v or v in (float("inf"), float("-inf")):
        return "n/a"
    return f"{v:.{nd}f}"


def triton_version():
    try:
        import triton
        return triton.__version__
    except Exception:
        return "n/a"


def start(args, prog, name_prefix, impls, modes, n_configs):
    """Prints the run's header, measures the copy bandwidth; returns (output stem, meta)."""
    gpu = device_name()
    date = _dt.date.today().isoformat()
    name = args.name or (f"{name_prefix}-{gpu_tag(gpu)}-{date}" if DEV == "cuda" else f"{name_prefix}-cpu-smoke-{date}")
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, name)
    log(f"{prog}: {gpu}; torch {torch.__version__}; triton {triton_version()}; impls {impls}; "
        f"modes {modes}; {n_configs} configs; out {stem}.{{csv,md,png}}")
    torch.manual_seed(0)
    copy_gbps, copy_ms = copy_bandwidth(args.warmup, args.rep)
    log(f"copy bandwidth: {copy_gbps:.0f} GB/s (1 GiB fp32 y.copy_(x): {copy_ms:.3f} ms)")
    meta = dict(gpu=gpu, torch=torch.__version__, triton=triton_version(), date=date,
                copy_gbps=copy_gbps, l2_mb=l2_bytes() / 2**20, warmup=args.warmup, rep=args.rep,
                truncated="")
    return stem, meta


class Stopped(BaseException):
    """SIGTERM arrived (a time limit: make gpu-check's step timeout): not an Exception, so that no
    impl's error handling takes it; run_configs stops there and the report is still written."""


@contextlib.contextmanager
def stop_on_sigterm():
    """SIGTERM raises Stopped in the main thread while in this scope, once: later ones are ignored
    until the scope ends, so the report gets written (timeout(1) kills after its grace period).
    Yields hold(): from then on SIGTERM is ignored (the report is being written)."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Stopped(signal.Signals(signum).name)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN)
    finally:
        signal.signal(signal.SIGTERM, old)


def run_configs(configs, run_one, stem, fields, budget, meta, prog, t0=None):
    """run_one(cfg, writer) for each config in order, writer(row) appending to <stem>.csv (flushed
    row by row, so a run cut short keeps its rows); no new config after `budget` seconds from t0
    (default: now; noted in meta["truncated"]); a config that raises is logged and skipped; a stop (SIGTERM under
    stop_on_sigterm, Ctrl-C) ends the run there, noted in meta["truncated"] and meta["stopped"]
    (the exit status it asks for), with the rows of the modes that finished. Returns the rows."""
    global CONFIG_INDEX
    rows = []
    t_start = time.perf_counter()
    with open(stem + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        f.flush()

        def writer(row):
            rows.append(row)
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
            f.flush()

        for n, cfg in enumerate(configs):
            if budget is not None and time.perf_counter() - (t_start if t0 is None else t0) > budget:
                meta["truncated"] = f"time budget {budget:.0f} s reached after {n} of {len(configs)} configs"
                log(f"{prog}: {meta['truncated']}; stopping")
                break
            CONFIG_INDEX = n
            try:
                run_one(cfg, writer)
            except (Stopped, KeyboardInterrupt) as e:
                meta["stopped"] = 143 if isinstance(e, Stopped) else 130
                meta["truncated"] = (f"stopped by {e if isinstance(e, Stopped) else 'an interrupt'} during config "
                                     f"{n + 1} of {len(configs)} (the rows of its finished modes kept)")
                log(f"{prog}: {meta['truncated']}; writing the report")
                break
            except Exception as e:  # never lose the rows already measured
                log(f"WARNING config {cfg} failed: {type(e).__name__}: {e}")
                traceback.print_exc()
                empty_cache()
    log(f"{prog}: {len(rows)} rows in {time.perf_counter() - t_start:.0f} s")
    return rows


def finish(stem, md, plot_fn=None, no_plot=False):
    """Writes <stem>.md and (plot_fn(path) -> bool) <stem>.png; prints the Markdown."""
    with open(stem + ".md", "w") as f:
        f.write(md)
    if plot_fn is not None and not no_plot:
        try:
            if plot_fn(stem + ".png"):
                log(f"wrote {stem}.png")
        except Exception as e:
            log(f"WARNING: plot failed: {type(e).__name__}: {e}")
    log(f"wrote {stem}.csv and {stem}.md")
    print(md, flush=True)


def md_table(head, rows):
    """A Markdown table: the header cells, then one line per row of cells."""
    out = ["| " + " | ".join(str(h).replace("|", "/") for h in head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows]
    return out


def md_header(title, meta, byte_model):
    out = [f"## {title}: {meta['gpu']}", "",
           f"torch {meta['torch']}, triton {meta['triton']}, {meta['date']}; "
           f"copy bandwidth {fmt_num(meta['copy_gbps'], 0)} GB/s; L2 {meta['l2_mb']:.0f} MB; "
           f"do_bench(warmup={meta['warmup']}, rep={meta['rep']}, median).",
           byte_model, ""]
    if meta.get("truncated"):
        out += [f"**Truncated**: {meta['truncated']}", ""]
    return out


def summary_rows(rows, impls, key_of, key_cells, kernel_impls=KERNEL_IMPLS, extra=None, ms_field="ms"):
    """One line per config x mode (key_of(row), in first-seen order): key_cells(key), each impl's
    ms (row[ms_field]), then the fastest kernel impl, its speedup over eager and compile and its %
    of copy bandwidth, then extra(key, by) cells (by: (key, impl) -> row)."""
    configs, by = [], {}
    for r in rows:
        k = key_of(r)
        if k not in configs:
            configs.append(k)
        by[(k, r["impl"])] = r
    out = []
    for k in configs:
        cells = list(key_cells(k))
        for i in impls:
            r = by.get((k, i))
            cells.append(fmt_num(r[ms_field], 4) if r else "n/a")
        best = None
        for i in impls:
            r = by.get((k, i))
            if i.split(":")[0] in kernel_impls and r and r["ms"] == r["ms"] and (best is None or r["ms"] < best["ms"]):
                best = r
        if best is None:
            cells += ["n/a"] * 4
        else:
            cells += [best["impl"], fmt_num(best["x_eager"], 2), fmt_num(best["x_compile"], 2),
                      fmt_num(best.get("pct_copy", NAN), 0)]
        if extra is not None:
            cells += list(extra(k, by))
        out.append(cells)
    return out


SUMMARY_TAIL = ["best", "× eager", "× compile", "% copy BW"]


@dataclass
class Target:
    """A GPU target of an issue, read off the rows: each kernel impl's `field` in the rows of `mode`
    (and `family`, when given) that `where` accepts, against `bound` (op ">=" or "<=")."""
    label: str
    mode: str
    field: str
    op: str
    bound: float
    family: Optional[str] = None
    where: Optional[Callable[[dict], bool]] = None

    def applies(self, r) -> bool:
        return (r["mode"] == self.mode and (self.family is None or r.get("family") == self.family)
                and (self.where is None or bool(self.where(r))))

    def met(self, v) -> bool:
        return v >= self.bound if self.op == ">=" else v <= self.bound


@dataclass
class TargetTable:
    """The targets of a benchmark and the config a line of their table stands for: key_of(row)
    (the config without mode and family), its head and cells."""
    issue: str
    targets: list
    key_of: Callable[[dict], tuple]
    head: list
    cells: Callable[[tuple], list]


def family_key(r):
    """The summary key of a benchmark with families of modules on (N, C, H, H) maps (CBAM, BAM)."""
    return (r["family"], r["N"], r["C"], r["H"], r["dtype"], r["layout"], r["mode"])


def family_key_cells(k):
    return [k[0], f"{k[1]}×{k[2]}×{k[3]}×{k[3]}", k[4], k[5], k[6]]


FAMILY_KEY_HEAD = ["family", "N×C×H×W", "dtype", "layout", "mode"]


def family_targets(issue, targets):
    """A TargetTable with a line per (N, C, H, dtype, layout) of a family_key benchmark."""
    return TargetTable(issue, targets, key_of=lambda r: family_key(r)[1:-1], head=FAMILY_KEY_HEAD[1:-1],
                       cells=lambda k: family_key_cells(("",) + k + ("",))[1:-1])


def targets_markdown(rows, table: TargetTable, kernel_impls=KERNEL_IMPLS):
    """The targets section: one line per config (table.key_of), a column per target whose cell has
    each kernel impl's value and whether it meets the target ("-": the target does not apply to
    the config; "n/a": it applies, nothing was measured), then per target and impl the configs
    measured and met. Values are the rows' own: nothing here is estimated. A row whose output
    failed the correctness guard (check MISMATCH) never meets a target (its cell says so)."""
    keys, cells, tally = [], {}, {}
    for r in rows:
        k = table.key_of(r)
        if k not in keys:
            keys.append(k)
        for j, t in enumerate(table.targets):
            if not t.applies(r):
                continue
            vals = cells.setdefault((k, j), [])
            v = r.get(t.field, NAN)
            if r["impl"] in kernel_impls and isinstance(v, float) and v == v:
                wrong = str(r.get("check", "")).startswith("MISMATCH")
                ok = t.met(v) and not wrong
                vals.append(f"{r['impl']} {v:.2f} {'✓' if ok else '✗'}" + (" (MISMATCH)" if wrong else ""))
                n_met = tally.setdefault((j, r["impl"]), [0, 0])
                n_met[0] += ok
                n_met[1] += 1
    out = [f"### Targets ({table.issue})", "",
           "Each kernel column's value in the rows the target names; ✓ meets the target, ✗ misses it; "
           "- the target does not apply to the config, n/a not measured.", ""]
    out += md_table(list(table.head) + [t.label for t in table.targets],
                    [list(table.cells(k)) + [" · ".join(cells[(k, j)]) if cells.get((k, j)) else
                                             ("n/a" if (k, j) in cells else "-")
                                             for j in range(len(table.targets))] for k in keys])
    out += [""]
    out += md_table(["target", "met in (configs measured)"], [
        [t.label, ", ".join(f"{i} {tally[(j, i)][0]} of {tally[(j, i)][1]}" for i in kernel_impls if (j, i) in tally)
         or "not measured"] for j, t in enumerate(table.targets)])
    return out


def report_markdown(title, rows, impls, meta, byte_model, key_head, key_of, key_cells, notes=(),
                    extra_cols=(), ms_field="ms", ms_label="ms", targets: Optional[TargetTable] = None):
    """The summary (one line per key_of(row): a config x mode (x family); each impl's
    row[ms_field], headed "<impl> <ms_label>"), the targets (targets_markdown, when given) and the
    detail table (one line per row). extra_cols: [(head, row -> cell)] more detail columns."""
    out = md_header(title, meta, byte_model)
    head = list(key_head) + [f"{i} {ms_label}" for i in impls] + SUMMARY_TAIL + ["peak MB: first / best"]

    def peaks(k, by):
        first = by.get((k, impls[0]))
        best = min((by[(k, i)] for i in impls if (k, i) in by and i in KERNEL_IMPLS
                    and by[(k, i)]["ms"] == by[(k, i)]["ms"]), key=lambda r: r["ms"], default=None)
        return [f"{fmt_num(first['peak_mb'], 1) if first else 'n/a'} / "
                f"{fmt_num(best['peak_mb'], 1) if best else 'n/a'}"]

    out += md_table(head, summary_rows(rows, impls, key_of, key_cells, extra=peaks, ms_field=ms_field))
    if targets is not None:
        out += [""] + targets_markdown(rows, targets)
    out += ["", "### Detail", ""]
    dhead = list(key_head) + ["impl", "ms", "GB/s", "% copy", "× eager", "× compile", "peak MB", "peak × eager",
                              "check", "compile s", "graph ms"] + [h for h, _ in extra_cols] + ["note"]
    out += md_table(dhead, [list(key_cells(key_of(r))) + [
        r["impl"], fmt_num(r["ms"], 4), fmt_num(r.get("gbps", NAN), 0), fmt_num(r.get("pct_copy", NAN), 0),
        fmt_num(r["x_eager"], 2), fmt_num(r["x_compile"], 2), fmt_num(r["peak_mb"], 1),
        fmt_num(r.get("peak_x_eager", NAN), 2), str(r["check"]),
        fmt_num(r.get("compile_s", NAN), 1), fmt_num(r.get("graph_ms", NAN), 4)]
        + [f(r) for _, f in extra_cols] + [str(r["note"])] for r in rows])
    out += ["", mismatch_line(rows), *notes]
    return "\n".join(out) + "\n"


def run_benchmark(args, prog, name, *, configs, baselines, op, run_config, fields, markdown, plot=None,
                  fused_missing=None, more_impls=None):
    """A benchmark's main, after its arguments: --print-gpu-tag, the device, the impl columns
    (select_impls: the `baselines`, "compile", the kernel impls with the op; more_impls(impls) ->
    more columns), the modes, the run (run_config(cfg, impls, modes, copy_gbps, writer) for each of
    configs(), called once the device is set), the CSV (`fields`), markdown(rows, impls, meta) and
    plot(rows, impls, path, meta) -> bool. fused_missing() -> True when the op's drop-in is not in
    attnkernels (logged: its kernel columns are notes; called once the device is set, as all that
    imports attnkernels: --cpu-smoke switches the Triton interpreter on first). Returns the exit
    status."""
    if args.print_gpu_tag:
        print(gpu_tag())
        return 0
    rc = setup_device(args, prog)
    if rc is not None:
        return rc
    cfgs = configs()
    if not cfgs:
        print(f"{prog}: the selection is empty", file=sys.stderr)
        return 2
    impls, _ = select_impls(args, baselines, ["compile"], op=op, prog=prog)
    if more_impls is not None:
        impls += more_impls(impls)
    if fused_missing is not None and fused_missing():
        log(f"{prog}: attnkernels has no {op.upper()} drop-in yet: the kernel columns are notes")
    modes = csv_list(args.modes, MODES, "mode", prog) if args.modes else list(MODES)
    if getattr(args, "compile_modes", None):
        csv_list(args.compile_modes, MODES, "mode", prog)  # (a bad one stops the run here, not mid-way)
    tag = prog.removesuffix(".py")  # the progress lines' prefix ("bench_se: N rows in ...": gpu_check.sh reads it)
    t0 = time.perf_counter()
    with stop_on_sigterm() as hold:
        stem, meta = start(args, tag, name, impls, modes, len(cfgs))
        RUNS.append(stem)
        rows = run_configs(cfgs, lambda cfg, w: run_config(cfg, impls, modes, meta["copy_gbps"], w), stem,
                           fields, args.budget_s, meta, tag, t0)
        hold()
        finish(stem, markdown(rows, impls, meta),
               (lambda path: plot(rows, impls, path, meta)) if plot is not None else None, args.no_plot)
    return meta.get("stopped", 0)


def mismatch_line(rows):
    mism = [r for r in rows if str(r.get("check", "")).startswith("MISMATCH")]
    return f"Correctness guard: {len(mism)} mismatch(es) against eager."


def plot_speedups(rows, impls, path, title, key_of, label_of, baseline="eager"):
    """Bar chart of each impl's speedup over `baseline` (x_eager), one panel per mode."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    others = [i for i in impls if i != baseline]
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    if not modes or not others:
        return False
    n_cfg = max(sum(1 for r in rows if r["mode"] == m and r["impl"] == impls[0]) for m in modes)
    fig, axes = plt.subplots(len(modes), 1, figsize=(max(8, 0.45 * n_cfg + 2), 4.5 * len(modes)),
                             squeeze=False)
    for ax, mode in zip(axes[:, 0], modes):
        keys, idx = [], {}
        for r in rows:
            if r["mode"] != mode:
                continue
            k = key_of(r)
            if k not in keys:
                keys.append(k)
            idx[(k, r["impl"])] = r
        series = {i: [] for i in others}
        for k in keys:
            for i in others:
                r = idx.get((k, i))
                v = r["x_eager"] if r else NAN
                series[i].append(v if v == v else 0.0)
        width = 0.8 / len(others)
        for j, i in enumerate(others):
            xs = [p + (j - (len(others) - 1) / 2) * width for p in range(len(keys))]
            ax.bar(xs, series[i], width, label=i)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels([label_of(k) for k in keys], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel(f"speedup vs {baseline} (×)")
        ax.set_title(f"{title}: {mode}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def official_code():
    """The official BAM / CBAM code (Jongchan/attention-module MODELS/), built from its source text
    by tests/official_code.py: .cbam, .bam (its two broken lines fixed), .model_resnet."""
    tests = os.path.join(ROOT, "tests")
    if tests not in sys.path:
        sys.path.append(tests)
    import official_code as oc
    return oc.load()


def import_op(op):
    """The op's front-end module (attnkernels.<op>), or None while it is not merged."""
    try:
        return importlib.import_module(f"attnkernels.{op}")
    except ImportError:
        return None

"""attnkernels/triton/_launch.py: the cached launch of a compiled Triton kernel must pass the very
arguments, and pick the very compiled kernel, that triton's JIT dispatch would.

Real launches need a GPU, so the checks run in a subprocess without TRITON_INTERPRET, on
benchmarks/triton_dispatch.py's no-launch driver: triton compiles the kernels for sm_90 as on a
GPU, and every launcher call is recorded instead of run. Each check makes the same calls twice,
through triton's JIT and through the Launcher, and compares the records launch by launch
(tensors compared by dtype, shape, strides and 16-byte alignment where they are fresh outputs).
On a GPU the whole suite runs on the Launcher for real as well."""
import json
import os
import sys

import pytest
import torch

from utils import ROOT, once_per_run, run_without_interpreter


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    # one subprocess per run, also with xdist workers
    return once_per_run(tmp_path_factory, "triton_launch", lambda _: run_without_interpreter(__file__))[0]


def test_se_launches_match_the_jit(results):
    assert results["se_cases"] >= 6
    assert results["se_mismatch"] == [], results["se_mismatch"][:3]


def test_cached_launches_skip_the_jit(results):
    # the second identical call of every SE case, and every repeat of a probe, ran no JIT dispatch
    assert results["se_jit_on_repeat"] == 0
    assert results["probe_jit_on_repeat"] == 0


def test_misaligned_tensors_get_their_own_kernel(results):
    # x one element off 16 bytes: triton compiles another kernel, and the Launcher launches it
    assert results["se_misaligned_recompiled"]


def test_specialization_boundaries(results):
    # ints at 1, % 16 and the i32/i64/u64 limits, bool vs int vs float, pointer alignment: each
    # call's recorded kernel is the one the JIT picks for it, whatever the order of the calls
    assert results["probe_calls"] >= 40
    assert results["probe_kernels"] >= 8  # distinct specializations the probes reached
    assert results["probe_mismatch"] == [], results["probe_mismatch"][:3]


def test_launch_hooks_go_through_the_jit(results):
    assert results["hooked_jit_calls"] == results["hooked_launches"] > 0


def test_interpreted_and_foreign_kernels_are_forwarded():
    pytest.importorskip("triton")
    from attnkernels.triton import se as tse
    from attnkernels.triton._launch import launcher
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        assert not launcher(tse._se_squeeze).enabled  # the interpreter: no compiled kernel to keep

    seen = []

    class Fake:
        def __getitem__(self, grid):
            return lambda *a, **k: seen.append((grid, a, k)) or "ran"

    fake = Fake()
    assert launcher(fake) is launcher(fake) and not launcher(fake).enabled
    assert launcher(fake)[(3,)](torch.ones(1), 5, BLOCK=2) == "ran"
    assert seen[0][0] == (3,) and seen[0][1][1] == 5 and seen[0][2] == {"BLOCK": 2}


# ---- the script part (runs without TRITON_INTERPRET) ---------------------------------------
PROBE_INTS = [0, 1, 2, 15, 16, 17, 48, -16, 2**31 - 1, 2**31, -2**31, -2**31 - 1, 2**63 - 16, 2**63]


def _described(v):
    """A launch argument as comparable across two calls that allocated different outputs."""
    if isinstance(v, torch.Tensor):
        return ("tensor", str(v.dtype), tuple(v.shape), v.stride(), v.data_ptr() % 16)
    if isinstance(v, (tuple, list)):
        return tuple(_described(a) for a in v)
    return (type(v).__name__, v) if isinstance(v, (int, float, str, bool, type(None))) else type(v).__name__


def _record(launch):
    """The parts of a launcher call the two paths must agree on: grid, stream, the compiled
    function, its packed metadata and the kernel's arguments (not the launch metadata and hooks,
    which the Launcher passes as None when no hook is installed)."""
    return [_described(v) for v in launch[:6]] + [_described(v) for v in launch[9:]]


def main():
    try:
        import triton
        import triton.language as tl
        from triton.runtime import jit as triton_jit
        sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
        import triton_dispatch
        driver = triton_dispatch.install_no_launch_driver()
        from attnkernels._variant import force_variant
        from attnkernels.triton import se as tse
        from attnkernels.triton._launch import launcher
    except ImportError as e:
        print(f"no triton compiler here: {e}")
        sys.exit(3)

    jit_calls = [0]
    jit_run = triton_jit.JITFunction.run

    def counting_run(self, *args, **kwargs):
        jit_calls[0] += 1
        return jit_run(self, *args, **kwargs)
    triton_jit.JITFunction.run = counting_run

    def launches_of(fn):
        driver.launches.clear()
        jit_calls[0] = 0
        fn()
        return [_record(a) for a in driver.launches], jit_calls[0]

    out = {"se_cases": 0, "se_mismatch": [], "se_jit_on_repeat": 0}

    # 1. the SE launchers, forward and backward, through the JIT and through the Launcher
    g = torch.Generator().manual_seed(0)
    cases = [  # (shape, dtype, channels_last, bias, pool, variant, misaligned x)
        ((1, 256, 56, 56), torch.bfloat16, False, True, "avg", "auto", False),
        ((1, 256, 56, 56), torch.bfloat16, False, True, "avg", "auto", True),
        ((3, 17, 5, 5), torch.float16, False, True, "avgmax", "auto", False),
        ((2, 40, 7, 7), torch.float32, True, False, "avgmax", "pipelined", False),
        ((2, 40, 7, 7), torch.float32, True, False, "avgmax", "pipelined", True),
        ((4, 64, 3, 3), torch.bfloat16, True, True, "avg", "auto", False),
    ]
    functions = {}
    for shape, dtype, cl, bias, pool, variant, misaligned in cases:
        N, C, H, W = shape
        Cr = max(1, C // 8)
        fmt = torch.channels_last if cl else torch.contiguous_format
        x = torch.randn(shape, generator=g).to(dtype).contiguous(memory_format=fmt)
        if misaligned:  # the same values, one element past a 16-byte boundary
            buf = torch.empty(x.numel() + 1, dtype=dtype)[1:]
            x = buf.as_strided(x.shape, x.stride()).copy_(x)
            assert x.data_ptr() % 16
        w1, w2 = torch.randn(Cr, C, generator=g).to(dtype), torch.randn(C, Cr, generator=g).to(dtype)
        b1 = torch.randn(Cr, generator=g).to(dtype) if bias else None
        b2 = torch.randn(C, generator=g).to(dtype) if bias else None
        dy = torch.randn(x.shape, generator=g).to(dtype).contiguous(memory_format=fmt)
        opts = ("silu", "hardsigmoid", pool)

        def call():
            with force_variant(variant):
                saved = tse.se_forward(x, w1, b1, w2, b2, *opts)[1:]
                tse.se_backward(dy, x, w1, w2, *saved, *opts)
        tse.launcher = lambda k: k  # triton's JIT for every launch
        want, _ = launches_of(call)
        tse.launcher = launcher
        launches_of(call)  # first sight of each key: the JIT, then kept
        got, jit_on_repeat = launches_of(call)
        out["se_cases"] += 1
        out["se_jit_on_repeat"] += jit_on_repeat
        if got != want:
            out["se_mismatch"].append({"case": str((shape, dtype, cl, variant, misaligned)),
                                       "got": str(got)[:600], "want": str(want)[:600]})
        functions[(shape, misaligned)] = [r[4] for r in got]
    out["se_misaligned_recompiled"] = (
        functions[((1, 256, 56, 56), False)] != functions[((1, 256, 56, 56), True)]
        and functions[((2, 40, 7, 7), False)] != functions[((2, 40, 7, 7), True)])

    # 2. a probe kernel at triton's specialization boundaries, in a shuffled order
    @triton.jit
    def probe(x_ptr, y_ptr, n, m, f, flag, BLOCK: tl.constexpr):
        i = tl.arange(0, BLOCK)
        v = tl.load(x_ptr + i) * f
        if flag:
            v = v + n + m
        tl.store(y_ptr + i, v.to(y_ptr.dtype.element_ty))

    base32, base16 = torch.randn(64, generator=g), torch.randn(64, generator=g).half()
    calls = []
    for n in PROBE_INTS:
        calls.append(((base32, base32[16:], n, 3, 1.5, True), dict(BLOCK=16)))
    for x, y in ((base32[1:], base32[16:]), (base32, base32[2:]), (base16[8:], base16), (base16[3:], base32)):
        calls.append(((x, y, 16, 16, 1.0, False), dict(BLOCK=16)))
    for flag in (True, 1, 1.0, 0, False):
        calls.append(((base32, base32, 5, 1, 1, flag), dict(BLOCK=16)))
        calls.append(((base32, base32, 5, 1, 1), dict(flag=flag, BLOCK=16)))  # by keyword too
    calls.append(((base32, base32, 5, 1, 1.0, True), dict(BLOCK=32)))
    calls.append(((base32, base32, 5, 1, 1.0, True), dict(BLOCK=16, num_warps=2)))
    order = torch.randperm(len(calls), generator=g).tolist()
    calls = [calls[i] for i in order] * 2  # every call also a repeat
    out.update(probe_calls=0, probe_mismatch=[], probe_jit_on_repeat=0)
    kernels = set()
    for i, (args, kw) in enumerate(calls):
        want, _ = launches_of(lambda: probe[(2,)](*args, **kw))
        got, jit = launches_of(lambda: launcher(probe)[(2,)](*args, **kw))
        if i >= len(calls) // 2:  # the second round: all keys seen
            out["probe_jit_on_repeat"] += jit
        out["probe_calls"] += 1
        kernels.add(got[0][4])
        if got != want:
            out["probe_mismatch"].append({"call": str((args[2:], kw)), "got": str(got), "want": str(want)})
    out["probe_kernels"] = len(kernels)

    # 3. a launch hook installed (a profiler): every launch through the JIT, for its metadata
    from triton import knobs
    hook = lambda metadata: None  # noqa: E731
    chain = knobs.runtime.launch_enter_hook
    if hasattr(chain, "add"):
        chain.add(hook)
    else:
        knobs.runtime.launch_enter_hook = hook
    try:
        _, jit = launches_of(lambda: [launcher(probe)[(2,)](base32, base32, 5, 1, 1.0, True, BLOCK=16)
                                      for _ in range(3)])
    finally:
        if hasattr(chain, "remove"):
            chain.remove(hook)
        else:
            knobs.runtime.launch_enter_hook = chain
    out["hooked_launches"], out["hooked_jit_calls"] = 3, jit
    print(json.dumps(out))


if __name__ == "__main__":
    main()

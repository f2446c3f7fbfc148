"""Compile each op's nvcc translation unit (csrc/se/se_cuda.cu, csrc/sca/sca_cuda.cu) for sm_90
once with `nvcc -Xptxas -v -keep` and read what the GPU will run: every kernel without register
spills, local-memory stack frames or compiler warnings, and (from the kept PTX) the instructions
the kernels' tricks rely on (SE's memory instructions, SCA's tensor-core products). Skipped when
nvcc is missing."""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess

import pytest

from utils import ROOT, once_per_run


def _nvcc():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    cand = os.path.join(home, "bin", "nvcc")
    return cand if os.path.isfile(cand) else shutil.which("nvcc")


pytestmark = pytest.mark.skipif(_nvcc() is None, reason="nvcc not found")


def _compile(tmp_path_factory, op, extra=()):
    """(ptxas -v output, PTX text) of one sm_90 compile of csrc/<op>/<op>_cuda.cu, done once per
    run (xdist workers share it)."""
    def compile_once(out_dir):
        cmd = [_nvcc(), "-std=c++17", "-O3", "-arch=sm_90", "-Xptxas", "-v", "-keep", "--keep-dir", str(out_dir),
               *extra, "-c", os.path.join(ROOT, "csrc", op, f"{op}_cuda.cu"), "-o", str(out_dir / f"{op}_cuda.o")]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        out = r.stdout + r.stderr
        assert r.returncode == 0, out[-5000:]
        ptx = glob.glob(str(out_dir / "*.ptx"))
        assert ptx, f"nvcc -keep left no PTX in {out_dir}"
        with open(ptx[0]) as f:
            return [out, f.read()]
    return tuple(once_per_run(tmp_path_factory, f"{op}_cuda_build", compile_once)[0])


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    return _compile(tmp_path_factory, "se")


@pytest.fixture(scope="module")
def sca_build(tmp_path_factory):
    # the extension's half / bfloat16 flags (torch's): no implicit conversions in the kernels
    return _compile(tmp_path_factory, "sca", ("-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                                              "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__"))


def test_se_kernels_no_spills(build):
    out, _ = build
    assert "warning" not in out.lower(), [l for l in out.splitlines() if "warning" in l.lower()][:10]
    kernels = re.findall(r"Compiling entry function '([^']+)' for 'sm_90'", out)
    regs = re.findall(r"Used (\d+) registers", out)
    assert kernels and len(kernels) == len(regs), out[-3000:]
    # every function: the kernels and the device functions they call (the out-of-line epilogues)
    props = re.findall(r"Function properties for (\S+)\s+(\d+) bytes stack frame, (\d+) bytes spill stores, "
                       r"(\d+) bytes spill loads", out)
    assert set(kernels) <= {name for name, *_ in props}, out[-3000:]
    bad = [(name, s) for name, *s in props if any(int(v) for v in s)]
    assert not bad, f"{len(bad)} functions spill or use a stack frame: {bad[:5]}"
    assert any("epilogue_call" in name for name, *_ in props), "the out-of-line epilogues are gone"
    names = " ".join(kernels)
    for kind in ("se_squeeze_excite_kernel", "se_rescale_kernel", "se_fused_kernel", "se_bwd_reduce_kernel",
                 "se_wgrad_kernel", "se_dx_kernel", "se_pipelined_kernel", "se_bwd_pipelined_kernel"):
        assert kind in names, kind


SCA_KERNELS = ("sca_hidden_kernel", "sca_channel_kernel", "sca_spatial_kernel", "sca_apply_kernel",
               "sca_bwd_reduce_kernel", "sca_softmax_bwd_kernel", "sca_channel_bwd_kernel", "sca_spatial_bwd_kernel",
               "sca_spatial_dw_kernel", "sca_dx_kernel", "sca_hidden_bwd_kernel", "sca_bwd_weights_kernel")


def test_sca_kernels_no_spills(sca_build):
    """Every SCA kernel, in each of the four dtypes, without spills or a stack frame."""
    out, _ = sca_build
    assert "warning" not in out.lower(), [l for l in out.splitlines() if "warning" in l.lower()][:10]
    kernels = re.findall(r"Compiling entry function '([^']+)' for 'sm_90'", out)
    props = re.findall(r"Function properties for (\S+)\s+(\d+) bytes stack frame, (\d+) bytes spill stores, "
                       r"(\d+) bytes spill loads", out)
    assert kernels and set(kernels) <= {name for name, *_ in props}, out[-3000:]
    bad = [(name, v) for name, *v in props if any(int(x) for x in v)]
    assert not bad, f"{len(bad)} functions spill or use a stack frame: {bad[:5]}"
    for kind in SCA_KERNELS:
        for dt in ("IfE", "IdE", "I6__halfE", "I13__nv_bfloat16E"):
            assert any(kind in k and dt in k for k in kernels), (kind, dt)


def test_sca_products_on_tensor_cores(sca_build):
    """The kernels built on gemm_tile multiply fp16 / bf16 on the tensor cores (wmma.mma with
    fp32 accumulators) and fp32 / fp64 with FMAs (no wmma: fp32 products are not TF32)."""
    entries = _entries(sca_build[1])
    gemm = ("sca_spatial_kernel", "sca_spatial_bwd_kernel", "sca_spatial_dw_kernel", "sca_dx_kernel")
    for kind in gemm:
        # (PTX names the f16 form by its D and C types only)
        for dt, mma in (("I6__halfE", "wmma.mma.sync.aligned.row.row.m16n16k16.f32.f32"),
                        ("I13__nv_bfloat16E", "wmma.mma.sync.aligned.row.row.m16n16k16.f32.bf16.bf16.f32"),
                        ("IfE", "fma.rn.f32"), ("IdE", "fma.rn.f64")):
            bodies = [b for k, b in entries.items() if kind in k and dt in k]
            assert len(bodies) == 1, (kind, dt)
            assert mma in bodies[0], (kind, dt, mma)
            if dt in ("IfE", "IdE"):
                assert "wmma" not in bodies[0], (kind, dt)
    others = [k for k in entries if "sca_" in k and not any(g in k for g in gemm)]
    assert others and not any("wmma" in entries[k] for k in others)


def _entries(ptx):
    """kernel name -> its PTX body."""
    parts = re.split(r"^\.visible \.entry (\S+)\(", ptx, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def test_se_kernels_memory_instructions(build):
    """16-byte accesses where the kernels vectorize; the pipelined kernels' second pass loads and
    stores with the evict-first hint (.cs) and reads the in-launch gates through L2 (.cg); the
    split rescale keeps plain 16-byte accesses; the fused kernel's cluster path uses DSMEM."""
    entries = _entries(build[1])
    bf16 = "13__nv_bfloat16"
    checks = {  # kernel (bf16 instantiations) -> PTX that must appear
        "19se_pipelined_kernel": ("ld.global.cs.v4", "st.global.cs.v4", "ld.global.cg.f32", "nanosleep"),
        "23se_bwd_pipelined_kernel": ("ld.global.cs.v4", "st.global.cs.v4", "ld.global.cg.f32", "nanosleep"),
        "17se_rescale_kernel": ("ld.global.v4", "st.global.v4"),
        "24se_squeeze_excite_kernel": ("ld.global.v4",),
        # the cluster path: DSMEM addresses and cluster barriers (sm_90)
        "15se_fused_kernel": ("mapa", "barrier.cluster.arrive", "barrier.cluster.wait", "ld.global.v4"),
    }
    for kind, needles in checks.items():
        bodies = {k: v for k, v in entries.items() if kind in k and bf16 in k}
        assert bodies, f"no bf16 {kind} in the PTX"
        for name, body in bodies.items():
            for needle in needles:
                assert needle in body, f"{name}: no {needle}"
            if kind == "17se_rescale_kernel":
                assert ".cs." not in body, f"{name}: the split rescale should not use evict-first"
    # The squeeze / reduction streams keep several 16-byte loads in flight per lane (kStreamLoads,
    # loads issued before their sums): one load per loop trip left them latency-bound (SASS of the
    # rolled loop: LDG.128, its adds, the branch back). PTX keeps the source's unrolled loads.
    for kind, least in (("24se_squeeze_excite_kernel", 4), ("20se_bwd_reduce_kernel", 4)):
        for name, body in entries.items():
            if kind in name and bf16 in name:
                n_v4 = len(re.findall(r"ld\.global(?:\.nc)?\.v4", body))
                assert n_v4 >= least, f"{name}: {n_v4} 16-byte loads, the unrolled stream has {least}"


def test_one_extension_no_shared_kernel_symbols():
    """attnkernels._C links the nvcc build and the emulated build of the same kernel sources: every
    symbol of that code must sit in its build's namespace (ak::cuda / ak::emu, ak::se::cuda /
    ak::se::emu). One outside them, defined by both objects, would be an ODR violation: the
    linker keeps one definition, and one backend would call the other's code."""
    import attnkernels.cuda as akc

    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm not found")
    mod = akc._load("cuda-emu") or akc._load("cuda")
    if mod is None:
        pytest.skip("attnkernels._C is not built")
    r = subprocess.run([nm, mod.__file__], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    syms = [l.split()[-1] for l in r.stdout.splitlines() if l.strip()]
    # mangled names in namespace ak (functions, guard variables and function-local statics)
    ours = [s for s in syms if re.match(r"_Z(?:GV|TH|TW|Z)*N2ak", s)]
    assert any(re.match(r"_Z(?:GV|TH|TW|Z)*N2ak2se3emu", s) for s in ours), "no emu kernel symbols: nm changed?"
    assert any(re.match(r"_Z(?:GV|TH|TW|Z)*N2ak3sca3emu", s) for s in ours), "no SCA emu kernel symbols"
    # (ak::se::Problem & co., the shared interface types of the <op>_api.h, appear in signatures only)
    stray = [s for s in ours
             if not re.match(r"_Z(?:GV|TH|TW|Z)*N2ak(?:4cuda|3emu|2se4cuda|2se3emu|3sca4cuda|3sca3emu)", s)]
    assert not stray, f"symbols outside the per-build namespaces: {stray[:10]}"
    assert set(mod.backends) <= {"cuda", "cuda-emu"} and mod.backends, mod.backends

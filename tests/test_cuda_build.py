"""Compile each op's nvcc translation unit (csrc/se/se_cuda.cu, csrc/cbam/cbam_cuda.cu) for sm_90
once with `nvcc -Xptxas -v -keep` and read what the GPU will run: every kernel without register
spills, local-memory stack frames or compiler warnings, and (from the kept PTX) the memory
instructions the kernels' tricks rely on. Skipped when nvcc is missing."""
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


def _compile(tmp_path_factory, op):
    """(ptxas -v output, PTX text) of csrc/<op>/<op>_cuda.cu's sm_90 compile, done once per run
    (xdist workers share it)."""
    def compile_once(out_dir):
        cmd = [_nvcc(), "-std=c++17", "-O3", "-arch=sm_90", "-Xptxas", "-v", "-keep", "--keep-dir", str(out_dir),
               "-c", os.path.join(ROOT, "csrc", op, f"{op}_cuda.cu"), "-o", str(out_dir / f"{op}_cuda.o")]
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
def cbam_build(tmp_path_factory):
    return _compile(tmp_path_factory, "cbam")


def _check_no_spills(out):
    """The kernels ptxas compiled, and the properties of every function (the kernels and the device
    functions they call out of line), which must neither spill nor use a stack frame; no warning."""
    assert "warning" not in out.lower(), [l for l in out.splitlines() if "warning" in l.lower()][:10]
    kernels = re.findall(r"Compiling entry function '([^']+)' for 'sm_90'", out)
    regs = re.findall(r"Used (\d+) registers", out)
    assert kernels and len(kernels) == len(regs), out[-3000:]
    props = re.findall(r"Function properties for (\S+)\s+(\d+) bytes stack frame, (\d+) bytes spill stores, "
                       r"(\d+) bytes spill loads", out)
    assert set(kernels) <= {name for name, *_ in props}, out[-3000:]
    bad = [(name, s) for name, *s in props if any(int(v) for v in s)]
    assert not bad, f"{len(bad)} functions spill or use a stack frame: {bad[:5]}"
    return kernels, props


def test_se_kernels_no_spills(build):
    kernels, props = _check_no_spills(build[0])
    assert any("epilogue_call" in name for name, *_ in props), "the out-of-line epilogues are gone"
    names = " ".join(kernels)
    for kind in ("se_squeeze_excite_kernel", "se_rescale_kernel", "se_fused_kernel", "se_bwd_reduce_kernel",
                 "se_wgrad_kernel", "se_dx_kernel", "se_pipelined_kernel", "se_bwd_pipelined_kernel"):
        assert kind in names, kind


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


CBAM_KERNELS = ("cbam_channel_pool_kernel", "cbam_channel_excite_kernel", "cbam_spatial_pool_kernel",
                "cbam_spatial_conv_kernel", "cbam_rescale_kernel", "cbam_bwd_spatial_reduce_kernel",
                "cbam_bwd_spatial_bn_kernel", "cbam_bwd_spatial_conv_kernel", "cbam_bwd_channel_reduce_kernel",
                "cbam_bwd_weights_kernel", "cbam_bwd_dx_kernel")


def test_cbam_kernels_no_spills(cbam_build):
    kernels, props = _check_no_spills(cbam_build[0])
    names = " ".join(kernels)
    for kind in CBAM_KERNELS:
        assert kind in names, kind
    # the last blocks' MLP epilogues, out of line (one copy per dtype, their registers apart)
    for fn in ("channel_layer1", "channel_mlp_bwd"):
        assert any(fn in name for name, *_ in props), f"{fn} is no longer out of line"


def test_cbam_kernels_memory_instructions(cbam_build):
    """16-byte accesses in the passes that stream the feature map (bf16 instantiations, both layouts):
    the reductions' loads of x (and dy), the element-wise passes' loads and stores, and the
    backward's per-pixel coefficients (one 16-byte load a pixel, float accumulators)."""
    entries = _entries(cbam_build[1])
    checks = {  # kernel (mangled name part) -> PTX regexes that must match in its bf16 bodies
        "24cbam_channel_pool_kernel": (r"ld\.global(?:\.nc)?\.v4",),
        "24cbam_spatial_pool_kernel": (r"ld\.global(?:\.nc)?\.v4",),
        "19cbam_rescale_kernel": (r"ld\.global(?:\.nc)?\.v4", r"st\.global\.v4"),
        "30cbam_bwd_spatial_reduce_kernel": (r"ld\.global(?:\.nc)?\.v4",),
        "30cbam_bwd_channel_reduce_kernel": (r"ld\.global(?:\.nc)?\.v4", r"ld\.global(?:\.nc)?\.v4\.f32"),
        "18cbam_bwd_dx_kernel": (r"ld\.global(?:\.nc)?\.v4", r"st\.global\.v4"),
    }
    for kind, needles in checks.items():
        bodies = {k: v for k, v in entries.items() if kind in k and "13__nv_bfloat16" in k}
        assert len(bodies) == 2, f"bf16 {kind}: {sorted(bodies)}"  # NCHW and channels_last
        for name, body in bodies.items():
            for needle in needles:
                assert re.search(needle, body), f"{name}: no {needle}"


def test_one_extension_no_shared_kernel_symbols():
    """attnkernels._C links the nvcc build and the emulated build of the same kernel sources: every
    symbol of that code must sit in its build's namespace (ak::cuda / ak::emu, ak::<op>::cuda /
    ak::<op>::emu). One outside them, defined by both objects, would be an ODR violation: the
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
    # (ak::<op>::Problem & co., the shared interface types of the ops' api headers, appear in
    # signatures only)
    stray = [s for s in ours if not re.match(r"_Z(?:GV|TH|TW|Z)*N2ak(?:\d+[a-z_]+)?(?:4cuda|3emu)", s)]
    assert not stray, f"symbols outside the per-build namespaces: {stray[:10]}"
    assert set(mod.backends) <= {"cuda", "cuda-emu"} and mod.backends, mod.backends

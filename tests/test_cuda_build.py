"""Compile each op's nvcc translation unit (csrc/<op>/<op>_cuda.cu) for sm_90 once with `nvcc
-Xptxas -v -keep` and read what the GPU will run: every kernel without register spills, local-memory
stack frames or compiler warnings, and (from the kept PTX) the instructions the kernels' tricks rely
on (the 16-byte memory instructions of the streaming passes, SCA's tensor-core products). Skipped
when nvcc is missing."""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

import pytest

from utils import ROOT, once_per_run


def _nvcc():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    cand = os.path.join(home, "bin", "nvcc")
    return cand if os.path.isfile(cand) else shutil.which("nvcc")


pytestmark = pytest.mark.skipif(_nvcc() is None, reason="nvcc not found")


# torch's CUDAExtension compiles every .cu file with these: no implicit half / bfloat16 conversions
_TORCH_NVCC_FLAGS = ("-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                     "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__")


def _build(tmp_path_factory, op):
    """(ptxas -v output, PTX text) of one sm_90 compile of op's TU, as the extension compiles it,
    done once per run (xdist workers share it)."""
    def compile_once(out_dir):
        cmd = [_nvcc(), "-std=c++17", "-O3", "-arch=sm_90", "-Xptxas", "-v", "-keep", "--keep-dir", str(out_dir),
               *_TORCH_NVCC_FLAGS, "-c", os.path.join(ROOT, "csrc", op, f"{op}_cuda.cu"), "-o", str(out_dir / f"{op}_cuda.o")]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        out = r.stdout + r.stderr
        assert r.returncode == 0, out[-5000:]
        ptx = glob.glob(str(out_dir / "*.ptx"))
        assert ptx, f"nvcc -keep left no PTX in {out_dir}"
        with open(ptx[0]) as f:
            return [out, f.read()]
    return tuple(once_per_run(tmp_path_factory, f"{op}_cuda_build", compile_once)[0])


@pytest.fixture(scope="module")
def sca_build(tmp_path_factory):
    return _build(tmp_path_factory, "sca")


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    return _build(tmp_path_factory, "se")


@pytest.fixture(scope="module")
def bam_build(tmp_path_factory):
    return _build(tmp_path_factory, "bam")


@pytest.fixture(scope="module")
def cbam_build(tmp_path_factory):
    return _build(tmp_path_factory, "cbam")


def _no_spills(out):
    """The kernel names of a -Xptxas -v log, after checking that no function spills, uses a stack
    frame or drew a warning."""
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
    return kernels, props


def test_se_kernels_no_spills(build):
    out, _ = build
    kernels, props = _no_spills(out)
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


def _with_needles(entries, checks, dtype):
    """The (name, PTX body) of every kernel of `dtype` whose name contains a key of `checks`, after
    checking that each has its key's needles (and that each key names at least one)."""
    found = []
    for kind, needles in checks.items():
        bodies = {k: v for k, v in entries.items() if kind in k and dtype in k}
        assert bodies, f"no {dtype} {kind} in the PTX"
        for name, body in bodies.items():
            for needle in needles:
                assert needle in body, f"{name}: no {needle}"
            found.append((name, body))
    return found


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
    for name, body in _with_needles(entries, checks, bf16):
        if "17se_rescale_kernel" in name:
            assert ".cs." not in body, f"{name}: the split rescale should not use evict-first"
    # The squeeze / reduction streams keep several 16-byte loads in flight per lane (kStreamLoads,
    # loads issued before their sums): one load per loop trip left them latency-bound (SASS of the
    # rolled loop: LDG.128, its adds, the branch back). PTX keeps the source's unrolled loads.
    for kind, least in (("24se_squeeze_excite_kernel", 4), ("20se_bwd_reduce_kernel", 4)):
        for name, body in entries.items():
            if kind in name and bf16 in name:
                n_v4 = len(re.findall(r"ld\.global(?:\.nc)?\.v4", body))
                assert n_v4 >= least, f"{name}: {n_v4} 16-byte loads, the unrolled stream has {least}"


def test_bam_kernels_no_spills(bam_build):
    kernels, props = _no_spills(bam_build[0])
    assert any("epilogue" in name for name, *_ in props), "the out-of-line epilogues are gone"
    names = " ".join(kernels)
    for kind in ("bam_channel_pool_kernel", "bam_bn_relu_fc1_kernel", "bam_gate_kernel", "bam_bwd_reduce_kernel",
                 "bam_bwd_mlp_kernel", "bam_bwd_dx_kernel"):
        assert kind in names, kind


def test_bam_kernels_memory_instructions(bam_build):
    """16-byte accesses on the 16-byte paths (the gate and dx passes, the pooling's squeeze, the
    backward's tiles with all their loads issued before the sums), the in-launch partials read
    through L2 (.cg), and no float atomics anywhere: every sum in a fixed order (determinism);
    the only atomics are the arrival counters'."""
    ptx = bam_build[1]
    entries = _entries(ptx)
    bf16 = "13__nv_bfloat16"
    checks = {  # kernel (bf16 instantiations; the reduce kernel's 16-byte one) -> PTX that must appear
        "15bam_gate_kernel": ("ld.global.v4", "st.global.v4"),
        "17bam_bwd_dx_kernel": ("ld.global.v4", "st.global.v4"),
        "23bam_channel_pool_kernel": ("ld.global.v4", "atom.global.add.u32"),
        "21bam_bwd_reduce_kernelI13__nv_bfloat16Lb0ELi8E": ("ld.global.v4", "atom.global.add.u32"),
        "21bam_bwd_reduce_kernelI13__nv_bfloat16Lb1ELi8E": ("ld.global.v4",),
        # rows of 4 x 2-byte alignment (14 x 14 maps): 8-byte loads
        "21bam_bwd_reduce_kernelI13__nv_bfloat16Lb0ELi4E": ("ld.global.v4.u16",),
    }
    _with_needles(entries, checks, bf16)
    for name, body in entries.items():
        if "bam_bwd_reduce_kernel" in name and "Li8E" in name:  # two vectors of x and of dy a lane, together
            n_v4 = len(re.findall(r"ld\.global(?:\.nc)?\.v4", body))
            assert n_v4 >= 4, f"{name}: {n_v4} 16-byte loads"
    assert "ld.global.cg.f32" in ptx, "the epilogues read other blocks' partials through L2"
    atomics = set(re.findall(r"\b((?:atom|red)\.[\w.]+)", ptx))
    assert atomics and all(a.endswith((".u32", ".b32", ".s32")) for a in atomics), atomics


CBAM_KERNELS = ("cbam_channel_pool_kernel", "cbam_channel_excite_kernel", "cbam_spatial_pool_kernel",
                "cbam_spatial_conv_kernel", "cbam_rescale_kernel", "cbam_bwd_spatial_reduce_kernel",
                "cbam_bwd_spatial_bn_kernel", "cbam_bwd_spatial_conv_kernel", "cbam_bwd_channel_reduce_kernel",
                "cbam_bwd_weights_kernel", "cbam_bwd_dx_kernel")


def test_cbam_kernels_no_spills(cbam_build):
    kernels, props = _no_spills(cbam_build[0])
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
    ak::<op>::emu for each op of setup.py's OPS). One outside them, defined by both objects, would
    be an ODR violation: the linker keeps one definition, and one backend would call the other's
    code."""
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
    ops = subprocess.run([sys.executable, "setup.py", "ops"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120).stdout.split()
    assert "se" in ops, ops
    per_op = "|".join(f"{len(op)}{op}(?:4cuda|3emu)" for op in ops)
    for op in ops:
        assert any(re.match(rf"_Z(?:GV|TH|TW|Z)*N2ak{len(op)}{op}3emu", s) for s in ours), \
            f"no {op} emu kernel symbols: nm changed?"
    # (ak::se::Problem & co., the shared interface types of <op>_api.h, appear in signatures only)
    stray = [s for s in ours if not re.match(rf"_Z(?:GV|TH|TW|Z)*N2ak(?:4cuda|3emu|{per_op})", s)]
    assert not stray, f"symbols outside the per-build namespaces: {stray[:10]}"
    assert set(mod.backends) <= {"cuda", "cuda-emu"} and mod.backends, mod.backends

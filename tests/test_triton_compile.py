"""Compile the SE Triton kernels ahead of time for sm_90 (no GPU needed): catches what the
interpreter accepts but the compiler rejects, checks that the kernels streaming x use 16-byte
vector loads/stores (with the evict-first hint in the pipelined kernel's second pass) and that
no kernel spills registers (cuobjdump's resource usage of each cubin). The kernels must be imported without TRITON_INTERPRET, so the tests run
this file as a script in a subprocess (one run, all checks)."""
import json
import os
import re
import subprocess
import sys

import pytest

from utils import once_per_run, run_without_interpreter


@pytest.fixture(scope="module")
def aot_results(tmp_path_factory):
    # one subprocess per run, also with xdist workers
    return once_per_run(tmp_path_factory, "triton_compile", lambda _: run_without_interpreter(__file__))[0]


def test_se_kernels_compile_for_sm90(aot_results):
    assert aot_results["compiled"] >= 20


# Stack bytes a kernel may have: a few words are ptxas parking loop invariants (triton 3.6's
# ptxas keeps 3 values of the fp32 channels_last pipelined backward there, 16 B read back by 3
# load instructions); register pressure shows as hundreds (that kernel at maxnreg=32:
# 264 B).
STACK_SLACK = 32


def test_se_kernels_do_not_spill(aot_results):
    if aot_results["spills"] is None:
        pytest.skip("no cuobjdump next to triton's ptxas")
    over = {k: v for k, v in aot_results["spills"].items() if v[0] > STACK_SLACK or v[1] > 0}
    assert over == {}, f"kernels spilling registers (stack/local bytes): {over}"


def test_se_batched_kernels_keep_to_128_registers(aot_results):
    """The batched variant's tl.dot holds a weight block's operands in registers: with 2048-element
    blocks some bf16 kernels took 160-168 (3 programs an SM); its plan's 1024-element blocks keep
    them at or under 128 (4 programs of 4 warps an SM). fp32 without HW splits took 124-142 while
    the group's sums were carried across its sample loop; they are parked in the split workspace
    now (benchmarks/NOTES.md, "Triton `batched`")."""
    if aot_results["batched_regs"] is None:
        pytest.skip("no cuobjdump next to triton's ptxas")
    regs = aot_results["batched_regs"]
    assert any("bf16" in k for k in regs) and any("fp32" in k for k in regs), f"batched kernels missing: {regs}"
    over = {k: v for k, v in regs.items() if v > 128}
    assert over == {}, f"batched kernels over 128 registers a thread: {over}"


def test_se_streaming_kernels_use_16_byte_vectors(aot_results):
    for name, ok in aot_results["vector"].items():
        assert ok, f"{name} lost its 16-byte vector loads/stores"


# ---- the script part (runs without TRITON_INTERPRET) ---------------------------------------
# Tensors of x's dtype (everything else is an fp32 vector or an int32 counter).
X_LIKE = {"x_ptr", "y_ptr", "dy_ptr", "dx_ptr", "w1_ptr", "w2_ptr", "b1_ptr", "b2_ptr",
          "dw1_ptr", "dw2_ptr", "db1_ptr", "db2_ptr"}
# Integer arguments the launcher's specialization marks divisible by 16 at ResNet shapes.
DIV16 = {"C", "HW", "stride_c", "stride_hw", "hw_per_split", "Cr"}


def compile_kernel(fn, dtype, constexprs, vectors="*fp32", x_like=X_LIKE, scalars=None, div16=DIV16):
    """fn compiled for sm_90: pointers named in x_like of `dtype`, counter_ptr int32, the other
    pointers `vectors`; scalars: {name: type} of the non-int32 scalars (else int32); integers in
    div16 marked divisible by 16."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    signature, attrs = {}, {}
    for i, p in enumerate(fn.params):
        name = p.name
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = dtype if name in x_like else ("*i32" if name == "counter_ptr" else vectors)
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif scalars and name in scalars:
            signature[name] = scalars[name]
        else:
            signature[name] = "i32"
            if name in div16:
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})


def cuobjdump_path():
    """triton's own cuobjdump (next to its ptxas), or None."""
    import triton
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return path if os.access(path, os.X_OK) else None


def cuobjdump_of(kernel, cuobjdump, flag):
    """cuobjdump's output for the compiled kernel's cubin (flag: -res-usage, -sass)."""
    import tempfile
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        return subprocess.run([cuobjdump, flag, f.name], capture_output=True, text=True).stdout


def resource_usage(kernel, cuobjdump):
    """(registers, stack bytes, local bytes) of the kernel's cubin: stack or local memory beyond a
    few words is ptxas spilling registers."""
    out = cuobjdump_of(kernel, cuobjdump, "-res-usage")
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", out)
    assert m, f"no resource usage in cuobjdump's output: {out[-500:]}"
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def main():
    try:
        import triton.language as tl
        from triton.compiler import ASTSource  # noqa: F401
        import attnkernels.triton.se as se
    except ImportError as e:
        print(f"no ahead-of-time triton compile here: {e}")
        sys.exit(3)
    cuobjdump = cuobjdump_path()
    count, vector, spills, batched_regs = 0, {}, {}, {}

    def check_spills(kernel, name):
        regs, *used = resource_usage(kernel, cuobjdump) if cuobjdump else (0, 0, 0)
        if any(used):
            spills[name] = used
        if name.startswith("batched"):
            batched_regs[name] = regs
    for dtype in ("*bf16", "*fp32"):
        # the last: the single-layer form (ESE: no fc1, no activation)
        for act, gate, fc1 in (("relu", "sigmoid", True), ("gelu", "hardsigmoid", True), ("silu", "sigmoid", True),
                               ("hardswish", "hardsigmoid", True), ("identity", "hardsigmoid", False)):
            for cl in (False, True):
                tile = dict(BLOCK_C=64, BLOCK_HW=32, stride_c=1) if cl else dict(BLOCK_C=4, BLOCK_HW=512, stride_hw=1)
                tile["BLOCK_R"] = 16
                acc = dict(ACC=tl.float32)
                kernels = {
                    "squeeze": (se._se_squeeze, dict(HAS_B1=fc1, POOL_MAX=True, SPLIT=True, BLOCK_ROWS=8, FC1=fc1)),
                    "rescale": (se._se_excite_rescale, dict(HAS_B2=True, ACT=act, GATE=gate)),
                    "bwd_reduce": (se._se_bwd_reduce, dict(ACT=act, GATE=gate, POOL_MAX=True, SPLIT=False, BLOCK_ROWS=8)),
                    "bwd_dx": (se._se_bwd_dx, dict(POOL_MAX=True, FC1=fc1)),
                    "pipelined": (se._se_pipelined, dict(HAS_B1=fc1, HAS_B2=True, ACT=act, GATE=gate, POOL_MAX=True,
                                                         SPLIT=True, BLOCK_ROWS=8, SPIN_CAP=0, FC1=fc1)),
                    "bwd_pipelined": (se._se_bwd_pipelined, dict(ACT=act, GATE=gate, POOL_MAX=True, SPLIT=True,
                                                                 BLOCK_ROWS=8, SPIN_CAP=0, FC1=fc1)),
                }
                kernels = {name: (fn, {**flags, "GROUP": 1}) for name, (fn, flags) in kernels.items()}
                if act in ("relu", "identity"):  # variant "batched": groups of 8 samples, tiles as
                    # _plan_for sizes them at ResNet-50 stage 4 (the layer products are tl.dot's, whose
                    # sums need 16 or more); the reductions with HW splits in bf16, without in fp32
                    batched = dict(GROUP=8, BLOCK_C=64, BLOCK_HW=32, BLOCK_R=16) if cl else \
                        dict(GROUP=8, BLOCK_C=32, BLOCK_HW=64, BLOCK_R=32)
                    for name in ("squeeze", "rescale", "bwd_reduce", "bwd_dx"):
                        fn, flags = kernels[name]
                        if "SPLIT" in flags:
                            flags = {**flags, "SPLIT": dtype == "*bf16"}
                        kernels["batched " + name] = (fn, {**flags, **batched})
                for name, (fn, flags) in kernels.items():
                    k = compile_kernel(fn, dtype, {**tile, **acc, **flags})
                    count += 1
                    check_spills(k, f"{name} {dtype} {act}/{gate}{'' if fc1 else ' single-layer'} "
                                    f"{'cl' if cl else 'nchw'}")
                    if dtype == "*bf16":
                        ptx = k.asm["ptx"]
                        # the reductions' streams: 16-byte asynchronous copies, software-pipelined
                        # (STREAM_STAGES); the elementwise passes: 16-byte loads and stores
                        async16 = bool(re.search(r"cp\.async\.cg\.shared\.global\S*\s+\[[^]]+\],\s*\[[^]]+\],\s*(?:16|0x10)\b", ptx))
                        v4 = "ld.global.v4" in ptx or "ld.global.nc.v4" in ptx
                        if name.split()[-1] in ("squeeze", "bwd_reduce"):
                            ok = async16
                        elif "pipelined" in name:  # both; the second pass's last reads and stores evict-first
                            ok = async16 and bool(re.search(r"ld\.global\.L1::evict_first\S*\.v4", ptx))
                            ok = ok and bool(re.search(r"st\.global\.L1::evict_first\S*\.v4", ptx))
                        else:
                            ok = v4 and "st.global.v4" in ptx
                        key = f"{name} {'cl' if cl else 'nchw'}"
                        vector[key] = vector.get(key, True) and ok  # in every act/gate/form
            k = compile_kernel(se._se_bwd_weights, dtype, dict(ACT=act, ACC=tl.float32, BLOCK_A=32, BLOCK_B=16))
            count += 1
            check_spills(k, f"bwd_weights {dtype} {act}")
    # float64 (gradcheck runs the variants on a GPU too: N = 3, groups of 2): batched's tl.dot of fp64
    # operands (DMMA)
    for cl in (False, True):
        tile = dict(GROUP=2, BLOCK_C=16, BLOCK_HW=64, BLOCK_R=16, ACC=tl.float64, **({"stride_c": 1} if cl else {"stride_hw": 1}))
        for fn, flags in ((se._se_squeeze, dict(HAS_B1=True, POOL_MAX=True, SPLIT=True, BLOCK_ROWS=8, FC1=True)),
                          (se._se_excite_rescale, dict(HAS_B2=True, ACT="silu", GATE="sigmoid")),
                          (se._se_bwd_reduce, dict(ACT="silu", GATE="sigmoid", POOL_MAX=True, SPLIT=False, BLOCK_ROWS=8)),
                          (se._se_bwd_dx, dict(POOL_MAX=True, FC1=True))):
            compile_kernel(fn, "*fp64", {**tile, **flags}, vectors="*fp64")
            count += 1
    print(json.dumps({"compiled": count, "vector": vector, "spills": spills if cuobjdump else None,
                      "batched_regs": batched_regs if cuobjdump else None}))


if __name__ == "__main__":
    main()

"""Compile BAM's Triton kernels ahead of time for sm_90 (no GPU needed), as test_triton_compile.py
does SE's: what the interpreter accepts but the compiler rejects; the feature-map passes' 16-byte
vectors (the reductions' software-pipelined asynchronous copies, the elementwise passes' evict-first
loads and stores); no register spills. The kernels must be imported without TRITON_INTERPRET, so
the tests run this file as a script in a subprocess (one run, all checks)."""
import json
import re
import sys

import pytest

from utils import once_per_run, run_without_interpreter


@pytest.fixture(scope="module")
def aot_results(tmp_path_factory):
    return once_per_run(tmp_path_factory, "bam_triton_compile", lambda _: run_without_interpreter(__file__))[0]


def test_bam_kernels_compile_for_sm90(aot_results):
    assert aot_results["compiled"] == 2 * 2 * 5 + 5


def test_bam_kernels_do_not_spill(aot_results):
    from test_triton_compile import STACK_SLACK
    if aot_results["spills"] is None:
        pytest.skip("no cuobjdump next to triton's ptxas")
    over = {k: v for k, v in aot_results["spills"].items() if v[0] > STACK_SLACK or v[1] > 0}
    assert over == {}, f"kernels spilling registers (stack/local bytes): {over}"


def test_bam_feature_map_passes_use_16_byte_vectors(aot_results):
    assert set(aot_results["vector"]) == {f"{k} {lay}" for k in ("channel_pool", "gate", "bwd_reduce", "bwd_dx")
                                          for lay in ("nchw", "cl")}
    for name, ok in aot_results["vector"].items():
        assert ok, f"{name} lost its 16-byte vector loads/stores"


# ---- the script part (runs without TRITON_INTERPRET) ---------------------------------------
# Tensors of x's dtype (the rest: accumulation-dtype vectors, int32 counters).
X_LIKE = {"x_ptr", "y_ptr", "dy_ptr", "dx_ptr", "ms_ptr", "dms_ptr", "w0_ptr", "w1_ptr", "b0_ptr", "b1_ptr",
          "dw0_ptr", "dw1_ptr", "db0_ptr", "db1_ptr"}
SCALARS = {"eps_hi": "fp32", "eps_lo": "fp32"}


def main():
    try:
        import triton.language as tl
        import attnkernels.triton.bam as bam
        from test_triton_compile import compile_kernel, cuobjdump_path, resource_usage
    except ImportError as e:
        print(f"no ahead-of-time triton compile here: {e}")
        sys.exit(3)
    cuobjdump = cuobjdump_path()
    count, vector, spills = 0, {}, {}

    def compile_one(fn, dtype, constexprs, name, vectors="*fp32"):
        nonlocal count
        k = compile_kernel(fn, dtype, constexprs, vectors=vectors, x_like=X_LIKE, scalars=SCALARS)
        count += 1
        if cuobjdump:
            _, *used = resource_usage(k, cuobjdump)
            if any(used):
                spills[name] = used
        return k

    for dtype in ("*bf16", "*fp32"):
        for cl in (False, True):
            # the tiles bam._plan_for picks at ResNet-50 shapes (C >= 64, HW >= 64; Cr 16-64)
            tile = dict(BLOCK_C=64, BLOCK_HW=32, stride_c=1) if cl else dict(BLOCK_C=32, BLOCK_HW=64, stride_hw=1)
            tile.update(BLOCK_R=32, ACC=tl.float32)
            lay = "cl" if cl else "nchw"
            kernels = {
                "channel_pool": (bam._bam_channel_pool, dict(HAS_B0=True, BATCH=True, SPLIT=True, BLOCK_ROWS=32)),
                "gate": (bam._bam_gate, dict(HAS_B1=True, HAS_AFFINE=True, PROD=True)),
                "bwd_reduce": (bam._bam_bwd_reduce, dict(HAS_AFFINE=True, BATCH=True, PROD=True, SPLIT=True,
                                                         MULTI_CB=True, BLOCK_ROWS=32, BLOCK_ROWS_HW=32)),
                "bwd_dx": (bam._bam_bwd_dx, dict(PROD=False)),
            }
            for name, (fn, flags) in kernels.items():
                k = compile_one(fn, dtype, {**tile, **flags}, f"{name} {dtype} {lay}")
                if dtype == "*bf16":
                    ptx = k.asm["ptx"]
                    if name in ("channel_pool", "bwd_reduce"):  # streams: 16-byte asynchronous copies
                        ok = bool(re.search(r"cp\.async\.cg\.shared\.global\S*\s+\[[^]]+\],\s*\[[^]]+\],\s*(?:16|0x10)\b",
                                            ptx))
                    else:  # x's (dy's) one read and y's (dx's) store: evict-first, 16 bytes
                        ok = bool(re.search(r"ld\.global\.L1::evict_first\S*\.v4", ptx)) and \
                            bool(re.search(r"st\.global\.L1::evict_first\S*\.v4", ptx))
                    vector[f"{name} {lay}"] = ok
            compile_one(bam._bam_bwd_mlp, dtype, dict(ACC=tl.float32, BLOCK_A=32, BLOCK_B=16), f"bwd_mlp {dtype} {lay}")
    # float64 (gradcheck runs on a GPU too), eval-mode BatchNorm without affine, combine "sum"
    tile = dict(BLOCK_C=32, BLOCK_HW=64, BLOCK_R=32, ACC=tl.float64, stride_hw=1)
    for name, fn, flags in (("channel_pool", bam._bam_channel_pool, dict(HAS_B0=False, BATCH=False, SPLIT=False,
                                                                           BLOCK_ROWS=32)),
                            ("gate", bam._bam_gate, dict(HAS_B1=False, HAS_AFFINE=False, PROD=False)),
                            ("bwd_reduce", bam._bam_bwd_reduce, dict(HAS_AFFINE=False, BATCH=False, PROD=False,
                                                                     SPLIT=False, MULTI_CB=False, BLOCK_ROWS=32,
                                                                     BLOCK_ROWS_HW=32)),
                            ("bwd_dx", bam._bam_bwd_dx, dict(PROD=True))):
        compile_one(fn, "*fp64", {**tile, **flags}, f"{name} fp64", vectors="*fp64")
    compile_one(bam._bam_bwd_mlp, "*fp64", dict(ACC=tl.float64, BLOCK_A=32, BLOCK_B=16), "bwd_mlp fp64",
                vectors="*fp64")
    print(json.dumps({"compiled": count, "vector": vector, "spills": spills if cuobjdump else None}))


if __name__ == "__main__":
    main()

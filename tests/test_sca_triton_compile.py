"""Compile the SCA Triton kernels ahead of time for sm_90 (no GPU needed), in every dtype and
order's flags: catches what the interpreter accepts but the compiler rejects (tl.dot's operand and
accumulator types, fp64 products, constexpr branches), checks that the products are tensor-core
instructions (wgmma / mma for fp16 / bf16; fp64 DMMA) and that no kernel spills registers. Runs
this file as a script without TRITON_INTERPRET, like test_triton_compile.py."""
import json
import sys

import pytest

from utils import once_per_run, run_without_interpreter


@pytest.fixture(scope="module")
def aot_results(tmp_path_factory):
    return once_per_run(tmp_path_factory, "sca_triton_compile", lambda _: run_without_interpreter(__file__))[0]


def test_sca_kernels_compile_for_sm90(aot_results):
    assert aot_results["compiled"] >= 40, aot_results


def test_sca_products_use_tensor_cores(aot_results):
    """The (locations x C) x (C x k) products and their backward ones: mma / wgmma in bf16 / fp16,
    DMMA in fp64 (never FMA loops), where this Triton emits DMMA for a plain fp64 tl.dot (3.8 does;
    3.6, the GPU machine's, lowers every fp64 dot to FMA: nothing a kernel can change)."""
    missing = {k: v for k, v in aot_results["mma"].items() if not v}
    assert not missing, f"products without tensor-core instructions: {sorted(missing)}"


def test_sca_kernels_do_not_spill(aot_results):
    if aot_results["spills"] is None:
        pytest.skip("no cuobjdump next to triton's ptxas")
    over = {k: v for k, v in aot_results["spills"].items() if v[0] > 32 or v[1] > 0}
    assert over == {}, f"kernels spilling registers (stack/local bytes): {over}"


# ---- the script part (runs without TRITON_INTERPRET) ---------------------------------------
# per kernel: its pointers of V's dtype (the rest are acc-dtype vectors, counters int32)
FEATURE_PTRS = {
    "_sca_hidden": {"h_ptr", "whc_ptr", "bc_ptr", "whs_ptr", "bs_ptr"},
    "_sca_channel": {"v_in_ptr", "wc_ptr", "uc_ptr"},
    "_sca_spatial": {"v_ptr", "ws_w_ptr", "us_ptr"},
    "_sca_apply": {"v_ptr", "x_ptr"},
    "_sca_bwd_reduce": {"dx_ptr", "v_ptr"},
    "_sca_softmax_bwd": set(),
    "_sca_channel_bwd": {"wc_ptr", "uc_ptr"},
    "_sca_spatial_bwd": {"v_ptr", "ws_w_ptr", "us_ptr", "dp_ptr"},
    "_sca_spatial_dw": {"dp_ptr", "v_ptr", "ws_w_ptr", "dws_ptr"},
    "_sca_dx": {"dx_ptr", "dv_out_ptr", "dp_ptr", "ws_w_ptr"},
    "_sca_hidden_bwd": {"whc_ptr", "whs_ptr", "dh_ptr"},
    "_sca_bwd_weights": {"h_ptr", "dwhc_ptr", "dbc_ptr", "dwhs_ptr", "dbs_ptr", "duc_ptr", "dwc_ptr", "dus_ptr",
                         "dcc_ptr", "dcs_ptr"},
}
# integers the launcher's specialization marks divisible by 16 at the official shapes (C = 2048,
# k = 512, d = 1000 is not; HW = 49 is not)
DIV16 = {"C", "k", "k_c", "k_s", "stride_hw"}


def _fp64_dot_probe(a_ptr, b_ptr, c_ptr):
    """A plain 16 x 16 fp64 product: does this Triton lower fp64 tl.dot to DMMA at all?"""
    i = tl.arange(0, 16)
    a = tl.load(a_ptr + i[:, None] * 16 + i[None, :])
    b = tl.load(b_ptr + i[:, None] * 16 + i[None, :])
    c = tl.dot(a, b, tl.zeros([16, 16], dtype=tl.float64), out_dtype=tl.float64)
    tl.store(c_ptr + i[:, None] * 16 + i[None, :], c)


DMMA = "mma.sync.aligned.m8n8k4.row.col.f64"
tl = None  # triton.language once main imports it (the probe's global)


def main():
    global tl
    try:
        import triton.language as tl
        from triton.compiler import ASTSource  # noqa: F401
        import attnkernels.triton.sca as sca
        from test_triton_compile import compile_kernel, cuobjdump_path, resource_usage
    except ImportError as e:
        print(f"no ahead-of-time triton compile here: {e}")
        sys.exit(3)
    import triton
    cuobjdump = cuobjdump_path()
    probe = compile_kernel(triton.jit(_fp64_dot_probe), "*fp64", {}, vectors="*fp64")
    fp64_dmma = DMMA in probe.asm["ptx"]
    count, spills, mma = 0, {}, {}
    import torch
    for dtype in ("*bf16", "*fp16", "*fp32", "*fp64"):
        tdtype = {"*bf16": torch.bfloat16, "*fp16": torch.float16, "*fp32": torch.float32, "*fp64": torch.float64}
        gemm = dict(zip(("BLOCK_L", "BLOCK_C", "BLOCK_K"), sca.gemm_tiles(tdtype[dtype])))
        acc = dict(ACC=tl.float64 if dtype == "*fp64" else tl.float32)
        prec = "tf32" if dtype == "*fp32" else "ieee"
        for order in ("cs", "sc", "c", "s"):
            has_c, has_s, both = "c" in order, "s" in order, len(order) == 2
            kernels = {
                "hidden": (sca._sca_hidden, dict(HAS_C=has_c, HAS_S=has_s, BLOCK_K=64, BLOCK_D=32)),
                "apply": (sca._sca_apply, dict(HAS_C=has_c, HAS_S=has_s, BLOCK_C=4, BLOCK_HW=512)),
                "bwd_reduce": (sca._sca_bwd_reduce, dict(LOC=has_s, CH=has_c, LOC_BETA=both, CH_ALPHA=both,
                                                         MODE_DV=False, BLOCK_C=64, BLOCK_HW=32)),
                "dx": (sca._sca_dx, dict(ORDER=order, PREC=prec, **gemm)),
                "hidden_bwd": (sca._sca_hidden_bwd, dict(HAS_C=has_c, HAS_S=has_s, BLOCK_K=64, BLOCK_D=32,
                                                         BLOCK_ROWS=8)),
                "bwd_weights": (sca._sca_bwd_weights, dict(HAS_C=has_c, HAS_S=has_s, BLOCK_A=32, BLOCK_B=16,
                                                           BLOCK_K=256, BLOCK_ROWS=8)),
            }
            if has_c:
                kernels["channel"] = (sca._sca_channel, dict(WEIGHTED=order == "sc", SPLIT=True, BLOCK_C=64,
                                                             BLOCK_HW=32, BLOCK_K=32, BLOCK_ROWS=32))
                kernels["channel_bwd"] = (sca._sca_channel_bwd, dict(BLOCK_C=64, BLOCK_K=32))
                kernels["softmax_bwd"] = (sca._sca_softmax_bwd, dict(HAS_R2=order == "cs", HAS_EXT=True, BLOCK=1024,
                                                                     BLOCK_ROWS=2))
            if has_s:
                fold = order == "cs"
                kernels["spatial"] = (sca._sca_spatial, dict(FOLD_BETA=fold, PREC=prec, **gemm))
                kernels["spatial_bwd"] = (sca._sca_spatial_bwd, dict(FOLD_BETA=fold, ROWS=True, PREC=prec, **gemm))
                kernels["spatial_dw"] = (sca._sca_spatial_dw, dict(FOLD_BETA=fold, FIRST=False, LAST=True, PREC=prec,
                                                                   **gemm))
            if order == "sc":
                kernels["bwd_reduce dv"] = (sca._sca_bwd_reduce, dict(LOC=True, CH=False, LOC_BETA=False,
                                                                      CH_ALPHA=False, MODE_DV=True, BLOCK_C=4,
                                                                      BLOCK_HW=512))
            for name, (fn, flags) in kernels.items():
                k = compile_kernel(fn, dtype, {**acc, **flags}, vectors="*fp64" if dtype == "*fp64" else "*fp32",
                                   x_like=FEATURE_PTRS[fn.__name__], div16=DIV16)
                count += 1
                key = f"{name} {order} {dtype}"
                if cuobjdump:
                    _, *used = resource_usage(k, cuobjdump)
                    if any(used):
                        spills[key] = used
                if name in ("spatial", "spatial_bwd", "spatial_dw") or (name == "dx" and has_s):
                    if dtype in ("*bf16", "*fp16"):
                        mma[key] = "wgmma" in k.asm["ptx"] or "mma.sync" in k.asm["ptx"]
                    elif dtype == "*fp64" and fp64_dmma:
                        mma[key] = DMMA in k.asm["ptx"]
    print(json.dumps({"compiled": count, "spills": spills if cuobjdump else None, "mma": mma,
                      "fp64_dmma": fp64_dmma}))


if __name__ == "__main__":
    main()

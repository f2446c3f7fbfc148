"""Compile the SE Triton kernels ahead of time for sm_90 (no GPU needed): catches what the
interpreter accepts but the compiler rejects, and checks the memory-bound kernels use 16-byte
vector loads/stores. The kernels must be imported without TRITON_INTERPRET, so the tests run
this file as a script in a subprocess (one run, all checks)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def aot_results():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    if out.returncode == 3:
        pytest.skip(out.stdout.strip().splitlines()[-1])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_se_reduce_kernels_compile_for_sm90(aot_results):
    assert aot_results["reduce"] == "ok"


def test_se_elementwise_kernels_use_16_byte_vectors(aot_results):
    for name, ptx_ok in aot_results["vector"].items():
        assert ptx_ok, f"{name} lost its 16-byte vector loads/stores"


# ---- the script part (runs without TRITON_INTERPRET) ---------------------------------------

ELEM = {"bf16": "*bf16", "fp16": "*fp16", "fp32": "*fp32"}


def _compile(fn, signature, constexprs):
    names = list(signature)
    # what the launcher's specialization gives for aligned pointers and sizes divisible by 16
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in names
             if a.endswith("_ptr") or a in ("C", "HW", "slab", "stride_c")}
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})


def _reduce_sig(t, backward):
    common = dict(C="i32", HW="i32", Cr="i32", n_cblk="i32", n_split="i32", hw_per_split="i32",
                  stride_c="i32", stride_hw="constexpr")
    if backward:
        ptrs = dict(dy_ptr=t, x_ptr=t, w1_ptr=t, w2_ptr=t, z_ptr="*fp32", u_ptr="*fp32", pmax_ptr="*fp32",
                    ws_ptr="*fp32", counter_ptr="*i32", dz_ptr="*fp32", du_ptr="*fp32",
                    coef_avg_ptr="*fp32", coef_max_ptr="*fp32")
        flags = dict(ACT="constexpr", GATE="constexpr", POOL_MAX="constexpr", ACC="constexpr")
    else:
        ptrs = dict(x_ptr=t, w1_ptr=t, b1_ptr=t, w2_ptr=t, b2_ptr=t, ws_ptr="*fp32", counter_ptr="*i32",
                    s_ptr="*fp32", z_ptr="*fp32", u_ptr="*fp32", p_ptr="*fp32", pmax_ptr="*fp32")
        flags = dict(HAS_B1="constexpr", HAS_B2="constexpr", ACT="constexpr", GATE="constexpr",
                     POOL_MAX="constexpr", ACC="constexpr")
    blocks = dict(BLOCK_C="constexpr", BLOCK_HW="constexpr", BLOCK_R="constexpr", BLOCK_K="constexpr")
    return {**ptrs, **common, **flags, **blocks}


def compile_reduce(dtype, act, gate):
    t = ELEM[dtype]
    blocks = dict(BLOCK_C=4, BLOCK_HW=512, BLOCK_R=16, BLOCK_K=128)
    _compile(se._se_squeeze_excite, _reduce_sig(t, False),
             dict(stride_hw=1, HAS_B1=True, HAS_B2=False, ACT=act, GATE=gate, POOL_MAX=True,
                  ACC=tl.float32, **blocks))
    _compile(se._se_bwd_reduce_excite, _reduce_sig(t, True),
             dict(stride_hw=1, ACT=act, GATE=gate, POOL_MAX=True, ACC=tl.float32, **blocks))
    _compile(se._se_bwd_weights,
             dict(dz_ptr="*fp32", du_ptr="*fp32", u_ptr="*fp32", p_ptr="*fp32", dw1_ptr=t, db1_ptr=t,
                  dw2_ptr=t, db2_ptr=t, N="i32", C="i32", Cr="i32", ACT="constexpr", ACC="constexpr",
                  BLOCK_A="constexpr", BLOCK_B="constexpr"),
             dict(ACT=act, ACC=tl.float32, BLOCK_A=64, BLOCK_B=32))


def vector_checks(channels_last):
    flat = dict(N="i32", C="i32", HW="i32", slab="i32", CHANNELS_LAST="constexpr", ACC="constexpr",
                BLOCK="constexpr", VEC="constexpr")
    ce = dict(CHANNELS_LAST=channels_last, ACC=tl.float32, BLOCK=2048, VEC=8)
    k = _compile(se._se_rescale, dict(x_ptr="*bf16", s_ptr="*fp32", y_ptr="*bf16", **flat), ce)
    ptx = k.asm["ptx"]
    res = {f"rescale cl={channels_last}": "ld.global.v4" in ptx and "st.global.v4" in ptx}
    k = _compile(se._se_bwd_dx, dict(dy_ptr="*bf16", x_ptr="*bf16", s_ptr="*fp32", coef_avg_ptr="*fp32",
                                     pmax_ptr="*fp32", coef_max_ptr="*fp32", dx_ptr="*bf16",
                                     N="i32", C="i32", HW="i32", slab="i32", POOL_MAX="constexpr",
                                     CHANNELS_LAST="constexpr", ACC="constexpr", BLOCK="constexpr",
                                     VEC="constexpr"), dict(POOL_MAX=True, **ce))
    res[f"dx cl={channels_last}"] = "ld.global.v4" in k.asm["ptx"] and "st.global.v4" in k.asm["ptx"]
    return res


if __name__ == "__main__":
    try:
        import triton
        import triton.language as tl
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        import attnkernels.triton.se as se
    except ImportError as e:
        print(f"no ahead-of-time triton compile here: {e}")
        sys.exit(3)
    for dtype in ("bf16", "fp32"):
        for act, gate in (("relu", "sigmoid"), ("gelu", "hardsigmoid"), ("silu", "sigmoid"), ("hardswish", "hardsigmoid")):
            compile_reduce(dtype, act, gate)
    vec = {**vector_checks(False), **vector_checks(True)}
    print(json.dumps({"reduce": "ok", "vector": vec}))

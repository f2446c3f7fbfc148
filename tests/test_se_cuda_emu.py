"""Backend-specific tests of attnkernels.cuda (SE): direct se_forward / se_backward calls against an
inline torch reference, on CPU tensors through the emulated build (backend cuda-emu) and, when a
GPU and the nvcc build are present, on CUDA tensors too. Every kernel variant is forced in turn and
every output / workspace is poisoned with NaN first (ATTNKERNELS_CUDA_POISON=1), so an element a
kernel forgets to write fails the comparison."""
from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from utils import cuda_devices, sm90_code_here

cuda_mod = pytest.importorskip("attnkernels.cuda")

DEVICES = cuda_devices()

ACTS = ("relu", "silu", "hardswish", "gelu", "identity")
GATES = ("sigmoid", "hardsigmoid")
POOLS = ("avg", "avgmax")
# (variant, squeeze blocks per sample hint[, pipelined lag]): auto, split with 1 block/sample, with
# several blocks (HW segments / pixel splits + the last-block MLP), the single-pass shared-memory
# kernel, the one-launch pipelined kernel with its default lag (here: all samples squeezed
# before the first rescale) and with lags of 1 and 2 samples (squeezes and rescales interleaved),
# and the batched excitation (csrc/se/batched.cuh) with 1 and 3 squeeze slices per sample.
VARIANTS = (("auto", 0), ("split", 1), ("split", 3), ("split", 64), ("fused", 0), ("pipelined", 0),
            ("pipelined", 3, 1), ("pipelined", 1, 2), ("batched", 0), ("batched", 3))
TOL = {torch.float64: (1e-10, 1e-9), torch.float32: (2e-5, 2e-5), torch.float16: (2e-3, 1e-2),
       torch.bfloat16: (1e-2, 2e-2)}


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setenv("ATTNKERNELS_CUDA_POISON", "1")


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def reference(x, w1, b1, w2, b2, act, gate, pool):
    """(y, s, z, u, p, pmax) in the accumulation dtype; differentiable. w1 None: the
    single-layer form (u = p)."""
    xa = x.to(_acc(x.dtype))
    pa = xa.mean((2, 3))
    pm = xa.amax((2, 3))
    p = 0.5 * pa + 0.5 * pm if pool == "avgmax" else pa
    u = p if w1 is None else F.linear(p, w1, b1)
    h = {"relu": F.relu, "silu": F.silu, "hardswish": F.hardswish, "identity": lambda t: t,
         "gelu": lambda t: F.gelu(t, approximate="none")}[act](u)
    z = F.linear(h, w2, b2)
    s = torch.sigmoid(z) if gate == "sigmoid" else F.hardsigmoid(z)
    y = xa * s[:, :, None, None]
    return y, s, z, u, p, pm


def make(shape, cr, dtype, device, channels_last=False, bias=True, ties=False, misalign=False, seed=0,
         single_layer=False):
    """x and the weights; single_layer: w1 = b1 = None and w2 (C, C) (cr ignored)."""
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    if ties:
        x = torch.randint(-2, 3, shape, generator=g).to(torch.float64) * 0.5
    else:
        x = torch.randn(shape, generator=g, dtype=torch.float64)
    x = x.to(dtype)
    if misalign:  # storage offset of one element: 16-byte vector paths must peel / fall back
        buf = torch.empty(x.numel() + 1, dtype=dtype)
        buf[1:] = x.reshape(-1)
        x = buf[1:].view(shape)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x = x.to(device)
    acc = _acc(dtype)
    w1 = (torch.randn(cr, c, generator=g, dtype=acc) / c ** 0.5).to(dtype).to(device)
    w2 = (torch.randn(c, cr, generator=g, dtype=acc) * 2 / cr ** 0.5).to(dtype).to(device)
    b1 = (torch.randn(cr, generator=g, dtype=acc) * 0.5).to(dtype).to(device) if bias else None
    b2 = (torch.randn(c, generator=g, dtype=acc) * 0.5).to(dtype).to(device) if bias else None
    if single_layer:
        w2 = (torch.randn(c, c, generator=g, dtype=acc) * 2 / c ** 0.5).to(dtype).to(device)
        w1 = b1 = None
    return x, w1, b1, w2, b2


def expected_variant(forced, dtype, device):
    """The variant a forced one runs: float64, the gradcheck dtype, is built with the split kernels
    only (csrc/se/launch.h: has_fast_variants), so "fused", "pipelined" and "batched" run "split"
    there, and "pipelined" and "batched" run "split" on a device without sm_90 code."""
    if dtype == torch.float64 and forced in ("fused", "pipelined", "batched"):
        return "split"
    return "split" if forced in ("pipelined", "batched") and not sm90_code_here(device) else forced


def check_case(x, w1, b1, w2, b2, act, gate, pool, variant=("auto", 0), backward=True, dy_misalign=False):
    dtype = x.dtype
    atol, rtol = TOL[dtype]
    acc = _acc(dtype)
    with cuda_mod.force_variant(*variant):
        y, s, z, u, p, pmax = cuda_mod.se_forward(x, w1, b1, w2, b2, act, gate, pool)
    if variant[0] != "auto":  # ("fused" on a GPU may run as "fused-cluster<k>")
        assert cuda_mod.last_variant().split("-")[0] == expected_variant(variant[0], dtype, x.device), \
            cuda_mod.last_variant()
    # reference on the same (rounded) inputs, weights in the accumulation dtype, always on the CPU
    # (torch's CUDA hardswish/hardsigmoid forward multiply by a float32 1/6 even for float64)
    xr = x.detach().cpu().to(acc).requires_grad_(True)
    ws = [t.detach().cpu().to(acc).requires_grad_(True) if t is not None else None for t in (w1, b1, w2, b2)]
    ry, rs, rz, ru, rp, rpm = reference(xr, *ws, act, gate, pool)

    assert y.dtype == dtype and y.shape == x.shape and y.stride() == x.stride()
    for name, got, want in (("s", s, rs), ("z", z, rz), ("u", u, ru), ("p", p, rp)):
        assert got.dtype == acc, name
        torch.testing.assert_close(got.cpu(), want.detach(), atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")
    if pool == "avgmax":
        torch.testing.assert_close(pmax.cpu(), rpm.detach(), atol=0, rtol=0)
    else:
        assert pmax.shape == (0,) and pmax.dtype == acc
    torch.testing.assert_close(y.cpu(), ry.detach().to(dtype), atol=atol, rtol=rtol)
    if not backward:
        return
    g = torch.Generator().manual_seed(1)
    dy = torch.randn(x.shape, generator=g, dtype=torch.float64).to(dtype)
    if dy_misalign:
        buf = torch.empty(dy.numel() + 3, dtype=dtype)
        buf[3:] = dy.reshape(-1)
        dy = buf[3:].view(x.shape)
    if not x.is_contiguous():
        dy = dy.to(memory_format=torch.channels_last)
    dy = dy.to(x.device)
    with cuda_mod.force_variant(*variant):
        dx, dw1, db1, dw2, db2 = cuda_mod.se_backward(dy, x, w1, w2, s, z, u, p, pmax, act, gate, pool)
    ry.backward(dy.cpu().to(acc))
    assert dx.dtype == dtype and dx.stride() == x.stride()
    torch.testing.assert_close(dx.cpu(), xr.grad.to(dtype), atol=atol * 4, rtol=rtol * 4, msg=lambda m: f"dx: {m}")
    if w1 is None:  # the single-layer form: no fc1, so no dw1 / db1
        assert dw1.shape == (0,) and db1.shape == (0,)
    for name, got, ref_t, shape in (("dw1", dw1, ws[0], w1.shape if w1 is not None else None),
                                    ("dw2", dw2, ws[2], w2.shape)):
        if ref_t is None:
            continue
        assert got.dtype == dtype and got.shape == shape
        torch.testing.assert_close(got.cpu(), ref_t.grad.to(dtype), atol=atol * 8, rtol=rtol * 4,
                                   msg=lambda m: f"{name}: {m}")
    rdb1 = ws[1].grad if ws[1] is not None else None
    rdb2 = ws[3].grad if ws[3] is not None else None
    if rdb2 is None:  # bias-free: db is still returned (sum over n of du / dz)
        assert db2.shape == (w2.shape[0],) and torch.isfinite(db2).all()
        if w1 is not None:
            assert db1.shape == (w1.shape[0],) and torch.isfinite(db1).all()
    else:
        if w1 is not None:
            torch.testing.assert_close(db1.cpu(), rdb1.to(dtype), atol=atol * 8, rtol=rtol * 4)
        torch.testing.assert_close(db2.cpu(), rdb2.to(dtype), atol=atol * 8, rtol=rtol * 4)


SHAPES = [  # (N, C, H, W), Cr
    ((2, 37, 7, 7), 5),     # primes, Cr not dividing C
    ((3, 1, 5, 5), 1),      # C = 1
    ((3, 24, 1, 1), 6),     # HW = 1
    ((1, 16, 9, 11), 4),    # N = 1
    ((2, 40, 16, 16), 8),   # vectorizable rows / channels
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape,cr", SHAPES)
def test_shapes_dtypes_layouts(device, dtype, channels_last, shape, cr):
    x, w1, b1, w2, b2 = make(shape, cr, dtype, device, channels_last)
    for variant in (("split", 3), ("fused", 0), ("pipelined", 2, 1)):
        check_case(x, w1, b1, w2, b2, "relu", "sigmoid", "avgmax", variant)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("act,gate,pool", list(itertools.product(ACTS, GATES, POOLS)))
def test_act_gate_pool(device, act, gate, pool):
    for cl in (False, True):
        x, w1, b1, w2, b2 = make((2, 12, 5, 6), 3, torch.float64, device, cl)
        check_case(x, w1, b1, w2, b2, act, gate, pool, ("split", 2))
    x, w1, b1, w2, b2 = make((2, 12, 5, 6), 3, torch.float32, device)
    check_case(x, w1, b1, w2, b2, act, gate, pool, ("fused", 0))
    check_case(x, w1, b1, w2, b2, act, gate, pool, ("pipelined", 2, 1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_variants(device, variant, channels_last, dtype):
    for shape, cr in (((3, 32, 12, 12), 8), ((2, 37, 7, 7), 5), ((2, 8, 40, 40), 2)):
        x, w1, b1, w2, b2 = make(shape, cr, dtype, device, channels_last)
        check_case(x, w1, b1, w2, b2, "silu", "hardsigmoid", "avgmax", variant)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("variant", [("split", 1), ("split", 4), ("fused", 0), ("pipelined", 4, 1)])
def test_avgmax_ties(device, channels_last, variant):
    """Few distinct values: the max is tied; its gradient is split evenly like torch.amax."""
    for dtype in (torch.float32, torch.bfloat16):
        x, w1, b1, w2, b2 = make((2, 10, 6, 6), 3, dtype, device, channels_last, ties=True)
        check_case(x, w1, b1, w2, b2, "gelu", "sigmoid", "avgmax", variant)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", [("split", 2), ("fused", 0), ("pipelined", 2, 1)])
def test_nchw_vectors_straddle_channels(device, variant):
    """NCHW rows that are no multiple of a 16-byte vector (7x7, 14x14 and 5x5 rows, HW < one
    vector) while the sample is: the rescale and dx passes run 16-byte vectors that straddle
    channels (a vector's elements take the gates of two or more channels), forward and backward
    (avgmax: dx reads x too)."""
    cases = [((2, 8, 7, 7), 4, torch.bfloat16), ((3, 16, 14, 14), 4, torch.float16),
             ((2, 24, 3, 1), 6, torch.bfloat16), ((2, 4, 7, 7), 2, torch.float32),
             ((2, 12, 5, 5), 3, torch.float32)]
    for i, (shape, cr, dtype) in enumerate(cases):
        x, w1, b1, w2, b2 = make(shape, cr, dtype, device, seed=i)
        for pool in POOLS:
            check_case(x, w1, b1, w2, b2, "relu", "sigmoid", pool, variant)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_no_bias_misaligned(device, channels_last):
    for dtype in (torch.float16, torch.float32):
        x, w1, b1, w2, b2 = make((2, 16, 6, 6), 4, dtype, device, channels_last, bias=False,
                                 misalign=(device == "cpu"))
        for variant in (("split", 3), ("fused", 0), ("pipelined", 3, 1)):
            check_case(x, w1, None, w2, None, "hardswish", "sigmoid", "avg", variant,
                       dy_misalign=(device == "cpu"))


@pytest.mark.parametrize("device", DEVICES)
def test_repeat_calls_reuse_counters(device):
    """The per-sample counters are reset by the kernels: many calls, growing N, stay correct."""
    for n in (1, 4, 2, 9):
        x, w1, b1, w2, b2 = make((n, 8, 4, 4), 2, torch.float32, device, seed=n)
        check_case(x, w1, b1, w2, b2, "relu", "sigmoid", "avg", ("split", 5))
        check_case(x, w1, b1, w2, b2, "relu", "sigmoid", "avg", ("pipelined", 3, 2))
    x, w1, b1, w2, b2 = make((5, 8, 4, 4), 2, torch.float32, device)
    check_case(x, w1, b1, w2, b2, "relu", "sigmoid", "avg", ("split", 5))  # after the pipelined ones


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("lag", [1, 3, 100])
def test_pipelined_many_items(device, lag):
    """Many samples with several reduce slices and elementwise chunks each, more work items than
    persistent blocks: the ticket order, the per-sample flags and the lag all get exercised, in
    the pipelined forward and the pipelined backward."""
    for cl in (False, True):
        x, w1, b1, w2, b2 = make((11, 24, 20, 20), 6, torch.float16, device, cl, seed=lag)
        check_case(x, w1, b1, w2, b2, "silu", "sigmoid", "avgmax", ("pipelined", 3, lag))
    x, w1, b1, w2, b2 = make((7, 16, 23, 23), 4, torch.float32, device)  # HW odd: element path
    check_case(x, w1, b1, w2, b2, "relu", "hardsigmoid", "avg", ("pipelined", 2, lag))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_batched_groups_and_tiles(device, channels_last):
    """The batched excitation with several groups (the last one short), several fc1 column tiles
    (C > 256) and fc2 row tiles, the weights' 16-byte path and their element path (Cr, C not
    multiples of a vector; a misaligned w1), both pools, and the single-layer form; the backward
    reads the z, s, u, p the tiles wrote."""
    cases = [((37, 600, 3, 2), 40, torch.bfloat16, {}), ((21, 520, 2, 2), 13, torch.float32, {}),
             ((18, 70, 3, 3), 9, torch.float16, {"misalign_w1": True}), ((33, 48, 2, 3), 0, torch.float32, {})]
    for i, (shape, cr, dtype, opt) in enumerate(cases):
        x, w1, b1, w2, b2 = make(shape, cr, dtype, device, channels_last, seed=i, single_layer=cr == 0)
        if opt.get("misalign_w1"):
            buf = torch.empty(w1.numel() + 1, dtype=dtype, device=device)
            buf[1:] = w1.reshape(-1)
            w1 = buf[1:].view(w1.shape)
        for act, gate, pool in (("relu", "sigmoid", "avg"), ("gelu", "hardsigmoid", "avgmax")):
            act = "identity" if w1 is None else act
            check_case(x, w1, b1, w2, b2, act, gate, pool, ("batched", 2))
            assert cuda_mod.last_variant() == expected_variant("batched", dtype, device)


@pytest.mark.skipif("cpu" not in DEVICES, reason="needs the emulated build")
@pytest.mark.parametrize("threads", ["1", "3"])
def test_ticket_ordered_worker_counts(threads):
    """The ticket-ordered kernels (pipelined, batched) on one emulator worker (items run strictly
    in ticket order, never waiting) and on three (waits on blocks running concurrently)."""
    tests = os.path.dirname(os.path.abspath(__file__))
    script = _SCRIPT_HEAD.format(root=os.path.dirname(tests), tests=tests) + (
        "for cl in (False, True):\n"
        "    x, w1, b1, w2, b2 = T.make((9, 24, 20, 20), 6, torch.float16, 'cpu', cl)\n"
        "    T.check_case(x, w1, b1, w2, b2, 'silu', 'sigmoid', 'avgmax', ('pipelined', 3, 1))\n"
        "    x, w1, b1, w2, b2 = T.make((35, 300, 3, 3), 20, torch.float16, 'cpu', cl)\n"
        "    T.check_case(x, w1, b1, w2, b2, 'silu', 'sigmoid', 'avgmax', ('batched', 2))\n"
        "print('OK')\n")
    env = dict(os.environ, CUEMU_THREADS=threads, CUEMU_SPIN_TIMEOUT_S="60")
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_clusters(device, channels_last):
    """Slabs too large for one block's shared memory: the fused kernel splits each sample over a
    cluster of 2-16 blocks that pool through DSMEM (sm_90; the emulator runs a cluster's blocks at
    once, one OS thread each). ResNet-50 stage 1 (1.6 MB bf16 slabs; GPU only here, for time)
    takes 8 blocks (16 for channels_last with avgmax)."""
    if not sm90_code_here(device):
        pytest.skip("thread-block clusters need sm_90")
    cases = [((2, 64, 40, 40), 8, torch.float32), ((2, 37, 61, 59), 5, torch.float16),
             ((2, 1024, 14, 14), 64, torch.bfloat16)]
    if device == "cuda":
        cases.append(((3, 256, 56, 56), 16, torch.bfloat16))
    for shape, cr, dtype in cases:
        x, w1, b1, w2, b2 = make(shape, cr, dtype, device, channels_last)
        for act, gate, pool in (("relu", "sigmoid", "avg"), ("silu", "hardsigmoid", "avgmax")):
            # the backward reads the s, z, u, p the cluster's blocks wrote
            check_case(x, w1, b1, w2, b2, act, gate, pool, ("fused", 0), backward=pool == "avgmax")
            assert cuda_mod.last_variant().startswith("fused-cluster"), (shape, cuda_mod.last_variant())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_single_layer_variants(device, variant, channels_last):
    """The single-layer form (w1 None: timm's EffectiveSEModule, u = p, Cr = C) through every
    variant: the epilogues skip fc1 forward and backward, the weight-gradient kernel dW1 / db1."""
    cases = [((2, 37, 7, 7), torch.float32, ("identity", "hardsigmoid", "avgmax"), True),
             ((3, 1, 5, 5), torch.float16, ("identity", "sigmoid", "avg"), False),
             ((2, 24, 1, 1), torch.float64, ("relu", "hardsigmoid", "avg"), True),
             ((1, 96, 9, 11), torch.bfloat16, ("silu", "sigmoid", "avgmax"), True)]
    for i, (shape, dtype, opts, bias) in enumerate(cases):
        x, w1, b1, w2, b2 = make(shape, 0, dtype, device, channels_last, bias=bias, seed=i, single_layer=True)
        check_case(x, w1, b1, w2, b2, *opts, variant)


@pytest.mark.parametrize("device", DEVICES)
def test_single_layer_fused_clusters(device):
    """The single-layer form on the cluster path: the rank-0 block writes p and u = p."""
    if not sm90_code_here(device):
        pytest.skip("thread-block clusters need sm_90")
    for channels_last in (False, True):
        x, w1, b1, w2, b2 = make((2, 1024, 14, 14), 0, torch.bfloat16, device, channels_last, single_layer=True)
        check_case(x, w1, b1, w2, b2, "identity", "hardsigmoid", "avgmax", ("fused", 0))
        assert cuda_mod.last_variant().startswith("fused-cluster"), cuda_mod.last_variant()


def test_variant_dispatch_reporting():
    dev = "cpu" if "cpu" in DEVICES else "cuda"
    v = cuda_mod.se_forward_variant((512, 64, 7, 7), torch.float16, device=dev)
    assert v in ("fused", "split")
    assert cuda_mod.se_forward_variant((1, 2048, 64, 64), torch.float32, device=dev) == "split"
    with cuda_mod.force_variant("pipelined"):
        assert cuda_mod.se_forward_variant((4, 64, 7, 7), torch.float16, device=dev) == \
            expected_variant("pipelined", torch.float16, dev)
    with pytest.raises(ValueError, match="variant"):
        cuda_mod.force_variant("persistent").__enter__()
    with pytest.raises(ValueError, match="lag"):
        cuda_mod.force_variant("pipelined", lag=-1).__enter__()
    with cuda_mod.force_variant("fused"):
        assert cuda_mod.se_forward_variant((1, 8, 4, 4), torch.float32, device=dev) == "fused"
        with pytest.raises(RuntimeError, match="shared memory"):
            cuda_mod.se_forward_variant((1, 2048, 64, 64), torch.float32, device=dev)
    # float64 has the split kernels only: a forced fused / pipelined / batched runs split, and says so
    for forced in ("fused", "pipelined", "batched"):
        with cuda_mod.force_variant(forced):
            assert cuda_mod.se_forward_variant((4, 8, 4, 4), torch.float64, device=dev) == "split"
            assert cuda_mod.se_forward_variant((4, 8, 4, 4), torch.float32, device=dev) == \
                expected_variant(forced, torch.float32, dev)
    assert cuda_mod.se_forward_variant((512, 64, 7, 7), torch.float64, device=dev) == "split"


def test_input_checks():
    dev = DEVICES[0]
    x, w1, b1, w2, b2 = make((2, 8, 4, 4), 2, torch.float32, dev)
    with pytest.raises(RuntimeError):
        cuda_mod.se_forward(x[:, :, ::2], w1, b1, w2, b2, "relu", "sigmoid", "avg")
    with pytest.raises(RuntimeError):
        cuda_mod.se_forward(x, w1.double(), b1, w2, b2, "relu", "sigmoid", "avg")
    with pytest.raises(RuntimeError):
        cuda_mod.se_forward(x, w1[:, :4], b1, w2, b2, "relu", "sigmoid", "avg")


def _eager_and_raw(x, w1, b1, w2, b2, act, gate, pool, dy, conv_weights):
    """(y, dx, dw1, db1, dw2, db2) of attnkernels.se's eager path (the extension's C++ autograd
    function) and of the raw ops (the custom ops' path) on the same inputs."""
    import attnkernels as ak
    name = "cuda-emu" if x.device.type == "cpu" else "cuda"
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w1, b1, w2, b2)]
    lx, lw1, lb1, lw2, lb2 = leaves
    if conv_weights:  # 1x1 conv (out, in, 1, 1) weights: the grads come back in that shape
        lw1 = lw1.detach()[:, :, None, None].requires_grad_()
        lw2 = lw2.detach()[:, :, None, None].requires_grad_()
        leaves = [lx, lw1, lb1, lw2, lb2]
    y = ak.se(lx, lw1, lb1, lw2, lb2, act=act, gate=gate, pool=pool, backend=name)
    assert "SEFunction" in y.grad_fn.name() and "CppNode" in y.grad_fn.name(), y.grad_fn.name()
    y.backward(dy)
    eager = [y.detach()] + [t.grad if t is not None else None for t in leaves]
    xk = x.contiguous(memory_format=torch.channels_last if not x.is_contiguous() and x.stride(1) == 1
                      else torch.contiguous_format)
    ry, rs, rz, ru, rp, rpm = cuda_mod.se_forward(xk, w1, b1, w2, b2, act, gate, pool)
    dyk = dy.contiguous(memory_format=torch.channels_last if not xk.is_contiguous() else torch.contiguous_format)
    rdx, rdw1, rdb1, rdw2, rdb2 = cuda_mod.se_backward(dyk, xk, w1, w2, rs, rz, ru, rp, rpm, act, gate, pool)
    if conv_weights:
        rdw1, rdw2 = rdw1[:, :, None, None], rdw2[:, :, None, None]
    raw = [ry, rdx, rdw1, rdb1 if b1 is not None else None, rdw2, rdb2 if b2 is not None else None]
    return eager, raw


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", [("auto", 0), ("split", 3), ("fused", 0), ("pipelined", 2, 1)], ids=str)
@pytest.mark.parametrize("layout", ["nchw", "cl", "strided"])
def test_eager_cpp_autograd_equals_raw_ops(device, variant, layout):
    """attnkernels.se's eager call on these backends runs forward and backward in the extension
    (one stats buffer, C++ autograd): bit for bit what the raw ops give, the gradients in the
    inputs' shapes (conv weights too), with every output and workspace poisoned."""
    for i, (act, gate, pool, bias, conv) in enumerate((("relu", "sigmoid", "avg", True, False),
                                                       ("silu", "hardsigmoid", "avgmax", False, True),
                                                       ("gelu", "sigmoid", "avgmax", True, True))):
        x, w1, b1, w2, b2 = make((3, 20, 6, 5), 5, torch.float32, device, layout == "cl", bias, seed=i)
        if layout == "strided":  # neither format: the kernels get a channels_last copy
            x = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 2, 1)[:, :, ::2]
        g = torch.Generator().manual_seed(10 + i)
        dy = torch.randn(x.shape, generator=g).to(device)
        with cuda_mod.force_variant(*variant):
            eager, raw = _eager_and_raw(x, w1, b1, w2, b2, act, gate, pool, dy, conv)
        for name, a, b in zip(("y", "dx", "dw1", "db1", "dw2", "db2"), eager, raw):
            if b is None:
                assert a is None, name
                continue
            assert a.shape == b.shape, name
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=lambda m: f"{name} ({act}, {pool}): {m}")


def test_eager_cpp_autograd_no_grad_and_versions():
    """No autograd record without grad; in-place changes to a saved input are caught."""
    import attnkernels as ak
    dev = DEVICES[0]
    name = "cuda-emu" if dev == "cpu" else "cuda"
    x, w1, b1, w2, b2 = make((2, 8, 4, 4), 2, torch.float32, dev)
    with torch.no_grad():
        assert ak.se(x, w1.requires_grad_(), b1, w2, b2, backend=name).grad_fn is None
    assert ak.se(x, w1.detach(), b1, w2, b2, backend=name).grad_fn is None  # nothing requires grad
    xg = x.clone().requires_grad_()
    y = ak.se(xg, w1, b1, w2, b2, backend=name)
    with torch.no_grad():
        xg.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


_SCRIPT_HEAD = r"""
import torch, sys
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
import test_se_cuda_emu as T
"""
_RANDOM_SCRIPT = _SCRIPT_HEAD + r"""
for cl in (False, True):
    for variant in (("split", 3), ("fused", 0), ("pipelined", 2, 1), ("batched", 2)):
        x, w1, b1, w2, b2 = T.make((3, 20, 9, 9), 5, torch.float32, "cpu", cl, ties=True)
        T.check_case(x, w1, b1, w2, b2, "silu", "sigmoid", "avgmax", variant)
print("OK")
"""


@pytest.mark.skipif("cpu" not in DEVICES, reason="needs the emulated build")
@pytest.mark.parametrize("seed", [7, 12345])
def test_random_schedule(seed):
    """Same kernels under the emulator's random fiber schedule (races / missing barriers show up)."""
    tests = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(tests)
    env = dict(os.environ, CUEMU_SCHEDULE=f"random:{seed}", CUEMU_STRICT="1", CUEMU_POISON_SHARED="1",
               ATTNKERNELS_CUDA_POISON="1")
    r = subprocess.run([sys.executable, "-c", _RANDOM_SCRIPT.format(root=root, tests=tests)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]

"""SE: every kernel backend against the eager reference (attnkernels/reference/se.py).

Runs on the CPU through the Triton interpreter and cuda-emu, and unchanged on a GPU (triton,
cuda). Covers fp32/fp16/bf16 (fp32 accumulation) against an fp64 reference, fp64 gradcheck,
NCHW and channels_last, odd shapes, poisoned outputs, opcheck, torch.compile, bad input, fuzz.
"""
import contextlib
import itertools
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attnkernels as ak
from attnkernels import reference
from attnkernels._alloc import poisoned
from attnkernels._variant import force_variant
from conftest import DEVICE, KERNEL_BACKENDS
from triton_interpreter import interleaved_programs, shuffled_program_order
from utils import assert_matches, full_size_aten_ops, rand, sm90_code_here, to64

ACTS = ("relu", "silu", "hardswish", "gelu")
GATES = ("sigmoid", "hardsigmoid")
POOLS = ("avg", "avgmax")
COMBOS = list(itertools.product(ACTS, GATES, POOLS))
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# (N, C, H, W, Cr): C=1, HW=1, primes, Cr not dividing C, non-square, HW split over programs,
# several channel blocks per sample
SHAPES = [(2, 16, 7, 7, 4), (1, 1, 1, 1, 1), (3, 37, 5, 3, 5), (2, 64, 1, 1, 8),
          (2, 3, 17, 19, 2), (4, 24, 9, 9, 7), (1, 5, 40, 30, 3), (2, 300, 3, 3, 20)]


def make_case(shape, dtype, channels_last=False, bias=True, ties=False, seed=0, device=DEVICE,
              conv_weights=False, single_layer=False):
    """(x, w1, b1, w2, b2). single_layer: the form without fc1 (w1 = b1 = None, w2 (C, C);
    shape's Cr ignored)."""
    N, C, H, W, Cr = shape
    if single_layer:
        Cr = C
    g = torch.Generator().manual_seed(seed)
    x = rand((N, C, H, W), dtype, device, g)
    if ties:  # few distinct values: many tied maxima per channel
        x = x.mul(2).round().div(2)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    # weights scaled so the gate is not saturated (its gradient must matter)
    w1 = rand((Cr, C), dtype, device, g, 1.5 / math.sqrt(max(C, 1)))
    w2 = rand((C, Cr), dtype, device, g, 1.5 / math.sqrt(max(Cr, 1)))
    b1 = rand((Cr,), dtype, device, g, 0.5) if bias else None
    b2 = rand((C,), dtype, device, g, 0.5) if bias else None
    if conv_weights:
        w1, w2 = w1[:, :, None, None], w2[:, :, None, None]
    if single_layer:
        w1 = b1 = None
    return x, w1, b1, w2, b2


def _leaves(tensors):
    return [None if t is None else t.detach().clone().requires_grad_() for t in tensors]


def run_and_check(backend, case, act, gate, pool, check_grad=True, seed=1, lowp_reference_on_cpu=False):
    """Forward (+ backward) of the fused op with poisoned outputs vs the reference computed in
    the same dtype and in fp64. lowp_reference_on_cpu: the same-dtype reference from CPU copies
    too (no cuBLAS workspace, which cuBLAS caches per stream, gets allocated on the GPU)."""
    x = case[0]
    dy = rand(x.shape, x.dtype, x.device, torch.Generator().manual_seed(seed))
    dy = dy.contiguous(memory_format=torch.channels_last) if not x.is_contiguous() else dy
    opts = dict(act=act, gate=gate, pool=pool)
    # the fp64 reference runs on the CPU: CUDA's fp64 hardsigmoid uses a float 1/6 constant
    lowp_case = [None if t is None else t.cpu() for t in case] if lowp_reference_on_cpu else case
    ins, ins_lp, ins_64 = _leaves(case), _leaves(lowp_case), _leaves([None if t is None else to64(t).cpu() for t in case])
    with poisoned():
        y = ak.se(*ins, **opts, backend=backend)
    y_lp = reference.se(*ins_lp, act, gate, pool)
    y_64 = reference.se(*ins_64, act, gate, pool)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert y.is_contiguous(memory_format=torch.channels_last) == x.is_contiguous(memory_format=torch.channels_last)
    assert_matches(y, y_lp, y_64, "y")
    if not check_grad:
        return
    with poisoned():
        y.backward(dy)
    y_lp.backward(dy.to(y_lp.device))
    y_64.backward(to64(dy).cpu())
    for name, a, b, c in zip(("dx", "dw1", "db1", "dw2", "db2"), ins, ins_lp, ins_64):
        if a is None:
            continue
        assert a.grad is not None, f"{name} missing"
        assert_matches(a.grad, b.grad, c.grad, name)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_se_matches_reference(kernel_backend, shape, dtype, channels_last):
    # cycle through the 16 act/gate/pool combinations and the bias options across the matrix
    i = SHAPES.index(shape) * 8 + DTYPES.index(dtype) * 2 + channels_last
    act, gate, pool = COMBOS[i % len(COMBOS)]
    case = make_case(shape, dtype, channels_last, bias=i % 3 != 0, seed=i)
    run_and_check(kernel_backend, case, act, gate, pool)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("act,gate,pool", COMBOS + [("identity", "sigmoid", "avgmax")])  # (+ two layers, no act)
def test_se_all_options(kernel_backend, act, gate, pool, channels_last):
    run_and_check(kernel_backend, make_case((2, 12, 5, 6, 3), torch.float32, channels_last), act, gate, pool)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_se_avgmax_ties_split_like_amax(kernel_backend, dtype, channels_last):
    case = make_case((2, 9, 6, 5, 3), dtype, channels_last, ties=True, seed=7)
    run_and_check(kernel_backend, case, "relu", "sigmoid", "avgmax")


@pytest.mark.parametrize("single", [False, True], ids=["two_layer", "single_layer"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("act,gate", [("relu", "hardsigmoid"), ("hardswish", "hardsigmoid"), ("hardswish", "sigmoid")])
def test_se_gradient_at_the_kinks(kernel_backend, act, gate, dtype, single):
    """The activations' and the gate's gradients where PyTorch picks a side: relu at 0, hardswish
    at -3 (0) and 3 (1), hardsigmoid at +-3 (0). HW = 1 and identity weights put the MLP's inputs
    exactly on the kinks (p = x, u = p, z = act(u), all exact): x takes the values
    {-4, -3, -1.5, 0, 1.5, 3, 4}, so hardswish(3) = 3 also lands on the gate's kink."""
    N, C = 3, 14
    g = torch.Generator().manual_seed(21)
    vals = torch.tensor([-4.0, -3.0, -1.5, 0.0, 1.5, 3.0, 4.0], dtype=torch.float64)
    x = vals[torch.randint(0, len(vals), (N, C, 1, 1), generator=g)].to(DEVICE, dtype)
    eye = torch.eye(C, dtype=dtype, device=DEVICE)
    zeros = torch.zeros(C, dtype=dtype, device=DEVICE)
    case = (x, None, None, eye, zeros) if single else (x, eye, zeros, eye.clone(), zeros.clone())
    for pool in POOLS:  # avgmax: p = 0.5 x + 0.5 x = x too
        run_and_check(kernel_backend, case, act, gate, pool, seed=22)



@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's, under the Triton interpreter
@pytest.mark.parametrize("where", ["x", "dy", "w1", "b2"])
def test_se_non_finite_values_reach_the_outputs_as_in_eager(kernel_backend, where):
    """An inf, -inf or NaN in x, dy, w1 or b2 makes the same elements of y, dx, dW1, db1, dW2, db2
    non-finite as in eager PyTorch (what AMP's GradScaler looks for), and no others: a saturated
    hardsigmoid gate or a flat relu / hardswish piece gives a 0 gradient, even for an inf one,
    because PyTorch's backward picks there instead of multiplying (inf * 0 would be NaN). (NaN
    against inf may differ: the order of the sums decides inf - inf. gelu is left out: torch's
    gelu(inf) is NaN.)"""
    for (act, gate, pool), val in itertools.product(
            [("relu", "hardsigmoid", "avgmax"), ("hardswish", "hardsigmoid", "avg"), ("silu", "sigmoid", "avgmax")],
            [float("inf"), float("-inf"), float("nan")]):
        case = list(make_case((3, 6, 4, 5, 2), torch.float32, seed=41))
        dy = rand(case[0].shape, torch.float32, DEVICE, torch.Generator().manual_seed(42))
        if where == "dy":
            dy[1, 2, 1, 3] = val
        else:
            i, idx = {"x": (0, (1, 2, 1, 3)), "w1": (1, (1, 3)), "b2": (4, (2,))}[where]
            case[i] = case[i].clone()
            case[i][idx] = val
        ins, ref = _leaves(case), _leaves([t.cpu() for t in case])
        y = ak.se(*ins, act=act, gate=gate, pool=pool, backend=kernel_backend)
        y.backward(dy)
        y_ref = reference.se(*ref, act, gate, pool)
        y_ref.backward(dy.cpu())
        for name, a, b in [("y", y, y_ref)] + [(n, t.grad, r.grad) for n, t, r in
                                                zip(("dx", "dw1", "db1", "dw2", "db2"), ins, ref)]:
            assert torch.equal(torch.isfinite(a).cpu(), torch.isfinite(b)), (
                f"{name}: {int((~torch.isfinite(a)).sum())} non-finite values, eager has "
                f"{int((~torch.isfinite(b)).sum())} ({val} in {where}; {act}/{gate}/{pool})")

def _positive(shape, g, device=DEVICE, dtype=torch.float64):
    """Uniform in [0.5, 1.5): sums of such terms have no cancellation, so the relative error of
    each output measures the summation alone."""
    return (torch.rand(shape, generator=g, dtype=torch.float64) + 0.5).to(device, dtype)


def _grads_fp32_and_fp64(backend, x, w1, b1, w2, b2, dy):
    ins = [t.float().requires_grad_() for t in (x, w1, b1, w2, b2)]
    ak.se(*ins, act="relu", gate="sigmoid", backend=backend).backward(dy.float())
    i64 = [t.detach().double().cpu().requires_grad_() for t in (x, w1, b1, w2, b2)]
    reference.se(*i64, "relu", "sigmoid", "avg").backward(dy.double().cpu())
    return [t.grad for t in ins], [t.grad for t in i64]


def _max_rel_err(out, ref64):
    """Largest relative error over the non-zero reference values (relu's h = 0 makes exact zeros)."""
    nz = ref64 != 0
    return ((out.detach().double().cpu() - ref64).abs()[nz] / ref64.abs()[nz]).max().item()


@pytest.mark.parametrize("variant", ["auto", "batched"])
def test_se_sigmoid_gradient_as_the_gate_saturates(kernel_backend, variant):
    """sigmoid'(z) comes from z (e / (1 + e)^2, e = exp(-|z|)), not from the rounded gate as
    s * (1 - s): at |z| = 6..20 one ulp of s is 1e-3 .. 1 of 1 - s, and autograd's formula (which
    the fp32 reference and the kernels used before) gets db2 = sum_n dz wrong by 1e-2 .. 100%
    (s = 1 exactly: 0). x, dy, w1, b1 > 0: every sum but z's positive, no cancellation, so the
    1e-5 relative bound measures the gate's gradient. (With w1 of both signs, as before
    2026-12-05, it also held u = W1 p + b1, under cancellation, to 1e-5 relative, tighter than
    the 2x-the-reference standard: eager's fp32 u is 1.7e-5 off there, the batched variant's
    1.6e-5 through its BLAS-ordered dot.)"""
    N, C, Cr = 2, 16, 4
    g = torch.Generator().manual_seed(31)
    x, dy = _positive((N, C, 3, 3), g), _positive((N, C, 3, 3), g)
    w1, b1 = _positive((Cr, C), g) / C, _positive((Cr,), g)
    w2 = (torch.randn(C, Cr, generator=g, dtype=torch.float64) * 0.05).to(DEVICE)
    side = torch.where(torch.arange(C) % 2 == 0, 1.0, -1.0).double()
    b2 = ((torch.rand(C, generator=g, dtype=torch.float64) * 14 + 6) * side).to(DEVICE)  # |z| in ~[6, 20]
    with force_variant(variant):
        (_, _, _, dw2, db2), (_, _, _, dw2_64, db2_64) = _grads_fp32_and_fp64(kernel_backend, x, w1, b1, w2, b2,
                                                                              dy)
    assert _max_rel_err(db2, db2_64) < 1e-5, "db2"
    assert _max_rel_err(dw2, dw2_64) < 1e-5, "dw2"


@pytest.mark.skipif(DEVICE.type == "cpu" and "cuda-emu" not in KERNEL_BACKENDS, reason="needs cuda-emu on the CPU")
@pytest.mark.parametrize("N", [8192, 523])
def test_se_weight_gradients_sum_the_batch_blocked(kernel_backend, N):
    """dW2 and db2 sum N = 8192 samples (blocked_sum / _outer_sum_tile: trees of 8, blocks of 64):
    each output within 1e-6 relative of fp64, where adding the samples one after another was off
    by 1.8e-6 .. 4e-6 (and autograd's fp32 matmul for dW2 by 2e-6 .. 4e-6). Positive terms, an
    unsaturated gate. N = 523: the same blocked path with a partial block and tree, small enough for
    `make test-asan` (which leaves out 8192: 150 s instrumented). The Triton interpreter runs the
    op's 8192-program grids too slowly: test_se_triton_weight_gradient_kernel_sums_blocked checks
    its kernel there."""
    if DEVICE.type == "cpu" and kernel_backend == "triton":
        pytest.skip("the Triton interpreter: see test_se_triton_weight_gradient_kernel_sums_blocked")
    C, Cr = 8, 2
    g = torch.Generator().manual_seed(32)
    x, dy = _positive((N, C, 1, 1), g), _positive((N, C, 1, 1), g)
    w1, b1 = _positive((Cr, C), g), _positive((Cr,), g)
    w2, b2 = (torch.randn(C, Cr, generator=g, dtype=torch.float64) * 0.3).to(DEVICE), _positive((C,), g) - 1
    (_, _, _, dw2, db2), (_, _, _, dw2_64, db2_64) = _grads_fp32_and_fp64(kernel_backend, x, w1, b1, w2, b2, dy)
    assert _max_rel_err(db2, db2_64) < 1e-6, "db2"
    assert _max_rel_err(dw2, dw2_64) < 1e-6, "dw2"


def test_se_triton_weight_gradient_kernel_sums_blocked():
    """The Triton weight-gradient kernel alone on N = 8192 saved vectors (positive: no
    cancellation): dW2 = dz^T act(u), db2, dW1 = du^T p, db1 within 1e-6 relative of fp64; a
    sample-by-sample sum was off by ~2e-6 .. 4e-6 (see the test above)."""
    if "triton" not in KERNEL_BACKENDS:
        pytest.skip("no triton backend here")
    import triton.language as tl

    from attnkernels.triton import se as tse
    N, C, Cr = 8192, 40, 3
    g = torch.Generator().manual_seed(33)
    dz, p = _positive((N, C), g, dtype=torch.float32), _positive((N, C), g, dtype=torch.float32)
    du, u = _positive((N, Cr), g, dtype=torch.float32), _positive((N, Cr), g, dtype=torch.float32)
    outs = [torch.full(shape, float("nan"), device=DEVICE) for shape in ((Cr, C), (Cr,), (C, Cr), (C,))]
    grid, block_a, block_b = tse._weights_plan(C, Cr)
    tse._se_bwd_weights[grid](dz, du, u, p, *outs, N, C, Cr, ACT="relu", ACC=tl.float32,
                              BLOCK_A=block_a, BLOCK_B=block_b, num_warps=4)
    dz, du, u, p = (t.double().cpu() for t in (dz, du, u, p))
    for name, out, ref in zip(("dw1", "db1", "dw2", "db2"), outs, (du.t() @ p, du.sum(0), dz.t() @ u, dz.sum(0))):
        assert _max_rel_err(out, ref) < 1e-6, name


@pytest.mark.parametrize("act,gate,pool", COMBOS)
def test_se_gradcheck(kernel_backend, act, gate, pool):
    case = make_case((2, 3, 2, 3, 2), torch.float64, seed=3)
    ins = _leaves(case)
    assert torch.autograd.gradcheck(
        lambda *a: ak.se(*a, act=act, gate=gate, pool=pool, backend=kernel_backend), ins, fast_mode=True)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_se_gradcheck_full_conv_weights(kernel_backend, channels_last):
    case = make_case((2, 3, 2, 1, 2), torch.float64, channels_last, seed=4, conv_weights=True)
    ins = _leaves(case)
    assert torch.autograd.gradcheck(
        lambda *a: ak.se(*a, act="silu", pool="avgmax", backend=kernel_backend), ins)


@pytest.mark.parametrize("channels_last,pool,bias", [(False, "avgmax", True), (True, "avg", False)])
def test_se_opcheck(kernel_backend, channels_last, pool, bias):
    x, w1, b1, w2, b2 = make_case((2, 6, 3, 4, 3), torch.float32, channels_last, bias=bias)
    x, w1, w2 = x.requires_grad_(), w1.requires_grad_(), w2.requires_grad_()
    torch.library.opcheck(torch.ops.attnkernels.se_forward.default,
                          (x, w1, b1, w2, b2, "gelu", "hardsigmoid", pool, kernel_backend))
    y, s, z, u, p, pmax = torch.ops.attnkernels.se_forward(x, w1, b1, w2, b2, "gelu", "hardsigmoid", pool, kernel_backend)
    dy = torch.randn_like(y)
    s, z, u, p, pmax = (t.detach() for t in (s, z, u, p, pmax))
    torch.library.opcheck(torch.ops.attnkernels.se_backward.default,
                          (dy, x.detach(), w1.detach(), w2.detach(), s, z, u, p, pmax,
                           "gelu", "hardsigmoid", pool, kernel_backend))


def test_se_compile_fullgraph(kernel_backend):
    _check_compile_fullgraph(kernel_backend, make_case((2, 8, 5, 5, 3), torch.float32, channels_last=True),
                             pool="avgmax")


def _check_compile_fullgraph(kernel_backend, case, pool):
    """torch.compile(fullgraph=True) of `se` matches the eager call, forward and backward."""
    torch._dynamo.reset()

    def f(x, w1, b1, w2, b2):
        return ak.se(x, w1, b1, w2, b2, act="hardswish", pool=pool, backend=kernel_backend)

    _assert_same_fwd_bwd(torch.compile(f, fullgraph=True), f, case)


def _assert_same_fwd_bwd(compiled, eager, case):
    """compiled(*case) and eager(*case), each on its own leaves: equal outputs and gradients."""
    a, b = _leaves(case), _leaves(case)
    y_c, y_e = compiled(*a), eager(*b)
    torch.testing.assert_close(y_c, y_e)
    dy = torch.randn_like(y_e)
    y_c.backward(dy)
    y_e.backward(dy)
    for ta, tb in zip(a, b):
        if ta is not None:
            torch.testing.assert_close(ta.grad, tb.grad)


def test_se_compile_dynamic_shapes(kernel_backend):
    """torch.compile(dynamic=True): one graph serves new batch and spatial sizes (the fake
    kernels take symbolic shapes), forward and backward matching eager at each."""
    import torch._dynamo.testing
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")

    def f(x, w1, b1, w2, b2):
        return ak.se(x, w1, b1, w2, b2, act="silu", pool="avgmax", backend=kernel_backend)
    compiled = torch.compile(f, fullgraph=True, dynamic=True, backend=counter)
    for seed, shape in enumerate([(2, 8, 5, 6, 3), (3, 8, 7, 4, 3), (5, 8, 3, 9, 3)]):
        _assert_same_fwd_bwd(compiled, f, make_case(shape, torch.float32, seed=seed))
    assert counter.frame_count == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph trees need a GPU")
def test_se_compile_reduce_overhead(kernel_backend):
    """torch.compile(mode="reduce-overhead"): inductor's CUDA graph trees warm up and record in
    a private memory pool and reset that pool to a checkpoint when they switch branches. Buffers
    the backends cache across calls (arrival counters; Triton's scratch) must survive that:
    shapes alternate so the tree branches, and every call must still match eager."""
    torch._dynamo.reset()

    def f(x, w1, b1, w2, b2):
        return ak.se(x, w1, b1, w2, b2, act="relu", pool="avgmax", backend=kernel_backend)
    compiled = torch.compile(f, mode="reduce-overhead", fullgraph=True)
    shapes = [(4, 24, 9, 9, 6), (6, 24, 5, 7, 6), (2, 24, 11, 3, 6)]
    for step in range(4):
        for i, shape in enumerate(shapes):
            _assert_same_fwd_bwd(compiled, f, make_case(shape, torch.float32, seed=10 * step + i))


@pytest.mark.parametrize("single_layer", [False, True], ids=["two_layers", "single_layer"])
@pytest.mark.parametrize("shape", [(0, 8, 4, 4, 2), (0, 1, 1, 1, 1), (2, 0, 4, 4, 2)], ids=str)
def test_se_empty_batch(kernel_backend, shape, single_layer):
    """N=0 (and C=0): an empty output and zero weight gradients, on every backend."""
    x, w1, b1, w2, b2 = _leaves(make_case(shape, torch.float32, single_layer=single_layer))
    y = ak.se(x, w1, b1, w2, b2, act="identity" if single_layer else "relu", backend=kernel_backend)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape and w2.grad is not None and float(w2.grad.abs().sum()) == 0.0
    assert single_layer or (w1.grad is not None and float(w1.grad.abs().sum()) == 0.0)


def test_se_empty_image(kernel_backend):
    """H=0: an empty output (eager torchvision's adaptive pool raises there)."""
    x, w1, b1, w2, b2 = make_case((2, 8, 0, 3, 2), torch.float32)
    assert ak.se(x, w1, b1, w2, b2, backend=kernel_backend).shape == x.shape


def test_se_non_contiguous_input(kernel_backend):
    x, w1, b1, w2, b2 = make_case((2, 6, 8, 10, 3), torch.float32)
    xs = x[:, :, ::2, 1:]  # strided view: made contiguous in its suggested format
    y = ak.se(xs, w1, b1, w2, b2, backend=kernel_backend)
    torch.testing.assert_close(y, reference.se(xs, w1, b1, w2, b2), rtol=1e-5, atol=1e-5)
    xp = x.permute(0, 1, 3, 2)  # transposed H/W: neither NCHW- nor channels_last-contiguous
    y = ak.se(xp, w1, b1, w2, b2, backend=kernel_backend)
    torch.testing.assert_close(y, reference.se(xp, w1, b1, w2, b2), rtol=1e-5, atol=1e-5)
    # strided biases and weights (views into larger buffers)
    bs1, bs2 = torch.stack([b1, -b1], 1)[:, 0], torch.stack([b2, -b2], 1)[:, 1]
    ws1 = torch.cat([w1, w1], 1)[:, 1::2]
    assert not (bs1.is_contiguous() or bs2.is_contiguous() or ws1.is_contiguous())
    y = ak.se(x, ws1, bs1, w2, bs2, backend=kernel_backend)
    torch.testing.assert_close(y, reference.se(x, ws1, bs1, w2, bs2), rtol=1e-5, atol=1e-5)
    # the gradient reaches the strided view's base
    for view in (lambda t: t[:, :, ::2, 1:], lambda t: t.permute(0, 1, 3, 2)):
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        dy = rand(view(x).shape, x.dtype, x.device, torch.Generator().manual_seed(3))
        ak.se(view(xa), w1, b1, w2, b2, backend=kernel_backend).backward(dy)
        reference.se(view(xb), w1, b1, w2, b2).backward(dy)
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["auto", "pipelined", "batched"])
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "frozen", "only_b2"])
def test_se_forward_with_and_without_autograd(kernel_backend, mode, variant):
    """With nothing to differentiate (no_grad, inference mode, no input requiring grad) the op
    skips its autograd Function (Triton: se_inference, its vectors in reused scratch: two calls
    of other shapes in a row); with one input that requires grad it must not."""
    with force_variant(variant, lag=1):
        for shape in ((3, 20, 5, 7, 5), (2, 36, 4, 3, 7)):
            _with_and_without_autograd_case(kernel_backend, mode, shape)


def _with_and_without_autograd_case(kernel_backend, mode, shape):
    case = make_case(shape, torch.float32, channels_last=mode == "frozen", seed=31)
    ins = [None if t is None else t.clone() for t in case]
    if mode in ("no_grad", "inference_mode"):
        ins = _leaves(case)
    elif mode == "only_b2":
        ins[4].requires_grad_()
    ctx = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}.get(mode, contextlib.nullcontext)
    with ctx(), poisoned():
        y = ak.se(*ins, act="gelu", gate="hardsigmoid", pool="avgmax", backend=kernel_backend)
    ref64 = _leaves([to64(t).cpu() for t in case])
    y64 = reference.se(*ref64, "gelu", "hardsigmoid", "avgmax")
    assert_matches(y, reference.se(*case, "gelu", "hardsigmoid", "avgmax"), y64, "y")
    assert y.requires_grad == (mode == "only_b2")
    if mode == "only_b2":
        dy = rand(y.shape, y.dtype, y.device, torch.Generator().manual_seed(5))
        (db2,) = torch.autograd.grad(y, ins[4], dy)
        (db2_64,) = torch.autograd.grad(y64, ref64[4], to64(dy).cpu())
        torch.testing.assert_close(db2.cpu().double(), db2_64, rtol=1e-4, atol=1e-5)


def test_se_first_call_under_inference_mode(kernel_backend, monkeypatch):
    """A backend's cached buffers (Triton's scratch and counters) created by a first call under
    torch.inference_mode serve later calls outside it, which update them in place (the tests'
    poisoning): they must not be inference tensors. (Which test ran first in an xdist worker used
    to decide whether the autograd tests below failed.)"""
    import attnkernels.triton._common as tc
    monkeypatch.setattr(tc, "_scratch", {})
    monkeypatch.setattr(tc, "_counters", {})
    with torch.inference_mode():
        _with_and_without_autograd_case(kernel_backend, "inference_mode", (2, 12, 5, 4, 3))
    for mode in ("frozen", "only_b2", "no_grad"):
        _with_and_without_autograd_case(kernel_backend, mode, (2, 12, 5, 4, 3))


def test_se_repeated_calls_reuse_counters(kernel_backend):
    """The arrival counters reset themselves and the cached workspaces (Triton) serve calls of
    other sizes (poisoned each call): many calls of different shapes stay correct."""
    for i, shape in enumerate([(3, 8, 4, 4, 2), (1, 33, 3, 3, 4), (5, 8, 2, 7, 2)] * 2):
        case = make_case(shape, torch.float32, seed=i)
        with poisoned():
            y = ak.se(*case, backend=kernel_backend)
        torch.testing.assert_close(y, reference.se(*case), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["auto", "pipelined", "fused", "batched"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_se_is_deterministic(kernel_backend, variant, channels_last, monkeypatch):
    """Run to run, the same bits: no float atomics (the program or block that arrives last
    combines the partials in a fixed order, whichever it is), forward and backward, every
    variant. On cuda-emu the two runs take the blocks in two random orders (CUEMU_BLOCK_ORDER),
    under the Triton interpreter the programs (shuffled_program_order), so another block of each
    sample is the last; on a GPU the arrival order varies by itself."""
    if variant == "fused" and kernel_backend == "triton":
        pytest.skip("Triton has no fused variant")
    case = make_case((3, 40, 24, 24, 10), torch.float32, channels_last=channels_last, seed=5)
    dy = rand(case[0].shape, torch.float32, case[0].device, torch.Generator().manual_seed(6))
    runs = []
    for seed in (1, 2):
        monkeypatch.setenv("CUEMU_BLOCK_ORDER", f"random:{seed}")
        leaves = _leaves(case)
        shuffled = kernel_backend == "triton" and DEVICE.type == "cpu"
        with shuffled_program_order(seed) if shuffled else contextlib.nullcontext(), \
                force_variant(variant, bps=7, lag=1):  # CUDA: 7 blocks per sample race to be last
            y = ak.se(*leaves, act="gelu", pool="avgmax", backend=kernel_backend)
            y.backward(dy)
        runs.append([y.detach()] + [t.grad for t in leaves])
    for name, a, b in zip(("y", "dx", "dw1", "db1", "dw2", "db2"), *runs):
        assert torch.equal(a, b), f"{name} differs between two runs"


def _backend_module(backend):
    import importlib
    return importlib.import_module("attnkernels.triton.se" if backend == "triton" else "attnkernels.cuda")


def _pipelined_runs_as(kernel_backend, device):
    """What a forced "pipelined" reports: the CUDA build runs it where it has sm_90 code only."""
    return "pipelined" if kernel_backend == "triton" or sm90_code_here(device) else "split"


@pytest.mark.parametrize("lag", [1, 2, 0], ids=lambda v: f"lag{v}")
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_se_pipelined_variant(kernel_backend, lag, channels_last):
    """The one-launch pipelined forward (and on cuda the pipelined backward): ticket-ordered
    squeeze and rescale, interleaved when the lag is below N (lag 0: the default, from the L2
    size). Repeated calls: the ready counters and the ticket re-zero themselves."""
    mod = _backend_module(kernel_backend)
    for shape, dtype in (((5, 24, 9, 9, 6), torch.float32), ((4, 300, 3, 3, 20), torch.bfloat16),
                         ((3, 1, 1, 1, 1), torch.float32)):
        case = make_case(shape, dtype, channels_last, seed=lag)
        with force_variant("pipelined", lag=lag):
            run_and_check(kernel_backend, case, "silu", "sigmoid", "avgmax")
            assert mod.last_variant() == _pipelined_runs_as(kernel_backend, case[0].device)
            run_and_check(kernel_backend, case, "relu", "hardsigmoid", "avg", check_grad=False)
    if kernel_backend == "triton":
        from attnkernels.triton._common import arrival_counters
        assert not arrival_counters(case[0].device, 1).any(), "counters left non-zero"
    y = ak.se(*case, backend=kernel_backend)  # the default variant after the pipelined ones
    torch.testing.assert_close(y, reference.se(*case), rtol=1e-5, atol=1e-5)


def test_se_backward_keeps_the_forwards_variant_on_another_thread(monkeypatch):
    """On CUDA the autograd engine runs backward nodes on its own thread, which the caller's
    thread-local force_variant does not reach: the forward's variant request is saved with the
    op and runs the backward (here the backward runs on another thread, as it does there)."""
    if "triton" not in KERNEL_BACKENDS:
        pytest.skip("needs the triton backend")
    import threading
    import attnkernels.triton.se as tse
    launched = []

    class Spy:  # records launches of the pipelined backward kernel, then launches it
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            launched.append(grid)
            return self.kernel[grid]

    monkeypatch.setattr(tse, "_se_bwd_pipelined", Spy(tse._se_bwd_pipelined))
    case = _leaves(make_case((3, 8, 4, 4, 2), torch.float32))
    with force_variant("pipelined", lag=1):
        y = ak.se(*case, backend="triton")
    dy = torch.ones_like(y)
    t = threading.Thread(target=lambda: y.backward(dy))
    t.start()
    t.join()
    assert launched, "the backward ran another variant than the forward's"
    ref = _leaves(case)
    reference.se(*ref).backward(dy)
    torch.testing.assert_close(case[0].grad, ref[0].grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["pipelined", "batched"])
def test_se_ticket_ordered_variants_gradcheck_opcheck_compile(kernel_backend, variant):
    """The pipelined variant (lag 1: squeezes and rescales interleaved) and the batched one
    (groups of samples) through the op's whole contract: fp64 gradcheck, opcheck of both
    custom ops, torch.compile(fullgraph) forward and backward matching the eager run. (The CUDA
    build runs float64 with its split kernels, so on cuda / cuda-emu the gradcheck covers the op
    around them; test_se_cuda_emu checks the CUDA kernels in float32/16 against the reference.)"""
    with force_variant(variant, lag=1):
        ins = _leaves(make_case((3, 3, 2, 3, 2), torch.float64, channels_last=True, seed=5))
        assert torch.autograd.gradcheck(
            lambda *a: ak.se(*a, act="silu", pool="avgmax", backend=kernel_backend), ins, fast_mode=True)
        x, w1, b1, w2, b2 = make_case((3, 6, 3, 4, 3), torch.float32)
        args = (x.requires_grad_(), w1.requires_grad_(), b1, w2.requires_grad_(), b2, "relu", "sigmoid", "avgmax",
                kernel_backend)
        torch.library.opcheck(torch.ops.attnkernels.se_forward.default, args)
        y, s, z, u, p, pmax = torch.ops.attnkernels.se_forward(*args)
        torch.library.opcheck(torch.ops.attnkernels.se_backward.default,
                              (torch.randn_like(y), x.detach(), w1.detach(), w2.detach(),
                               *(t.detach() for t in (s, z, u, p, pmax)), "relu", "sigmoid", "avgmax",
                               kernel_backend))
        _check_compile_fullgraph(kernel_backend, make_case((3, 8, 5, 5, 3), torch.float32, channels_last=True),
                                 pool="avg")
        ran = _pipelined_runs_as(kernel_backend, x.device)
        if variant == "batched":  # (where the CUDA build runs split for pipelined, it does for batched)
            ran = ran.replace("pipelined", "batched")
        assert _backend_module(kernel_backend).last_variant() == ran


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_se_batched_groups(kernel_backend, channels_last):
    """The batched variant against the reference, poisoned, forward and backward: groups of 8
    samples with the last one short (N = 11, 3), several channel blocks and weight-row blocks,
    HW split into slices (each sample's partials, one arrival per group) or not, tied maxima,
    low precision, and the single-layer form. (Triton: programs over (group, channel block);
    CUDA: the batched excitation tiles.)"""
    # (HW splits where HW spans several tiles: (11, 70, 7, 7) channels_last, (9, 24, 24, 24) both)
    cases = [((11, 70, 7, 7, 9), torch.bfloat16, dict(ties=True), ("gelu", "hardsigmoid", "avgmax"), 2),
             ((3, 130, 4, 4, 40), torch.float16, {}, ("relu", "sigmoid", "avg"), 0),
             ((9, 24, 24, 24, 0), torch.float32, dict(single_layer=True), ("identity", "sigmoid", "avgmax"), 3)]
    for i, (shape, dtype, opt, opts, bps) in enumerate(cases):
        case = make_case(shape, dtype, channels_last, seed=40 + i, **opt)
        with force_variant("batched", bps=bps):
            run_and_check(kernel_backend, case, *opts)
            assert _backend_module(kernel_backend).last_variant() == \
                _pipelined_runs_as(kernel_backend, case[0].device).replace("pipelined", "batched")


@pytest.mark.parametrize("variant", ["split", "batched"])  # (pipelined: test_se_triton_programs_interleaved)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_se_triton_programs_in_any_order(variant, channels_last):
    """On a GPU a grid's programs run in any order; the interpreter runs them in pid order, so the
    last to arrive at a counter (of a channel block's HW splits, a sample's or a group's channel
    blocks) was always the one with the largest pid, and a kernel that took that for granted
    would pass here and fail there. Here the same kernels in shuffled orders
    (triton_interpreter.shuffled_program_order): HW splits, several channel blocks, groups with a
    short last one, forward and backward, the single-layer form."""
    if "triton" not in KERNEL_BACKENDS or DEVICE.type == "cuda":
        pytest.skip("the Triton interpreter's program order (a GPU has its own)")
    cases = [((11, 70, 7, 7, 9), torch.bfloat16, dict(ties=True), ("gelu", "hardsigmoid", "avgmax"), 2),
             ((3, 20, 24, 24, 5), torch.float32, {}, ("relu", "sigmoid", "avgmax"), 3),
             ((6, 24, 12, 12, 0), torch.float32, dict(single_layer=True), ("identity", "sigmoid", "avg"), 2)]
    for i, (shape, dtype, opt, opts, bps) in enumerate(cases):
        case = make_case(shape, dtype, channels_last, seed=60 + i, **opt)
        with shuffled_program_order(i) as order, force_variant(variant, bps=bps):
            run_and_check("triton", case, *opts)
        assert order["reordered"] > 0, "the interpreter's grids ran in pid order"


@pytest.mark.parametrize("variant", ["pipelined", "split", "batched"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_se_triton_programs_interleaved(variant, channels_last):
    """On a GPU a launch's programs run at the same time; the interpreter runs one to its end, then
    the next. So in the pipelined kernels (persistent programs taking squeeze and rescale tiles by
    ticket) the first program took every ticket and a rescale tile never had to wait for another
    program's squeeze: without its wait (_wait_ready) the tests above still passed. Here the
    programs of each launch run interleaved (triton_interpreter.interleaved_programs: switches at
    random around every atomic, spin-waits that really wait, plain stores hidden from the other
    programs until a release: a publish or arrival with sem="relaxed" fails; loads that see only
    what their program acquired: a wait or an arrival that does not acquire fails, and no load may
    read a value older than memory held), forward and backward, lag 1 and 2, HW splits, several
    channel blocks, short groups; then the counters must be back at zero."""
    if "triton" not in KERNEL_BACKENDS or DEVICE.type == "cuda":
        pytest.skip("the Triton interpreter's programs (a GPU runs its own concurrently)")
    import attnkernels.triton.se as tse
    from attnkernels.triton._common import arrival_counters
    cases = [((5, 24, 9, 9, 6), torch.float32, {}, ("silu", "sigmoid", "avgmax"), 1),
             ((6, 70, 7, 7, 9), torch.bfloat16, dict(ties=True), ("gelu", "hardsigmoid", "avgmax"), 2),
             ((4, 20, 12, 12, 0), torch.float32, dict(single_layer=True), ("identity", "sigmoid", "avg"), 1)]
    for i, (shape, dtype, opt, opts, lag) in enumerate(cases):
        case = make_case(shape, dtype, channels_last, seed=80 + i, **opt)
        bps = 0 if variant == "pipelined" else lag + 1
        with interleaved_programs(seed=10 * i + channels_last) as sched, force_variant(variant, bps=bps, lag=lag):
            run_and_check("triton", case, *opts)
            assert tse.last_variant() == variant
        assert sched["interleaved"] > 0 and sched["buffered"] > 0, f"no program was paused for another: {sched}"
        assert sched["stale"] == 0, f"a load read data its program had not acquired: {sched}"
    assert not arrival_counters(case[0].device, 1).any(), "counters left non-zero"


def test_se_triton_batched_group_fills_the_gpu(monkeypatch):
    """The batched plan halves its groups (down to 2 samples) while the grid would have under ~2
    programs an SM: a 132-SM GPU's target (528 programs) at ResNet-50 stage 4."""
    if "triton" not in KERNEL_BACKENDS:
        pytest.skip("no triton backend here")
    from attnkernels.triton import se as tse
    monkeypatch.setattr(tse, "target_programs", lambda device: 4 * 132)
    tse._plan_for.cache_clear()
    try:
        for N, nchw, group in ((128, True, 8), (128, False, 8), (32, True, 4), (16, True, 2), (3, True, 2)):
            grid, a, _ = tse._plan_for((N, 2048, 7, 7), nchw, 128, torch.device("cpu"), 8 if N > 4 else 4)
            assert a["GROUP"] == group, (N, nchw, a["GROUP"])
            assert grid[0] == -(-N // group) * a["n_cblk"] * a["n_split"]
    finally:
        tse._plan_for.cache_clear()


# ---------------------------------------------------------------------------------------------
# the single-layer form (w1 None): timm's EffectiveSEModule, y = x * gate(w2 @ act(pool(x)) + b2)
# ---------------------------------------------------------------------------------------------
SINGLE_LAYER_OPTS = [("identity", "hardsigmoid", "avg"), ("identity", "sigmoid", "avgmax"),
                     ("relu", "hardsigmoid", "avgmax"), ("gelu", "sigmoid", "avg")]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[2], SHAPES[3], SHAPES[7]], ids=str)
def test_se_single_layer_matches_reference(kernel_backend, shape, dtype, channels_last):
    i = SHAPES.index(shape) + DTYPES.index(dtype) + channels_last
    case = make_case(shape, dtype, channels_last, bias=i % 3 != 0, seed=i, single_layer=True)
    run_and_check(kernel_backend, case, *SINGLE_LAYER_OPTS[i % len(SINGLE_LAYER_OPTS)])


@pytest.mark.parametrize("variant", ["auto", "pipelined"])
def test_se_single_layer_gradcheck_opcheck_compile(kernel_backend, variant):
    """The single-layer form through the op's contract: fp64 gradcheck (conv-shaped w2, with and
    without b2), opcheck of both custom ops (dw1 / db1 come back empty), compile(fullgraph)."""
    with force_variant(variant, lag=1):
        for pool, bias, cl in (("avg", True, False), ("avgmax", False, True)):
            x, _, _, w2, b2 = _leaves(make_case((3, 4, 2, 3, 0), torch.float64, cl, bias=bias, seed=8,
                                                conv_weights=True, single_layer=True))
            assert torch.autograd.gradcheck(
                lambda x, w2, b2: ak.se(x, None, None, w2, b2, act="identity", gate="hardsigmoid", pool=pool,
                                        backend=kernel_backend), (x, w2, b2), fast_mode=True)
        x, _, _, w2, b2 = make_case((3, 6, 3, 4, 0), torch.float32, single_layer=True)
        args = (x.requires_grad_(), None, None, w2.requires_grad_(), b2, "identity", "hardsigmoid", "avgmax",
                kernel_backend)
        torch.library.opcheck(torch.ops.attnkernels.se_forward.default, args)
        y, s, z, u, p, pmax = torch.ops.attnkernels.se_forward(*args)
        bwd_args = (torch.randn_like(y), x.detach(), None, w2.detach(), *(t.detach() for t in (s, z, u, p, pmax)),
                    "identity", "hardsigmoid", "avgmax", kernel_backend)
        torch.library.opcheck(torch.ops.attnkernels.se_backward.default, bwd_args)
        dx, dw1, db1, dw2, db2 = torch.ops.attnkernels.se_backward(*bwd_args)
        assert dw1.shape == (0,) and db1.shape == (0,) and dw2.shape == w2.shape
        torch._dynamo.reset()

        def f(x, w1, b1, w2, b2):
            return ak.se(x, w1, b1, w2, b2, act="identity", gate="hardsigmoid", pool="avgmax",
                         backend=kernel_backend)
        case = make_case((3, 8, 5, 5, 0), torch.float32, channels_last=True, seed=9, single_layer=True)
        _assert_same_fwd_bwd(torch.compile(f, fullgraph=True), f, case)


@pytest.mark.parametrize("mode", ["no_grad", "only_b2"])
def test_se_single_layer_without_autograd(kernel_backend, mode):
    """No-grad (Triton: se_inference, its vectors in reused scratch) and a call where only b2
    wants a gradient (no dw1 to form), poisoned, against the references."""
    case = make_case((3, 20, 5, 7, 0), torch.float32, channels_last=mode == "only_b2", seed=13, single_layer=True)
    ins = list(case)
    if mode == "only_b2":
        ins[4] = ins[4].clone().requires_grad_()
    ctx = torch.no_grad() if mode == "no_grad" else contextlib.nullcontext()
    with ctx, poisoned():
        y = ak.se(*ins, act="identity", gate="hardsigmoid", pool="avgmax", backend=kernel_backend)
    ref64 = _leaves([None if t is None else to64(t).cpu() for t in case])
    y64 = reference.se(*ref64, "identity", "hardsigmoid", "avgmax")
    assert_matches(y, reference.se(*case, "identity", "hardsigmoid", "avgmax"), y64, "y")
    if mode == "only_b2":
        dy = rand(y.shape, y.dtype, y.device, torch.Generator().manual_seed(5))
        (db2,) = torch.autograd.grad(y, ins[4], dy)
        (db2_64,) = torch.autograd.grad(y64, ref64[4], to64(dy).cpu())
        torch.testing.assert_close(db2.cpu().double(), db2_64, rtol=1e-4, atol=1e-5)


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(N=st.integers(1, 3), C=st.integers(1, 40), H=st.integers(1, 9), W=st.integers(1, 9),
       Cr=st.integers(1, 8), combo=st.sampled_from(COMBOS), cl=st.booleans(), bias=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]), seed=st.integers(0, 2**16),
       single=st.sampled_from([False, False, True]),
       variant=st.sampled_from(["auto", "auto", "pipelined", "batched", "fused"]), bps=st.sampled_from([0, 0, 1, 3]))
def test_se_fuzz(N, C, H, W, Cr, combo, cl, bias, dtype, seed, single, variant, bps):
    """single: the single-layer form (w1 None), a third of the examples. variant / bps: a forced
    variant (each backend runs what it has of it) and reduce slices per sample (0: the launcher's
    choice). tests/random_search_se.py runs the same kind of search wider, by hand."""
    for backend in ak.available_backends(DEVICE):
        if backend == "reference":
            continue
        case = make_case((N, C, H, W, Cr), dtype, cl, bias, seed=seed, single_layer=single)
        with force_variant(variant, bps=bps):
            run_and_check(backend, case, *combo, seed=seed + 1)


# ---------------------------------------------------------------------------------------------
# bad input: a clear error naming the argument
# ---------------------------------------------------------------------------------------------
def _good():
    return make_case((2, 8, 3, 3, 2), torch.float32)


@pytest.mark.parametrize("mutate,exc,match", [
    (lambda a: a.update(x=a["x"][0]), ValueError, "x must be 4-D"),
    (lambda a: a.update(x=a["x"].to(torch.int32)), TypeError, "x must be a float"),
    (lambda a: a.update(x=a["x"].cpu().numpy()), TypeError, "x must be a torch.Tensor"),
    (lambda a: a.update(w1=a["w1"][:, :5]), ValueError, "w1 has shape"),
    (lambda a: a.update(w1=a["w1"][None]), ValueError, "w1 must be"),
    (lambda a: a.update(w2=a["w2"][:, :1]), ValueError, "w2 has shape"),
    (lambda a: a.update(b1=a["b1"][:1]), ValueError, "b1 has shape"),
    (lambda a: a.update(b2=a["b2"][None]), ValueError, "b2 must be 1-D"),
    (lambda a: a.update(w1=a["w1"].double()), TypeError, "w1 has dtype"),
    (lambda a: a.update(b2=a["b2"].half()), TypeError, "b2 has dtype"),
    (lambda a: a.update(w2=a["w2"].to("meta")), ValueError, "w2 is on meta"),
    (lambda a: a.update(act="tanh"), ValueError, "act must be one of"),
    (lambda a: a.update(gate="softmax"), ValueError, "gate must be one of"),
    (lambda a: a.update(pool="max"), ValueError, "pool must be one of"),
    (lambda a: a.update(backend="cudnn"), ValueError, "backend must be one of"),
    (lambda a: a.update(w1=None), ValueError, "b1 given without w1"),
    (lambda a: a.update(w1=None, b1=None), ValueError, r"w2 has shape \(8, 2\), expected \(8, 8\)"),
    (lambda a: a.update(w1=a["w1"][:0], b1=a["b1"][:0], w2=a["w2"][:, :0]), ValueError, "at least one squeeze channel"),
])
@pytest.mark.parametrize("backend", [None] + KERNEL_BACKENDS)
def test_se_bad_input(mutate, exc, match, backend):
    x, w1, b1, w2, b2 = _good()
    args = dict(x=x, w1=w1, b1=b1, w2=w2, b2=b2, act="relu", gate="sigmoid", pool="avg", backend=backend)
    mutate(args)
    with pytest.raises(exc, match=match):
        ak.se(args.pop("x"), args.pop("w1"), args.pop("b1"), args.pop("w2"), args.pop("b2"), **args)


def test_se_too_large_for_32_bit_indexing(kernel_backend):
    """The kernels index within a sample with 32-bit integers: a sample of 2^31 or more elements
    gets a clear error, not an out-of-bounds access; so does, on Triton, a batch whose
    per-(sample, channel) vectors outgrow them. (x is never written: torch.empty's pages are
    not touched on the CPU.)"""
    w1, w2 = torch.randn(1, 2, device=DEVICE), torch.randn(2, 1, device=DEVICE)
    x = torch.empty((1, 2, 65536, 16385), dtype=torch.bfloat16, device=DEVICE)  # C*H*W = 2^31 + 2^17
    with pytest.raises((ValueError, RuntimeError), match=r"C\*H\*W"):
        ak.se(x, w1.bfloat16(), None, w2.bfloat16(), None, backend=kernel_backend)
    del x
    if kernel_backend == "triton":
        w1, w2 = torch.randn(2, 1024, device=DEVICE), torch.randn(1024, 2, device=DEVICE)
        x = torch.empty((2**21, 1024, 1, 1), dtype=torch.bfloat16, device=DEVICE)  # N*C = 2^31
        with pytest.raises(ValueError, match="too many samples"):
            ak.se(x, w1.bfloat16(), None, w2.bfloat16(), None, backend=kernel_backend)
        del x
    if DEVICE.type == "cuda":
        torch.cuda.empty_cache()  # (the 4 GB blocks would stay reserved by this worker)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("variant", ["auto", "pipelined", "batched"])
def test_se_cuda_graph_capture(kernel_backend, variant):
    """Forward and backward are capturable (no host sync, per-stream workspaces) and replays on
    new input values match the reference (replays reuse the counters: the kernels re-zero them;
    the pipelined variant with lag 1 interleaves its squeezes and rescales)."""
    with force_variant(variant, lag=1 if variant == "pipelined" else 0):
        _graph_capture_case(kernel_backend)


def _graph_capture_case(kernel_backend):
    x, w1, b1, w2, b2 = make_case((4, 24, 9, 9, 6), torch.float32, channels_last=True, seed=11)
    x = x.requires_grad_()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            ak.se(x, w1, b1, w2, b2, pool="avgmax", backend=kernel_backend).sum().backward()
    torch.cuda.current_stream().wait_stream(side)
    x.grad = None
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=side):
        y = ak.se(x, w1, b1, w2, b2, pool="avgmax", backend=kernel_backend)
        y.sum().backward()
    for seed in (12, 13):
        with torch.no_grad():
            x.copy_(make_case((4, 24, 9, 9, 6), torch.float32, channels_last=True, seed=seed)[0])
        x.grad.zero_()
        g.replay()
        torch.cuda.synchronize()
        xr = x.detach().clone().requires_grad_()
        yr = reference.se(xr, w1, b1, w2, b2, "relu", "sigmoid", "avgmax")
        yr.sum().backward()
        torch.testing.assert_close(y, yr, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x.grad, xr.grad, rtol=1e-5, atol=1e-5)


def _check_fwd_bwd_and_no_grad(kernel_backend, shape, seed, reference_on_cpu=False):
    """run_and_check's forward + backward, then the no-grad forward (Triton: se_inference),
    poisoned, against the references (all from CPU copies with reference_on_cpu)."""
    case = make_case(shape, torch.float32, channels_last=seed % 2 == 1, seed=seed)
    run_and_check(kernel_backend, case, "relu", "sigmoid", "avgmax", seed=seed,
                  lowp_reference_on_cpu=reference_on_cpu)
    with poisoned(), torch.no_grad():
        y = ak.se(*case, act="silu", backend=kernel_backend)
    lowp_case = [t.cpu() for t in case] if reference_on_cpu else case
    assert_matches(y, reference.se(*lowp_case, "silu", "sigmoid", "avg"),
                   reference.se(*[to64(t).cpu() for t in case], "silu", "sigmoid", "avg"), "y (no grad)")


def test_se_triton_takes_buffers_of_its_own_while_capturing(monkeypatch):
    """While a CUDA graph is being captured the Triton launchers use fresh buffers (graph-owned
    temporaries), not the ones cached per stream and thread: a graph must not share them with
    eager calls or other graphs, nor hold one that the cache frees when it grows. Simulated here
    (capture reported on, kernels run as usual) from a new thread, whose cache keys are new on
    the CPU: the caches must be left as they were, and the results right."""
    if "triton" not in KERNEL_BACKENDS:
        pytest.skip("no triton backend")
    import threading
    from attnkernels.triton import _common
    monkeypatch.setattr(_common, "capturing", lambda device: True)
    before = {name: dict(getattr(_common, name)) for name in ("_counters", "_scratch")}
    errors = []

    def run():
        try:
            for seed, shape in enumerate([(3, 20, 5, 7, 5), (5, 36, 6, 6, 7)]):
                with force_variant("pipelined" if seed else "auto", lag=1):
                    _check_fwd_bwd_and_no_grad("triton", shape, seed)
        except BaseException as e:  # reported by the test's thread
            errors.append(e)
    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    if errors:
        raise errors[0]
    for name, old in before.items():
        now = getattr(_common, name)
        assert now.keys() == old.keys() and all(now[k] is old[k] for k in old), f"{name} changed during capture"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_se_caches_stay_out_of_graph_pools(kernel_backend):
    """Inductor's CUDA graph trees warm a graph up eagerly with every allocation of the calling
    thread routed to their private pool (torch._C._cuda_beginAllocateCurrentThreadToPool), and
    later reset that pool to a checkpoint, freeing what it holds. The buffers the backends cache
    across calls (arrival counters; Triton's scratch) must not land there: warm up the same way
    on a new stream (every per-stream cache misses), then nothing the calls left behind may
    still be allocated in the pool."""
    import gc
    import warnings
    device = torch.cuda.current_device()
    pool = torch.cuda.graph_pool_handle()
    side = torch.cuda.Stream()
    keeper = torch.cuda.CUDAGraph()  # holds the pool, as the tree manager's empty graph does
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (an empty capture warns)
        with torch.cuda.graph(keeper, pool=pool, stream=side):
            pass
    side.wait_stream(torch.cuda.current_stream())
    torch._C._cuda_beginAllocateCurrentThreadToPool(device, pool)
    try:
        with torch.cuda.stream(side):
            _check_fwd_bwd_and_no_grad(kernel_backend, (3, 40, 9, 9, 10), seed=2, reference_on_cpu=True)
            # larger: the caches grow
            _check_fwd_bwd_and_no_grad(kernel_backend, (6, 72, 11, 11, 18), seed=3, reference_on_cpu=True)
        torch.cuda.synchronize()
    finally:
        torch._C._cuda_endAllocateToPool(device, pool)
        torch._C._cuda_releasePool(device, pool)
    gc.collect()
    torch.cuda.synchronize()
    left = [block for seg in torch.cuda.memory_snapshot() if seg["segment_pool_id"] == pool
            for block in seg["blocks"] if block["state"] == "active_allocated"]
    assert not left, f"{len(left)} block(s) of {sum(b['size'] for b in left)} bytes left allocated in the graph pool"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_se_graphs_of_growing_shapes_and_eager_calls_between(kernel_backend):
    """Two graphs captured on one stream without a warm-up there (that stream's caches are
    empty when capture starts: each call brings buffers of its own), the second of a larger
    shape, with eager calls of a still larger shape on that stream between the replays (its
    caches grow): each replay on new input values matches the reference, and so do the eager
    calls."""
    side = torch.cuda.Stream()
    graphs = []
    for seed, shape in enumerate([(2, 24, 7, 7, 6), (5, 48, 9, 9, 12)]):
        x, w1, b1, w2, b2 = make_case(shape, torch.float32, seed=40 + seed)
        # kernels compiled and loaded before capture, on the current stream (not side's caches)
        ak.se(x, w1, b1, w2, b2, pool="avgmax", backend=kernel_backend)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.graph(g, stream=side):
            y = ak.se(x, w1, b1, w2, b2, pool="avgmax", backend=kernel_backend)
        graphs.append((g, shape, (x, w1, b1, w2, b2), y))
    for step in range(3):
        for i, (g, shape, (x, w1, b1, w2, b2), y) in enumerate(graphs):
            with torch.no_grad():
                x.copy_(make_case(shape, torch.float32, seed=50 + 10 * step + i)[0])
            g.replay()
            torch.cuda.synchronize()
            torch.testing.assert_close(y, reference.se(x, w1, b1, w2, b2, "relu", "sigmoid", "avgmax"),
                                       rtol=1e-5, atol=1e-5)
            with torch.cuda.stream(side):
                _check_fwd_bwd_and_no_grad(kernel_backend, (7, 64, 10, 10, 16), seed=60 + step)
            torch.cuda.synchronize()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_se_runs_on_x_device_not_the_current_one(kernel_backend):
    """x on cuda:1 while cuda:0 is current: the kernels must run on x's device (Triton launches
    on the current device unless the launcher switches to x's; the CUDA binding takes a guard)."""
    with torch.cuda.device(0):
        case = make_case((3, 24, 7, 7, 6), torch.float32, device=torch.device("cuda", 1), seed=21)
        for variant in ("auto", "pipelined"):
            with force_variant(variant):
                run_and_check(kernel_backend, case, "silu", "sigmoid", "avgmax")
        assert torch.cuda.current_device() == 0


# ---- double backward (create_graph=True): the reference's eager graph (se.grads_with_graph) ----
@pytest.mark.parametrize("act,gate,pool,channels_last,conv,single", [
    ("silu", "sigmoid", "avg", False, True, False),
    ("gelu", "hardsigmoid", "avgmax", True, False, False),
    ("identity", "hardsigmoid", "avg", True, True, True),
])
def test_se_gradgradcheck(kernel_backend, act, gate, pool, channels_last, conv, single):
    """fp64 gradgradcheck over x and every weight and bias: the C++ autograd of cuda / cuda-emu
    and the Python one of triton both hand create_graph=True to the differentiable path."""
    case = make_case((2, 4, 3, 2, 2), torch.float64, channels_last, seed=8, conv_weights=conv, single_layer=single)
    ins = [t for t in _leaves(case) if t is not None]
    names = [n for n, t in zip(("x", "w1", "b1", "w2", "b2"), case) if t is not None]

    def f(*a):
        kw = dict(zip(names, a))
        return ak.se(kw["x"], kw.get("w1"), kw.get("b1"), kw["w2"], kw.get("b2"), act=act, gate=gate, pool=pool,
                     backend=kernel_backend)

    assert torch.autograd.gradgradcheck(f, ins, fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_se_create_graph_gradient_penalty(kernel_backend, dtype, channels_last):
    """A gradient penalty step (WGAN-GP / R1: a norm of the gradients, differentiated again):
    the first-order gradients under create_graph=True match the kernels' plain backward, in each
    input's dtype and shape, and the penalty's gradients meet the 2x rule against fp64."""
    case = make_case((3, 12, 5, 4, 3), dtype, channels_last, seed=9, conv_weights=True)
    dy = rand(case[0].shape, dtype, case[0].device, torch.Generator().manual_seed(2))

    def step(backend, tensors, create_graph=True):
        ins = _leaves(tensors)
        y = ak.se(*ins, act="silu", pool="avgmax", backend=backend)
        first = torch.autograd.grad(y, ins, dy.to(y.dtype), create_graph=create_graph)
        if not create_graph:
            return first, None
        penalty = sum(g.square().sum() for g in first)
        return first, torch.autograd.grad(penalty, ins)

    plain, _ = step(kernel_backend, case, create_graph=False)
    first, second = step(kernel_backend, case)
    _, ref_second = step("reference", case)
    _, ref64_second = step("reference", [to64(t) for t in case])
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    for name, got, want, t in zip(("dx", "dw1", "db1", "dw2", "db2"), first, plain, case):
        assert got.dtype == t.dtype and got.shape == t.shape, name
        torch.testing.assert_close(got.float(), want.float(), **tol, msg=name)
    for name, got, want, want64 in zip(("x", "w1", "b1", "w2", "b2"), second, ref_second, ref64_second):
        assert_matches(got, want, want64, f"d penalty / d {name}")


@pytest.mark.parametrize("gate", GATES)
def test_se_create_graph_same_gradient_as_plain_backward_fp64(kernel_backend, gate):
    """The gradient's value does not depend on create_graph: in fp64 the differentiable path and
    the kernels agree to rounding, hardsigmoid's slope (torch's 1.0f / 6.0f) included."""
    case = make_case((2, 10, 4, 3, 3), torch.float64, seed=12, conv_weights=True)
    dy = rand(case[0].shape, torch.float64, case[0].device, torch.Generator().manual_seed(5))
    grads = []
    for create_graph in (False, True):
        ins = _leaves(case)
        y = ak.se(*ins, act="hardswish", gate=gate, pool="avgmax", backend=kernel_backend)
        grads.append(torch.autograd.grad(y, ins, dy, create_graph=create_graph))
    for name, plain, graph in zip(("dx", "dw1", "db1", "dw2", "db2"), *grads):
        assert graph.requires_grad and not plain.requires_grad, name
        torch.testing.assert_close(graph, plain, rtol=1e-12, atol=1e-13, msg=name)


def test_se_create_graph_wants_only_some_gradients(kernel_backend):
    """create_graph=True with gradients wanted for a subset (frozen weights, or x only): the
    differentiable path returns the others as None, and a Hessian-vector product through x
    matches the reference's."""
    x, w1, b1, w2, b2 = make_case((2, 6, 3, 3, 2), torch.float64, seed=10)
    v = torch.randn_like(x)
    outs = {}
    for backend in (kernel_backend, "reference"):
        xl = x.detach().clone().requires_grad_()
        y = ak.se(xl, w1, b1, w2, b2, act="gelu", backend=backend)  # weights frozen
        (gx,) = torch.autograd.grad(y.square().sum(), xl, create_graph=True)
        (hv,) = torch.autograd.grad(gx, xl, v)
        outs[backend] = (gx, hv)
    for got, want in zip(outs[kernel_backend], outs["reference"]):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    # only a bias wants a gradient
    b2l = b2.detach().clone().requires_grad_()
    y = ak.se(x, w1, b1, w2, b2l, backend=kernel_backend)
    (gb,) = torch.autograd.grad(y.sum(), b2l, create_graph=True)
    assert gb.requires_grad
    (gg,) = torch.autograd.grad(gb.sum(), b2l)
    y = reference.se(x, w1, b1, w2, b2l)
    (gb_ref,) = torch.autograd.grad(y.sum(), b2l, create_graph=True)
    (gg_ref,) = torch.autograd.grad(gb_ref.sum(), b2l)
    torch.testing.assert_close(gg, gg_ref, rtol=1e-9, atol=1e-10)


def test_se_raw_op_create_graph(kernel_backend):
    """The custom op's own autograd (what torch.compile and direct torch.ops calls use) takes the
    differentiable path under create_graph=True too; torch.compile's backward keeps the kernels."""
    x, w1, b1, w2, b2 = _leaves(make_case((2, 6, 3, 3, 2), torch.float64, seed=11))
    y = torch.ops.attnkernels.se_forward(x, w1, b1, w2, b2, "relu", "sigmoid", "avgmax", kernel_backend)[0]
    (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (gw,) = torch.autograd.grad(gx.square().sum(), w1)
    xr, w1r, b1r, w2r, b2r = _leaves((x, w1, b1, w2, b2))
    (gxr,) = torch.autograd.grad(reference.se(xr, w1r, b1r, w2r, b2r, pool="avgmax").sum(), xr, create_graph=True)
    (gwr,) = torch.autograd.grad(gxr.square().sum(), w1r)
    torch.testing.assert_close(gx, gxr, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(gw, gwr, rtol=1e-9, atol=1e-10)


@pytest.mark.filterwarnings("ignore:.*torch.jit")  # (torch.func scripts a helper of its own)
def test_se_under_torch_func(kernel_backend):
    """torch.func transforms (per-sample gradients with vmap(grad), jacrev, an ensemble with
    vmap over stacked parameters) give what the reference gives under plain autograd: under a
    transform `se` runs the reference's eager ops, which the transforms can see through."""
    from torch.func import functional_call, grad, jacrev, stack_module_state, vmap

    x, w1, b1, w2, b2 = make_case((4, 6, 3, 3, 2), torch.float64, seed=13)

    def loss(w1_, x_):
        return ak.se(x_, w1_, b1, w2, b2, act="silu", pool="avgmax", backend=kernel_backend).square().sum()

    per_sample = vmap(grad(lambda w, xi: loss(w, xi[None])), in_dims=(None, 0))(w1, x)
    for i in range(x.shape[0]):
        wl = w1.detach().clone().requires_grad_()
        y = reference.se(x[i:i + 1], wl, b1, w2, b2, "silu", "sigmoid", "avgmax")
        (want,) = torch.autograd.grad(y.square().sum(), wl)
        torch.testing.assert_close(per_sample[i], want, rtol=1e-10, atol=1e-12)
    jac = jacrev(lambda w: ak.se(x, w, b1, w2, b2, backend=kernel_backend))(w1)
    jac_ref = torch.autograd.functional.jacobian(lambda w: reference.se(x, w, b1, w2, b2), w1)
    torch.testing.assert_close(jac, jac_ref, rtol=1e-10, atol=1e-12)
    # an ensemble of three drop-ins evaluated in one vmap over their stacked parameters
    models = [ak.SEModule(6, rd_channels=2).to(x.device, torch.float64) for _ in range(3)]
    params, buffers = stack_module_state(models)
    with ak.backend(kernel_backend):
        ys = vmap(lambda p, b: functional_call(models[0], (p, b), (x,)), in_dims=(0, 0))(params, buffers)
    for m, y in zip(models, ys):
        torch.testing.assert_close(y, reference.se(x, m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias),
                                   rtol=1e-10, atol=1e-12)
    # a backend that cannot run here is an error there too
    other = "cuda" if x.device.type == "cpu" else "cuda-emu"
    with pytest.raises(RuntimeError, match=f"backend '{other}' cannot run"):
        grad(lambda w: ak.se(x, w, b1, w2, b2, backend=other).sum())(w1)


@pytest.mark.filterwarnings("ignore:.*torch.jit")  # (torch.func scripts a helper of its own)
def test_se_forward_mode_ad(kernel_backend):
    """Forward-mode AD (dual tensors; torch.func.jvp): the tangent of the output is the
    reference's, for tangents on x and on the weights (under a dual level `se` runs the
    reference's ops: the kernels' Functions have no jvp, and the Python one dropped the tangent)."""
    import torch.autograd.forward_ad as fwAD

    x, w1, b1, w2, b2 = make_case((2, 6, 4, 3, 2), torch.float64, seed=14)
    g = torch.Generator().manual_seed(6)
    tx, tw = rand(x.shape, x.dtype, x.device, g), rand(w1.shape, x.dtype, x.device, g)
    tangents = {}
    for backend in (kernel_backend, "reference"):
        with fwAD.dual_level():
            y = ak.se(fwAD.make_dual(x, tx), fwAD.make_dual(w1, tw), b1, w2, b2, act="gelu", pool="avgmax",
                      backend=backend)
            tangents[backend] = fwAD.unpack_dual(y).tangent
    assert tangents[kernel_backend] is not None
    torch.testing.assert_close(tangents[kernel_backend], tangents["reference"], rtol=1e-10, atol=1e-12)
    _, jvp_out = torch.func.jvp(lambda a: ak.se(a, w1, b1, w2, b2, backend=kernel_backend), (x,), (tx,))
    _, jvp_ref = torch.func.jvp(lambda a: reference.se(a, w1, b1, w2, b2), (x,), (tx,))
    torch.testing.assert_close(jvp_out, jvp_ref, rtol=1e-10, atol=1e-12)


def test_se_raw_op_rejects_inputs_the_kernels_do_not_take(kernel_backend):
    x, w1, b1, w2, b2 = make_case((2, 8, 3, 5, 2), torch.float32)
    op = torch.ops.attnkernels.se_forward
    with pytest.raises(ValueError, match="contiguous in NCHW or channels_last"):
        op(x.transpose(2, 3), w1, b1, w2, b2, "relu", "sigmoid", "avg", kernel_backend)
    with pytest.raises(ValueError, match="w1 and w2 must be contiguous"):
        op(x, w1.t().contiguous().t(), b1, w2, b2, "relu", "sigmoid", "avg", kernel_backend)
    with pytest.raises(ValueError, match="b1 and b2 must be contiguous"):
        op(x, w1, b1, w2, torch.stack([b2, b2], 1)[:, 0], "relu", "sigmoid", "avg", kernel_backend)
    with pytest.raises(ValueError, match="backend must be one of"):
        op(x, w1, b1, w2, b2, "relu", "sigmoid", "avg", "reference")
    y, s, z, u, p, pmax = op(x, w1, b1, w2, b2, "relu", "sigmoid", "avg", kernel_backend)
    with pytest.raises(ValueError, match="dy must have"):
        torch.ops.attnkernels.se_backward(y.double(), x, w1, w2, s, z, u, p, pmax,
                                          "relu", "sigmoid", "avg", kernel_backend)


def test_se_backend_that_cannot_run_here():
    x, w1, b1, w2, b2 = _good()
    other = "cuda" if x.device.type == "cpu" else "cuda-emu"
    with pytest.raises(RuntimeError, match=f"backend '{other}' cannot run"):
        ak.se(x, w1, b1, w2, b2, backend=other)


# ---- fused means fused: no aten compute op on a feature-map-sized tensor -------------------
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("pool", POOLS)
def test_se_is_fused(kernel_backend, channels_last, pool):
    """Forward and backward through the kernels only: no aten compute op reads or writes a tensor
    of x's size (utils.full_size_aten_ops; allocations and views aside). Fails with the reference
    backend (its mean, mul and their backward are such ops)."""
    x, w1, b1, w2, b2 = make_case((3, 16, 6, 5, 4), torch.float32, channels_last)
    ins = _leaves((x, w1, b1, w2, b2))
    dy = torch.randn_like(x)

    def run():
        y = ak.se(*ins, act="relu", gate="sigmoid", pool=pool, backend=kernel_backend)
        y.backward(dy)
        return y

    y, ops = full_size_aten_ops(run, x.numel())
    assert not ops, ops
    assert ins[0].grad is not None
    _, ref_ops = full_size_aten_ops(lambda: ak.se(*ins, act="relu", gate="sigmoid", pool=pool,
                                                   backend="reference").backward(dy), x.numel())
    assert ref_ops  # the recorder sees the eager ops (a recorder that saw nothing would pass anything)

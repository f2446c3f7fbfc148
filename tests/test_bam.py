"""BAM's fused op (attnkernels.bam): every kernel backend against the eager reference
(attnkernels/reference/bam.py: bam_channel + bam_gate on the same Ms).

Runs on the CPU through the Triton interpreter and cuda-emu, and unchanged on a GPU. Covers
fp32/fp16/bf16 (fp32 accumulation) against an fp64 reference, NCHW and channels_last, combine prod
and sum, the BatchNorm in training (batch statistics, running statistics updated) and eval, with
and without biases and affine parameters, odd shapes, poisoned outputs, fp64 gradcheck and
gradgradcheck, opcheck, torch.compile, bad input, determinism (the interpreter's programs shuffled
and interleaved) and the fused check.
"""
import contextlib
import math

import pytest
import torch

import attnkernels as ak
from attnkernels import reference
from attnkernels._alloc import poisoned
from conftest import DEVICE, KERNEL_BACKENDS
from triton_interpreter import interleaved_programs, shuffled_program_order
from utils import assert_matches, full_size_aten_ops, rand, to64

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
COMBINES = ("prod", "sum")
# (N, C, H, W, Cr): several channel blocks (NCHW blocks of 32 channels, channels_last of 64) and
# HW splits; non-square; 1x1 maps; C = 1 (Cr = 1); Cr = 1; N = 1 (eval only: see _mode)
SHAPES = [(3, 16, 7, 7, 4), (2, 40, 8, 8, 3), (2, 66, 4, 5, 5), (2, 5, 3, 7, 2), (4, 8, 1, 1, 2),
          (2, 1, 4, 3, 1), (3, 6, 5, 4, 1), (1, 12, 20, 30, 3)]


def make_case(shape, dtype, channels_last=False, bias=True, affine=True, ms_3d=False, seed=0, device=DEVICE):
    """dict(x, ms, w0, b0, w1, b1, bn_weight, bn_bias, running_mean, running_var): random values
    (never zeros or BatchNorm defaults), the weights scaled so the gate is not saturated; the
    BatchNorm's vectors in the accumulation dtype, as a BatchNorm1d keeps them under autocast."""
    N, C, H, W, Cr = shape
    g = torch.Generator().manual_seed(seed)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    x = rand((N, C, H, W), dtype, device, g)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    return dict(
        x=x, ms=rand((N, H, W) if ms_3d else (N, 1, H, W), dtype, device, g),
        w0=rand((Cr, C), dtype, device, g, 1.5 / math.sqrt(C)), b0=rand((Cr,), dtype, device, g, 0.5) if bias else None,
        w1=rand((C, Cr), dtype, device, g, 1.5 / math.sqrt(Cr)), b1=rand((C,), dtype, device, g, 0.5) if bias else None,
        bn_weight=(1 + rand((Cr,), acc, device, g, 0.3)) if affine else None,
        bn_bias=rand((Cr,), acc, device, g, 0.3) if affine else None,
        running_mean=rand((Cr,), acc, device, g, 0.5),
        running_var=torch.rand((Cr,), generator=g, dtype=acc).to(device) + 0.3)


GRAD_INPUTS = ("x", "ms", "w0", "b0", "w1", "b1", "bn_weight", "bn_bias")


def _copy(case, leaf_dtype=None, device=None):
    """The case's tensors as fresh leaves (the differentiable ones require grad), optionally cast
    (floating tensors) and moved."""
    out = {}
    for k, t in case.items():
        if t is None:
            out[k] = None
            continue
        t = t.detach().to(device=device or t.device, dtype=leaf_dtype or t.dtype).clone(
            memory_format=torch.preserve_format)
        out[k] = t.requires_grad_() if k in GRAD_INPUTS else t
    return out


def reference_bam(x, ms, w0, b0, w1, b1, bn_weight=None, bn_bias=None, running_mean=None, running_var=None, *,
                  training=False, momentum=0.1, eps=1e-5, combine="prod"):
    mc = reference.bam_channel(x, w0, b0, (bn_weight, bn_bias, running_mean, running_var), w1, b1,
                               training=training, momentum=momentum, eps=eps)
    return reference.bam_gate(x, mc, ms, combine)


def run_and_check(backend, case, combine, training, check_grad=True, seed=1):
    """Forward (+ backward) of the fused op with poisoned outputs, and the running statistics it
    updates, against the reference in the same dtype and in fp64 (on the CPU)."""
    x = case["x"]
    dy = rand(x.shape, x.dtype, x.device, torch.Generator().manual_seed(seed))
    dy = dy.contiguous(memory_format=torch.channels_last) if not x.is_contiguous() else dy
    ours, lp, r64 = _copy(case), _copy(case), _copy(case, torch.float64, "cpu")
    opts = dict(training=training, combine=combine)
    with poisoned():
        y = ak.bam(**ours, **opts, backend=backend)
    y_lp = reference_bam(**lp, **opts)
    y_64 = reference_bam(**r64, **opts)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert y.is_contiguous(memory_format=torch.channels_last) == x.is_contiguous(memory_format=torch.channels_last)
    assert_matches(y, y_lp, y_64, "y")
    for k in ("running_mean", "running_var"):
        if training:  # updated in place, as F.batch_norm does
            assert_matches(ours[k], lp[k], r64[k], k)
        else:
            assert torch.equal(ours[k], case[k]), f"{k} changed in eval mode"
    if not check_grad:
        return
    with poisoned():
        y.backward(dy)
    y_lp.backward(dy)
    y_64.backward(to64(dy).cpu())
    for k in GRAD_INPUTS:
        if ours[k] is not None:
            assert ours[k].grad is not None, f"d{k} missing"
            assert ours[k].grad.dtype == ours[k].dtype
            assert_matches(ours[k].grad, lp[k].grad, r64[k].grad, f"d{k}")


def _mode(i, shape):
    """The combine, BatchNorm mode, biases, affine and Ms form case i of a matrix runs: cycled so
    that each shows up with every dtype and layout (N = 1: eval; batch statistics need N > 1)."""
    combine = COMBINES[i % 2]
    training = (i // 2) % 2 == 0 and shape[0] > 1
    return combine, training, dict(bias=i % 3 != 1, affine=i % 5 != 2, ms_3d=i % 7 == 3)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_bam_matches_reference(kernel_backend, shape, dtype, channels_last):
    i = SHAPES.index(shape) * 8 + DTYPES.index(dtype) * 2 + channels_last
    combine, training, opt = _mode(i, shape)
    run_and_check(kernel_backend, make_case(shape, dtype, channels_last, seed=i, **opt), combine, training)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("combine", COMBINES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_bam_combine_and_batchnorm_modes(kernel_backend, combine, training, channels_last):
    run_and_check(kernel_backend, make_case((3, 24, 6, 5, 4), torch.float32, channels_last, seed=3), combine,
                  training)


@pytest.mark.parametrize("given", ["bn_weight", "bn_bias"])
def test_bam_batchnorm_weight_or_bias_alone(kernel_backend, given):
    """F.batch_norm takes a weight without a bias (or the reverse): so does bam, the missing one the
    identity's (1 or 0), with the given one's gradient."""
    case = make_case((3, 16, 4, 5, 4), torch.float32, seed=11)
    case["bn_bias" if given == "bn_weight" else "bn_weight"] = None
    run_and_check(kernel_backend, case, "prod", True)


def test_bam_running_statistics_over_steps(kernel_backend):
    """Several training steps then eval: the running statistics follow F.batch_norm's (momentum,
    unbiased variance), and eval normalizes with them."""
    case = make_case((4, 12, 5, 5, 3), torch.float64, seed=7)
    ours, ref = _copy(case), _copy(case)
    for step in range(3):
        x = rand(case["x"].shape, torch.float64, DEVICE, torch.Generator().manual_seed(10 + step))
        for args in (ours, ref):
            args["x"] = x
        ak.bam(**ours, training=True, momentum=0.3, backend=kernel_backend)
        reference_bam(**ref, training=True, momentum=0.3)
        for k in ("running_mean", "running_var"):
            torch.testing.assert_close(ours[k], ref[k], rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(ak.bam(**ours, backend=kernel_backend), reference_bam(**ref), rtol=1e-12, atol=1e-13)


# ---- gradients ------------------------------------------------------------------------------
def _grad_fn(backend, case, training, combine, channels_last=False):
    """f(*differentiable inputs) -> y, for gradcheck; the running statistics of the case (eval) or
    none (training: F.batch_norm's track_running_stats=False, so repeated calls change nothing)."""
    rm, rv = (None, None) if training else (case["running_mean"], case["running_var"])

    def f(x, ms, w0, b0, w1, b1, bn_weight, bn_bias):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return ak.bam(x, ms, w0, b0, w1, b1, bn_weight, bn_bias, rm, rv, training=training, combine=combine,
                      backend=backend)
    return f


def _leaves(case):
    return [None if case[k] is None else case[k].detach().clone().requires_grad_() for k in GRAD_INPUTS]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("combine", COMBINES)
def test_bam_gradcheck(kernel_backend, combine, training):
    case = make_case((3, 5, 2, 3, 2), torch.float64, seed=11)
    assert torch.autograd.gradcheck(_grad_fn(kernel_backend, case, training, combine), _leaves(case), fast_mode=True)


def test_bam_gradcheck_channels_last_no_bias_no_affine(kernel_backend):
    case = make_case((3, 4, 3, 2, 3), torch.float64, bias=False, affine=False, ms_3d=True, seed=12)
    assert torch.autograd.gradcheck(_grad_fn(kernel_backend, case, True, "sum", channels_last=True), _leaves(case),
                                    fast_mode=True)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_bam_gradgradcheck(kernel_backend, training):
    """A backward with create_graph=True differentiates the reference's graph with the statistics
    the op used (the batch's in training, without updating the running ones)."""
    case = make_case((3, 4, 2, 2, 2), torch.float64, seed=13)
    assert torch.autograd.gradgradcheck(_grad_fn(kernel_backend, case, training, "prod"), _leaves(case),
                                        fast_mode=True)


@pytest.mark.parametrize("channels_last,combine,training,full", [(False, "prod", True, True),
                                                                 (True, "sum", False, False)])
def test_bam_opcheck(kernel_backend, channels_last, combine, training, full):
    c = make_case((3, 6, 3, 4, 2), torch.float32, channels_last, bias=full, affine=full)
    N, _, H, W = c["x"].shape
    x, w0, w1 = (c[k].requires_grad_() for k in ("x", "w0", "w1"))
    ms = c["ms"].reshape(N, H * W).contiguous().requires_grad_()
    rm, rv = (None, None) if training else (c["running_mean"], c["running_var"])
    args = (x, ms, w0, c["b0"], w1, c["b1"], c["bn_weight"], c["bn_bias"], rm, rv, 1e-5, training, combine,
            kernel_backend)
    torch.library.opcheck(torch.ops.attnkernels.bam_forward.default, args)
    y, p, u, mc, bstat = torch.ops.attnkernels.bam_forward(*args)
    dy = torch.randn_like(y)
    torch.library.opcheck(torch.ops.attnkernels.bam_backward.default,
                          (dy, x.detach(), ms.detach(), w0.detach(), w1.detach(), c["bn_weight"], c["bn_bias"],
                           p, u, mc, bstat, training, combine, kernel_backend))


# ---- torch.compile --------------------------------------------------------------------------
def _assert_compiled_matches_eager(compiled, eager, case):
    """compiled and eager on copies of the case: equal outputs, gradients and running statistics."""
    a, b = _copy(case), _copy(case)
    y_c, y_e = compiled(a), eager(b)
    torch.testing.assert_close(y_c, y_e)
    dy = torch.randn_like(y_e)
    y_c.backward(dy)
    y_e.backward(dy)
    for k in case:
        if k in GRAD_INPUTS and a[k] is not None:
            torch.testing.assert_close(a[k].grad, b[k].grad, msg=k)
        elif a[k] is not None:
            torch.testing.assert_close(a[k], b[k], msg=k)


def test_bam_compile_fullgraph(kernel_backend):
    torch._dynamo.reset()

    def f(args):
        return ak.bam(**args, training=True, momentum=0.2, combine="sum", backend=kernel_backend)
    _assert_compiled_matches_eager(torch.compile(f, fullgraph=True), f,
                                   make_case((3, 8, 5, 5, 2), torch.float32, channels_last=True))


def test_bam_compile_dynamic_batch(kernel_backend):
    """torch.compile(dynamic=True): one graph serves new batch and spatial sizes (the fake kernels
    take symbolic shapes), matching eager at each, the running statistics included."""
    import torch._dynamo.testing
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")

    def f(args):  # (momentum and eps given: dynamic=True makes the floats of bam's keyword defaults
        # symbolic, and dynamo restarts its analysis once, compiling twice, when the op needs them)
        return ak.bam(**args, training=True, momentum=0.1, eps=1e-5, backend=kernel_backend)
    compiled = torch.compile(f, fullgraph=True, dynamic=True, backend=counter)
    for seed, shape in enumerate([(2, 8, 5, 6, 3), (3, 8, 7, 4, 3), (5, 8, 3, 9, 3)]):
        _assert_compiled_matches_eager(compiled, f, make_case(shape, torch.float32, seed=seed))
    assert counter.frame_count == 1


# ---- odd inputs -----------------------------------------------------------------------------
def test_bam_non_contiguous_input(kernel_backend):
    """x and ms in neither layout (slices, a permuted ms): copied into one, same result."""
    case = make_case((2, 6, 8, 10, 2), torch.float32, seed=21)
    case["x"] = case["x"][:, :, ::2, 1::2]
    case["ms"] = torch.randn(2, 1, 5, 4).transpose(2, 3)
    y = ak.bam(**_copy(case), training=True, backend=kernel_backend)
    torch.testing.assert_close(y, reference_bam(**_copy(case), training=True))


@pytest.mark.parametrize("shape", [(0, 8, 4, 4, 2), (2, 8, 0, 3, 2)], ids=str)
def test_bam_empty_input(kernel_backend, shape):
    """Nothing for the kernels to do: the reference's ops (pick_backend), same (empty) result."""
    case = make_case(shape, torch.float32)
    y = ak.bam(**_copy(case), backend=kernel_backend)
    assert y.shape == case["x"].shape
    torch.testing.assert_close(y, reference_bam(**_copy(case)))


@pytest.mark.filterwarnings("ignore:.*torch.jit")  # (torch.func scripts a helper of its own)
def test_bam_under_torch_func_and_forward_ad(kernel_backend):
    """torch.func and forward-mode AD run the reference's ops (the custom ops have neither)."""
    import torch.autograd.forward_ad as fwAD
    case = make_case((3, 4, 3, 3, 2), torch.float64, seed=22)
    args = {k: (None if t is None else t.detach()) for k, t in case.items()}

    def f(x):
        return ak.bam(**{**args, "x": x}, backend=kernel_backend).sum()
    torch.testing.assert_close(torch.func.grad(f)(args["x"]),
                               torch.func.grad(lambda x: reference_bam(**{**args, "x": x}).sum())(args["x"]))
    tangent = torch.randn_like(args["x"])
    with fwAD.dual_level():
        y = ak.bam(**{**args, "x": fwAD.make_dual(args["x"], tangent)}, backend=kernel_backend)
        jvp = fwAD.unpack_dual(y).tangent
    with fwAD.dual_level():
        ref = fwAD.unpack_dual(reference_bam(**{**args, "x": fwAD.make_dual(args["x"], tangent)})).tangent
    torch.testing.assert_close(jvp, ref)


def _good():
    return make_case((2, 8, 3, 3, 2), torch.float32)


@pytest.mark.parametrize("mutate,exc,match", [
    (lambda a: a.update(x=a["x"][0]), ValueError, "x must be 4-D"),
    (lambda a: a.update(x=a["x"].to(torch.int32)), TypeError, "x must be a float"),
    (lambda a: a.update(x=a["x"].numpy()), TypeError, "x must be a torch.Tensor"),
    (lambda a: a.update(ms=a["ms"][:, :, :2]), ValueError, "ms has shape"),
    (lambda a: a.update(ms=a["ms"][:1]), ValueError, "ms has shape"),
    (lambda a: a.update(ms=a["ms"].expand(2, 3, 3, 3)), ValueError, "ms has shape"),
    (lambda a: a.update(ms=a["ms"][0, 0]), ValueError, "ms must be"),
    (lambda a: a.update(ms=a["ms"].to("meta")), ValueError, "ms is on meta"),
    (lambda a: a.update(ms=None), TypeError, "ms must be a torch.Tensor"),
    (lambda a: a.update(w0=a["w0"][:, :5]), ValueError, "w0 has shape"),
    (lambda a: a.update(w0=a["w0"][:0], b0=None, w1=a["w1"][:, :0]), ValueError, "at least one hidden channel"),
    (lambda a: a.update(w1=a["w1"][:, :1]), ValueError, "w1 has shape"),
    (lambda a: a.update(w1=a["w1"][None]), ValueError, "w1 must be"),
    (lambda a: a.update(w1=a["w1"].double()), TypeError, "w1 has dtype"),
    (lambda a: a.update(b0=a["b0"][:1]), ValueError, "b0 has shape"),
    (lambda a: a.update(b1=a["b1"].half()), TypeError, "b1 has dtype"),
    (lambda a: a.update(bn_weight=a["bn_weight"][:1]), ValueError, "bn_weight has shape"),
    (lambda a: a.update(bn_bias=a["bn_bias"].to("meta")), ValueError, "bn_bias is on meta"),
    (lambda a: a.update(running_var=a["running_var"][None]), ValueError, "running_var must be 1-D"),
    (lambda a: a.update(running_mean=a["running_mean"].int()), TypeError, "running_mean must be a float"),
    (lambda a: a.update(running_var=None), ValueError, "running_mean and running_var"),
    (lambda a: a.update(running_mean=None, running_var=None), ValueError, "training=False normalizes"),
    (lambda a: a.update(x=a["x"][:1], ms=a["ms"][:1], training=True), ValueError, "more than one sample"),
    (lambda a: a.update(training=1), TypeError, "training must be a bool"),
    (lambda a: a.update(momentum="0.1"), TypeError, "momentum must be a real number"),
    (lambda a: a.update(eps=-1.0), ValueError, "eps must be >= 0"),
    (lambda a: a.update(combine="max"), ValueError, "combine must be one of"),
    (lambda a: a.update(backend="cudnn"), ValueError, "backend must be one of"),
])
@pytest.mark.parametrize("backend", [None] + KERNEL_BACKENDS)
def test_bam_bad_input(mutate, exc, match, backend):
    args = dict(_good(), backend=backend)
    mutate(args)
    with pytest.raises(exc, match=match):
        ak.bam(**args)


def test_bam_raw_op_rejects_inputs_the_kernels_do_not_take(kernel_backend):
    c = _good()
    N, _, H, W = c["x"].shape
    ms = c["ms"].reshape(N, H * W)
    good = [c["x"], ms, c["w0"], c["b0"], c["w1"], c["b1"], c["bn_weight"], c["bn_bias"], None, None, 1e-5, True,
            "prod", kernel_backend]
    torch.ops.attnkernels.bam_forward(*good)
    for i, bad, match in [(1, ms.t().contiguous().t(), "ms must be a contiguous"),
                          (2, c["w0"].t().contiguous().t(), "w0 must be a contiguous"),
                          (6, c["bn_weight"].double(), "bn_weight must be a contiguous"),
                          (0, c["x"].transpose(2, 3), "x must be contiguous"),
                          (11, False, "batch_stats=False needs running_mean"),
                          (13, "reference", "backend must be one of")]:
        args = list(good)
        args[i] = bad
        with pytest.raises(ValueError, match=match):
            torch.ops.attnkernels.bam_forward(*args)


def test_bam_triton_refuses_what_32_bit_indices_cannot_reach():
    """The Triton kernels index within a sample, and Ms and their scratch, with 32-bit integers:
    a shape past that gets a clear error, not an out-of-bounds access (planned, not run)."""
    if "triton" not in KERNEL_BACKENDS:
        pytest.skip("no Triton backend")
    import attnkernels.triton.bam as tb
    with pytest.raises(ValueError, match="C\\*H\\*W"):
        tb._plan_for((2, 2**16, 2**8, 2**8), True, 4096, 4)
    with pytest.raises(ValueError, match="too many samples"):
        tb._plan_for((2**12, 2**10, 2**8, 2**8), False, 64, 4)
    tb._plan_for((2**4, 2**10, 2**8, 2**8), False, 64, 4)


# ---- determinism and the order of the Triton programs ----------------------------------------
# HW splits and several channel blocks in both layouts (the plan aims at 64 programs here)
ORDER_CASES = [((3, 40, 12, 12, 5), False), ((3, 70, 6, 6, 5), True)]


def _many_programs(monkeypatch):
    import attnkernels.triton.bam as tb
    monkeypatch.setattr(tb, "target_programs", lambda device: 64)
    grid, a, _ = tb._plan_for((3, 40, 12, 12), True, 5, 64)
    assert a["n_split"] > 1 and a["n_cblk"] > 1, a
    grid, a, _ = tb._plan_for((3, 70, 6, 6), False, 5, 64)
    assert a["n_split"] > 1 and a["n_cblk"] > 1, a


@pytest.mark.parametrize("shape,channels_last", ORDER_CASES, ids=["nchw", "cl"])
def test_bam_is_deterministic(kernel_backend, shape, channels_last, monkeypatch):
    """Run to run, the same bits: no float atomics (whichever program or block arrives last
    combines the partials in a fixed order), forward and backward. On cuda-emu the two runs take
    the blocks in two random orders (CUEMU_BLOCK_ORDER), under the Triton interpreter the
    programs (shuffled_program_order), so another program of each group is the last; on a GPU the
    arrival order varies by itself."""
    if kernel_backend == "triton":
        _many_programs(monkeypatch)
    case = make_case(shape, torch.float32, channels_last, seed=31)
    dy = rand(case["x"].shape, torch.float32, DEVICE, torch.Generator().manual_seed(32))
    runs = []
    for seed in (1, 2):
        monkeypatch.setenv("CUEMU_BLOCK_ORDER", f"random:{seed}")
        args = _copy(case)
        shuffled = kernel_backend == "triton" and DEVICE.type == "cpu"
        with shuffled_program_order(seed) if shuffled else contextlib.nullcontext():
            y = ak.bam(**args, training=True, backend=kernel_backend)
            y.backward(dy)
        runs.append([y.detach(), args["running_mean"], args["running_var"]]
                    + [args[k].grad for k in GRAD_INPUTS])
    for name, a, b in zip(("y", "running_mean", "running_var") + GRAD_INPUTS, *runs):
        assert torch.equal(a, b), f"{name} differs between two runs"


@pytest.mark.parametrize("shape,channels_last", ORDER_CASES, ids=["nchw", "cl"])
def test_bam_triton_programs_in_any_order(shape, channels_last, monkeypatch):
    """On a GPU a grid's programs run in any order; the interpreter runs them in pid order, so the
    last to arrive at a counter (a channel block's HW splits, a sample's or a pixel range's
    channel blocks, the batch's samples) was always the one with the largest pid. Here the same
    kernels in shuffled orders, both combines and BatchNorm modes."""
    if "triton" not in KERNEL_BACKENDS or DEVICE.type == "cuda":
        pytest.skip("the Triton interpreter's program order (a GPU has its own)")
    _many_programs(monkeypatch)
    for i, (combine, training) in enumerate([("prod", True), ("sum", False)]):
        with shuffled_program_order(10 * i + channels_last) as order:
            run_and_check("triton", make_case(shape, torch.float32, channels_last, seed=40 + i), combine, training)
        assert order["reordered"] > 0, "the interpreter's grids ran in pid order"


@pytest.mark.parametrize("shape,channels_last", ORDER_CASES, ids=["nchw", "cl"])
def test_bam_triton_programs_interleaved(shape, channels_last, monkeypatch):
    """On a GPU a launch's programs run at the same time: here interleaved
    (triton_interpreter.interleaved_programs: switches around every atomic, plain stores hidden
    from the other programs until a release, loads that see only what their program acquired), so
    a partial read before its writer's arrival, or an arrival that does not order them, fails;
    then the counters must be back at zero."""
    if "triton" not in KERNEL_BACKENDS or DEVICE.type == "cuda":
        pytest.skip("the Triton interpreter's programs (a GPU runs its own concurrently)")
    from attnkernels.triton._common import arrival_counters
    _many_programs(monkeypatch)
    case = make_case(shape, torch.bfloat16, channels_last, seed=50)
    with interleaved_programs(seed=channels_last) as sched:
        run_and_check("triton", case, "prod", True)
    assert sched["interleaved"] > 0 and sched["buffered"] > 0, f"no program was paused for another: {sched}"
    assert sched["stale"] == 0, f"a load read data its program had not acquired: {sched}"
    assert not arrival_counters(case["x"].device, 1).any(), "counters left non-zero"


# ---- fused means fused: no aten compute op on a feature-map-sized tensor -----------------------
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_bam_is_fused(kernel_backend, channels_last):
    """The op's forward and backward through the kernels only: no aten compute op reads or writes
    a tensor of x's size (utils.full_size_aten_ops; allocations and views aside). Fails with the
    reference backend (its mean, sigmoid, products and their backward are such ops)."""
    case = make_case((3, 16, 6, 5, 4), torch.float32, channels_last)
    args = _copy(case)
    dy = torch.randn_like(case["x"])

    def run(backend):
        return lambda: ak.bam(**args, training=True, backend=backend).backward(dy)
    _, ops = full_size_aten_ops(run(kernel_backend), case["x"].numel())
    assert not ops, ops
    assert args["x"].grad is not None
    _, ref_ops = full_size_aten_ops(run("reference"), case["x"].numel())
    assert ref_ops  # the recorder sees the eager ops (a recorder that saw nothing would pass anything)

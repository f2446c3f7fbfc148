"""CBAM: every kernel backend against the eager reference (attnkernels/reference/cbam.py).

Runs on the CPU through the Triton interpreter (and cuda-emu once built), unchanged on a GPU.
Covers fp32/fp16/bf16 (fp32 accumulation) against an fp64 reference, NCHW and channels_last,
every pool kind and spatial pool order, BatchNorm in training (running statistics updated as
F.batch_norm does) and eval mode, odd shapes (C = 1, HW = 1, maps smaller than the conv's halo),
poisoned outputs, fp64 gradcheck and gradgradcheck, opcheck, torch.compile, bad input,
determinism (shuffled and interleaved Triton programs) and the fused check.
"""
import contextlib
import itertools
import math

import pytest
import torch

import attnkernels as ak
from attnkernels import reference
from attnkernels._alloc import poisoned
from conftest import DEVICE, KERNEL_BACKENDS
from triton_interpreter import interleaved_programs, shuffled_program_order
from utils import assert_matches, full_size_aten_ops, rand, to64

ACTS = ("relu", "silu", "hardswish", "gelu", "identity")
GATES = ("sigmoid", "hardsigmoid")
POOL_TYPES = (("avg", "max"), ("avgmax",), ("avg",), ("max",), ("max", "avg"))
ORDERS = ("max_mean", "mean_max", "avgmax")
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# (N, C, H, W, Cr, k): C = 1 and a 1x1 map under a 7x7 conv, primes, a 2x3 map under a 7x7 conv,
# several channel blocks, HW split over programs (N = 1, one channel block) and several map tiles
SHAPES = [(2, 16, 7, 7, 4, 7), (1, 1, 1, 1, 1, 7), (3, 37, 5, 3, 5, 3), (2, 3, 2, 3, 2, 7),
          (2, 70, 9, 11, 9, 5), (1, 5, 23, 25, 3, 7)]
NAMES = ("x", "w1", "b1", "w2", "b2", "conv_w", "bn_weight", "bn_bias")


def make_case(shape, dtype, channels_last=False, bias=True, order="max_mean", spatial=True, affine=True,
              bn_dtype=None, seed=0, device=DEVICE):
    """dict of cbam's tensor arguments: x, w1, b1, w2, b2, conv_w, bn_weight, bn_bias, running_mean,
    running_var (fresh random values; the weights scaled so neither gate saturates)."""
    N, C, H, W, Cr, k = shape
    g = torch.Generator().manual_seed(seed)
    x = rand((N, C, H, W), dtype, device, g)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    S = 1 if order == "avgmax" else 2
    bn_dtype = bn_dtype or dtype
    case = dict(x=x, w1=rand((Cr, C), dtype, device, g, 1.5 / math.sqrt(C)), b1=rand((Cr,), dtype, device, g, 0.5),
                w2=rand((C, Cr), dtype, device, g, 1.5 / math.sqrt(Cr)), b2=rand((C,), dtype, device, g, 0.5),
                conv_w=rand((1, S, k, k), dtype, device, g, 1.0 / k), bn_weight=rand((1,), bn_dtype, device, g),
                bn_bias=rand((1,), bn_dtype, device, g, 0.5), running_mean=rand((1,), bn_dtype, device, g, 0.3),
                running_var=(torch.rand((1,), generator=g, dtype=torch.float64) + 0.5).to(device, bn_dtype))
    if not bias:
        case["b1"] = case["b2"] = None
    if not affine:
        case["bn_weight"] = case["bn_bias"] = None
    if not spatial:  # (the BatchNorm's tensors unused)
        case["conv_w"] = case["bn_weight"] = case["bn_bias"] = None
    return case


def _leaves(case, fn=lambda t: t):
    """The differentiable arguments as fresh leaves (fn applied), the running statistics copied."""
    out = {k: None if v is None else fn(v.detach()).clone() for k, v in case.items()}
    for k in NAMES:
        if out[k] is not None:
            out[k].requires_grad_()
    return out


def _call(fn, a, **opts):
    return fn(*(a[k] for k in NAMES), a["running_mean"], a["running_var"], **opts)


def run_and_check(backend, case, check_grad=True, seed=1, **opts):
    """Forward (+ backward) of the fused op with poisoned outputs vs the reference in the same dtype
    and in fp64; the running statistics it updates (training) too."""
    x = case["x"]
    dy = rand(x.shape, x.dtype, x.device, torch.Generator().manual_seed(seed))
    dy = dy.contiguous(memory_format=torch.channels_last) if not x.is_contiguous() else dy
    ins, ins_lp, ins_64 = _leaves(case), _leaves(case), _leaves(case, lambda t: to64(t).cpu())
    with poisoned():
        y = _call(ak.cbam, ins, **opts, backend=backend)
    y_lp = _call(reference.cbam, ins_lp, **opts)
    y_64 = _call(reference.cbam, ins_64, **opts)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert y.is_contiguous(memory_format=torch.channels_last) == x.is_contiguous(memory_format=torch.channels_last)
    assert y.is_contiguous() == x.is_contiguous()
    assert_matches(y, y_lp, y_64, "y")
    for k in ("running_mean", "running_var"):
        if ins[k] is not None:
            assert_matches(ins[k], ins_lp[k], ins_64[k], k)
    if not check_grad:
        return
    with poisoned():
        y.backward(dy)
    y_lp.backward(dy)
    y_64.backward(to64(dy).cpu())
    for k in NAMES:
        if ins[k] is None:
            continue
        assert ins[k].grad is not None, f"d{k} missing"
        assert ins[k].grad.dtype == ins[k].dtype
        assert_matches(ins[k].grad, ins_lp[k].grad, ins_64[k].grad, f"d{k}")


OPTION_CYCLE = list(itertools.product(ACTS[:4], GATES, POOL_TYPES[:4], ORDERS))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_cbam_matches_reference(kernel_backend, shape, dtype, channels_last):
    # cycle through activations, gates, pools, orders, bias, BatchNorm modes across the matrix
    i = SHAPES.index(shape) * 8 + DTYPES.index(dtype) * 2 + channels_last
    act, gate, pool_types, order = OPTION_CYCLE[(7 * i) % len(OPTION_CYCLE)]
    N, _, H, W = shape[:4]
    training = i % 2 == 0 and N * H * W > 1
    low = dtype in (torch.float16, torch.bfloat16)
    case = make_case(shape, dtype, channels_last, bias=i % 3 != 0, order=order, affine=i % 5 != 1,
                     bn_dtype=torch.float32 if low and i % 4 < 2 else None, seed=i)
    run_and_check(kernel_backend, case, act=act, gate=gate, pool_types=pool_types, order=order, training=training,
                  momentum=0.1 if i % 2 else 0.01)


@pytest.mark.parametrize("pool_types,order", list(itertools.product(POOL_TYPES, ORDERS)), ids=str)
def test_cbam_all_pools_and_orders(kernel_backend, pool_types, order):
    i = POOL_TYPES.index(pool_types) * 3 + ORDERS.index(order)
    case = make_case((2, 12, 5, 6, 3, 7), torch.float32, channels_last=i % 2 == 1, order=order, seed=100 + i)
    run_and_check(kernel_backend, case, act=ACTS[i % 5], gate=GATES[i % 2], pool_types=pool_types, order=order,
                  training=i % 3 != 2)


@pytest.mark.parametrize("pool_types", POOL_TYPES[:4], ids=str)
def test_cbam_without_spatial_gate(kernel_backend, pool_types):
    """conv_w None: the channel gate alone (the official no_spatial=True)."""
    i = POOL_TYPES.index(pool_types)
    case = make_case((3, 10, 4, 5, 3, 7), torch.float32, channels_last=i % 2 == 0, spatial=False, seed=120 + i)
    run_and_check(kernel_backend, case, act=ACTS[i], gate=GATES[i % 2], pool_types=pool_types)


@pytest.mark.parametrize("shape,training", [((1, 4, 1, 1, 2, 7), False), ((2, 4, 1, 1, 2, 9), True),
                                            ((1, 6, 2, 3, 2, 9), True), ((2, 5, 3, 1, 3, 7), True),
                                            ((1, 3, 1, 4, 1, 11), False)], ids=str)
def test_cbam_maps_smaller_than_the_conv(kernel_backend, shape, training):
    """The conv's halo exceeds the map in one or both dimensions (1x1, 2x3, 3x1, 1x4 maps under
    7x7 to 11x11 kernels): only the taps inside the map count, forward and backward."""
    i = shape[-1] + training
    case = make_case(shape, torch.float64, channels_last=i % 2 == 1, order=ORDERS[i % 3], seed=140 + i)
    run_and_check(kernel_backend, case, act="silu", order=ORDERS[i % 3], training=training)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_cbam_max_ties_split_like_amax(kernel_backend, dtype, channels_last):
    """Few distinct values: many tied maxima over HW (the channel pool) and over channels (the
    spatial pool of x1, equal channel gates through equal logits); the gradients split evenly
    over the ties, as torch.amax's backward does."""
    case = make_case((2, 6, 5, 4, 2, 3), dtype, channels_last, seed=7)
    case["x"] = case["x"].mul(2).round().div(2)
    case["w2"] = case["w2"][:1].expand(6, 2).contiguous()  # every channel the same logit
    case["b2"] = torch.zeros_like(case["b2"])
    for order in ("max_mean", "avgmax"):
        run_and_check(kernel_backend, dict(case, conv_w=make_case((2, 6, 5, 4, 2, 3), dtype, order=order)["conv_w"]),
                      pool_types=("avg", "max"), order=order, training=True)


# ---- BatchNorm: training and eval, running statistics -----------------------------------------
@pytest.mark.parametrize("momentum", [0.1, 0.01, 1.0], ids=str)
def test_cbam_running_statistics_as_batch_norm(kernel_backend, momentum):
    """Training mode normalizes with the batch's statistics of the conv output and updates the
    running ones as F.batch_norm does (unbiased variance, the factor `momentum`), call after call;
    eval mode normalizes with them and leaves them be; without running statistics training mode
    still normalizes with the batch's."""
    case = make_case((3, 8, 6, 5, 2, 5), torch.float64, seed=21)
    mine = {k: case[k].clone() for k in ("running_mean", "running_var")}
    theirs = {k: case[k].clone() for k in ("running_mean", "running_var")}
    args = [case[k] for k in NAMES]
    for step in range(3):
        x = case["x"] * (1 + step) + step
        y = ak.cbam(x, *args[1:], mine["running_mean"], mine["running_var"], training=True, momentum=momentum,
                    backend=kernel_backend)
        want = reference.cbam(x, *args[1:], theirs["running_mean"], theirs["running_var"], training=True,
                              momentum=momentum)
        torch.testing.assert_close(y, want, rtol=1e-10, atol=1e-12)
        for k in mine:
            torch.testing.assert_close(mine[k], theirs[k], rtol=1e-12, atol=1e-14, msg=k)
    before = {k: v.clone() for k, v in mine.items()}
    y = ak.cbam(*args, mine["running_mean"], mine["running_var"], training=False, backend=kernel_backend)
    torch.testing.assert_close(y, reference.cbam(*args, before["running_mean"], before["running_var"]),
                               rtol=1e-10, atol=1e-12)
    assert all(torch.equal(mine[k], before[k]) for k in mine)
    y = ak.cbam(*args, training=True, backend=kernel_backend)
    torch.testing.assert_close(y, reference.cbam(*args, training=True), rtol=1e-10, atol=1e-12)


def test_cbam_running_statistics_in_low_precision(kernel_backend):
    """bf16 x with the BatchNorm's fp32 parameters and statistics (what torch's BatchNorm takes):
    the fp32 running statistics updated from the fp32-accumulated batch statistics."""
    case = make_case((2, 8, 6, 5, 2, 7), torch.bfloat16, bn_dtype=torch.float32, seed=22)
    run_and_check(kernel_backend, case, training=True, momentum=0.1)
    assert case["running_mean"].dtype == torch.float32


# ---- gradients ---------------------------------------------------------------------------------
@pytest.mark.parametrize("pool_types,order,training,channels_last", [
    (("avg", "max"), "max_mean", True, False), (("avgmax",), "avgmax", False, True),
    (("max",), "mean_max", True, True), (("avg",), "max_mean", False, False)], ids=str)
def test_cbam_gradcheck(kernel_backend, pool_types, order, training, channels_last):
    case = make_case((2, 3, 3, 2, 2, 3), torch.float64, channels_last, order=order, seed=3)
    ins = _leaves(case)
    names = [k for k in NAMES if ins[k] is not None]

    def f(*a):
        kw = dict(zip(names, a))
        return ak.cbam(*(kw.get(k) for k in NAMES), None if training else case["running_mean"],
                       None if training else case["running_var"], training=training, act="gelu",
                       gate="hardsigmoid" if training else "sigmoid", pool_types=pool_types, order=order,
                       backend=kernel_backend)
    assert torch.autograd.gradcheck(f, [ins[k] for k in names], fast_mode=True)


@pytest.mark.parametrize("training,gate", [(True, "sigmoid"), (False, "hardsigmoid")])
def test_cbam_gradgradcheck(kernel_backend, training, gate):
    """create_graph=True differentiates the reference's graph with the statistics the forward
    normalized with (the batch's in training mode)."""
    case = make_case((2, 3, 2, 3, 2, 3), torch.float64, channels_last=training, seed=8)
    ins = _leaves(case)

    def f(*a):
        return ak.cbam(*a, None if training else case["running_mean"], None if training else case["running_var"],
                       training=training, act="silu", gate=gate, backend=kernel_backend)
    assert torch.autograd.gradgradcheck(f, [ins[k] for k in NAMES], fast_mode=True)


def test_cbam_create_graph_matches_plain_backward(kernel_backend):
    """The gradient's value does not depend on create_graph (fp64, batch statistics), and the
    differentiable path, a second-order gradient included, updates the running statistics only
    in the forward, as the reference's module does."""
    case = make_case((2, 6, 4, 3, 2, 5), torch.float64, seed=12)
    dy = rand(case["x"].shape, torch.float64, DEVICE, torch.Generator().manual_seed(5))
    grads = []
    for create_graph in (False, True):
        ins = _leaves(case)
        y = _call(ak.cbam, ins, training=True, momentum=0.5, act="hardswish", backend=kernel_backend)
        grads.append(torch.autograd.grad(y, [ins[k] for k in NAMES], dy, create_graph=create_graph))
        if create_graph:
            torch.autograd.grad(sum(g.square().sum() for g in grads[-1]), ins["w1"])
        ref = _leaves(case)
        _call(reference.cbam, ref, training=True, momentum=0.5, act="hardswish")
        for k in ("running_mean", "running_var"):
            torch.testing.assert_close(ins[k], ref[k], rtol=1e-12, atol=1e-14, msg=k)
    for name, plain, graph in zip(NAMES, *grads):
        assert graph.requires_grad and not plain.requires_grad, name
        torch.testing.assert_close(graph, plain, rtol=1e-10, atol=1e-12, msg=name)


# ---- custom ops, torch.compile ---------------------------------------------------------------
def _op_args(case, training, backend, pool="avg+max", order="max_mean"):
    acc = torch.float32 if case["x"].dtype != torch.float64 else torch.float64
    cw = None if case["conv_w"] is None else case["conv_w"].to(acc)
    bn = [None if case[k] is None else case[k].to(acc) for k in ("bn_weight", "bn_bias")]
    stats = [None, None] if training else [case["running_mean"].to(acc), case["running_var"].to(acc)]
    return (case["x"], case["w1"], case["b1"], case["w2"], case["b2"], cw, *bn, *stats, 1e-5, training, "gelu",
            "hardsigmoid", pool, order, backend)


@pytest.mark.parametrize("channels_last,training,spatial,pool,order", [
    (False, True, True, "avg+max", "max_mean"), (True, False, True, "avgmax", "avgmax"),
    (True, True, False, "max", "mean_max")], ids=str)
def test_cbam_opcheck(kernel_backend, channels_last, training, spatial, pool, order):
    case = make_case((2, 6, 3, 4, 3, 3), torch.float32, channels_last, order=order, spatial=spatial, seed=4)
    for k in ("x", "w1", "w2", "conv_w", "bn_weight"):
        if case[k] is not None:
            case[k].requires_grad_()
    args = _op_args(case, training, kernel_backend, pool, order)
    torch.library.opcheck(torch.ops.attnkernels.cbam_forward.default, args)
    y, pools, u, z, m, t, bstat = torch.ops.attnkernels.cbam_forward(*args)
    dy = torch.randn_like(y)
    det = [None if a is None else a.detach() for a in (args[0], args[1], args[3], args[5], args[6], args[7])]
    torch.library.opcheck(torch.ops.attnkernels.cbam_backward.default,
                          (dy, *det, pools, u, z, m, t, bstat, training, "gelu", "hardsigmoid", pool, order,
                           kernel_backend))


def _assert_same_fwd_bwd(compiled, eager, case):
    """compiled and eager, each on its own leaves and running statistics: equal outputs, gradients
    and running statistics."""
    a, b = _leaves(case), _leaves(case)
    y_c, y_e = _call(compiled, a), _call(eager, b)
    torch.testing.assert_close(y_c, y_e)
    dy = torch.randn_like(y_e)
    y_c.backward(dy)
    y_e.backward(dy)
    for k in NAMES:
        torch.testing.assert_close(a[k].grad, b[k].grad, msg=k)
    for k in ("running_mean", "running_var"):
        torch.testing.assert_close(a[k], b[k], msg=k)


def test_cbam_compile_fullgraph(kernel_backend):
    """torch.compile(fullgraph=True) in training mode: the op, its backward and the in-place
    running-statistics update in one graph, matching the eager call."""
    torch._dynamo.reset()

    def f(*a):
        return ak.cbam(*a, training=True, momentum=0.1, act="hardswish", pool_types=("avg", "max"),
                       order="mean_max", backend=kernel_backend)
    _assert_same_fwd_bwd(torch.compile(f, fullgraph=True), f,
                         make_case((2, 8, 5, 5, 3, 7), torch.float32, channels_last=True, order="mean_max"))


def test_cbam_compile_dynamic_shapes(kernel_backend):
    """torch.compile(dynamic=True): one graph serves new batch and spatial sizes (the fake kernels
    take symbolic shapes), forward, backward and running statistics matching eager at each."""
    import torch._dynamo.testing
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")

    def f(*a):
        return ak.cbam(*a, training=True, act="silu", pool_types=("avgmax",), order="avgmax", backend=kernel_backend)
    compiled = torch.compile(f, fullgraph=True, dynamic=True, backend=counter)
    # (the first shape's sizes all distinct: duck sizing would tie equal ones)
    for seed, shape in enumerate([(4, 8, 5, 6, 3, 7), (2, 8, 9, 4, 3, 7), (5, 8, 3, 10, 3, 7)]):
        _assert_same_fwd_bwd(compiled, f, make_case(shape, torch.float32, order="avgmax", seed=seed))
        if seed == 0:
            # (dynamo may compile the first frame twice: under dynamic=True it makes cbam's float
            # defaults, momentum and eps, symbolic, then restarts its analysis to specialize them)
            first = counter.frame_count
    assert counter.frame_count == first, "recompiled for a new shape"


# ---- odd inputs --------------------------------------------------------------------------------
def test_cbam_reference_only_pools_and_empty_input(kernel_backend):
    """The official code's "lp" / "lse" pools and repeated pools run the reference (documented);
    an empty batch too."""
    case = make_case((2, 6, 3, 4, 2, 3), torch.float64, seed=5)
    for pool_types in (("avg", "lp"), ("lse",), ("avg", "avg")):
        ins, ref = _leaves(case), _leaves(case)
        y = _call(ak.cbam, ins, pool_types=pool_types, training=True, backend=kernel_backend)
        torch.testing.assert_close(y, _call(reference.cbam, ref, pool_types=pool_types, training=True))
        torch.testing.assert_close(ins["running_mean"], ref["running_mean"])
    empty = dict(case, x=case["x"][:0])
    assert _call(ak.cbam, empty, backend=kernel_backend).shape == (0, 6, 3, 4)


def test_cbam_non_contiguous_input(kernel_backend):
    case = make_case((2, 6, 8, 10, 3, 5), torch.float32, seed=6)
    x = case["x"]
    for view in (lambda t: t[:, :, ::2, 1:], lambda t: t.permute(0, 1, 3, 2)):
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        args = [case[k] for k in NAMES[1:]]
        ya = ak.cbam(view(xa), *args, case["running_mean"], case["running_var"], backend=kernel_backend)
        yb = reference.cbam(view(xb), *args, case["running_mean"], case["running_var"])
        torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
        dy = rand(ya.shape, x.dtype, x.device, torch.Generator().manual_seed(3))
        ya.backward(dy)
        yb.backward(dy)
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-5)
    # 1x1-conv views of the MLP weights, strided biases
    ins = dict(case, w1=case["w1"][:, :, None, None], w2=case["w2"][:, :, None, None],
               b2=torch.stack([case["b2"], -case["b2"]], 1)[:, 0])
    torch.testing.assert_close(_call(ak.cbam, ins, backend=kernel_backend), _call(reference.cbam, case),
                               rtol=1e-5, atol=1e-5)


def _good():
    return make_case((2, 8, 3, 3, 2, 3), torch.float32)


@pytest.mark.parametrize("mutate,exc,match", [
    (lambda a: a.update(x=a["x"][0]), ValueError, "x must be 4-D"),
    (lambda a: a.update(x=a["x"].to(torch.int32)), TypeError, "x must be a float"),
    (lambda a: a.update(w1=a["w1"][:, :5]), ValueError, "w1 has shape"),
    (lambda a: a.update(w1=a["w1"][:0], b1=a["b1"][:0], w2=a["w2"][:, :0]), ValueError, "at least one hidden"),
    (lambda a: a.update(w2=a["w2"][:, :1]), ValueError, "w2 has shape"),
    (lambda a: a.update(b1=a["b1"][:1]), ValueError, "b1 has shape"),
    (lambda a: a.update(b2=a["b2"].half()), TypeError, "b2 has dtype"),
    (lambda a: a.update(conv_w=a["conv_w"][:, :1]), ValueError, r"conv_w has shape \(1, 1, 3, 3\), expected \(1, 2"),
    (lambda a: a.update(conv_w=torch.zeros(1, 2, 4, 4)), ValueError, "conv_w has shape.*k odd"),
    (lambda a: a.update(conv_w=torch.zeros(1, 2, 3, 5)), ValueError, "conv_w has shape"),
    (lambda a: a.update(conv_w=a["conv_w"][0]), ValueError, "conv_w must be 4-D"),
    (lambda a: a.update(conv_w=a["conv_w"].double()), TypeError, "conv_w has dtype"),
    (lambda a: a.update(order="avgmax"), ValueError, r"conv_w has shape \(1, 2, 3, 3\), expected \(1, 1"),
    (lambda a: a.update(bn_weight=torch.ones(2)), ValueError, "bn_weight has shape"),
    (lambda a: a.update(bn_bias=torch.ones(1, dtype=torch.float64)), TypeError, "bn_bias has dtype"),
    (lambda a: a.update(running_var=None), ValueError, "running_mean and running_var must be given together"),
    (lambda a: a.update(running_mean=None, running_var=None), ValueError, "needed when training=False"),
    (lambda a: a.update(x=a["x"][:1, :, :1, :1], training=True), ValueError, "more than 1 value per channel"),
    (lambda a: a.update(training=True, momentum=None), TypeError, "momentum must be a float"),
    (lambda a: a.update(act="tanh"), ValueError, "act must be one of"),
    (lambda a: a.update(gate="softmax"), ValueError, "gate must be one of"),
    (lambda a: a.update(pool_types="avg"), TypeError, "pool_types must be a sequence"),
    (lambda a: a.update(pool_types=()), ValueError, "pool_types is empty"),
    (lambda a: a.update(pool_types=("avg", "min")), ValueError, "pool_types must be one of"),
    (lambda a: a.update(order="max_min"), ValueError, "order must be one of"),
    (lambda a: a.update(backend="cudnn"), ValueError, "backend must be one of"),
])
@pytest.mark.parametrize("backend", [None] + KERNEL_BACKENDS)
def test_cbam_bad_input(mutate, exc, match, backend):
    args = dict(_good(), training=False, backend=backend)
    mutate(args)
    with pytest.raises(exc, match=match):
        ak.cbam(*(args.pop(k) for k in NAMES), args.pop("running_mean"), args.pop("running_var"), **args)


def test_cbam_raw_op_rejects_inputs_the_kernels_do_not_take(kernel_backend):
    case = make_case((2, 8, 3, 5, 2, 3), torch.float32)
    args = list(_op_args(case, True, kernel_backend))
    op = torch.ops.attnkernels.cbam_forward
    for i, bad, match in [(0, case["x"].transpose(2, 3), "contiguous in NCHW or channels_last"),
                          (1, case["w1"].t().contiguous().t(), "w1 must be a contiguous"),
                          (4, torch.stack([case["b2"], case["b2"]], 1)[:, 0], "b2 must be contiguous"),
                          (5, case["conv_w"].double(), "conv_w has dtype"),
                          (14, "max_min", "pool must be one of"),
                          (16, "reference", "backend must be one of")]:
        with pytest.raises((ValueError, TypeError), match=match):
            op(*args[:i], bad, *args[i + 1:])
    with pytest.raises(ValueError, match="bn_mean and bn_var are needed"):
        op(*args[:11], False, *args[12:])
    y, pools, u, z, m, t, bstat = op(*args)
    with pytest.raises(ValueError, match="dy must have x's shape, dtype, device"):
        torch.ops.attnkernels.cbam_backward(y.double(), *(args[i] for i in (0, 1, 3, 5, 6, 7)), pools, u, z, m, t,
                                            bstat, True, "gelu", "hardsigmoid", "avg+max", "max_mean", kernel_backend)


def test_cbam_too_large_for_32_bit_indexing(kernel_backend):
    """A sample of 2^31 or more elements gets a clear error, not an out-of-bounds access. (x is
    never written: torch.empty's pages are not touched on the CPU.)"""
    case = make_case((1, 2, 1, 1, 1, 3), torch.bfloat16)
    x = torch.empty((1, 2, 65536, 16385), dtype=torch.bfloat16, device=DEVICE)  # C*H*W = 2^31 + 2^17
    with pytest.raises((ValueError, RuntimeError), match=r"C\*H\*W"):
        _call(ak.cbam, dict(case, x=x), backend=kernel_backend)


def test_cbam_triton_refuses_scratch_past_32_bit_indices():
    """The Triton kernels' per-sample scratch, indexed with 32-bit integers: the layer-1 shares
    (N, channel blocks, P, Cr) and the spatial conv's weight-gradient partials (N, pixel tiles,
    S k k), past 2^31 elements, get cbam's ValueError before any launch (the plan, from shapes
    alone: x would take tens of GB)."""
    from attnkernels.triton import cbam as tcbam
    cpu = torch.device("cpu")
    # NCHW, HW = 512: 4-channel blocks, 512 of them at C = 2048; Cr = 128: 2^16 shares a sample per pool
    shape = (2**14 + 1, 2048, 16, 32)
    tcbam._channel_plan_for(shape, True, 128, 1, 98, cpu)
    with pytest.raises(ValueError, match=r"cbam \(triton\).*32-bit"):
        tcbam._channel_plan_for(shape, True, 128, 2, 98, cpu)  # "avg+max": two pools' shares
    # 1 x 1 maps: one pixel tile a sample, a 7 x 7 conv on [max, mean]: 98 partials a sample
    tcbam._channel_plan_for((2**31 // 98, 4, 1, 1), True, 1, 1, 98, cpu)
    with pytest.raises(ValueError, match=r"cbam \(triton\).*32-bit"):
        tcbam._channel_plan_for((2**31 // 98 + 1, 4, 1, 1), True, 1, 1, 98, cpu)


# ---- determinism and program order -------------------------------------------------------------
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_cbam_is_deterministic(kernel_backend, channels_last, monkeypatch):
    """Run to run, the same bits: no float atomics (the program that arrives last combines the
    partials in a fixed order, whichever it is), forward, backward and running statistics. On
    cuda-emu the two runs take the blocks in two random orders (CUEMU_BLOCK_ORDER), under the
    Triton interpreter the programs (shuffled_program_order); on a GPU the arrival order varies
    by itself. N = 1 and one channel block: HW splits, and several map tiles."""
    case = make_case((1, 6, 23, 25, 2, 7), torch.float32, channels_last, seed=9)
    dy = rand(case["x"].shape, torch.float32, DEVICE, torch.Generator().manual_seed(6))
    runs = []
    for seed in (1, 2):
        monkeypatch.setenv("CUEMU_BLOCK_ORDER", f"random:{seed}")
        ins = _leaves(case)
        shuffled = kernel_backend == "triton" and DEVICE.type == "cpu"
        with shuffled_program_order(seed) if shuffled else contextlib.nullcontext() as order:
            y = _call(ak.cbam, ins, training=True, act="gelu", backend=kernel_backend)
            y.backward(dy)
        assert order is None or order["reordered"] > 0
        runs.append([y.detach(), ins["running_mean"], ins["running_var"]] + [ins[k].grad for k in NAMES])
    for name, a, b in zip(("y", "running_mean", "running_var") + NAMES, *runs):
        assert torch.equal(a, b), f"{name} differs between two runs"


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_cbam_triton_programs_interleaved(channels_last):
    """On a GPU a launch's programs run at the same time; the interpreter runs one to its end, then
    the next. Here they run interleaved (triton_interpreter.interleaved_programs: switches around
    every atomic, stores hidden until a release, loads that see only what their program
    acquired): every arrival that hands partials (HW splits, channel blocks, map tiles) to the
    last program must publish and acquire them; then the counters must be back at zero."""
    if "triton" not in KERNEL_BACKENDS or DEVICE.type == "cuda":
        pytest.skip("the Triton interpreter's programs (a GPU runs its own concurrently)")
    from attnkernels.triton._common import arrival_counters
    cases = [((1, 6, 23, 25, 2, 7), torch.float32, ("avg", "max"), "max_mean"),
             ((3, 70, 6, 7, 9, 3), torch.bfloat16, ("avgmax",), "avgmax")]
    for i, (shape, dtype, pool_types, order) in enumerate(cases):
        case = make_case(shape, dtype, channels_last, order=order, seed=80 + i)
        with interleaved_programs(seed=10 * i + channels_last) as sched:
            run_and_check("triton", case, pool_types=pool_types, order=order, training=True, act="silu")
        assert sched["interleaved"] > 0 and sched["buffered"] > 0, f"no program was paused for another: {sched}"
        assert sched["stale"] == 0, f"a load read data its program had not acquired: {sched}"
    assert not arrival_counters(case["x"].device, 1).any(), "counters left non-zero"


# ---- fused means fused: no aten compute op on a feature-map-sized tensor -------------------
@pytest.mark.parametrize("channels_last,training", [(False, True), (True, False)], ids=["nchw_train", "cl_eval"])
def test_cbam_is_fused(kernel_backend, channels_last, training):
    """Forward and backward (and the running-statistics update) through the kernels only: no aten
    compute op reads or writes a tensor of x's size (utils.full_size_aten_ops; allocations and
    views aside). Fails with the reference backend."""
    case = make_case((3, 16, 6, 5, 4, 5), torch.float32, channels_last, seed=10)
    ins = _leaves(case)
    dy = torch.randn_like(case["x"])

    def run(backend):
        def go():
            y = _call(ak.cbam, ins, training=training, backend=backend)
            y.backward(dy)
            return y
        return go

    _, ops = full_size_aten_ops(run(kernel_backend), case["x"].numel())
    assert not ops, ops
    assert ins["x"].grad is not None
    _, ref_ops = full_size_aten_ops(run("reference"), case["x"].numel())
    assert ref_ops  # the recorder sees the eager ops (a recorder that saw nothing would pass anything)

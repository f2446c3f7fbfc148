"""SCA: every kernel backend against the eager reference (attnkernels/reference/sca.py).

Runs on the CPU through the Triton interpreter and cuda-emu, and unchanged on a GPU (triton,
cuda). fp32/fp16/bf16 (fp32 accumulation) against an fp64 reference, fp64 gradcheck, NCHW and
channels_last, the four orders, scale, return_attention (the maps' gradients included), poisoned
outputs, odd shapes, large logits, opcheck, torch.compile, bad input, determinism, the fused check,
the drop-in module.
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

ORDERS = ("cs", "sc", "c", "s")
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
PARAMS = ("w_c", "b_c", "W_hc", "u_c", "c_c", "W_s", "b_s", "W_hs", "u_s", "c_s")


def make_case(shape, dtype, channels_last=False, seed=0, logit_gain=1.0, device=DEVICE):
    """(V, h, params): shape (N, C, H, W, k, d); the parameters as reference.SCA holds them
    (w_c (k, 1), u_c (1, k), c_c (1,), ...), scaled so that tanh is not saturated (its gradient
    matters) unless logit_gain scales u_c and u_s up."""
    N, C, H, W, k, d = shape
    g = torch.Generator().manual_seed(seed)
    V = rand((N, C, H, W), dtype, device, g)
    if channels_last:
        V = V.contiguous(memory_format=torch.channels_last)
    h = rand((N, d), dtype, device, g)
    p = dict(w_c=rand((k, 1), dtype, device, g), b_c=rand((k,), dtype, device, g, 0.5),
             W_hc=rand((k, d), dtype, device, g, 1 / math.sqrt(d)),
             u_c=rand((1, k), dtype, device, g, logit_gain * 2 / math.sqrt(k)), c_c=rand((1,), dtype, device, g),
             W_s=rand((k, C), dtype, device, g, 1 / math.sqrt(C)), b_s=rand((k,), dtype, device, g, 0.5),
             W_hs=rand((k, d), dtype, device, g, 1 / math.sqrt(d)),
             u_s=rand((1, k), dtype, device, g, logit_gain * 2 / math.sqrt(k)), c_s=rand((1,), dtype, device, g))
    return V, h, p


def _leaves(tensors):
    return [None if t is None else t.detach().clone().requires_grad_() for t in tensors]


def _inputs(case, order, device=None, dtype=None):
    """[V, h, the ten parameters (None for a branch the order lacks)] as fresh leaves."""
    V, h, p = case
    ts = [V, h] + [p[n] if n[-1] in order else None for n in PARAMS]
    if dtype is not None:
        ts = [None if t is None else t.to(dtype) for t in ts]
    if device is not None:
        ts = [None if t is None else t.to(device) for t in ts]
    return _leaves(ts)


def _call(fn, ins, order, scale, return_attention, **kw):
    return fn(*ins, order=order, scale=scale, return_attention=return_attention, **kw)


def _loss_grads(out, ins, dX, maps_dy):
    """Gradients of sum(X dX) (+ sum(beta gb) + sum(alpha ga) with the maps) w.r.t. ins."""
    outs, dys = [out[0] if isinstance(out, tuple) else out], [dX]
    if isinstance(out, tuple):
        for m, g in zip(out[1:], maps_dy):
            if m is not None:
                outs.append(m)
                dys.append(g.to(m.dtype))
    wanted = [t for t in ins if t is not None]
    grads = iter(torch.autograd.grad(outs, wanted, dys))
    return [None if t is None else next(grads) for t in ins]


def run_and_check(backend, case, order, scale=False, return_attention=False, check_grad=True, seed=1):
    """Forward (+ backward) of the fused op with poisoned outputs vs the reference in the same dtype
    and in fp64 (utils.assert_matches); with return_attention the maps and the gradients flowing
    back through them too."""
    V = case[0]
    N, C, H, W = V.shape
    gen = torch.Generator().manual_seed(seed)
    dX = rand(V.shape, V.dtype, V.device, gen).contiguous(memory_format=torch.channels_last
                                                           if not V.is_contiguous() else torch.contiguous_format)
    maps_dy = (rand((N, C), torch.float64, V.device, gen), rand((N, H * W), torch.float64, V.device, gen))
    ins, ins_lp, ins_64 = _inputs(case, order), _inputs(case, order), _inputs(case, order, "cpu", torch.float64)
    with poisoned():
        out = _call(ak.sca, ins, order, scale, return_attention, backend=backend)
    out_lp = _call(reference.sca, ins_lp, order, scale, return_attention)
    out_64 = _call(reference.sca, ins_64, order, scale, return_attention)
    X = out[0] if return_attention else out
    assert X.dtype == V.dtype and X.shape == V.shape
    assert X.is_contiguous(memory_format=torch.channels_last) == V.is_contiguous(memory_format=torch.channels_last)
    if return_attention:
        for name, a, b, c in zip(("X", "beta", "alpha"), out, out_lp, out_64):
            if c is None:
                assert a is None, f"{name}: the order has no such branch"
                continue
            assert a.dtype == V.dtype
            assert_matches(a, b, c, name)
    else:
        assert_matches(out, out_lp, out_64, "X")
    if not check_grad:
        return
    with poisoned():
        grads = _loss_grads(out, ins, dX, maps_dy)
    grads_lp = _loss_grads(out_lp, ins_lp, dX, maps_dy)
    grads_64 = _loss_grads(out_64, ins_64, to64(dX).cpu(), [to64(g).cpu() for g in maps_dy])
    for name, t, a, b, c in zip(("dV", "dh") + PARAMS, ins, grads, grads_lp, grads_64):
        if t is None:
            continue
        assert a is not None and a.shape == t.shape, f"{name}: shape {None if a is None else a.shape}"
        assert_matches(a, b, c, name)


# every (order, scale, return_attention) combination appears across the dtype x layout matrix
COMBOS = list(itertools.product((False, True), (False, True)))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("order", ORDERS)
def test_sca_matches_reference(kernel_backend, order, dtype, channels_last):
    i = DTYPES.index(dtype) * 2 + channels_last
    scale, return_attention = COMBOS[(i + ORDERS.index(order)) % 4]
    case = make_case((2, 12, 5, 6, 20, 7), dtype, channels_last, seed=i + 10 * ORDERS.index(order))
    run_and_check(kernel_backend, case, order, scale, return_attention)


# (N, C, H, W, k, d): C=1, HW=1, k not a multiple of 16 (and k=1), d=1, 14x14, primes, several
# channel / location / unit blocks of the product tiles
ODD_SHAPES = [(2, 1, 3, 3, 5, 4), (3, 9, 1, 1, 17, 3), (1, 5, 4, 3, 1, 1), (2, 7, 14, 14, 13, 1),
              (1, 70, 3, 5, 33, 6)]


@pytest.mark.parametrize("shape", ODD_SHAPES, ids=str)
def test_sca_odd_shapes(kernel_backend, shape):
    for i, order in enumerate(ORDERS):
        dtype = (torch.float32, torch.bfloat16)[i % 2]
        case = make_case(shape, dtype, channels_last=i >= 2, seed=20 + i)
        run_and_check(kernel_backend, case, order, scale=i % 3 == 0, return_attention=i % 2 == 1)


@pytest.mark.parametrize("d", [0, 5])
def test_sca_branches_of_different_widths(kernel_backend, d):
    """The functional takes the channel and spatial branches' units separately (k_c = 3, k_s = 19),
    and an empty hidden state (d = 0: the hidden projections are the biases)."""
    V, h, p = make_case((2, 6, 4, 3, 19, max(d, 1)), torch.float64, seed=91)
    g = torch.Generator().manual_seed(92)
    p.update(w_c=p["w_c"][:3], b_c=p["b_c"][:3], W_hc=rand((3, d), torch.float64, DEVICE, g),
             u_c=p["u_c"][:, :3], W_hs=p["W_hs"][:, :d])
    h = h[:, :d]
    run_and_check(kernel_backend, (V, h, p), "cs", scale=True, return_attention=True)


@pytest.mark.parametrize("order", ORDERS)
def test_sca_large_logits(kernel_backend, order):
    """Logits of order 1e4 (u_c, u_s scaled up; tanh saturated): the softmaxes subtract their
    maximum (split into blocks: combined by max and rescaled sums), so nothing overflows, where
    exp(z) would in fp64 as in fp32. fp64 against the reference (in fp32 the maps of such logits
    are ill-conditioned: ulp-level logit errors move near-ties, in the reference too); fp32:
    finite outputs and gradients, maps that sum to 1."""
    case = make_case((2, 24, 9, 8, 20, 5), torch.float64, seed=31, logit_gain=3000.0)
    run_and_check(kernel_backend, case, order, scale=True, return_attention=True)
    case = make_case((2, 24, 9, 8, 20, 5), torch.float32, seed=31, logit_gain=3000.0)
    ins = _inputs(case, order)
    X, beta, alpha = ak.sca(*ins, order=order, return_attention=True, backend=kernel_backend)
    X.sum().backward()
    assert torch.isfinite(X).all() and all(torch.isfinite(t.grad).all() for t in ins if t is not None)
    for m in (beta, alpha):
        if m is not None:
            assert torch.isfinite(m).all()
            torch.testing.assert_close(m.sum(1), torch.ones_like(m[:, 0]))


@pytest.mark.parametrize("order", ORDERS)
def test_sca_gradcheck(kernel_backend, order):
    """fp64 gradcheck of X and the maps (their gradients enter the softmax backward)."""
    ins = _inputs(make_case((2, 3, 2, 3, 4, 2), torch.float64, seed=3), order)
    fn = lambda *a: ak.sca(*a, order=order, scale=order in ("cs", "s"), return_attention=True,  # noqa: E731
                           backend=kernel_backend)
    assert torch.autograd.gradcheck(lambda *a: tuple(t for t in fn(*a) if t is not None), ins, fast_mode=True)


def test_sca_gradgradcheck(kernel_backend):
    """A backward with create_graph=True (double backward) differentiates the reference's graph."""
    ins = _inputs(make_case((2, 3, 2, 2, 3, 2), torch.float64, True, seed=4), "cs")
    assert torch.autograd.gradgradcheck(lambda *a: ak.sca(*a, order="cs", scale=True, backend=kernel_backend), ins,
                                        fast_mode=True)


def _op_args(case, order, backend):
    V, h, p = case
    vec = {n: (p[n].reshape(-1) if n[-1] in order else None) for n in PARAMS}
    vec["W_hc"] = p["W_hc"] if "c" in order else None
    vec["W_s"] = p["W_s"] if "s" in order else None
    vec["W_hs"] = p["W_hs"] if "s" in order else None
    return [V, h] + [vec[n] for n in PARAMS] + [order, True, False, backend]


@pytest.mark.parametrize("order,channels_last", [("cs", False), ("sc", True), ("c", False), ("s", True)])
def test_sca_opcheck(kernel_backend, order, channels_last):
    case = make_case((2, 6, 3, 4, 5, 3), torch.float32, channels_last, seed=5)
    args = _op_args(case, order, kernel_backend)
    for i in range(12):
        if args[i] is not None:
            args[i] = args[i].detach().requires_grad_()
    torch.library.opcheck(torch.ops.attnkernels.sca_forward.default, tuple(args))
    X, hc, hs, v, beta, alpha = (t.detach() for t in torch.ops.attnkernels.sca_forward(*args))
    dX = torch.randn_like(X)
    V, h, w_c, b_c, W_hc, u_c, c_c, W_s, b_s, W_hs, u_s, c_s = (None if t is None else t.detach() for t in args[:12])
    dbeta = torch.randn_like(beta) if "c" in order else None
    torch.library.opcheck(torch.ops.attnkernels.sca_backward.default,
                          (dX, V, h, w_c, W_hc, u_c, W_s, W_hs, u_s, hc, hs, v, beta, alpha, dbeta, None,
                           order, True, False, kernel_backend))


def _assert_same_fwd_bwd(compiled, eager, ins):
    a, b = _leaves(ins), _leaves(ins)
    out_c, out_e = compiled(*a), eager(*b)
    torch.testing.assert_close(out_c, out_e)
    gen = torch.Generator().manual_seed(2)
    dys = [None if t is None else rand(t.shape, t.dtype, t.device, gen) for t in out_e]
    pairs = [(o, g) for o, g in zip(out_c, dys) if o is not None]
    torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
    pairs = [(o, g) for o, g in zip(out_e, dys) if o is not None]
    torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
    for ta, tb in zip(a, b):
        if ta is not None:
            torch.testing.assert_close(ta.grad, tb.grad)


@pytest.mark.parametrize("order", ["cs", "sc"])
def test_sca_compile_fullgraph_dynamic_batch(kernel_backend, order):
    """torch.compile(fullgraph=True, dynamic=True): one graph serves new batch sizes, forward and
    backward (the maps included) matching eager."""
    import torch._dynamo.testing
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")

    def f(*ins):
        return ak.sca(*ins, order=order, scale=True, return_attention=True, backend=kernel_backend)
    compiled = torch.compile(f, fullgraph=True, dynamic=True, backend=counter)
    for seed, N in enumerate((2, 3, 5)):
        _assert_same_fwd_bwd(compiled, f, _inputs(make_case((N, 8, 4, 5, 6, 3), torch.float32, order == "sc",
                                                            seed=seed), order))
    assert counter.frame_count == 1


def test_sca_tf32_follows_torch(kernel_backend, monkeypatch):
    """fp32 products use TF32 only where torch allows it for matmuls (read in the front end and
    passed down); other dtypes never ask for it."""
    seen = []
    from attnkernels.backend import get_impl
    impl = get_impl(kernel_backend)
    real = impl.sca_forward
    monkeypatch.setattr(impl, "sca_forward", lambda *a: seen.append(a[-1]) or real(*a))
    prev = torch.backends.cuda.matmul.allow_tf32
    try:
        for allow, dtype in ((False, torch.float32), (True, torch.float32), (True, torch.bfloat16)):
            torch.backends.cuda.matmul.allow_tf32 = allow
            ak.sca(*_inputs(make_case((1, 4, 2, 2, 3, 2), dtype), "s"), order="s", backend=kernel_backend)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    assert seen == [False, True, False]


def _good():
    V, h, p = make_case((2, 8, 3, 3, 5, 4), torch.float32)
    return dict(V=V, h=h, **p)


@pytest.mark.parametrize("mutate,exc,match", [
    (lambda a: a.update(V=a["V"][0]), ValueError, "V must be 4-D"),
    (lambda a: a.update(V=a["V"].to(torch.int32)), TypeError, "V must be a float"),
    (lambda a: a.update(h=a["h"][0]), ValueError, "h must be 2-D"),
    (lambda a: a.update(h=a["h"][:1]), ValueError, "its batch 1 is not V's 2"),
    (lambda a: a.update(h=a["h"][:, :3]), ValueError, r"W_hc has shape \(5, 4\), expected \(k, 3\) \(h's width"),
    (lambda a: a.update(h=a["h"].double()), TypeError, "h has dtype"),
    (lambda a: a.update(V=a["V"][:, :5]), ValueError, r"W_s has shape \(5, 8\), expected \(k, 5\) \(V's channels"),
    (lambda a: a.update(W_hs=a["W_hs"][:4]), ValueError, "W_hs has shape"),
    (lambda a: a.update(w_c=a["w_c"][:3]), ValueError, "w_c has shape"),
    (lambda a: a.update(u_s=a["u_s"].reshape(5, 1, 1)), ValueError, "u_s has shape"),
    (lambda a: a.update(b_c=None), ValueError, "b_c is None"),
    (lambda a: a.update(W_s=None), ValueError, "W_s is None"),
    (lambda a: a.update(c_c=a["c_c"].repeat(2)), ValueError, "c_c has shape"),
    (lambda a: a.update(c_s="0"), TypeError, "c_s must be a number"),
    (lambda a: a.update(b_s=a["b_s"].half()), TypeError, "b_s has dtype"),
    (lambda a: a.update(W_hc=a["W_hc"].to("meta")), ValueError, "W_hc is on meta"),
    (lambda a: a.update(W_s=a["W_s"][:0], W_hs=a["W_hs"][:0]), ValueError, "at least one unit"),
    (lambda a: a.update(order="cc"), ValueError, "order must be one of"),
    (lambda a: a.update(scale=1), TypeError, "scale must be a bool"),
    (lambda a: a.update(backend="cudnn"), ValueError, "backend must be one of"),
])
@pytest.mark.parametrize("backend", [None] + KERNEL_BACKENDS)
def test_sca_bad_input(mutate, exc, match, backend):
    args = _good()
    args.update(order="cs", scale=False, backend=backend)
    mutate(args)
    with pytest.raises(exc, match=match):
        ak.sca(args.pop("V"), args.pop("h"), *(args.pop(n) for n in PARAMS), **args)


def test_sca_branch_parameters_the_order_lacks_are_ignored(kernel_backend):
    """As in the reference: "c" needs no spatial parameters (they may be None), "s" no channel ones."""
    V, h, p = make_case((2, 6, 3, 3, 4, 3), torch.float32)
    for order in ("c", "s"):
        ins = [V, h] + [p[n] if n[-1] in order else None for n in PARAMS]
        torch.testing.assert_close(ak.sca(*ins, order=order, backend=kernel_backend),
                                   reference.sca(*ins, order=order), rtol=1e-5, atol=1e-5)


def test_sca_raw_ops_reject_inputs_the_kernels_do_not_take(kernel_backend):
    args = _op_args(make_case((2, 6, 3, 4, 5, 3), torch.float32), "cs", kernel_backend)
    bad = list(args)
    bad[7] = args[7][:, :4]  # W_s of 4 channels for V's 6
    with pytest.raises(ValueError, match="W_s has shape"):
        torch.ops.attnkernels.sca_forward(*bad)
    bad = list(args)
    bad[0] = args[0][:, :, :, :2]  # V not contiguous
    with pytest.raises(ValueError, match="contiguous"):
        torch.ops.attnkernels.sca_forward(*bad)
    X, hc, hs, v, beta, alpha = torch.ops.attnkernels.sca_forward(*args)
    V, h, w_c, _, W_hc, u_c, _, W_s, _, W_hs, u_s = args[:11]
    with pytest.raises(ValueError, match=r"alpha must be a contiguous \(2, 12\)"):
        torch.ops.attnkernels.sca_backward(torch.randn_like(X), V, h, w_c, W_hc, u_c, W_s, W_hs, u_s, hc, hs, v,
                                           beta, alpha[:, :6], None, None, "cs", True, False, kernel_backend)


def test_sca_empty_batch(kernel_backend):
    """N=0: the reference runs (an empty X, zero parameter gradients)."""
    ins = _inputs(make_case((0, 4, 3, 3, 5, 2), torch.float32), "cs")
    X = ak.sca(*ins, backend=kernel_backend)
    assert X.shape == (0, 4, 3, 3)
    X.sum().backward()
    assert ins[7].grad is not None and float(ins[7].grad.abs().sum()) == 0.0


def test_sca_non_contiguous_input(kernel_backend):
    """A strided V is copied into the closer layout; X keeps it; gradients reach the view's base."""
    V, h, p = make_case((2, 6, 8, 10, 5, 3), torch.float32)
    for view in (lambda t: t[:, :, ::2, 1:], lambda t: t.permute(0, 1, 3, 2)):
        Va, Vb = V.clone().requires_grad_(), V.clone().requires_grad_()
        ins = [p[n] for n in PARAMS]
        Xa = ak.sca(view(Va), h, *ins, backend=kernel_backend)
        Xb = reference.sca(view(Vb), h, *ins)
        torch.testing.assert_close(Xa, Xb, rtol=1e-5, atol=1e-5)
        dX = rand(Xb.shape, Xb.dtype, Xb.device, torch.Generator().manual_seed(3))
        Xa.backward(dX)
        Xb.backward(dX)
        torch.testing.assert_close(Va.grad, Vb.grad, rtol=1e-5, atol=1e-5)


def _chunked(monkeypatch, budget):
    """Make the Triton backward's dP scratch hold `budget` elements (1: one sample a chunk)."""
    if "triton" in KERNEL_BACKENDS:
        from attnkernels.triton import sca as tsca
        monkeypatch.setattr(tsca, "DP_BUDGET", budget)
        tsca._plan.cache_clear()
        return tsca
    return None


@pytest.mark.parametrize("order", ["cs", "sc", "s"])
def test_sca_triton_backward_in_chunks(order, monkeypatch):
    """The Triton backward runs the samples in chunks of a bounded dP scratch: one sample a chunk
    ("cs" recomputes dP for dV after every chunk's dW_s share) matches the reference as the single
    chunk does; dW_s sums the chunks through its fp32 accumulator."""
    if "triton" not in KERNEL_BACKENDS:
        pytest.skip("no triton backend here")
    tsca = _chunked(monkeypatch, 1)
    case = make_case((3, 10, 4, 5, 12, 4), torch.float32, channels_last=order == "sc", seed=41)
    assert tsca._plan(tuple(case[0].shape), case[0].is_contiguous(), 12 * ("c" in order), 12, 4,
                      case[0].device, case[0].dtype)["chunk"] == 1
    run_and_check("triton", case, order, scale=True, return_attention=True)
    tsca._plan.cache_clear()


def test_sca_triton_refuses_what_32_bit_indices_cannot_reach():
    """h and dh (N, d) are indexed with 32-bit integers too: past 2^31 elements, sca's ValueError
    from the plan (shapes alone), however small V's per-sample scratch."""
    from attnkernels.triton import sca as tsca
    cpu = torch.device("cpu")
    tsca._plan((2**19 - 1, 1, 1, 1), True, 1, 1, 4096, cpu, torch.float32)
    with pytest.raises(ValueError, match=r"sca \(triton\).*32-bit"):
        tsca._plan((2**19, 1, 1, 1), True, 1, 1, 4096, cpu, torch.float32)  # N d = 2^31


@pytest.mark.parametrize("order", ORDERS)
def test_sca_is_deterministic(kernel_backend, order, monkeypatch):
    """Run to run, the same bits: no float atomics, every partial combined in a fixed order by
    whichever program arrives last. Two runs in two random program orders (the Triton
    interpreter: shuffled_program_order; cuda-emu: CUEMU_BLOCK_ORDER), forward and backward (the
    maps' gradients included): HW splits of the channel pooling (channels_last), several channel
    blocks (NCHW), location, unit and product channel blocks, the dP scratch in chunks of one
    sample."""
    _chunked(monkeypatch, 1)
    shuffled = kernel_backend == "triton" and DEVICE.type == "cpu"
    case = make_case((2, 70, 16, 12, 70, 6), torch.float32, channels_last=order in ("sc", "s"), seed=51)
    runs = []
    for seed in (1, 2):
        monkeypatch.setenv("CUEMU_BLOCK_ORDER", f"random:{seed}")
        ins = _inputs(case, order)
        with shuffled_program_order(seed) if shuffled else contextlib.nullcontext() as sched:
            X, beta, alpha = ak.sca(*ins, order=order, scale=True, return_attention=True, backend=kernel_backend)
            maps = [m for m in (beta, alpha) if m is not None]
            torch.autograd.backward([X] + maps, [torch.ones_like(X)] + [torch.full_like(m, 0.5) for m in maps])
        assert not shuffled or sched["reordered"] > 0, "the interpreter's grids ran in pid order"
        runs.append([X.detach()] + maps + [t.grad for t in ins if t is not None])
    for i, (x, y) in enumerate(zip(*runs)):
        assert torch.equal(x, y), f"output {i} differs between two runs"


def test_sca_triton_programs_interleaved(monkeypatch):
    """The forward's channel and spatial kernels combine per-block partials in the program that
    arrives last (arrival counters): run with the interpreter's programs interleaved
    (triton_interpreter.interleaved_programs: stores hidden until a release, loads seeing only what
    their program acquired), the results match the reference and no load reads unacquired data."""
    if "triton" not in KERNEL_BACKENDS or DEVICE.type == "cuda":
        pytest.skip("the Triton interpreter's programs (a GPU runs its own concurrently)")
    from attnkernels.triton._common import arrival_counters
    for i, order in enumerate(("cs", "sc")):
        case = make_case((1, 20, 24, 20, 9, 3), torch.float32, channels_last=i == 1, seed=61 + i)
        with interleaved_programs(seed=7 + i) as sched:
            run_and_check("triton", case, order, scale=True, return_attention=True)
        assert sched["interleaved"] > 0, f"no program was paused for another: {sched}"
        assert sched["stale"] == 0, f"a load read data its program had not acquired: {sched}"
    assert not arrival_counters(case[0].device, 1).any(), "counters left non-zero"


@pytest.mark.parametrize("order,channels_last", [("cs", False), ("sc", True), ("c", True), ("s", False)])
def test_sca_is_fused(kernel_backend, order, channels_last):
    """Forward and backward through the kernels only: no aten compute op reads or writes a tensor
    of V's size or of the (N, HW, k) size of the attention's hidden layer (utils.full_size_aten_ops;
    allocations and views aside). The reference's do (the recorder sees them)."""
    N, C, H, W, k, d = shape = (2, 16, 6, 5, 20, 4)
    case = make_case(shape, torch.float32, channels_last, seed=71)
    ins = _inputs(case, order)
    dX = torch.randn_like(case[0])
    min_numel = min(case[0].numel(), N * H * W * k)

    def run(backend):
        X, beta, alpha = ak.sca(*ins, order=order, scale=True, return_attention=True, backend=backend)
        maps = [m for m in (beta, alpha) if m is not None]
        torch.autograd.backward([X] + maps, [dX] + [torch.ones_like(m) for m in maps])
        return X

    _, ops = full_size_aten_ops(lambda: run(kernel_backend), min_numel)
    assert not ops, ops
    assert ins[0].grad is not None
    _, ref_ops = full_size_aten_ops(lambda: run("reference"), min_numel)
    assert ref_ops


def test_sca_first_call_under_inference_mode_and_no_grad(kernel_backend):
    """No autograd (no_grad, inference_mode): the op runs its forward only, X matches; then a call
    with autograd still gets its gradients (the cached buffers are not inference tensors)."""
    case = make_case((2, 8, 4, 3, 6, 3), torch.float32, seed=81)
    ref = reference.sca(*_inputs(case, "cs"))
    for ctx in (torch.inference_mode, torch.no_grad):
        with ctx():
            X = ak.sca(*_inputs(case, "cs"), backend=kernel_backend)
        assert not X.requires_grad
        torch.testing.assert_close(X, ref, rtol=1e-5, atol=1e-5)
    run_and_check(kernel_backend, case, "cs")


# ---------------------------------------------------------------------------------------------
# the drop-in module
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("order,scale", [("cs", False), ("sc", True), ("c", True), ("s", False)])
def test_sca_module_matches_reference_module(kernel_backend, order, scale):
    """attnkernels.SCA: reference.SCA's constructor and state_dict (loads into each other);
    forward(V, h, return_attention) and the parameter gradients match the reference module's;
    bf16 V with fp32 parameters runs in V's dtype, as autocast runs the reference's Linears."""
    from utils import assert_same_state, randomize_
    ref = randomize_(reference.SCA(12, 5, attn_units=10, order=order, scale=scale).to(DEVICE),
                     torch.Generator().manual_seed(3))
    mod = ak.SCA(12, 5, attn_units=10, order=order, scale=scale).to(DEVICE)
    assert list(mod.state_dict()) == list(ref.state_dict())
    mod.load_state_dict(ref.state_dict())
    assert_same_state(mod, ref)
    assert mod.fused_options() == (order, "scale" if scale else "noscale")
    g = torch.Generator().manual_seed(4)
    V, h = rand((3, 12, 4, 5), torch.float32, DEVICE, g), rand((3, 5), torch.float32, DEVICE, g)
    with ak.backend(kernel_backend):
        out = mod(V, h, return_attention=True)
    out_ref = ref(V, h, return_attention=True)
    for a, b in zip(out, out_ref):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    out[0].sum().backward()
    out_ref[0].sum().backward()
    for (name, p), q in zip(mod.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)
    with ak.backend(kernel_backend):
        X16 = mod(V.bfloat16(), h.bfloat16())
    assert X16.dtype == torch.bfloat16
    torch.testing.assert_close(X16.float(), out_ref[0].detach(), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("v_dtype,h_dtype", [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16)],
                         ids=["bf16_V", "bf16_h"])
def test_sca_module_under_autocast_with_mixed_inputs(kernel_backend, v_dtype, h_dtype):
    """Under torch.autocast the eager block takes V and h of different dtypes (bf16 features and a
    decoder's fp32 zero state, say: its Linears cast both); the drop-in too, computing in V's
    dtype: X in eager's dtype, within bf16 rounding, and h's gradient in h's dtype."""
    ref = reference.SCA(12, 5, attn_units=8, order="cs").to(DEVICE)
    mod = ak.SCA(12, 5, attn_units=8, order="cs").to(DEVICE)
    mod.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(5)
    V, h = rand((2, 12, 3, 4), v_dtype, DEVICE, g), rand((2, 5), h_dtype, DEVICE, g)
    ha, hb = h.clone().requires_grad_(), h.clone().requires_grad_()
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        X_ref = ref(V, hb)
        with ak.backend(kernel_backend):
            X = mod(V, ha)
    assert X.dtype == X_ref.dtype
    torch.testing.assert_close(X.float(), X_ref.float(), rtol=0.05, atol=0.05)
    X.float().sum().backward()
    X_ref.float().sum().backward()
    assert ha.grad.dtype == hb.grad.dtype == h_dtype
    torch.testing.assert_close(ha.grad.float(), hb.grad.float(), rtol=0.1, atol=0.05)


def test_sca_module_parametrized_weight(kernel_backend):
    """A parametrized Linear weight (weight norm): read through its attribute, as the reference
    reads it; X and the gradients of the parametrization's parameters match."""
    from torch.nn.utils.parametrizations import weight_norm
    mods = [m.to(DEVICE) for m in (ak.SCA(6, 3, attn_units=4), reference.SCA(6, 3, attn_units=4))]
    mods[1].load_state_dict(mods[0].state_dict())
    for m in mods:
        weight_norm(m.spatial_in)
    V, h = torch.randn(2, 6, 3, 3, device=DEVICE), torch.randn(2, 3, device=DEVICE)
    with ak.backend(kernel_backend):
        X = mods[0](V, h)
    X_ref = mods[1](V, h)
    torch.testing.assert_close(X, X_ref, rtol=1e-5, atol=1e-5)
    X.sum().backward()
    X_ref.sum().backward()
    for (name, p), q in zip(mods[0].named_parameters(), mods[1].parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_sca_module_rejects_other_shapes(kernel_backend):
    mod = ak.SCA(6, 3, attn_units=4).to(DEVICE)
    with ak.backend(kernel_backend), pytest.raises(ValueError, match=r"expected V \(N, 6, H, W\)"):
        mod(torch.randn(2, 5, 3, 3, device=DEVICE), torch.randn(2, 3, device=DEVICE))

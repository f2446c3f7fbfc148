"""Backend-level tests of attnkernels.cuda's BAM (csrc/bam/): bam_forward / bam_backward of the
backend contract (attnkernels/bam.py) called directly, on CPU tensors through the emulated build
(backend cuda-emu) and, with a GPU and the nvcc build, on CUDA tensors too. Every output and
workspace is poisoned with NaN first, so an element a kernel forgets to write fails. Outputs are
held to tests/utils.assert_matches' bar: the error against the fp64 reference at most twice the
same-dtype reference's own."""
from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

from attnkernels.reference import bam as R
from utils import assert_matches, case_generator, rand

cuda_mod = pytest.importorskip("attnkernels.cuda")

DEVICES = []
if cuda_mod.unavailable_reason("cuda-emu") is None:
    DEVICES.append("cpu")
if cuda_mod.unavailable_reason("cuda") is None and torch.cuda.is_available():
    DEVICES.append("cuda")
if not DEVICES:
    pytest.skip(f"no cuda/cuda-emu extension: {cuda_mod.unavailable_reason('cuda-emu')}", allow_module_level=True)

EPS = 1e-5
FWD = ("y", "p", "u", "mc", "bstat")
BWD = ("dx", "dms", "dw0", "db0", "dw1", "db1", "dbn_w", "dbn_b")
COMBINE_CODE = {"prod": 0, "sum": 1}


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setenv("ATTNKERNELS_CUDA_POISON", "1")


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _misaligned(t):
    """t's values in a tensor one element into its storage (16-byte vector paths must fall back),
    in t's memory format."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    if t.dim() == 4 and not t.is_contiguous():  # channels_last
        n, c, h, w = t.shape
        out = buf[1:].view(n, h, w, c).permute(0, 3, 1, 2)
    else:
        out = buf[1:].view(t.shape)
    out.copy_(t)
    return out


def make(shape, cr, dtype, device="cpu", channels_last=False, seed=0, bias=True, affine=True, misalign=False):
    """A case: x (N, C, H, W), ms (N, H*W), the MLP's weights in x's dtype, the BatchNorm's affine
    parameters and running statistics in the accumulation dtype, and dy like x."""
    g = case_generator(shape, cr, str(dtype), channels_last, seed)
    n, c, h, w = shape
    acc = _acc(dtype)
    x = rand(shape, dtype, device, g)
    dy = rand(shape, dtype, device, g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        dy = dy.contiguous(memory_format=torch.channels_last)
    case = types.SimpleNamespace(
        x=x, dy=dy, ms=rand((n, h * w), dtype, device, g, 1.5),
        w0=rand((cr, c), dtype, device, g, 2.0 / c ** 0.5), b0=rand((cr,), dtype, device, g, 0.5) if bias else None,
        w1=rand((c, cr), dtype, device, g, 1.5 / cr ** 0.5), b1=rand((c,), dtype, device, g, 0.5) if bias else None,
        bn_w=(rand((cr,), acc, device, g, 0.3) + 1) if affine else None,
        bn_b=rand((cr,), acc, device, g, 0.3) if affine else None,
        rm=rand((cr,), acc, device, g, 0.3),
        rv=(torch.rand(cr, generator=g, dtype=torch.float64) + 0.5).to(device=device, dtype=acc))
    if misalign:
        case.x, case.dy, case.ms = _misaligned(case.x), _misaligned(case.dy), _misaligned(case.ms)
    return case


def run(case, train, combine, bps_hint=0):
    """The kernels' forward, then their backward on the forward's outputs: {name: tensor}."""
    ext = cuda_mod.ext_for(case.x)
    y, p, u, mc, bstat = ext.bam_forward(case.x, case.ms, case.w0, case.b0, case.w1, case.b1, case.bn_w, case.bn_b,
                                         None if train else case.rm, None if train else case.rv, EPS, train,
                                         COMBINE_CODE[combine], True, bps_hint)
    grads = ext.bam_backward(case.dy, case.x, case.ms, case.w0, case.w1, case.bn_w, case.bn_b, p, u, mc, bstat,
                             train, COMBINE_CODE[combine], True, bps_hint)
    return dict(zip(FWD + BWD, (y, p, u, mc, bstat) + tuple(grads)))


def reference(case, train, combine, dtype):
    """The reference BAM (attnkernels.reference.bam) computed in `dtype`: the forward's outputs and
    the gradients of every input but ms's branch. Missing biases and affine parameters are zeros
    and ones (the same function), so their gradients exist to compare the kernels' with."""
    n, c, h, w = case.x.shape
    cr = case.w0.shape[0]

    def leaf(t, default=None):
        t = default if t is None else t
        return t.detach().to(device="cpu", dtype=dtype).requires_grad_()

    z = torch.zeros
    x, ms, w0, w1 = leaf(case.x), leaf(case.ms), leaf(case.w0), leaf(case.w1)
    b0, b1 = leaf(case.b0, z(cr)), leaf(case.b1, z(c))
    bn_w, bn_b = leaf(case.bn_w, torch.ones(cr)), leaf(case.bn_b, z(cr))
    rm, rv = case.rm.detach().cpu().to(dtype), case.rv.detach().cpu().to(dtype)
    p = x.mean((2, 3))
    u = F.linear(p, w0, b0)
    mc = R.bam_channel(x, w0, b0, (bn_w, bn_b, None if train else rm, None if train else rv), w1, b1,
                       training=train, eps=EPS)
    y = R.bam_gate(x, mc, ms.view(n, 1, h, w), combine)
    if train:
        mean, var = u.mean(0), u.var(0, unbiased=False)
    else:
        mean, var = rm, rv
    bstat = torch.stack([mean, 1 / torch.sqrt(var + EPS), var])
    y.backward(case.dy.detach().cpu().to(dtype))
    out = dict(y=y, p=p, u=u, mc=mc, bstat=bstat)
    out.update(dx=x.grad, dms=ms.grad, dw0=w0.grad, db0=b0.grad, dw1=w1.grad, db1=b1.grad, dbn_w=bn_w.grad,
               dbn_b=bn_b.grad)
    return {k: v.detach() for k, v in out.items()}


def check(case, train, combine, bps_hint=0, names=FWD + BWD):
    got = run(case, train, combine, bps_hint)
    dtype = case.x.dtype
    ref64 = reference(case, train, combine, torch.float64)
    ref_lp = ref64 if dtype == torch.float64 else reference(case, train, combine, dtype)
    assert got["y"].stride() == case.x.stride(), "y must keep x's layout"
    assert got["dx"].stride() == case.x.stride(), "dx must keep x's layout"
    for name in names:
        assert got[name].dtype == (_acc(dtype) if name in ("p", "u", "mc", "bstat", "dbn_w", "dbn_b") else dtype), name
        assert_matches(got[name], ref_lp[name], ref64[name], f"{name} ({dtype}, train={train}, {combine})")
    return got


MODES = [(False, "prod"), (True, "prod"), (False, "sum"), (True, "sum")]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_parity(device, dtype, channels_last):
    """Forward and backward against the reference, both BatchNorm modes and both combines, on rows
    (HW in NCHW, C in channels_last) of every load width the backward's tiles take: 16-byte vectors
    (HW = 32, C = 24), 8-byte ones (2-byte types: HW = 20, C = 12, 20; fp32: HW = C = 14) and
    elements (HW = 35; 2-byte types: HW = C = 14)."""
    shapes = [((3, 24, 4, 8), 6), ((4, 20, 7, 5), 5), ((3, 12, 4, 5), 4), ((4, 14, 2, 7), 4)]
    for i, ((train, combine), (shape, cr)) in enumerate(zip(MODES, shapes)):
        check(make(shape, cr, dtype, device, channels_last, seed=i), train, combine)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("shape,cr,dtype", [
    ((3, 1, 5, 6), 1, torch.float32),      # C = 1 (a layout that is both), Cr = 1
    ((3, 16, 1, 1), 4, torch.float16),     # HW = 1
    ((3, 13, 11, 3), 1, torch.bfloat16),   # primes, non-square, Cr = 1
    ((5, 7, 2, 9), 3, torch.float64),      # odd everything
    ((3, 40, 3, 17), 11, torch.float32),   # HW = 51: rows of partial vectors
], ids=str)
def test_odd_shapes(device, channels_last, shape, cr, dtype):
    """(N >= 3 with batch statistics: with N = 2 the BatchNorm's output is +-1 but for eps, its
    backward cancels to eps / (var + eps) of its input, and the fp32 reference's error and the
    kernels' are both that cancellation's noise, too noisy for a bar of twice the one.)"""
    for i, (train, combine) in enumerate(MODES[::3] if dtype != torch.float64 else MODES):
        check(make(shape, cr, dtype, device, channels_last, seed=i), train, combine)


@pytest.mark.parametrize("device", DEVICES)
def test_single_sample_eval(device):
    """N = 1 with running statistics (batch statistics need N > 1: test_input_checks)."""
    for channels_last in (False, True):
        check(make((1, 12, 6, 6), 3, torch.float32, device, channels_last), False, "prod")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("bps_hint", [3, 64])
def test_split_partials(device, channels_last, bps_hint):
    """Several blocks per sample: the pooling's slice partials, and the backward's row splits and
    column segments (rows longer than a tile's segment: HW = 300 in NCHW, C = 300 channels_last),
    combined by the last block of each sample in a fixed order; the last sample's block runs the
    batch statistics and the BatchNorm backward."""
    cases = [((3, 300, 2, 3) if channels_last else (3, 20, 20, 15), 5, torch.float32),
             ((2, 264, 3, 2) if channels_last else (2, 16, 24, 24), 4, torch.bfloat16)]
    for i, (shape, cr, dtype) in enumerate(cases):
        for train, combine in MODES[1:3]:
            check(make(shape, cr, dtype, device, channels_last, seed=i), train, combine, bps_hint)


@pytest.mark.parametrize("device", DEVICES)
def test_no_bias_no_affine(device):
    """b0, b1 None and a BatchNorm without affine parameters (bn_w, bn_b None): the kernels still
    return every gradient (the front end drops what nobody asked for)."""
    for channels_last, train in ((False, True), (True, False)):
        case = make((3, 16, 5, 5), 4, torch.float32, device, channels_last, bias=False, affine=False)
        check(case, train, "prod")
        case = make((3, 16, 5, 5), 4, torch.float32, device, channels_last, bias=True, affine=False)
        case.bn_b = make((3, 16, 5, 5), 4, torch.float32, device).bn_b  # bias without weight
        check(case, train, "sum")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_misaligned_inputs(device, channels_last):
    """x, dy and ms one element into their storage: the vector paths must not be taken (the emulator
    checks every 16-byte access's alignment) and the results stay right."""
    for dtype in (torch.float32, torch.bfloat16):
        case = make((2, 16, 4, 8), 4, dtype, device, channels_last, misalign=True)
        check(case, True, "prod", bps_hint=3)
    case = make((2, 16, 4, 8), 4, torch.float16, device, channels_last)
    case.w0, case.w1 = _misaligned(case.w0), _misaligned(case.w1)  # the MLP's matrix-vector loads
    check(case, False, "sum")


def _bits(d):
    return {k: v.detach().cpu().clone() for k, v in d.items()}


@pytest.mark.skipif("cpu" not in DEVICES, reason="needs the emulated build")
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_deterministic_any_block_order(channels_last, monkeypatch):
    """Same bits from run to run and whichever block of a sample (and sample of the batch) arrives
    last: the emulator's blocks in a random order (CUEMU_BLOCK_ORDER) and its threads in a random
    order between sync points (CUEMU_SCHEDULE, which also exposes a missing barrier)."""
    case = make((5, 24, 12, 10), 6, torch.float32, "cpu", channels_last)
    base = _bits(run(case, True, "prod", bps_hint=4))
    again = _bits(run(case, True, "prod", bps_hint=4))
    monkeypatch.setenv("CUEMU_STRICT", "1")
    monkeypatch.setenv("CUEMU_POISON_SHARED", "1")
    for seed in (1, 2):
        monkeypatch.setenv("CUEMU_BLOCK_ORDER", f"random:{seed}")
        monkeypatch.setenv("CUEMU_SCHEDULE", f"random:{seed + 10}")
        shuffled = _bits(run(case, True, "prod", bps_hint=4))
        for k in base:
            assert torch.equal(base[k], again[k]), k
            assert torch.equal(base[k], shuffled[k]), f"{k} differs with blocks in random order {seed}"


@pytest.mark.parametrize("device", DEVICES)
def test_repeat_calls_reuse_counters(device):
    """The per-sample and batch counters are left zeroed by the kernels: many calls, N growing and
    shrinking, forward and backward, stay right (cuda-emu also checks the counters after each call)."""
    for n in (2, 7, 3, 9):
        check(make((n, 8, 4, 4), 2, torch.float32, device, seed=n), n % 2 == 1, "prod", bps_hint=2)


@pytest.mark.parametrize("device", DEVICES)
def test_contract_wrappers(device):
    """attnkernels.cuda.bam_forward / bam_backward (what attnkernels.bam's custom ops call): the
    contract's argument order and combine names, the raw ops' results."""
    case = make((3, 12, 5, 4), 3, torch.float32, device, True)
    for train, combine in MODES:
        rm, rv = (None, None) if train else (case.rm, case.rv)
        fwd = cuda_mod.bam_forward(case.x, case.ms, case.w0, case.b0, case.w1, case.b1, case.bn_w, case.bn_b, rm, rv,
                                   EPS, train, combine)
        assert len(fwd) == 5
        y, p, u, mc, bstat = fwd
        bwd = cuda_mod.bam_backward(case.dy, case.x, case.ms, case.w0, case.w1, case.bn_w, case.bn_b, p, u, mc, bstat,
                                    train, combine)
        assert len(bwd) == 8
        raw = run(case, train, combine)
        for name, t in zip(FWD + BWD, tuple(fwd) + tuple(bwd)):
            assert torch.equal(t, raw[name]), name


def test_input_checks():
    """The raw binding refuses what the kernels cannot run with an error naming the op and the
    argument (never a crash or a wrong answer)."""
    dev = DEVICES[0]
    c = make((2, 8, 4, 4), 2, torch.float32, dev)
    ext = cuda_mod.ext_for(c.x)

    def fwd(**kw):
        a = dict(x=c.x, ms=c.ms, w0=c.w0, b0=c.b0, w1=c.w1, b1=c.b1, bn_w=c.bn_w, bn_b=c.bn_b, bn_mean=c.rm,
                 bn_var=c.rv, eps=EPS, batch_stats=False, combine=0)
        a.update(kw)
        return ext.bam_forward(**a)

    y, p, u, mc, bstat = fwd()

    def bwd(**kw):
        a = dict(dy=c.dy, x=c.x, ms=c.ms, w0=c.w0, w1=c.w1, bn_w=c.bn_w, bn_b=c.bn_b, p=p, u=u, mc=mc, bstat=bstat,
                 batch_stats=False, combine=0)
        a.update(kw)
        return ext.bam_backward(**a)

    bad_fwd = [
        (dict(x=c.x[:, :, ::2]), "x must be contiguous"),
        (dict(x=c.x[0]), "x must be"),
        (dict(x=c.x.to(torch.int32)), "unsupported dtype"),
        (dict(ms=c.ms.double()), "ms has dtype"),
        (dict(ms=c.ms[:, :8].contiguous()), "ms must have shape"),
        (dict(ms=c.ms.t().contiguous().t()), "ms must be contiguous"),
        (dict(w0=c.w0.double()), "w0 has dtype"),
        (dict(w0=c.w0[:, :4].contiguous()), "w0 must be"),
        (dict(w1=c.w1[:4].contiguous()), "w1 must have shape"),
        (dict(b0=c.b1), "b0 must have shape"),
        (dict(b1=c.b0), "b1 must have shape"),
        (dict(bn_w=c.bn_w.half()), "bn_w has dtype"),
        (dict(bn_b=c.bn_b[:1]), "bn_b must have shape"),
        (dict(bn_mean=None), "bn_mean is required"),
        (dict(bn_var=c.rv[:1]), "bn_var must have shape"),
        (dict(batch_stats=True), "bn_mean / bn_var must be None"),
        (dict(combine=2), "combine"),
        (dict(eps=-1.0), "eps"),
    ]
    for kw, msg in bad_fwd:
        with pytest.raises(RuntimeError, match="bam") as e:
            fwd(**kw)
        assert msg in str(e.value), (kw.keys(), str(e.value))
    one = make((1, 8, 4, 4), 2, torch.float32, dev)
    with pytest.raises(RuntimeError, match="more than 1 value per channel"):
        ext.bam_forward(one.x, one.ms, one.w0, None, one.w1, None, None, None, None, None, EPS, True, 0)
    bad_bwd = [
        (dict(dy=c.dy.contiguous(memory_format=torch.channels_last)), "dy must have the memory format of x"),
        (dict(dy=c.dy.double()), "dy must match x"),
        (dict(p=p[:1]), "p must have shape"),
        (dict(u=u.double()), "u has dtype"),
        (dict(mc=mc[:, :3]), "mc must be contiguous"),
        (dict(bstat=bstat[:2]), "bstat must have shape"),
        (dict(combine=-1), "combine"),
    ]
    for kw, msg in bad_bwd:
        with pytest.raises(RuntimeError, match="bam") as e:
            bwd(**kw)
        assert msg in str(e.value), (kw.keys(), str(e.value))
    bwd()  # and the good call still runs after the errors

"""Backend-level tests of attnkernels.cuda's CBAM (csrc/cbam/): direct cbam_forward / cbam_backward
calls against the eager reference (attnkernels.reference.cbam, in float64 and in the input's dtype:
tests/utils.assert_matches' error bar), on CPU tensors through the emulated build (backend
cuda-emu) and, when a GPU and the nvcc build are present, on CUDA tensors too. Every output and
workspace is NaN-poisoned first (attnkernels._alloc.poisoned), so an element a kernel forgets to
write fails the comparison. The front end's suite (tests/test_cbam.py) runs these kernels through
attnkernels.cbam."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from attnkernels._alloc import poisoned
from utils import assert_matches, case_generator, rand

cuda_mod = pytest.importorskip("attnkernels.cuda")
R = importlib.import_module("attnkernels.reference.cbam")  # (the package exports the function `cbam`)

DEVICES = []
if cuda_mod.unavailable_reason("cuda-emu") is None:
    DEVICES.append("cpu")
if cuda_mod.unavailable_reason("cuda") is None and torch.cuda.is_available():
    DEVICES.append("cuda")
if not DEVICES:
    pytest.skip(f"no cuda/cuda-emu extension: {cuda_mod.unavailable_reason('cuda-emu')}", allow_module_level=True)

# the contract's pool option -> the reference's pool_types
POOL_TYPES = {"avg": ("avg",), "max": ("max",), "avg+max": ("avg", "max"), "avgmax": ("avgmax",)}
FWD_NAMES = ("y", "pools", "u", "z", "m", "t", "bstat")
BWD_NAMES = ("dx", "dw1", "db1", "dw2", "db2", "dconv_w", "dbn_w", "dbn_b")


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _misaligned(x, cl):
    """x's values at a storage offset of one element (16-byte paths must peel or fall back)."""
    n, c, h, w = x.shape
    dense = x.permute(0, 2, 3, 1) if cl else x
    buf = torch.empty(x.numel() + 1, dtype=x.dtype)
    buf[1:] = dense.reshape(-1)
    v = buf[1:].view(dense.shape)
    return v.permute(0, 3, 1, 2) if cl else v


def make(shape, cr, dtype, device="cpu", *, cl=False, k=7, spool="max_mean", spatial=True, bias=True, affine=True,
         ties=False, misalign=False, key=()):
    """The contract's inputs: x and the MLP in `dtype`, the conv and BN in the accumulation dtype.
    ties: x takes 5 values, so maxima over HW (and, with equal channel gates, over channels) tie."""
    g = case_generator("cbam", shape, cr, str(dtype), cl, k, spool, spatial, bias, affine, ties, misalign, *key)
    n, c, h, w = shape
    acc = _acc(dtype)
    if ties:
        x = (torch.randint(-2, 3, shape, generator=g).to(torch.float64) * 0.5).to(dtype)
    else:
        x = rand(shape, dtype, "cpu", g)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    if misalign:
        x = _misaligned(x, cl)
    s = 1 if spool == "avgmax" else 2
    return dict(
        x=x.to(device),
        w1=rand((cr, c), dtype, device, g, c ** -0.5),
        b1=rand((cr,), dtype, device, g, 0.5) if bias else None,
        w2=rand((c, cr), dtype, device, g, 2 * cr ** -0.5),
        b2=rand((c,), dtype, device, g, 0.5) if bias else None,
        conv_w=rand((1, s, k, k), acc, device, g, 2 * (s * k * k) ** -0.5) if spatial else None,
        bn_w=(rand((1,), acc, device, g, 0.3) + 1.0) if affine else None,
        bn_b=rand((1,), acc, device, g, 0.5) if affine else None,
        bn_mean=rand((1,), acc, device, g, 0.5),
        bn_var=(torch.rand(1, generator=g, dtype=torch.float64) + 0.3).to(acc).to(device),
    )


def reference(inp, dtype, opts, dy=None):
    """What cbam_forward (and, dy given, cbam_backward) returns, from the eager reference with every
    input cast to `dtype` on the CPU. Absent biases / BN affine enter as zeros / ones that require
    grad: the same forward, and the gradients the kernels return for them anyway."""
    def leaf(t, fill=None, like=None):
        if t is None:
            if fill is None:
                return None
            t = torch.full(like, fill, dtype=torch.float64)
        return t.detach().cpu().to(dtype).requires_grad_()
    c, cr = inp["w1"].shape[1], inp["w1"].shape[0]
    x, w1, w2 = leaf(inp["x"]), leaf(inp["w1"]), leaf(inp["w2"])
    b1, b2 = leaf(inp["b1"], 0.0, (cr,)), leaf(inp["b2"], 0.0, (c,))
    spatial = inp["conv_w"] is not None
    conv_w = leaf(inp["conv_w"])
    bn_w, bn_b = leaf(inp["bn_w"], 1.0, (1,)), leaf(inp["bn_b"], 0.0, (1,))
    bs, eps, act, gate, pool, spool = (opts[k] for k in ("batch_stats", "eps", "act", "gate", "pool", "spool"))
    rm = None if bs else inp["bn_mean"].detach().cpu().to(dtype)
    rv = None if bs else inp["bn_var"].detach().cpu().to(dtype)
    pt = POOL_TYPES[pool]
    y = R.cbam(x, w1, b1, w2, b2, conv_w, bn_w, bn_b, rm, rv, training=bs, eps=eps, act=act, gate=gate,
               pool_types=pt, order=spool)
    out = {"y": y.detach()}
    with torch.no_grad():
        mean, mx = x.mean((2, 3)), x.amax((2, 3))
        ins = {"avg": [mean], "max": [mx], "avg+max": [mean, mx], "avgmax": [0.5 * mean + 0.5 * mx]}[pool]
        out["pools"] = torch.stack([mean, mx], 1)
        out["u"] = torch.stack([F.linear(v, w1, b1) for v in ins], 1)
        out["z"] = R.cbam_channel_logits(x, w1, b1, w2, b2, act, pt)
        if spatial:
            m = R.cbam_spatial_pool(R.cbam_channel(x, w1, b1, w2, b2, act, gate, pt), spool)
            t = F.conv2d(m, conv_w, padding=conv_w.shape[-1] // 2)[:, 0]
            mu, var = (t.mean(), t.var(unbiased=False)) if bs else (rm[0], rv[0])
            out.update(m=m, t=t, bstat=torch.stack([mu, 1 / torch.sqrt(var + eps), var]))
    if dy is not None:
        y.backward(dy.detach().cpu().to(dtype))
        for name, t in zip(BWD_NAMES, (x, w1, b1, w2, b2, conv_w, bn_w, bn_b)):
            out[name] = t.grad if t is not None else None
    return out


def run(inp, opts, dy=None):
    """The kernels' outputs (every output and workspace poisoned first): forward, and backward when
    dy is given."""
    bs = opts["batch_stats"]
    o = [opts[k] for k in ("act", "gate", "pool", "spool")]
    with poisoned():
        fwd = cuda_mod.cbam_forward(inp["x"], inp["w1"], inp["b1"], inp["w2"], inp["b2"], inp["conv_w"],
                                    inp["bn_w"], inp["bn_b"], None if bs else inp["bn_mean"],
                                    None if bs else inp["bn_var"], opts["eps"], bs, *o)
        out = dict(zip(FWD_NAMES, fwd))
        if dy is not None:
            bwd = cuda_mod.cbam_backward(dy, inp["x"], inp["w1"], inp["w2"], inp["conv_w"], inp["bn_w"], inp["bn_b"],
                                         *fwd[1:], bs, *o)
            out.update(zip(BWD_NAMES, bwd))
    return out


def options(pool="avg+max", spool="max_mean", act="relu", gate="sigmoid", batch_stats=True, eps=1e-5):
    return dict(pool=pool, spool=spool, act=act, gate=gate, batch_stats=batch_stats, eps=eps)


def make_dy(x, key=()):
    g = case_generator("cbam-dy", tuple(x.shape), str(x.dtype), *key)
    dy = rand(x.shape, x.dtype, "cpu", g)
    if not x.is_contiguous():
        dy = dy.contiguous(memory_format=torch.channels_last)
    return dy.to(x.device)


def check(inp, opts, backward=True, dy=None, factor=2.0):
    """Every output of the kernels against the reference; returns the kernels' outputs."""
    x = inp["x"]
    dtype, acc = x.dtype, _acc(x.dtype)
    spatial = inp["conv_w"] is not None
    if backward and dy is None:
        dy = make_dy(x)
    got = run(inp, opts, dy if backward else None)
    ref64 = reference(inp, torch.float64, opts, dy if backward else None)
    reflo = ref64 if dtype == torch.float64 else reference(inp, dtype, opts, dy if backward else None)
    assert got["y"].dtype == dtype and got["y"].shape == x.shape and got["y"].stride() == x.stride()
    names = FWD_NAMES + (BWD_NAMES if backward else ())
    for name in names:
        out = got[name]
        if not spatial and name in ("m", "t", "bstat", "dconv_w", "dbn_w", "dbn_b"):
            assert out.shape == (0,) and out.dtype == acc, name
            continue
        want = dtype if name in ("y", "dx", "dw1", "db1", "dw2", "db2") else acc
        assert out.dtype == want and out.device == x.device, (name, out.dtype, out.device)
        if name == "m" or name == "t":
            assert out.is_contiguous(), name
        assert_matches(out, reflo[name], ref64[name], name, factor)
    if backward:
        assert got["dx"].stride() == x.stride()
    return got


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
def test_dtypes_layouts(device, dtype, cl):
    """The official defaults (avg+max pools, [max, mean], 7x7 conv, batch statistics) on primes."""
    check(make((2, 37, 7, 9), 5, dtype, device, cl=cl), options())


# every value of every option at least once, pools and spools paired every way round the list
OPTION_CASES = [
    ("avg", "max_mean", "relu", "sigmoid", True),
    ("max", "mean_max", "silu", "hardsigmoid", False),
    ("avg+max", "avgmax", "hardswish", "sigmoid", False),
    ("avgmax", "avgmax", "gelu", "hardsigmoid", True),
    ("avg", "mean_max", "identity", "hardsigmoid", True),
    ("max", "max_mean", "gelu", "sigmoid", True),
    ("avgmax", "mean_max", "relu", "sigmoid", False),
    ("avg+max", "mean_max", "silu", "sigmoid", True),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pool,spool,act,gate,bs", OPTION_CASES, ids=lambda v: str(v))
def test_options(device, pool, spool, act, gate, bs):
    """pool / spool / act / gate and BN batch vs running statistics: fp64 (the last bits) in NCHW,
    fp32 channels_last."""
    opts = options(pool, spool, act, gate, bs)
    check(make((2, 12, 5, 6), 3, torch.float64, device, k=3, spool=spool), opts)
    check(make((3, 16, 6, 5), 4, torch.float32, device, cl=True, spool=spool), opts)


SHAPES = [  # (N, C, H, W), Cr, k, dtype, layout
    ((3, 1, 5, 5), 1, 3, torch.float32, False),      # C = 1, Cr = 1
    ((3, 1, 5, 5), 1, 7, torch.float16, True),       # C = 1 channels_last, halo > map
    ((4, 24, 1, 1), 6, 7, torch.float64, False),     # HW = 1: the conv sees only its center tap
    ((4, 24, 1, 1), 6, 3, torch.bfloat16, True),
    ((2, 13, 2, 3), 3, 7, torch.float32, True),      # a map smaller than the 7x7 conv's halo
    ((1, 11, 3, 17), 2, 9, torch.float64, False),    # N = 1 (batch statistics over one sample), k = 9
    ((2, 17, 13, 11), 5, 1, torch.float32, False),   # k = 1
    ((2, 64, 40, 40), 4, 7, torch.float16, False),   # several HW splits, conv tiles, BN blocks
    ((2, 300, 4, 5), 19, 3, torch.float32, True),    # channels_last: several channel tiles
    ((2, 40, 36, 9), 8, 7, torch.bfloat16, True),    # several pixel tiles and splits
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,cr,k,dtype,cl", SHAPES, ids=lambda v: str(v))
def test_odd_shapes(device, shape, cr, k, dtype, cl):
    spool = "mean_max" if shape[1] % 2 else "avgmax"
    check(make(shape, cr, dtype, device, cl=cl, k=k, spool=spool), options(spool=spool, act="silu"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
def test_no_spatial_gate(device, cl):
    """conv_w None (the official no_spatial): y = x * s_c, the spatial outputs and gradients empty."""
    for i, (pool, dtype) in enumerate((("avg+max", torch.float64), ("max", torch.float32), ("avgmax", torch.float16),
                                       ("avg", torch.bfloat16))):
        check(make((2, 19, 6, 7), 4, dtype, device, cl=cl, spatial=False, key=(i,)), options(pool=pool))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
def test_bias_free_and_affine_free(device, cl):
    """No MLP biases (timm) and a BN without affine parameters: the kernels take weight 1, bias 0
    and still return their gradients."""
    for bs in (True, False):
        for dtype in (torch.float64, torch.float16):
            inp = make((2, 10, 6, 6), 3, dtype, device, cl=cl, bias=False, affine=False, spool="mean_max")
            check(inp, options(spool="mean_max", batch_stats=bs))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
def test_ties(device, cl):
    """Tied maxima share the gradient evenly (torch.amax): over HW for the channel pools (x takes 5
    values), and over the channels for the spatial pool (W2 = 0 and equal b2, so every channel has
    the same gate and x1's ties are x's)."""
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        inp = make((2, 10, 6, 6), 3, dtype, device, cl=cl, ties=True)
        check(inp, options(pool="avg+max"))
        inp["w2"] = torch.zeros_like(inp["w2"])
        inp["b2"] = torch.full_like(inp["b2"], 0.25)
        xs = inp["x"].double()
        assert ((xs == xs.amax(1, keepdim=True)).sum(1) > 1).any()  # pixels whose max several channels hold
        check(inp, options(pool="avgmax", spool="max_mean", act="gelu"))


@pytest.mark.parametrize("device", DEVICES)
def test_eps_and_running_stats(device):
    """Eval mode normalizes with bn_mean / bn_var and the eps given; bstat reports them."""
    inp = make((2, 8, 5, 5), 2, torch.float64, device)
    for eps in (1e-5, 0.3):
        got = check(inp, options(batch_stats=False, eps=eps))
        want = torch.stack([inp["bn_mean"][0], 1 / torch.sqrt(inp["bn_var"][0] + eps), inp["bn_var"][0]])
        torch.testing.assert_close(got["bstat"], want, rtol=0, atol=0)


@pytest.mark.skipif("cpu" not in DEVICES, reason="needs the emulated build")
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
def test_misaligned(cl):
    """x at a storage offset of one element, and dy at another: the 16-byte paths peel a row's
    ends or take the element path (the emulator checks every vector access's alignment)."""
    for dtype in (torch.float16, torch.float32):
        inp = make((2, 16, 6, 8), 4, dtype, cl=cl, misalign=True)
        dy = make_dy(inp["x"])
        check(inp, options(), dy=dy)  # dy aligned, x not
        check(inp, options(), dy=_misaligned(dy, cl))  # both off by one element
        inp["x"] = inp["x"].clone(memory_format=torch.channels_last if cl else torch.contiguous_format)
        check(inp, options(), dy=_misaligned(dy, cl))  # x aligned, dy not


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic_and_counters_rezeroed(device):
    """The same bits call after call (no float atomics), and the arrival counters are left zeroed
    for the next call on the stream (the emulated binding checks them after every call): repeated
    calls with growing and shrinking N stay right."""
    for n in (1, 5, 2):
        inp = make((n, 12, 9, 7), 3, torch.float32, device, cl=n == 2, key=(n,))
        dy = make_dy(inp["x"])
        first = check(inp, options(), dy=dy)
        again = run(inp, options(), dy)
        for name in FWD_NAMES + BWD_NAMES:
            assert torch.equal(first[name], again[name]), name


_SCRIPT_HEAD = r"""
import sys, torch
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
import test_cbam_cuda_emu as T
"""
# Several blocks per sample / grid in every pass: HW splits, conv tiles, BN blocks, ties.
_ORDER_CASES = r"""
cases = []
for cl in (False, True):
    inp = T.make((3, 24, 20, 18), 6, torch.float32, cl=cl, ties=True)
    cases.append((inp, T.options(), T.make_dy(inp["x"])))
inp = T.make((2, 40, 12, 12), 5, torch.float16, spool="avgmax")
cases.append((inp, T.options(pool="avgmax", spool="avgmax", batch_stats=False), T.make_dy(inp["x"])))
"""


def _run_script(body, env, tmp_path=None):
    tests = os.path.dirname(os.path.abspath(__file__))
    script = _SCRIPT_HEAD.format(root=os.path.dirname(tests), tests=tests) + _ORDER_CASES + body
    r = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, **env), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]


@pytest.mark.skipif("cpu" not in DEVICES, reason="needs the emulated build")
def test_block_order_independent(tmp_path):
    """The emulator taking the blocks in a random order (CUEMU_BLOCK_ORDER=random:<seed>: another
    block arrives last at each counter) changes no bit of any output: every combine's order is
    fixed by the geometry, not by arrival."""
    out = tmp_path / "default.pt"
    _run_script(f"torch.save([T.run(*c) for c in cases], {str(out)!r})\nprint('OK')\n", {})
    for seed in (3,):
        _run_script(
            f"want = torch.load({str(out)!r})\n"
            "for (inp, opts, dy), w in zip(cases, want):\n"
            "    got = T.run(inp, opts, dy)\n"
            "    for k in w:\n"
            "        assert torch.equal(got[k], w[k]), k\n"
            "print('OK')\n", {"CUEMU_BLOCK_ORDER": f"random:{seed}"})


@pytest.mark.skipif("cpu" not in DEVICES, reason="needs the emulated build")
@pytest.mark.parametrize("seed", [7, 12345])
def test_random_schedule(seed):
    """A seeded random order of the threads between sync points (races and missing barriers show
    up), strict barriers, poisoned static shared memory: still right."""
    _run_script("for c in cases:\n    T.check(c[0], c[1], dy=c[2])\nprint('OK')\n",
                {"CUEMU_SCHEDULE": f"random:{seed}", "CUEMU_STRICT": "1", "CUEMU_POISON_SHARED": "1"})


def test_input_checks():
    """The raw binding refuses what it cannot run, naming the op and the argument."""
    dev = DEVICES[0]
    inp = make((2, 8, 5, 5), 2, torch.float32, dev)
    ext = cuda_mod.ext_for(inp["x"])
    args = [inp[k] for k in ("x", "w1", "b1", "w2", "b2", "conv_w", "bn_w", "bn_b")] + [None, None, 1e-5, True,
                                                                                        0, 0, 2, 0]

    def fwd(**change):
        a = list(args)
        names = ("x", "w1", "b1", "w2", "b2", "conv_w", "bn_w", "bn_b", "bn_mean", "bn_var", "eps", "batch_stats",
                 "act", "gate", "pool", "spool")
        for k, v in change.items():
            a[names.index(k)] = v
        return ext.cbam_forward(*a)

    y, pools, u, z, m, t, bstat = fwd()
    bad = [
        (dict(x=inp["x"][:, :, ::2]), "x must be contiguous"),
        (dict(x=inp["x"][:0]), "x is empty"),
        (dict(w1=inp["w1"].double()), "w1 has dtype"),
        (dict(w1=inp["w1"][:, :4].contiguous()), "weight shapes"),
        (dict(b2=inp["b2"][:3].contiguous()), "b2 must have 8"),
        (dict(conv_w=inp["conv_w"].half()), "conv_w has dtype"),
        (dict(conv_w=torch.zeros(1, 2, 4, 4, device=dev)), "k odd"),
        (dict(conv_w=torch.zeros(1, 1, 3, 3, device=dev)), r"conv_w must be \(1, 2"),
        (dict(bn_w=torch.ones(2, device=dev)), "bn_w must have 1"),
        (dict(batch_stats=False), "bn_mean and bn_var"),
        (dict(eps=float("nan")), "eps"),
        (dict(act=9), "act code"),
        (dict(pool=4), "pool code"),
        (dict(spool=-1), "spool code"),
    ]
    for change, msg in bad:
        with pytest.raises(RuntimeError, match=msg):
            fwd(**change)
    dy = make_dy(inp["x"])
    bargs = [dy, inp["x"], inp["w1"], inp["w2"], inp["conv_w"], inp["bn_w"], inp["bn_b"], pools, u, z, m, t, bstat,
             True, 0, 0, 2, 0]
    for i, v, msg in ((0, dy.contiguous(memory_format=torch.channels_last), "dy must have the memory format"),
                      (7, pools[:, :1].contiguous(), "pools must be"), (8, u[:, :1].contiguous(), "u must be"),
                      (10, m.double(), "m has dtype"), (12, bstat[:2].contiguous(), "bstat must be"),
                      (16, 1, r"u must be \[2, 1, 2\]")):
        a = list(bargs)
        a[i] = v
        with pytest.raises(RuntimeError, match=msg):
            ext.cbam_backward(*a)
    with pytest.raises(ValueError, match="unknown pool 'lse'"):
        cuda_mod.cbam_forward(*args[:12], "relu", "sigmoid", "lse", "max_mean")


def test_shared_memory_limit_names_the_sizes():
    """C past what one block's shared memory holds (the channel MLP's vectors, about 29K channels in
    fp32 on an H100's 227 KB): an error naming C and Cr and the backend without the limit, before
    any launch."""
    dev = DEVICES[0]
    C = 30000
    x = torch.ones(1, C, 1, 1, device=dev)
    w1, w2 = torch.ones(2, C, device=dev), torch.ones(C, 2, device=dev)
    with pytest.raises(RuntimeError, match=r"cbam \(cuda\): C=30000, Cr=2, .*shared memory.*triton"):
        cuda_mod.cbam_forward(x, w1, None, w2, None, None, None, None, None, None, 1e-5, True, "relu", "sigmoid",
                              "avg+max", "max_mean")

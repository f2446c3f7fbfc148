"""Backend-level tests of attnkernels.cuda's SCA (csrc/sca/): the contract functions sca_forward /
sca_backward (attnkernels/triton/sca.py's docstring) called directly, against
attnkernels.reference.sca in float64 (autograd for the gradients) with utils.assert_matches' error
bar, on CPU tensors through the emulated build (backend cuda-emu) and, when a GPU and the nvcc
build are present, on CUDA tensors too. Every output and workspace is poisoned with NaN first
(ATTNKERNELS_CUDA_POISON=1), so an element a kernel forgets to write fails the comparison.
fp16 / bf16 run the products on the (emulated) tensor cores, fp32 / fp64 on the FMA path
(tests/test_cuda_build.py checks which instructions each build has)."""
from __future__ import annotations

import pytest
import torch

from attnkernels.reference.sca import sca as ref_sca
from utils import assert_matches, case_generator, cuda_devices, rand

cuda_mod = pytest.importorskip("attnkernels.cuda")
sca_mod = pytest.importorskip("attnkernels.cuda.sca")

DEVICES = cuda_devices()

PARAMS = ("w_c", "b_c", "W_hc", "u_c", "c_c", "W_s", "b_s", "W_hs", "u_s", "c_s")
GRADS = ("dV", "dh", "dw_c", "db_c", "dW_hc", "du_c", "dc_c", "dW_s", "db_s", "dW_hs", "du_s", "dc_s")


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setenv("ATTNKERNELS_CUDA_POISON", "1")


class Case:
    """Fresh random inputs of one case (V, h, every parameter of both branches, dX and the
    gradients reaching the returned maps) and what the reference makes of them."""

    def __init__(self, order, dtype, shape=(2, 5, 3, 4), d=6, kc=7, ks=9, nhwc=False, scale=False, device="cpu",
                 vscale=1.0, ext=False):
        N, C, H, W = shape
        self.order, self.dtype, self.scale, self.device = order, dtype, scale, device
        g = case_generator("sca_cuda", order, str(dtype), shape, d, kc, ks, nhwc, scale, vscale, ext)
        mf = torch.channels_last if nhwc else torch.contiguous_format
        self.V = rand(shape, dtype, device, g, vscale).contiguous(memory_format=mf)
        self.h = rand((N, d), dtype, device, g)
        shapes = dict(w_c=(kc,), b_c=(kc,), W_hc=(kc, d), u_c=(kc,), c_c=(1,), W_s=(ks, C), b_s=(ks,), W_hs=(ks, d),
                      u_s=(ks,), c_s=(1,))
        self.p = {k: rand(s, dtype, device, g, 0.5) for k, s in shapes.items()}
        self.dX = rand(shape, dtype, device, g).contiguous(memory_format=mf)
        self.dbeta = rand((N, C), torch.float64, device, g).to(_acc(dtype)) if ext and "c" in order else None
        self.dalpha = rand((N, H * W), torch.float64, device, g).to(_acc(dtype)) if ext and "s" in order else None

    def has(self, k):
        return ("c" in self.order) if k.endswith("_c") or k == "W_hc" else ("s" in self.order)

    def arg(self, k):
        return self.p[k] if self.has(k) else None

    def forward(self):
        return sca_mod.sca_forward(self.V, self.h, *(self.arg(k) for k in ("w_c", "b_c", "W_hc", "u_c", "W_s", "b_s",
                                                                         "W_hs", "u_s")),
                                   self.order, self.scale, False)

    def backward(self, fwd):
        X, hc, hs, v, beta, alpha = fwd
        return sca_mod.sca_backward(self.dX, self.V, self.h, *(self.arg(k) for k in ("w_c", "W_hc", "u_c", "W_s",
                                                                                    "W_hs", "u_s")),
                                    hc, hs, v, beta, alpha, self.dbeta, self.dalpha, self.order, self.scale, False)

    def reference(self, dtype):
        """(X, beta, alpha, the 12 gradients) of the reference run in dtype on the CPU (the
        gradients of a parameter the order lacks: None)."""
        V = self.V.detach().cpu().to(dtype).requires_grad_()
        h = self.h.detach().cpu().to(dtype).requires_grad_()
        ps = {k: self.p[k].detach().cpu().to(dtype).requires_grad_() for k in PARAMS}
        X, beta, alpha = ref_sca(V, h, *(ps[k] for k in PARAMS), order=self.order, scale=self.scale,
                                 return_attention=True)
        loss = (X * self.dX.cpu().to(dtype)).sum()
        if self.dbeta is not None:
            loss = loss + (beta * self.dbeta.cpu().to(dtype)).sum()
        if self.dalpha is not None:
            loss = loss + (alpha * self.dalpha.cpu().to(dtype)).sum()
        ins = [V, h] + [ps[k] for k in PARAMS]
        grads = torch.autograd.grad(loss, ins, allow_unused=True)
        grads = [gr if gr is not None and (i < 2 or self.has(PARAMS[i - 2])) else None for i, gr in enumerate(grads)]
        return X, beta, alpha, grads


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def check(case, backward=True):
    """The forward's X and saved tensors, and the backward's gradients, against the reference."""
    dt, acc = case.dtype, _acc(case.dtype)
    fwd = case.forward()
    X, hc, hs, v, beta, alpha = fwd
    X64, b64, a64, g64 = case.reference(torch.float64)
    Xl, bl, al, gl = case.reference(dt) if dt != torch.float64 else (X64, b64, a64, g64)
    assert X.dtype == dt and X.shape == case.V.shape and X.stride() == case.V.stride()
    assert_matches(X, Xl, X64, "X")
    N, C = case.V.shape[:2]
    V64, h64 = case.V.cpu().double(), case.h.cpu().double()
    has_c, has_s = "c" in case.order, "s" in case.order
    for name, t, ok in (("hc", hc, has_c), ("v", v, has_c), ("beta", beta, has_c), ("hs", hs, has_s),
                        ("alpha", alpha, has_s)):
        assert t.dtype == acc and (ok or t.shape == (0,)), name
    if has_c:
        p = {k: case.p[k].cpu().double() for k in PARAMS}
        hc64 = h64 @ p["W_hc"].T + p["b_c"]
        # the channel branch's input: V, or ("sc") V * ss * alpha
        U = V64 * (a64.reshape(N, 1, *V64.shape[2:]) * (V64[0, 0].numel() if case.scale else 1.0)) \
            if case.order == "sc" else V64
        for name, got, ref in (("hc", hc, hc64), ("v", v, U.mean((2, 3))), ("beta", beta, b64)):
            assert_matches(got.to(dt), (ref.to(dt)), ref, name)
    if has_s:
        p = {k: case.p[k].cpu().double() for k in PARAMS}
        assert_matches(hs.to(dt), (h64 @ p["W_hs"].T + p["b_s"]).to(dt), h64 @ p["W_hs"].T + p["b_s"], "hs")
        assert_matches(alpha.to(dt), al, a64, "alpha")
    if not backward:
        return fwd, None
    grads = case.backward(fwd)
    assert len(grads) == 12
    for name, got, ref, refl in zip(GRADS, grads, g64, gl):
        assert got.device == case.V.device, name
        if ref is None:
            assert got.shape == (0,), name
            continue
        assert got.dtype == (case.h.dtype if name == "dh" else dt), name
        if name == "dV":
            assert got.stride() == case.V.stride()
        if name in ("dc_c", "dc_s"):  # exactly 0 (the contract): the softmax is shift invariant
            assert got.shape == (1,) and got.item() == 0.0, (name, got)
            continue
        assert_matches(got.reshape(ref.shape), refl, ref, name)
    return fwd, grads


# order, dtype, channels_last, scale: every order on the FMA path (fp32) and on the tensor cores
# (fp16, bf16), both layouts and scale spread over them, fp64 (the gradcheck dtype) twice.
CASES = [
    ("cs", torch.float32, False, False), ("sc", torch.float32, True, False), ("c", torch.float32, False, True),
    ("s", torch.float32, True, True),
    ("cs", torch.float16, False, True), ("sc", torch.float16, True, False), ("s", torch.float16, False, False),
    ("cs", torch.bfloat16, True, False), ("sc", torch.bfloat16, False, True), ("c", torch.bfloat16, True, False),
    ("cs", torch.float64, True, True), ("sc", torch.float64, False, False),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("order,dtype,nhwc,scale", CASES)
def test_forward_backward(device, order, dtype, nhwc, scale):
    check(Case(order, dtype, nhwc=nhwc, scale=scale, device=device))


# Several tiles of every product: 2 location blocks (HW > 64; fp64's tiles are 32), 2 unit blocks
# (k_s > 64), C over two staging steps, a channel pooling over two channel blocks.
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("order,dtype,nhwc", [("cs", torch.float16, False), ("sc", torch.bfloat16, True),
                                              ("cs", torch.float32, True), ("s", torch.float64, False)])
def test_several_tiles(device, order, dtype, nhwc):
    check(Case(order, dtype, shape=(2, 40, 9, 8), d=5, kc=20, ks=70, nhwc=nhwc, device=device))


# C = 1, HW = 1, N = 1, d = 0 (no hidden state), k of 1 and not a multiple of 16, primes.
ODD = [((1, 1, 3, 5), 4, 1, 17), ((3, 7, 1, 1), 3, 17, 1), ((2, 3, 5, 7), 0, 5, 3), ((1, 13, 1, 11), 2, 16, 33)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,d,kc,ks", ODD)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_odd_shapes(device, shape, d, kc, ks, dtype):
    for order in ("cs", "sc"):
        check(Case(order, dtype, shape=shape, d=d, kc=kc, ks=ks, nhwc=order == "sc", device=device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("order", ["cs", "sc", "c", "s"])
def test_gradients_of_the_returned_maps(device, order):
    """dbeta / dalpha (the gradients reaching the returned attention maps) join the softmaxes'
    backward."""
    check(Case(order, torch.float64, ext=True, device=device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("order", ["cs", "sc", "s"])
def test_chunks_and_splits(device, order, monkeypatch):
    """A dP scratch of one sample (the backward in N chunks: dW_s accumulated across launches, "cs"
    recomputing dP for dV) gives the same bits as one chunk, since every sum runs in the same
    order; a channel pooling split over the locations (split partials combined by the last split
    to arrive) matches the reference."""
    case = Case(order, torch.float32, shape=(3, 6, 5, 7), d=4, kc=5, ks=6, nhwc=order == "sc", device=device)
    fwd, grads = check(case)
    monkeypatch.setattr(sca_mod, "DP_BUDGET", 35 * 6)  # one sample's (HW, k_s)
    chunked = case.backward(fwd)
    for name, a, b in zip(GRADS, grads, chunked):
        assert torch.equal(a, b), name
    monkeypatch.setattr(sca_mod, "SPLIT_HINT", 3)
    check(case, backward=False)


@pytest.mark.parametrize("order", ["cs", "sc"])
def test_block_order_and_schedule_change_no_bit(order, monkeypatch):
    """Deterministic: the emulator taking the blocks in another order (CUEMU_BLOCK_ORDER: which
    split / block arrives last changes) and running the threads in a random order between sync
    points (CUEMU_SCHEDULE) gives the same bits."""
    if "cpu" not in DEVICES:
        pytest.skip("cuda-emu not built")
    monkeypatch.setattr(sca_mod, "SPLIT_HINT", 2)
    case = Case(order, torch.float16, shape=(2, 9, 10, 7), d=3, kc=6, ks=18, nhwc=order == "sc")
    base = case.forward()
    gbase = case.backward(base)
    for env in ({"CUEMU_BLOCK_ORDER": "reverse"}, {"CUEMU_BLOCK_ORDER": "random:5", "CUEMU_SCHEDULE": "random:7"}):
        with monkeypatch.context() as m:
            for k, val in env.items():
                m.setenv(k, val)
            fwd = case.forward()
            grads = case.backward(fwd)
        for name, a, b in zip(("X", "hc", "hs", "v", "beta", "alpha") + GRADS, base + gbase, fwd + grads):
            assert torch.equal(a, b), (env, name)


@pytest.mark.parametrize("device", DEVICES)
def test_large_logits(device):
    """Logits in the hundreds: the max-subtracted softmaxes stay finite."""
    case = Case("cs", torch.float32, vscale=300.0, device=device)
    case.p["u_c"].mul_(100)
    case.p["u_s"].mul_(100)
    fwd, grads = check(case)
    assert all(torch.isfinite(t).all() for t in fwd + grads)


@pytest.mark.parametrize("device", DEVICES)
def test_non_finite_gradient_reaches_dc(device):
    """dc_c and dc_s are 0 * sum dz: NaN when a gradient is not finite, as eager's sum is."""
    case = Case("cs", torch.float32, device=device)
    fwd = case.forward()
    case.dX[0, 0, 0, 0] = float("nan")
    grads = dict(zip(GRADS, case.backward(fwd)))
    assert grads["dc_c"].isnan().all() and grads["dc_s"].isnan().all()


@pytest.mark.parametrize("device", DEVICES)
def test_bad_input_raises(device):
    """The binding refuses what the kernels cannot run (the front end names the argument first)."""
    case = Case("cs", torch.float32, device=device)
    case.p["W_s"] = case.p["W_s"][:, :-1].contiguous()  # (k_s, C - 1)
    with pytest.raises(RuntimeError, match="W_s must be"):
        case.forward()
    case = Case("s", torch.float32, device=device)
    case.h = case.h[:1]
    with pytest.raises(RuntimeError, match="h must be"):
        case.forward()

"""attnkernels.reference.sca against a loop-level transcription of the SCA-CNN equations
(modules.md, SCA): python loops over n, c, l, k with math.tanh / math.exp and a hand softmax,
all four orders, with and without the Theano rescaling, fp64."""
import importlib
import math

import pytest
import torch

from utils import case_generator

ref = importlib.import_module("attnkernels.reference.sca")

DT = torch.float64
TOL = dict(rtol=1e-10, atol=1e-12)


def make_params(C, d, k, g):
    r = lambda *s: torch.randn(*s, generator=g, dtype=DT)  # noqa: E731
    return dict(w_c=r(k), b_c=r(k), W_hc=r(k, d) * 0.5, u_c=r(k), c_c=r(()),
                W_s=r(k, C) * 0.5, b_s=r(k), W_hs=r(k, d) * 0.5, u_s=r(k), c_s=r(()))


# --------------------------------------------------------------------------------------------
# loop-level transcription
# --------------------------------------------------------------------------------------------
def softmax_list(z):
    m = max(z)
    e = [math.exp(v - m) for v in z]
    s = sum(e)
    return [v / s for v in e]


def loop_channel(U, h, P):
    """U: [C][L] features of one sample; returns beta [C]."""
    C, L = len(U), len(U[0])
    k, d = len(P["w_c"]), len(h)
    logits = []
    for c in range(C):
        v = sum(U[c][l] for l in range(L)) / L
        z = P["c_c"]
        for j in range(k):
            pre = v * P["w_c"][j] + P["b_c"][j] + sum(P["W_hc"][j][i] * h[i] for i in range(d))
            z += math.tanh(pre) * P["u_c"][j]
        logits.append(z)
    return softmax_list(logits)


def loop_spatial(U, h, P):
    """U: [C][L]; returns alpha [L]."""
    C, L = len(U), len(U[0])
    k, d = len(P["u_s"]), len(h)
    logits = []
    for l in range(L):
        z = P["c_s"]
        for j in range(k):
            pre = sum(P["W_s"][j][c] * U[c][l] for c in range(C)) + P["b_s"][j] \
                + sum(P["W_hs"][j][i] * h[i] for i in range(d))
            z += math.tanh(pre) * P["u_s"][j]
        logits.append(z)
    return softmax_list(logits)


def loop_sca(V, h, P, order, scale):
    """Returns X (N, C, H, W), beta (N, C) or None, alpha (N, HW) or None."""
    N, C, H, W = V.shape
    L = H * W
    P = {key: val.tolist() for key, val in P.items()}
    Vl, hl = V.reshape(N, C, L).tolist(), h.tolist()
    X, betas, alphas = [], [], []
    for n in range(N):
        U = [row[:] for row in Vl[n]]
        beta = alpha = None
        for branch in order:
            if branch == "c":
                beta = loop_channel(U, hl[n], P)
                f = C if scale else 1
                U = [[U[c][l] * beta[c] * f for l in range(L)] for c in range(C)]
            else:
                alpha = loop_spatial(U, hl[n], P)
                f = L if scale else 1
                U = [[U[c][l] * alpha[l] * f for l in range(L)] for c in range(C)]
        X.append(U)
        betas.append(beta)
        alphas.append(alpha)
    X = torch.tensor(X, dtype=DT).reshape(N, C, H, W)
    beta = torch.tensor(betas, dtype=DT) if "c" in order else None
    alpha = torch.tensor(alphas, dtype=DT) if "s" in order else None
    return X, beta, alpha


SHAPES = [  # (N, C, H, W, d, k)
    (2, 5, 3, 4, 4, 3),
    (3, 1, 2, 3, 2, 2),
    (2, 6, 1, 1, 3, 4),
    (1, 7, 5, 2, 5, 1),
]


@pytest.mark.parametrize("scale", [False, True])
@pytest.mark.parametrize("order", ["cs", "sc", "c", "s"])
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_functional_vs_loops(shape, order, scale):
    N, C, H, W, d, k = shape
    g = case_generator(shape, order, scale)
    P = make_params(C, d, k, g)
    V = torch.randn(N, C, H, W, generator=g, dtype=DT) * 1.5
    h = torch.randn(N, d, generator=g, dtype=DT)
    X, beta, alpha = ref.sca(V, h, **P, order=order, scale=scale, return_attention=True)
    Xe, beta_e, alpha_e = loop_sca(V, h, P, order, scale)
    torch.testing.assert_close(X, Xe, **TOL)
    if "c" in order:
        torch.testing.assert_close(beta, beta_e, **TOL)
        torch.testing.assert_close(beta.sum(1), torch.ones(N, dtype=DT), **TOL)
    else:
        assert beta is None
    if "s" in order:
        torch.testing.assert_close(alpha, alpha_e, **TOL)
    else:
        assert alpha is None
    torch.testing.assert_close(ref.sca(V, h, **P, order=order, scale=scale), X, **TOL)


def _load_module(m, P):
    with torch.no_grad():
        if "c" in m.order:
            m.channel_in.weight.copy_(P["w_c"][:, None])
            m.channel_in.bias.copy_(P["b_c"])
            m.channel_hidden.weight.copy_(P["W_hc"])
            m.channel_score.weight.copy_(P["u_c"][None])
            m.channel_score.bias.copy_(P["c_c"].reshape(1))
        if "s" in m.order:
            m.spatial_in.weight.copy_(P["W_s"])
            m.spatial_in.bias.copy_(P["b_s"])
            m.spatial_hidden.weight.copy_(P["W_hs"])
            m.spatial_score.weight.copy_(P["u_s"][None])
            m.spatial_score.bias.copy_(P["c_s"].reshape(1))


@pytest.mark.parametrize("scale", [False, True])
@pytest.mark.parametrize("order", ["cs", "sc", "c", "s"])
def test_module_vs_loops(order, scale):
    N, C, H, W, d, k = 2, 6, 3, 5, 4, 3
    g = case_generator("module", order, scale)
    P = make_params(C, d, k, g)
    m = ref.SCA(C, d, k, order=order, scale=scale).to(DT)
    _load_module(m, P)
    V = torch.randn(N, C, H, W, generator=g, dtype=DT)
    h = torch.randn(N, d, generator=g, dtype=DT)
    X, beta, alpha = m(V, h, return_attention=True)
    Xe, beta_e, alpha_e = loop_sca(V, h, P, order, scale)
    torch.testing.assert_close(X, Xe, **TOL)
    torch.testing.assert_close(m(V, h), Xe, **TOL)
    # strict round trip into a fresh module
    m2 = ref.SCA(C, d, k, order=order, scale=scale).to(DT)
    m2.load_state_dict(m.state_dict(), strict=True)
    torch.testing.assert_close(m2(V, h), Xe, **TOL)


def test_module_keys():
    m = ref.SCA(512, 1000, 512)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        "channel_in.weight": (512, 1), "channel_in.bias": (512,),
        "channel_hidden.weight": (512, 1000),
        "channel_score.weight": (1, 512), "channel_score.bias": (1,),
        "spatial_in.weight": (512, 512), "spatial_in.bias": (512,),
        "spatial_hidden.weight": (512, 1000),
        "spatial_score.weight": (1, 512), "spatial_score.bias": (1,),
    }
    assert not any(k.startswith("spatial") for k in ref.SCA(8, 4, 3, order="c").state_dict())
    assert not any(k.startswith("channel") for k in ref.SCA(8, 4, 3, order="s").state_dict())
    with pytest.raises(ValueError):
        ref.SCA(8, 4, 3, order="cc")


@pytest.mark.parametrize("order", ["cs", "sc", "c", "s"])
def test_uniform_attention_with_scale_is_identity(order):
    """u = 0 makes every softmax uniform: with scale=True the block is the identity, without it
    X = V / C^[c in order] / HW^[s in order]."""
    N, C, H, W, d, k = 2, 4, 3, 5, 3, 2
    g = case_generator("uniform", order)
    P = make_params(C, d, k, g)
    P["u_c"].zero_()
    P["u_s"].zero_()
    V = torch.randn(N, C, H, W, generator=g, dtype=DT)
    h = torch.randn(N, d, generator=g, dtype=DT)
    torch.testing.assert_close(ref.sca(V, h, **P, order=order, scale=True), V, **TOL)
    div = (C if "c" in order else 1) * (H * W if "s" in order else 1)
    torch.testing.assert_close(ref.sca(V, h, **P, order=order, scale=False), V / div, **TOL)


def test_score_bias_is_softmax_invariant_but_hidden_state_matters():
    N, C, H, W, d, k = 2, 5, 4, 3, 3, 4
    g = case_generator("invariance")
    P = make_params(C, d, k, g)
    V = torch.randn(N, C, H, W, generator=g, dtype=DT)
    h = torch.randn(N, d, generator=g, dtype=DT)
    X = ref.sca(V, h, **P)
    P2 = dict(P, c_c=P["c_c"] + 3.0, c_s=P["c_s"] - 2.0)
    torch.testing.assert_close(ref.sca(V, h, **P2), X, **TOL)
    assert not torch.allclose(ref.sca(V, h + 1.0, **P), X)
    # softmax runs over channels / locations of each sample, not over the batch
    X0 = ref.sca(V[:1], h[:1], **P)
    torch.testing.assert_close(X0, X[:1], **TOL)

"""attnkernels.reference.cbam against timm's real CBAM classes and an independent transcription of
the official CBAM (Jongchan/attention-module MODELS/cbam.py): numerics (fp64, train and eval BN),
running-statistics updates, and strict state_dict loading both ways."""

import importlib

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils import assert_same_state, case_generator, randomize_

# the submodule (attnkernels.reference.cbam is also the name of the exported function)
ref = importlib.import_module("attnkernels.reference.cbam")

timm_cbam = pytest.importorskip("timm.layers.cbam")

DT = torch.float64
TOL = dict(rtol=1e-11, atol=1e-12)


def run_parity(mine, theirs, x, train):
    mine.train(train)
    theirs.train(train)
    y_theirs = theirs(x.clone())
    y_mine = mine(x.clone())
    torch.testing.assert_close(y_mine, y_theirs, **TOL)
    assert_same_state(mine, theirs)  # running stats updated identically in train mode
    # and a second step (running stats already moved)
    x2 = x.flip(0) * 1.3 + 0.1
    torch.testing.assert_close(mine(x2.clone()), theirs(x2.clone()), **TOL)
    assert_same_state(mine, theirs)


# --------------------------------------------------------------------------------------------
# independent transcription of the official code (Jongchan/attention-module MODELS/cbam.py)
# --------------------------------------------------------------------------------------------
class OBasicConv(nn.Module):
    def __init__(self, in_planes, out_planes, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, relu=True, bn=True, bias=False):
        super().__init__()
        self.out_channels = out_planes
        self.conv = nn.Conv2d(in_planes, out_planes, kernel_size=kernel_size, stride=stride,
                              padding=padding, dilation=dilation, groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(out_planes, eps=1e-5, momentum=0.01, affine=True) if bn else None
        self.relu = nn.ReLU() if relu else None

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.relu is not None:
            x = self.relu(x)
        return x


class OFlatten(nn.Module):
    def forward(self, x):
        return x.view(x.size(0), -1)


def o_logsumexp_2d(tensor):
    tensor_flatten = tensor.view(tensor.size(0), tensor.size(1), -1)
    s, _ = torch.max(tensor_flatten, dim=2, keepdim=True)
    return s + (tensor_flatten - s).exp().sum(dim=2, keepdim=True).log()


class OChannelGate(nn.Module):
    def __init__(self, gate_channels, reduction_ratio=16, pool_types=["avg", "max"]):
        super().__init__()
        self.gate_channels = gate_channels
        self.mlp = nn.Sequential(
            OFlatten(),
            nn.Linear(gate_channels, gate_channels // reduction_ratio),
            nn.ReLU(),
            nn.Linear(gate_channels // reduction_ratio, gate_channels),
        )
        self.pool_types = pool_types

    def forward(self, x):
        channel_att_sum = None
        for pool_type in self.pool_types:
            if pool_type == "avg":
                avg_pool = F.avg_pool2d(x, (x.size(2), x.size(3)), stride=(x.size(2), x.size(3)))
                channel_att_raw = self.mlp(avg_pool)
            elif pool_type == "max":
                max_pool = F.max_pool2d(x, (x.size(2), x.size(3)), stride=(x.size(2), x.size(3)))
                channel_att_raw = self.mlp(max_pool)
            elif pool_type == "lp":
                lp_pool = F.lp_pool2d(x, 2, (x.size(2), x.size(3)), stride=(x.size(2), x.size(3)))
                channel_att_raw = self.mlp(lp_pool)
            elif pool_type == "lse":
                lse_pool = o_logsumexp_2d(x)
                channel_att_raw = self.mlp(lse_pool)
            if channel_att_sum is None:
                channel_att_sum = channel_att_raw
            else:
                channel_att_sum = channel_att_sum + channel_att_raw
        scale = torch.sigmoid(channel_att_sum).unsqueeze(2).unsqueeze(3).expand_as(x)
        return x * scale


class OChannelPool(nn.Module):
    def forward(self, x):
        return torch.cat((torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)), dim=1)


class OSpatialGate(nn.Module):
    def __init__(self):
        super().__init__()
        kernel_size = 7
        self.compress = OChannelPool()
        self.spatial = OBasicConv(2, 1, kernel_size, stride=1, padding=(kernel_size - 1) // 2,
                                  relu=False)

    def forward(self, x):
        x_compress = self.compress(x)
        x_out = self.spatial(x_compress)
        scale = torch.sigmoid(x_out)
        return x * scale


class OCBAM(nn.Module):
    def __init__(self, gate_channels, reduction_ratio=16, pool_types=["avg", "max"],
                 no_spatial=False):
        super().__init__()
        self.ChannelGate = OChannelGate(gate_channels, reduction_ratio, pool_types)
        self.no_spatial = no_spatial
        if not no_spatial:
            self.SpatialGate = OSpatialGate()

    def forward(self, x):
        x_out = self.ChannelGate(x)
        if not self.no_spatial:
            x_out = self.SpatialGate(x_out)
        return x_out


# (shape, reduction_ratio): C=1, HW=1, prime and non-square sizes
OFFICIAL_CASES = [
    ((2, 32, 7, 7), 16),
    ((3, 1, 5, 4), 1),
    ((2, 48, 1, 1), 16),
    ((2, 13, 11, 5), 4),
    ((1, 64, 6, 9), 16),
    ((5, 3, 2, 17), 2),
]


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("shape,r", OFFICIAL_CASES, ids=[str(c) for c in OFFICIAL_CASES])
def test_official_parity(shape, r, train):
    g = case_generator((shape, r, train))
    off = randomize_(OCBAM(shape[1], r).to(DT), g)
    mine = ref.CBAM(shape[1], r).to(DT)
    mine.load_state_dict(off.state_dict(), strict=True)
    x = torch.randn(shape, generator=g, dtype=DT)
    run_parity(mine, off, x, train)


@pytest.mark.parametrize("pool_types", [["avg"], ["max"], ["avg", "max", "lp", "lse"]])
@pytest.mark.parametrize("no_spatial", [False, True])
def test_official_options(pool_types, no_spatial):
    g = case_generator(7 + len(pool_types) + 10 * no_spatial)
    mine = randomize_(ref.CBAM(24, 8, pool_types, no_spatial=no_spatial).to(DT), g)
    off = OCBAM(24, 8, pool_types, no_spatial=no_spatial).to(DT)
    off.load_state_dict(mine.state_dict(), strict=True)  # mine -> official
    x = torch.randn(3, 24, 6, 5, generator=g, dtype=DT)
    run_parity(mine, off, x, train=True)
    run_parity(mine, off, x, train=False)


def test_official_keys_and_defaults():
    m = ref.CBAM(64)
    sd = m.state_dict()
    assert list(sd) == list(OCBAM(64).state_dict())
    assert sd["ChannelGate.mlp.1.weight"].shape == (4, 64)
    assert sd["ChannelGate.mlp.3.weight"].shape == (64, 4)
    assert sd["SpatialGate.spatial.conv.weight"].shape == (1, 2, 7, 7)
    bn = m.SpatialGate.spatial.bn
    assert (bn.eps, bn.momentum) == (1e-5, 0.01)
    assert "SpatialGate.spatial.conv.bias" not in sd
    assert not any(k.startswith("SpatialGate") for k in ref.CBAM(64, no_spatial=True).state_dict())


def test_official_b2_counts_twice():
    """With fc1 = 0 the channel logit is 2*b2 (the MLP output is summed over two pools)."""
    m = ref.CBAM(16, 4, no_spatial=True).to(DT)
    with torch.no_grad():
        m.ChannelGate.mlp[1].weight.zero_()
        m.ChannelGate.mlp[1].bias.zero_()
        m.ChannelGate.mlp[3].bias.copy_(torch.linspace(-1, 1, 16, dtype=DT))
    x = torch.randn(2, 16, 3, 3, generator=case_generator(3), dtype=DT)
    expect = x * torch.sigmoid(2 * torch.linspace(-1, 1, 16, dtype=DT))[None, :, None, None]
    torch.testing.assert_close(m(x), expect, **TOL)


# --------------------------------------------------------------------------------------------
# timm
# --------------------------------------------------------------------------------------------
TIMM_SHAPES = [(2, 1, 5, 5), (3, 64, 7, 7), (2, 17, 1, 1), (2, 13, 11, 5), (1, 32, 3, 8),
               (4, 7, 13, 2)]
TIMM_KW = [
    {},
    {"mlp_bias": True},
    {"rd_ratio": 0.25, "spatial_kernel_size": 3},
    {"rd_channels": 5, "spatial_kernel_size": 5, "act_layer": nn.SiLU},
    {"rd_divisor": 8, "gate_layer": "hard_sigmoid"},
]


@pytest.mark.parametrize("cls", ["CbamModule", "LightCbamModule"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("shape", TIMM_SHAPES, ids=[str(s) for s in TIMM_SHAPES])
def test_timm_parity_shapes(cls, shape, train):
    g = case_generator((cls, shape, train))
    theirs = randomize_(getattr(timm_cbam, cls)(shape[1]).to(DT), g)
    mine = getattr(ref, cls)(shape[1]).to(DT)
    mine.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(shape, generator=g, dtype=DT)
    run_parity(mine, theirs, x, train)


@pytest.mark.parametrize("cls", ["CbamModule", "LightCbamModule"])
@pytest.mark.parametrize("kw", TIMM_KW, ids=[str(sorted(k)) for k in TIMM_KW])
def test_timm_parity_options(cls, kw):
    g = case_generator((cls, str(kw)))
    mine = randomize_(getattr(ref, cls)(40, **kw).to(DT), g)
    theirs = getattr(timm_cbam, cls)(40, **kw).to(DT)
    theirs.load_state_dict(mine.state_dict(), strict=True)  # mine -> timm
    assert {k: v.shape for k, v in mine.state_dict().items()} == \
           {k: v.shape for k, v in theirs.state_dict().items()}
    x = torch.randn(3, 40, 9, 6, generator=g, dtype=DT)
    run_parity(mine, theirs, x, train=False)
    run_parity(mine, theirs, x, train=True)


@pytest.mark.parametrize("C", [1, 3, 16, 24, 64, 100, 2048])
def test_timm_rd_channels(C):
    for cls in ("CbamModule", "LightCbamModule"):
        a, b = getattr(ref, cls)(C), getattr(timm_cbam, cls)(C)
        assert a.channel.fc1.weight.shape == b.channel.fc1.weight.shape
        assert a.spatial.conv.bn.momentum == b.spatial.conv.bn.momentum == 0.1


def test_timm_fp32():
    g = case_generator(11)
    theirs = randomize_(timm_cbam.CbamModule(48), g)
    mine = ref.CbamModule(48)
    mine.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 48, 14, 14, generator=g)
    for train in (False, True):
        mine.train(train)
        theirs.train(train)
        torch.testing.assert_close(mine(x), theirs(x), rtol=1e-5, atol=1e-6)


def test_official_and_timm_state_dicts_differ():
    with pytest.raises(RuntimeError):
        ref.CBAM(32).load_state_dict(timm_cbam.CbamModule(32).state_dict(), strict=True)
    with pytest.raises(RuntimeError):
        ref.CbamModule(32).load_state_dict(OCBAM(32).state_dict(), strict=True)


# --------------------------------------------------------------------------------------------
# functional forms == modules (what the fused kernels are tested against)
# --------------------------------------------------------------------------------------------
def _bn_args(bn):
    return (bn.weight, bn.bias, bn.running_mean, bn.running_var)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_functional_official(train):
    g = case_generator(21 + train)
    m = randomize_(OCBAM(32, 8).to(DT), g).train(train)
    x = torch.randn(3, 32, 9, 7, generator=g, dtype=DT)
    rm = m.SpatialGate.spatial.bn.running_mean.clone()
    rv = m.SpatialGate.spatial.bn.running_var.clone()
    fc1, fc2, sp = m.ChannelGate.mlp[1], m.ChannelGate.mlp[3], m.SpatialGate.spatial
    y = ref.cbam(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias, sp.conv.weight,
                 sp.bn.weight, sp.bn.bias, rm, rv, training=train)
    torch.testing.assert_close(y, m(x), **TOL)
    torch.testing.assert_close(rm, sp.bn.running_mean, **TOL)
    torch.testing.assert_close(rv, sp.bn.running_var, **TOL)


@pytest.mark.parametrize("light", [False, True])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_functional_timm(light, train):
    g = case_generator(31 + 2 * light + train)
    cls = timm_cbam.LightCbamModule if light else timm_cbam.CbamModule
    m = randomize_(cls(32, mlp_bias=True).to(DT), g).train(train)
    x = torch.randn(3, 32, 5, 11, generator=g, dtype=DT)
    bn = m.spatial.conv.bn
    rm, rv = bn.running_mean.clone(), bn.running_var.clone()
    kw = dict(pool_types=("avgmax",), order="avgmax") if light else dict(order="mean_max")
    y = ref.cbam(x, m.channel.fc1.weight, m.channel.fc1.bias, m.channel.fc2.weight,
                 m.channel.fc2.bias, m.spatial.conv.conv.weight, bn.weight, bn.bias, rm, rv,
                 training=train, momentum=0.1, **kw)
    torch.testing.assert_close(y, m(x), **TOL)
    torch.testing.assert_close(rm, bn.running_mean, **TOL)
    torch.testing.assert_close(rv, bn.running_var, **TOL)


def test_functional_no_spatial_and_eval_bn_fold():
    g = case_generator(41)
    w1, b1 = torch.randn(4, 16, generator=g, dtype=DT), torch.randn(4, generator=g, dtype=DT)
    w2, b2 = torch.randn(16, 4, generator=g, dtype=DT), torch.randn(16, generator=g, dtype=DT)
    x = torch.randn(2, 16, 6, 6, generator=g, dtype=DT)
    x1 = ref.cbam(x, w1, b1, w2, b2, None)
    manual = x * torch.sigmoid(
        F.relu(x.mean((2, 3)) @ w1.T + b1) @ w2.T + b2
        + F.relu(x.amax((2, 3)) @ w1.T + b1) @ w2.T + b2)[:, :, None, None]
    torch.testing.assert_close(x1, manual, **TOL)
    # eval BN == conv with folded scale/shift
    cw = torch.randn(1, 2, 7, 7, generator=g, dtype=DT)
    gamma, beta = torch.tensor([1.7], dtype=DT), torch.tensor([-0.3], dtype=DT)
    rm, rv = torch.tensor([0.2], dtype=DT), torch.tensor([0.8], dtype=DT)
    y = ref.cbam(x, w1, b1, w2, b2, cw, gamma, beta, rm, rv)
    s = gamma / torch.sqrt(rv + 1e-5)
    m = torch.cat([x1.amax(1, keepdim=True), x1.mean(1, keepdim=True)], 1)
    z = F.conv2d(m, cw * s.reshape(1, 1, 1, 1), beta - rm * s, padding=3)
    torch.testing.assert_close(y, x1 * torch.sigmoid(z), **TOL)


@pytest.mark.parametrize("cls", ["CbamModule", "LightCbamModule"])
def test_timm_backward(cls):
    """Gradients w.r.t. input and every parameter match timm's (train mode, fp64)."""
    g = case_generator("backward", cls)
    theirs = randomize_(getattr(timm_cbam, cls)(24, mlp_bias=True).to(DT), g).train()
    mine = getattr(ref, cls)(24, mlp_bias=True).to(DT).train()
    mine.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(3, 24, 5, 7, generator=g, dtype=DT)
    dy = torch.randn(3, 24, 5, 7, generator=g, dtype=DT)
    grads = []
    for m in (mine, theirs):
        xi = x.clone().requires_grad_()
        m.zero_grad()
        (m(xi) * dy).sum().backward()
        grads.append([xi.grad] + [p.grad for p in m.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, **TOL)

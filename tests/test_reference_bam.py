"""attnkernels.reference.bam against an independent transcription of the official BAM
(Jongchan/attention-module MODELS/bam.py) with its two defects fixed (the undefined
gate_activation -> ReLU as intended, the H x H pooling window -> true global mean): numerics in
fp64, train and eval BN, prod and sum, running statistics, strict state_dict loading both ways."""
import importlib

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils import assert_same_state, case_generator, randomize_

ref = importlib.import_module("attnkernels.reference.bam")

DT = torch.float64
TOL = dict(rtol=1e-11, atol=1e-12)


# --------------------------------------------------------------------------------------------
# transcription of the official code (fixed as described above; combine added for the paper form)
# --------------------------------------------------------------------------------------------
class OFlatten(nn.Module):
    def forward(self, x):
        return x.view(x.size(0), -1)


class OChannelGate(nn.Module):
    def __init__(self, gate_channel, reduction_ratio=16, num_layers=1):
        super().__init__()
        self.gate_activation = nn.ReLU  # fixed: undefined name in the official code
        self.gate_c = nn.Sequential()
        self.gate_c.add_module("flatten", OFlatten())
        gate_channels = [gate_channel]
        gate_channels += [gate_channel // reduction_ratio] * num_layers
        gate_channels += [gate_channel]
        for i in range(len(gate_channels) - 2):
            self.gate_c.add_module("gate_c_fc_%d" % i, nn.Linear(gate_channels[i], gate_channels[i + 1]))
            self.gate_c.add_module("gate_c_bn_%d" % (i + 1), nn.BatchNorm1d(gate_channels[i + 1]))
            self.gate_c.add_module("gate_c_relu_%d" % (i + 1), nn.ReLU())
        self.gate_c.add_module("gate_c_fc_final", nn.Linear(gate_channels[-2], gate_channels[-1]))

    def forward(self, in_tensor):
        # fixed: true global mean (the official window is in_tensor.size(2) x in_tensor.size(2))
        avg_pool = F.avg_pool2d(in_tensor, (in_tensor.size(2), in_tensor.size(3)),
                                stride=(in_tensor.size(2), in_tensor.size(3)))
        return self.gate_c(avg_pool).unsqueeze(2).unsqueeze(3).expand_as(in_tensor)


class OSpatialGate(nn.Module):
    def __init__(self, gate_channel, reduction_ratio=16, dilation_conv_num=2, dilation_val=4):
        super().__init__()
        self.gate_s = nn.Sequential()
        self.gate_s.add_module("gate_s_conv_reduce0",
                               nn.Conv2d(gate_channel, gate_channel // reduction_ratio, kernel_size=1))
        self.gate_s.add_module("gate_s_bn_reduce0", nn.BatchNorm2d(gate_channel // reduction_ratio))
        self.gate_s.add_module("gate_s_relu_reduce0", nn.ReLU())
        for i in range(dilation_conv_num):
            self.gate_s.add_module("gate_s_conv_di_%d" % i,
                                   nn.Conv2d(gate_channel // reduction_ratio,
                                             gate_channel // reduction_ratio, kernel_size=3,
                                             padding=dilation_val, dilation=dilation_val))
            self.gate_s.add_module("gate_s_bn_di_%d" % i, nn.BatchNorm2d(gate_channel // reduction_ratio))
            self.gate_s.add_module("gate_s_relu_di_%d" % i, nn.ReLU())
        self.gate_s.add_module("gate_s_conv_final",
                               nn.Conv2d(gate_channel // reduction_ratio, 1, kernel_size=1))

    def forward(self, in_tensor):
        return self.gate_s(in_tensor).expand_as(in_tensor)


class OBAM(nn.Module):
    def __init__(self, gate_channel, reduction_ratio=16, combine="prod", num_layers=1,
                 dilation_conv_num=2, dilation_val=4):
        super().__init__()
        self.combine = combine
        self.channel_att = OChannelGate(gate_channel, reduction_ratio, num_layers)
        self.spatial_att = OSpatialGate(gate_channel, reduction_ratio, dilation_conv_num, dilation_val)

    def forward(self, in_tensor):
        if self.combine == "prod":
            att = 1 + torch.sigmoid(self.channel_att(in_tensor) * self.spatial_att(in_tensor))
        else:
            att = 1 + torch.sigmoid(self.channel_att(in_tensor) + self.spatial_att(in_tensor))
        return att * in_tensor


# (shape, r): Cr = 1, HW = 1, prime and non-square sizes
CASES = [
    ((2, 32, 7, 7), 16),
    ((3, 16, 5, 9), 16),
    ((2, 24, 1, 1), 8),
    ((2, 13, 11, 5), 4),
    ((4, 64, 3, 3), 16),
    ((2, 5, 17, 2), 1),
]


@pytest.mark.parametrize("combine", ["prod", "sum"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("shape,r", CASES, ids=[str(c) for c in CASES])
def test_official_parity(shape, r, train, combine):
    g = case_generator(shape, r, train, combine)
    off = randomize_(OBAM(shape[1], r, combine).to(DT), g)
    mine = ref.BAM(shape[1], r, combine=combine).to(DT)
    mine.load_state_dict(off.state_dict(), strict=True)
    off.train(train)
    mine.train(train)
    for step in range(2):  # second step sees the updated running statistics
        x = torch.randn(shape, generator=g, dtype=DT) * 2 + 0.3
        torch.testing.assert_close(mine(x), off(x), **TOL)
        assert_same_state(mine, off)


@pytest.mark.parametrize("kw", [dict(num_layers=2), dict(dilation_val=2),
                                dict(dilation_conv_num=1), dict(dilation_conv_num=3)])
def test_official_parity_options(kw):
    g = case_generator(sorted(kw.items()))
    mine = randomize_(ref.BAM(32, 8, **kw).to(DT), g)
    off = OBAM(32, 8, **kw).to(DT)
    off.load_state_dict(mine.state_dict(), strict=True)  # mine -> official
    for train in (True, False):
        mine.train(train)
        off.train(train)
        x = torch.randn(3, 32, 10, 7, generator=g, dtype=DT)
        torch.testing.assert_close(mine(x), off(x), **TOL)
        assert_same_state(mine, off)


def test_keys_and_shapes():
    sd = ref.BAM(64).state_dict()
    expect = OBAM(64).state_dict()
    assert list(sd) == list(expect)
    assert {k: v.shape for k, v in sd.items()} == {k: v.shape for k, v in expect.items()}
    assert sd["channel_att.gate_c.gate_c_fc_0.weight"].shape == (4, 64)
    assert sd["channel_att.gate_c.gate_c_fc_final.weight"].shape == (64, 4)
    assert sd["spatial_att.gate_s.gate_s_conv_di_0.weight"].shape == (4, 4, 3, 3)
    assert sd["spatial_att.gate_s.gate_s_conv_final.weight"].shape == (1, 4, 1, 1)
    for name in ("gate_s_conv_reduce0", "gate_s_conv_di_0", "gate_s_conv_di_1", "gate_s_conv_final"):
        assert f"spatial_att.gate_s.{name}.bias" in sd
    assert ref.BAM(64).combine == "prod"
    with pytest.raises(ValueError):
        ref.BAM(64, combine="max")


def test_prod_and_sum_differ():
    g = case_generator("differ")
    m = randomize_(ref.BAM(32, 8).to(DT), g).eval()
    x = torch.randn(2, 32, 6, 6, generator=g, dtype=DT)
    y_prod = m(x)
    m.combine = "sum"
    assert not torch.allclose(y_prod, m(x))


def test_non_square_uses_true_global_mean():
    """Mc uses the true global mean on non-square maps (not the official H x H window)."""
    g = case_generator("mean")
    m = randomize_(ref.BAM(16, 4).to(DT), g).eval()
    x = torch.randn(2, 16, 4, 9, generator=g, dtype=DT)
    mc = m.channel_att(x)
    torch.testing.assert_close(mc, m.channel_att.gate_c(x.mean((2, 3))), **TOL)
    # the official H x H window pools (N, C, 1, 2) here, which its Flatten+Linear cannot take
    assert F.avg_pool2d(x, 4, stride=4).shape == (2, 16, 1, 2)
    with pytest.raises(RuntimeError):
        m.channel_att.gate_c(F.avg_pool2d(x, 4, stride=4))


# --------------------------------------------------------------------------------------------
# functional pieces == module
# --------------------------------------------------------------------------------------------
def _bn(bn, clone=False):
    rm, rv = bn.running_mean, bn.running_var
    if clone:
        rm, rv = rm.clone(), rv.clone()
    return (bn.weight, bn.bias, rm, rv)


@pytest.mark.parametrize("combine", ["prod", "sum"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_functional(train, combine):
    g = case_generator("functional", train, combine)
    m = randomize_(OBAM(48, 8, combine).to(DT), g).train(train)
    x = torch.randn(3, 48, 7, 10, generator=g, dtype=DT)
    gc, gs = m.channel_att.gate_c, m.spatial_att.gate_s
    bn_c = _bn(gc.gate_c_bn_1, clone=True)
    bns = [_bn(getattr(gs, n), clone=True) for n in ("gate_s_bn_reduce0", "gate_s_bn_di_0", "gate_s_bn_di_1")]
    mc = ref.bam_channel(x, gc.gate_c_fc_0.weight, gc.gate_c_fc_0.bias, bn_c,
                         gc.gate_c_fc_final.weight, gc.gate_c_fc_final.bias, training=train)
    ms = ref.bam_spatial(
        x, (gs.gate_s_conv_reduce0.weight, gs.gate_s_conv_reduce0.bias), bns[0],
        [(gs.gate_s_conv_di_0.weight, gs.gate_s_conv_di_0.bias, bns[1]),
         (gs.gate_s_conv_di_1.weight, gs.gate_s_conv_di_1.bias, bns[2])],
        (gs.gate_s_conv_final.weight, gs.gate_s_conv_final.bias), dilation=4, training=train)
    assert mc.shape == (3, 48) and ms.shape == (3, 1, 7, 10)
    y = ref.bam_gate(x, mc, ms, combine)
    torch.testing.assert_close(y, m(x), **TOL)
    torch.testing.assert_close(ref.bam_gate(x, mc, ms[:, 0], combine), y, **TOL)
    # running statistics updated like the modules'
    torch.testing.assert_close(bn_c[2], gc.gate_c_bn_1.running_mean, **TOL)
    torch.testing.assert_close(bns[2][3], gs.gate_s_bn_di_1.running_var, **TOL)


def test_bam_gate_formula():
    g = case_generator("gate")
    x = torch.randn(2, 5, 3, 4, generator=g, dtype=DT)
    mc = torch.randn(2, 5, generator=g, dtype=DT)
    ms = torch.randn(2, 1, 3, 4, generator=g, dtype=DT)
    for combine, op in (("prod", torch.mul), ("sum", torch.add)):
        expect = torch.empty_like(x)
        for n in range(2):
            for c in range(5):
                expect[n, c] = x[n, c] * (1 + torch.sigmoid(op(mc[n, c], ms[n, 0])))
        torch.testing.assert_close(ref.bam_gate(x, mc, ms, combine), expect, **TOL)
    with pytest.raises(ValueError):
        ref.bam_gate(x, mc, ms, "max")

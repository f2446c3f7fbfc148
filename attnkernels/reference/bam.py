"""BAM (Park et al., BMVC 2018), eager PyTorch: the spec the fused BAM kernels are tested against.

(modules.md, BAM)

    Mc = fc_final(ReLU(BN1d(fc_0(p_avg(x)))))                          (N, C)
    Ms = conv_final(R(R(R(x, reduce0), di_0), di_1))                   (N, 1, H, W)
         R(t, k) = ReLU(BN2d(conv_k(t))); reduce0 1x1 C->C/r; di_i 3x3 C/r->C/r, dilation 4,
         padding 4; conv_final 1x1 C/r->1; every conv/Linear has a bias
    y  = x * (1 + sigmoid(Mc * Ms))     combine="prod" (official code, released weights)
    y  = x * (1 + sigmoid(Mc + Ms))     combine="sum"  (paper)

Deliberate departures from the official code (Jongchan/attention-module MODELS/bam.py):
* its ChannelGate stores an undefined ``gate_activation`` (does not run as committed): the
  activation is the ReLU the Sequential already contains, and nothing else;
* its channel pooling window is H x H (wrong for non-square maps): we use the true global mean;
* it expands Mc and Ms to (N, C, H, W) before combining: we only broadcast.
The module names, Sequential layout and state_dict keys are the official ones:
channel_att.gate_c.{gate_c_fc_0, gate_c_bn_1, gate_c_fc_final}.*,
spatial_att.gate_s.{gate_s_conv_reduce0, gate_s_bn_reduce0, gate_s_conv_di_0, gate_s_bn_di_0,
gate_s_conv_di_1, gate_s_bn_di_1, gate_s_conv_final}.*
All BatchNorms are PyTorch defaults (eps 1e-5, momentum 0.1) and work in train and eval mode.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# (weight, bias, running_mean, running_var) of a BatchNorm; any may be None as in F.batch_norm.
BNParams = Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor], Optional[Tensor]]

COMBINES = ("prod", "sum")


# ----------------------------------------------------------------------------------------------
# Functional forms
# ----------------------------------------------------------------------------------------------
def _bn(t: Tensor, p: BNParams, training: bool, momentum: float, eps: float) -> Tensor:
    w, b, rm, rv = p
    return F.batch_norm(t, rm, rv, w, b, training, momentum, eps)


def bam_channel(x: Tensor, w0: Tensor, b0: Optional[Tensor], bn: BNParams, w_final: Tensor,
                b_final: Optional[Tensor], training: bool = False, momentum: float = 0.1,
                eps: float = 1e-5) -> Tensor:
    """Channel branch Mc = fc_final(ReLU(BN1d(fc_0(mean_hw(x))))) -> (N, C).

    w0: (C/r, C), w_final: (C, C/r). training=True uses batch statistics over N (BatchNorm1d)
    and updates the running statistics in place.
    """
    u = F.linear(x.mean((2, 3)), w0, b0)
    return F.linear(F.relu(_bn(u, bn, training, momentum, eps)), w_final, b_final)


def bam_spatial(x: Tensor, reduce: Tuple[Tensor, Optional[Tensor]], bn_reduce: BNParams,
                dilated: Sequence[Tuple[Tensor, Optional[Tensor], BNParams]],
                final: Tuple[Tensor, Optional[Tensor]], dilation: int = 4,
                training: bool = False, momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Spatial branch Ms -> (N, 1, H, W).

    reduce = (w [C/r, C, 1, 1], b); dilated = [(w [C/r, C/r, 3, 3], b, bn), ...];
    final = (w [1, C/r, 1, 1], b). The 3x3 convs use dilation=padding=``dilation``.
    """
    t = F.relu(_bn(F.conv2d(x, *reduce), bn_reduce, training, momentum, eps))
    for w, b, bn in dilated:
        t = F.conv2d(t, w, b, padding=dilation, dilation=dilation)
        t = F.relu(_bn(t, bn, training, momentum, eps))
    return F.conv2d(t, *final)


def bam_attention(mc: Tensor, ms: Tensor, combine: str = "prod") -> Tensor:
    """The pre-sigmoid attention Mc (op) Ms, broadcast to (N, C, H, W)."""
    if ms.dim() == 3:
        ms = ms[:, None]
    mc = mc[:, :, None, None]
    if combine == "prod":
        return mc * ms
    if combine == "sum":
        return mc + ms
    # (no !r conversion: TorchScript compiles this for BAM's scripted forward, and has none)
    raise ValueError(f"combine must be one of ('prod', 'sum'), got '{combine}'")


def bam_gate(x: Tensor, mc: Tensor, ms: Tensor, combine: str = "prod") -> Tensor:
    """The fusable tail: y = x * (1 + sigmoid(mc[:, :, None, None] (op) ms)).

    mc: (N, C); ms: (N, 1, H, W) or (N, H, W); op is * ("prod") or + ("sum").
    """
    return x * (1 + torch.sigmoid(bam_attention(mc, ms, combine)))


# ----------------------------------------------------------------------------------------------
# Modules (official layout and keys)
# ----------------------------------------------------------------------------------------------
class Flatten(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.size(0), -1)


class BamChannelGate(nn.Module):
    """Official BAM ChannelGate (Sequential gate_c), on the true global mean; returns Mc (N, C)."""

    def __init__(self, gate_channel: int, reduction_ratio: int = 16, num_layers: int = 1):
        super().__init__()
        self.gate_c = nn.Sequential()
        self.gate_c.add_module("flatten", Flatten())
        gate_channels = [gate_channel] + [gate_channel // reduction_ratio] * num_layers
        gate_channels += [gate_channel]
        for i in range(len(gate_channels) - 2):
            self.gate_c.add_module(f"gate_c_fc_{i}", nn.Linear(gate_channels[i], gate_channels[i + 1]))
            self.gate_c.add_module(f"gate_c_bn_{i + 1}", nn.BatchNorm1d(gate_channels[i + 1]))
            self.gate_c.add_module(f"gate_c_relu_{i + 1}", nn.ReLU())
        self.gate_c.add_module("gate_c_fc_final", nn.Linear(gate_channels[-2], gate_channels[-1]))

    def forward(self, x: Tensor) -> Tensor:
        return self.gate_c(x.mean((2, 3)))


class BamSpatialGate(nn.Module):
    """Official BAM SpatialGate (Sequential gate_s); returns Ms (N, 1, H, W), not expanded."""

    def __init__(self, gate_channel: int, reduction_ratio: int = 16, dilation_conv_num: int = 2,
                 dilation_val: int = 4):
        super().__init__()
        cr = gate_channel // reduction_ratio
        self.gate_s = nn.Sequential()
        self.gate_s.add_module("gate_s_conv_reduce0", nn.Conv2d(gate_channel, cr, kernel_size=1))
        self.gate_s.add_module("gate_s_bn_reduce0", nn.BatchNorm2d(cr))
        self.gate_s.add_module("gate_s_relu_reduce0", nn.ReLU())
        for i in range(dilation_conv_num):
            self.gate_s.add_module(f"gate_s_conv_di_{i}",
                                   nn.Conv2d(cr, cr, kernel_size=3, padding=dilation_val,
                                             dilation=dilation_val))
            self.gate_s.add_module(f"gate_s_bn_di_{i}", nn.BatchNorm2d(cr))
            self.gate_s.add_module(f"gate_s_relu_di_{i}", nn.ReLU())
        self.gate_s.add_module("gate_s_conv_final", nn.Conv2d(cr, 1, kernel_size=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.gate_s(x)


class BAM(nn.Module):
    """BAM(gate_channel, reduction_ratio=16, ..., combine="prod").

    combine="prod" is the official code (checkpoint parity with the released ResNet+BAM
    weights), combine="sum" the paper. Returns x * (1 + sigmoid(Mc (op) Ms)).
    """

    def __init__(self, gate_channel: int, reduction_ratio: int = 16, num_layers: int = 1,
                 dilation_conv_num: int = 2, dilation_val: int = 4, combine: str = "prod"):
        super().__init__()
        if combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
        self.combine = combine
        self.channel_att = BamChannelGate(gate_channel, reduction_ratio, num_layers)
        self.spatial_att = BamSpatialGate(gate_channel, reduction_ratio, dilation_conv_num,
                                          dilation_val)

    def forward(self, x: Tensor) -> Tensor:
        return self._eager_forward(x)

    def _eager_forward(self, x: Tensor) -> Tensor:
        """(The fused drop-in, attnkernels.BAM, falls back to this.)"""
        return bam_gate(x, self.channel_att(x), self.spatial_att(x), self.combine)

    def extra_repr(self) -> str:
        return f"combine={self.combine!r}"

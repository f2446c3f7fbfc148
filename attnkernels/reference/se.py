"""Squeeze-and-Excitation, eager PyTorch: the spec the fused SE kernels are tested against.

y = x * g(fc2(a(fc1(pool(x)) + b1)) + b2), the gate broadcast over H and W (modules.md, SE).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ._common import ACTIVATIONS, GATES, make_divisible, make_layer


def se_pool(x: Tensor, pool: str = "avg") -> Tensor:
    """Global pooling (N, C, H, W) -> (N, C): mean, or timm's add_maxpool 0.5*mean + 0.5*amax."""
    p = x.mean((2, 3))
    if pool == "avgmax":
        p = 0.5 * p + 0.5 * x.amax((2, 3))
    return p


def se_scale(x, w1, b1, w2, b2, act="relu", gate="sigmoid", pool="avg") -> Tensor:
    """The SE gate s (N, C) in x's dtype. Weights as Linear (Cr, C) or 1x1 conv (Cr, C, 1, 1).
    w1 None (and b1 None): the single-layer form, z = w2 @ act(pool(x)) + b2, w2 (C, C): timm's
    EffectiveSEModule with act "identity". gate: a name of GATES, or a function of z."""
    p = se_pool(x, pool)
    u = p if w1 is None else torch.nn.functional.linear(p, w1.flatten(1), b1)
    z = torch.nn.functional.linear(ACTIVATIONS[act](u), w2.flatten(1), b2)
    return (GATES[gate] if isinstance(gate, str) else gate)(z)


def se(x, w1, b1, w2, b2, act="relu", gate="sigmoid", pool="avg") -> Tensor:
    """Reference SE forward: y = x * gate(MLP(pool(x)))."""
    return x * se_scale(x, w1, b1, w2, b2, act, gate, pool)[:, :, None, None]


class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation: same constructor, submodules, `_scale` and state_dict."""

    def __init__(self, input_channels: int, squeeze_channels: int,
                 activation: Callable[..., nn.Module] = nn.ReLU,
                 scale_activation: Callable[..., nn.Module] = nn.Sigmoid) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def _scale(self, input: Tensor) -> Tensor:
        scale = self.avgpool(input)
        scale = self.fc1(scale)
        scale = self.activation(scale)
        scale = self.fc2(scale)
        return self.scale_activation(scale)

    def forward(self, input: Tensor) -> Tensor:
        return self._eager_forward(input)

    # the forward's body, which the fused drop-ins fall back to (and TorchScript compiles there)
    def _eager_forward(self, input: Tensor) -> Tensor:
        return self._scale(input) * input


class SEModule(nn.Module):
    """timm.layers.SEModule: same constructor (rd_ratio/rd_channels/rd_divisor rounding with
    round_limit=0, add_maxpool, bias, act/norm/gate layers) and state_dict."""

    def __init__(self, channels: int, rd_ratio: float = 1.0 / 16, rd_channels: Optional[int] = None,
                 rd_divisor: int = 8, add_maxpool: bool = False, bias: bool = True,
                 act_layer=nn.ReLU, norm_layer=None, gate_layer="sigmoid", device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.add_maxpool = add_maxpool
        if not rd_channels:
            rd_channels = make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.0)
        self.fc1 = nn.Conv2d(channels, rd_channels, kernel_size=1, bias=bias, **dd)
        self.bn = norm_layer(rd_channels, **dd) if norm_layer else nn.Identity()
        self.act = make_layer(act_layer, inplace=True)
        self.fc2 = nn.Conv2d(rd_channels, channels, kernel_size=1, bias=bias, **dd)
        self.gate = make_layer(gate_layer)

    def forward(self, x: Tensor) -> Tensor:
        return self._eager_forward(x)

    def _eager_forward(self, x: Tensor) -> Tensor:
        x_se = x.mean((2, 3), keepdim=True)
        if self.add_maxpool:
            x_se = 0.5 * x_se + 0.5 * x.amax((2, 3), keepdim=True)
        x_se = self.fc2(self.act(self.bn(self.fc1(x_se))))
        return x * self.gate(x_se)


class EffectiveSEModule(nn.Module):
    """timm.layers.EffectiveSEModule (ESE, VoVNet): one 1x1 conv C->C, hard-sigmoid gate."""

    def __init__(self, channels: int, add_maxpool: bool = False, gate_layer="hard_sigmoid",
                 device=None, dtype=None, **_):
        super().__init__()
        self.add_maxpool = add_maxpool
        self.fc = nn.Conv2d(channels, channels, kernel_size=1, padding=0, device=device, dtype=dtype)
        self.gate = make_layer(gate_layer)

    def forward(self, x: Tensor) -> Tensor:
        return self._eager_forward(x)

    def _eager_forward(self, x: Tensor) -> Tensor:
        x_se = x.mean((2, 3), keepdim=True)
        if self.add_maxpool:
            x_se = 0.5 * x_se + 0.5 * x.amax((2, 3), keepdim=True)
        return x * self.gate(self.fc(x_se))


class SqueezeExcite(nn.Module):
    """timm.models._efficientnet_blocks.SqueezeExcite: conv_reduce / act1 / conv_expand / gate."""

    def __init__(self, in_chs: int, rd_ratio: float = 0.25, rd_channels: Optional[int] = None,
                 act_layer=nn.ReLU, gate_layer=nn.Sigmoid, force_act_layer=None, rd_round_fn=None,
                 device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if rd_channels is None:
            rd_channels = (rd_round_fn or round)(in_chs * rd_ratio)
        act_layer = force_act_layer or act_layer
        self.conv_reduce = nn.Conv2d(in_chs, rd_channels, 1, bias=True, **dd)
        self.act1 = make_layer(act_layer, inplace=True)
        self.conv_expand = nn.Conv2d(rd_channels, in_chs, 1, bias=True, **dd)
        self.gate = make_layer(gate_layer)

    def forward(self, x: Tensor) -> Tensor:
        return self._eager_forward(x)

    def _eager_forward(self, x: Tensor) -> Tensor:
        x_se = self.conv_expand(self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * self.gate(x_se)


class SENetSEModule(nn.Module):
    """timm.models.senet.SEModule, the block of timm's legacy SENets (legacy_seresnet*,
    legacy_seresnext*, legacy_senet154: ports of the original SENet models): fc1 / relu / fc2 /
    sigmoid, 1x1 convs with bias, Cr = channels // reduction."""

    def __init__(self, channels: int, reduction: int, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, **dd)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, **dd)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        return self._eager_forward(x)

    def _eager_forward(self, x: Tensor) -> Tensor:
        x_se = self.fc2(self.relu(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * self.sigmoid(x_se)

"""CBAM (Woo et al., ECCV 2018), eager PyTorch: the spec the fused CBAM kernels are tested against.

Channel gate then spatial gate (modules.md, CBAM):

    x1 = x * gate(sum_p MLP(pool_p(x)))            pools: avg and max, the SAME MLP on each
    m  = cat(pool_c(x1))                           (N, 2, H, W) channel-wise max/mean of x1
    y  = x1 * gate(BN(conv_kxk(m)))                conv 2->1, padding (k-1)//2, no bias

Two parameterizations are mirrored, module by module, with their exact state_dict keys:

* official (Jongchan/attention-module MODELS/cbam.py): :class:`CBAM`. MLP = Flatten, Linear(C, C//r),
  ReLU, Linear(C//r, C), both Linear with bias (so b2 enters the sum once per pool type, i.e.
  twice); m = [max, mean]; BasicConv(2, 1, 7, padding=3, relu=False) with
  BatchNorm2d(1, eps=1e-5, momentum=0.01). Keys ``ChannelGate.mlp.1.*``, ``ChannelGate.mlp.3.*``,
  ``SpatialGate.spatial.conv.weight``, ``SpatialGate.spatial.bn.*``.
* timm (timm/layers/cbam.py): :class:`CbamModule` and :class:`LightCbamModule`. MLP = 1x1 convs
  fc1/fc2, no bias by default, Cr = make_divisible(C * rd_ratio, rd_divisor=1, round_limit=0);
  m = [mean, max]; ConvNormAct(2, 1, k, apply_act=False): conv without bias + BatchNorm2d
  (eps 1e-5, momentum 0.1). Keys ``channel.fc1.weight``, ``channel.fc2.weight``,
  ``spatial.conv.conv.weight``, ``spatial.conv.bn.*``. The Light variant pools
  0.5*mean + 0.5*max once in each branch (channel MLP applied once; spatial conv 1->1) and, as
  in timm, always uses a sigmoid in both of its gates whatever ``gate_layer`` says.

BatchNorm works in both modes: eval uses the running statistics (and folds into the conv),
train uses the batch statistics of the (N, 1, H, W) conv output and updates the running ones.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import ACTIVATIONS, GATES, make_divisible, make_layer

FnOrName = Union[str, Callable[[Tensor], Tensor]]


def _fn(f: FnOrName, table) -> Callable[[Tensor], Tensor]:
    return table[f] if isinstance(f, str) else f


# ----------------------------------------------------------------------------------------------
# Functional forms (plain tensors in, tensor out)
# ----------------------------------------------------------------------------------------------
def cbam_pool(x: Tensor, pool_type: str) -> Tensor:
    """Global pooling over H, W: (N, C, H, W) -> (N, C).

    'avg' mean, 'max' amax, 'avgmax' 0.5*mean + 0.5*amax (timm Light), and the official repo's
    extra 'lp' (L2 norm) and 'lse' (log-sum-exp) pools.
    """
    if pool_type == "avg":
        return x.mean((2, 3))
    if pool_type == "max":
        return x.amax((2, 3))
    if pool_type == "avgmax":
        return 0.5 * x.mean((2, 3)) + 0.5 * x.amax((2, 3))
    if pool_type == "lp":
        return x.pow(2).sum((2, 3)).sqrt()
    if pool_type == "lse":
        return torch.logsumexp(x.flatten(2), dim=2)
    raise ValueError(f"unknown pool type '{pool_type}'")  # (TorchScript has no !r)


def cbam_channel_logits(x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor,
                        b2: Optional[Tensor], act: FnOrName = "relu",
                        pool_types: Sequence[str] = ("avg", "max")) -> Tensor:
    """sum over pool types p of fc2(act(fc1(pool_p(x)) + b1)) + b2 -> (N, C) (pre-gate).

    Weights as Linear (Cr, C)/(C, Cr) or 1x1 conv (Cr, C, 1, 1)/(C, Cr, 1, 1) views; biases may be
    None (timm default). b2 is added once per pool type, as the official code does.
    """
    act_fn = _fn(act, ACTIVATIONS)
    w1 = w1.reshape(w1.shape[0], -1)
    w2 = w2.reshape(w2.shape[0], -1)
    z = None
    for p in pool_types:
        zp = F.linear(act_fn(F.linear(cbam_pool(x, p), w1, b1)), w2, b2)
        z = zp if z is None else z + zp
    return z


def cbam_channel(x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor],
                 act: FnOrName = "relu", gate: FnOrName = "sigmoid",
                 pool_types: Sequence[str] = ("avg", "max")) -> Tensor:
    """Channel gate: x * gate(channel logits)[:, :, None, None]."""
    s = _fn(gate, GATES)(cbam_channel_logits(x, w1, b1, w2, b2, act, pool_types))
    return x * s[:, :, None, None]


def cbam_spatial_pool(x: Tensor, order: str = "max_mean") -> Tensor:
    """Channel-wise pooling of x (N, C, H, W) for the spatial gate.

    'max_mean' -> (N, 2, H, W) [max, mean] (official); 'mean_max' -> [mean, max] (timm);
    'avgmax' -> (N, 1, H, W) 0.5*mean + 0.5*max (timm Light).
    """
    mean = x.mean(dim=1, keepdim=True)
    mx = x.amax(dim=1, keepdim=True)
    if order == "max_mean":
        return torch.cat([mx, mean], dim=1)
    if order == "mean_max":
        return torch.cat([mean, mx], dim=1)
    if order == "avgmax":
        return 0.5 * mean + 0.5 * mx
    raise ValueError(f"unknown spatial pool order '{order}'")


def cbam_spatial_logits(m: Tensor, conv_w: Tensor, bn_weight: Optional[Tensor],
                        bn_bias: Optional[Tensor], running_mean: Optional[Tensor],
                        running_var: Optional[Tensor], training: bool = False,
                        momentum: float = 0.1, eps: float = 1e-5,
                        conv_b: Optional[Tensor] = None) -> Tensor:
    """BN(conv(m)) -> (N, 1, H, W): 'same' conv (padding (k-1)//2, stride 1) then BatchNorm2d.

    training=True normalizes with the batch statistics (biased variance) and updates
    running_mean / running_var in place (unbiased variance, ``momentum``), like nn.BatchNorm2d.
    """
    kh, kw = conv_w.shape[-2:]
    t = F.conv2d(m, conv_w, conv_b, padding=((kh - 1) // 2, (kw - 1) // 2))
    return F.batch_norm(t, running_mean, running_var, bn_weight, bn_bias, training, momentum, eps)


def cbam_spatial(x1: Tensor, conv_w: Tensor, bn_weight, bn_bias, running_mean, running_var,
                 training: bool = False, momentum: float = 0.1, eps: float = 1e-5,
                 order: str = "max_mean", gate: FnOrName = "sigmoid") -> Tensor:
    """Spatial gate: x1 * gate(BN(conv(pool_c(x1))))."""
    z = cbam_spatial_logits(cbam_spatial_pool(x1, order), conv_w, bn_weight, bn_bias,
                            running_mean, running_var, training, momentum, eps)
    return x1 * _fn(gate, GATES)(z)


def cbam(x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor],
         conv_w: Optional[Tensor], bn_weight: Optional[Tensor] = None,
         bn_bias: Optional[Tensor] = None, running_mean: Optional[Tensor] = None,
         running_var: Optional[Tensor] = None, *, training: bool = False, momentum: float = 0.01,
         eps: float = 1e-5, act: FnOrName = "relu", gate: FnOrName = "sigmoid",
         pool_types: Sequence[str] = ("avg", "max"), order: str = "max_mean") -> Tensor:
    """Reference CBAM forward (channel gate then spatial gate).

    Defaults are the official parameterization (biases, [max, mean], momentum 0.01). timm's
    CbamModule is ``b1=b2=None, order="mean_max", momentum=0.1``; LightCbamModule is
    ``pool_types=("avgmax",), order="avgmax", momentum=0.1`` with a (1, 1, k, k) conv.
    ``conv_w=None`` drops the spatial gate (official ``no_spatial=True``).
    """
    x1 = cbam_channel(x, w1, b1, w2, b2, act, gate, pool_types)
    if conv_w is None:
        return x1
    return cbam_spatial(x1, conv_w, bn_weight, bn_bias, running_mean, running_var, training,
                        momentum, eps, order, gate)


# ----------------------------------------------------------------------------------------------
# Official parameterization (Jongchan/attention-module MODELS/cbam.py)
# ----------------------------------------------------------------------------------------------
class Flatten(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.size(0), -1)


class BasicConv(nn.Module):
    """Official BasicConv: conv (no bias) -> BatchNorm2d(eps=1e-5, momentum=0.01) -> optional ReLU."""

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, dilation: int = 1, groups: int = 1, relu: bool = True,
                 bn: bool = True, bias: bool = False):
        super().__init__()
        self.out_channels = out_planes
        self.conv = nn.Conv2d(in_planes, out_planes, kernel_size=kernel_size, stride=stride,
                              padding=padding, dilation=dilation, groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(out_planes, eps=1e-5, momentum=0.01, affine=True) if bn else None
        self.relu = nn.ReLU() if relu else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.relu is not None:
            x = self.relu(x)
        return x


class ChannelGate(nn.Module):
    """Official CBAM ChannelGate: keys mlp.1.{weight,bias}, mlp.3.{weight,bias}."""

    def __init__(self, gate_channels: int, reduction_ratio: int = 16,
                 pool_types: Sequence[str] = ("avg", "max")):
        super().__init__()
        self.gate_channels = gate_channels
        self.mlp = nn.Sequential(
            Flatten(),
            nn.Linear(gate_channels, gate_channels // reduction_ratio),
            nn.ReLU(),
            nn.Linear(gate_channels // reduction_ratio, gate_channels),
        )
        self.pool_types = list(pool_types)

    def _mlp(self, p: Tensor) -> Tensor:
        fc1, fc2 = self.mlp[1], self.mlp[3]
        return F.linear(F.relu(F.linear(p, fc1.weight, fc1.bias)), fc2.weight, fc2.bias)

    def forward(self, x: Tensor) -> Tensor:
        # cbam_channel(x, ..., "relu", "sigmoid", self.pool_types), op for op, in TorchScript's
        # subset (the modules' forwards script: attnkernels' drop-ins compile them)
        z = self._mlp(cbam_pool(x, self.pool_types[0]))
        for p in self.pool_types[1:]:
            z = z + self._mlp(cbam_pool(x, p))
        return x * torch.sigmoid(z)[:, :, None, None]


class ChannelPool(nn.Module):
    """Official ChannelPool: cat([max over C, mean over C]) -> (N, 2, H, W)."""

    def forward(self, x: Tensor) -> Tensor:
        return cbam_spatial_pool(x, "max_mean")


class SpatialGate(nn.Module):
    """Official CBAM SpatialGate: keys spatial.conv.weight [1,2,7,7], spatial.bn.*."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.compress = ChannelPool()
        self.spatial = BasicConv(2, 1, kernel_size, stride=1, padding=(kernel_size - 1) // 2,
                                 relu=False)

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.spatial(self.compress(x)))


class CBAM(nn.Module):
    """Official CBAM(gate_channels, reduction_ratio=16, pool_types=['avg','max'], no_spatial=False).

    state_dict: ChannelGate.mlp.1.*, ChannelGate.mlp.3.*, and unless no_spatial
    SpatialGate.spatial.conv.weight, SpatialGate.spatial.bn.{weight,bias,running_mean,
    running_var,num_batches_tracked}.
    """

    def __init__(self, gate_channels: int, reduction_ratio: int = 16,
                 pool_types: Sequence[str] = ("avg", "max"), no_spatial: bool = False):
        super().__init__()
        self.ChannelGate = ChannelGate(gate_channels, reduction_ratio, pool_types)
        self.no_spatial = no_spatial
        if not no_spatial:
            self.SpatialGate = SpatialGate()

    # a constant to TorchScript, which then compiles no call of the SpatialGate that no_spatial lacks
    __constants__ = ["no_spatial"]

    def forward(self, x: Tensor) -> Tensor:
        return self._eager_forward(x)

    # the forward's body, which the fused drop-in falls back to (and TorchScript compiles there)
    def _eager_forward(self, x: Tensor) -> Tensor:
        x = self.ChannelGate(x)
        if not self.no_spatial:
            x = self.SpatialGate(x)
        return x


# ----------------------------------------------------------------------------------------------
# timm parameterization (timm/layers/cbam.py)
# ----------------------------------------------------------------------------------------------
class ConvBn(nn.Module):
    """timm ConvNormAct(in, out, k, apply_act=False) as used by CBAM: keys conv.weight, bn.*.

    conv: stride 1, padding (k-1)//2 (timm's default symmetric padding), no bias;
    bn: BatchNorm2d(out, eps=1e-5, momentum=0.1) (timm's BatchNormAct2d is a BatchNorm2d
    subclass with the same state_dict).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1,
                 device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size,
                              padding=(kernel_size - 1) // 2, bias=False, **dd)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-5, momentum=0.1, **dd)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class ChannelAttn(nn.Module):
    """timm ChannelAttn: fc1 / act / fc2 (1x1 convs) / gate, avg + max pools summed."""

    def __init__(self, channels: int, rd_ratio: float = 1.0 / 16, rd_channels: Optional[int] = None,
                 rd_divisor: int = 1, act_layer=nn.ReLU, gate_layer="sigmoid",
                 mlp_bias: bool = False, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if not rd_channels:
            rd_channels = make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.0)
        self.fc1 = nn.Conv2d(channels, rd_channels, 1, bias=mlp_bias, **dd)
        self.act = make_layer(act_layer, inplace=True)
        self.fc2 = nn.Conv2d(rd_channels, channels, 1, bias=mlp_bias, **dd)
        self.gate = make_layer(gate_layer)

    def _mlp(self, p: Tensor) -> Tensor:
        w1, w2 = self.fc1.weight, self.fc2.weight
        u = F.linear(p, w1.reshape(w1.shape[0], -1), self.fc1.bias)
        return F.linear(self.act(u), w2.reshape(w2.shape[0], -1), self.fc2.bias)

    def forward(self, x: Tensor) -> Tensor:
        # cbam_channel(x, ..., self.act, self.gate, ("avg", "max")), op for op (TorchScript's subset)
        z = self._mlp(cbam_pool(x, "avg")) + self._mlp(cbam_pool(x, "max"))
        return x * self.gate(z)[:, :, None, None]


class LightChannelAttn(ChannelAttn):
    """timm LightChannelAttn: MLP once on 0.5*mean + 0.5*max; gate is always sigmoid (as timm)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self._mlp(cbam_pool(x, "avgmax")))[:, :, None, None]


class SpatialAttn(nn.Module):
    """timm SpatialAttn: conv (ConvBn 2->1, k x k) on [mean, max], then gate."""

    def __init__(self, kernel_size: int = 7, gate_layer="sigmoid", device=None, dtype=None):
        super().__init__()
        self.conv = ConvBn(2, 1, kernel_size, device=device, dtype=dtype)
        self.gate = make_layer(gate_layer)

    # the channel pool (cbam_spatial_pool's order): a constant to TorchScript
    __constants__ = ["_order"]
    _order = "mean_max"

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(self.conv(cbam_spatial_pool(x, self._order)))


class LightSpatialAttn(SpatialAttn):
    """timm LightSpatialAttn: conv (ConvBn 1->1) on 0.5*mean + 0.5*max, then gate."""

    def __init__(self, kernel_size: int = 7, gate_layer="sigmoid", device=None, dtype=None):
        nn.Module.__init__(self)
        self.conv = ConvBn(1, 1, kernel_size, device=device, dtype=dtype)
        self.gate = make_layer(gate_layer)

    _order = "avgmax"


class CbamModule(nn.Module):
    """timm.layers.cbam.CbamModule: same constructor and state_dict
    (channel.fc1.weight, channel.fc2.weight, spatial.conv.conv.weight, spatial.conv.bn.*)."""

    def __init__(self, channels: int, rd_ratio: float = 1.0 / 16, rd_channels: Optional[int] = None,
                 rd_divisor: int = 1, spatial_kernel_size: int = 7, act_layer=nn.ReLU,
                 gate_layer="sigmoid", mlp_bias: bool = False, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.channel = ChannelAttn(channels, rd_ratio=rd_ratio, rd_channels=rd_channels,
                                   rd_divisor=rd_divisor, act_layer=act_layer,
                                   gate_layer=gate_layer, mlp_bias=mlp_bias, **dd)
        self.spatial = SpatialAttn(spatial_kernel_size, gate_layer=gate_layer, **dd)

    def forward(self, x: Tensor) -> Tensor:
        return self._eager_forward(x)

    def _eager_forward(self, x: Tensor) -> Tensor:
        return self.spatial(self.channel(x))


class LightCbamModule(nn.Module):
    """timm.layers.cbam.LightCbamModule: same constructor and state_dict as CbamModule except
    spatial.conv.conv.weight is (1, 1, k, k). Both gates are sigmoids (timm ignores gate_layer
    for them)."""

    def __init__(self, channels: int, rd_ratio: float = 1.0 / 16, rd_channels: Optional[int] = None,
                 rd_divisor: int = 1, spatial_kernel_size: int = 7, act_layer=nn.ReLU,
                 gate_layer="sigmoid", mlp_bias: bool = False, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.channel = LightChannelAttn(channels, rd_ratio=rd_ratio, rd_channels=rd_channels,
                                        rd_divisor=rd_divisor, act_layer=act_layer,
                                        gate_layer=gate_layer, mlp_bias=mlp_bias, **dd)
        self.spatial = LightSpatialAttn(spatial_kernel_size, **dd)

    def forward(self, x: Tensor) -> Tensor:
        return self._eager_forward(x)

    def _eager_forward(self, x: Tensor) -> Tensor:
        return self.spatial(self.channel(x))

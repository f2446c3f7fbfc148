"""Helpers shared by the references: activation/gate tables and channel rounding."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Elementwise activations of the excitation MLP, by name (the names the fused ops take).
ACTIVATIONS = {
    "relu": F.relu,
    "silu": F.silu,
    "hardswish": F.hardswish,
    "gelu": F.gelu,  # exact (erf) form, as nn.GELU()
    "identity": lambda u: u,  # the single-layer form (ESE) has none
}
# Gates that turn the excitation into a scale.
GATES = {
    "sigmoid": torch.sigmoid,
    "hardsigmoid": F.hardsigmoid,
}

_ACT_MODULES = ((nn.ReLU, "relu"), (nn.SiLU, "silu"), (nn.Hardswish, "hardswish"), (nn.Identity, "identity"))
_GATE_MODULES = ((nn.Sigmoid, "sigmoid"), (nn.Hardsigmoid, "hardsigmoid"))


_names: dict = {}


def _name_of(module: nn.Module, table) -> str | None:
    # memoized per (class, GELU form, table): the fused modules ask on every forward
    key = (type(module), module.__dict__.get("approximate"), table is _ACT_MODULES)
    if key not in _names:
        _names[key] = _lookup_name(module, table)
    return _names[key]


def _lookup_name(module: nn.Module, table) -> str | None:
    if isinstance(module, nn.GELU):
        return "gelu" if module.approximate == "none" else None
    for cls, name in table:
        if isinstance(module, cls):
            return name
    # timm's own activation classes (timm.layers.activations*): match by class name.
    cname = type(module).__name__.lower().replace("_", "")
    if cname == "gelu" and table is _ACT_MODULES:
        return "gelu"  # timm.layers.GELU: exact erf form
    if cname in ("swish", "swishme") and table is _ACT_MODULES:
        return "silu"  # timm.layers.Swish / SwishMe: x * sigmoid(x)
    for _, name in table:
        if cname in (name, name + "me"):
            return name
    return None


def act_name(module: nn.Module) -> str | None:
    """The fused-op name of an activation module (None if the fused op has no such activation)."""
    return _name_of(module, _ACT_MODULES)


def gate_name(module: nn.Module) -> str | None:
    """The fused-op name of a gate module (None if the fused op has no such gate)."""
    return _name_of(module, _GATE_MODULES)


def make_divisible(v, divisor=8, min_value=None, round_limit=0.9) -> int:
    """timm/torchvision channel rounding (see modules.md)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


def make_layer(layer, **kw) -> nn.Module:
    """An activation/gate module from a class, an instance, or a name ('relu', 'hard_sigmoid', ...)."""
    if isinstance(layer, nn.Module):
        return layer
    if isinstance(layer, str):
        key = layer.lower().replace("_", "")
        table = {"relu": nn.ReLU, "silu": nn.SiLU, "swish": nn.SiLU, "hardswish": nn.Hardswish,
                 "gelu": nn.GELU, "sigmoid": nn.Sigmoid, "hardsigmoid": nn.Hardsigmoid,
                 "identity": nn.Identity, "tanh": nn.Tanh}
        if key not in table:
            raise ValueError(f"unknown activation/gate layer {layer!r}")
        layer = table[key]
    try:
        return layer(**kw)
    except TypeError:
        return layer()

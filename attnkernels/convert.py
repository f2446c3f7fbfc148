"""attnkernels.convert(model): swap known attention blocks for attnkernels' fused drop-ins.

    model = attnkernels.convert(model)            # in place; returns the model
    print(attnkernels.convert_report(model))      # how many fused blocks, which backend they run

Swapped (exact class matches only; subclasses may override forward and are left alone):
  torchvision.ops.SqueezeExcitation (= torchvision.ops.misc.SqueezeExcitation)
      -> attnkernels.SqueezeExcitation
  timm.layers.SEModule (= timm.layers.squeeze_excite.SEModule)
      -> attnkernels.SEModule
  timm.layers.EffectiveSEModule (ESE: timm's VoVNet, ese_vovnet*)
      -> attnkernels.EffectiveSEModule
  timm.models._efficientnet_blocks.SqueezeExcite (timm's EfficientNet, MobileNetV3, MixNet, ...)
      -> attnkernels.SqueezeExcite
  timm.models.senet.SEModule (timm's legacy SENets: legacy_seresnet*, legacy_senet154, ...)
      -> attnkernels.SENetSEModule
  timm.layers.cbam.CbamModule / LightCbamModule (timm's attn_layer="cbam" / "lcbam")
      -> attnkernels.CbamModule / LightCbamModule
  attnkernels.reference.BAM -> attnkernels.BAM
  attnkernels.reference.SCA -> attnkernels.SCA
and, recognized by class name and submodule layout (code users copy into their projects):
  the official CBAM (Jongchan/attention-module MODELS/cbam.py: CBAM with ChannelGate.mlp and
  SpatialGate.spatial.conv / .bn) -> attnkernels.CBAM
  the official BAM (MODELS/bam.py: BAM with channel_att.gate_c and spatial_att.gate_s)
      -> attnkernels.BAM

The replacement is built with the constructor arguments read off the old module (channels,
squeeze channels, bias, add_maxpool), reusing the old activation / gate / norm module
instances, and takes over the old module's parameters and buffers through
``load_state_dict(old.state_dict(keep_vars=True), strict=True, assign=True)``: the same
Parameter objects (so an optimizer built before convert() keeps working), hence the same
device, dtype and values; requires_grad and train/eval flags are restored as they were.
Forward hooks registered on the old SE modules themselves are not carried over.
torchvision and timm are optional: a library that is not installed is simply not searched.
"""
from __future__ import annotations

import copy
import importlib
import warnings
from collections import Counter
import torch
from torch import nn

from .backend import get_backend, resolve
from ._dropin import FusedDropin

__all__ = ["convert", "convert_report", "convertible_types"]


# The ops whose modules list the blocks they replace: convertible_types() -> {source class:
# builder(old) -> new module} (exact class matches), and optionally recognizers() -> [(test(module)
# -> bool, builder)] for blocks known by class name and submodule layout (code that users copy
# into their projects, such as the official CBAM / BAM, has no importable class to match).
_OPS = ("se", "cbam", "bam", "sca")


def convertible_types() -> dict:
    """{source class: builder(old) -> new module} for the libraries importable here, every op's."""
    table = {}
    for op in _OPS:
        table.update(importlib.import_module(f"attnkernels.{op}").convertible_types())
    return table


def _recognizers() -> list:
    out = []
    for op in _OPS:
        out += getattr(importlib.import_module(f"attnkernels.{op}"), "recognizers", list)()
    return out


def _builder_for(module: nn.Module, table: dict, recognizers: list):
    build = table.get(type(module))
    if build is None:
        build = next((b for test, b in recognizers if test(module)), None)
    return build


def _swap_one(old: nn.Module, build) -> nn.Module:
    requires_grad = {n: p.requires_grad for n, p in old.named_parameters()}
    training = {n: m.training for n, m in old.named_modules()}
    new = build(old)
    # strict key/shape check; assign=True adopts the old Parameters/buffers themselves.
    new.load_state_dict(old.state_dict(keep_vars=True), strict=True, assign=True)
    for n, p in new.named_parameters():
        if n in requires_grad:
            p.requires_grad_(requires_grad[n])
    for n, m in new.named_modules():
        m.training = training.get(n, old.training)
    return new


def convert(model: nn.Module, *, inplace: bool = True, verbose: bool = False) -> nn.Module:
    """Swap every block the module docstring lists (SE and CBAM blocks of torchvision, timm and
    the official CBAM code) in `model` for attnkernels' fused drop-in and return the model (a deep copy
    when inplace=False). If `model` itself is such a block, the returned module is its
    replacement. A block that cannot be converted (e.g. an unexpected layout) is left as is
    with a warning. The number swapped per class is
    stored on the returned model as ``_attnkernels_converted`` (see convert_report)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert expects an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    table, recognizers = convertible_types(), _recognizers()
    counts: Counter = Counter()

    def visit(parent: nn.Module):
        for name, child in list(parent.named_children()):
            build = _builder_for(child, table, recognizers)
            if build is None:
                visit(child)
                continue
            try:
                new = _swap_one(child, build)
            except Exception as e:
                warnings.warn(f"attnkernels.convert: left {type(child).__qualname__} at "
                              f"'{name}' unconverted ({type(e).__name__}: {e})")
                continue
            setattr(parent, name, new)
            counts[f"{type(child).__module__}.{type(child).__qualname__}"] += 1

    root_build = _builder_for(model, table, recognizers)
    if root_build is not None:
        root_name = f"{type(model).__module__}.{type(model).__qualname__}"
        model = _swap_one(model, root_build)
        counts[root_name] += 1
    else:
        visit(model)
    try:
        prev = getattr(model, "_attnkernels_converted", {})
        model._attnkernels_converted = dict(Counter(prev) + counts)
    except Exception:
        pass
    if verbose:
        print(convert_report(model))
    return model


def convert_report(model: nn.Module, device=None) -> dict:
    """What a converted model will run: {'fused': n, 'eager_fallback': n, 'by_config':
    {'relu/hardsigmoid/avg': n, ...}, 'swapped': {source class: n} (from convert), 'device',
    'backend' (the concrete backend attnkernels would pick now for that device, or the error)}.
    `device` defaults to the model's first parameter's device."""
    fused, fallback, by_cfg = 0, 0, Counter()
    for m in model.modules():
        if isinstance(m, FusedDropin):
            opts = m.fused_options()
            if opts is None:
                fallback += 1
            else:
                fused += 1
                by_cfg["/".join(map(str, opts))] += 1
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    try:
        be = resolve(None, device)
    except Exception as e:
        be = f"error: {e}"
    return {"fused": fused, "eager_fallback": fallback, "by_config": dict(by_cfg),
            "swapped": dict(getattr(model, "_attnkernels_converted", {})),
            "device": str(device), "backend_setting": get_backend(), "backend": be}

"""SE (squeeze-and-excitation), fused: the op, its autograd, the functional API and the drop-in
modules. Kernels live in attnkernels/triton/se.py and csrc/se/ (attnkernels/cuda/se.py); the spec
is attnkernels/reference/se.py.

Backend contract (every kernel backend module implements se_forward and se_backward):
  se_forward(x, w1, b1, w2, b2, act, gate, pool) -> (y, s, z, u, p, pmax)
    x (N, C, H, W), N >= 1, contiguous in NCHW or channels_last; w1 (Cr, C), w2 (C, Cr)
    contiguous; b1 (Cr,) / b2 (C,) or None; all of x's dtype and device. w1 None (b1 None): the
    single-layer form, w2 (C, C), Cr = C, u = p. y: like x (same memory
    format). s = gate(z), z = fc2 output, u = fc1 output (pre-activation), p = pooled MLP input,
    pmax = channel max (pool "avgmax") or an empty (0,) tensor: all in the accumulation dtype
    (fp64 for fp64 x, else fp32).
  se_inference(x, w1, b1, w2, b2, act, gate, pool) -> y
    se_forward's y when no backward follows (the per-(n, c) vectors may go to reused scratch).
    Backends with their own eager path (cuda, cuda-emu: `se_eager`) need not have it.
  se_backward(dy, x, w1, w2, s, z, u, p, pmax, act, gate, pool) -> (dx, dw1, db1, dw2, db2)
    dy of x's shape, dtype and memory format; dx like x; weight/bias grads in the weight dtype
    (w1 None: dw1, db1 empty (0,) tensors).
    The max-pool gradient is split evenly over tied maxima, as torch.amax's backward does.
"""
from __future__ import annotations

from typing import Optional

import sys

import torch
from torch import Tensor, nn

from . import reference
from ._alloc import acc_dtype
from ._dropin import FusedDropin, cast_params, hooked, reuse, weight_bias, weight_bias_attrs
from ._fused_op import grads_with_graph as _grads_with_graph
from ._fused_op import reference_only, tracer_quiet, twice_differentiable_gate
from ._validate import (as_matrix, check_choice, check_grad_like, check_tensor, check_vector, memory_format_of)
from ._variant import force_variant, request
from .backend import get_impl, resolve
from .reference._common import ACTIVATIONS, GATES, act_name, gate_name

POOLS = ("avg", "avgmax")
# Backends whose extension runs the eager call and its autograd in C++ (attnkernels.cuda.se_eager).
_CPP_AUTOGRAD = ("cuda", "cuda-emu")


# ---------------------------------------------------------------------------------------------
# custom ops
# ---------------------------------------------------------------------------------------------
def _check_se_inputs(x, w1, b1, w2, b2, act, gate, pool):
    """Clear errors naming the argument; returns w1 (or None: the single-layer form), w2 as
    (out, in) views."""
    check_tensor(x, "x", 4)
    C = x.shape[1]
    if w1 is None:
        if b1 is not None:
            raise ValueError("b1 given without w1 (the single-layer form, w1=None, has no fc1)")
        w2 = as_matrix(w2, "w2", C, C, x)
    else:
        w1 = as_matrix(w1, "w1", None, C, x)
        if w1.shape[0] == 0:  # (torchvision's and timm's 1x1 convs refuse 0 output channels too)
            raise ValueError(f"w1 has shape {tuple(w1.shape)}: the excitation needs at least one squeeze channel")
        w2 = as_matrix(w2, "w2", C, w1.shape[0], x)
        check_vector(b1, "b1", w1.shape[0], x)
    check_vector(b2, "b2", C, x)
    check_choice(act, "act", tuple(ACTIVATIONS))
    check_choice(gate, "gate", tuple(GATES))
    check_choice(pool, "pool", POOLS)
    return w1, w2


def _check_op_inputs(x, w1, b1, w2, b2, act, gate, pool, backend):
    """The raw ops take what `se` passes them: check it, so a direct torch.ops call with other
    inputs gets an error rather than a wrong answer from a kernel that assumes them."""
    _check_se_inputs(x, w1, b1, w2, b2, act, gate, pool)
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        raise ValueError("x must be contiguous in NCHW or channels_last")
    if any(w is not None and (w.dim() != 2 or not w.is_contiguous()) for w in (w1, w2)):
        raise ValueError("w1 and w2 must be contiguous (out, in) matrices")
    if any(b is not None and not b.is_contiguous() for b in (b1, b2)):
        raise ValueError("b1 and b2 must be contiguous")
    check_choice(backend, "backend", ("triton", "cuda", "cuda-emu"))


@torch.library.custom_op("attnkernels::se_forward", mutates_args=())
def se_forward(x: Tensor, w1: Optional[Tensor], b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor],
               act: str, gate: str, pool: str, backend: str
               ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    _check_op_inputs(x, w1, b1, w2, b2, act, gate, pool, backend)
    return get_impl(backend).se_forward(x, w1, b1, w2, b2, act, gate, pool)


@se_forward.register_fake
def _(x, w1, b1, w2, b2, act, gate, pool, backend):
    N, C = x.shape[:2]
    vec = x.new_empty((N, C), dtype=acc_dtype(x.dtype))
    return (torch.empty_like(x), vec, torch.empty_like(vec),
            x.new_empty((N, w2.shape[1]), dtype=vec.dtype), torch.empty_like(vec),
            x.new_empty((N, C) if pool == "avgmax" else (0,), dtype=vec.dtype))


@torch.library.custom_op("attnkernels::se_backward", mutates_args=())
def se_backward(dy: Tensor, x: Tensor, w1: Optional[Tensor], w2: Tensor, s: Tensor, z: Tensor, u: Tensor,
                p: Tensor, pmax: Tensor, act: str, gate: str, pool: str, backend: str,
                variant: str = "auto", bps: int = 0, lag: int = 0
                ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """variant/bps/lag: the kernel variant request of the forward (attnkernels/_variant.py). An
    argument, not the thread's force_variant: on CUDA the autograd engine runs backward nodes on
    its own thread, which a thread-local setting of the caller does not reach. w1 None (the
    single-layer form): dw1 and db1 are empty (0,) tensors."""
    _check_op_inputs(x, w1, None, w2, None, act, gate, pool, backend)
    check_grad_like(dy, "dy", x)
    with force_variant(variant, bps, lag):
        return get_impl(backend).se_backward(dy, x, w1, w2, s, z, u, p, pmax, act, gate, pool)


@se_backward.register_fake
def _(dy, x, w1, w2, s, z, u, p, pmax, act, gate, pool, backend, variant="auto", bps=0, lag=0):
    if w1 is None:
        dw1, db1 = w2.new_empty((0,)), w2.new_empty((0,))
    else:
        dw1, db1 = torch.empty_like(w1), w1.new_empty((w1.shape[0],))
    return torch.empty_like(x), dw1, db1, torch.empty_like(w2), w2.new_empty((w2.shape[0],))


def _save(ctx, x, w1, b1, w2, b2, act, gate, pool, backend, s, z, u, p, pmax):
    # the biases only for a double backward (grads_with_graph): references, no copies
    ctx.save_for_backward(x, w1, b1, w2, b2, s, z, u, p, pmax)
    ctx.opts = (act, gate, pool, backend)
    ctx.has_bias = (b1 is not None, b2 is not None)
    ctx.has_w1 = w1 is not None
    ctx.variant = request()  # the backward runs it, on whatever thread autograd runs it


def _grads(ctx, dy, backward_fn):
    x, w1, b1, w2, b2, s, z, u, p, pmax = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: a differentiable gradient
        dx, dw1, db1, dw2, db2 = grads_with_graph(x, w1, b1, w2, b2, dy, *ctx.opts[:3])
        return dx, dw1, db1, dw2, db2, None, None, None, None
    dy = dy.contiguous(memory_format=memory_format_of(x))
    dx, dw1, db1, dw2, db2 = backward_fn(dy, x, w1, w2, s, z, u, p, pmax, *ctx.opts[:3])
    has_b1, has_b2 = ctx.has_bias
    return (dx, dw1 if ctx.has_w1 else None, db1 if has_b1 else None, dw2, db2 if has_b2 else None,
            None, None, None, None)


def grads_with_graph(x, w1, b1, w2, b2, dy, act, gate, pool):
    """The gradients of the SE output (dx, dw1, db1, dw2, db2; None for an input that is None or
    wants no gradient) as a differentiable function of the inputs and dy: what a backward with
    create_graph=True (a double backward: gradient penalties, Hessian-vector products) needs.
    The kernels' backward is not differentiable, so this runs the reference's eager graph, in
    the accumulation dtype (fp32 for fp16/bf16, as the kernels accumulate), recomputed from the
    saved inputs: eager speed and memory, for this rare path only. Every backend's eager autograd
    (Python and the C++ one of cuda / cuda-emu, which calls this) and the custom ops' take it."""
    gate_fn = twice_differentiable_gate(gate)
    return _grads_with_graph(lambda *t: reference.se(*t, act, gate_fn, pool), (x, w1, b1, w2, b2), dy)


def _se_setup_context(ctx, inputs, output):
    _, s, z, u, p, pmax = output
    ctx.mark_non_differentiable(s, z, u, p, pmax)  # internal per-(n, c) vectors
    _save(ctx, *inputs, s, z, u, p, pmax)


def _se_backward(ctx, dy, *_unused_grads):
    return _grads(ctx, dy, lambda *args: se_backward(*args, ctx.opts[3], *ctx.variant))


se_forward.register_autograd(_se_backward, setup_context=_se_setup_context)


class _SEFunction(torch.autograd.Function):
    """The Triton backend's eager path: the same backend functions as the custom ops, without
    the custom-op dispatch (~15-30 us of Python per call, which dominates at small batch).
    cuda / cuda-emu go further: one extension call with its autograd in C++ (`se`).
    torch.compile traces the custom ops instead."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, act, gate, pool, backend):
        y, s, z, u, p, pmax = get_impl(backend).se_forward(x, w1, b1, w2, b2, act, gate, pool)
        _save(ctx, x, w1, b1, w2, b2, act, gate, pool, backend, s, z, u, p, pmax)
        return y

    @staticmethod
    def backward(ctx, dy):
        with force_variant(*ctx.variant):  # (CUDA: autograd's thread, not the caller's)
            return _grads(ctx, dy, get_impl(ctx.opts[3]).se_backward)


# ---------------------------------------------------------------------------------------------
# functional
# ---------------------------------------------------------------------------------------------
def se(x: Tensor, w1: Optional[Tensor], b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor], *,
       act: str = "relu", gate: str = "sigmoid", pool: str = "avg",
       backend: Optional[str] = None) -> Tensor:
    """Fused squeeze-and-excitation: y = x * gate(w2 @ act(w1 @ pool(x) + b1) + b2).

    x: (N, C, H, W), float16/bfloat16/float32/float64, NCHW or channels_last (y keeps x's
    layout; other strides are first copied into channels_last if channels are the innermost
    dimension, else NCHW).
    w1: (Cr, C) or (Cr, C, 1, 1); w2: (C, Cr) or (C, Cr, 1, 1); b1 (Cr,), b2 (C,) or None.
    w1=None (and b1=None): the single-layer form y = x * gate(w2 @ act(pool(x)) + b2), w2 (C, C):
    timm's EffectiveSEModule (ESE) with act="identity".
    act: relu | silu | hardswish | gelu | identity; gate: sigmoid | hardsigmoid;
    pool: avg | avgmax (timm add_maxpool: 0.5 * mean + 0.5 * max).
    backend: None (the one in force, see attnkernels.set_backend) or a backend name.
    """
    if reference_only():
        # The reference's eager ops, so that the module behaves as the one it replaces, under
        # - torch.func (grad, vmap, jacrev, ...): neither the kernels' autograd Functions (Python
        #   or C++) nor custom ops run under its transforms;
        # - forward-mode AD (torch.autograd.forward_ad's dual levels): the Functions have no jvp,
        #   and the Python one would drop the tangent (the output would have none);
        # - torch.jit.trace (and torch.onnx.export's tracer): it records aten ops only, so a
        #   kernel call would be traced as a constant (or as the empty output it fills), and a
        #   trace of aten ops also runs, and exports, without attnkernels. (The input checks
        #   compare shapes, which the tracer warns would be constants: they are checks of the
        #   traced call, so no warning.)
        with tracer_quiet():
            w1, w2 = _check_se_inputs(x, w1, b1, w2, b2, act, gate, pool)
        resolve(backend, x.device)  # a backend that cannot run here is still an error
        return reference.se(x, w1, b1, w2, b2, act, gate, pool)
    name = None
    if isinstance(x, Tensor) and x.numel() and not torch.compiler.is_compiling():
        name = resolve(backend, x.device)
        if name in _CPP_AUTOGRAD:  # the whole call, autograd included, in C++
            try:
                return get_impl(name).se_eager(name, x, w1, b1, w2, b2, act, gate, pool)
            except (RuntimeError, TypeError, ValueError):
                _check_se_inputs(x, w1, b1, w2, b2, act, gate, pool)  # the error naming the argument
                raise
    w1, w2 = _check_se_inputs(x, w1, b1, w2, b2, act, gate, pool)
    if name is None:
        name = resolve(backend, x.device)
    if name == "reference" or x.numel() == 0:
        return reference.se(x, w1, b1, w2, b2, act, gate, pool)
    x = x.contiguous(memory_format=memory_format_of(x))
    b1 = b1.contiguous() if b1 is not None else None  # the kernels index biases densely
    b2 = b2.contiguous() if b2 is not None else None
    args = (x, w1.contiguous() if w1 is not None else None, b1, w2.contiguous(), b2, act, gate, pool, name)
    if torch.compiler.is_compiling():
        if torch.onnx.is_in_onnx_export():
            # torch.onnx.export (its default, torch.export-based exporter) has no ONNX function
            # for the custom op: give it the reference's aten ops, which it translates
            return reference.se(x, w1, b1, w2, b2, act, gate, pool)
        return se_forward(*args)[0]
    if torch.is_grad_enabled() and (x.requires_grad or (w1 is not None and w1.requires_grad) or w2.requires_grad
                                    or (b1 is not None and b1.requires_grad)
                                    or (b2 is not None and b2.requires_grad)):
        return _SEFunction.apply(*args)
    # nothing to differentiate (no_grad, inference, frozen weights and x): the kernels alone,
    # without the autograd.Function's context and saves, nor the vectors a backward would need
    return get_impl(name).se_inference(*args[:-1])


# ---------------------------------------------------------------------------------------------
# drop-in modules
# ---------------------------------------------------------------------------------------------
def _fused_se_call(x, w1, b1, w2, b2, act: str, gate: str, pool: str) -> Tensor:
    """The drop-ins' fused call on their conv weights, cast to x's dtype first where they differ
    (as autocast casts them for the eager block's convs). A leaf of FX symbolic tracing
    (torch.fx.wrap below): a traced model (torchvision's create_feature_extractor, FX-based
    quantization or pruning) calls it, fused, instead of tracing into `se`, whose checks a Proxy
    fails."""
    w1, b1, w2, b2 = cast_params(x.dtype, w1, b1, w2, b2)
    return se(x, w1, b1, w2, b2, act=act, gate=gate, pool=pool)


torch.fx.wrap("_fused_se_call")


class _FusedSE(FusedDropin):
    """SE's drop-ins: each names its submodules (None: the single-layer form has no reduce conv
    and no activation); one that the fused op cannot run in some configurations also overrides
    _fusable."""

    _CONVS = ("fc1", "fc2")  # reduce (or None), expand
    _ACT_GATE = ("act", "gate")  # activation (or None: identity), gate

    def _fusable(self) -> bool:
        return True

    def _pool(self) -> str:
        return "avg"

    def fused_options(self):
        """(act, gate, pool) of the fused op this module runs, or None (eager fallback)."""
        mods = self._modules
        act_mod, gate_mod = self._ACT_GATE
        act = "identity" if act_mod is None else act_name(mods[act_mod])
        gate = gate_name(mods[gate_mod])
        if (act is None or gate is None or not self._fusable()
                or hooked(*(mods[name] for name in self._CONVS if name is not None))):
            return None
        return act, gate, self._pool()

    def _fused_call(self, x: Tensor, opts) -> Tensor:
        mods = self._modules
        reduce, expand = self._CONVS
        params = weight_bias_attrs if isinstance(x, torch.fx.Proxy) else weight_bias
        w1, b1 = params(mods[reduce]) if reduce is not None else (None, None)
        w2, b2 = params(mods[expand])
        return _fused_se_call(x, w1, b1, w2, b2, *opts)


class SqueezeExcitation(_FusedSE, reference.SqueezeExcitation):
    """Drop-in for torchvision.ops.SqueezeExcitation (same constructor, submodules, `_scale`
    and state_dict); forward runs the fused op when activation and scale_activation are ones
    it has (ReLU/SiLU/Hardswish/GELU, Sigmoid/Hardsigmoid) and no hooks sit on fc1/fc2 (pruning,
    weight norm, ...), else the eager path."""

    _ACT_GATE = ("activation", "scale_activation")

    def forward(self, input: Tensor) -> Tensor:  # torchvision's argument name
        if torch.jit.is_scripting():
            return self._eager_forward(input)
        return self._fused_forward(input)


class SEModule(_FusedSE, reference.SEModule):
    """Drop-in for timm.layers.SEModule (same constructor and state_dict); fused unless a
    norm_layer or an activation the fused op lacks is configured, or hooks sit on fc1/fc2."""


    def _fusable(self) -> bool:
        return isinstance(self._modules["bn"], torch.nn.Identity)

    def _pool(self) -> str:
        return "avgmax" if self.add_maxpool else "avg"


class SqueezeExcite(_FusedSE, reference.SqueezeExcite):
    """Drop-in for timm's EfficientNet / MobileNetV3 block SE,
    timm.models._efficientnet_blocks.SqueezeExcite (same constructor, conv_reduce / act1 /
    conv_expand / gate and state_dict); fused unless act1 or the gate is one the fused op lacks,
    or hooks sit on the convs."""

    _CONVS = ("conv_reduce", "conv_expand")
    _ACT_GATE = ("act1", "gate")


class EffectiveSEModule(_FusedSE, reference.EffectiveSEModule):
    """Drop-in for timm.layers.EffectiveSEModule (ESE, VoVNet: one C -> C 1x1 conv `fc`, no
    activation; same constructor and state_dict): the fused op's single-layer form (w1 None,
    act "identity"); eager if the gate is one the fused op lacks or hooks sit on fc."""

    _CONVS = (None, "fc")
    _ACT_GATE = (None, "gate")

    def _pool(self) -> str:
        return "avgmax" if self.add_maxpool else "avg"


class SENetSEModule(_FusedSE, reference.SENetSEModule):
    """Drop-in for timm.models.senet.SEModule, the SE of timm's legacy SENets (legacy_seresnet*,
    legacy_seresnext*, legacy_senet154): same constructor (channels, reduction), fc1 / relu /
    fc2 / sigmoid and state_dict; fused unless hooks sit on fc1/fc2."""

    _ACT_GATE = ("relu", "sigmoid")


# ---------------------------------------------------------------------------------------------
# attnkernels.convert
# ---------------------------------------------------------------------------------------------
def convertible_types() -> dict:
    """The SE blocks attnkernels.convert swaps: {source class: builder(old) -> new module}, for
    the libraries importable here (torchvision, timm)."""
    table = {}
    try:
        from torchvision.ops.misc import SqueezeExcitation as TVSqueezeExcitation
        table[TVSqueezeExcitation] = _from_torchvision
    except Exception:  # torchvision missing or broken: nothing to swap from it
        pass
    try:
        from timm.layers.squeeze_excite import EffectiveSEModule as TimmEffectiveSEModule
        from timm.layers.squeeze_excite import SEModule as TimmSEModule
        table[TimmSEModule] = _from_timm
        table[TimmEffectiveSEModule] = _from_timm_ese
    except Exception:
        pass
    # timm.models registers every model when imported (seconds): only looked up if loaded, as it
    # is when a model holds one of its blocks
    blocks = sys.modules.get("timm.models._efficientnet_blocks")
    if blocks is not None and hasattr(blocks, "SqueezeExcite"):
        table[blocks.SqueezeExcite] = _from_timm_efficientnet
    senet = sys.modules.get("timm.models.senet")
    if senet is not None and hasattr(senet, "SEModule"):
        table[senet.SEModule] = _from_timm_senet
    return table


def _from_torchvision(old: nn.Module) -> nn.Module:
    return SqueezeExcitation(old.fc1.in_channels, old.fc1.out_channels,
                             activation=reuse(old.activation),
                             scale_activation=reuse(old.scale_activation))


def _from_timm(old: nn.Module) -> nn.Module:
    bn = getattr(old, "bn", None)
    norm_layer = None if bn is None or isinstance(bn, nn.Identity) else reuse(bn)
    return SEModule(old.fc1.in_channels, rd_channels=old.fc1.out_channels,
                    add_maxpool=bool(getattr(old, "add_maxpool", False)),
                    bias=old.fc1.bias is not None, act_layer=old.act, norm_layer=norm_layer,
                    gate_layer=old.gate)


def _from_timm_ese(old: nn.Module) -> nn.Module:
    return EffectiveSEModule(old.fc.in_channels, add_maxpool=bool(getattr(old, "add_maxpool", False)),
                             gate_layer=reuse(old.gate))


def _from_timm_efficientnet(old: nn.Module) -> nn.Module:
    return SqueezeExcite(old.conv_reduce.in_channels, rd_channels=old.conv_reduce.out_channels,
                         act_layer=old.act1, gate_layer=old.gate)


def _from_timm_senet(old: nn.Module) -> nn.Module:
    C, Cr = old.fc1.in_channels, old.fc1.out_channels
    reduction = C // Cr if Cr > 0 else 0
    if reduction < 1 or C // reduction != Cr:  # not built by SEModule(C, reduction)
        raise ValueError(f"fc1 maps {C} -> {Cr} channels, which no reduction gives")
    new = SENetSEModule(C, reduction)
    new.relu, new.sigmoid = old.relu, old.sigmoid
    return new

"""CBAM (convolutional block attention module), fused: the ops, their autograd, the functional API
and the drop-in modules. Kernels live in attnkernels/triton/cbam.py and csrc/cbam/
(attnkernels/cuda/cbam.py); the spec is attnkernels/reference/cbam.py.

Backend contract (attnkernels.triton and attnkernels.cuda implement cbam_forward / cbam_backward):
  cbam_forward(x, w1, b1, w2, b2, conv_w, bn_w, bn_b, bn_mean, bn_var, eps, batch_stats,
               act, gate, pool, spool) -> (y, pools, u, z, m, t, bstat)
    x (N, C, H, W), numel > 0, contiguous NCHW or channels_last; w1 (Cr, C), w2 (C, Cr)
    contiguous, b1 (Cr,), b2 (C,) or None: x's dtype. conv_w (1, S, k, k) contiguous, k odd, in
    the accumulation dtype (fp64 for fp64 x, else fp32), S = 2 for spool "max_mean" / "mean_max",
    1 for "avgmax"; or None: no spatial gate (m, t, bstat are then empty (0,) tensors and
    y = x * gate(z)). bn_w, bn_b (1,) accumulation dtype or None (affine=False); bn_mean, bn_var
    (1,) the statistics to normalize with when not batch_stats (eval), else None (the batch's
    mean and biased variance of t over its N*H*W values). act relu|silu|hardswish|gelu|identity,
    gate sigmoid|hardsigmoid (both gates); pool (POOLS below) the MLP's input: "avg", "max",
    "avg+max" (the MLP on each, summed: b2 once per pool) or "avgmax" (0.5 * mean + 0.5 * max);
    spool (SPOOLS) the spatial pool over channels in the conv's input-channel order.
    y like x (same memory format); pools (N, 2, C) [mean, max] of x over HW; u (N, P, Cr) the
    MLP's layer-1 pre-activations (P = 2 for "avg+max", rows avg then max, else 1); z (N, C) the
    channel logits, s_c = gate(z); m (N, S, H, W) the spatial pool of x * s_c; t (N, H, W) the
    conv of m (padding (k-1)//2, no bias); bstat (3,) [mean, invstd, var] the BatchNorm used:
    all but y in the accumulation dtype. y = x * s_c[n, c] * gate(bn_w (t - mean) invstd + bn_b).
  cbam_backward(dy, x, w1, w2, conv_w, bn_w, bn_b, pools, u, z, m, t, bstat, batch_stats,
                act, gate, pool, spool) -> (dx, dw1, db1, dw2, db2, dconv_w, dbn_w, dbn_b)
    dy like x; dx like x; dw1, db1, dw2, db2 x's dtype; dconv_w (1, S, k, k), dbn_w, dbn_b (1,)
    accumulation dtype (empty without the spatial gate). The max pools' gradients are split evenly
    over tied maxima (over HW for the channel pool, over channels for the spatial pool), as
    torch.amax's backward does. In training the BatchNorm's backward has the batch statistics'
    terms.

The ops are functional: in training mode the front end updates the running statistics from bstat
(the batch's mean and biased variance of the conv output) after the op, as F.batch_norm does.
"""
from __future__ import annotations

import contextlib
import importlib
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from . import reference
from ._alloc import acc_dtype
from ._dropin import (FusedDropin, bn_args_of, cast_params, hooked, plain_batchnorm, reuse, update_running_stats,
                      weight_bias, weight_bias_attrs)
from ._fused_op import grads_with_graph as _grads_with_graph
from ._fused_op import pick_backend, tracer_quiet, twice_differentiable_gate
from ._validate import (as_matrix, check_choice, check_grad_like, check_like, check_tensor, check_vector,
                        memory_format_of)
from .backend import get_impl
from .reference._common import ACTIVATIONS, GATES, act_name, gate_name

# the reference's module (attnkernels.reference.cbam is also the name of its function)
_ref = importlib.import_module("attnkernels.reference.cbam")

# The channel MLP's input, as the backends name it: the mean, the max, both (the MLP applied to
# each, the outputs summed: b2 counts once per pool), or 0.5 * mean + 0.5 * max once.
POOLS = ("avg", "max", "avg+max", "avgmax")
# The pool_types the kernels run, by the backends' name; any other (the official code's "lp" and
# "lse", repeated pools) runs the reference.
FUSED_POOL_TYPES = {("avg",): "avg", ("max",): "max", ("avg", "max"): "avg+max", ("max", "avg"): "avg+max",
                    ("avgmax",): "avgmax"}
_POOL_TYPES_OF = {"avg": ("avg",), "max": ("max",), "avg+max": ("avg", "max"), "avgmax": ("avgmax",)}
_REFERENCE_POOL_TYPES = ("avg", "max", "avgmax", "lp", "lse")
# The spatial pool over channels, in the conv's input-channel order: [max, mean], [mean, max],
# or 0.5 * mean + 0.5 * max (one channel).
SPOOLS = ("max_mean", "mean_max", "avgmax")


def n_pools(pool: str) -> int:
    """The MLP inputs of a pool kind (u's middle dimension)."""
    return 2 if pool == "avg+max" else 1


def n_spools(spool: str) -> int:
    """The spatial conv's input channels for a spatial pool kind."""
    return 1 if spool == "avgmax" else 2


# ---------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------
def _check_conv(conv_w, x, spool, dtype):
    check_tensor(conv_w, "conv_w", 4)
    S = n_spools(spool)
    k = conv_w.shape[-1]
    if tuple(conv_w.shape) != (1, S, k, k) or k % 2 == 0:
        raise ValueError(f"conv_w has shape {tuple(conv_w.shape)}, expected (1, {S}, k, k) with k odd "
                         f"(the spatial pool {spool!r} has {S} channel{'s' if S > 1 else ''}; 'same' padding "
                         f"needs an odd kernel)")
    if conv_w.dtype != dtype:
        raise TypeError(f"conv_w has dtype {conv_w.dtype}, expected {dtype}")
    if conv_w.device != x.device:
        raise ValueError(f"conv_w is on {conv_w.device} but x is on {x.device}")


def _check_bn_vector(t, name, x, dtypes):
    if t is None:
        return
    check_tensor(t, name, 1)
    if t.shape[0] != 1:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected (1,) (the spatial gate's BatchNorm has one channel)")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} has dtype {t.dtype}, expected one of {tuple(dict.fromkeys(dtypes))}")
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but x is on {x.device}")


def _check_cbam_inputs(x, w1, b1, w2, b2, conv_w, bn_weight, bn_bias, running_mean, running_var, training,
                       momentum, eps, act, gate, pool_types, order):
    """Clear errors naming the argument; returns w1, w2 as (out, in) views and pool_types as a tuple."""
    check_tensor(x, "x", 4)
    C = x.shape[1]
    w1 = as_matrix(w1, "w1", None, C, x)
    if w1.shape[0] == 0:
        raise ValueError(f"w1 has shape {tuple(w1.shape)}: the channel MLP needs at least one hidden channel")
    w2 = as_matrix(w2, "w2", C, w1.shape[0], x)
    check_vector(b1, "b1", w1.shape[0], x)
    check_vector(b2, "b2", C, x)
    check_choice(act, "act", tuple(ACTIVATIONS))
    check_choice(gate, "gate", tuple(GATES))
    if not isinstance(pool_types, (list, tuple)):
        raise TypeError(f"pool_types must be a sequence of pool names, got {type(pool_types).__name__}")
    pool_types = tuple(pool_types)
    if not pool_types:
        raise ValueError("pool_types is empty: the channel gate needs at least one pool")
    for p in pool_types:
        check_choice(p, "pool_types", _REFERENCE_POOL_TYPES)
    check_choice(order, "order", SPOOLS)
    if conv_w is not None:
        _check_conv(conv_w, x, order, x.dtype)
        bn_dtypes = (x.dtype, torch.float32)  # torch's BatchNorm takes fp32 statistics for fp16/bf16 input
        for name, t in (("bn_weight", bn_weight), ("bn_bias", bn_bias), ("running_mean", running_mean),
                        ("running_var", running_var)):
            _check_bn_vector(t, name, x, bn_dtypes)
        if (running_mean is None) != (running_var is None):
            raise ValueError("running_mean and running_var must be given together (or neither)")
        if not training and running_mean is None:
            raise ValueError("running_mean and running_var are needed when training=False (the spatial gate's "
                             "BatchNorm normalizes with them)")
        if training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got x of shape "
                             f"{tuple(x.shape)}: the spatial gate's BatchNorm has N*H*W = 1 value")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
            raise TypeError(f"momentum must be a float, got {type(momentum).__name__} (a module with momentum "
                            f"None passes its cumulative factor, 1 / num_batches_tracked)")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)):
            raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    return w1, w2, pool_types


def _check_op_inputs(x, w1, b1, w2, b2, conv_w, bn_w, bn_b, bn_mean, bn_var, batch_stats, act, gate, pool,
                     spool, backend):
    """The raw ops take what `cbam` passes them: check it, so a direct torch.ops call with other
    inputs gets an error rather than a wrong answer from a kernel that assumes them."""
    check_tensor(x, "x", 4)
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        raise ValueError("x must be contiguous in NCHW or channels_last")
    if x.numel() == 0:
        raise ValueError(f"x of shape {tuple(x.shape)} is empty (cbam runs the reference there)")
    N, C, H, W = x.shape
    for name, w, shape in (("w1", w1, (None, C)), ("w2", w2, (C, w1.shape[0] if isinstance(w1, Tensor) else None))):
        check_tensor(w, name, 2)
        if w.shape[1] != shape[1] or (shape[0] is not None and w.shape[0] != shape[0]) or not w.is_contiguous():
            raise ValueError(f"{name} must be a contiguous {shape} matrix, got shape {tuple(w.shape)}")
        check_like(w, name, x)
    Cr = w1.shape[0]
    for name, b, n in (("b1", b1, Cr), ("b2", b2, C)):
        check_vector(b, name, n, x)
        if b is not None and not b.is_contiguous():
            raise ValueError(f"{name} must be contiguous")
    check_choice(act, "act", tuple(ACTIVATIONS))
    check_choice(gate, "gate", tuple(GATES))
    check_choice(pool, "pool", POOLS)
    check_choice(spool, "spool", SPOOLS)
    check_choice(backend, "backend", ("triton", "cuda", "cuda-emu"))
    if conv_w is None:
        return
    acc = acc_dtype(x.dtype)
    _check_conv(conv_w, x, spool, acc)
    if not conv_w.is_contiguous():
        raise ValueError("conv_w must be contiguous")
    for name, t in (("bn_w", bn_w), ("bn_b", bn_b)) + ((("bn_mean", bn_mean), ("bn_var", bn_var))
                                                       if not batch_stats else ()):
        _check_bn_vector(t, name, x, (acc,))
    if not batch_stats and (bn_mean is None or bn_var is None):
        raise ValueError("bn_mean and bn_var are needed when batch_stats is False")
    if batch_stats and N * H * W == 1:
        raise ValueError("batch statistics of N*H*W = 1 value")


# ---------------------------------------------------------------------------------------------
# custom ops
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("attnkernels::cbam_forward", mutates_args=())
def cbam_forward(x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor],
                 conv_w: Optional[Tensor], bn_w: Optional[Tensor], bn_b: Optional[Tensor],
                 bn_mean: Optional[Tensor], bn_var: Optional[Tensor], eps: float, batch_stats: bool, act: str,
                 gate: str, pool: str, spool: str, backend: str
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    _check_op_inputs(x, w1, b1, w2, b2, conv_w, bn_w, bn_b, bn_mean, bn_var, batch_stats, act, gate, pool, spool,
                     backend)
    return get_impl(backend).cbam_forward(x, w1, b1, w2, b2, conv_w, bn_w, bn_b, bn_mean, bn_var, eps, batch_stats,
                                          act, gate, pool, spool)


@cbam_forward.register_fake
def _(x, w1, b1, w2, b2, conv_w, bn_w, bn_b, bn_mean, bn_var, eps, batch_stats, act, gate, pool, spool, backend):
    N, C, H, W = x.shape
    acc = acc_dtype(x.dtype)
    if conv_w is None:
        m, t, bstat = (x.new_empty((0,), dtype=acc) for _ in range(3))
    else:
        m = x.new_empty((N, conv_w.shape[1], H, W), dtype=acc)
        t, bstat = x.new_empty((N, H, W), dtype=acc), x.new_empty((3,), dtype=acc)
    return (torch.empty_like(x), x.new_empty((N, 2, C), dtype=acc), x.new_empty((N, n_pools(pool), w1.shape[0]), dtype=acc),
            x.new_empty((N, C), dtype=acc), m, t, bstat)


@torch.library.custom_op("attnkernels::cbam_backward", mutates_args=())
def cbam_backward(dy: Tensor, x: Tensor, w1: Tensor, w2: Tensor, conv_w: Optional[Tensor], bn_w: Optional[Tensor],
                  bn_b: Optional[Tensor], pools: Tensor, u: Tensor, z: Tensor, m: Tensor, t: Tensor, bstat: Tensor,
                  batch_stats: bool, act: str, gate: str, pool: str, spool: str, backend: str
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Without conv_w (no spatial gate) dconv_w, dbn_w and dbn_b are empty (0,) tensors."""
    if conv_w is not None and tuple(bstat.shape) != (3,):
        raise ValueError(f"bstat has shape {tuple(bstat.shape)}, expected (3,): [mean, invstd, var]")
    # (bstat's mean and var: what the BatchNorm normalized with, whichever statistics they were)
    _check_op_inputs(x, w1, None, w2, None, conv_w, bn_w, bn_b, bstat[:1], bstat[2:], batch_stats, act, gate, pool,
                     spool, backend)
    check_grad_like(dy, "dy", x)
    return get_impl(backend).cbam_backward(dy, x, w1, w2, conv_w, bn_w, bn_b, pools, u, z, m, t, bstat, batch_stats,
                                           act, gate, pool, spool)


@cbam_backward.register_fake
def _(dy, x, w1, w2, conv_w, bn_w, bn_b, pools, u, z, m, t, bstat, batch_stats, act, gate, pool, spool, backend):
    acc = acc_dtype(x.dtype)
    if conv_w is None:
        dconv_w, dbn_w, dbn_b = (x.new_empty((0,), dtype=acc) for _ in range(3))
    else:
        dconv_w, dbn_w, dbn_b = torch.empty_like(conv_w), x.new_empty((1,), dtype=acc), x.new_empty((1,), dtype=acc)
    return (torch.empty_like(x), torch.empty_like(w1), w1.new_empty((w1.shape[0],)), torch.empty_like(w2),
            w2.new_empty((w2.shape[0],)), dconv_w, dbn_w, dbn_b)


def grads_with_graph(x, w1, b1, w2, b2, conv_w, bn_w, bn_b, bn_mean, bn_var, dy, eps, batch_stats, act, gate, pool,
                     spool):
    """The gradients of the CBAM output (None for an input that is None or wants no gradient) as a
    differentiable function of the inputs and dy: what a backward with create_graph=True needs.
    The kernels' backward is not differentiable, so this runs the reference's eager graph
    (_fused_op.grads_with_graph), with the batch statistics the forward normalized with and no
    running-statistics update (the forward made it)."""
    gate_fn = twice_differentiable_gate(gate)

    def f(x, w1, b1, w2, b2, conv_w, bn_w, bn_b, bn_mean, bn_var):
        return reference.cbam(x, w1, b1, w2, b2, conv_w, bn_w, bn_b, None if batch_stats else bn_mean,
                              None if batch_stats else bn_var, training=batch_stats, momentum=0.0, eps=eps, act=act,
                              gate=gate_fn, pool_types=_POOL_TYPES_OF[pool], order=spool)
    return _grads_with_graph(f, (x, w1, b1, w2, b2, conv_w, bn_w, bn_b, bn_mean, bn_var), dy)


def _setup_context(ctx, inputs, output):
    x, w1, b1, w2, b2, conv_w, bn_w, bn_b, bn_mean, bn_var, eps, batch_stats, act, gate, pool, spool, backend = inputs
    _, pools, u, z, m, t, bstat = output
    ctx.mark_non_differentiable(pools, u, z, m, t, bstat)  # internal vectors and maps
    # the biases and running statistics only for a double backward (grads_with_graph)
    ctx.save_for_backward(x, w1, b1, w2, b2, conv_w, bn_w, bn_b, bn_mean, bn_var, pools, u, z, m, t, bstat)
    ctx.opts = (eps, batch_stats, act, gate, pool, spool, backend)


def _backward(ctx, dy, *_unused_grads):
    x, w1, b1, w2, b2, conv_w, bn_w, bn_b, bn_mean, bn_var, pools, u, z, m, t, bstat = ctx.saved_tensors
    eps, batch_stats, act, gate, pool, spool, backend = ctx.opts
    rest = (None,) * 9  # bn_mean, bn_var and the options
    if torch.is_grad_enabled():  # create_graph=True: a differentiable gradient
        return grads_with_graph(x, w1, b1, w2, b2, conv_w, bn_w, bn_b, bn_mean, bn_var, dy, eps, batch_stats, act,
                                gate, pool, spool)[:8] + rest
    dy = dy.contiguous(memory_format=memory_format_of(x))
    dx, dw1, db1, dw2, db2, dconv_w, dbn_w, dbn_b = cbam_backward(
        dy, x, w1, w2, conv_w, bn_w, bn_b, pools, u, z, m, t, bstat, batch_stats, act, gate, pool, spool, backend)
    spatial = conv_w is not None
    return (dx, dw1, db1 if b1 is not None else None, dw2, db2 if b2 is not None else None,
            dconv_w if spatial else None, dbn_w if spatial and bn_w is not None else None,
            dbn_b if spatial and bn_b is not None else None) + rest


cbam_forward.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------
# functional
# ---------------------------------------------------------------------------------------------
def cbam(x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor], conv_w: Optional[Tensor],
         bn_weight: Optional[Tensor] = None, bn_bias: Optional[Tensor] = None,
         running_mean: Optional[Tensor] = None, running_var: Optional[Tensor] = None, *, training: bool = False,
         momentum: float = 0.01, eps: float = 1e-5, act: str = "relu", gate: str = "sigmoid",
         pool_types: Sequence[str] = ("avg", "max"), order: str = "max_mean",
         backend: Optional[str] = None) -> Tensor:
    """Fused CBAM: x1 = x * gate(sum_p MLP(pool_p(x))), y = x1 * gate(BN(conv_kxk(spool(x1)))).

    The signature, defaults and semantics of attnkernels.reference.cbam (the official
    parameterization by default), plus backend= (None: the one in force, see
    attnkernels.set_backend).
    x: (N, C, H, W), float16/bfloat16/float32/float64, NCHW or channels_last (y keeps x's layout;
    other strides are first copied into channels_last if channels are the innermost dimension,
    else NCHW). w1 (Cr, C) or (Cr, C, 1, 1), w2 (C, Cr) or (C, Cr, 1, 1), b1 (Cr,), b2 (C,) or
    None, conv_w (1, S, k, k), k odd (S = 2 for order "max_mean" / "mean_max", 1 for "avgmax"),
    all x's dtype; or conv_w None: no spatial gate. bn_weight, bn_bias, running_mean, running_var:
    (1,) in x's dtype or float32 (the weight and bias may be None: affine=False).
    training: normalize with the batch's statistics and update running_mean / running_var in
    place (as F.batch_norm, with the factor `momentum`; a module's momentum None is its
    1 / num_batches_tracked); else normalize with the running statistics.
    act: relu | silu | hardswish | gelu | identity; gate: sigmoid | hardsigmoid (both gates).
    pool_types: ("avg",), ("max",), ("avg", "max") / ("max", "avg"), ("avgmax",) run fused; the
    official code's "lp" and "lse" pools, and other combinations, run the reference.
    """
    # (torch.jit's tracer warns about the checks' shape comparisons; torch.compile cannot trace the
    # warnings filter, and needs no quieting)
    with tracer_quiet() if torch.jit.is_tracing() else contextlib.nullcontext():
        w1, w2, pool_types = _check_cbam_inputs(x, w1, b1, w2, b2, conv_w, bn_weight, bn_bias, running_mean,
                                                running_var, training, momentum, eps, act, gate, pool_types, order)
    name = pick_backend(backend, x)
    pool = FUSED_POOL_TYPES.get(pool_types)
    if name == "reference" or pool is None:
        return reference.cbam(x, w1, b1, w2, b2, conv_w, bn_weight, bn_bias, running_mean, running_var,
                              training=training, momentum=momentum, eps=eps, act=act, gate=gate,
                              pool_types=pool_types, order=order)
    x = x.contiguous(memory_format=memory_format_of(x))
    b1 = b1.contiguous() if b1 is not None else None  # the kernels index vectors densely
    b2 = b2.contiguous() if b2 is not None else None
    bn = (None,) * 4
    if conv_w is not None:
        # the spatial gate's parameters in the accumulation dtype (the op casts nothing;
        # autograd casts their gradients back)
        acc = acc_dtype(x.dtype)
        bn = tuple(None if v is None else v.to(acc) for v in
                   (bn_weight, bn_bias, None if training else running_mean, None if training else running_var))
        conv_w = conv_w.to(acc).contiguous()
    y, _, _, _, _, _, bstat = cbam_forward(x, w1.contiguous(), b1, w2.contiguous(), b2, conv_w, *bn, float(eps),
                                           bool(training), act, gate, pool, order, name)
    if conv_w is not None and training:
        N, _, H, W = x.shape
        update_running_stats(running_mean, running_var, float(momentum), bstat[0], bstat[2], N * H * W)
    return y


# ---------------------------------------------------------------------------------------------
# drop-in modules
# ---------------------------------------------------------------------------------------------
def _fused_cbam_call(x, w1, b1, w2, b2, conv_w, bn_weight, bn_bias, running_mean, running_var,
                     num_batches_tracked, bn_training: bool, track_running_stats: bool, momentum: Optional[float],
                     eps: float, act: str, gate: str, pool: str, order: str) -> Tensor:
    """The drop-ins' fused call on their modules' tensors: the weights cast to x's dtype where they
    differ (as autocast casts them for the eager block's convs; the BatchNorm keeps its own, as
    eager BatchNorm does), the BatchNorm's bookkeeping (num_batches_tracked, the factor, batch
    or running statistics) as its forward does it, then `cbam`. A leaf of FX symbolic tracing
    (torch.fx.wrap below): a traced model calls it, fused, with the module's tensors as get_attr
    nodes and its settings as constants, instead of tracing into `cbam`, whose checks a Proxy
    fails."""
    w1, b1, w2, b2, conv_w = cast_params(x.dtype, w1, b1, w2, b2, conv_w)
    opts = dict(act=act, gate=gate, pool_types=_POOL_TYPES_OF[pool], order=order)
    if conv_w is None:
        return cbam(x, w1, b1, w2, b2, None, **opts)
    bn = bn_args_of(bn_weight, bn_bias, running_mean, running_var, num_batches_tracked, bn_training,
                    track_running_stats, momentum, eps)
    return cbam(x, w1, b1, w2, b2, conv_w, bn.weight, bn.bias, bn.running_mean, bn.running_var,
                training=bn.batch_stats, momentum=bn.momentum, eps=bn.eps, **opts)


torch.fx.wrap("_fused_cbam_call")


def fusable_batchnorm(bn: nn.Module) -> bool:
    """A spatial-gate BatchNorm the kernels compute: a plain one (_dropin.plain_batchnorm), or
    timm's BatchNormAct2d as timm's CBAM builds it (ConvNormAct(apply_act=False): BatchNorm2d's
    forward, then an Identity drop and act), without hooks."""
    if plain_batchnorm(bn):
        return True
    cls = type(bn)
    return (cls.__name__ == "BatchNormAct2d" and cls.__module__.startswith("timm.")
            and type(getattr(bn, "drop", None)) is nn.Identity and type(getattr(bn, "act", None)) is nn.Identity
            and not hooked(bn, bn.drop, bn.act))


def fusable_spatial_conv(conv: nn.Module, in_channels: int) -> bool:
    """The spatial gate's conv as the kernels compute it: an nn.Conv2d in_channels -> 1, k x k with
    k odd, stride 1, padding (k - 1) // 2 with zeros, no dilation, groups or bias."""
    if type(conv) is not nn.Conv2d:
        return False
    k = conv.kernel_size[0]
    return (conv.in_channels == in_channels and conv.out_channels == 1 and conv.kernel_size == (k, k)
            and k % 2 == 1 and conv.stride == (1, 1) and conv.padding == ((k - 1) // 2,) * 2
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.bias is None and conv.padding_mode == "zeros")


def _fused_spatial(conv, bn, order: str) -> bool:
    return fusable_spatial_conv(conv, n_spools(order)) and fusable_batchnorm(bn)


class _FusedCBAM(FusedDropin):
    """CBAM's drop-ins: each names its parts (`_parts`: the MLP's two layers and the spatial gate's
    conv and BatchNorm, None without a spatial gate) and the modules whose hooks the fused call
    would skip (`_hookable`)."""

    def _parts(self):
        raise NotImplementedError

    def _hookable(self):
        raise NotImplementedError

    def _fused_call(self, x: Tensor, opts) -> Tensor:
        fc1, fc2, conv, bn = self._parts()
        params = weight_bias_attrs if isinstance(x, torch.fx.Proxy) else weight_bias
        w1, b1 = params(fc1)
        w2, b2 = params(fc2)
        if conv is None:
            return _fused_cbam_call(x, w1, b1, w2, b2, None, None, None, None, None, None, False, False, None, 0.0,
                                    *opts)
        conv_w, _ = params(conv)
        return _fused_cbam_call(x, w1, b1, w2, b2, conv_w, bn.weight, bn.bias, bn.running_mean, bn.running_var,
                                bn.num_batches_tracked, bn.training, bn.track_running_stats, bn.momentum, bn.eps,
                                *opts)


class CBAM(_FusedCBAM, reference.CBAM):
    """Drop-in for the official CBAM (Jongchan/attention-module MODELS/cbam.py): same constructor
    CBAM(gate_channels, reduction_ratio=16, pool_types=['avg', 'max'], no_spatial=False),
    submodules and state_dict. Fused unless its pool types are ones the kernels lack ("lp",
    "lse"), its spatial gate is not the official conv + BatchNorm (a SyncBatchNorm, say), or
    hooks sit on its submodules; then the eager forward."""

    def _parts(self):
        mlp = self.ChannelGate.mlp
        if self.no_spatial:
            return mlp[1], mlp[3], None, None
        spatial = self.SpatialGate.spatial
        return mlp[1], mlp[3], spatial.conv, spatial.bn

    def fused_options(self):
        """(act, gate, pool, order) of the fused op this module runs, or None (eager fallback)."""
        gate_mod = self.ChannelGate
        pool = FUSED_POOL_TYPES.get(tuple(gate_mod.pool_types))
        if pool is None:
            return None
        mods = [gate_mod, *gate_mod.mlp]
        if not self.no_spatial:
            sg = self.SpatialGate
            basic = sg.spatial
            if basic.relu is not None or basic.bn is None or not _fused_spatial(basic.conv, basic.bn, "max_mean"):
                return None
            mods += [sg, sg.compress, basic, basic.conv]
        if hooked(*mods):
            return None
        return "relu", "sigmoid", pool, "max_mean"  # (the official MLP's ReLU and gates)


class _FusedTimmCBAM(_FusedCBAM):
    """timm's two CBAM modules: channel (fc1, act, fc2, gate) and spatial (conv.conv, conv.bn, gate)."""

    _POOL, _ORDER = "avg+max", "mean_max"

    def _parts(self):
        ch, conv = self.channel, self.spatial.conv
        return ch.fc1, ch.fc2, conv.conv, conv.bn

    def _channel_gate(self):
        return gate_name(self.channel.gate)

    def fused_options(self):
        """(act, gate, pool, order) of the fused op this module runs, or None (eager fallback)."""
        ch, sp = self.channel, self.spatial
        act, gate = act_name(ch.act), self._channel_gate()
        if act is None or gate is None or gate_name(sp.gate) != gate:
            return None
        if not _fused_spatial(sp.conv.conv, sp.conv.bn, self._ORDER):
            return None
        if hooked(ch, ch.fc1, ch.act, ch.fc2, ch.gate, sp, sp.conv, sp.conv.conv, sp.gate):
            return None
        return act, gate, self._POOL, self._ORDER


class CbamModule(_FusedTimmCBAM, reference.CbamModule):
    """Drop-in for timm.layers.cbam.CbamModule: same constructor, submodules and state_dict (loads
    timm's with strict=True). Fused unless its activation or gates are ones the kernels lack (or
    its two gates differ), its spatial conv / BatchNorm is not timm's default (a SyncBatchNorm,
    say), or hooks sit on its submodules; then the eager forward."""


class LightCbamModule(_FusedTimmCBAM, reference.LightCbamModule):
    """Drop-in for timm.layers.cbam.LightCbamModule (0.5 * mean + 0.5 * max in both branches, a
    1-channel spatial conv; the channel gate a sigmoid whatever gate_layer says, as in timm):
    same constructor, submodules and state_dict. Fused when the spatial gate is a sigmoid too,
    under CbamModule's other conditions."""

    _POOL, _ORDER = "avgmax", "avgmax"

    def _channel_gate(self):
        return "sigmoid"


# ---------------------------------------------------------------------------------------------
# attnkernels.convert
# ---------------------------------------------------------------------------------------------
def convertible_types() -> dict:
    """The CBAM blocks attnkernels.convert swaps by class: timm's CbamModule and LightCbamModule."""
    try:
        from timm.layers.cbam import CbamModule as TimmCbamModule
        from timm.layers.cbam import LightCbamModule as TimmLightCbamModule
    except Exception:  # timm missing or broken: nothing to swap from it
        return {}
    return {TimmCbamModule: _from_timm, TimmLightCbamModule: _from_timm_light}


def recognizers() -> list:
    """Blocks attnkernels.convert swaps by class name and layout: the official CBAM, which users
    copy into their projects (no importable class to match)."""
    return [(_is_official_cbam, _from_official)]


def _check_same_conv(conv: nn.Module, where: str) -> int:
    """The kernel size of a spatial conv that the drop-ins' own conv (stride 1, padding
    (k - 1) // 2, no bias) reproduces; a ValueError (convert leaves the block) otherwise."""
    k = conv.kernel_size[0] if isinstance(conv, nn.Conv2d) else 0
    if not (isinstance(conv, nn.Conv2d) and type(conv).forward is nn.Conv2d.forward and conv.kernel_size == (k, k)
            and k % 2 == 1 and conv.stride == (1, 1) and conv.padding == ((k - 1) // 2,) * 2
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"):
        raise ValueError(f"{where} is {conv}, not a 'same' k x k conv with k odd")
    return k


def _from_timm(old: nn.Module, cls=CbamModule) -> nn.Module:
    ch, sp = old.channel, old.spatial
    k = _check_same_conv(sp.conv.conv, "spatial.conv.conv")
    new = cls(ch.fc1.in_channels, rd_channels=ch.fc1.out_channels, spatial_kernel_size=k, act_layer=reuse(ch.act),
              mlp_bias=ch.fc1.bias is not None)
    new.channel.gate, new.spatial.gate = ch.gate, sp.gate
    new.spatial.conv.bn = sp.conv.bn  # (timm's BatchNormAct2d, or the SyncBatchNorm it became)
    return new


def _from_timm_light(old: nn.Module) -> nn.Module:
    return _from_timm(old, LightCbamModule)


def _is_official_cbam(module: nn.Module) -> bool:
    """The official CBAM's layout: class CBAM with ChannelGate.mlp = (Flatten, Linear, ReLU,
    Linear), ChannelGate.pool_types, and (unless no_spatial) SpatialGate.spatial.conv / .bn."""
    if type(module).__name__ != "CBAM" or isinstance(module, FusedDropin):
        return False
    gate_mod = getattr(module, "ChannelGate", None)
    mlp = getattr(gate_mod, "mlp", None)
    if not (isinstance(mlp, nn.Sequential) and len(mlp) == 4 and type(mlp[0]).__name__ == "Flatten"
            and isinstance(mlp[1], nn.Linear) and isinstance(mlp[2], nn.ReLU) and isinstance(mlp[3], nn.Linear)
            and hasattr(gate_mod, "pool_types")):
        return False
    if getattr(module, "no_spatial", False):
        return True
    spatial = getattr(getattr(module, "SpatialGate", None), "spatial", None)
    return (isinstance(getattr(spatial, "conv", None), nn.Conv2d)
            and isinstance(getattr(spatial, "bn", None), nn.modules.batchnorm._BatchNorm))


def _from_official(old: nn.Module) -> nn.Module:
    mlp = old.ChannelGate.mlp
    C, Cr = mlp[1].in_features, mlp[1].out_features
    reduction = C // Cr if Cr > 0 else 0
    if reduction < 1 or C // reduction != Cr:  # not built by ChannelGate(C, reduction_ratio)
        raise ValueError(f"ChannelGate.mlp maps {C} -> {Cr} channels, which no reduction_ratio gives")
    no_spatial = bool(old.no_spatial)
    new = CBAM(C, reduction, list(old.ChannelGate.pool_types), no_spatial=no_spatial)
    if not no_spatial:
        spatial = old.SpatialGate.spatial
        k = _check_same_conv(spatial.conv, "SpatialGate.spatial.conv")
        if k != 7:  # (a copy with another kernel size)
            new.SpatialGate = _ref.SpatialGate(k)
        # the old BatchNorm itself: a SyncBatchNorm stays one (and the drop-in runs eagerly)
        new.SpatialGate.spatial.bn = spatial.bn
    return new

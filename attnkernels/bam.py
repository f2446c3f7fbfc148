"""BAM (bottleneck attention module, Park et al. 2018), fused: the ops, their autograd, the
functional API and the drop-in module. Kernels live in attnkernels/triton/bam.py and csrc/bam/
(attnkernels/cuda/bam.py); the spec is attnkernels/reference/bam.py.

The spatial branch (a 1x1 reduce conv, two dilated 3x3 convs and a 1x1 conv to one channel, with
BatchNorm2d and ReLU) stays on torch's convolutions and autograd: its output Ms is an input of the
fused op, which returns its gradient. The channel branch (the mean over HW, Linear, BatchNorm1d,
ReLU, Linear), the combination with Ms, the sigmoid, the `1 +` and the rescale are fused.

Backend contract (attnkernels.triton and attnkernels.cuda implement bam_forward / bam_backward):
  bam_forward(x, ms, w0, b0, w1, b1, bn_w, bn_b, bn_mean, bn_var, eps, batch_stats, combine)
      -> (y, p, u, mc, bstat)
    x (N, C, H, W), numel > 0, contiguous NCHW or channels_last; ms (N, H*W) contiguous; w0 (Cr, C),
    w1 (C, Cr) contiguous; b0 (Cr,), b1 (C,) or None: all of x's dtype and device. bn_w, bn_b (Cr,)
    in the accumulation dtype (fp64 for fp64 x, else fp32) or None (affine=False); bn_mean, bn_var
    (Cr,) accumulation dtype, the running statistics to normalize with (eval), None when
    batch_stats (the batch's mean and biased variance over the N samples). combine "prod" | "sum".
    y like x (same memory format); p (N, C) = mean_hw x; u (N, Cr) = w0 p + b0 (before the
    BatchNorm); mc (N, C) = w1 relu(bn(u)) + b1; bstat (3, Cr) = [mean, invstd, var] the BatchNorm
    used: all in the accumulation dtype.
  bam_backward(dy, x, ms, w0, w1, bn_w, bn_b, p, u, mc, bstat, batch_stats, combine)
      -> (dx, dms, dw0, db0, dw1, db1, dbn_w, dbn_b)
    dy like x. dx like x: the gradient through the channel branch and the gate (autograd adds the
    spatial branch's); dms (N, H*W), dw0, db0 (Cr,), dw1, db1 (C,) in x's dtype; dbn_w, dbn_b (Cr,)
    in the accumulation dtype. In training the BatchNorm's backward has the batch statistics'
    terms.
The ops are functional: `bam` updates the running statistics from bstat after the op.
"""
from __future__ import annotations

import contextlib
import numbers
from typing import Optional

import torch
from torch import Tensor, nn

from . import reference
from ._alloc import acc_dtype
from ._dropin import FusedDropin, bn_args, cast_params, hooked, plain_batchnorm, update_running_stats, weight_bias
from ._fused_op import grads_with_graph, pick_backend, tracer_quiet
from ._validate import as_matrix, check_choice, check_grad_like, check_tensor, check_vector, memory_format_of
from .backend import get_impl
from .reference.bam import COMBINES, Flatten

KERNEL_BACKENDS = ("triton", "cuda", "cuda-emu")


# ---------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------
def _check_bn_vector(t, name: str, size: int, x: Tensor):
    """A BatchNorm vector: (size,), floating, on x's device; any floating dtype (a BatchNorm keeps
    its parameters and statistics in float32 under a bfloat16 model, as autocast runs it)."""
    if t is None:
        return None
    check_tensor(t, name, 1)
    if t.shape[0] != size:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected ({size},)")
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    return t


def _check_bam_inputs(x, ms, w0, b0, w1, b1, bn_weight, bn_bias, running_mean, running_var, training,
                      momentum, eps, combine):
    """Clear errors naming the argument; returns w0, w1 as (out, in) views."""
    check_tensor(x, "x", 4)
    N, C, H, W = x.shape
    check_tensor(ms, "ms", (3, 4))
    if tuple(ms.shape) not in ((N, 1, H, W), (N, H, W)):
        raise ValueError(f"ms has shape {tuple(ms.shape)}, expected {(N, 1, H, W)} or {(N, H, W)} (x is {tuple(x.shape)})")
    if ms.device != x.device:
        raise ValueError(f"ms is on {ms.device} but x is on {x.device}")
    w0 = as_matrix(w0, "w0", None, C, x)
    Cr = w0.shape[0]
    if Cr == 0:
        raise ValueError(f"w0 has shape {tuple(w0.shape)}: the channel branch needs at least one hidden channel")
    w1 = as_matrix(w1, "w1", C, Cr, x)
    check_vector(b0, "b0", Cr, x)
    check_vector(b1, "b1", C, x)
    for t, name in ((bn_weight, "bn_weight"), (bn_bias, "bn_bias"), (running_mean, "running_mean"),
                    (running_var, "running_var")):
        _check_bn_vector(t, name, Cr, x)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together or both be None")
    if not isinstance(training, bool):
        raise TypeError(f"training must be a bool, got {type(training).__name__}")
    for value, name in ((momentum, "momentum"), (eps, "eps")):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    check_choice(combine, "combine", COMBINES)
    if not training and running_mean is None:
        raise ValueError("training=False normalizes with the running statistics: running_mean and running_var "
                         "are required (training=True uses the batch's)")
    if training and N == 1:  # (as torch's BatchNorm1d: one value a channel has no variance)
        raise ValueError(f"training=True needs more than one sample for the BatchNorm's batch statistics, "
                         f"got x of shape {tuple(x.shape)}")
    return w0, w1


def _check_op_inputs(x, ms, w0, b0, w1, b1, bn_w, bn_b, bn_mean, bn_var, batch_stats, combine, backend):
    """The raw ops take what `bam` passes them: check it, so a direct torch.ops call with other
    inputs gets an error rather than a wrong answer from a kernel that assumes them."""
    check_tensor(x, "x", 4)
    if x.numel() == 0:
        raise ValueError("x is empty: the kernels need N, C, H, W > 0")
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        raise ValueError("x must be contiguous in NCHW or channels_last")
    N, C, H, W = x.shape
    check_tensor(ms, "ms", 2)
    if tuple(ms.shape) != (N, H * W) or not ms.is_contiguous():
        raise ValueError(f"ms must be a contiguous ({N}, {H * W}) tensor, got {tuple(ms.shape)}")
    for t, name in ((ms, "ms"), (w0, "w0"), (w1, "w1")):
        check_tensor(t, name)
        if t.dtype != x.dtype or t.device != x.device or not t.is_contiguous():
            raise ValueError(f"{name} must be a contiguous tensor of x's dtype and device")
    Cr = w0.shape[0] if w0.dim() == 2 else 0
    if w0.shape != (Cr, C) or w1.shape != (C, Cr) or Cr == 0:
        raise ValueError(f"w0 must be (Cr, C) and w1 (C, Cr), Cr > 0: got {tuple(w0.shape)}, {tuple(w1.shape)}")
    check_vector(b0, "b0", Cr, x)
    check_vector(b1, "b1", C, x)
    acc = acc_dtype(x.dtype)
    for t, name in ((bn_w, "bn_weight"), (bn_b, "bn_bias"), (bn_mean, "running_mean"), (bn_var, "running_var")):
        if t is not None and (t.shape != (Cr,) or t.dtype != acc or t.device != x.device or not t.is_contiguous()):
            raise ValueError(f"{name} must be a contiguous ({Cr},) tensor of dtype {acc} on x's device")
    if (bn_w is None) != (bn_b is None):
        raise ValueError("bn_weight and bn_bias must be given together or both be None")
    if not batch_stats and (bn_mean is None or bn_var is None):
        raise ValueError("batch_stats=False needs running_mean and running_var")
    check_choice(combine, "combine", COMBINES)
    check_choice(backend, "backend", KERNEL_BACKENDS)


# ---------------------------------------------------------------------------------------------
# custom ops
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("attnkernels::bam_forward", mutates_args=())
def bam_forward(x: Tensor, ms: Tensor, w0: Tensor, b0: Optional[Tensor], w1: Tensor, b1: Optional[Tensor],
                bn_weight: Optional[Tensor], bn_bias: Optional[Tensor], running_mean: Optional[Tensor],
                running_var: Optional[Tensor], eps: float, batch_stats: bool, combine: str, backend: str
                ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (y, p, u, mc, bstat): the backend contract's bam_forward (module docstring). The running
    statistics are read (batch_stats False), never written: `bam` updates them from bstat."""
    _check_op_inputs(x, ms, w0, b0, w1, b1, bn_weight, bn_bias, running_mean, running_var, batch_stats,
                     combine, backend)
    if batch_stats:
        running_mean = running_var = None
    return get_impl(backend).bam_forward(x, ms, w0, b0, w1, b1, bn_weight, bn_bias, running_mean, running_var,
                                         float(eps), bool(batch_stats), combine)


@bam_forward.register_fake
def _(x, ms, w0, b0, w1, b1, bn_weight, bn_bias, running_mean, running_var, eps, batch_stats, combine, backend):
    N, C = x.shape[:2]
    Cr = w0.shape[0]
    acc = acc_dtype(x.dtype)
    return (torch.empty_like(x), x.new_empty((N, C), dtype=acc), x.new_empty((N, Cr), dtype=acc),
            x.new_empty((N, C), dtype=acc), x.new_empty((3, Cr), dtype=acc))


@torch.library.custom_op("attnkernels::bam_backward", mutates_args=())
def bam_backward(dy: Tensor, x: Tensor, ms: Tensor, w0: Tensor, w1: Tensor, bn_weight: Optional[Tensor],
                 bn_bias: Optional[Tensor], p: Tensor, u: Tensor, mc: Tensor, bstat: Tensor, batch_stats: bool,
                 combine: str, backend: str
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (dx, dms, dw0, db0, dw1, db1, dbn_w, dbn_b): the backend contract's bam_backward."""
    _check_op_inputs(x, ms, w0, None, w1, None, bn_weight, bn_bias, None, None, True, combine, backend)
    check_grad_like(dy, "dy", x)
    N, C = x.shape[:2]
    Cr = w0.shape[0]
    acc = acc_dtype(x.dtype)
    for t, name, shape in ((p, "p", (N, C)), (u, "u", (N, Cr)), (mc, "mc", (N, C)), (bstat, "bstat", (3, Cr))):
        if t.shape != shape or t.dtype != acc or not t.is_contiguous():
            raise ValueError(f"{name} must be a contiguous {shape} tensor of dtype {acc} (bam_forward's)")
    return get_impl(backend).bam_backward(dy, x, ms, w0, w1, bn_weight, bn_bias, p, u, mc, bstat,
                                          bool(batch_stats), combine)


@bam_backward.register_fake
def _(dy, x, ms, w0, w1, bn_weight, bn_bias, p, u, mc, bstat, batch_stats, combine, backend):
    Cr, C = w0.shape
    acc = acc_dtype(x.dtype)
    return (torch.empty_like(x), torch.empty_like(ms), torch.empty_like(w0), w0.new_empty((Cr,)),
            torch.empty_like(w1), w1.new_empty((C,)), x.new_empty((Cr,), dtype=acc), x.new_empty((Cr,), dtype=acc))


_INPUTS = ("x", "ms", "w0", "b0", "w1", "b1", "bn_weight", "bn_bias", "running_mean", "running_var")


def _setup_context(ctx, inputs, output):
    _, p, u, mc, bstat = output
    ctx.mark_non_differentiable(p, u, mc, bstat)  # internal vectors
    eps, batch_stats, combine, backend = inputs[len(_INPUTS):]
    ctx.save_for_backward(*inputs[:len(_INPUTS)], p, u, mc, bstat)
    ctx.opts = (eps, batch_stats, combine, backend)


def _backward(ctx, dy, *_unused_grads):
    x, ms, w0, b0, w1, b1, bn_w, bn_b, rm, rv, p, u, mc, bstat = ctx.saved_tensors
    eps, batch_stats, combine, backend = ctx.opts
    tail = (None,) * 6  # running_mean, running_var, eps, batch_stats, combine, backend
    if torch.is_grad_enabled():  # create_graph=True: a differentiable gradient
        return _grads_with_graph(x, ms, w0, b0, w1, b1, bn_w, bn_b, rm, rv, dy, eps, batch_stats, combine) + tail
    dy = dy.contiguous(memory_format=memory_format_of(x))
    dx, dms, dw0, db0, dw1, db1, dbn_w, dbn_b = bam_backward(dy, x, ms, w0, w1, bn_w, bn_b, p, u, mc, bstat,
                                                             batch_stats, combine, backend)
    return (dx, dms, dw0, db0 if b0 is not None else None, dw1, db1 if b1 is not None else None,
            dbn_w if bn_w is not None else None, dbn_b if bn_b is not None else None) + tail


def _grads_with_graph(x, ms, w0, b0, w1, b1, bn_w, bn_b, rm, rv, dy, eps, batch_stats, combine):
    """The gradients of the op's output w.r.t. its first 8 inputs as a differentiable function of
    the inputs and dy (a double backward): the reference's eager graph (_fused_op.grads_with_graph),
    with the statistics the op used (the batch's, without a running-statistics update, or the
    running ones)."""
    N, _, H, W = x.shape

    def fn(x, ms, w0, b0, w1, b1, bn_w, bn_b, rm, rv):
        bn = (bn_w, bn_b, None, None) if batch_stats else (bn_w, bn_b, rm, rv)
        mc = reference.bam_channel(x, w0, b0, bn, w1, b1, training=batch_stats, eps=eps)
        return reference.bam_gate(x, mc, ms.view(N, H, W), combine)
    return grads_with_graph(fn, (x, ms, w0, b0, w1, b1, bn_w, bn_b, rm, rv), dy)[:8]


bam_forward.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------
# functional
# ---------------------------------------------------------------------------------------------
def bam(x: Tensor, ms: Tensor, w0: Tensor, b0: Optional[Tensor], w1: Tensor, b1: Optional[Tensor],
        bn_weight: Optional[Tensor] = None, bn_bias: Optional[Tensor] = None,
        running_mean: Optional[Tensor] = None, running_var: Optional[Tensor] = None, *,
        training: bool = False, momentum: float = 0.1, eps: float = 1e-5, combine: str = "prod",
        backend: Optional[str] = None) -> Tensor:
    """Fused BAM gate: y = x * (1 + sigmoid(Mc (op) ms)), with the channel attention
    Mc = w1 @ relu(BatchNorm1d(w0 @ mean_hw(x) + b0)) + b1 (N, C) and op = * (combine="prod", the
    official code and its released weights) or + (combine="sum", the paper).

    x: (N, C, H, W), float16/bfloat16/float32/float64, NCHW or channels_last (y keeps x's
    layout; other strides are first copied into channels_last if channels are the innermost
    dimension, else NCHW). The mean is the true global mean over H x W (non-square and 1x1 maps
    too), not the official code's H x H window.
    ms: the spatial attention Ms, (N, 1, H, W) or (N, H, W), any floating dtype (cast to x's); its
    gradient flows back into whatever computed it (BAM's dilated-conv branch).
    w0: (Cr, C) or (Cr, C, 1, 1); w1: (C, Cr) or (C, Cr, 1, 1); b0 (Cr,), b1 (C,) or None: x's
    dtype.
    bn_weight, bn_bias: the BatchNorm1d's affine parameters (Cr,) or None (affine=False);
    running_mean, running_var: its running statistics (Cr,) or None (track_running_stats=False);
    any floating dtype, as F.batch_norm takes them.
    training: True normalizes with the batch's statistics over the N samples (N > 1) and updates
    running_mean / running_var in place as F.batch_norm does (momentum; the unbiased variance);
    False normalizes with the running statistics.
    backend: None (the one in force, see attnkernels.set_backend) or a backend name.
    """
    # (torch.jit's tracer warns that the checks' shape comparisons become constants: they check
    # the traced call; only then, since torch.compile would break its graph at catch_warnings)
    with tracer_quiet() if torch.jit.is_tracing() else contextlib.nullcontext():
        w0, w1 = _check_bam_inputs(x, ms, w0, b0, w1, b1, bn_weight, bn_bias, running_mean, running_var,
                                   training, momentum, eps, combine)
    name = pick_backend(backend, x)
    if name == "reference":
        bn = (bn_weight, bn_bias, running_mean, running_var)
        mc = reference.bam_channel(x, w0, b0, bn, w1, b1, training=training, momentum=momentum, eps=eps)
        return reference.bam_gate(x, mc, ms, combine)
    N, _, H, W = x.shape
    acc = acc_dtype(x.dtype)
    x = x.contiguous(memory_format=memory_format_of(x))
    ms = ms.reshape(N, H * W).to(x.dtype).contiguous()
    b0 = b0.contiguous() if b0 is not None else None  # the kernels index vectors densely
    b1 = b1.contiguous() if b1 is not None else None
    bn_w, bn_b, rm, rv = (None if t is None else t.to(acc).contiguous()
                          for t in (bn_weight, bn_bias, None if training else running_mean,
                                    None if training else running_var))
    if (bn_w is None) != (bn_b is None):  # F.batch_norm takes either alone: the other is the identity's
        bn_w = torch.ones_like(bn_b) if bn_w is None else bn_w
        bn_b = torch.zeros_like(bn_w) if bn_b is None else bn_b
    y, _, _, _, bstat = bam_forward(x, ms, w0.contiguous(), b0, w1.contiguous(), b1, bn_w, bn_b, rm, rv,
                                    float(eps), training, combine, name)
    if training:
        update_running_stats(running_mean, running_var, float(momentum), bstat[0], bstat[2], N)
    return y


# ---------------------------------------------------------------------------------------------
# drop-in module
# ---------------------------------------------------------------------------------------------
_GATE_C = ("flatten", "gate_c_fc_0", "gate_c_bn_1", "gate_c_relu_1", "gate_c_fc_final")


def _fused_bam_call(x: Tensor, ms: Tensor, fc0: nn.Module, bn: nn.Module, fc1: nn.Module, combine: str) -> Tensor:
    """The drop-in's fused call on its channel gate's modules: the Linears' parameters cast to x's
    dtype where they differ (as autocast casts them for the eager block's Linears), the
    BatchNorm's bookkeeping (num_batches_tracked, which statistics, the running update) as its
    forward does it. A leaf of FX symbolic tracing (torch.fx.wrap below; the modules become
    get_attr nodes): a traced model calls it, fused, at run time, so the BatchNorm's bookkeeping
    happens at each call, not once at trace time."""
    w0, b0 = weight_bias(fc0)
    w1, b1 = weight_bias(fc1)
    w0, b0, w1, b1 = cast_params(x.dtype, w0, b0, w1, b1)
    a = bn_args(bn)
    return bam(x, ms, w0, b0, w1, b1, a.weight, a.bias, a.running_mean, a.running_var,
               training=a.batch_stats, momentum=a.momentum, eps=a.eps, combine=combine)


torch.fx.wrap("_fused_bam_call")


class BAM(FusedDropin, reference.BAM):
    """Drop-in for attnkernels.reference.BAM (the official BAM's layout: same constructor,
    submodules and state_dict keys; combine "prod" (official) or "sum" (paper)). forward: Ms =
    spatial_att(x) through its torch modules, then the fused op on the channel gate's parameters
    (BatchNorm1d in train or eval mode, its running statistics updated as its own forward
    does). Eager (the reference forward) when num_layers != 1, the BatchNorm is not a plain
    nn.BatchNorm1d (SyncBatchNorm, a subclass), hooks sit on the channel gate's modules, or one of
    them was replaced (another activation than nn.ReLU, another flatten or Linear)."""

    def _channel_modules(self):
        """(fc0, bn, fc1) of the channel gate if the fused op can run it, else None."""
        gate_c = self.channel_att._modules.get("gate_c")
        mods = None if gate_c is None else gate_c._modules
        if mods is None or tuple(mods) != _GATE_C:  # (num_layers != 1 too)
            return None
        flatten, fc0, bn, relu, fc1 = (mods[k] for k in _GATE_C)
        if (type(flatten) is not Flatten or type(relu) is not nn.ReLU or type(fc0) is not nn.Linear
                or type(fc1) is not nn.Linear or not plain_batchnorm(bn)
                or hooked(self.channel_att, gate_c, flatten, fc0, relu, fc1)):
            return None
        return fc0, bn, fc1

    def fused_options(self):
        """(combine,) of the fused op this module runs, or None (eager fallback)."""
        return None if self._channel_modules() is None else (self.combine,)

    def _fused_call(self, x: Tensor, opts) -> Tensor:
        mods = self.channel_att._modules["gate_c"]._modules  # (as fused_options() just checked them)
        fc0, bn, fc1 = mods["gate_c_fc_0"], mods["gate_c_bn_1"], mods["gate_c_fc_final"]
        batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
        # (the batch size compared last: in eval mode torch.jit.trace sees no size comparison to warn about)
        if not isinstance(x, torch.fx.Proxy) and batch_stats and x.shape[0] == 1:
            # batch statistics of one sample: the eager forward raises BatchNorm1d's error, with
            # the bookkeeping it does before (the spatial branch has not run yet)
            return self._eager_forward(x)
        ms = self.spatial_att(x)
        return _fused_bam_call(x, ms, fc0, bn, fc1, opts[0])


# ---------------------------------------------------------------------------------------------
# attnkernels.convert
# ---------------------------------------------------------------------------------------------
def convertible_types() -> dict:
    """{attnkernels.reference.BAM: builder}: the BAM blocks attnkernels.convert swaps by class."""
    return {reference.BAM: _from_reference}


def _from_reference(old: nn.Module) -> nn.Module:
    return _build(old, old.combine)


_GATE_S_HEAD = ("gate_s_conv_reduce0", "gate_s_bn_reduce0", "gate_s_relu_reduce0")


def _is_official_bam(m: nn.Module) -> bool:
    """The official BAM (Jongchan/attention-module MODELS/bam.py), as copied into a project: a
    class named BAM whose channel_att.gate_c and spatial_att.gate_s have the official submodules
    (any num_layers and dilation_conv_num). Ours (and the reference's, matched by class) excluded."""
    if type(m).__name__ != "BAM" or isinstance(m, (FusedDropin, reference.BAM)):
        return False
    gate_c = getattr(m._modules.get("channel_att"), "gate_c", None)
    gate_s = getattr(m._modules.get("spatial_att"), "gate_s", None)
    if not isinstance(gate_c, nn.Sequential) or not isinstance(gate_s, nn.Sequential):
        return False
    c, s = list(gate_c._modules), list(gate_s._modules)
    return (len(c) >= 5 and c[0] == "flatten" and c[1] == "gate_c_fc_0" and c[-1] == "gate_c_fc_final"
            and tuple(s[:3]) == _GATE_S_HEAD and s[-1] == "gate_s_conv_final")


def _from_official(old: nn.Module) -> nn.Module:
    return _build(old, "prod")  # (the official forward multiplies the branches)


def _build(old: nn.Module, combine: str) -> nn.Module:
    """Our BAM with old's configuration read off its modules (the state_dict comes after)."""
    gate_c, gate_s = old.channel_att.gate_c, old.spatial_att.gate_s
    fc0 = gate_c.gate_c_fc_0
    C, Cr = fc0.in_features, fc0.out_features
    reduction = C // Cr if Cr > 0 else 0
    if reduction < 1 or C // reduction != Cr:  # not built by BAM(C, reduction_ratio)
        raise ValueError(f"gate_c_fc_0 maps {C} -> {Cr} channels, which no reduction_ratio gives")
    num_layers = sum(1 for k in gate_c._modules if k.startswith("gate_c_fc_") and k != "gate_c_fc_final")
    dilated = [gate_s._modules[k] for k in gate_s._modules if k.startswith("gate_s_conv_di_")]
    dilation = dilated[0].dilation[0] if dilated else 4
    return BAM(C, reduction, num_layers=num_layers, dilation_conv_num=len(dilated), dilation_val=dilation,
               combine=combine)


def recognizers() -> list:
    """[(test, builder)]: the official BAM code, known by class name and submodule layout."""
    return [(_is_official_bam, _from_official)]

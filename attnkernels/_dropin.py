"""What the drop-in modules of every op share (the SE, CBAM, BAM and SCA modules).

A drop-in subclasses the reference module it replaces (attnkernels.reference: same constructor,
submodules and state_dict) and `FusedDropin`, whose forward runs the fused op when the module's
configuration is one the kernels have (`fused_options()` is not None), else the reference's eager
forward (`_eager_forward`). TorchScript compiles the eager forward only. The helpers below read
parameters fast, detect hooks that the fused call would skip, and run a BatchNorm's bookkeeping
(the running statistics) exactly as nn.BatchNorm does around the statistics a kernel computed.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _module_hooks


def hooked(*modules: nn.Module) -> bool:
    """True if calling these modules would run hooks (their own, or global module hooks):
    pruning, weight/spectral norm and the like recompute `weight` in a forward pre-hook, and the
    fused ops read the weights without calling the modules, so such a block runs eagerly."""
    if _module_hooks._global_forward_pre_hooks or _module_hooks._global_forward_hooks:
        return True
    return any(m._forward_pre_hooks or m._forward_hooks for m in modules)


def weight_bias(module: nn.Module):
    """A conv's or Linear's (weight, bias). Read from _parameters (nn.Module.__getattr__ costs
    ~0.7 us a lookup, and a forward runs several); a parametrized weight (a property, not in
    _parameters) through the attribute. Under FX symbolic tracing, through the attributes: the
    tracer's get_attr proxies, so the traced graph reads the module's parameters."""
    params = module._parameters
    w = params.get("weight")
    if w is None:
        w = module.weight
    return w, params["bias"] if "bias" in params else module.bias


def weight_bias_attrs(module: nn.Module):
    """(weight, bias) through the attributes (FX symbolic tracing: get_attr proxies)."""
    return module.weight, module.bias


def reuse(module: nn.Module):
    """A constructor argument (an act_layer, a norm_layer) that yields an existing module instance,
    reused, not copied: convert() keeps the old block's activation, gate and norm modules."""
    return lambda *args, **kwargs: module


def cast_params(dtype: torch.dtype, *tensors: Optional[Tensor]):
    """The parameters in x's dtype where they differ (as autocast casts them for the eager
    block's convs and Linears): fp32 weights with a bf16 input, say."""
    return tuple(t if t is None or t.dtype == dtype else t.to(dtype) for t in tensors)


_PLAIN_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def plain_batchnorm(bn: nn.Module) -> bool:
    """A BatchNorm the kernels can compute: exactly nn.BatchNorm1d/2d (not SyncBatchNorm, whose
    statistics span processes and must never be computed locally, nor a subclass that may
    override forward), without hooks."""
    return type(bn) in _PLAIN_BN and not hooked(bn)


class BNArgs(NamedTuple):
    """How a BatchNorm module normalizes in this call, as nn.BatchNorm's forward decides it."""
    weight: Optional[Tensor]
    bias: Optional[Tensor]
    batch_stats: bool                 # normalize with the batch's statistics (else the running ones)
    running_mean: Optional[Tensor]    # eval: what to normalize with; train: what to update (or None)
    running_var: Optional[Tensor]
    momentum: float                   # the update's factor (momentum None: 1 / num_batches_tracked)
    eps: float


def bn_args(bn: nn.modules.batchnorm._BatchNorm) -> BNArgs:
    """nn.BatchNorm's forward up to its F.batch_norm call: counts the batch in num_batches_tracked
    when it will update the running statistics, and picks the factor and the statistics."""
    return bn_args_of(bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.num_batches_tracked, bn.training,
                      bn.track_running_stats, bn.momentum, bn.eps)


def bn_args_of(weight: Optional[Tensor], bias: Optional[Tensor], running_mean: Optional[Tensor],
               running_var: Optional[Tensor], num_batches_tracked: Optional[Tensor], training: bool,
               track_running_stats: bool, momentum: Optional[float], eps: float) -> BNArgs:
    """bn_args from a BatchNorm's tensors and settings rather than the module: what a function
    that FX symbolic tracing keeps as a leaf (the module's tensors reach it as get_attr nodes,
    its settings as constants) runs when the traced graph runs."""
    factor = 0.0 if momentum is None else momentum
    if training and track_running_stats and num_batches_tracked is not None:
        num_batches_tracked.add_(1)
        factor = 1.0 / float(num_batches_tracked) if momentum is None else momentum
    batch_stats = training or (running_mean is None and running_var is None)
    track = not training or track_running_stats
    return BNArgs(weight, bias, batch_stats, running_mean if track else None,
                  running_var if track else None, float(factor), float(eps))


def update_running_stats(running_mean: Optional[Tensor], running_var: Optional[Tensor], momentum: float,
                         batch_mean: Tensor, batch_var: Tensor, count: int) -> None:
    """What F.batch_norm does to the running statistics in training mode, from the batch's mean
    and biased variance over `count` values a channel (the kernels return those):
    running = (1 - momentum) * running + momentum * batch, with the unbiased variance."""
    if running_mean is None:
        return
    with torch.no_grad():
        mean = batch_mean.to(running_mean.dtype)
        var = (batch_var * (count / (count - 1))).to(running_var.dtype)
        running_mean.copy_(momentum * mean + (1 - momentum) * running_mean)
        running_var.copy_(momentum * var + (1 - momentum) * running_var)


class FusedDropin:
    """The drop-ins' forward: the fused op when fused_options() says the kernels can run this
    configuration, else the eager forward of the module replaced (`_eager_forward`, from the
    reference class next in the MRO). torch.jit.script compiles the eager forward only (the fused
    path is `torch.jit.unused`), so a scripted model runs the eager block. Subclasses implement
    fused_options() and _fused_call(x, options)."""

    def fused_options(self):
        """The fused op's options for this module as it is configured now (a tuple of strings,
        which convert_report counts), or None: the eager fallback."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # TorchScript: the eager forward of the block replaced
            return self._eager_forward(x)
        return self._fused_forward(x)

    @torch.jit.unused
    def _fused_forward(self, x: Tensor) -> Tensor:
        opts = self.fused_options()
        if opts is None:
            return self._eager_forward(x)
        return self._fused_call(x, opts)

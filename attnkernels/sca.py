"""SCA (SCA-CNN spatial and channel-wise attention, Chen et al., CVPR 2017), fused: the custom ops,
their autograd, the functional `sca` and the drop-in `SCA`. Kernels: attnkernels/triton/sca.py
(whose docstring holds the backend contract) and csrc/sca/ (attnkernels/cuda); the spec is
attnkernels/reference/sca.py.

One autograd path: the custom op attnkernels::sca_forward, whose registered backward calls
attnkernels::sca_backward, eagerly and under torch.compile alike; a backward with create_graph=True
differentiates the reference's graph instead (_fused_op.grads_with_graph). The returned attention
maps are differentiable too: their gradients enter the softmax backward of the kernels.
"""
from __future__ import annotations

import numbers
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from . import reference
from ._alloc import acc_dtype
from ._dropin import FusedDropin, cast_params, weight_bias, weight_bias_attrs
from ._fused_op import grads_with_graph, pick_backend, tracer_quiet
from ._validate import check_choice, check_grad_like, check_like, check_tensor, memory_format_of
from .backend import get_impl
from .reference.sca import ORDERS

_KERNEL_BACKENDS = ("triton", "cuda", "cuda-emu")


# ---------------------------------------------------------------------------------------------
# input checks (once, at the functional's entry; the raw ops repeat the cheap ones)
# ---------------------------------------------------------------------------------------------
def _units_vector(t, name: str, k: int, V: Tensor) -> Tensor:
    """A (k,) parameter, also given as a Linear's (k, 1) or (1, k) weight: as a flat (k,) view."""
    if t is None:
        raise ValueError(f"{name} is None, but the order's branch needs it")
    check_tensor(t, name)
    if t.dim() > 2 or t.numel() != k or (t.dim() == 2 and 1 not in t.shape):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected ({k},) (or ({k}, 1) / (1, {k}))")
    return check_like(t, name, V, "V").reshape(k)


def _units_matrix(W, name: str, cols: int, what: str, V: Tensor) -> Tensor:
    if W is None:
        raise ValueError(f"{name} is None, but the order's branch needs it")
    check_tensor(W, name, 2)
    check_like(W, name, V, "V")
    if W.shape[0] == 0:
        raise ValueError(f"{name} has shape {tuple(W.shape)}: the attention needs at least one unit")
    if W.shape[1] != cols:
        raise ValueError(f"{name} has shape {tuple(W.shape)}, expected (k, {cols}) ({what})")
    return W


def _score_bias(c, name: str, V: Tensor):
    """c_c / c_s: a number or a one-element tensor (a Linear(k, 1)'s bias). Returns it as a tensor
    or None (a number: no gradient; no kernel reads it, see triton/sca.py)."""
    if isinstance(c, Tensor):
        check_tensor(c, name)
        if c.numel() != 1:
            raise ValueError(f"{name} has shape {tuple(c.shape)}, expected one element")
        return check_like(c, name, V, "V")
    if isinstance(c, numbers.Real) and not isinstance(c, bool):
        return None
    raise TypeError(f"{name} must be a number or a one-element tensor, got {type(c).__name__}")


def _check_sca_inputs(V, h, w_c, b_c, W_hc, u_c, c_c, W_s, b_s, W_hs, u_s, c_s, order, scale, return_attention):
    """Clear errors naming the argument; returns the branch parameters as the kernels take them
    (flat vectors, (k, .) matrices; c_c / c_s as tensors or None; an absent branch's all None)."""
    check_choice(order, "order", ORDERS)
    for flag, fname in ((scale, "scale"), (return_attention, "return_attention")):
        if not isinstance(flag, bool):
            raise TypeError(f"{fname} must be a bool, got {type(flag).__name__}")
    check_tensor(V, "V", 4)
    check_tensor(h, "h", 2)
    check_like(h, "h", V, "V")
    N, C = V.shape[:2]
    if h.shape[0] != N:
        raise ValueError(f"h has shape {tuple(h.shape)}: its batch {h.shape[0]} is not V's {N}")
    d = h.shape[1]
    channel = spatial = (None,) * 5
    if "c" in order:
        W_hc = _units_matrix(W_hc, "W_hc", d, "h's width d", V)
        k = W_hc.shape[0]
        channel = (_units_vector(w_c, "w_c", k, V), _units_vector(b_c, "b_c", k, V), W_hc,
                   _units_vector(u_c, "u_c", k, V), _score_bias(c_c, "c_c", V))
    if "s" in order:
        W_s = _units_matrix(W_s, "W_s", C, "V's channels C", V)
        k = W_s.shape[0]
        W_hs = _units_matrix(W_hs, "W_hs", d, "h's width d", V)
        if W_hs.shape[0] != k:
            raise ValueError(f"W_hs has shape {tuple(W_hs.shape)}, expected ({k}, {d}) (W_s has {k} units)")
        spatial = (W_s, _units_vector(b_s, "b_s", k, V), W_hs, _units_vector(u_s, "u_s", k, V),
                   _score_bias(c_s, "c_s", V))
    return channel, spatial


def _check_op_inputs(V, h, w_c, b_c, W_hc, u_c, W_s, b_s, W_hs, u_s, order, backend):
    """The raw ops take what `sca` passes them: check that, so a direct torch.ops call with other
    inputs gets an error rather than a wrong answer (or an out-of-bounds access) from a kernel
    that assumes them."""
    check_choice(backend, "backend", _KERNEL_BACKENDS)
    _check_sca_inputs(V, h, w_c, b_c, W_hc, u_c, 0.0, W_s, b_s, W_hs, u_s, 0.0, order, False, False)
    if not (V.is_contiguous() or V.is_contiguous(memory_format=torch.channels_last)):
        raise ValueError("V must be contiguous in NCHW or channels_last")
    if V.numel() == 0:
        raise ValueError("V is empty (the kernels need N, C, H, W >= 1)")
    for name, t in (("h", h), ("w_c", w_c), ("b_c", b_c), ("W_hc", W_hc), ("u_c", u_c), ("W_s", W_s),
                    ("b_s", b_s), ("W_hs", W_hs), ("u_s", u_s)):
        if t is None or name[-1] not in order + "h":
            continue
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous")
        if name[0] in "wbu" and t.dim() != 1:
            raise ValueError(f"{name} must be a flat (k,) vector")


# ---------------------------------------------------------------------------------------------
# custom ops
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("attnkernels::sca_forward", mutates_args=())
def sca_forward(V: Tensor, h: Tensor, w_c: Optional[Tensor], b_c: Optional[Tensor], W_hc: Optional[Tensor],
                u_c: Optional[Tensor], c_c: Optional[Tensor], W_s: Optional[Tensor], b_s: Optional[Tensor],
                W_hs: Optional[Tensor], u_s: Optional[Tensor], c_s: Optional[Tensor], order: str, scale: bool,
                tf32: bool, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (X, hc, hs, v, beta, alpha): triton/sca.py's sca_forward. c_c and c_s are inputs only so
    that autograd gives them their gradients; no kernel reads them."""
    _check_op_inputs(V, h, w_c, b_c, W_hc, u_c, W_s, b_s, W_hs, u_s, order, backend)
    return get_impl(backend).sca_forward(V, h, w_c, b_c, W_hc, u_c, W_s, b_s, W_hs, u_s, order, scale, tf32)


@sca_forward.register_fake
def _(V, h, w_c, b_c, W_hc, u_c, c_c, W_s, b_s, W_hs, u_s, c_s, order, scale, tf32, backend):
    N, C, H, W = V.shape
    acc = acc_dtype(V.dtype)

    def vec(present, *shape):
        return V.new_empty(shape if present else (0,), dtype=acc)
    has_c, has_s = "c" in order, "s" in order
    return (torch.empty_like(V), vec(has_c, N, W_hc.shape[0] if has_c else 0),
            vec(has_s, N, W_s.shape[0] if has_s else 0), vec(has_c, N, C), vec(has_c, N, C), vec(has_s, N, H * W))


@torch.library.custom_op("attnkernels::sca_backward", mutates_args=())
def sca_backward(dX: Tensor, V: Tensor, h: Tensor, w_c: Optional[Tensor], W_hc: Optional[Tensor],
                 u_c: Optional[Tensor], W_s: Optional[Tensor], W_hs: Optional[Tensor], u_s: Optional[Tensor],
                 hc: Tensor, hs: Tensor, v: Tensor, beta: Tensor, alpha: Tensor, dbeta: Optional[Tensor],
                 dalpha: Optional[Tensor], order: str, scale: bool, tf32: bool, backend: str
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                            Tensor]:
    """-> (dV, dh, dw_c, db_c, dW_hc, du_c, dc_c, dW_s, db_s, dW_hs, du_s, dc_s): triton/sca.py's
    sca_backward (an absent branch's gradients are empty (0,) tensors)."""
    _check_op_inputs(V, h, w_c, u_c, W_hc, u_c, W_s, u_s, W_hs, u_s, order, backend)  # (u: the biases' shape)
    check_grad_like(dX, "dX", V, "V")
    N, C, H, W = V.shape
    acc = acc_dtype(V.dtype)
    has_c, has_s = "c" in order, "s" in order
    k_c, k_s = W_hc.shape[0] if has_c else 0, W_s.shape[0] if has_s else 0
    for name, t, shape, present, optional in (
            ("hc", hc, (N, k_c), has_c, False), ("hs", hs, (N, k_s), has_s, False), ("v", v, (N, C), has_c, False),
            ("beta", beta, (N, C), has_c, False), ("alpha", alpha, (N, H * W), has_s, False),
            ("dbeta", dbeta, (N, C), has_c, True), ("dalpha", dalpha, (N, H * W), has_s, True)):
        if t is None and optional:
            continue
        want = shape if present else (0,)
        if t is None or tuple(t.shape) != want or t.dtype != acc or t.device != V.device or not t.is_contiguous():
            raise ValueError(f"{name} must be a contiguous {want} tensor of dtype {acc} on V's device "
                             f"(sca_forward's, for order {order!r})")
    return get_impl(backend).sca_backward(dX, V, h, w_c, W_hc, u_c, W_s, W_hs, u_s, hc, hs, v, beta, alpha,
                                          dbeta, dalpha, order, scale, tf32)


@sca_backward.register_fake
def _(dX, V, h, w_c, W_hc, u_c, W_s, W_hs, u_s, hc, hs, v, beta, alpha, dbeta, dalpha, order, scale, tf32, backend):
    def like(present, t):
        return torch.empty_like(t) if present else V.new_empty((0,))

    def one(present):
        return V.new_empty((1,) if present else (0,))
    has_c, has_s = "c" in order, "s" in order
    return (torch.empty_like(V), torch.empty_like(h), like(has_c, w_c), like(has_c, u_c), like(has_c, W_hc),
            like(has_c, u_c), one(has_c), like(has_s, W_s), like(has_s, u_s), like(has_s, W_hs), like(has_s, u_s),
            one(has_s))


def _setup_context(ctx, inputs, output):
    V, h, w_c, b_c, W_hc, u_c, c_c, W_s, b_s, W_hs, u_s, c_s, order, scale, tf32, backend = inputs
    _, hc, hs, v, beta, alpha = output
    ctx.mark_non_differentiable(hc, hs, v)  # the kernels' saved vectors
    ctx.set_materialize_grads(False)  # (maps nobody used: no gradient, not zeros to add)
    # the biases and c's only for a double backward (grads_with_graph): references, no copies
    ctx.save_for_backward(V, h, w_c, b_c, W_hc, u_c, c_c, W_s, b_s, W_hs, u_s, c_s, hc, hs, v, beta, alpha)
    ctx.opts = (order, scale, tf32, backend)


def _backward(ctx, dX, _dhc, _dhs, _dv, dbeta, dalpha):
    V, h, w_c, b_c, W_hc, u_c, c_c, W_s, b_s, W_hs, u_s, c_s, hc, hs, v, beta, alpha = ctx.saved_tensors
    order, scale, tf32, backend = ctx.opts
    inputs = (V, h, w_c, b_c, W_hc, u_c, c_c, W_s, b_s, W_hs, u_s, c_s)
    # an absent branch's map is an empty (0,) tensor, whose gradient (if any) is nothing to add
    dbeta = dbeta if "c" in order else None
    dalpha = dalpha if "s" in order else None
    if dX is None and dbeta is None and dalpha is None:
        return (None,) * 16
    if torch.is_grad_enabled():  # create_graph=True: a differentiable gradient, from the reference's graph
        return grads_with_graph_sca(inputs, (dX, dbeta, dalpha), order, scale) + (None,) * 4
    if dX is None:  # only the maps were used
        dX = torch.zeros_like(V)
    dX = dX.contiguous(memory_format=memory_format_of(V))
    g = sca_backward(dX, V, h, w_c, W_hc, u_c, W_s, W_hs, u_s, hc, hs, v, beta, alpha,
                     None if dbeta is None else dbeta.contiguous(), None if dalpha is None else dalpha.contiguous(),
                     order, scale, tf32, backend)
    dV, dh, dw_c, db_c, dW_hc, du_c, dc_c, dW_s, db_s, dW_hs, du_s, dc_s = g
    has_c, has_s = "c" in order, "s" in order
    grads = (dV, dh) + ((dw_c, db_c, dW_hc, du_c, dc_c) if has_c else (None,) * 5) + (
        (dW_s, db_s, dW_hs, du_s, dc_s) if has_s else (None,) * 5)
    out = [None if gr is None or t is None or not t.requires_grad else gr.reshape(t.shape)
           for gr, t in zip(grads, inputs)]
    return tuple(out) + (None,) * 4


sca_forward.register_autograd(_backward, setup_context=_setup_context)


def grads_with_graph_sca(inputs, dys, order: str, scale: bool):
    """The gradients of (X, beta, alpha) with respect to the twelve inputs of `sca` (c_c / c_s:
    None for a number) as a differentiable function of the inputs and the output gradients dys
    (None: no gradient for that output): the reference's eager graph (_fused_op.grads_with_graph),
    for a backward with create_graph=True."""
    def run(V, h, w_c, b_c, W_hc, u_c, c_c, W_s, b_s, W_hs, u_s, c_s):
        X, beta, alpha = reference.sca(V, h, w_c, b_c, W_hc, u_c, 0.0 if c_c is None else c_c, W_s, b_s, W_hs,
                                       u_s, 0.0 if c_s is None else c_s, order=order, scale=scale,
                                       return_attention=True)
        return X, beta, alpha
    return grads_with_graph(run, inputs, tuple(dys))


# ---------------------------------------------------------------------------------------------
# functional
# ---------------------------------------------------------------------------------------------
def tf32_allowed() -> bool:
    """Whether torch lets fp32 matrix products use TF32: torch.backends.cuda.matmul.allow_tf32, which
    torch.set_float32_matmul_precision("high" / "medium") also sets (and torch.compile guards on
    it). The kernels' fp32 products follow it."""
    return bool(torch.backends.cuda.matmul.allow_tf32)


def sca(V: Tensor, h: Tensor,
        w_c: Optional[Tensor] = None, b_c: Optional[Tensor] = None, W_hc: Optional[Tensor] = None,
        u_c: Optional[Tensor] = None, c_c: Union[Tensor, float, None] = None,
        W_s: Optional[Tensor] = None, b_s: Optional[Tensor] = None,
        W_hs: Optional[Tensor] = None, u_s: Optional[Tensor] = None,
        c_s: Union[Tensor, float, None] = None, *, order: str = "cs", scale: bool = False,
        return_attention: bool = False, backend: Optional[str] = None
        ) -> Union[Tensor, Tuple[Tensor, Optional[Tensor], Optional[Tensor]]]:
    """Fused SCA: the signature, defaults and results of attnkernels.reference.sca (see there and
    modules.md): X (N, C, H, W), or (X, beta (N, C), alpha (N, H*W)) with return_attention (a
    branch the order lacks: None; its parameters may be None).

    V: (N, C, H, W) float16/bfloat16/float32/float64, NCHW or channels_last (X keeps V's layout;
    other strides are first copied into the closer one); h: (N, d) of V's dtype. w_c, b_c, u_c:
    (k,) (or a Linear's (k, 1) / (1, k) weight), W_hc (k, d); W_s (k, C), b_s, u_s (k,), W_hs (k, d);
    c_c, c_s: numbers or one-element tensors. order: "cs" | "sc" | "c" | "s"; scale: the official
    code's C and HW rescaling. Products accumulate in fp32 (fp64 for fp64); fp32 products use TF32
    only where torch allows it for matmuls (tf32_allowed). backend: None (the one in force, see
    attnkernels.set_backend) or a backend name.
    """
    checked = (V, h, w_c, b_c, W_hc, u_c, c_c, W_s, b_s, W_hs, u_s, c_s, order, scale, return_attention)
    if torch.jit.is_tracing():  # (tracer_quiet's warning filters are not for torch.compile to trace)
        with tracer_quiet():
            (w_c, b_c, W_hc, u_c, cc), (W_s, b_s, W_hs, u_s, cs_) = _check_sca_inputs(*checked)
    else:
        (w_c, b_c, W_hc, u_c, cc), (W_s, b_s, W_hs, u_s, cs_) = _check_sca_inputs(*checked)
    name = pick_backend(backend, V)
    if name == "reference":
        return reference.sca(V, h, w_c, b_c, W_hc, u_c, c_c, W_s, b_s, W_hs, u_s, c_s, order=order, scale=scale,
                             return_attention=return_attention)
    V = V.contiguous(memory_format=memory_format_of(V))

    def dense(t):
        return None if t is None else t.contiguous()
    X, _, _, _, beta, alpha = sca_forward(
        V, h.contiguous(), dense(w_c), dense(b_c), dense(W_hc), dense(u_c), cc, dense(W_s), dense(b_s),
        dense(W_hs), dense(u_s), cs_, order, scale, V.dtype == torch.float32 and tf32_allowed(), name)
    if not return_attention:
        return X
    return (X, beta.to(V.dtype) if "c" in order else None, alpha.to(V.dtype) if "s" in order else None)


# ---------------------------------------------------------------------------------------------
# drop-in module
# ---------------------------------------------------------------------------------------------
def _fused_sca_call(V, h, w_c, b_c, W_hc, u_c, c_c, W_s, b_s, W_hs, u_s, c_s, order: str, scale: bool,
                    return_attention: bool):
    """The drop-in's fused call on its Linear parameters and h, cast to V's dtype where they differ
    (as autocast casts the operands of the eager block's Linears: a decoder's h in fp32, its zero
    initial state say, with bf16 features). A leaf of FX symbolic tracing (torch.fx.wrap below): a
    traced model calls it, fused, instead of tracing into `sca`, whose checks a Proxy fails."""
    h, w_c, b_c, W_hc, u_c, c_c, W_s, b_s, W_hs, u_s, c_s = cast_params(
        V.dtype, h, w_c, b_c, W_hc, u_c, c_c, W_s, b_s, W_hs, u_s, c_s)
    return sca(V, h, w_c, b_c, W_hc, u_c, c_c, W_s, b_s, W_hs, u_s, c_s, order=order, scale=scale,
               return_attention=return_attention)


torch.fx.wrap("_fused_sca_call")


class SCA(FusedDropin, reference.SCA):
    """Drop-in for attnkernels.reference.SCA (same constructor, Linear submodules and state_dict):
    forward(V, h, return_attention=False) runs the fused op. (The reference reads its Linears'
    parameters without calling them, so hooks on them run in neither; a parametrized weight, such
    as weight norm's, is read through its attribute in both.)"""

    def fused_options(self):
        """(order, "scale" | "noscale"): every configuration is fused."""
        return self.order, "scale" if self.scale else "noscale"

    def forward(self, V: Tensor, h: Tensor, return_attention: bool = False):
        if torch.jit.is_scripting():  # TorchScript: the eager forward of the block replaced
            return self._eager_forward(V, h, return_attention)
        return self._fused_sca(V, h, return_attention)

    def _check_shapes(self, V: Tensor, h: Tensor) -> None:
        if V.dim() != 4 or V.shape[1] != self.channels or h.dim() != 2 or h.shape[-1] != self.hidden_size:
            raise ValueError(f"expected V (N, {self.channels}, H, W) and h (N, {self.hidden_size}),"
                             f" got {list(V.shape)} and {list(h.shape)}")

    @torch.jit.unused
    def _fused_sca(self, V: Tensor, h: Tensor, return_attention: bool):
        if torch.jit.is_tracing():
            # torch.jit.trace, torch.onnx.export's TorchScript-based exporter: the checks compare
            # traced sizes (checks of the traced call: no TracerWarning); the exporter passes the
            # forward's defaults as tensors (the flag is a constant of the trace)
            with tracer_quiet():
                self._check_shapes(V, h)
                return_attention = bool(return_attention)
        elif not isinstance(V, torch.fx.Proxy):
            self._check_shapes(V, h)
        params = weight_bias_attrs if isinstance(V, torch.fx.Proxy) else weight_bias
        mods = self._modules
        channel = spatial = (None,) * 5
        if "c" in self.order:
            w_c, b_c = params(mods["channel_in"])
            u_c, c_c = params(mods["channel_score"])
            channel = (w_c, b_c, params(mods["channel_hidden"])[0], u_c, c_c)
        if "s" in self.order:
            W_s, b_s = params(mods["spatial_in"])
            u_s, c_s = params(mods["spatial_score"])
            spatial = (W_s, b_s, params(mods["spatial_hidden"])[0], u_s, c_s)
        return _fused_sca_call(V, h, *channel, *spatial, self.order, self.scale, return_attention)


# ---------------------------------------------------------------------------------------------
# attnkernels.convert
# ---------------------------------------------------------------------------------------------
def _from_reference(old: reference.SCA) -> SCA:
    return SCA(old.channels, old.hidden_size, old.attn_units, order=old.order, scale=old.scale)


def convertible_types() -> dict:
    """The SCA blocks attnkernels.convert swaps: attnkernels.reference.SCA -> attnkernels.SCA (SCA-CNN
    has no library class to swap: its official code is Theano)."""
    return {reference.SCA: _from_reference}

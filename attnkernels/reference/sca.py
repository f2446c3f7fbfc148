"""SCA-CNN spatial and channel-wise attention (Chen et al., CVPR 2017), eager PyTorch: the spec
the fused SCA kernels are tested against (modules.md, SCA).

Inputs: features V (N, C, H, W), decoder hidden state h (N, d) (the LSTM's h_{t-1}); k units.

Channel-wise attention, on the channel means v = mean_hw(V) (N, C):
    b[n,c,:] = tanh(v[n,c] * w_c + b_c + W_hc h[n])          w_c, b_c: (k,); W_hc: (k, d), no bias
    beta[n]  = softmax_c(b[n,c,:] . u_c + c_c)                u_c: (k,); c_c: scalar
Spatial attention, on features U (N, C, HW), location l:
    a[n,l,:] = tanh(W_s U[n,:,l] + b_s + W_hs h[n])           W_s: (k, C); b_s: (k,); W_hs: (k, d), no bias
    alpha[n] = softmax_l(a[n,l,:] . u_s + c_s)                u_s: (k,); c_s: scalar

Orders (the weighted features of the first attention feed the second):
    "cs" (paper's best, default): beta from V; V' = V * beta; alpha from V'; X = V' * alpha
    "sc": alpha from V; V' = V * alpha; beta from mean_hw(V'); X = V' * beta
    "c":  X = V * beta          "s": X = V * alpha

``scale`` (reproduces the official Theano code's rescaling constants, zjuchenlong/sca-cnn.cvpr17):
every attention weight is replaced by its rescaled value wherever it is applied, beta -> C * beta
and alpha -> HW * alpha, both in the intermediate features V' that feed the second attention and
in the output. So uniform attention (beta = 1/C, alpha = 1/HW) is the identity, and in "sc" the
channel attention sees mean_hw(V * HW * alpha) = sum_l alpha_l V[:, :, l] (the attended feature).
The returned attention maps are always the softmax probabilities (unscaled).

Note: c_c and c_s add the same constant to every logit of their softmax, so they never change the
output; they are kept because the equations (and checkpoints) have them.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ORDERS = ("cs", "sc", "c", "s")
# a module's branch parameters (None for a branch its order lacks)
_Params = Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor], Optional[Tensor], Optional[Tensor]]


def _vec(t: Tensor) -> Tensor:
    return t.reshape(-1)


# ----------------------------------------------------------------------------------------------
# Functional forms
# ----------------------------------------------------------------------------------------------
def sca_channel_logits(v: Tensor, h: Tensor, w_c: Tensor, b_c: Tensor, W_hc: Tensor, u_c: Tensor,
                       c_c: Union[Tensor, float]) -> Tensor:
    """Channel logits (N, C): tanh(v[n,c] * w_c + b_c + W_hc h[n]) . u_c + c_c.

    v: channel means (N, C). w_c, b_c, u_c: (k,) (or (k, 1) / (1, k) Linear views); W_hc: (k, d).
    """
    hproj = F.linear(h, W_hc)                                                   # (N, k)
    b = torch.tanh(v[:, :, None] * _vec(w_c) + _vec(b_c) + hproj[:, None, :])  # (N, C, k)
    return _plus_score_bias(b @ _vec(u_c), c_c)


def _plus_score_bias(logits: Tensor, c: Union[Tensor, float]) -> Tensor:
    # (an if, not a conditional expression: TorchScript types both of its branches alike)
    if isinstance(c, Tensor):
        return logits + c.reshape(())
    return logits + c


def sca_channel_attention(v: Tensor, h: Tensor, w_c: Tensor, b_c: Tensor, W_hc: Tensor, u_c: Tensor,
                          c_c: Union[Tensor, float]) -> Tensor:
    """beta (N, C) = softmax over channels of :func:`sca_channel_logits`."""
    return torch.softmax(sca_channel_logits(v, h, w_c, b_c, W_hc, u_c, c_c), dim=1)


def sca_spatial_logits(U: Tensor, h: Tensor, W_s: Tensor, b_s: Tensor, W_hs: Tensor, u_s: Tensor,
                       c_s: Union[Tensor, float]) -> Tensor:
    """Spatial logits (N, HW): tanh(W_s U[n,:,l] + b_s + W_hs h[n]) . u_s + c_s.

    U: (N, C, H, W) or (N, C, HW). W_s: (k, C); b_s, u_s: (k,); W_hs: (k, d).
    """
    Ul = U.flatten(2).transpose(1, 2)                                           # (N, HW, C)
    a = torch.tanh(F.linear(Ul, W_s, _vec(b_s)) + F.linear(h, W_hs)[:, None, :])  # (N, HW, k)
    return _plus_score_bias(a @ _vec(u_s), c_s)


def sca_spatial_attention(U: Tensor, h: Tensor, W_s: Tensor, b_s: Tensor, W_hs: Tensor, u_s: Tensor,
                          c_s: Union[Tensor, float]) -> Tensor:
    """alpha (N, HW) = softmax over locations of :func:`sca_spatial_logits`."""
    return torch.softmax(sca_spatial_logits(U, h, W_s, b_s, W_hs, u_s, c_s), dim=1)


def sca(V: Tensor, h: Tensor,
        w_c: Optional[Tensor] = None, b_c: Optional[Tensor] = None, W_hc: Optional[Tensor] = None,
        u_c: Optional[Tensor] = None, c_c: Union[Tensor, float, None] = None,
        W_s: Optional[Tensor] = None, b_s: Optional[Tensor] = None,
        W_hs: Optional[Tensor] = None, u_s: Optional[Tensor] = None,
        c_s: Union[Tensor, float, None] = None, *, order: str = "cs", scale: bool = False,
        return_attention: bool = False
        ) -> Union[Tensor, Tuple[Tensor, Optional[Tensor], Optional[Tensor]]]:
    """Reference SCA forward. Returns X (N, C, H, W), or (X, beta (N, C), alpha (N, HW)) with
    ``return_attention`` (the map of a branch the order does not use is None).

    The parameters of a branch the order does not use may be None.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    return _sca(V, h, w_c, b_c, W_hc, u_c, c_c, W_s, b_s, W_hs, u_s, c_s, order, scale, return_attention)


def _given(t: Optional[Tensor], name: str, order: str) -> Tensor:
    if t is None:
        raise ValueError(f"{name} is None, but order '{order}' has its branch")
    return t


def _given_score_bias(c: Union[Tensor, float, None], name: str, order: str) -> Union[Tensor, float]:
    if c is None:
        raise ValueError(f"{name} is None, but order '{order}' has its branch")
    return c


def _sca(V: Tensor, h: Tensor, w_c: Optional[Tensor], b_c: Optional[Tensor], W_hc: Optional[Tensor],
         u_c: Optional[Tensor], c_c: Union[Tensor, float, None], W_s: Optional[Tensor], b_s: Optional[Tensor],
         W_hs: Optional[Tensor], u_s: Optional[Tensor], c_s: Union[Tensor, float, None], order: str, scale: bool,
         return_attention: bool) -> Union[Tensor, Tuple[Tensor, Optional[Tensor], Optional[Tensor]]]:
    """`sca` in TorchScript's subset (no keyword-only arguments, no closures), which the SCA
    module's forward calls, so the module scripts. order: checked by the caller (`sca`, the
    module's constructor)."""
    N, C, H, W = V.shape[0], V.shape[1], V.shape[2], V.shape[3]
    cscale = float(C) if scale else 1.0
    sscale = float(H * W) if scale else 1.0
    beta: Optional[Tensor] = None
    alpha: Optional[Tensor] = None
    X = V
    for branch in order:
        if branch == "c":
            b = sca_channel_attention(X.mean((2, 3)), h, _given(w_c, "w_c", order), _given(b_c, "b_c", order),
                                      _given(W_hc, "W_hc", order), _given(u_c, "u_c", order),
                                      _given_score_bias(c_c, "c_c", order))
            X = X * (cscale * b)[:, :, None, None]
            beta = b
        else:
            a = sca_spatial_attention(X, h, _given(W_s, "W_s", order), _given(b_s, "b_s", order),
                                      _given(W_hs, "W_hs", order), _given(u_s, "u_s", order),
                                      _given_score_bias(c_s, "c_s", order))
            X = X * (sscale * a).reshape(N, 1, H, W)
            alpha = a
    if return_attention:
        return X, beta, alpha
    return X


# ----------------------------------------------------------------------------------------------
# Module
# ----------------------------------------------------------------------------------------------
class SCA(nn.Module):
    """SCA(channels, hidden_size, attn_units=512, order="cs", scale=False).

    Parameters (present only for the branches ``order`` uses), as nn.Linear:
      channel_in      Linear(1, k)            weight (k, 1) = w_c, bias (k,) = b_c
      channel_hidden  Linear(d, k, bias=False) weight (k, d) = W_hc
      channel_score   Linear(k, 1)            weight (1, k) = u_c, bias (1,) = c_c
      spatial_in      Linear(C, k)            weight (k, C) = W_s, bias (k,) = b_s
      spatial_hidden  Linear(d, k, bias=False) weight (k, d) = W_hs
      spatial_score   Linear(k, 1)            weight (1, k) = u_s, bias (1,) = c_s
    forward(V (N, C, H, W), h (N, d), return_attention=False) -> X, or (X, beta, alpha).
    The official configuration is k=512, d=1000 at C=512 and C=2048 (ResNet-152 res5c).
    """

    def __init__(self, channels: int, hidden_size: int, attn_units: int = 512, order: str = "cs",
                 scale: bool = False, device=None, dtype=None):
        super().__init__()
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        dd = {"device": device, "dtype": dtype}
        self.channels, self.hidden_size, self.attn_units = channels, hidden_size, attn_units
        self.order, self.scale = order, scale
        k = attn_units
        if "c" in order:
            self.channel_in = nn.Linear(1, k, **dd)
            self.channel_hidden = nn.Linear(hidden_size, k, bias=False, **dd)
            self.channel_score = nn.Linear(k, 1, **dd)
        if "s" in order:
            self.spatial_in = nn.Linear(channels, k, **dd)
            self.spatial_hidden = nn.Linear(hidden_size, k, bias=False, **dd)
            self.spatial_score = nn.Linear(k, 1, **dd)

    # (hasattr, not `"c" in self.order`: TorchScript compiles no access to a branch's Linears
    # that the module lacks)
    def channel_params(self) -> _Params:
        """(w_c, b_c, W_hc, u_c, c_c) or Nones."""
        if not hasattr(self, "channel_in"):
            return None, None, None, None, None
        return (self.channel_in.weight, self.channel_in.bias, self.channel_hidden.weight,
                self.channel_score.weight, self.channel_score.bias)

    def spatial_params(self) -> _Params:
        """(W_s, b_s, W_hs, u_s, c_s) or Nones."""
        if not hasattr(self, "spatial_in"):
            return None, None, None, None, None
        return (self.spatial_in.weight, self.spatial_in.bias, self.spatial_hidden.weight,
                self.spatial_score.weight, self.spatial_score.bias)

    def forward(self, V: Tensor, h: Tensor, return_attention: bool = False
                ) -> Union[Tensor, Tuple[Tensor, Optional[Tensor], Optional[Tensor]]]:
        return self._eager_forward(V, h, return_attention)

    # the forward's body, which the fused drop-in falls back to (and TorchScript compiles there)
    def _eager_forward(self, V: Tensor, h: Tensor, return_attention: bool = False
                       ) -> Union[Tensor, Tuple[Tensor, Optional[Tensor], Optional[Tensor]]]:
        if V.shape[1] != self.channels or h.shape[-1] != self.hidden_size:
            raise ValueError(f"expected V (N, {self.channels}, H, W) and h (N, {self.hidden_size}),"
                             f" got {list(V.shape)} and {list(h.shape)}")
        w_c, b_c, W_hc, u_c, c_c = self.channel_params()
        W_s, b_s, W_hs, u_s, c_s = self.spatial_params()
        return _sca(V, h, w_c, b_c, W_hc, u_c, c_c, W_s, b_s, W_hs, u_s, c_s, self.order, self.scale,
                    return_attention)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, hidden_size={self.hidden_size}, "
                f"attn_units={self.attn_units}, order={self.order!r}, scale={self.scale}")

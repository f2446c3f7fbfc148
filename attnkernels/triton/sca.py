"""SCA (SCA-CNN spatial and channel-wise attention) in Triton, and the backend contract that the
CUDA backend (csrc/sca/, attnkernels/cuda/sca.py) implements too. Spec: attnkernels/reference/sca.py.

Notation. V (N, C, H, W), HW = H*W, location l = h*W + w; h (N, d); k_c / k_s units of the channel /
spatial branch (one `attn_units` in the module; the kernels allow them to differ). cs = C if scale
else 1, ss = HW if scale else 1: the factors the attention weights are applied with. "acc dtype":
fp64 for fp64 V, else fp32 (attnkernels._alloc.acc_dtype).
    hc[n] = W_hc h[n] + b_c           (k_c)     channel:  zc[n,c] = tanh(v[n,c] w_c + hc[n]) . u_c
    hs[n] = W_hs h[n] + b_s           (k_s)     spatial:  zs[n,l] = tanh(W_s U[n,:,l] + hs[n]) . u_s
    beta = softmax_c(zc), alpha = softmax_l(zs); v = mean_l of the channel branch's input.
c_c and c_s shift every logit of their softmax alike, so no output depends on them: the kernels never
read them (their gradients are exactly 0, below).

Backend contract (attnkernels.triton and attnkernels.cuda export both functions; the custom ops
attnkernels::sca_forward / sca_backward in attnkernels/sca.py validate and normalize the inputs)
-----------------------------------------------------------------------------------------------
sca_forward(V, h, w_c, b_c, W_hc, u_c, W_s, b_s, W_hs, u_s, order, scale, tf32)
        -> (X, hc, hs, v, beta, alpha)
  V: N >= 1, C, H, W >= 1, contiguous NCHW or channels_last. h: (N, d) contiguous, d >= 0.
  Channel parameters (order has "c", else all None): w_c, b_c, u_c (k_c,), W_hc (k_c, d).
  Spatial parameters (order has "s", else all None): W_s (k_s, C), b_s (k_s,), W_hs (k_s, d), u_s (k_s,).
  All contiguous, V's dtype and device. order: "cs" | "sc" | "c" | "s"; scale: bool; tf32: bool,
  fp32 products may use TF32 (the front end reads torch's setting; False: IEEE fp32 products).
  X: like V (same memory format). Saved for the backward, all in the acc dtype:
    hc (N, k_c), hs (N, k_s): the hidden projections, biases included;
    v (N, C): the channel branch's pooled input, mean_l U (U = V, or V * ss*alpha for "sc");
    beta (N, C), alpha (N, HW): the softmax probabilities (unscaled; also the maps that
      return_attention returns, cast to V's dtype by the front end).
    The tensors of a branch the order lacks are empty (0,) tensors (hc, v, beta / hs, alpha).
sca_backward(dX, V, h, w_c, W_hc, u_c, W_s, W_hs, u_s, hc, hs, v, beta, alpha, dbeta, dalpha,
             order, scale, tf32)
        -> (dV, dh, dw_c, db_c, dW_hc, du_c, dc_c, dW_s, db_s, dW_hs, du_s, dc_s)
  dX: V's shape, dtype and memory format. dbeta (N, C) / dalpha (N, HW): gradients reaching the
  returned maps (acc dtype, contiguous) or None. dV like V; dh (N, d) in h's dtype; parameter
  gradients in V's dtype, shaped as the flat parameters (dc_c, dc_s: (1,)); an absent branch's
  are empty (0,) tensors. dc_c and dc_s are exactly 0 (a shift of every logit leaves the softmax
  as it is; eager's sum of dz is 0 up to rounding), computed as 0 * sum dz so that a non-finite
  gradient still makes them NaN, as it makes eager's non-finite.

Forward kernels (Triton `_sca_<name>`, CUDA `sca_<name>_kernel`), launched in this order:
  "cs": hidden, channel(U=V), spatial(U=V*cs*beta), apply    "c": hidden, channel, apply
  "sc": hidden, spatial(U=V), channel(U=V*ss*alpha), apply   "s": hidden, spatial, apply
  hidden   grid (n, k block): hc and hs (mat-vecs over d, + bias).
  channel  grid (n, channel block cb, HW split sp), SE's squeeze grid: the split's sum over its HW
           range (weighted by alpha[l] for "sc"), split partials combined by the last split of
           (n, cb) to arrive (arrival counter), v = sum / HW (* ss for "sc"); that program forms
           its channels' logits (tanh over k_c in blocks, dot u_c), stores them in beta and
           parks their (max, sum exp); the last channel block of the sample combines the parked
           pairs (fixed order) and rewrites beta[n] = exp(zc - max) / sum (stable softmax).
  spatial  grid (n, location block lb): for each k_s block, P (BL x BK) = sum over channel
           blocks of dot(U tile (BL x BC), W_s^T tile (BC x BK)) (tensor cores; U = V, times
           cs*beta[c] for "cs", rounded to V's dtype as the reference's V' is), a = tanh(P + hs),
           zs += a . u_s. No (N, HW, k) tensor: P lives in registers, the V tile is re-read per
           k block (L1/L2). Stores zs in alpha, parks (max, sum exp) of the block; the last block
           of the sample rewrites alpha[n] = exp(zs - max) / sum.
  apply    grid (n, cb, sp): X = V * (cs*beta[c]) * (ss*alpha[l]) (the factors the order has),
           one rounding.
Backward (T = dX * V elementwise; "rows" are per-block partial sums, later added in a fixed order):
  reduce       grid (n, cb, lb), one (BC x BL) tile each: loc rows (N, n_cb, HW):
               sum_{c in cb} T * (cs*ss*beta[c] if the order has both, else ss); ch rows
               (N, n_lb, C): sum_{l in lb} T * (cs*ss*alpha[l] if both, else cs). Mode DV ("sc",
               second run, after channel_bwd): loc rows of sum_c V * dv[c] * ss / HW only.
  softmax_bwd  grid (n): g = the sum of the given row groups (+ dbeta / dalpha), then
               dz = p * (g - sum_m p g) (p = beta or alpha): dzc (N, C) / dzs (N, HW).
  channel_bwd  grid (n, cb): b = tanh(v w_c + hc), dB = dzc u_c (1 - b^2) (the slope from
               exp(-2|.|), not from the rounded b); dv[n, c] = dB . w_c
               (N, C); rows (N, n_cb, k_c) of dhc = sum_c dB, du_c = sum_c dzc b, dw_c = sum_c dB v.
  spatial_bwd  grid (chunk sample, lb, kb): P recomputed as in spatial; dP = dzs u_s (1 - a^2)
               (the slope as in channel_bwd) written to the dP scratch (chunk, HW, k_s) in V's
               dtype (a tensor-core operand); rows (N, n_lb, k_s) of dhs = sum_l dP and
               du_s = sum_l dzs a (its kb slice; from the unrounded dP).
  spatial_dw   grid (kb, cb): per sample n of the chunk, M_n = dP_n^T V_n (BK x BC, tensor cores,
               over the sample's locations); dW_s tile += M_n * (cs*beta_n[c] for "cs"), samples
               in order, chunks in launch order (an acc-dtype (k_s, C) accumulator when there are
               several chunks; the last chunk's launch casts). "cs" also writes g2 rows
               (N, n_kb, C): cs * sum_{j in kb} W_s[j, c] M_n[j, c], the share of g_beta that
               flows through the spatial logits (sum_l (W_s^T dP)[c, l] V[c, l]).
  dx           grid (chunk sample, lb, cb): G = dP[n, lb, :] @ W_s[:, cb] (tensor cores over k_s
               blocks), then dV = "s": dX ss alpha + G;   "cs": (dX ss alpha + G) cs beta + dv/HW;
               "sc": (dX cs beta + dv/HW) ss alpha + G;   "c": dX cs beta + dv/HW (no G, all N).
  hidden_bwd   grid (n, d block): dhc[n], dhs[n] = their rows summed (stored by d block 0),
               dh[n, db] = W_hc[:, db]^T dhc[n] + W_hs[:, db]^T dhs[n].
  weights      dW_hc = dhc^T h and db_c = sum_n dhc, dW_hs / db_s likewise (blocked sums over n,
               _mlp.outer_sum_tile), then du_c, dw_c, du_s (their rows summed), dc_c, dc_s.
  Sequences:
    "c":  reduce, softmax_bwd(ch rows), channel_bwd, dx, hidden_bwd, weights
    "s":  reduce, softmax_bwd(loc rows), per chunk [spatial_bwd, spatial_dw, dx], hidden_bwd, weights
    "cs": reduce, softmax_bwd(loc rows), per chunk [spatial_bwd, spatial_dw],
          softmax_bwd(ch rows + g2 rows), channel_bwd, per chunk [spatial_bwd (again, only with
          more than one chunk), dx], hidden_bwd, weights
    "sc": reduce, softmax_bwd(ch rows), channel_bwd, reduce(mode DV), softmax_bwd(loc rows + DV
          rows), per chunk [spatial_bwd, spatial_dw, dx], hidden_bwd, weights
  Deterministic: no float atomics; every partial is parked and summed in a fixed order (arrival
  counters, as SE's, only pick which program combines the forward's split partials and softmax).
  Tile sizes and the row counts they imply (n_cb, n_lb, n_kb) are each backend's own; only the
  functions' arguments, results and the saved tensors are shared.

dW_s (the reduction over N*HW) and its cost. dP is a GEMM operand of two products (dW_s = sum
dP^T V', and G = dP W_s for dV) whose reduction runs over k_s (G) and over (n, l) (dW_s), so it
goes through a scratch of S samples' dP, S = min(N, max(1, DP_BUDGET // (HW * k_s))), DP_BUDGET
= 2^22 elements (8 MiB bf16, 16 MiB fp32; cached per stream like the other scratch): bounded
whatever N (a batch whose whole dP fits, N HW k_s <= 2^22, takes one chunk of all N; a larger
one never has more than the budget); the samples run in chunks of S. Cost: spatial_bwd, spatial_dw and dx are three GEMMs of the forward's size
(2 N HW C k_s flops each), plus a fourth ("cs" with more than one chunk: dP recomputed for dx,
since dx needs dv, which needs every chunk's g2 rows). Rejected: per-(k block, c block) programs
recomputing P (P needs all of C: n_cb times the forward GEMM), and an (N, HW, k) dP.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .._alloc import acc_dtype, empty, empty_like
from ._common import (arrival_counters, cast_to, dot_acc, nanmax, nanmax_over, tanh, tanh_and_slope,
                      target_programs, tl_acc_dtype, workspaces)
from ._launch import launcher, on_x_device
from ._mlp import matvec, outer_sum_tile
from ._reduce import arrive_last, combine_splits, pool_stream, sum_rows, tile_of, tile_ptrs

ORDERS = ("cs", "sc", "c", "s")
DP_BUDGET = 1 << 22  # elements of the dP scratch (module docstring); tests lower it to run chunks


# --------------------------------------------------------------------------------------------
# pieces
# --------------------------------------------------------------------------------------------
@triton.jit
def _park_softmax(ws_ptr, z, valid):
    """Park the (max, sum exp(z - max)) of a block's logits z (valid: its real entries) at ws_ptr."""
    z = tl.where(valid, z, float("-inf"))
    m = nanmax_over(z, 0)
    s = tl.sum(tl.where(valid, tl.exp(z - m), 0.0), axis=0)
    tl.store(ws_ptr, m)
    tl.store(ws_ptr + 1, s)


@triton.jit
def _finish_softmax(p_ptr, ws_ptr, n_parts, size, BLOCK: tl.constexpr):
    """p_ptr[0:size] holds the logits of one softmax, ws_ptr[0:n_parts] the (max, sum exp) pairs
    that its blocks parked: combine them (in order) and rewrite p = exp(z - max) / sum. The logits
    and pairs were stored by other programs of this launch: read through L2 (.cg)."""
    i = tl.arange(0, BLOCK)
    M = tl.full([BLOCK], float("-inf"), p_ptr.dtype.element_ty)
    for r0 in range(0, n_parts, BLOCK):
        M = nanmax(M, tl.load(ws_ptr + 2 * (r0 + i), mask=r0 + i < n_parts, other=float("-inf"),
                              cache_modifier=".cg"))
    m = nanmax_over(M, 0)
    S = tl.zeros([BLOCK], p_ptr.dtype.element_ty)
    for r0 in range(0, n_parts, BLOCK):
        r = r0 + i
        mr = tl.load(ws_ptr + 2 * r, mask=r < n_parts, other=float("-inf"), cache_modifier=".cg")
        sr = tl.load(ws_ptr + 2 * r + 1, mask=r < n_parts, other=0.0, cache_modifier=".cg")
        S += tl.where(r < n_parts, sr * tl.exp(mr - m), 0.0)
    s = tl.sum(S, axis=0)
    for j0 in range(0, size, BLOCK):
        j = j0 + i
        z = tl.load(p_ptr + j, mask=j < size, other=float("-inf"), cache_modifier=".cg")
        tl.store(p_ptr + j, tl.exp(z - m) / s, mask=j < size)


@triton.jit
def _channel_units(vv, hc_ptr, w_ptr, u_ptr, j, jm):
    """(v[c] w_c[j] + hc[j], w_c[j], u_c[j]) for a (channel block) x (unit block) tile: the
    pre-activation of b = tanh(.), and the weights (0 past the units)."""
    w = tl.load(w_ptr + j, mask=jm, other=0.0).to(vv.dtype)
    hcv = tl.load(hc_ptr + j, mask=jm, other=0.0)
    u = tl.load(u_ptr + j, mask=jm, other=0.0).to(vv.dtype)
    return vv[:, None] * w[None, :] + hcv[None, :], w, u


@triton.jit
def _project(base, beta_ptr, ws_ptr, l, lmask, j, jm, C, stride_c, stride_hw, FOLD_BETA: tl.constexpr,
             CS, PREC: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr):
    """P[l, j] = sum_c U[c, l] W_s[j, c] for a (location block) x (unit block) tile of one sample
    (base: its V), U = V, or V * CS * beta[c] rounded to V's dtype (FOLD_BETA, order "cs": the
    reference's V'), over channel blocks with tensor-core dots."""
    acc = tl.zeros([l.shape[0], j.shape[0]], dtype=ACC)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        cm = c < C
        a = tl.load(base + c[None, :] * stride_c + l[:, None] * stride_hw, mask=lmask[:, None] & cm[None, :],
                    other=0.0)
        if FOLD_BETA:
            bs = tl.load(beta_ptr + c, mask=cm, other=0.0) * CS
            a = cast_to(a.to(ACC) * bs[None, :], a.dtype)
        w = tl.load(ws_ptr + j[None, :] * C + c[:, None], mask=cm[:, None] & jm[None, :], other=0.0)
        acc = dot_acc(a, w, acc, PREC)
    return acc


# --------------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------------
@triton.jit
def _sca_hidden(h_ptr, whc_ptr, bc_ptr, hc_ptr, whs_ptr, bs_ptr, hs_ptr, d, k_c, k_s, n_kb,
                HAS_C: tl.constexpr, HAS_S: tl.constexpr, ACC: tl.constexpr, BLOCK_K: tl.constexpr,
                BLOCK_D: tl.constexpr):
    """hc[n, kb] = W_hc[kb, :] h[n] + b_c[kb] and hs likewise, one (sample, unit block) a program."""
    pid = tl.program_id(0)
    n = pid // n_kb
    j = (pid % n_kb) * BLOCK_K + tl.arange(0, BLOCK_K)
    if HAS_C:
        _hidden_block(h_ptr + n * d, whc_ptr, bc_ptr, hc_ptr + n * k_c, d, k_c, j, ACC, BLOCK_D)
    if HAS_S:
        _hidden_block(h_ptr + n * d, whs_ptr, bs_ptr, hs_ptr + n * k_s, d, k_s, j, ACC, BLOCK_D)


@triton.jit
def _hidden_block(h_row, w_ptr, b_ptr, out_row, d, k, j, ACC: tl.constexpr, BLOCK_D: tl.constexpr):
    jm = j < k
    out = tl.load(b_ptr + j, mask=jm, other=0.0).to(ACC)
    for i0 in range(0, d, BLOCK_D):
        i = i0 + tl.arange(0, BLOCK_D)
        hv = tl.load(h_row + i, mask=i < d, other=0.0).to(ACC)
        out += matvec(w_ptr, d, 1, hv, i, i < d, j, jm, ACC)
    tl.store(out_row + j, out, mask=jm)


@triton.jit
def _sca_channel(
    v_in_ptr, alpha_ptr, hc_ptr, wc_ptr, uc_ptr, v_ptr, beta_ptr, ws_ptr, wsm_ptr, counter_ptr,
    N, C, HW, k, n_cblk, n_split, hw_per_split, stride_c, stride_hw, SS,
    WEIGHTED: tl.constexpr, SPLIT: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_ROWS: tl.constexpr,
):
    """Channel attention over SE's squeeze grid (n, cb, sp): pooled v, logits, softmax over C."""
    n, cb, sp, c, hw_lo, hw_hi = tile_of(tl.program_id(0), n_cblk, n_split, hw_per_split, HW, BLOCK_C)
    cmask = c < C
    base = v_in_ptr + n.to(tl.int64) * C * HW
    if WEIGHTED:  # "sc": the channel branch sees V * SS * alpha
        psum, _ = pool_stream(base, c, cmask, hw_lo, hw_hi, stride_c, stride_hw, False, ACC, BLOCK_C, BLOCK_HW,
                              alpha_ptr + n * HW)
    else:
        psum, _ = pool_stream(base, c, cmask, hw_lo, hw_hi, stride_c, stride_hw, False, ACC, BLOCK_C, BLOCK_HW)
    ncb = n * n_cblk + cb
    last = True
    if SPLIT:
        last, psum, _ = combine_splits(ws_ptr, counter_ptr + N + ncb, ncb, sp, n_split, psum, psum, False, False,
                                       ACC, BLOCK_C, BLOCK_ROWS)
    if last:
        vv = psum * SS / HW
        tl.store(v_ptr + n * C + c, vv, mask=cmask)
        z = tl.zeros([BLOCK_C], dtype=ACC)
        for j0 in range(0, k, BLOCK_K):
            j = j0 + tl.arange(0, BLOCK_K)
            pre, w, u = _channel_units(vv, hc_ptr + n * k, wc_ptr, uc_ptr, j, j < k)
            z += tl.sum(tanh(pre) * u[None, :], axis=1)
        tl.store(beta_ptr + n * C + c, z, mask=cmask)
        _park_softmax(wsm_ptr + 2 * ncb, z, cmask)
        if arrive_last(counter_ptr + n, n_cblk):
            _finish_softmax(beta_ptr + n * C, wsm_ptr + 2 * n * n_cblk, n_cblk, C, BLOCK_C)


@triton.jit
def _sca_spatial(
    v_ptr, beta_ptr, ws_w_ptr, hs_ptr, us_ptr, alpha_ptr, wsm_ptr, counter_ptr,
    C, HW, k, n_lb, stride_c, stride_hw, CS,
    FOLD_BETA: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr, BLOCK_L: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Spatial attention, one (sample, location block) a program: logits, softmax over HW."""
    pid = tl.program_id(0)
    n = pid // n_lb
    lb = pid % n_lb
    l = lb * BLOCK_L + tl.arange(0, BLOCK_L)
    lmask = l < HW
    base = v_ptr + n.to(tl.int64) * C * HW
    z = tl.zeros([BLOCK_L], dtype=ACC)
    for j0 in range(0, k, BLOCK_K):
        j = j0 + tl.arange(0, BLOCK_K)
        jm = j < k
        P = _project(base, beta_ptr + n * C, ws_w_ptr, l, lmask, j, jm, C, stride_c, stride_hw, FOLD_BETA, CS,
                     PREC, ACC, BLOCK_C)
        hsv = tl.load(hs_ptr + n * k + j, mask=jm, other=0.0)
        u = tl.load(us_ptr + j, mask=jm, other=0.0).to(ACC)
        z += tl.sum(tanh(P + hsv[None, :]) * u[None, :], axis=1)
    tl.store(alpha_ptr + n * HW + l, z, mask=lmask)
    _park_softmax(wsm_ptr + 2 * pid, z, lmask)
    if arrive_last(counter_ptr + n, n_lb):
        _finish_softmax(alpha_ptr + n * HW, wsm_ptr + 2 * n * n_lb, n_lb, HW, BLOCK_L)


@triton.jit
def _sca_apply(
    v_ptr, x_ptr, beta_ptr, alpha_ptr, C, HW, n_cblk, n_split, hw_per_split, stride_c, stride_hw, CS, SS,
    HAS_C: tl.constexpr, HAS_S: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    """X = V * (CS beta[c]) * (SS alpha[l]) over a tile of the (n, cb, sp) grid, one rounding."""
    n, cb, sp, c, hw_lo, hw_hi = tile_of(tl.program_id(0), n_cblk, n_split, hw_per_split, HW, BLOCK_C)
    cmask = c < C
    off_n = n.to(tl.int64) * C * HW
    if HAS_C:
        col = tl.load(beta_ptr + n * C + c, mask=cmask, other=0.0) * CS
    for hw0 in range(hw_lo, hw_hi, BLOCK_HW):
        hw = hw0 + tl.arange(0, BLOCK_HW)
        ptrs, m = tile_ptrs(off_n, c, hw, cmask, hw_hi, stride_c, stride_hw)
        y = tl.load(v_ptr + ptrs, mask=m, other=0.0).to(ACC)
        if HAS_C:
            y = y * col[:, None]
        if HAS_S:
            y = y * (tl.load(alpha_ptr + n * HW + hw, mask=hw < hw_hi, other=0.0) * SS)[None, :]
        tl.store(x_ptr + ptrs, cast_to(y, x_ptr.dtype.element_ty), mask=m)


# --------------------------------------------------------------------------------------------
# backward
# --------------------------------------------------------------------------------------------
@triton.jit
def _sca_bwd_reduce(
    dx_ptr, v_ptr, beta_ptr, alpha_ptr, dv_ptr, loc_ptr, ch_ptr, C, HW, n_cb, n_lb, stride_c, stride_hw,
    LOC_MUL, LOC_DIV, CH_MUL,
    LOC: tl.constexpr, CH: tl.constexpr, LOC_BETA: tl.constexpr, CH_ALPHA: tl.constexpr, MODE_DV: tl.constexpr,
    ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    """One (BLOCK_C x BLOCK_HW) tile of T = dX * V (MODE_DV: V * dv[c]): its location sums into
    loc rows [n, cb, l] (weighted by beta[c] if LOC_BETA, times LOC_MUL / LOC_DIV) and its channel
    sums into ch rows [n, lb, c] (weighted by alpha[l] if CH_ALPHA, times CH_MUL)."""
    pid = tl.program_id(0)
    n = pid // (n_cb * n_lb)
    r = pid % (n_cb * n_lb)
    cb = r // n_lb
    lb = r % n_lb
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    hw = lb * BLOCK_HW + tl.arange(0, BLOCK_HW)
    ptrs, m = tile_ptrs(n.to(tl.int64) * C * HW, c, hw, cmask, HW, stride_c, stride_hw)
    t = tl.load(v_ptr + ptrs, mask=m, other=0.0).to(ACC)
    if MODE_DV:
        t = t * tl.load(dv_ptr + n * C + c, mask=cmask, other=0.0)[:, None]
    else:
        t = t * tl.load(dx_ptr + ptrs, mask=m, other=0.0).to(ACC)
    if LOC:
        tl_ = t
        if LOC_BETA:
            tl_ = t * tl.load(beta_ptr + n * C + c, mask=cmask, other=0.0)[:, None]
        loc = tl.sum(tl_, axis=0) * LOC_MUL / LOC_DIV
        tl.store(loc_ptr + (n * n_cb + cb) * HW + hw, loc, mask=hw < HW)
    if CH:
        tc = t
        if CH_ALPHA:
            tc = t * tl.load(alpha_ptr + n * HW + hw, mask=hw < HW, other=0.0)[None, :]
        tl.store(ch_ptr + (n * n_lb + lb) * C + c, tl.sum(tc, axis=1) * CH_MUL, mask=cmask)


@triton.jit
def _sca_softmax_bwd(p_ptr, r1_ptr, R1, r2_ptr, R2, ext_ptr, dz_ptr, size,
                     HAS_R2: tl.constexpr, HAS_EXT: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
                     BLOCK_ROWS: tl.constexpr):
    """One sample's softmax backward: g = its rows of r1 (R1 of them), then of r2, summed in order
    (+ ext: the gradient reaching the returned map); dz = p * (g - sum p g)."""
    n = tl.program_id(0)
    dot = tl.zeros([BLOCK], dtype=ACC)
    for m0 in range(0, size, BLOCK):
        m = m0 + tl.arange(0, BLOCK)
        mm = m < size
        g = sum_rows(r1_ptr + n * R1 * size, R1, size, m, mm, ACC, BLOCK_ROWS, False)
        if HAS_R2:
            g += sum_rows(r2_ptr + n * R2 * size, R2, size, m, mm, ACC, BLOCK_ROWS, False)
        if HAS_EXT:
            g += tl.load(ext_ptr + n * size + m, mask=mm, other=0.0)
        dot += tl.load(p_ptr + n * size + m, mask=mm, other=0.0) * g
        tl.store(dz_ptr + n * size + m, g, mask=mm)
    d = tl.sum(dot, axis=0)
    tl.debug_barrier()  # (this program's own g, read back by whichever thread holds the element)
    for m0 in range(0, size, BLOCK):
        m = m0 + tl.arange(0, BLOCK)
        mm = m < size
        g = tl.load(dz_ptr + n * size + m, mask=mm, other=0.0)
        tl.store(dz_ptr + n * size + m, tl.load(p_ptr + n * size + m, mask=mm, other=0.0) * (g - d), mask=mm)


@triton.jit
def _sca_channel_bwd(dzc_ptr, v_ptr, hc_ptr, wc_ptr, uc_ptr, dv_ptr, rhc_ptr, ruc_ptr, rwc_ptr, C, k, n_cb,
                     ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr):
    """The channel logits' backward for a (sample, channel block): dv, and the block's rows of
    dhc = sum_c dB, du_c = sum_c dzc b, dw_c = sum_c dB v, with dB = dzc u_c (1 - b^2)."""
    pid = tl.program_id(0)
    n = pid // n_cb
    c = (pid % n_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < C
    dz = tl.load(dzc_ptr + n * C + c, mask=cm, other=0.0)
    vv = tl.load(v_ptr + n * C + c, mask=cm, other=0.0)
    dv = tl.zeros([BLOCK_C], dtype=ACC)
    for j0 in range(0, k, BLOCK_K):
        j = j0 + tl.arange(0, BLOCK_K)
        jm = j < k
        pre, w, u = _channel_units(vv, hc_ptr + n * k, wc_ptr, uc_ptr, j, jm)
        b, slope = tanh_and_slope(pre)
        b = tl.where(cm[:, None], b, 0.0)
        dB = dz[:, None] * u[None, :] * slope  # (0 in the masked rows: dz = 0 there)
        dv += tl.sum(dB * w[None, :], axis=1)
        tl.store(rhc_ptr + pid * k + j, tl.sum(dB, axis=0), mask=jm)
        tl.store(ruc_ptr + pid * k + j, tl.sum(dz[:, None] * b, axis=0), mask=jm)
        tl.store(rwc_ptr + pid * k + j, tl.sum(dB * vv[:, None], axis=0), mask=jm)
    tl.store(dv_ptr + n * C + c, dv, mask=cm)


@triton.jit
def _sca_spatial_bwd(
    v_ptr, beta_ptr, ws_w_ptr, hs_ptr, us_ptr, dzs_ptr, dp_ptr, rhs_ptr, rus_ptr, n0,
    C, HW, k, n_lb, n_kb, stride_c, stride_hw, CS,
    FOLD_BETA: tl.constexpr, ROWS: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr, BLOCK_L: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dP = dzs u_s (1 - a^2) for one (chunk sample, location block, unit block), P recomputed as
    _sca_spatial computes it, into the chunk's dP scratch (V's dtype); ROWS: also the block's
    rows of dhs = sum_l dP and du_s = sum_l dzs a."""
    pid = tl.program_id(0)
    s = pid // (n_lb * n_kb)
    r = pid % (n_lb * n_kb)
    lb = r // n_kb
    kb = r % n_kb
    n = n0 + s
    l = lb * BLOCK_L + tl.arange(0, BLOCK_L)
    lmask = l < HW
    j = kb * BLOCK_K + tl.arange(0, BLOCK_K)
    jm = j < k
    P = _project(v_ptr + n.to(tl.int64) * C * HW, beta_ptr + n * C, ws_w_ptr, l, lmask, j, jm, C, stride_c,
                 stride_hw, FOLD_BETA, CS, PREC, ACC, BLOCK_C)
    a, slope = tanh_and_slope(P + tl.load(hs_ptr + n * k + j, mask=jm, other=0.0)[None, :])
    dz = tl.load(dzs_ptr + n * HW + l, mask=lmask, other=0.0)
    u = tl.load(us_ptr + j, mask=jm, other=0.0).to(ACC)
    dP = dz[:, None] * u[None, :] * slope  # (0 in masked rows and columns)
    tl.store(dp_ptr + (s * HW + l[:, None]).to(tl.int64) * k + j[None, :], cast_to(dP, dp_ptr.dtype.element_ty),
             mask=lmask[:, None] & jm[None, :])
    if ROWS:
        row = (n * n_lb + lb) * k
        tl.store(rhs_ptr + row + j, tl.sum(dP, axis=0), mask=jm)
        tl.store(rus_ptr + row + j, tl.sum(dz[:, None] * tl.where(lmask[:, None], a, 0.0), axis=0), mask=jm)


@triton.jit
def _sca_spatial_dw(
    dp_ptr, v_ptr, beta_ptr, ws_w_ptr, acc_ptr, dws_ptr, g2_ptr, n0, n_chunk,
    C, HW, k, n_cb, n_kb, stride_c, stride_hw, CS,
    FOLD_BETA: tl.constexpr, FIRST: tl.constexpr, LAST: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """A (unit block, channel block) tile of dW_s over the chunk's samples, in order: M_n =
    dP_n^T V_n, dW_s += M_n (* CS beta_n[c] with FOLD_BETA, order "cs", which also writes the g2
    rows [n, kb, c] = CS sum_j W_s[j, c] M_n[j, c]). FIRST: start from 0, else from the acc-dtype
    accumulator; LAST: store the weight gradient, else the accumulator."""
    pid = tl.program_id(0)
    kb = pid // n_cb
    cb = pid % n_cb
    j = kb * BLOCK_K + tl.arange(0, BLOCK_K)
    jm = j < k
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < C
    tile = j[:, None] * C + c[None, :]
    tmask = jm[:, None] & cm[None, :]
    if FIRST:
        tot = tl.zeros([BLOCK_K, BLOCK_C], dtype=ACC)
    else:
        tot = tl.load(acc_ptr + tile, mask=tmask, other=0.0)
    if FOLD_BETA:
        w = tl.load(ws_w_ptr + tile, mask=tmask, other=0.0).to(ACC)
    for s in range(0, n_chunk):
        n = n0 + s
        base = v_ptr + n.to(tl.int64) * C * HW
        M = tl.zeros([BLOCK_K, BLOCK_C], dtype=ACC)
        for l0 in range(0, HW, BLOCK_L):
            l = l0 + tl.arange(0, BLOCK_L)
            lm = l < HW
            a = tl.load(dp_ptr + (s * HW + l[None, :]).to(tl.int64) * k + j[:, None], mask=jm[:, None] & lm[None, :],
                        other=0.0)
            b = tl.load(base + c[None, :] * stride_c + l[:, None] * stride_hw, mask=lm[:, None] & cm[None, :],
                        other=0.0)
            M = dot_acc(a, b, M, PREC)
        if FOLD_BETA:
            tot += M * (tl.load(beta_ptr + n * C + c, mask=cm, other=0.0) * CS)[None, :]
            tl.store(g2_ptr + (n * n_kb + kb) * C + c, tl.sum(w * M, axis=0) * CS, mask=cm)
        else:
            tot += M
    if LAST:
        tl.store(dws_ptr + tile, cast_to(tot, dws_ptr.dtype.element_ty), mask=tmask)
    else:
        tl.store(acc_ptr + tile, tot, mask=tmask)


@triton.jit
def _sca_dx(
    dx_ptr, dv_out_ptr, dp_ptr, ws_w_ptr, beta_ptr, alpha_ptr, dv_ptr, n0,
    C, HW, k, n_lb, n_cb, stride_c, stride_hw, CS, SS,
    ORDER: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """dV for a (chunk sample, location block, channel block) tile: G = dP[n, lb, :] @ W_s[:, cb]
    (orders with "s"), then the order's formula (module docstring)."""
    pid = tl.program_id(0)
    s = pid // (n_lb * n_cb)
    r = pid % (n_lb * n_cb)
    lb = r // n_cb
    cb = r % n_cb
    n = n0 + s
    l = lb * BLOCK_L + tl.arange(0, BLOCK_L)
    lm = l < HW
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < C
    ptrs = n.to(tl.int64) * C * HW + c[None, :] * stride_c + l[:, None] * stride_hw
    m = lm[:, None] & cm[None, :]
    g = tl.load(dx_ptr + ptrs, mask=m, other=0.0).to(ACC)
    if ORDER != "s":
        col = tl.load(beta_ptr + n * C + c, mask=cm, other=0.0) * CS
        dvc = tl.load(dv_ptr + n * C + c, mask=cm, other=0.0) / HW
    if ORDER != "c":
        row = tl.load(alpha_ptr + n * HW + l, mask=lm, other=0.0) * SS
        G = tl.zeros([BLOCK_L, BLOCK_C], dtype=ACC)
        for j0 in range(0, k, BLOCK_K):
            j = j0 + tl.arange(0, BLOCK_K)
            jm = j < k
            a = tl.load(dp_ptr + (s * HW + l[:, None]).to(tl.int64) * k + j[None, :], mask=lm[:, None] & jm[None, :],
                        other=0.0)
            w = tl.load(ws_w_ptr + j[:, None] * C + c[None, :], mask=jm[:, None] & cm[None, :], other=0.0)
            G = dot_acc(a, w, G, PREC)
    if ORDER == "s":
        g = g * row[:, None] + G
    elif ORDER == "cs":
        g = (g * row[:, None] + G) * col[None, :] + dvc[None, :]
    elif ORDER == "sc":
        g = (g * col[None, :] + dvc[None, :]) * row[:, None] + G
    else:
        g = g * col[None, :] + dvc[None, :]
    tl.store(dv_out_ptr + ptrs, cast_to(g, dv_out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _sca_hidden_bwd(rhc_ptr, Rc, rhs_ptr, Rs, whc_ptr, whs_ptr, dhc_ptr, dhs_ptr, dh_ptr, d, k_c, k_s, n_db,
                    HAS_C: tl.constexpr, HAS_S: tl.constexpr, ACC: tl.constexpr, BLOCK_K: tl.constexpr,
                    BLOCK_D: tl.constexpr, BLOCK_ROWS: tl.constexpr):
    """dh[n, db] = W_hc[:, db]^T dhc[n] + W_hs[:, db]^T dhs[n], dhc / dhs being the sample's rows
    summed in order (the d block 0 stores them for the weight gradients)."""
    pid = tl.program_id(0)
    n = pid // n_db
    db = pid % n_db
    i = db * BLOCK_D + tl.arange(0, BLOCK_D)
    im = i < d
    out = tl.zeros([BLOCK_D], dtype=ACC)
    if HAS_C:
        out += _hidden_grad(rhc_ptr + n * Rc * k_c, Rc, whc_ptr, dhc_ptr + n * k_c, db, d, k_c, i, im, ACC, BLOCK_K,
                            BLOCK_ROWS)
    if HAS_S:
        out += _hidden_grad(rhs_ptr + n * Rs * k_s, Rs, whs_ptr, dhs_ptr + n * k_s, db, d, k_s, i, im, ACC, BLOCK_K,
                            BLOCK_ROWS)
    tl.store(dh_ptr + n * d + i, cast_to(out, dh_ptr.dtype.element_ty), mask=im)


@triton.jit
def _hidden_grad(rows_ptr, R, w_ptr, dhid_row, db, d, k, i, im, ACC: tl.constexpr, BLOCK_K: tl.constexpr,
                 BLOCK_ROWS: tl.constexpr):
    out = tl.zeros([i.shape[0]], dtype=ACC)
    for j0 in range(0, k, BLOCK_K):
        j = j0 + tl.arange(0, BLOCK_K)
        jm = j < k
        g = sum_rows(rows_ptr, R, k, j, jm, ACC, BLOCK_ROWS, False)
        if db == 0:
            tl.store(dhid_row + j, g, mask=jm)
        out += matvec(w_ptr, 1, d, g, j, jm, i, im, ACC)
    return out


@triton.jit
def _sca_bwd_weights(
    dhc_ptr, dhs_ptr, h_ptr, dwhc_ptr, dbc_ptr, dwhs_ptr, dbs_ptr, ruc_ptr, rwc_ptr, rus_ptr, dzc_ptr, dzs_ptr,
    duc_ptr, dwc_ptr, dus_ptr, dcc_ptr, dcs_ptr,
    N, d, k_c, k_s, C, HW, Rc, Rs, t_c, t_s, n_tb, n_kbc, n_kbs,
    HAS_C: tl.constexpr, HAS_S: tl.constexpr, ACC: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_ROWS: tl.constexpr,
):
    """Programs in turn: dW_hc's tiles (with db_c), dW_hs's (with db_s), then one per unit block of
    du_c and dw_c, of du_s, and one for dc_c and dc_s: every sum over samples in a fixed order."""
    pid = tl.program_id(0)
    if pid < t_c:
        outer_sum_tile(dhc_ptr, h_ptr, dwhc_ptr, dbc_ptr, N, k_c, d, pid // n_tb, pid % n_tb, False, "identity", ACC,
                       BLOCK_A, BLOCK_B)
    elif pid < t_c + t_s:
        q = pid - t_c
        outer_sum_tile(dhs_ptr, h_ptr, dwhs_ptr, dbs_ptr, N, k_s, d, q // n_tb, q % n_tb, False, "identity", ACC,
                       BLOCK_A, BLOCK_B)
    elif pid < t_c + t_s + n_kbc:
        j = (pid - t_c - t_s) * BLOCK_K + tl.arange(0, BLOCK_K)
        jm = j < k_c
        tl.store(duc_ptr + j, cast_to(sum_rows(ruc_ptr, N * Rc, k_c, j, jm, ACC, BLOCK_ROWS, False),
                                      duc_ptr.dtype.element_ty), mask=jm)
        tl.store(dwc_ptr + j, cast_to(sum_rows(rwc_ptr, N * Rc, k_c, j, jm, ACC, BLOCK_ROWS, False),
                                      dwc_ptr.dtype.element_ty), mask=jm)
    elif pid < t_c + t_s + n_kbc + n_kbs:
        j = (pid - t_c - t_s - n_kbc) * BLOCK_K + tl.arange(0, BLOCK_K)
        jm = j < k_s
        tl.store(dus_ptr + j, cast_to(sum_rows(rus_ptr, N * Rs, k_s, j, jm, ACC, BLOCK_ROWS, False),
                                      dus_ptr.dtype.element_ty), mask=jm)
    else:  # dc = 0 * sum dz: exactly 0 (shift invariance), NaN where a gradient was not finite
        if HAS_C:
            tl.store(dcc_ptr, cast_to(0.0 * _total(dzc_ptr, N, C, ACC, BLOCK_K, BLOCK_ROWS), dcc_ptr.dtype.element_ty))
        if HAS_S:
            tl.store(dcs_ptr, cast_to(0.0 * _total(dzs_ptr, N, HW, ACC, BLOCK_K, BLOCK_ROWS), dcs_ptr.dtype.element_ty))


@triton.jit
def _total(ptr, rows, cols, ACC: tl.constexpr, BLOCK: tl.constexpr, BLOCK_ROWS: tl.constexpr):
    """The sum of a (rows, cols) matrix: its column blocks' row sums, in order."""
    tot = tl.zeros([BLOCK], dtype=ACC)
    for c0 in range(0, cols, BLOCK):
        c = c0 + tl.arange(0, BLOCK)
        tot += sum_rows(ptr, rows, cols, c, c < cols, ACC, BLOCK_ROWS, False)
    return tl.sum(tot, axis=0)


# --------------------------------------------------------------------------------------------
# launchers (inputs validated and normalized by attnkernels/sca.py)
# --------------------------------------------------------------------------------------------
_TILE = 2048      # elements of a (channels x locations) tile of the elementwise and reduction grids
_INT32_MAX = 2**31 - 1
np2 = triton.next_power_of_2


def gemm_tiles(dtype: torch.dtype):
    """(BLOCK_L, BLOCK_C, BLOCK_K) of the product kernels: tl.dot takes 16 or more along each
    dimension; the operand and accumulator tiles of a program stay in registers (sm_90, 4 warps,
    tests/test_sca_triton_compile.py: fp32's 64 x 64 operands spilled, fp64's 64-wide tiles too)."""
    return {torch.float64: (32, 16, 32), torch.float32: (64, 32, 64)}.get(dtype, (64, 64, 64))


@functools.lru_cache(maxsize=1024)
def _plan(shape, nchw: bool, k_c: int, k_s: int, d: int, device: torch.device, dtype: torch.dtype):
    """Tile sizes and grid extents of every SCA kernel for one shape and layout (a dict; cached:
    shared by every call of the shape, so read-only by convention)."""
    N, C, H, W = shape
    HW = H * W
    if nchw:  # channel planes contiguous
        block_hw = min(np2(HW), 512)
        block_c = max(1, min(np2(C), _TILE // block_hw, 256))
        stride_c, stride_hw = HW, 1
    else:  # channels_last: a pixel's channels contiguous
        block_c = min(np2(C), 64)
        block_hw = max(1, min(np2(HW), _TILE // block_c))
        stride_c, stride_hw = 1, C
    n_cblk, hw_blocks = triton.cdiv(C, block_c), triton.cdiv(HW, block_hw)
    n_split = max(1, min(hw_blocks, target_programs(device) // max(1, N * n_cblk)))
    hw_per_split = triton.cdiv(hw_blocks, n_split) * block_hw
    n_split = triton.cdiv(HW, hw_per_split)
    # the products' tiles (masked past HW, C, k_s)
    gl, gc, gk = (max(16, min(np2(x), t)) for x, t in zip((HW, C, max(k_s, 1)), gemm_tiles(dtype)))
    bk_c = max(1, min(np2(max(k_c, 1)), _TILE // block_c))      # units per step of the channel logits
    bc_cb = min(np2(C), 64)                                     # channel_bwd's channel block
    bk_h = min(np2(max(k_c, k_s, 1)), 64)                       # hidden's unit block
    bd = min(np2(max(d, 1)), _TILE // bk_h)                     # (a weight tile of 2048 or fewer)
    p = dict(N=N, C=C, HW=HW, d=d, k_c=k_c, k_s=k_s, stride_c=stride_c, stride_hw=stride_hw,
             block_c=block_c, block_hw=block_hw, n_cblk=n_cblk, hw_blocks=hw_blocks, n_split=n_split,
             hw_per_split=hw_per_split, gl=gl, gc=gc, gk=gk, n_lb=triton.cdiv(HW, gl), n_gcb=triton.cdiv(C, gc),
             n_kb=triton.cdiv(k_s, gk), bk_c=bk_c, bc_cb=bc_cb, bk_cb=max(1, min(np2(max(k_c, 1)), _TILE // bc_cb)),
             n_cb_c=triton.cdiv(C, bc_cb), bk_h=bk_h, n_kb_h=max(1, triton.cdiv(max(k_c, k_s), bk_h)), bd=bd,
             n_db=max(1, triton.cdiv(d, bd)),
             chunk=max(1, min(N, DP_BUDGET // max(1, HW * k_s))))
    per_sample = max(C * (hw_blocks + p["n_kb"] + 4), HW * (n_cblk * 2 + 2), k_c * p["n_cb_c"] * 3,
                     k_s * p["n_lb"] * 2, 2 * n_cblk * n_split * block_c, d)  # (d: h and dh, (N, d))
    if C * HW > _INT32_MAX or N * per_sample > _INT32_MAX or p["chunk"] * HW * max(k_s, 1) > _INT32_MAX:
        raise ValueError(f"sca (triton): V of shape {tuple(shape)} (h of width {d}) is too large for the Triton "
                         f"kernels' 32-bit indexing within a sample and of their per-sample scratch")
    return p


def _vecs(dtype, device, n, *shapes):
    """Fresh acc-dtype outputs: the shape, or an empty (0,) tensor where the branch is absent (n=0)."""
    return [empty(s if n else (0,), dtype, device) for s in shapes]


def _prec(V, tf32):
    return "tf32" if tf32 and V.dtype == torch.float32 else "ieee"


@on_x_device
def sca_forward(V, h, w_c, b_c, W_hc, u_c, W_s, b_s, W_hs, u_s, order, scale, tf32):
    """The forward of the backend contract (module docstring)."""
    N, C, H, W = V.shape
    has_c, has_s = "c" in order, "s" in order
    k_c = W_hc.shape[0] if has_c else 0
    k_s = W_s.shape[0] if has_s else 0
    p = _plan(tuple(V.shape), V.is_contiguous(), k_c, k_s, h.shape[1], V.device, V.dtype)
    HW, acc, accd = p["HW"], acc_dtype(V.dtype), tl_acc_dtype(V.dtype)
    cs, ss = (C, HW) if scale else (1, 1)
    hc, v, beta = _vecs(acc, V.device, has_c, (N, k_c), (N, C), (N, C))
    hs, alpha = _vecs(acc, V.device, has_s, (N, k_s), (N, HW))
    X = empty_like(V)
    any_ = h  # (the pointer of an absent branch's parameter: never read)
    launcher(_sca_hidden)[(N * p["n_kb_h"],)](
        h, W_hc if has_c else any_, b_c if has_c else any_, hc, W_hs if has_s else any_, b_s if has_s else any_, hs,
        p["d"], k_c, k_s, p["n_kb_h"], HAS_C=has_c, HAS_S=has_s, ACC=accd, BLOCK_K=p["bk_h"], BLOCK_D=p["bd"],
        num_warps=4)
    counters = arrival_counters(V.device, 2 * N + N * p["n_cblk"])
    split = p["n_split"] > 1
    ws, wsm_c, wsm_s = workspaces(V.device, acc, N * p["n_cblk"] * p["n_split"] * 2 * p["block_c"] if split else 1,
                                  2 * N * p["n_cblk"], 2 * N * p["n_lb"], across_launches="sca_forward")
    grid = (N * p["n_cblk"] * p["n_split"],)

    def channel(weighted):
        launcher(_sca_channel)[grid](
            V, alpha if weighted else V, hc, w_c, u_c, v, beta, ws, wsm_c, counters, N, C, HW, k_c, p["n_cblk"],
            p["n_split"], p["hw_per_split"], p["stride_c"], p["stride_hw"], ss if weighted else 1,
            WEIGHTED=weighted, SPLIT=split, ACC=accd, BLOCK_C=p["block_c"], BLOCK_HW=p["block_hw"],
            BLOCK_K=p["bk_c"], BLOCK_ROWS=max(1, min(32, _TILE // p["block_c"])), num_warps=4)

    def spatial(fold_beta):
        launcher(_sca_spatial)[(N * p["n_lb"],)](
            V, beta if fold_beta else V, W_s, hs, u_s, alpha, wsm_s, counters[N + N * p["n_cblk"]:], C, HW, k_s,
            p["n_lb"], p["stride_c"], p["stride_hw"], cs, FOLD_BETA=fold_beta, PREC=_prec(V, tf32), ACC=accd,
            BLOCK_L=p["gl"], BLOCK_C=p["gc"], BLOCK_K=p["gk"], num_warps=4)

    if order == "cs":
        channel(False)
        spatial(True)
    elif order == "sc":
        spatial(False)
        channel(True)
    elif order == "c":
        channel(False)
    else:
        spatial(False)
    launcher(_sca_apply)[grid](
        V, X, beta if has_c else V, alpha if has_s else V, C, HW, p["n_cblk"], p["n_split"], p["hw_per_split"],
        p["stride_c"], p["stride_hw"], cs, ss, HAS_C=has_c, HAS_S=has_s, ACC=accd, BLOCK_C=p["block_c"],
        BLOCK_HW=p["block_hw"], num_warps=4)
    return X, hc, hs, v, beta, alpha


@on_x_device
def sca_backward(dX, V, h, w_c, W_hc, u_c, W_s, W_hs, u_s, hc, hs, v, beta, alpha, dbeta, dalpha, order, scale,
                 tf32):
    """The backward of the backend contract (module docstring): the launches of the order's
    sequence."""
    N, C, H, W = V.shape
    has_c, has_s = "c" in order, "s" in order
    k_c = W_hc.shape[0] if has_c else 0
    k_s = W_s.shape[0] if has_s else 0
    d = h.shape[1]
    p = _plan(tuple(V.shape), V.is_contiguous(), k_c, k_s, d, V.device, V.dtype)
    HW, acc, accd, dev, wdt = p["HW"], acc_dtype(V.dtype), tl_acc_dtype(V.dtype), V.device, V.dtype
    cs, ss = (C, HW) if scale else (1, 1)
    prec = _prec(V, tf32)
    n_cb1, n_lb1, n_cbc, n_lb, n_kb = p["n_cblk"], p["hw_blocks"], p["n_cb_c"], p["n_lb"], p["n_kb"]
    (loc, loc2, ch, g2, dzc, dzs, dv, rhc, ruc, rwc, rhs, rus, dhc, dhs, dws_acc) = workspaces(
        dev, acc, N * n_cb1 * HW * has_s, N * n_cb1 * HW * (order == "sc"), N * n_lb1 * C * has_c,
        N * n_kb * C * (order == "cs"), N * C * has_c, N * HW * has_s, N * C * has_c,
        N * n_cbc * k_c, N * n_cbc * k_c, N * n_cbc * k_c, N * n_lb * k_s, N * n_lb * k_s, N * k_c, N * k_s,
        k_s * C, across_launches="sca_backward")
    S = p["chunk"]
    chunks = [(n0, min(S, N - n0)) for n0 in range(0, N, S)] if has_s else [(0, N)]
    (dP,) = workspaces(dev, wdt, S * HW * k_s if has_s else 1, across_launches="sca_dP")
    dV = empty_like(V)
    dh = empty((N, d), h.dtype, dev)
    dw_c, db_c, du_c, dc_c = (empty(s if has_c else (0,), wdt, dev) for s in ((k_c,), (k_c,), (k_c,), (1,)))
    dW_hc = empty((k_c, d) if has_c else (0,), wdt, dev)
    db_s, du_s, dc_s = (empty(s if has_s else (0,), wdt, dev) for s in ((k_s,), (k_s,), (1,)))
    dW_s = empty((k_s, C) if has_s else (0,), wdt, dev)
    dW_hs = empty((k_s, d) if has_s else (0,), wdt, dev)
    any_ = V  # (an absent tensor's pointer: never read)
    both = has_c and has_s
    rb = max(1, min(32, _TILE // 256))

    def reduce(mode_dv):
        launcher(_sca_bwd_reduce)[(N * n_cb1 * n_lb1,)](
            dX, V, beta if has_c else any_, alpha if has_s else any_, dv, loc2 if mode_dv else loc, ch, C, HW, n_cb1,
            n_lb1, p["stride_c"], p["stride_hw"], ss if mode_dv else cs * ss if both else ss, HW if mode_dv else 1,
            cs * ss if both else cs, LOC=has_s, CH=has_c and not mode_dv, LOC_BETA=both and not mode_dv,
            CH_ALPHA=both, MODE_DV=mode_dv, ACC=accd, BLOCK_C=p["block_c"], BLOCK_HW=p["block_hw"], num_warps=4)

    def softmax_bwd(prob, r1, R1, r2, R2, ext, dz, size):
        block = min(np2(size), 1024)
        launcher(_sca_softmax_bwd)[(N,)](
            prob, r1, R1, r2 if r2 is not None else r1, R2, ext if ext is not None else prob, dz, size,
            HAS_R2=r2 is not None, HAS_EXT=ext is not None, ACC=accd, BLOCK=block,
            BLOCK_ROWS=max(1, min(32, _TILE // block)), num_warps=4)

    def channel_bwd():
        launcher(_sca_channel_bwd)[(N * n_cbc,)](
            dzc, v, hc, w_c, u_c, dv, rhc, ruc, rwc, C, k_c, n_cbc, ACC=accd, BLOCK_C=p["bc_cb"],
            BLOCK_K=p["bk_cb"], num_warps=4)

    gemm = dict(PREC=prec, ACC=accd, BLOCK_L=p["gl"], BLOCK_C=p["gc"], BLOCK_K=p["gk"], num_warps=4)

    def spatial_bwd(n0, ns, rows):
        launcher(_sca_spatial_bwd)[(ns * n_lb * n_kb,)](
            V, beta if order == "cs" else any_, W_s, hs, u_s, dzs, dP, rhs, rus, n0, C, HW, k_s, n_lb, n_kb,
            p["stride_c"], p["stride_hw"], cs, FOLD_BETA=order == "cs", ROWS=rows, **gemm)

    def spatial_dw(i, n0, ns):
        launcher(_sca_spatial_dw)[(n_kb * p["n_gcb"],)](
            dP, V, beta if order == "cs" else any_, W_s, dws_acc, dW_s, g2, n0, ns, C, HW, k_s, p["n_gcb"], n_kb,
            p["stride_c"], p["stride_hw"], cs, FOLD_BETA=order == "cs", FIRST=i == 0, LAST=i == len(chunks) - 1,
            **gemm)

    def dx(n0, ns):
        launcher(_sca_dx)[(ns * n_lb * p["n_gcb"],)](
            dX, dV, dP, W_s if has_s else any_, beta if has_c else any_, alpha if has_s else any_, dv, n0, C, HW,
            k_s, n_lb, p["n_gcb"], p["stride_c"], p["stride_hw"], cs, ss, ORDER=order, **gemm)

    def spatial_pass(with_dx):
        for i, (n0, ns) in enumerate(chunks):
            spatial_bwd(n0, ns, True)
            spatial_dw(i, n0, ns)
            if with_dx:
                dx(n0, ns)

    reduce(False)
    if order == "c":
        softmax_bwd(beta, ch, n_lb1, None, 0, dbeta, dzc, C)
        channel_bwd()
        dx(0, N)
    elif order == "s":
        softmax_bwd(alpha, loc, n_cb1, None, 0, dalpha, dzs, HW)
        spatial_pass(True)
    elif order == "cs":
        softmax_bwd(alpha, loc, n_cb1, None, 0, dalpha, dzs, HW)
        spatial_pass(False)
        softmax_bwd(beta, ch, n_lb1, g2, n_kb, dbeta, dzc, C)
        channel_bwd()
        for n0, ns in chunks:
            if len(chunks) > 1:  # (the scratch holds the last chunk's dP only)
                spatial_bwd(n0, ns, False)
            dx(n0, ns)
    else:  # "sc"
        softmax_bwd(beta, ch, n_lb1, None, 0, dbeta, dzc, C)
        channel_bwd()
        reduce(True)
        softmax_bwd(alpha, loc, n_cb1, loc2, n_cb1, dalpha, dzs, HW)
        spatial_pass(True)
    launcher(_sca_hidden_bwd)[(N * p["n_db"],)](
        rhc, n_cbc, rhs, n_lb, W_hc if has_c else any_, W_hs if has_s else any_, dhc, dhs, dh, d, k_c, k_s, p["n_db"],
        HAS_C=has_c, HAS_S=has_s, ACC=accd, BLOCK_K=p["bk_h"], BLOCK_D=p["bd"], BLOCK_ROWS=rb, num_warps=4)
    ba, bb = min(np2(max(k_c, k_s, 1)), 32), min(np2(max(d, 1)), 16)
    n_tb = max(1, triton.cdiv(d, bb))
    t_c = triton.cdiv(k_c, ba) * n_tb if has_c else 0
    t_s = triton.cdiv(k_s, ba) * n_tb if has_s else 0
    bk = min(np2(max(k_c, k_s, 1)), 256)
    n_kbc = triton.cdiv(k_c, bk) if has_c else 0
    n_kbs = triton.cdiv(k_s, bk) if has_s else 0
    launcher(_sca_bwd_weights)[(t_c + t_s + n_kbc + n_kbs + 1,)](
        dhc, dhs, h, dW_hc if has_c else dW_hs, db_c if has_c else db_s, dW_hs if has_s else dW_hc,
        db_s if has_s else db_c, ruc, rwc, rus, dzc, dzs, du_c if has_c else du_s, dw_c if has_c else du_s,
        du_s if has_s else du_c, dc_c if has_c else dc_s, dc_s if has_s else dc_c, N, d, k_c, k_s, C, HW, n_cbc, n_lb,
        t_c, t_s, n_tb, n_kbc, n_kbs, HAS_C=has_c, HAS_S=has_s, ACC=accd, BLOCK_A=ba, BLOCK_B=bb, BLOCK_K=bk,
        BLOCK_ROWS=rb, num_warps=4)
    return dV, dh, dw_c, db_c, dW_hc, du_c, dc_c, dW_s, db_s, dW_hs, du_s, dc_s

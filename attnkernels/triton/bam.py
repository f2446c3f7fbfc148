"""BAM (bottleneck attention module) in Triton: the fused channel branch and gate, forward in 2
launches, backward in 3. The spatial branch's output Ms is an input (attnkernels/bam.py runs the
branch's convolutions in torch); the contract is attnkernels/bam.py's.

Every feature-map pass runs on one grid: programs over (sample n, channel block cb, HW split sp),
each owning a (BLOCK_C channels) x (its HW range) tile loop (_reduce.tile_of), as SE's do. The
channel MLP (fc0, BatchNorm1d, ReLU, fc_final) is spread over those grids rather than run by a
launch of its own (a program per sample walking C x Cr weights is latency-bound), and BatchNorm's
batch statistics, which need every sample's u, are formed by the last program of the grid:

Forward
  1. _bam_channel_pool: partial sums of x per (n, cb, sp); the last split of (n, cb) (arrival
     counter, no spinning) stores p = mean_hw x for its channels and its share of fc0,
     W0[:, cb] @ p[cb]; the last channel block of the sample adds the shares (+ b0) into u[n];
     the last sample to finish u forms the BatchNorm statistics bstat = [mean, invstd, var]:
     the batch's (over n in a fixed order; biased variance) or, in eval, the running ones.
  2. _bam_gate: each program forms mc for its own channels, mc = W1[cb, :] @ relu(bn(u[n])) + b1
     (stored by split 0), then y = x * (1 + sigmoid(mc (op) ms)) over its tile, op = * ("prod")
     or + ("sum"); in reverse order of the pooling, so x's tail still in L2 is re-read there.
Backward
  1. _bam_bwd_reduce: per tile g = dy * x * sigmoid'(att): dmc partials sum_hw g * ms (or g) per
     (n, c), combined over the splits by the last split of (n, cb), which stores dmc and its
     share of dh = W1^T dmc; dms partials sum_c g * mc (or g) per (n, pixel), parked per channel
     block and added up in block order by the last channel block of (n, sp) (one block: stored
     directly). The last channel block of the sample adds the dh shares; the last sample runs
     the BatchNorm backward for the whole batch (relu', then the batch terms in training):
     du, h = relu(bn(u)) for the weight gradients, dbn_w, dbn_b.
  2. _bam_bwd_mlp: dW1 = sum_n dmc (x) h, db1, dW0 = sum_n du (x) p, db0 (_mlp.mlp_weight_grads:
     fixed blocked order over n).
  3. _bam_bwd_dx: each program forms dp = W0[:, cb]^T du[n], then dx = dy * (1 + sigmoid(att)) +
     dp / HW over its tile, in reverse order.
Every combine is a fixed-order sum done by whichever program arrives last: no float atomics, the
same bits run to run. No (N, C, H, W) intermediate besides y and dx; the dms partials are
(N, n_cblk, HW), with channel blocks of 32-64 channels.
"""
from __future__ import annotations

import functools
import types

import torch
import triton
import triton.language as tl

from .._alloc import acc_dtype, empty, empty_like
from ._common import (activation, activation_bwd, arrival_counters, cast_to, fp32_pair, gate_bwd, sigmoid,
                      target_programs, tl_acc_dtype, workspaces)
from ._launch import launcher, on_x_device
from ._mlp import channel_layer, finish_layer, matvec, mlp_weight_grads, store_share, weight_grads_plan
from ._reduce import STREAM_STAGES, arrive_last, combine_splits, pool_tile, sum_rows, tile_of, tile_ptrs


# --------------------------------------------------------------------------------------------
# BatchNorm1d over the batch
# --------------------------------------------------------------------------------------------
# The batch statistics and the BatchNorm's backward run in float64 whatever x's dtype: N x Cr values,
# a few per sample, in one program (torch's CPU BatchNorm accumulates in float64 too). In training
# the backward's batch terms multiply rounding errors by invstd (large for a channel whose batch
# variance is near eps) and cancel: sum_n du (db0) is exactly 0 in exact arithmetic, and in float64
# the cancellation leaves only du's final rounding (with two samples, exact symmetry: 0).
@triton.jit
def _store_bstat(bstat_ptr, r, rmask, Cr, mean, var, eps_hi, eps_lo):
    """bstat[:, r] = [mean, 1 / sqrt(var + eps), var] from float64 mean and var, rounded once to
    bstat's dtype. eps arrives as two float32 scalars (Triton passes a Python float as float32)
    whose sum is the float64 eps; tl.sqrt of float64 is IEEE's."""
    out = bstat_ptr.dtype.element_ty
    tl.store(bstat_ptr + r, mean.to(out), mask=rmask)
    tl.store(bstat_ptr + Cr + r, (1.0 / tl.sqrt(var + eps_hi + eps_lo)).to(out), mask=rmask)
    tl.store(bstat_ptr + 2 * Cr + r, var.to(out), mask=rmask)


@triton.jit
def _bn_statistics(u_ptr, mean_ptr, var_ptr, bstat_ptr, N, Cr, eps_hi, eps_lo, BATCH: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_ROWS: tl.constexpr):
    """bstat of the BatchNorm: BATCH, the batch's mean and biased variance of u (N, Cr) per channel
    (float64, two passes, each over n in a fixed blocked order; u was written by other programs of
    the launch: .cg); else the running mean and variance."""
    for r0 in range(0, Cr, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        rmask = r < Cr
        if BATCH:
            mean = sum_rows(u_ptr, N, Cr, r, rmask, tl.float64, BLOCK_ROWS, False) / N
            sq = tl.zeros([BLOCK_ROWS, BLOCK_R], dtype=tl.float64)
            for n0 in range(0, N, BLOCK_ROWS):
                ns = n0 + tl.arange(0, BLOCK_ROWS)
                m = (ns < N)[:, None] & rmask[None, :]
                d = tl.load(u_ptr + ns[:, None] * Cr + r[None, :], mask=m, other=0.0, cache_modifier=".cg")
                d = tl.where(m, d.to(tl.float64) - mean[None, :], 0.0)
                sq += d * d
            var = tl.sum(sq, axis=0) / N
        else:
            mean = tl.load(mean_ptr + r, mask=rmask, other=0.0).to(tl.float64)
            var = tl.load(var_ptr + r, mask=rmask, other=1.0).to(tl.float64)
        _store_bstat(bstat_ptr, r, rmask, Cr, mean, var, eps_hi, eps_lo)


@triton.jit
def _bn_out(u, bstat_ptr, bnw_ptr, bnb_ptr, r, rmask, Cr, HAS_AFFINE: tl.constexpr, center=0.0):
    """(the BatchNorm's output, its normalized input xhat) for values u of channels r (in u's
    dtype or wider); center: a correction of the mean (_bn_relu_bwd)."""
    xhat = (u - tl.load(bstat_ptr + r, mask=rmask, other=0.0) - center) * tl.load(bstat_ptr + Cr + r, mask=rmask,
                                                                                   other=0.0)
    t = xhat
    if HAS_AFFINE:
        t = xhat * tl.load(bnw_ptr + r, mask=rmask, other=0.0) + tl.load(bnb_ptr + r, mask=rmask, other=0.0)
    return t, xhat


@triton.jit
def _bn_relu_rows_bwd(u_ptr, dh_ptr, bstat_ptr, bnw_ptr, bnb_ptr, n0, r, rmask, N, Cr, center,
                      HAS_AFFINE: tl.constexpr, BLOCK_ROWS: tl.constexpr):
    """Rows [n0, n0 + BLOCK_ROWS) of channels r of (N, Cr), in float64: (offsets, mask, t = bn(u),
    xhat, dt = relu'(t) * dh, 0 outside the mask); dh was written by other programs of the
    launch: .cg."""
    ns = n0 + tl.arange(0, BLOCK_ROWS)
    m = (ns < N)[:, None] & rmask[None, :]
    off = ns[:, None] * Cr + r[None, :]
    u = tl.load(u_ptr + off, mask=m, other=0.0).to(tl.float64)
    t, xhat = _bn_out(u, bstat_ptr, bnw_ptr, bnb_ptr, r[None, :], rmask[None, :], Cr, HAS_AFFINE, center)
    dh = tl.load(dh_ptr + off, mask=m, other=0.0, cache_modifier=".cg").to(tl.float64)
    return off, m, t, xhat, tl.where(m, activation_bwd(t, dh, "relu"), 0.0)


@triton.jit
def _bn_relu_bwd(u_ptr, dh_ptr, bstat_ptr, bnw_ptr, bnb_ptr, h_ptr, du_ptr, dbnw_ptr, dbnb_ptr, N, Cr,
                 HAS_AFFINE: tl.constexpr, BATCH: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_ROWS: tl.constexpr):
    """The backward of relu(bn(u)) for the whole batch, from dh: dt = relu'(dh), dbn_b = sum_n dt,
    dbn_w = sum_n dt * xhat and du = invstd * w * (dt - mean_n dt - xhat * mean_n(dt * xhat))
    (training: the batch statistics' terms; eval: du = invstd * w * dt), as torch's
    batch_norm_backward; also h = relu(bn(u)), which the weight gradients read. In float64 (see
    above), sums over n in a fixed blocked order. In training, xhat is centered on the mean of
    u - mean first: bstat's mean is rounded, so sum_n (u - mean) is not 0, and the batch terms
    would amplify that into sum_n du."""
    acc = h_ptr.dtype.element_ty
    for r0 in range(0, Cr, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        rmask = r < Cr
        center = tl.zeros([1, BLOCK_R], dtype=tl.float64)
        if BATCH:
            s_c = tl.zeros([BLOCK_ROWS, BLOCK_R], dtype=tl.float64)
            mean = tl.load(bstat_ptr + r, mask=rmask, other=0.0).to(tl.float64)
            for n0 in range(0, N, BLOCK_ROWS):
                ns = n0 + tl.arange(0, BLOCK_ROWS)
                m = (ns < N)[:, None] & rmask[None, :]
                u = tl.load(u_ptr + ns[:, None] * Cr + r[None, :], mask=m, other=0.0).to(tl.float64)
                s_c += tl.where(m, u - mean[None, :], 0.0)
            center = (tl.sum(s_c, axis=0) / N)[None, :]
        s_dt = tl.zeros([BLOCK_ROWS, BLOCK_R], dtype=tl.float64)
        s_dtx = tl.zeros([BLOCK_ROWS, BLOCK_R], dtype=tl.float64)
        for n0 in range(0, N, BLOCK_ROWS):
            off, m, t, xhat, dt = _bn_relu_rows_bwd(u_ptr, dh_ptr, bstat_ptr, bnw_ptr, bnb_ptr, n0, r, rmask, N, Cr,
                                                    center, HAS_AFFINE, BLOCK_ROWS)
            tl.store(h_ptr + off, activation(t, "relu").to(acc), mask=m)
            s_dt += dt
            s_dtx += dt * xhat
        sum_dt = tl.sum(s_dt, axis=0)
        sum_dtx = tl.sum(s_dtx, axis=0)
        tl.store(dbnb_ptr + r, sum_dt.to(acc), mask=rmask)
        tl.store(dbnw_ptr + r, sum_dtx.to(acc), mask=rmask)
        scale = tl.load(bstat_ptr + Cr + r, mask=rmask, other=0.0).to(tl.float64)
        if HAS_AFFINE:
            scale *= tl.load(bnw_ptr + r, mask=rmask, other=0.0)
        for n0 in range(0, N, BLOCK_ROWS):
            off, m, t, xhat, dt = _bn_relu_rows_bwd(u_ptr, dh_ptr, bstat_ptr, bnw_ptr, bnb_ptr, n0, r, rmask, N, Cr,
                                                    center, HAS_AFFINE, BLOCK_ROWS)
            if BATCH:
                dt = dt - (sum_dt / N)[None, :] - xhat * (sum_dtx / N)[None, :]
            tl.store(du_ptr + off, (dt * scale[None, :]).to(acc), mask=m)


# --------------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------------
@triton.jit
def _bam_channel_pool(
    x_ptr, w0_ptr, b0_ptr, mean_ptr, var_ptr, ws_ptr, wsu_ptr, counter_ptr, p_ptr, u_ptr, bstat_ptr,
    N, C, HW, Cr, n_cblk, n_split, hw_per_split, stride_c, stride_hw, eps_hi, eps_lo,
    HAS_B0: tl.constexpr, BATCH: tl.constexpr, ACC: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_ROWS: tl.constexpr,
):
    """Counters: [0, N) the samples' channel blocks, [N, N + N * n_cblk) the (n, cb)'s splits,
    then one for the samples."""
    last, n, cb, c, cmask, psum, _ = pool_tile(tl.program_id(0), x_ptr, ws_ptr, counter_ptr + N, C, HW, n_cblk,
                                               n_split, hw_per_split, stride_c, stride_hw, False, ACC, SPLIT,
                                               BLOCK_C, BLOCK_HW, BLOCK_ROWS)
    ncb = n * n_cblk + cb
    if last:
        pv = psum / HW
        tl.store(p_ptr + n * C + c, pv, mask=cmask)
        # this channel block's share of fc0: wsu[n, cb, :] = W0[:, cb] @ p[cb]
        store_share(wsu_ptr + ncb * Cr, w0_ptr, C, 1, pv, c, cmask, Cr, ACC, BLOCK_R)
        if arrive_last(counter_ptr + n, n_cblk):  # the sample's last block: u = the shares + b0
            finish_layer(n, wsu_ptr, b0_ptr, u_ptr, n_cblk, Cr, HAS_B0, ACC, BLOCK_R, BLOCK_ROWS)
            if arrive_last(counter_ptr + N + N * n_cblk, N):  # the last sample: the BatchNorm's statistics
                _bn_statistics(u_ptr, mean_ptr, var_ptr, bstat_ptr, N, Cr, eps_hi, eps_lo, BATCH, BLOCK_R,
                               BLOCK_ROWS)


@triton.jit
def _attention(mc, ms, PROD: tl.constexpr):
    """att = mc (op) ms for a (channels, pixels) tile: mc (BLOCK_C,), ms (BLOCK_HW,)."""
    if PROD:
        return mc[:, None] * ms[None, :]
    else:
        return mc[:, None] + ms[None, :]


@triton.jit
def _bam_gate(
    x_ptr, ms_ptr, y_ptr, w1_ptr, b1_ptr, u_ptr, bstat_ptr, bnw_ptr, bnb_ptr, mc_ptr,
    C, HW, Cr, n_cblk, n_split, hw_per_split, stride_c, stride_hw,
    HAS_B1: tl.constexpr, HAS_AFFINE: tl.constexpr, PROD: tl.constexpr, ACC: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_R: tl.constexpr,
):
    pid = tl.num_programs(0) - 1 - tl.program_id(0)  # reverse order of the pooling
    n, cb, sp, c, hw_lo, hw_hi = tile_of(pid, n_cblk, n_split, hw_per_split, HW, BLOCK_C)
    cmask = c < C
    # fc_final for this block's channels: mc = W1[cb, :] @ relu(bn(u[n])) + b1[cb]
    mc = tl.zeros([BLOCK_C], dtype=ACC)
    for r0 in range(0, Cr, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        rmask = r < Cr
        t, _ = _bn_out(tl.load(u_ptr + n * Cr + r, mask=rmask, other=0.0), bstat_ptr, bnw_ptr, bnb_ptr, r, rmask,
                       Cr, HAS_AFFINE)
        mc += matvec(w1_ptr, Cr, 1, activation(t, "relu"), r, rmask, c, cmask, ACC)
    if HAS_B1:
        mc += tl.load(b1_ptr + c, mask=cmask, other=0.0).to(ACC)
    if sp == 0:
        tl.store(mc_ptr + n * C + c, mc, mask=cmask)
    off_n = n.to(tl.int64) * C * HW
    for hw0 in range(hw_lo, hw_hi, BLOCK_HW):
        hw = hw0 + tl.arange(0, BLOCK_HW)
        ptrs, m = tile_ptrs(off_n, c, hw, cmask, hw_hi, stride_c, stride_hw)
        ms = tl.load(ms_ptr + n * HW + hw, mask=hw < hw_hi, other=0.0).to(ACC)
        x = tl.load(x_ptr + ptrs, mask=m, other=0.0, eviction_policy="evict_first").to(ACC)
        y = x * (1.0 + sigmoid(_attention(mc, ms, PROD)))
        tl.store(y_ptr + ptrs, cast_to(y, y_ptr.dtype.element_ty), mask=m, eviction_policy="evict_first")


# --------------------------------------------------------------------------------------------
# backward
# --------------------------------------------------------------------------------------------
@triton.jit
def _bam_bwd_reduce(
    dy_ptr, x_ptr, ms_ptr, mc_ptr, w1_ptr, u_ptr, bstat_ptr, bnw_ptr, bnb_ptr,
    ws_ptr, wsu_ptr, wsm_ptr, counter_ptr, dmc_ptr, dh_ptr, h_ptr, du_ptr, dms_ptr, dbnw_ptr, dbnb_ptr,
    N, C, HW, Cr, n_cblk, n_split, hw_per_split, stride_c, stride_hw,
    HAS_AFFINE: tl.constexpr, BATCH: tl.constexpr, PROD: tl.constexpr, ACC: tl.constexpr,
    SPLIT: tl.constexpr, MULTI_CB: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_ROWS_HW: tl.constexpr,
):
    """Counters: [0, N) the samples' channel blocks, [N, N + N * n_cblk) the (n, cb)'s splits,
    then N * n_split for the (n, sp)'s channel blocks (dms), then one for the samples."""
    n, cb, sp, c, hw_lo, hw_hi = tile_of(tl.program_id(0), n_cblk, n_split, hw_per_split, HW, BLOCK_C)
    cmask = c < C
    mc = tl.load(mc_ptr + n * C + c, mask=cmask, other=0.0)
    off_n = n.to(tl.int64) * C * HW
    ncb = n * n_cblk + cb
    acc = tl.zeros([BLOCK_C, BLOCK_HW], dtype=ACC)
    for hw0 in tl.range(hw_lo, hw_hi, BLOCK_HW, num_stages=STREAM_STAGES):  # (see _reduce.pool_stream)
        hw = hw0 + tl.arange(0, BLOCK_HW)
        hmask = hw < hw_hi
        ptrs, m = tile_ptrs(off_n, c, hw, cmask, hw_hi, stride_c, stride_hw)
        x = tl.load(x_ptr + ptrs, mask=m, other=0.0).to(ACC)
        dy = tl.load(dy_ptr + ptrs, mask=m, other=0.0).to(ACC)
        ms = tl.load(ms_ptr + n * HW + hw, mask=hmask, other=0.0).to(ACC)
        g = tl.where(m, gate_bwd(_attention(mc, ms, PROD), dy * x, "sigmoid"), 0.0)  # dL/d att
        if PROD:
            acc += g * ms[None, :]
            part = tl.sum(g * mc[:, None], axis=0)
        else:
            acc += g
            part = tl.sum(g, axis=0)
        if MULTI_CB:  # this block's part of dms[n, hw]; the other blocks' come with theirs
            tl.store(wsm_ptr + ncb * HW + hw, part, mask=hmask)
        else:
            tl.store(dms_ptr + n * HW + hw, cast_to(part, dms_ptr.dtype.element_ty), mask=hmask)
    if MULTI_CB:  # the last channel block of (n, sp) adds the blocks' parts up, in block order
        if arrive_last(counter_ptr + N + N * n_cblk + n * n_split + sp, n_cblk):
            for hw0 in range(hw_lo, hw_hi, BLOCK_HW):
                hw = hw0 + tl.arange(0, BLOCK_HW)
                hmask = hw < hw_hi
                dms = sum_rows(wsm_ptr + n * n_cblk * HW, n_cblk, HW, hw, hmask, ACC, BLOCK_ROWS_HW, False)
                tl.store(dms_ptr + n * HW + hw, cast_to(dms, dms_ptr.dtype.element_ty), mask=hmask)
    dmc = tl.sum(acc, axis=1)
    last = True
    if SPLIT:
        last, dmc, _ = combine_splits(ws_ptr, counter_ptr + N + ncb, ncb, sp, n_split, dmc, dmc,
                                      False, False, ACC, BLOCK_C, BLOCK_ROWS)
    if last:
        tl.store(dmc_ptr + n * C + c, dmc, mask=cmask)
        # this block's share of dh = W1^T dmc: wsu[n, cb, :] = W1[cb, :]^T dmc[cb]
        store_share(wsu_ptr + ncb * Cr, w1_ptr, 1, Cr, dmc, c, cmask, Cr, ACC, BLOCK_R)
        if arrive_last(counter_ptr + n, n_cblk):
            finish_layer(n, wsu_ptr, wsu_ptr, dh_ptr, n_cblk, Cr, False, ACC, BLOCK_R, BLOCK_ROWS)
            if arrive_last(counter_ptr + N + N * n_cblk + N * n_split, N):  # the last sample
                _bn_relu_bwd(u_ptr, dh_ptr, bstat_ptr, bnw_ptr, bnb_ptr, h_ptr, du_ptr, dbnw_ptr, dbnb_ptr, N, Cr,
                             HAS_AFFINE, BATCH, BLOCK_R, BLOCK_ROWS)


@triton.jit
def _bam_bwd_mlp(dmc_ptr, du_ptr, h_ptr, p_ptr, dw0_ptr, db0_ptr, dw1_ptr, db1_ptr, N, C, Cr,
                 ACC: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
    """dW1's tiles (dW1 = dmc^T h: h is relu(bn(u)) already, so no activation), then dW0's."""
    mlp_weight_grads(tl.program_id(0), dmc_ptr, h_ptr, du_ptr, p_ptr, dw0_ptr, db0_ptr, dw1_ptr, db1_ptr, N, N, C, Cr,
                     False, "identity", ACC, BLOCK_A, BLOCK_B)


@triton.jit
def _bam_bwd_dx(
    dy_ptr, ms_ptr, dx_ptr, w0_ptr, du_ptr, mc_ptr,
    C, HW, Cr, n_cblk, n_split, hw_per_split, stride_c, stride_hw,
    PROD: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_R: tl.constexpr,
):
    pid = tl.num_programs(0) - 1 - tl.program_id(0)  # reverse order of the reduction
    n, cb, sp, c, hw_lo, hw_hi = tile_of(pid, n_cblk, n_split, hw_per_split, HW, BLOCK_C)
    cmask = c < C
    # dp = W0[:, cb]^T du[n] for this block's channels, spread over the pooling
    coef = channel_layer(w0_ptr, 1, C, du_ptr + n * Cr, Cr, c, cmask, "relu", False, ACC, BLOCK_R) / HW
    mc = tl.load(mc_ptr + n * C + c, mask=cmask, other=0.0)
    off_n = n.to(tl.int64) * C * HW
    for hw0 in range(hw_lo, hw_hi, BLOCK_HW):
        hw = hw0 + tl.arange(0, BLOCK_HW)
        ptrs, m = tile_ptrs(off_n, c, hw, cmask, hw_hi, stride_c, stride_hw)
        ms = tl.load(ms_ptr + n * HW + hw, mask=hw < hw_hi, other=0.0).to(ACC)
        dy = tl.load(dy_ptr + ptrs, mask=m, other=0.0, eviction_policy="evict_first").to(ACC)
        dx = dy * (1.0 + sigmoid(_attention(mc, ms, PROD))) + coef[:, None]
        tl.store(dx_ptr + ptrs, cast_to(dx, dx_ptr.dtype.element_ty), mask=m, eviction_policy="evict_first")


# --------------------------------------------------------------------------------------------
# launchers (inputs validated and normalized by attnkernels/bam.py)
# --------------------------------------------------------------------------------------------
_TILE = 2048          # elements of x per (BLOCK_C, BLOCK_HW) tile: 16 per thread at 4 warps
_LAYER_TILE = 2048    # elements of a (BLOCK_R, BLOCK_C) weight tile
_INT32_MAX = 2**31 - 1


def _plan(x: torch.Tensor, Cr: int):
    """Tile shape and grid of all the BAM kernels (see _plan_for)."""
    return _plan_for(tuple(x.shape), x.is_contiguous(), Cr, target_programs(x.device))


@functools.lru_cache(maxsize=4096)
def _plan_for(shape, nchw: bool, Cr: int, programs: int):
    """(grid, runtime and tile arguments, combine constexprs) of the (sample, channel block, HW
    split) grid, aiming at `programs` programs. SE's tiles, but for NCHW at most 64 pixels by up to
    32 channels where SE takes up to 512 pixels: the backward parks a row of dms parts per pixel
    and channel block, (N, n_cblk, HW), and 32 channels a block keep that at 1/32 of x (SE's 4-row
    tiles at HW = 56 x 56 would make it 1/4). A channel's 64 pixels are 256 contiguous bytes in
    fp32. channels_last: blocks of 64 channels, as SE. Cached per shape: the host Python runs
    twice a forward and backward."""
    N, C, H, W = shape
    HW = H * W
    if nchw:  # channel planes are contiguous
        block_hw = min(triton.next_power_of_2(HW), 64)
        block_c = min(triton.next_power_of_2(C), _TILE // block_hw, 256)
        stride_c, stride_hw = HW, 1
    else:  # channels_last: the C channels of a pixel are contiguous
        block_c = min(triton.next_power_of_2(C), 64)
        block_hw = min(triton.next_power_of_2(HW), _TILE // block_c)
        stride_c, stride_hw = 1, C
    n_cblk = triton.cdiv(C, block_c)
    hw_blocks = triton.cdiv(HW, block_hw)
    n_split = max(1, min(hw_blocks, programs // (N * n_cblk)))
    hw_per_split = triton.cdiv(hw_blocks, n_split) * block_hw
    n_split = triton.cdiv(HW, hw_per_split)
    block_r = max(1, min(triton.next_power_of_2(Cr), _LAYER_TILE // block_c))
    _check_int32_extents(shape, Cr, n_cblk, n_split, block_c)
    args = dict(C=C, HW=HW, Cr=Cr, n_cblk=n_cblk, n_split=n_split, hw_per_split=hw_per_split,
                stride_c=stride_c, stride_hw=stride_hw, BLOCK_C=block_c, BLOCK_HW=block_hw, BLOCK_R=block_r)
    rows = dict(SPLIT=n_split > 1, BLOCK_ROWS=max(1, min(32, _LAYER_TILE // max(block_c, block_r))))
    # read-only views: the cached plan is shared by every call of this shape
    return (N * n_cblk * n_split,), types.MappingProxyType(args), types.MappingProxyType(rows)


def _check_int32_extents(shape, Cr, n_cblk, n_split, block_c):
    """The kernels index within a sample, and the per-(sample, channel) vectors, Ms and the
    scratch, with 32-bit integers (x's per-sample offsets are 64-bit): refuse what would overflow
    them rather than read or write out of bounds."""
    N, C, H, W = shape
    if C * H * W > _INT32_MAX:
        raise ValueError(f"bam (triton): x of shape {tuple(shape)} has C*H*W = {C * H * W} elements a sample; "
                         f"the Triton kernels index a sample with 32-bit integers (at most {_INT32_MAX})")
    per_sample = max(C, Cr, n_cblk * H * W, n_cblk * max(Cr, 2 * n_split * block_c))
    if N * per_sample > _INT32_MAX:
        raise ValueError(f"bam (triton): x of shape {tuple(shape)} has too many samples for the Triton kernels' "
                         f"32-bit indexing of their per-sample vectors and scratch "
                         f"(N x {per_sample} > {_INT32_MAX})")


@on_x_device
def bam_forward(x, ms, w0, b0, w1, b1, bn_w, bn_b, bn_mean, bn_var, eps, batch_stats, combine):
    """-> (y, p, u, mc, bstat): the contract of attnkernels/bam.py."""
    N, C = x.shape[:2]
    Cr = w0.shape[0]
    grid, a, rows = _plan(x, Cr)  # first: it refuses what 32-bit indices cannot reach
    acc = acc_dtype(x.dtype)
    p, mc = empty((N, C), acc, x.device), empty((N, C), acc, x.device)
    u, bstat = empty((N, Cr), acc, x.device), empty((3, Cr), acc, x.device)
    y = empty_like(x)
    n_cblk, n_split = a["n_cblk"], a["n_split"]
    ws, wsu = workspaces(x.device, acc, N * n_cblk * n_split * 2 * a["BLOCK_C"] if n_split > 1 else 1,
                         N * n_cblk * Cr)
    counters = arrival_counters(x.device, N + N * n_cblk + 1)
    accd = tl_acc_dtype(x.dtype)
    eps_hi, eps_lo = fp32_pair(eps)
    launcher(_bam_channel_pool)[grid](
        x, w0, b0 if b0 is not None else w0, bn_mean if bn_mean is not None else bstat,
        bn_var if bn_var is not None else bstat, ws, wsu, counters, p, u, bstat, N, **a, eps_hi=eps_hi,
        eps_lo=eps_lo, **rows, HAS_B0=b0 is not None, BATCH=bool(batch_stats), ACC=accd, num_warps=4)
    launcher(_bam_gate)[grid](
        x, ms, y, w1, b1 if b1 is not None else w1, u, bstat, bn_w if bn_w is not None else bstat,
        bn_b if bn_b is not None else bstat, mc, **a, HAS_B1=b1 is not None, HAS_AFFINE=bn_w is not None,
        PROD=combine == "prod", ACC=accd, num_warps=4)
    return y, p, u, mc, bstat


@on_x_device
def bam_backward(dy, x, ms, w0, w1, bn_w, bn_b, p, u, mc, bstat, batch_stats, combine):
    """-> (dx, dms, dw0, db0, dw1, db1, dbn_w, dbn_b): the contract of attnkernels/bam.py."""
    N, C, H, W = x.shape
    HW = H * W
    Cr = w0.shape[0]
    grid, a, rows = _plan(x, Cr)
    acc = u.dtype
    n_cblk, n_split = a["n_cblk"], a["n_split"]
    ws, wsu, wsm = workspaces(x.device, acc, N * n_cblk * n_split * 2 * a["BLOCK_C"] if n_split > 1 else 1,
                              N * n_cblk * Cr, N * n_cblk * HW if n_cblk > 1 else 1)
    # dmc, dh, h and du pass from the reduce launch to the weight-gradient and dx launches
    dmc, dh, h, du = workspaces(x.device, acc, N * C, N * Cr, N * Cr, N * Cr, across_launches="bam_backward")
    counters = arrival_counters(x.device, N + N * n_cblk + N * n_split + 1)
    dx, dms = empty_like(x), empty((N, HW), x.dtype, x.device)
    dbn_w, dbn_b = empty((Cr,), acc, x.device), empty((Cr,), acc, x.device)
    dw0, db0 = empty_like(w0), empty((Cr,), w0.dtype, x.device)
    dw1, db1 = empty_like(w1), empty((C,), w1.dtype, x.device)
    accd = tl_acc_dtype(x.dtype)
    prod = combine == "prod"
    bn_w_arg = bn_w if bn_w is not None else bstat
    launcher(_bam_bwd_reduce)[grid](
        dy, x, ms, mc, w1, u, bstat, bn_w_arg, bn_b if bn_b is not None else bstat, ws, wsu, wsm, counters,
        dmc, dh, h, du, dms, dbn_w, dbn_b, N, **a, **rows, HAS_AFFINE=bn_w is not None,
        BATCH=bool(batch_stats), PROD=prod, ACC=accd, MULTI_CB=n_cblk > 1,
        BLOCK_ROWS_HW=max(1, min(32, _TILE // a["BLOCK_HW"])), num_warps=4)
    wgrid, block_a, block_b = weight_grads_plan(C, Cr)
    launcher(_bam_bwd_mlp)[wgrid](dmc, du, h, p, dw0, db0, dw1, db1, N, C, Cr, ACC=accd, BLOCK_A=block_a,
                                  BLOCK_B=block_b, num_warps=4)
    launcher(_bam_bwd_dx)[grid](dy, ms, dx, w0, du, mc, **a, PROD=prod, ACC=accd, num_warps=4)
    return dx, dms, dw0, db0, dw1, db1, dbn_w, dbn_b

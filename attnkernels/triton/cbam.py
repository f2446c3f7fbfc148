"""CBAM (channel gate, then spatial gate) in Triton: forward in 5 launches, backward in 6.

The passes and their names are the CUDA backend's too (csrc/cbam/: cbam_<pass>_kernel for
_cbam_<pass>); the contract is attnkernels/cbam.py's. Two grids serve them:
  - the channel grid (SE's: attnkernels/triton/se.py): programs over (sample n, channel block cb,
    HW split sp), each streaming its (BLOCK_C channels) x (HW range) tile; the split partials and
    the layer shares are combined by the last program to arrive (_reduce.py), in a fixed order;
  - the pixel grid: programs over (sample n, pixel tile), each walking all channels of its
    pixels (the reductions over C of the spatial gate), or only its pixels of the (N, H, W)
    maps (the k x k conv and the BatchNorm).

Forward (x read 3 times, y written once):
  1. _cbam_channel_pool (channel grid): mean and max of x over HW per (n, c) -> pools; the last
     split of (n, cb) stores them and its share of layer 1 for each MLP input p,
     W1[:, cb] @ v_p[cb]; the sample's last channel block sums the shares: u_p (+ b1), and
     h = sum_p act(u_p).
  2. _cbam_channel_excite (one program per (n, cb)): z = W2[cb, :] @ h + P * b2[cb].
  3. _cbam_spatial_pool (pixel grid): max and mean over c of x1 = x * gate(z) -> m.
  4. _cbam_spatial_conv (pixel grid): t = conv_kxk(m); with batch statistics each program's
     (count, mean, M2) of its t values, combined in program order by the last to arrive
     (Chan's formulas) -> bstat = [mean, invstd, biased var]; else bstat from the running ones.
  5. _cbam_rescale (channel grid, reverse order): y = x * gate(z) * gate(BN(t)).
Backward (x and dy read 3 times each, dx written once):
  1. _cbam_bwd_spatial_reduce (pixel grid): per pixel ds_s = sum_c dy * x1, and the max of x1
     over c with the number of channels tied at it.
  2. _cbam_bwd_spatial_bn (pixel grid): dtn = ds_s * gate'(BN(t)); sum(dtn), sum(dtn * x_hat)
     combined in program order by the last to arrive -> dbn_b, dbn_w.
  3. _cbam_bwd_spatial_conv (pixel grid): dt (the BN backward), dm = the transposed conv of dt,
     dconv_w (per-program partials summed in program order by the last to arrive), and the
     pixel's coefficients of dx1 = dy * s_s + dm_mean / C + [x1 == max] dm_max / ties.
  4. _cbam_bwd_channel_reduce (channel grid): ds_c = sum_hw dx1 * x and the count of x == its
     channel's max; the last split of (n, cb): dz = ds_c * gate'(z), the MLP inputs v_p and its
     share of dh = W2[:, cb]^T dz[cb]; the sample's last block: du_p = dh * act'(u_p), h.
  5. _cbam_bwd_weights: dW2 = sum_n dz h^T, db2 = P sum_n dz, dW1 = sum_{n,p} du_p v_p^T,
     db1 = sum_{n,p} du_p (_mlp.outer_sum_tile: blocked, deterministic).
  6. _cbam_bwd_dx (channel grid, reverse order): dx = dx1 * s_c + dv_avg / HW
     + [x == max_hw] dv_max / ties_c, dv_p = W1^T du_p mapped through the pool kind.
No float atomics: every combine runs in a fixed order in the program that arrives last.
"""
from __future__ import annotations

import functools

import triton
import triton.language as tl

from .._alloc import acc_dtype, empty, empty_like
from ..cbam import n_pools
from ._common import (activation, activation_bwd, arrival_counters, cast_to, fp32_pair, gate, gate_bwd, nanmax,
                      nanmax_over, tl_acc_dtype, workspaces)
from ._launch import launcher, on_x_device
from ._mlp import channel_layer, mlp_weight_grads, store_share, weight_grads_plan
from ._reduce import STREAM_STAGES, arrive_last, pool_tile, sum_rows, tile_of, tile_ptrs, tile_totals
from .se import _plan_for

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
@triton.jit
def _mlp_input(mean, mx, p: tl.constexpr, POOL: tl.constexpr):
    """The channel MLP's input v_p from the channel's mean and max over HW."""
    if POOL == "avg":
        return mean
    elif POOL == "max":
        return mx
    elif POOL == "avgmax":
        return 0.5 * mean + 0.5 * mx
    else:  # "avg+max": p = 0 the mean, p = 1 the max
        if p == 0:
            return mean
        else:
            return mx


@triton.jit
def _bn_consts(bstat_ptr, bnw_ptr, bnb_ptr, AFFINE: tl.constexpr, ACC: tl.constexpr):
    """(mean, invstd, weight, bias) of the spatial gate's BatchNorm (weight 1, bias 0 without
    AFFINE)."""
    mean = tl.load(bstat_ptr)
    invstd = tl.load(bstat_ptr + 1)
    if AFFINE:
        w = tl.load(bnw_ptr).to(ACC)
        b = tl.load(bnb_ptr).to(ACC)
    else:
        w = tl.full([], 1.0, ACC)
        b = tl.full([], 0.0, ACC)
    return mean, invstd, w, b


@triton.jit
def _pixel_tile(pid, n_pt, HW, BLOCK_P: tl.constexpr):
    """(n, pixels, mask) of program pid of the pixel grid."""
    n = pid // n_pt
    q = (pid % n_pt) * BLOCK_P + tl.arange(0, BLOCK_P)
    return n, q, q < HW


@triton.jit
def _map_tile(pid, n_pt, H, W, BLOCK_P: tl.constexpr):
    """(n, pixels, mask, their rows, their columns) of program pid of the map passes."""
    n, q, qmask = _pixel_tile(pid, n_pt, H * W, BLOCK_P)
    return n, q, qmask, q // W, q % W


@triton.jit
def _spatial_scale(t_ptr, n, hw, hmask, HW, mean, invstd, bnw, bnb, GATE: tl.constexpr):
    """s_s = gate(BN(t)) at pixels hw of sample n."""
    t = tl.load(t_ptr + n * HW + hw, mask=hmask, other=0.0)
    return gate(bnw * ((t - mean) * invstd) + bnb, GATE)


# --------------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------------
@triton.jit
def _cbam_channel_pool(
    x_ptr, w1_ptr, b1_ptr, ws_ptr, wsu_ptr, counter_ptr, pools_ptr, u_ptr, h_ptr,
    N, C, HW, Cr, n_cblk, n_split, hw_per_split, stride_c, stride_hw,
    HAS_B1: tl.constexpr, POOL: tl.constexpr, P: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr,
    SPLIT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
):
    last, n, cb, c, cmask, psum, pmax = pool_tile(tl.program_id(0), x_ptr, ws_ptr, counter_ptr + N, C, HW, n_cblk,
                                                  n_split, hw_per_split, stride_c, stride_hw, True, ACC, SPLIT,
                                                  BLOCK_C, BLOCK_HW, BLOCK_ROWS)
    ncb = n * n_cblk + cb
    if last:
        mean = psum / HW
        tl.store(pools_ptr + n * 2 * C + c, mean, mask=cmask)
        tl.store(pools_ptr + n * 2 * C + C + c, pmax, mask=cmask)
        # this channel block's share of layer 1 for each input: wsu[n, cb, p, :] = W1[:, cb] @ v_p[cb]
        for p in tl.static_range(P):
            store_share(wsu_ptr + (ncb * P + p) * Cr, w1_ptr, C, 1, _mlp_input(mean, pmax, p, POOL), c, cmask, Cr,
                        ACC, BLOCK_R)
        if arrive_last(counter_ptr + n, n_cblk):  # the sample's last block: u_p = sum + b1, h
            for r0 in range(0, Cr, BLOCK_R):
                r = r0 + tl.arange(0, BLOCK_R)
                h = tl.zeros([BLOCK_R], dtype=ACC)
                for p in tl.static_range(P):
                    u = sum_rows(wsu_ptr + n * n_cblk * P * Cr + p * Cr, n_cblk, P * Cr, r, r < Cr, ACC,
                                 BLOCK_ROWS, False)
                    if HAS_B1:
                        u += tl.load(b1_ptr + r, mask=r < Cr, other=0.0).to(ACC)
                    tl.store(u_ptr + (n * P + p) * Cr + r, u, mask=r < Cr)
                    h += activation(u, ACT)
                tl.store(h_ptr + n * Cr + r, h, mask=r < Cr)


@triton.jit
def _cbam_channel_excite(
    w2_ptr, b2_ptr, h_ptr, z_ptr, C, Cr, n_cblk,
    HAS_B2: tl.constexpr, P: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
):
    pid = tl.program_id(0)
    n = pid // n_cblk
    c = (pid % n_cblk) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    z = channel_layer(w2_ptr, Cr, 1, h_ptr + n * Cr, Cr, c, cmask, "identity", False, ACC, BLOCK_R)
    if HAS_B2:  # fc2's bias once per MLP input, as the sum of the P MLP outputs has it
        z += P * tl.load(b2_ptr + c, mask=cmask, other=0.0).to(ACC)
    tl.store(z_ptr + n * C + c, z, mask=cmask)


@triton.jit
def _cbam_spatial_pool(
    x_ptr, z_ptr, m_ptr, C, HW, n_pt, stride_c, stride_hw,
    GATE: tl.constexpr, SPOOL: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    n, hw, hmask = _pixel_tile(tl.program_id(0), n_pt, HW, BLOCK_P)
    acc_sum = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
    acc_max = tl.full([BLOCK_C, BLOCK_P], float("-inf"), dtype=ACC)
    x_n = x_ptr + n.to(tl.int64) * C * HW
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        cmask = c < C
        s = gate(tl.load(z_ptr + n * C + c, mask=cmask, other=0.0), GATE)
        ptrs, msk = tile_ptrs(x_n, c, hw, cmask, HW, stride_c, stride_hw)
        v = tl.load(ptrs, mask=msk, other=0.0).to(ACC) * s[:, None]
        acc_sum += tl.where(msk, v, 0.0)
        acc_max = nanmax(acc_max, tl.where(msk, v, float("-inf")))
    mean = tl.sum(acc_sum, axis=0) / C
    mx = nanmax_over(acc_max, 0)
    m_n = m_ptr + n * (2 if SPOOL != "avgmax" else 1) * HW
    if SPOOL == "avgmax":
        tl.store(m_n + hw, 0.5 * mean + 0.5 * mx, mask=hmask)
    elif SPOOL == "max_mean":
        tl.store(m_n + hw, mx, mask=hmask)
        tl.store(m_n + HW + hw, mean, mask=hmask)
    else:  # mean_max
        tl.store(m_n + hw, mean, mask=hmask)
        tl.store(m_n + HW + hw, mx, mask=hmask)


@triton.jit
def _cbam_spatial_conv(
    m_ptr, convw_ptr, t_ptr, ws_ptr, counter_ptr, bstat_ptr, bnm_ptr, bnv_ptr,
    H, W, n_pt, eps_hi, eps_lo,
    S: tl.constexpr, K: tl.constexpr, BATCH_STATS: tl.constexpr, ACC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_ROWS: tl.constexpr,
):
    """eps arrives as two fp32 halves (a float argument is fp32): their sum is eps to ~2^-48."""
    pid = tl.program_id(0)
    HW = H * W
    n, q, qmask, h, w = _map_tile(pid, n_pt, H, W, BLOCK_P)
    PAD: tl.constexpr = (K - 1) // 2
    t = tl.zeros([BLOCK_P], dtype=ACC)
    for s in tl.static_range(S):
        m_s = m_ptr + (n * S + s) * HW
        for i in range(K):
            hh = h + (i - PAD)
            row_ok = qmask & (hh >= 0) & (hh < H)
            for j in range(K):
                ww = w + (j - PAD)
                ok = row_ok & (ww >= 0) & (ww < W)
                wt = tl.load(convw_ptr + (s * K + i) * K + j)
                t += wt * tl.load(m_s + hh * W + ww, mask=ok, other=0.0)
    tl.store(t_ptr + n * HW + q, t, mask=qmask)
    eps = tl.cast(eps_hi, ACC) + tl.cast(eps_lo, ACC)
    if BATCH_STATS:
        # this program's (count, mean, M2) of its t values, two-pass within the tile
        cnt = tl.sum(qmask.to(ACC), axis=0)
        mu = tl.sum(tl.where(qmask, t, 0.0), axis=0) / cnt
        d = tl.where(qmask, t - mu, 0.0)
        tl.store(ws_ptr + pid * 3, cnt)
        tl.store(ws_ptr + pid * 3 + 1, mu)
        tl.store(ws_ptr + pid * 3 + 2, tl.sum(d * d, axis=0))
        n_prog = tl.num_programs(0)
        if arrive_last(counter_ptr, n_prog):
            # blocks of partials in program order: each block's totals two-pass, the blocks merged
            # one after another with Chan's update
            tot_n = tl.full([], 0.0, ACC)
            tot_mu = tl.full([], 0.0, ACC)
            tot_m2 = tl.full([], 0.0, ACC)
            for b0 in range(0, n_prog, BLOCK_ROWS):
                k = b0 + tl.arange(0, BLOCK_ROWS)
                km = k < n_prog
                kc = tl.load(ws_ptr + k * 3, mask=km, other=0.0, cache_modifier=".cg")
                kmu = tl.load(ws_ptr + k * 3 + 1, mask=km, other=0.0, cache_modifier=".cg")
                km2 = tl.load(ws_ptr + k * 3 + 2, mask=km, other=0.0, cache_modifier=".cg")
                nb = tl.sum(kc, axis=0)
                mub = tl.sum(kc * kmu, axis=0) / nb
                dk = tl.where(km, kmu - mub, 0.0)
                m2b = tl.sum(km2 + kc * dk * dk, axis=0)
                nt = tot_n + nb
                delta = mub - tot_mu
                tot_mu = tot_mu + delta * (nb / nt)
                tot_m2 = tot_m2 + m2b + delta * delta * (tot_n * (nb / nt))
                tot_n = nt
            var = tot_m2 / tot_n
            tl.store(bstat_ptr, tot_mu)
            tl.store(bstat_ptr + 1, 1.0 / tl.sqrt(var + eps))
            tl.store(bstat_ptr + 2, var)
    else:
        if pid == 0:
            var = tl.load(bnv_ptr)
            tl.store(bstat_ptr, tl.load(bnm_ptr))
            tl.store(bstat_ptr + 1, 1.0 / tl.sqrt(var + eps))
            tl.store(bstat_ptr + 2, var)


@triton.jit
def _cbam_rescale(
    x_ptr, y_ptr, z_ptr, t_ptr, bstat_ptr, bnw_ptr, bnb_ptr,
    C, HW, n_cblk, n_split, hw_per_split, stride_c, stride_hw,
    SPATIAL: tl.constexpr, AFFINE: tl.constexpr, GATE: tl.constexpr, ACC: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    pid = tl.num_programs(0) - 1 - tl.program_id(0)  # reverse order of the channel pool
    n, cb, sp, c, hw_lo, hw_hi = tile_of(pid, n_cblk, n_split, hw_per_split, HW, BLOCK_C)
    cmask = c < C
    s = gate(tl.load(z_ptr + n * C + c, mask=cmask, other=0.0), GATE)
    if SPATIAL:
        mean, invstd, bnw, bnb = _bn_consts(bstat_ptr, bnw_ptr, bnb_ptr, AFFINE, ACC)
    off_n = n.to(tl.int64) * C * HW
    for hw0 in range(hw_lo, hw_hi, BLOCK_HW):
        hw = hw0 + tl.arange(0, BLOCK_HW)
        ptrs, msk = tile_ptrs(off_n, c, hw, cmask, hw_hi, stride_c, stride_hw)
        v = tl.load(x_ptr + ptrs, mask=msk, other=0.0, eviction_policy="evict_first").to(ACC) * s[:, None]
        if SPATIAL:
            v = v * _spatial_scale(t_ptr, n, hw, hw < hw_hi, HW, mean, invstd, bnw, bnb, GATE)[None, :]
        tl.store(y_ptr + ptrs, cast_to(v, y_ptr.dtype.element_ty), mask=msk, eviction_policy="evict_first")


# --------------------------------------------------------------------------------------------
# backward
# --------------------------------------------------------------------------------------------
@triton.jit
def _cbam_bwd_spatial_reduce(
    dy_ptr, x_ptr, z_ptr, dss_ptr, mmax_ptr, ties_ptr, C, HW, n_pt, stride_c, stride_hw,
    GATE: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    n, hw, hmask = _pixel_tile(tl.program_id(0), n_pt, HW, BLOCK_P)
    acc_ds = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
    run_max = tl.full([BLOCK_P], float("-inf"), dtype=ACC)
    run_ties = tl.zeros([BLOCK_P], dtype=ACC)
    off_n = n.to(tl.int64) * C * HW
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        cmask = c < C
        s = gate(tl.load(z_ptr + n * C + c, mask=cmask, other=0.0), GATE)
        ptrs, msk = tile_ptrs(off_n, c, hw, cmask, HW, stride_c, stride_hw)
        v = tl.load(x_ptr + ptrs, mask=msk, other=0.0).to(ACC) * s[:, None]  # x1, as the forward's pool
        acc_ds += tl.load(dy_ptr + ptrs, mask=msk, other=0.0).to(ACC) * v
        v = tl.where(msk, v, float("-inf"))
        # the running max over the channel blocks and how many channels sit at it
        bmax = nanmax_over(v, 0)
        bties = tl.sum(tl.where(msk & (v == bmax[None, :]), 1.0, 0.0), axis=0)
        new_max = nanmax(run_max, bmax)
        run_ties = tl.where(run_max == new_max, run_ties, 0.0) + tl.where(bmax == new_max, bties, 0.0)
        run_max = new_max
    tl.store(dss_ptr + n * HW + hw, tl.sum(acc_ds, axis=0), mask=hmask)
    tl.store(mmax_ptr + n * HW + hw, run_max, mask=hmask)
    tl.store(ties_ptr + n * HW + hw, run_ties, mask=hmask)


@triton.jit
def _cbam_bwd_spatial_bn(
    dss_ptr, t_ptr, bstat_ptr, bnw_ptr, bnb_ptr, dtn_ptr, ws_ptr, counter_ptr, dbnw_ptr, dbnb_ptr,
    HW, n_pt, AFFINE: tl.constexpr, GATE: tl.constexpr, ACC: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
):
    pid = tl.program_id(0)
    n, q, qmask = _pixel_tile(pid, n_pt, HW, BLOCK_P)
    mean, invstd, bnw, bnb = _bn_consts(bstat_ptr, bnw_ptr, bnb_ptr, AFFINE, ACC)
    t = tl.load(t_ptr + n * HW + q, mask=qmask, other=0.0)
    xhat = (t - mean) * invstd
    dtn = gate_bwd(bnw * xhat + bnb, tl.load(dss_ptr + n * HW + q, mask=qmask, other=0.0), GATE)
    dtn = tl.where(qmask, dtn, 0.0)
    tl.store(dtn_ptr + n * HW + q, dtn, mask=qmask)
    tl.store(ws_ptr + pid * 2, tl.sum(dtn, axis=0))
    tl.store(ws_ptr + pid * 2 + 1, tl.sum(dtn * xhat, axis=0))
    if arrive_last(counter_ptr, tl.num_programs(0)):
        j = tl.arange(0, 2)
        tot = sum_rows(ws_ptr, tl.num_programs(0), 2, j, j < 2, ACC, BLOCK_ROWS, False)
        tl.store(dbnb_ptr + j * 0, tot, mask=j == 0)
        tl.store(dbnw_ptr + j * 0, tot, mask=j == 1)


@triton.jit
def _dt_at(dtn_ptr, t_ptr, idx, ok, a, mean, invstd, sdtn, sdtx, BATCH_STATS: tl.constexpr):
    """The gradient of the conv output t at flat indices idx (0 where not ok): the BatchNorm's
    backward of dtn, a = weight * invstd; with batch statistics the terms of the batch's mean
    and variance (sdtn = sum(dtn) / count, sdtx = sum(dtn * x_hat) / count)."""
    dtn = tl.load(dtn_ptr + idx, mask=ok, other=0.0)
    if BATCH_STATS:
        t = tl.load(t_ptr + idx, mask=ok, other=0.0)
        dtn = dtn - sdtn - (t - mean) * invstd * sdtx
    return tl.where(ok, a * dtn, 0.0)


@triton.jit
def _cbam_bwd_spatial_conv(
    dtn_ptr, t_ptr, m_ptr, convw_ptr, bstat_ptr, bnw_ptr, bnb_ptr, dbnw_ptr, dbnb_ptr, mmax_ptr, ties_ptr,
    coef_ptr, ws_ptr, counter_ptr, dconvw_ptr,
    C, H, W, n_pt, count,
    S: tl.constexpr, K: tl.constexpr, SPOOL: tl.constexpr, AFFINE: tl.constexpr, BATCH_STATS: tl.constexpr,
    GATE: tl.constexpr, ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_T: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
):
    """coef[n, :, pixel] = (s_s, the mean pool's dx1 term, the max pool's dx1 term where x1 is
    the max): dx1 = dy * coef0 + coef1 + [x1 == mmax] coef2."""
    pid = tl.program_id(0)
    HW = H * W
    n, q, qmask, h, w = _map_tile(pid, n_pt, H, W, BLOCK_P)
    PAD: tl.constexpr = (K - 1) // 2
    T: tl.constexpr = S * K * K
    mean, invstd, bnw, bnb = _bn_consts(bstat_ptr, bnw_ptr, bnb_ptr, AFFINE, ACC)
    a = bnw * invstd
    sdtn = tl.load(dbnb_ptr) / count
    sdtx = tl.load(dbnw_ptr) / count
    base = n * HW
    dt = _dt_at(dtn_ptr, t_ptr, base + q, qmask, a, mean, invstd, sdtn, sdtx, BATCH_STATS)
    dm0 = tl.zeros([BLOCK_P], dtype=ACC)
    dm1 = tl.zeros([BLOCK_P], dtype=ACC)
    for i in range(K):
        # dm[s, h, w] = sum_ij W[s, i, j] dt[h - i + PAD, w - j + PAD] (the transposed conv)
        hb = h - (i - PAD)
        row_b = qmask & (hb >= 0) & (hb < H)
        # dW[s, i, j] = sum over pixels of dt[h, w] m[s, h + i - PAD, w + j - PAD]
        hf = h + (i - PAD)
        row_f = qmask & (hf >= 0) & (hf < H)
        for j in range(K):
            wb = w - (j - PAD)
            ok = row_b & (wb >= 0) & (wb < W)
            dts = _dt_at(dtn_ptr, t_ptr, base + hb * W + wb, ok, a, mean, invstd, sdtn, sdtx, BATCH_STATS)
            dm0 += tl.load(convw_ptr + i * K + j) * dts
            if S == 2:
                dm1 += tl.load(convw_ptr + (K + i) * K + j) * dts
            wf = w + (j - PAD)
            okf = row_f & (wf >= 0) & (wf < W)
            for s in tl.static_range(S):
                mv = tl.load(m_ptr + (n * S + s) * HW + hf * W + wf, mask=okf, other=0.0)
                tl.store(ws_ptr + pid * T + (s * K + i) * K + j, tl.sum(dt * mv, axis=0))
    if SPOOL == "avgmax":
        dmean = 0.5 * dm0
        dmax = 0.5 * dm0
    elif SPOOL == "max_mean":
        dmax = dm0
        dmean = dm1
    else:
        dmean = dm0
        dmax = dm1
    t = tl.load(t_ptr + base + q, mask=qmask, other=0.0)
    ties = tl.load(ties_ptr + base + q, mask=qmask, other=1.0)
    coef = coef_ptr + n * 3 * HW + q
    tl.store(coef, gate(bnw * ((t - mean) * invstd) + bnb, GATE), mask=qmask)
    tl.store(coef + HW, dmean / C, mask=qmask)
    tl.store(coef + 2 * HW, dmax / ties, mask=qmask)
    if arrive_last(counter_ptr, tl.num_programs(0)):
        for t0 in range(0, T, BLOCK_T):
            k = t0 + tl.arange(0, BLOCK_T)
            tot = sum_rows(ws_ptr, tl.num_programs(0), T, k, k < T, ACC, BLOCK_ROWS, False)
            tl.store(dconvw_ptr + k, tot, mask=k < T)


@triton.jit
def _dx1_tile(dy, x1, coef_ptr, mmax_ptr, n, hw, hmask, HW):
    """The gradient of x1 = x * s_c over a tile: dy * s_s plus the spatial pool's backward."""
    coef = coef_ptr + n * 3 * HW + hw
    ss = tl.load(coef, mask=hmask, other=0.0)
    cmean = tl.load(coef + HW, mask=hmask, other=0.0)
    cmax = tl.load(coef + 2 * HW, mask=hmask, other=0.0)
    mmax = tl.load(mmax_ptr + n * HW + hw, mask=hmask, other=0.0)
    return dy * ss[None, :] + cmean[None, :] + tl.where(x1 == mmax[None, :], cmax[None, :], 0.0)


@triton.jit
def _cbam_bwd_channel_reduce(
    dy_ptr, x_ptr, w2_ptr, z_ptr, u_ptr, pools_ptr, coef_ptr, mmax_ptr, ws_ptr, wsu_ptr, counter_ptr,
    dz_ptr, tiesc_ptr, v_ptr, du_ptr, h_ptr,
    N, C, HW, Cr, n_cblk, n_split, hw_per_split, stride_c, stride_hw,
    SPATIAL: tl.constexpr, POOL: tl.constexpr, P: tl.constexpr, ACT: tl.constexpr, GATE: tl.constexpr,
    ACC: tl.constexpr, SPLIT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_ROWS: tl.constexpr,
):
    POOL_MAX: tl.constexpr = POOL != "avg"
    n, cb, sp, c, hw_lo, hw_hi = tile_of(tl.program_id(0), n_cblk, n_split, hw_per_split, HW, BLOCK_C)
    cmask = c < C
    z = tl.load(z_ptr + n * C + c, mask=cmask, other=0.0)
    s = gate(z, GATE)
    cmax = tl.load(pools_ptr + n * 2 * C + C + c, mask=cmask, other=0.0)
    acc_ds = tl.zeros([BLOCK_C, BLOCK_HW], dtype=ACC)
    acc_ties = tl.zeros([BLOCK_C, BLOCK_HW], dtype=ACC)
    off_n = n.to(tl.int64) * C * HW
    for hw0 in tl.range(hw_lo, hw_hi, BLOCK_HW, num_stages=STREAM_STAGES):
        hw = hw0 + tl.arange(0, BLOCK_HW)
        ptrs, msk = tile_ptrs(off_n, c, hw, cmask, hw_hi, stride_c, stride_hw)
        x = tl.load(x_ptr + ptrs, mask=msk, other=0.0).to(ACC)
        dx1 = tl.load(dy_ptr + ptrs, mask=msk, other=0.0).to(ACC)
        if SPATIAL:
            dx1 = _dx1_tile(dx1, x * s[:, None], coef_ptr, mmax_ptr, n, hw, hw < hw_hi, HW)
        acc_ds += tl.where(msk, dx1 * x, 0.0)
        if POOL_MAX:
            acc_ties += tl.where(msk & (x == cmax[:, None]), 1.0, 0.0)
    ds = tl.sum(acc_ds, axis=1)
    ties = tl.sum(acc_ties, axis=1)
    ncb = n * n_cblk + cb
    last, ds, ties = tile_totals(ws_ptr, counter_ptr + N, ncb, sp, n_split, ds, ties, False, POOL_MAX, SPLIT, ACC,
                                 BLOCK_C, BLOCK_ROWS)
    if last:
        dz = gate_bwd(z, ds, GATE)
        tl.store(dz_ptr + n * C + c, dz, mask=cmask)
        if POOL_MAX:
            tl.store(tiesc_ptr + n * C + c, ties, mask=cmask)
        mean = tl.load(pools_ptr + n * 2 * C + c, mask=cmask, other=0.0)
        for p in tl.static_range(P):  # the MLP inputs, for dW1
            tl.store(v_ptr + (n * P + p) * C + c, _mlp_input(mean, cmax, p, POOL), mask=cmask)
        # this block's share of dh = W2^T dz: wsu[n, cb, :] = W2[cb, :]^T dz[cb]
        store_share(wsu_ptr + ncb * Cr, w2_ptr, 1, Cr, dz, c, cmask, Cr, ACC, BLOCK_R)
        if arrive_last(counter_ptr + n, n_cblk):  # the sample's last block: du_p = dh * act'(u_p), h
            for r0 in range(0, Cr, BLOCK_R):
                r = r0 + tl.arange(0, BLOCK_R)
                dh = sum_rows(wsu_ptr + n * n_cblk * Cr, n_cblk, Cr, r, r < Cr, ACC, BLOCK_ROWS, False)
                h = tl.zeros([BLOCK_R], dtype=ACC)
                for p in tl.static_range(P):
                    u = tl.load(u_ptr + (n * P + p) * Cr + r, mask=r < Cr, other=0.0)
                    tl.store(du_ptr + (n * P + p) * Cr + r, activation_bwd(u, dh, ACT), mask=r < Cr)
                    h += activation(u, ACT)
                tl.store(h_ptr + n * Cr + r, h, mask=r < Cr)


@triton.jit
def _cbam_bwd_weights(dz_ptr, h_ptr, du_ptr, v_ptr, dw1_ptr, db1_ptr, dw2_ptr, db2_ptr, N, C, Cr,
                      P: tl.constexpr, ACC: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
    """dW2 (C, Cr) = dz^T h, db2 = P sum_n dz (b2 enters once per MLP input), then dW1 (Cr, C)
    = du^T v and db1 = sum du over the N * P inputs ((N, P, Cr) and (N, P, C) as rows)."""
    mlp_weight_grads(tl.program_id(0), dz_ptr, h_ptr, du_ptr, v_ptr, dw1_ptr, db1_ptr, dw2_ptr, db2_ptr,
                     N, N * P, C, Cr, False, "identity", ACC, BLOCK_A, BLOCK_B, P)


@triton.jit
def _cbam_bwd_dx(
    dy_ptr, x_ptr, dx_ptr, w1_ptr, z_ptr, du_ptr, pools_ptr, tiesc_ptr, coef_ptr, mmax_ptr,
    C, HW, Cr, n_cblk, n_split, hw_per_split, stride_c, stride_hw,
    SPATIAL: tl.constexpr, POOL: tl.constexpr, P: tl.constexpr, GATE: tl.constexpr, ACC: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_R: tl.constexpr,
):
    pid = tl.num_programs(0) - 1 - tl.program_id(0)  # reverse order of the reduction
    n, cb, sp, c, hw_lo, hw_hi = tile_of(pid, n_cblk, n_split, hw_per_split, HW, BLOCK_C)
    cmask = c < C
    s = gate(tl.load(z_ptr + n * C + c, mask=cmask, other=0.0), GATE)
    # dv_p = W1[:, cb]^T du_p, through the pool kind to the mean's and the max's gradients
    dv0 = channel_layer(w1_ptr, 1, C, du_ptr + n * P * Cr, Cr, c, cmask, "identity", False, ACC, BLOCK_R)
    coef_max = tl.zeros([BLOCK_C], dtype=ACC)
    if POOL == "avg":
        coef_avg = dv0 / HW
    elif POOL == "max":
        coef_avg = tl.zeros([BLOCK_C], dtype=ACC)
        coef_max = dv0
    elif POOL == "avgmax":
        coef_avg = 0.5 * dv0 / HW
        coef_max = 0.5 * dv0
    else:
        coef_avg = dv0 / HW
        coef_max = channel_layer(w1_ptr, 1, C, du_ptr + (n * P + 1) * Cr, Cr, c, cmask, "identity", False, ACC,
                                 BLOCK_R)
    if POOL != "avg":
        cmax = tl.load(pools_ptr + n * 2 * C + C + c, mask=cmask, other=0.0)
        coef_max = coef_max / tl.load(tiesc_ptr + n * C + c, mask=cmask, other=1.0)
    off_n = n.to(tl.int64) * C * HW
    for hw0 in range(hw_lo, hw_hi, BLOCK_HW):
        hw = hw0 + tl.arange(0, BLOCK_HW)
        ptrs, msk = tile_ptrs(off_n, c, hw, cmask, hw_hi, stride_c, stride_hw)
        x = tl.load(x_ptr + ptrs, mask=msk, other=0.0, eviction_policy="evict_first").to(ACC)
        g = tl.load(dy_ptr + ptrs, mask=msk, other=0.0, eviction_policy="evict_first").to(ACC)
        if SPATIAL:
            g = _dx1_tile(g, x * s[:, None], coef_ptr, mmax_ptr, n, hw, hw < hw_hi, HW)
        g = g * s[:, None] + coef_avg[:, None]
        if POOL != "avg":
            g += tl.where(x == cmax[:, None], coef_max[:, None], 0.0)
        tl.store(dx_ptr + ptrs, cast_to(g, dx_ptr.dtype.element_ty), mask=msk, eviction_policy="evict_first")


# --------------------------------------------------------------------------------------------
# launchers (inputs validated and normalized by attnkernels/cbam.py)
# --------------------------------------------------------------------------------------------
_TILE = 2048          # elements of x per (BLOCK_C, BLOCK_P) tile of the pixel grid
_MAP_TILE = 256       # pixels per program of the conv / BatchNorm passes
_INT32_MAX = 2**31 - 1


@functools.lru_cache(maxsize=4096)
def _pixel_plan(shape, nchw: bool):
    """(grid, BLOCK_C, BLOCK_P) of the passes over x that reduce over channels, and (grid,
    BLOCK_P) of the passes over the (N, H, W) maps."""
    N, C, H, W = shape
    HW = H * W
    if nchw:  # pixels contiguous
        block_p = min(triton.next_power_of_2(HW), 256)
        block_c = max(1, min(triton.next_power_of_2(C), _TILE // block_p))
    else:  # channels contiguous
        block_c = min(triton.next_power_of_2(C), 64)
        block_p = max(1, min(triton.next_power_of_2(HW), _TILE // block_c))
    block_q = min(triton.next_power_of_2(HW), _MAP_TILE)
    return ((N * triton.cdiv(HW, block_p),), block_c, block_p), ((N * triton.cdiv(HW, block_q),), block_q)


def _check_extents(shape, nchw, Cr, P, T):
    """32-bit indices within a sample (x's per-sample offsets are 64-bit) and across the (N, C),
    (N, P, Cr) vectors, the (N, 3, H, W) maps and the conv's weight-gradient partials (T = S k k
    a pixel tile): refuse what would overflow them. (The channel grid's scratch: se._plan_for.)"""
    N, C, H, W = shape
    if C * H * W > _INT32_MAX:
        raise ValueError(f"cbam (triton): x of shape {tuple(shape)} has C*H*W = {C * H * W} elements a sample; "
                         f"the Triton kernels index a sample with 32-bit integers (at most {_INT32_MAX})")
    _, ((map_programs,), _) = _pixel_plan(shape, nchw)
    per_sample = max(2 * C, P * Cr, 3 * H * W, map_programs // N * T)
    if N * per_sample > _INT32_MAX:
        raise ValueError(f"cbam (triton): x of shape {tuple(shape)} has too many samples for the Triton kernels' "
                         f"32-bit indexing of their per-sample vectors and maps (N x {per_sample} > {_INT32_MAX})")


def _channel_plan(x, Cr, P, T):
    """SE's grid and tiles (se._plan_for), for the passes over (n, channel block, HW split); T: the
    spatial conv's S k k (0 without the spatial gate)."""
    return _channel_plan_for(tuple(x.shape), x.is_contiguous(), Cr, P, T, x.device)


@functools.lru_cache(maxsize=4096)
def _channel_plan_for(shape, nchw, Cr, P, T, device):
    _check_extents(shape, nchw, Cr, P, T)
    grid, a, rows = _plan_for(shape, nchw, Cr, device, op="cbam", shares=P)  # (P shares of layer 1)
    return grid, {k: v for k, v in a.items() if k != "GROUP"}, rows


def _strides(a):
    return dict(stride_c=a["stride_c"], stride_hw=a["stride_hw"])


def _grid_args(a):
    return dict(C=a["C"], HW=a["HW"], n_cblk=a["n_cblk"], n_split=a["n_split"], hw_per_split=a["hw_per_split"],
                **_strides(a), BLOCK_C=a["BLOCK_C"], BLOCK_HW=a["BLOCK_HW"])


@on_x_device
def cbam_forward(x, w1, b1, w2, b2, conv_w, bn_w, bn_b, bn_mean, bn_var, eps, batch_stats, act, gate, pool, spool):
    N, C, H, W = x.shape
    HW = H * W
    Cr = w2.shape[1]
    P = n_pools(pool)
    spatial = conv_w is not None
    grid, a, rows = _channel_plan(x, Cr, P, conv_w[0].numel() if spatial else 0)
    acc = acc_dtype(x.dtype)
    accd = tl_acc_dtype(x.dtype)
    dev = x.device
    pools, u, z = empty((N, 2, C), acc, dev), empty((N, P, Cr), acc, dev), empty((N, C), acc, dev)
    (pgrid, block_c, block_p), (qgrid, block_q) = _pixel_plan(tuple(x.shape), x.is_contiguous())
    ws, wsu, h, stats = workspaces(dev, acc, N * a["n_cblk"] * a["n_split"] * 2 * a["BLOCK_C"],
                                   N * a["n_cblk"] * P * Cr, N * Cr, 3 * qgrid[0], across_launches="cbam_forward")
    counters = arrival_counters(dev, N + N * a["n_cblk"])
    launcher(_cbam_channel_pool)[grid](
        x, w1, b1 if b1 is not None else w1, ws, wsu, counters, pools, u, h, N, **a, **rows, HAS_B1=b1 is not None,
        POOL=pool, P=P, ACT=act, ACC=accd, num_warps=4)
    launcher(_cbam_channel_excite)[(N * a["n_cblk"],)](
        w2, b2 if b2 is not None else w2, h, z, C, Cr, a["n_cblk"], HAS_B2=b2 is not None, P=P, ACC=accd,
        BLOCK_C=a["BLOCK_C"], BLOCK_R=a["BLOCK_R"], num_warps=4)
    if spatial:
        S, K = conv_w.shape[1], conv_w.shape[-1]
        m, t, bstat = empty((N, S, H, W), acc, dev), empty((N, H, W), acc, dev), empty((3,), acc, dev)
        launcher(_cbam_spatial_pool)[pgrid](
            x, z, m, C, HW, pgrid[0] // N, **_strides(a), GATE=gate, SPOOL=spool, ACC=accd, BLOCK_C=block_c,
            BLOCK_P=block_p, num_warps=4)
        launcher(_cbam_spatial_conv)[qgrid](
            m, conv_w, t, stats, counters, bstat, bn_mean if bn_mean is not None else bstat,
            bn_var if bn_var is not None else bstat, H, W, qgrid[0] // N, *fp32_pair(eps), S=S, K=K,
            BATCH_STATS=batch_stats, ACC=accd, BLOCK_P=block_q, BLOCK_ROWS=64, num_warps=4)
    else:
        m, t, bstat = (empty((0,), acc, dev) for _ in range(3))
    y = empty_like(x)
    affine = bn_w is not None
    launcher(_cbam_rescale)[grid](
        x, y, z, t, bstat, bn_w if affine else bstat, bn_b if affine else bstat, **_grid_args(a), SPATIAL=spatial,
        AFFINE=affine, GATE=gate, ACC=accd, num_warps=4)
    return y, pools, u, z, m, t, bstat


@on_x_device
def cbam_backward(dy, x, w1, w2, conv_w, bn_w, bn_b, pools, u, z, m, t, bstat, batch_stats, act, gate, pool, spool):
    N, C, H, W = x.shape
    HW = H * W
    Cr = w2.shape[1]
    P = n_pools(pool)
    spatial = conv_w is not None
    grid, a, rows = _channel_plan(x, Cr, P, conv_w[0].numel() if spatial else 0)
    acc = pools.dtype
    accd = tl_acc_dtype(x.dtype)
    dev = x.device
    (pgrid, block_c, block_p), (qgrid, block_q) = _pixel_plan(tuple(x.shape), x.is_contiguous())
    S, K = (conv_w.shape[1], conv_w.shape[-1]) if spatial else (1, 1)
    T = S * K * K
    # scratch passed from launch to launch within this call
    nhw = N * HW if spatial else 1
    (ws, wsu, dz, ties_c, v, du, h, dss, mmax, ties_s, dtn, coef, ws_bn, ws_conv) = workspaces(
        dev, acc, N * a["n_cblk"] * a["n_split"] * 2 * a["BLOCK_C"], N * a["n_cblk"] * Cr, N * C, N * C,
        N * P * C, N * P * Cr, N * Cr, nhw, nhw, nhw, nhw, 3 * nhw, 2 * qgrid[0] if spatial else 1,
        T * qgrid[0] if spatial else 1, across_launches="cbam_backward")
    counters = arrival_counters(dev, N + N * a["n_cblk"])
    affine = bn_w is not None
    if spatial:
        dconv_w, dbn_w, dbn_b = empty(conv_w.shape, acc, dev), empty((1,), acc, dev), empty((1,), acc, dev)
        bnw, bnb = (bn_w, bn_b) if affine else (bstat, bstat)
        launcher(_cbam_bwd_spatial_reduce)[pgrid](
            dy, x, z, dss, mmax, ties_s, C, HW, pgrid[0] // N, **_strides(a), GATE=gate, ACC=accd,
            BLOCK_C=block_c, BLOCK_P=block_p, num_warps=4)
        launcher(_cbam_bwd_spatial_bn)[qgrid](
            dss, t, bstat, bnw, bnb, dtn, ws_bn, counters, dbn_w, dbn_b, HW, qgrid[0] // N, AFFINE=affine,
            GATE=gate, ACC=accd, BLOCK_P=block_q, BLOCK_ROWS=64, num_warps=4)
        launcher(_cbam_bwd_spatial_conv)[qgrid](
            dtn, t, m, conv_w, bstat, bnw, bnb, dbn_w, dbn_b, mmax, ties_s, coef, ws_conv, counters, dconv_w,
            C, H, W, qgrid[0] // N, float(N * HW), S=S, K=K, SPOOL=spool, AFFINE=affine, BATCH_STATS=batch_stats,
            GATE=gate, ACC=accd, BLOCK_P=block_q, BLOCK_T=min(triton.next_power_of_2(T), 128), BLOCK_ROWS=16,
            num_warps=4)
    else:
        dconv_w, dbn_w, dbn_b = (empty((0,), acc, dev) for _ in range(3))
    launcher(_cbam_bwd_channel_reduce)[grid](
        dy, x, w2, z, u, pools, coef, mmax, ws, wsu, counters, dz, ties_c, v, du, h, N, **a, **rows,
        SPATIAL=spatial, POOL=pool, P=P, ACT=act, GATE=gate, ACC=accd, num_warps=4)
    dw1, db1 = empty_like(w1), empty((Cr,), w1.dtype, dev)
    dw2, db2 = empty_like(w2), empty((C,), w2.dtype, dev)
    wgrid, block_a, block_b = weight_grads_plan(C, Cr)
    launcher(_cbam_bwd_weights)[wgrid](dz, h, du, v, dw1, db1, dw2, db2, N, C, Cr, P=P, ACC=accd,
                                       BLOCK_A=block_a, BLOCK_B=block_b, num_warps=4)
    dx = empty_like(x)
    launcher(_cbam_bwd_dx)[grid](
        dy, x, dx, w1, z, du, pools, ties_c, coef, mmax, Cr=Cr, **_grid_args(a), BLOCK_R=a["BLOCK_R"],
        SPATIAL=spatial, POOL=pool, P=P, GATE=gate, ACC=accd, num_warps=4)
    return dx, dw1, db1, dw2, db2, dconv_w, dbn_w, dbn_b

"""Dense-layer pieces shared by the Triton kernels: a block's share of a matrix-vector product (the
excitation MLPs of SE, CBAM and BAM), and the weight gradient of a Linear from its saved
per-sample vectors, summed over the batch in a fixed, blocked order (deterministic)."""
from __future__ import annotations

import functools

import triton
import triton.language as tl

from ._common import activation, cast_to
from ._reduce import STREAM_STAGES, sum_rows


@triton.jit
def matvec(w_ptr, stride_out, stride_in, v, i_in, in_mask, i_out, out_mask, ACC: tl.constexpr):
    """out[o] = sum_i W[o, i] * v[i] over the given index blocks, W[o, i] at
    o * stride_out + i * stride_in (so one helper serves W and W^T): a block's share of a layer."""
    w = tl.load(w_ptr + i_out[:, None] * stride_out + i_in[None, :] * stride_in,
                mask=out_mask[:, None] & in_mask[None, :], other=0.0)
    return tl.sum(w.to(ACC) * v[None, :], axis=1)


@triton.jit
def store_share(out_ptr, w_ptr, stride_out, stride_in, v, c, cmask, n_out, ACC: tl.constexpr,
                BLOCK_R: tl.constexpr):
    """out[r] = sum_c W[r, c] * v[c] over this program's channels c, for all n_out outputs r (W[r, c]
    at r * stride_out + c * stride_in): one channel block's share of a layer of width n_out spread
    over the channel blocks of a reduction grid (out: the block's row of shares, e.g. wsu + ncb *
    n_out); finish_layer adds a sample's shares up. v at masked channels is ignored (a max pool
    leaves -inf there, which 0-weights would turn into NaN)."""
    v = tl.where(cmask, v, 0.0)
    for r0 in range(0, n_out, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        tl.store(out_ptr + r, matvec(w_ptr, stride_out, stride_in, v, c, cmask, r, r < n_out, ACC), mask=r < n_out)


@triton.jit
def channel_layer(w_ptr, stride_out, stride_in, v_ptr, n_in, c, cmask, ACT: tl.constexpr,
                   APPLY_ACT: tl.constexpr, ACC: tl.constexpr, BLOCK_R: tl.constexpr,
                   CG: tl.constexpr = False):
    """out[c] = sum_r W[c, r] * f(v[r]) for this program's channels c, over all n_in inputs r
    (f = act if APPLY_ACT): the per-channel half of a layer, e.g. z = W2[cb, :] @ act(u).
    CG: v was written during this launch, read it through L2 (L1 is not coherent)."""
    out = tl.zeros([c.shape[0]], dtype=ACC)
    for r0 in range(0, n_in, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        if CG:
            v = tl.load(v_ptr + r, mask=r < n_in, other=0.0, cache_modifier=".cg")
        else:
            v = tl.load(v_ptr + r, mask=r < n_in, other=0.0)
        if APPLY_ACT:
            v = activation(v, ACT)
        out += matvec(w_ptr, stride_out, stride_in, v, r, r < n_in, c, cmask, ACC)
    return out


@triton.jit
def finish_layer(n, wsu_ptr, b_ptr, out_ptr, n_cblk, R, HAS_B: tl.constexpr, ACC: tl.constexpr,
                 BLOCK_R: tl.constexpr, BLOCK_ROWS: tl.constexpr):
    """out[n] = the sum of sample n's layer shares (store_share, one per channel block, in block
    order) + b: run by the last channel block of the sample to arrive."""
    for r0 in range(0, R, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        out = sum_rows(wsu_ptr + n * n_cblk * R, n_cblk, R, r, r < R, ACC, BLOCK_ROWS, False)
        if HAS_B:
            out += tl.load(b_ptr + r, mask=r < R, other=0.0).to(ACC)
        tl.store(out_ptr + n * R + r, out, mask=r < R)


@triton.jit
def outer_sum_tile(a_ptr, b_ptr, out_ptr, dbias_ptr, N, A, B, ta, tb,
                    ACT_ON_B: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr,
                    BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BIAS_SCALE: tl.constexpr = 1):
    """out[a, b] = sum_n a_vec[n, a] * f(b_vec[n, b]) and dbias[a] = BIAS_SCALE * sum_n a_vec[n, a]
    for one (BLOCK_A, BLOCK_B) tile: the weight gradient of a Linear from its saved per-sample
    vectors (BIAS_SCALE: a bias added that many times per sample, as CBAM's fc2 bias is once
    per pool).
    Summed over n like a blocked sum (the CUDA kernel's blocked_sum): in each block of 64
    samples, 8 running sums (sample k of every 8) are added by tl.sum's tree; blocks are added in
    order, so the rounding error grows like 8 + 3 + N / 64 additions, as BLAS's and torch's sums
    do, not like N. (Reducing over the 8 samples once a block, not once a step, keeps the
    cross-warp tree and its barriers out of the inner loop, whose loads STREAM_STAGES
    prefetches: reduced once a step, each step waits for its loads, then for a shared-memory
    reduction.)"""
    ia = ta * BLOCK_A + tl.arange(0, BLOCK_A)
    ib = tb * BLOCK_B + tl.arange(0, BLOCK_B)
    ma = ia < A
    mb = ib < B
    acc = tl.zeros([BLOCK_A, BLOCK_B], dtype=ACC)
    bias = tl.zeros([BLOCK_A], dtype=ACC)
    for n0 in range(0, N, 64):
        blk = tl.zeros([8, BLOCK_A, BLOCK_B], dtype=ACC)
        blk_bias = tl.zeros([8, BLOCK_A], dtype=ACC)
        for n1 in tl.range(n0, n0 + 64, 8, num_stages=STREAM_STAGES):
            n = n1 + tl.arange(0, 8)
            mn = n < N
            av = tl.load(a_ptr + n[:, None] * A + ia[None, :], mask=mn[:, None] & ma[None, :], other=0.0)
            bv = tl.load(b_ptr + n[:, None] * B + ib[None, :], mask=mn[:, None] & mb[None, :], other=0.0)
            if ACT_ON_B:
                bv = activation(bv, ACT)
            blk += av[:, :, None] * bv[:, None, :]
            blk_bias += av
        acc += tl.sum(blk, axis=0)
        bias += tl.sum(blk_bias, axis=0)
    tl.store(out_ptr + ia[:, None] * B + ib[None, :], cast_to(acc, out_ptr.dtype.element_ty),
             mask=ma[:, None] & mb[None, :])
    if tb == 0:
        if BIAS_SCALE != 1:
            bias = bias * BIAS_SCALE
        tl.store(dbias_ptr + ia, cast_to(bias, dbias_ptr.dtype.element_ty), mask=ma)


@triton.jit
def mlp_weight_grads(pid, dz_ptr, hid_ptr, du_ptr, in_ptr, dw1_ptr, db1_ptr, dw2_ptr, db2_ptr, N, N1, C, Cr,
                     ACT_ON_HID: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr, BLOCK_A: tl.constexpr,
                     BLOCK_B: tl.constexpr, B2_SCALE: tl.constexpr = 1):
    """Tile pid of the weight gradients of an excitation MLP z = W2 f(hid) + b2, hid = W1 in + b1,
    from its saved per-sample vectors: dW2's tiles first, (C, Cr) = sum_n dz[n] f(hid[n])^T
    (f = act if ACT_ON_HID, else hid holds f's output already) and db2 = B2_SCALE sum_n dz; then
    dW1's, (Cr, C) = sum over the N1 rows k of du[k] in[k]^T and db1 = sum_k du[k]. A grid of
    the dW2 tiles alone leaves dW1 out (weight_grads_plan sizes it)."""
    tiles_c = tl.cdiv(C, BLOCK_A)
    tiles_r = tl.cdiv(Cr, BLOCK_B)
    if pid < tiles_c * tiles_r:
        outer_sum_tile(dz_ptr, hid_ptr, dw2_ptr, db2_ptr, N, C, Cr, pid // tiles_r, pid % tiles_r,
                       ACT_ON_HID, ACT, ACC, BLOCK_A, BLOCK_B, B2_SCALE)
    else:
        k = pid - tiles_c * tiles_r
        outer_sum_tile(du_ptr, in_ptr, dw1_ptr, db1_ptr, N1, Cr, C, k // tiles_c, k % tiles_c,
                       False, ACT, ACC, BLOCK_B, BLOCK_A)


@functools.lru_cache(maxsize=4096)
def weight_grads_plan(C: int, Cr: int, fc1: bool = True):
    """(grid, BLOCK_A, BLOCK_B) of mlp_weight_grads: dW2's tiles, then dW1's unless the form has
    no fc1. Cached: triton.cdiv and next_power_of_2 are constexpr-function wrappers, ~2-3 us a
    call on the host (4 of them were ~10 us a backward)."""
    # 32 x 16: the tile's 8 running sums (8 x 32 x 16, outer_sum_tile) take 80-117 registers a
    # thread (sm_90, AOT; gelu the most); 32 x 32 took 128-202
    block_a = min(triton.next_power_of_2(C), 32)
    block_b = min(triton.next_power_of_2(Cr), 16)
    return ((2 if fc1 else 1) * triton.cdiv(C, block_a) * triton.cdiv(Cr, block_b),), block_a, block_b

"""SE (squeeze-and-excitation) in Triton: forward in 2 launches, backward in 3.

Forward
  1. _se_squeeze_excite: programs over (sample, channel block, HW split) reduce sum (and max) of
     x into per-program partials; an arrival counter per sample lets the LAST program of each
     sample run the excitation MLP (fc1 + act, fc2 + gate) and write s, z, u, p, pmax.
  2. _se_rescale: y = x * s, flat and vectorized, walking the tensor in REVERSE order of the
     squeeze so the tail of x that is still in L2 is re-read from L2 rather than HBM.
Backward
  1. _se_bwd_reduce_excite: partials of sum_hw dy*x (and, for avgmax, the count of ties with the
     max); the last program per sample runs the gate/MLP backward: dz, du and per-(n, c)
     coefficients of dx.
  2. _se_bwd_weights: dW1, db1, dW2, db2 from the saved (N, C) / (N, Cr) vectors (deterministic,
     no atomics, no pass over x).
  3. _se_bwd_dx: dx = dy * s + coef_avg (+ coef_max where x is a tied max), in reverse order.
No (N, C, H, W) intermediate besides y and dx; autograd keeps x and per-(n, c) vectors only.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._alloc import empty, empty_like
from ._common import (acc_dtype, activation, activation_grad, arrival_counters, cast_to, gate, gate_grad,
                      target_programs, tl_acc_dtype)


# --------------------------------------------------------------------------------------------
# shared jit pieces
# --------------------------------------------------------------------------------------------
@triton.jit
def _tile_offsets(c, hw, stride_c, stride_hw):
    return c[:, None] * stride_c + hw[None, :] * stride_hw


@triton.jit
def _flat_tile(pid_tile, pid_n, N, C, HW, slab,
               BLOCK: tl.constexpr, VEC: tl.constexpr, CHANNELS_LAST: tl.constexpr):
    """Offsets of one flat tile of a sample's C*HW slab, shaped (BLOCK // VEC, VEC), walked in
    reverse (last sample, last tile first) so the data the squeeze touched last, still in L2, is
    consumed first. The launcher picks VEC (16 bytes of elements) only when the channel index is
    constant (NCHW: HW % VEC == 0) or consecutive (channels_last: C % VEC == 0) within each
    aligned group of VEC elements: then it is computed once per group, not per element (integer
    division by a runtime divisor is ~20 instructions, too many for a memory-bound kernel).
    Returns (element offsets, mask, index into the (N, C) vectors, its mask): the index is
    (BLOCK // VEC, 1) for NCHW, so per-channel values are loaded once per group."""
    n = N - 1 - pid_n
    tile = tl.num_programs(0) - 1 - pid_tile
    group = tile * BLOCK + tl.arange(0, BLOCK // VEC) * VEC  # int32: offsets within the slab
    lane = tl.arange(0, VEC)
    i = group[:, None] + lane[None, :]
    mask = i < slab
    if CHANNELS_LAST:
        c = (group % C)[:, None] + lane[None, :]
        cmask = mask
    else:
        c = (group // HW)[:, None]
        cmask = (group < slab)[:, None]
    base = tl.multiple_of(n.to(tl.int64) * slab, VEC)
    return base + i, mask, n * C + c, cmask


@triton.jit
def _arrive_last(counter_ptr, n, per_sample):
    """Count this program in for sample n; True for the last of the sample's programs, which
    also resets the counter for the next call. The barrier orders every thread's partial stores
    before the (release) atomic; the atomic's acquire orders the epilogue's loads after it."""
    tl.debug_barrier()
    prev = tl.atomic_add(counter_ptr + n, 1, sem="acq_rel")
    last = prev == per_sample - 1
    if last:
        tl.atomic_xchg(counter_ptr + n, 0)
    return last


@triton.jit
def _split_of(pid, n_cblk, n_split, hw_per_split, HW, BLOCK_C: tl.constexpr):
    per_sample = n_cblk * n_split
    n = pid // per_sample
    r = pid % per_sample
    cb = r // n_split
    sp = r % n_split
    hw_lo = sp * hw_per_split
    hw_hi = tl.minimum(hw_lo + hw_per_split, HW)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    return n, sp, c, hw_lo, hw_hi, per_sample


# --------------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------------
@triton.jit
def _se_squeeze_excite(
    x_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, ws_ptr, counter_ptr,
    s_ptr, z_ptr, u_ptr, p_ptr, pmax_ptr,
    C, HW, Cr, n_cblk, n_split, hw_per_split, stride_c, stride_hw,
    HAS_B1: tl.constexpr, HAS_B2: tl.constexpr, ACT: tl.constexpr, GATE: tl.constexpr,
    POOL_MAX: tl.constexpr, ACC: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    n, sp, c, hw_lo, hw_hi, per_sample = _split_of(pid, n_cblk, n_split, hw_per_split, HW, BLOCK_C)
    cmask = c < C
    base = x_ptr + n.to(tl.int64) * C * HW
    acc_sum = tl.zeros([BLOCK_C, BLOCK_HW], dtype=ACC)
    acc_max = tl.full([BLOCK_C, BLOCK_HW], float("-inf"), dtype=ACC)
    for hw0 in range(hw_lo, hw_hi, BLOCK_HW):
        hw = hw0 + tl.arange(0, BLOCK_HW)
        m = cmask[:, None] & (hw < hw_hi)[None, :]
        v = tl.load(base + _tile_offsets(c, hw, stride_c, stride_hw), mask=m, other=0.0).to(ACC)
        acc_sum += v
        if POOL_MAX:
            acc_max = tl.maximum(acc_max, tl.where(m, v, float("-inf")))
    # partials: ws[n, sp, 0, c] = sum, ws[n, sp, 1, c] = max
    ws = ws_ptr + (n * n_split + sp) * 2 * C
    tl.store(ws + c, tl.sum(acc_sum, axis=1), mask=cmask)
    if POOL_MAX:
        tl.store(ws + C + c, tl.max(acc_max, axis=1), mask=cmask)

    if _arrive_last(counter_ptr, n, per_sample):
        # ---- the excitation, once per sample ----
        k = tl.arange(0, BLOCK_K)
        rr0 = tl.arange(0, BLOCK_R)
        # 1. pooled vector p = mean (or 0.5 mean + 0.5 max) from the partials (.cg: skip L1,
        #    the partials were written by other SMs)
        for c0 in range(0, C, BLOCK_K):
            cc = c0 + k
            mc = cc < C
            tot = tl.zeros([BLOCK_K], dtype=ACC)
            mx = tl.full([BLOCK_K], float("-inf"), dtype=ACC)
            for s in range(0, n_split):
                wsp = ws_ptr + (n * n_split + s) * 2 * C + cc
                tot += tl.load(wsp, mask=mc, other=0.0, cache_modifier=".cg")
                if POOL_MAX:
                    mx = tl.maximum(mx, tl.load(wsp + C, mask=mc, other=0.0, cache_modifier=".cg"))
            pv = tot / HW
            if POOL_MAX:
                tl.store(pmax_ptr + n * C + cc, mx, mask=mc)
                pv = 0.5 * pv + 0.5 * mx
            tl.store(p_ptr + n * C + cc, pv, mask=mc)
        tl.debug_barrier()
        # 2. u = W1 p + b1   (W1: (Cr, C))
        for r0 in range(0, Cr, BLOCK_R):
            rr = r0 + rr0
            mr = rr < Cr
            acc = tl.zeros([BLOCK_R, BLOCK_K], dtype=ACC)
            for c0 in range(0, C, BLOCK_K):
                cc = c0 + k
                mc = cc < C
                w = tl.load(w1_ptr + rr[:, None] * C + cc[None, :], mask=mr[:, None] & mc[None, :], other=0.0)
                pv = tl.load(p_ptr + n * C + cc, mask=mc, other=0.0)
                acc += w.to(ACC) * pv[None, :]
            u = tl.sum(acc, axis=1)
            if HAS_B1:
                u += tl.load(b1_ptr + rr, mask=mr, other=0.0).to(ACC)
            tl.store(u_ptr + n * Cr + rr, u, mask=mr)
        tl.debug_barrier()
        # 3. z = W2 act(u) + b2, s = gate(z)   (W2: (C, Cr))
        for c0 in range(0, C, BLOCK_K):
            cc = c0 + k
            mc = cc < C
            acc = tl.zeros([BLOCK_K, BLOCK_R], dtype=ACC)
            for r0 in range(0, Cr, BLOCK_R):
                rr = r0 + rr0
                mr = rr < Cr
                w = tl.load(w2_ptr + cc[:, None] * Cr + rr[None, :], mask=mc[:, None] & mr[None, :], other=0.0)
                h = activation(tl.load(u_ptr + n * Cr + rr, mask=mr, other=0.0), ACT)
                acc += w.to(ACC) * h[None, :]
            z = tl.sum(acc, axis=1)
            if HAS_B2:
                z += tl.load(b2_ptr + cc, mask=mc, other=0.0).to(ACC)
            tl.store(z_ptr + n * C + cc, z, mask=mc)
            tl.store(s_ptr + n * C + cc, gate(z, GATE), mask=mc)


@triton.jit
def _se_rescale(x_ptr, s_ptr, y_ptr, N, C, HW, slab,
                CHANNELS_LAST: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr, VEC: tl.constexpr):
    offs, mask, nc, cmask = _flat_tile(tl.program_id(0), tl.program_id(1), N, C, HW, slab, BLOCK, VEC, CHANNELS_LAST)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    s = tl.load(s_ptr + nc, mask=cmask, other=0.0)
    tl.store(y_ptr + offs, cast_to(x.to(ACC) * s, y_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------
# backward
# --------------------------------------------------------------------------------------------
@triton.jit
def _se_bwd_reduce_excite(
    dy_ptr, x_ptr, w1_ptr, w2_ptr, z_ptr, u_ptr, pmax_ptr, ws_ptr, counter_ptr,
    dz_ptr, du_ptr, coef_avg_ptr, coef_max_ptr,
    C, HW, Cr, n_cblk, n_split, hw_per_split, stride_c, stride_hw,
    ACT: tl.constexpr, GATE: tl.constexpr, POOL_MAX: tl.constexpr, ACC: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    n, sp, c, hw_lo, hw_hi, per_sample = _split_of(pid, n_cblk, n_split, hw_per_split, HW, BLOCK_C)
    cmask = c < C
    off_n = n.to(tl.int64) * C * HW
    acc_ds = tl.zeros([BLOCK_C, BLOCK_HW], dtype=ACC)
    acc_ties = tl.zeros([BLOCK_C, BLOCK_HW], dtype=ACC)
    if POOL_MAX:
        pm = tl.load(pmax_ptr + n * C + c, mask=cmask, other=0.0)
    for hw0 in range(hw_lo, hw_hi, BLOCK_HW):
        hw = hw0 + tl.arange(0, BLOCK_HW)
        m = cmask[:, None] & (hw < hw_hi)[None, :]
        offs = off_n + _tile_offsets(c, hw, stride_c, stride_hw)
        x = tl.load(x_ptr + offs, mask=m, other=0.0).to(ACC)
        dy = tl.load(dy_ptr + offs, mask=m, other=0.0).to(ACC)
        acc_ds += dy * x
        if POOL_MAX:
            acc_ties += tl.where(m & (x == pm[:, None]), 1.0, 0.0)
    ws = ws_ptr + (n * n_split + sp) * 2 * C
    tl.store(ws + c, tl.sum(acc_ds, axis=1), mask=cmask)
    if POOL_MAX:
        tl.store(ws + C + c, tl.sum(acc_ties, axis=1), mask=cmask)

    if _arrive_last(counter_ptr, n, per_sample):
        k = tl.arange(0, BLOCK_K)
        rr0 = tl.arange(0, BLOCK_R)
        # 1. ds -> dz = ds * g'(z); the tie counts are parked in coef_max until step 3
        for c0 in range(0, C, BLOCK_K):
            cc = c0 + k
            mc = cc < C
            ds = tl.zeros([BLOCK_K], dtype=ACC)
            ties = tl.zeros([BLOCK_K], dtype=ACC)
            for s in range(0, n_split):
                wsp = ws_ptr + (n * n_split + s) * 2 * C + cc
                ds += tl.load(wsp, mask=mc, other=0.0, cache_modifier=".cg")
                if POOL_MAX:
                    ties += tl.load(wsp + C, mask=mc, other=0.0, cache_modifier=".cg")
            z = tl.load(z_ptr + n * C + cc, mask=mc, other=0.0)
            tl.store(dz_ptr + n * C + cc, ds * gate_grad(z, GATE), mask=mc)
            if POOL_MAX:
                tl.store(coef_max_ptr + n * C + cc, ties, mask=mc)
        tl.debug_barrier()
        # 2. du = (dz W2) * act'(u)
        for r0 in range(0, Cr, BLOCK_R):
            rr = r0 + rr0
            mr = rr < Cr
            acc = tl.zeros([BLOCK_K, BLOCK_R], dtype=ACC)
            for c0 in range(0, C, BLOCK_K):
                cc = c0 + k
                mc = cc < C
                w = tl.load(w2_ptr + cc[:, None] * Cr + rr[None, :], mask=mc[:, None] & mr[None, :], other=0.0)
                dz = tl.load(dz_ptr + n * C + cc, mask=mc, other=0.0)
                acc += w.to(ACC) * dz[:, None]
            u = tl.load(u_ptr + n * Cr + rr, mask=mr, other=0.0)
            tl.store(du_ptr + n * Cr + rr, tl.sum(acc, axis=0) * activation_grad(u, ACT), mask=mr)
        tl.debug_barrier()
        # 3. dp = du W1, spread over the pooling: mean -> dp/HW everywhere, max -> ties
        for c0 in range(0, C, BLOCK_K):
            cc = c0 + k
            mc = cc < C
            acc = tl.zeros([BLOCK_R, BLOCK_K], dtype=ACC)
            for r0 in range(0, Cr, BLOCK_R):
                rr = r0 + rr0
                mr = rr < Cr
                w = tl.load(w1_ptr + rr[:, None] * C + cc[None, :], mask=mr[:, None] & mc[None, :], other=0.0)
                du = tl.load(du_ptr + n * Cr + rr, mask=mr, other=0.0)
                acc += w.to(ACC) * du[:, None]
            dp = tl.sum(acc, axis=0)
            if POOL_MAX:
                ties = tl.load(coef_max_ptr + n * C + cc, mask=mc, other=1.0)
                tl.store(coef_max_ptr + n * C + cc, 0.5 * dp / ties, mask=mc)
                dp = 0.5 * dp
            tl.store(coef_avg_ptr + n * C + cc, dp / HW, mask=mc)


@triton.jit
def _outer_sum_tile(a_ptr, b_ptr, out_ptr, dbias_ptr, N, A, B, ta, tb,
                    ACT_ON_B: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr,
                    BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
    """out[a, b] = sum_n a_vec[n, a] * f(b_vec[n, b]) and dbias[a] = sum_n a_vec[n, a] for one
    (BLOCK_A, BLOCK_B) tile: the weight gradient of a Linear from its saved per-sample vectors."""
    ia = ta * BLOCK_A + tl.arange(0, BLOCK_A)
    ib = tb * BLOCK_B + tl.arange(0, BLOCK_B)
    ma = ia < A
    mb = ib < B
    acc = tl.zeros([BLOCK_A, BLOCK_B], dtype=ACC)
    bias = tl.zeros([BLOCK_A], dtype=ACC)
    for n in range(0, N):
        av = tl.load(a_ptr + n * A + ia, mask=ma, other=0.0)
        bv = tl.load(b_ptr + n * B + ib, mask=mb, other=0.0)
        if ACT_ON_B:
            bv = activation(bv, ACT)
        acc += av[:, None] * bv[None, :]
        bias += av
    tl.store(out_ptr + ia[:, None] * B + ib[None, :], cast_to(acc, out_ptr.dtype.element_ty),
             mask=ma[:, None] & mb[None, :])
    if tb == 0:
        tl.store(dbias_ptr + ia, cast_to(bias, dbias_ptr.dtype.element_ty), mask=ma)


@triton.jit
def _se_bwd_weights(dz_ptr, du_ptr, u_ptr, p_ptr, dw1_ptr, db1_ptr, dw2_ptr, db2_ptr, N, C, Cr,
                    ACT: tl.constexpr, ACC: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
    pid = tl.program_id(0)
    tiles_c = tl.cdiv(C, BLOCK_A)
    tiles_r = tl.cdiv(Cr, BLOCK_B)
    if pid < tiles_c * tiles_r:  # dW2 (C, Cr) = dz^T act(u), db2 = sum_n dz
        _outer_sum_tile(dz_ptr, u_ptr, dw2_ptr, db2_ptr, N, C, Cr, pid // tiles_r, pid % tiles_r,
                        True, ACT, ACC, BLOCK_A, BLOCK_B)
    else:  # dW1 (Cr, C) = du^T p, db1 = sum_n du
        q = pid - tiles_c * tiles_r
        _outer_sum_tile(du_ptr, p_ptr, dw1_ptr, db1_ptr, N, Cr, C, q // tiles_c, q % tiles_c,
                        False, ACT, ACC, BLOCK_B, BLOCK_A)


@triton.jit
def _se_bwd_dx(dy_ptr, x_ptr, s_ptr, coef_avg_ptr, pmax_ptr, coef_max_ptr, dx_ptr, N, C, HW, slab,
               POOL_MAX: tl.constexpr, CHANNELS_LAST: tl.constexpr, ACC: tl.constexpr,
               BLOCK: tl.constexpr, VEC: tl.constexpr):
    offs, mask, nc, cmask = _flat_tile(tl.program_id(0), tl.program_id(1), N, C, HW, slab, BLOCK, VEC, CHANNELS_LAST)
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(ACC)
    g = dy * tl.load(s_ptr + nc, mask=cmask, other=0.0) + tl.load(coef_avg_ptr + nc, mask=cmask, other=0.0)
    if POOL_MAX:
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
        pm = tl.load(pmax_ptr + nc, mask=cmask, other=0.0)
        g += tl.where(x == pm, tl.load(coef_max_ptr + nc, mask=cmask, other=0.0), 0.0)
    tl.store(dx_ptr + offs, cast_to(g, dx_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------
# launchers (inputs validated and normalized by attnkernels/se.py)
# --------------------------------------------------------------------------------------------
_RESCALE_BLOCK = 2048
_MLP_BLOCK_R = 16
_MLP_BLOCK_K = 128


def _channels_last(x: torch.Tensor) -> bool:
    return not x.is_contiguous()


def _reduce_plan(x: torch.Tensor):
    """Tile shape and grid of the per-channel reductions: (sample, channel block, HW split)."""
    N, C, H, W = x.shape
    HW = H * W
    cl = _channels_last(x)
    if cl:  # the C channels of a pixel are contiguous: wide in C, short in HW
        block_c = min(triton.next_power_of_2(C), 64)
        block_hw = max(1, min(triton.next_power_of_2(HW), 2048 // block_c))
        stride_c, stride_hw = 1, C
    else:  # channel planes are contiguous: wide in HW
        block_hw = min(triton.next_power_of_2(HW), 512)
        block_c = max(1, min(triton.next_power_of_2(C), 2048 // block_hw))
        stride_c, stride_hw = HW, 1
    n_cblk = triton.cdiv(C, block_c)
    hw_blocks = triton.cdiv(HW, block_hw)
    n_split = max(1, min(hw_blocks, target_programs(x.device) // max(1, N * n_cblk)))
    hw_per_split = triton.cdiv(hw_blocks, n_split) * block_hw
    n_split = triton.cdiv(HW, hw_per_split)
    return dict(C=C, HW=HW, n_cblk=n_cblk, n_split=n_split, hw_per_split=hw_per_split,
                stride_c=stride_c, stride_hw=stride_hw, BLOCK_C=block_c, BLOCK_HW=block_hw)


def _mlp_blocks(Cr: int):
    return dict(BLOCK_R=min(triton.next_power_of_2(Cr), _MLP_BLOCK_R), BLOCK_K=_MLP_BLOCK_K)


def _flat_launch(x):
    """Grid and arguments of the flat elementwise kernels (rescale, dx)."""
    N, C, H, W = x.shape
    HW = H * W
    cl = _channels_last(x)
    vec = max(1, 16 // x.element_size())
    if (C if cl else HW) % vec:
        vec = 1
    grid = (triton.cdiv(C * HW, _RESCALE_BLOCK), N)
    return grid, dict(N=N, C=C, HW=HW, slab=C * HW, CHANNELS_LAST=cl, BLOCK=_RESCALE_BLOCK, VEC=vec)


def se_forward(x, w1, b1, w2, b2, act, gate, pool):
    N, C, H, W = x.shape
    Cr = w1.shape[0]
    acc = acc_dtype(x.dtype)
    pool_max = pool == "avgmax"
    plan = _reduce_plan(x)
    s = empty((N, C), acc, x.device)
    z = empty_like(s)
    p = empty_like(s)
    u = empty((N, Cr), acc, x.device)
    pmax = empty((N, C) if pool_max else (0,), acc, x.device)
    ws = empty((N, plan["n_split"], 2, C), acc, x.device)
    counters = arrival_counters(x.device, N)
    grid = (N * plan["n_cblk"] * plan["n_split"],)
    _se_squeeze_excite[grid](
        x, w1, b1 if b1 is not None else w1, w2, b2 if b2 is not None else w2, ws, counters,
        s, z, u, p, pmax if pool_max else s, Cr=Cr, **plan, **_mlp_blocks(Cr),
        HAS_B1=b1 is not None, HAS_B2=b2 is not None, ACT=act, GATE=gate, POOL_MAX=pool_max,
        ACC=tl_acc_dtype(x.dtype), num_warps=4)
    y = empty_like(x)
    grid, args = _flat_launch(x)
    _se_rescale[grid](x, s, y, **args, ACC=tl_acc_dtype(x.dtype), num_warps=4)
    return y, s, z, u, p, pmax


def se_backward(dy, x, w1, w2, s, z, u, p, pmax, act, gate, pool):
    N, C, H, W = x.shape
    Cr = w1.shape[0]
    pool_max = pool == "avgmax"
    accd = tl_acc_dtype(x.dtype)
    plan = _reduce_plan(x)
    ws = empty((N, plan["n_split"], 2, C), s.dtype, x.device)
    dz = empty_like(s)
    du = empty_like(u)
    coef_avg = empty_like(s)
    coef_max = empty_like(s) if pool_max else s
    counters = arrival_counters(x.device, N)
    grid = (N * plan["n_cblk"] * plan["n_split"],)
    _se_bwd_reduce_excite[grid](
        dy, x, w1, w2, z, u, pmax if pool_max else s, ws, counters, dz, du, coef_avg, coef_max,
        Cr=Cr, **plan, **_mlp_blocks(Cr), ACT=act, GATE=gate, POOL_MAX=pool_max, ACC=accd,
        num_warps=4)
    dw1, dw2 = empty_like(w1), empty_like(w2)
    db1 = empty((Cr,), w1.dtype, x.device)
    db2 = empty((C,), w2.dtype, x.device)
    block_a = min(triton.next_power_of_2(C), 64)
    block_b = min(triton.next_power_of_2(Cr), 32)
    n_tiles = 2 * triton.cdiv(C, block_a) * triton.cdiv(Cr, block_b)
    _se_bwd_weights[(n_tiles,)](dz, du, u, p, dw1, db1, dw2, db2, N, C, Cr, ACT=act, ACC=accd,
                                BLOCK_A=block_a, BLOCK_B=block_b, num_warps=4)
    dx = empty_like(x)
    grid, args = _flat_launch(x)
    _se_bwd_dx[grid](dy, x, s, coef_avg, pmax if pool_max else s, coef_max, dx, **args,
                     POOL_MAX=pool_max, ACC=accd, num_warps=4)
    return dx, dw1, db1, dw2, db2

"""SE (squeeze-and-excitation) in Triton: forward in 2 launches, backward in 3.

All reduction-shaped kernels share one grid: programs over (sample n, channel block cb, HW split
sp), each owning a (BLOCK_C channels) x (its HW range) tile loop. The excitation MLP is spread
over that grid instead of running on one program per sample (a single CTA walking C x Cr
weights is latency-bound: it would dominate the run time at ResNet shapes):

Forward
  1. _se_squeeze: partial sum/max of x per (n, cb, sp). The last split of each (n, cb) (arrival
     counter; no spinning) finishes the pooled p for its channels and its share of layer 1,
     W1[:, cb] @ p[cb]; the last channel block of each sample adds the shares (+ b1) into u.
  2. _se_excite_rescale: each program computes layer 2 for its own channels,
     s = gate(W2[cb, :] @ act(u) + b2[cb]), then y = x * s over its tile. It walks the grid in
     REVERSE order of the squeeze, so the tail of x that is still in L2 is re-read from L2.
Backward
  1. _se_bwd_reduce: partial sum_hw dy*x (+ tie counts with the max for avgmax); the last split
     of (n, cb) forms dz = ds * g'(z) and its share of dh = W2[cb, :]^T dz[cb]; the last block of
     the sample forms du = dh * act'(u).
  2. _se_bwd_weights: dW1, db1, dW2, db2 from the saved (N, C) / (N, Cr) vectors (deterministic,
     no atomics, no pass over x).
  3. _se_bwd_dx: each program forms dp = W1[:, cb]^T du for its channels, then
     dx = dy * s + dp_avg / HW (+ dp_max / ties where x is a tied max), in reverse order.
No (N, C, H, W) intermediate besides y and dx; autograd keeps x and per-(n, c) vectors only.
Single-layer form (w1 None, timm's EffectiveSEModule; constexpr FC1=False): u = p (the squeeze
stores it, no layer-1 shares), dp = du in the dx tiles, and the weight grid has dW2's tiles only.

Variant "pipelined" (attnkernels/_variant.py; opt-in until measured on a GPU): _se_pipelined runs
the forward's two grids in one launch of persistent programs that take their tiles in the order
of an atomic ticket, each sample's rescale a lag behind its squeeze, so the rescale's read of x
hits L2; _se_bwd_pipelined does the same for the backward's reduction and dx (dy re-read from
L2), then _se_bwd_weights runs. The CUDA backend's pipelined kernels do the same.

Variant "batched" (opt-in likewise): the same four grid kernels with constexpr GROUP > 1, over
(group of GROUP samples, cb, sp): each program's share of a layer (W1[:, cb], W2[cb, :]) is
computed for the whole group from one load of the weight block (the *_group_tile functions).
"""
from __future__ import annotations

import functools
import types

import torch
import triton
import triton.language as tl

from .._alloc import acc_dtype, empty, empty_like
from .._variant import request
from ._launch import launcher, on_x_device
from ._common import (activation, activation_bwd, arrival_counters, cast_to, gate, gate_bwd,
                      nanmax, target_programs, tl_acc_dtype, workspaces)
from ._mlp import channel_layer, finish_layer, mlp_weight_grads, store_share
from ._mlp import weight_grads_plan as _weights_plan
from ._reduce import (STREAM_STAGES, arrive_last, park, pool_stream, pool_tile, sum_rows, tile_of, tile_ptrs,
                      tile_totals)


# --------------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------------
@triton.jit
def _squeeze_tile(
    pid, x_ptr, w1_ptr, b1_ptr, ws_ptr, wsu_ptr, counter_ptr, u_ptr, p_ptr, pmax_ptr,
    N, C, HW, Cr, n_cblk, n_split, hw_per_split, stride_c, stride_hw,
    HAS_B1: tl.constexpr, POOL_MAX: tl.constexpr, ACC: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_ROWS: tl.constexpr,
    FC1: tl.constexpr,
):
    """Squeeze tile pid of the reduction grid; True in the program that finished the sample's u.
    FC1 False: the single-layer form, u = p (Cr == C; no w1, b1, nor layer shares)."""
    done = False
    last, n, cb, c, cmask, psum, pmax = pool_tile(pid, x_ptr, ws_ptr, counter_ptr + N, C, HW, n_cblk, n_split,
                                                  hw_per_split, stride_c, stride_hw, POOL_MAX, ACC, SPLIT,
                                                  BLOCK_C, BLOCK_HW, BLOCK_ROWS)
    ncb = n * n_cblk + cb
    if last:
        pv = psum / HW
        if POOL_MAX:
            tl.store(pmax_ptr + n * C + c, pmax, mask=cmask)
            pv = 0.5 * pv + 0.5 * pmax
        tl.store(p_ptr + n * C + c, pv, mask=cmask)
        if FC1:
            # this channel block's share of layer 1: wsu[n, cb, :] = W1[:, cb] @ p[cb]
            store_share(wsu_ptr + ncb * Cr, w1_ptr, C, 1, pv, c, cmask, Cr, ACC, BLOCK_R)
        else:
            tl.store(u_ptr + n * C + c, pv, mask=cmask)
        if arrive_last(counter_ptr + n, n_cblk):  # the last block of the sample: u = sum + b1
            if FC1:
                finish_layer(n, wsu_ptr, b1_ptr, u_ptr, n_cblk, Cr, HAS_B1, ACC, BLOCK_R, BLOCK_ROWS)
            done = True
    return done


@triton.jit
def _se_squeeze(
    x_ptr, w1_ptr, b1_ptr, ws_ptr, wsu_ptr, counter_ptr, u_ptr, p_ptr, pmax_ptr,
    N, C, HW, Cr, n_cblk, n_split, hw_per_split, stride_c, stride_hw,
    HAS_B1: tl.constexpr, POOL_MAX: tl.constexpr, ACC: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_ROWS: tl.constexpr,
    FC1: tl.constexpr, GROUP: tl.constexpr,
):
    """GROUP > 1: variant "batched", programs over (group of GROUP samples, cb, sp)."""
    if GROUP == 1:
        _squeeze_tile(tl.program_id(0), x_ptr, w1_ptr, b1_ptr, ws_ptr, wsu_ptr, counter_ptr, u_ptr, p_ptr,
                      pmax_ptr, N, C, HW, Cr, n_cblk, n_split, hw_per_split, stride_c, stride_hw,
                      HAS_B1, POOL_MAX, ACC, SPLIT, BLOCK_C, BLOCK_HW, BLOCK_R, BLOCK_ROWS, FC1)
    else:
        _squeeze_group_tile(tl.program_id(0), x_ptr, w1_ptr, b1_ptr, ws_ptr, wsu_ptr, counter_ptr, u_ptr,
                            p_ptr, pmax_ptr, N, C, HW, Cr, n_cblk, n_split, hw_per_split, stride_c, stride_hw,
                            HAS_B1, POOL_MAX, ACC, SPLIT, BLOCK_C, BLOCK_HW, BLOCK_R, BLOCK_ROWS, FC1, GROUP)


@triton.jit
def _scale_stream(x_ptr, y_ptr, off_n, c, cmask, s, hw_lo, hw_hi, stride_c, stride_hw, ACC: tl.constexpr,
                  BLOCK_HW: tl.constexpr, LAST: tl.constexpr):
    """y = x * s over [hw_lo, hw_hi) of one sample's channels c (off_n: the sample's offset).
    LAST: x's last read, evict-first (as is y's store)."""
    for hw0 in range(hw_lo, hw_hi, BLOCK_HW):
        ptrs, m = tile_ptrs(off_n, c, hw0 + tl.arange(0, BLOCK_HW), cmask, hw_hi, stride_c, stride_hw)
        if LAST:
            x = tl.load(x_ptr + ptrs, mask=m, other=0.0, eviction_policy="evict_first")
            tl.store(y_ptr + ptrs, cast_to(x.to(ACC) * s[:, None], y_ptr.dtype.element_ty), mask=m,
                     eviction_policy="evict_first")
        else:
            x = tl.load(x_ptr + ptrs, mask=m, other=0.0)
            tl.store(y_ptr + ptrs, cast_to(x.to(ACC) * s[:, None], y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _rescale_tile(
    pid, x_ptr, y_ptr, w2_ptr, b2_ptr, u_ptr, s_ptr, z_ptr,
    C, HW, Cr, n_cblk, n_split, hw_per_split, stride_c, stride_hw,
    HAS_B2: tl.constexpr, ACT: tl.constexpr, GATE: tl.constexpr, ACC: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_R: tl.constexpr, LAST: tl.constexpr,
):
    """Excite + rescale tile pid of the grid. LAST: u was written during this launch (read it
    through L2) and this is x's last read (evict-first, as is y's store)."""
    n, cb, sp, c, hw_lo, hw_hi = tile_of(pid, n_cblk, n_split, hw_per_split, HW, BLOCK_C)
    cmask = c < C
    # layer 2 for this block's channels: z = W2[cb, :] @ act(u) + b2[cb]
    z = channel_layer(w2_ptr, Cr, 1, u_ptr + n * Cr, Cr, c, cmask, ACT, True, ACC, BLOCK_R, LAST)
    if HAS_B2:
        z += tl.load(b2_ptr + c, mask=cmask, other=0.0).to(ACC)
    s = gate(z, GATE)
    if sp == 0:
        tl.store(z_ptr + n * C + c, z, mask=cmask)
        tl.store(s_ptr + n * C + c, s, mask=cmask)
    _scale_stream(x_ptr, y_ptr, n.to(tl.int64) * C * HW, c, cmask, s, hw_lo, hw_hi, stride_c, stride_hw,
                  ACC, BLOCK_HW, LAST)


@triton.jit(do_not_specialize=["N"])  # (N: read by the batched tiles only)
def _se_excite_rescale(
    x_ptr, y_ptr, w2_ptr, b2_ptr, u_ptr, s_ptr, z_ptr,
    N, C, HW, Cr, n_cblk, n_split, hw_per_split, stride_c, stride_hw,
    HAS_B2: tl.constexpr, ACT: tl.constexpr, GATE: tl.constexpr, ACC: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_R: tl.constexpr, GROUP: tl.constexpr,
):
    pid = tl.num_programs(0) - 1 - tl.program_id(0)  # reverse order of the squeeze
    if GROUP == 1:
        _rescale_tile(pid, x_ptr, y_ptr, w2_ptr, b2_ptr, u_ptr, s_ptr, z_ptr, C, HW, Cr, n_cblk, n_split,
                      hw_per_split, stride_c, stride_hw, HAS_B2, ACT, GATE, ACC, BLOCK_C, BLOCK_HW, BLOCK_R,
                      False)
    else:
        _rescale_group_tile(pid, x_ptr, y_ptr, w2_ptr, b2_ptr, u_ptr, s_ptr, z_ptr, N, C, HW, Cr, n_cblk,
                            n_split, hw_per_split, stride_c, stride_hw, HAS_B2, ACT, GATE, ACC, BLOCK_C,
                            BLOCK_HW, BLOCK_R, GROUP)


@triton.jit
def _take_ticket(ticket_ptr, last_ticket):
    """This program's next work item; the program taking the launch's last ticket (every program
    takes one past the work before it exits) re-zeroes the counter for the next call."""
    t = tl.atomic_add(ticket_ptr, 1, sem="relaxed")
    if t == last_ticket:
        tl.atomic_xchg(ticket_ptr, 0, sem="relaxed")
    return t


@triton.jit
def _pipe_setup(counter_ptr, N, n_cblk, n_split):
    """(tiles per sample, work items, ready counters, ticket, last ticket) of a pipelined launch;
    ready[n] and the ticket follow the split and block counters in the counter buffer."""
    per_sample = n_cblk * n_split
    total = N * 2 * per_sample
    ready_ptr = counter_ptr + N + N * n_cblk
    return per_sample, total, ready_ptr, ready_ptr + N, total + tl.num_programs(0) - 1


@triton.jit
def _publish(ready_ptr):
    """The sample's epilogue results are stored (by every thread): release them."""
    tl.debug_barrier()
    tl.atomic_add(ready_ptr, 1, sem="release")


@triton.jit
def _wait_ready(ready_ptr, SPIN_CAP: tl.constexpr):
    """Wait for _publish of the sample (SPIN_CAP > 0: give up after that many retries)."""
    r = tl.atomic_add(ready_ptr, 0, sem="acquire")
    spins = 0
    while (r == 0) & ((SPIN_CAP == 0) | (spins < SPIN_CAP)):
        r = tl.atomic_add(ready_ptr, 0, sem="acquire")
        spins += 1


@triton.jit
def _tile_done(ready_ptr, per_sample):
    """Count an elementwise tile; the sample's last re-zeroes the counter for the next call."""
    tl.debug_barrier()
    if tl.atomic_add(ready_ptr, 1, sem="relaxed") == per_sample:
        tl.atomic_xchg(ready_ptr, 0, sem="relaxed")


@triton.jit
def _pipe_item(t, N, per_sample, L):
    """(is_squeeze, n, tile) of ticket t: the squeeze tiles of samples [0, L), then for k = 0, 1,
    ...: the squeeze tiles of sample k + L (while there is one), the rescale tiles of sample k."""
    head = L * per_sample
    full = (N - L) * 2 * per_sample
    is_squeeze = t < head
    n = t // per_sample
    idx = t % per_sample
    if t >= head:
        r = t - head
        if r < full:
            k = r // (2 * per_sample)
            j = r % (2 * per_sample)
            is_squeeze = j < per_sample
            n = tl.where(is_squeeze, k + L, k)
            idx = tl.where(is_squeeze, j, j - per_sample)
        else:
            r = r - full
            n = N - L + r // per_sample
            idx = r % per_sample
    return is_squeeze, n, idx


@triton.jit
def _se_pipelined(
    x_ptr, y_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, ws_ptr, wsu_ptr, counter_ptr, u_ptr, p_ptr,
    pmax_ptr, s_ptr, z_ptr,
    N, C, HW, Cr, n_cblk, n_split, hw_per_split, stride_c, stride_hw, lag,
    HAS_B1: tl.constexpr, HAS_B2: tl.constexpr, ACT: tl.constexpr, GATE: tl.constexpr,
    POOL_MAX: tl.constexpr, ACC: tl.constexpr, SPLIT: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_ROWS: tl.constexpr, SPIN_CAP: tl.constexpr,
    FC1: tl.constexpr, GROUP: tl.constexpr,
):
    """Squeeze and rescale in one launch: persistent programs take the tiles of both grids in
    ticket order (_pipe_item), each sample's rescale `lag` samples behind its squeeze, so the
    rescale re-reads x from L2. A rescale tile waits for its sample's u, written by a squeeze tile
    with a smaller ticket, i.e. by a program that is running or done: no deadlock, whatever the
    residency. ready[n] (after the split and block counters): +1 when u[n] is out, +1 per rescale
    tile; the sample's last tile re-zeroes it. SPIN_CAP > 0 bounds a wait (the interpreter runs
    programs one after another, so a wait there is a bug: give up and let the test fail)."""
    tl.static_assert(GROUP == 1, "the pipelined tiles are per sample (the plan's GROUP)")
    per_sample, total, ready_ptr, ticket_ptr, last_ticket = _pipe_setup(counter_ptr, N, n_cblk, n_split)
    t = _take_ticket(ticket_ptr, last_ticket)
    while t < total:
        is_squeeze, n, idx = _pipe_item(t, N, per_sample, lag)
        pid = n * per_sample + idx
        if is_squeeze:
            if _squeeze_tile(pid, x_ptr, w1_ptr, b1_ptr, ws_ptr, wsu_ptr, counter_ptr, u_ptr, p_ptr,
                             pmax_ptr, N, C, HW, Cr, n_cblk, n_split, hw_per_split, stride_c, stride_hw,
                             HAS_B1, POOL_MAX, ACC, SPLIT, BLOCK_C, BLOCK_HW, BLOCK_R, BLOCK_ROWS, FC1):
                _publish(ready_ptr + n)
        else:
            _wait_ready(ready_ptr + n, SPIN_CAP)
            _rescale_tile(pid, x_ptr, y_ptr, w2_ptr, b2_ptr, u_ptr, s_ptr, z_ptr, C, HW, Cr, n_cblk,
                          n_split, hw_per_split, stride_c, stride_hw, HAS_B2, ACT, GATE, ACC, BLOCK_C,
                          BLOCK_HW, BLOCK_R, True)
            _tile_done(ready_ptr + n, per_sample)
        t = _take_ticket(ticket_ptr, last_ticket)


# --------------------------------------------------------------------------------------------
# backward
# --------------------------------------------------------------------------------------------
@triton.jit
def _dyx_stream(dy_ptr, x_ptr, pmax_ptr, n, C, HW, c, cmask, hw_lo, hw_hi, stride_c, stride_hw,
                POOL_MAX: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    """(sum dy * x, count of x == its channel's max if POOL_MAX) over [hw_lo, hw_hi) of sample n's
    channels c."""
    off_n = n.to(tl.int64) * C * HW
    acc_ds = tl.zeros([BLOCK_C, BLOCK_HW], dtype=ACC)
    acc_ties = tl.zeros([BLOCK_C, BLOCK_HW], dtype=ACC)
    if POOL_MAX:
        pm = tl.load(pmax_ptr + n * C + c, mask=cmask, other=0.0)
    for hw0 in tl.range(hw_lo, hw_hi, BLOCK_HW, num_stages=STREAM_STAGES):  # (see pool_stream)
        ptrs, m = tile_ptrs(off_n, c, hw0 + tl.arange(0, BLOCK_HW), cmask, hw_hi, stride_c, stride_hw)
        x = tl.load(x_ptr + ptrs, mask=m, other=0.0).to(ACC)
        acc_ds += tl.load(dy_ptr + ptrs, mask=m, other=0.0).to(ACC) * x
        if POOL_MAX:
            acc_ties += tl.where(m & (x == pm[:, None]), 1.0, 0.0)
    return tl.sum(acc_ds, axis=1), tl.sum(acc_ties, axis=1)


@triton.jit
def _finish_du(n, wsu_ptr, u_ptr, du_ptr, n_cblk, Cr, ACT: tl.constexpr, ACC: tl.constexpr,
               BLOCK_R: tl.constexpr, BLOCK_ROWS: tl.constexpr):
    """du[n] = (the sum of the sample's dh shares, one per channel block) * act'(u[n])."""
    for r0 in range(0, Cr, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        dh = sum_rows(wsu_ptr + n * n_cblk * Cr, n_cblk, Cr, r, r < Cr, ACC, BLOCK_ROWS, False)
        u = tl.load(u_ptr + n * Cr + r, mask=r < Cr, other=0.0)
        tl.store(du_ptr + n * Cr + r, activation_bwd(u, dh, ACT), mask=r < Cr)


@triton.jit
def _bwd_reduce_tile(
    pid, dy_ptr, x_ptr, w2_ptr, z_ptr, u_ptr, pmax_ptr, ws_ptr, wsu_ptr, counter_ptr,
    dz_ptr, du_ptr, ties_ptr,
    N, C, HW, Cr, n_cblk, n_split, hw_per_split, stride_c, stride_hw,
    ACT: tl.constexpr, GATE: tl.constexpr, POOL_MAX: tl.constexpr, ACC: tl.constexpr,
    SPLIT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
):
    """Reduction tile pid; True in the program that finished the sample's du."""
    done = False
    n, cb, sp, c, hw_lo, hw_hi = tile_of(pid, n_cblk, n_split, hw_per_split, HW, BLOCK_C)
    cmask = c < C
    ds, ties = _dyx_stream(dy_ptr, x_ptr, pmax_ptr, n, C, HW, c, cmask, hw_lo, hw_hi, stride_c, stride_hw,
                           POOL_MAX, ACC, BLOCK_C, BLOCK_HW)
    ncb = n * n_cblk + cb
    last, ds, ties = tile_totals(ws_ptr, counter_ptr + N, ncb, sp, n_split, ds, ties, False, POOL_MAX, SPLIT, ACC,
                                 BLOCK_C, BLOCK_ROWS)
    if last:
        dz = gate_bwd(tl.load(z_ptr + n * C + c, mask=cmask, other=0.0), ds, GATE)
        tl.store(dz_ptr + n * C + c, dz, mask=cmask)
        if POOL_MAX:
            tl.store(ties_ptr + n * C + c, ties, mask=cmask)
        # this block's share of dh = W2^T dz: wsu[n, cb, :] = W2[cb, :]^T dz[cb]
        store_share(wsu_ptr + ncb * Cr, w2_ptr, 1, Cr, dz, c, cmask, Cr, ACC, BLOCK_R)
        if arrive_last(counter_ptr + n, n_cblk):
            _finish_du(n, wsu_ptr, u_ptr, du_ptr, n_cblk, Cr, ACT, ACC, BLOCK_R, BLOCK_ROWS)
            done = True
    return done


@triton.jit
def _se_bwd_reduce(
    dy_ptr, x_ptr, w2_ptr, z_ptr, u_ptr, pmax_ptr, ws_ptr, wsu_ptr, counter_ptr,
    dz_ptr, du_ptr, ties_ptr,
    N, C, HW, Cr, n_cblk, n_split, hw_per_split, stride_c, stride_hw,
    ACT: tl.constexpr, GATE: tl.constexpr, POOL_MAX: tl.constexpr, ACC: tl.constexpr,
    SPLIT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_ROWS: tl.constexpr, GROUP: tl.constexpr,
):
    if GROUP == 1:
        _bwd_reduce_tile(tl.program_id(0), dy_ptr, x_ptr, w2_ptr, z_ptr, u_ptr, pmax_ptr, ws_ptr, wsu_ptr,
                         counter_ptr, dz_ptr, du_ptr, ties_ptr, N, C, HW, Cr, n_cblk, n_split, hw_per_split,
                         stride_c, stride_hw, ACT, GATE, POOL_MAX, ACC, SPLIT, BLOCK_C, BLOCK_HW, BLOCK_R,
                         BLOCK_ROWS)
    else:
        _bwd_reduce_group_tile(tl.program_id(0), dy_ptr, x_ptr, w2_ptr, z_ptr, u_ptr, pmax_ptr, ws_ptr,
                               wsu_ptr, counter_ptr, dz_ptr, du_ptr, ties_ptr, N, C, HW, Cr, n_cblk, n_split,
                               hw_per_split, stride_c, stride_hw, ACT, GATE, POOL_MAX, ACC, SPLIT, BLOCK_C,
                               BLOCK_HW, BLOCK_R, BLOCK_ROWS, GROUP)


@triton.jit
def _se_bwd_weights(dz_ptr, du_ptr, u_ptr, p_ptr, dw1_ptr, db1_ptr, dw2_ptr, db2_ptr, N, C, Cr,
                    ACT: tl.constexpr, ACC: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
    """dW2's tiles, then (when the grid has them: not in the single-layer form) dW1's."""
    mlp_weight_grads(tl.program_id(0), dz_ptr, u_ptr, du_ptr, p_ptr, dw1_ptr, db1_ptr, dw2_ptr, db2_ptr, N, N, C, Cr,
                     True, ACT, ACC, BLOCK_A, BLOCK_B)


@triton.jit
def _dx_stream(dy_ptr, x_ptr, dx_ptr, s_ptr, pmax_ptr, ties_ptr, n, dp, C, HW, c, cmask, hw_lo, hw_hi,
               stride_c, stride_hw, POOL_MAX: tl.constexpr, ACC: tl.constexpr, BLOCK_HW: tl.constexpr,
               LAST: tl.constexpr):
    """dx = dy * s + dp / HW (+ the max's share where x is a tied max) over [hw_lo, hw_hi) of
    sample n's channels c, dp = dL/dp[n, c]. LAST: as in _bwd_dx_tile."""
    s = tl.load(s_ptr + n * C + c, mask=cmask, other=0.0)
    if POOL_MAX:
        pm = tl.load(pmax_ptr + n * C + c, mask=cmask, other=0.0)
        if LAST:
            ties = tl.load(ties_ptr + n * C + c, mask=cmask, other=1.0, cache_modifier=".cg")
        else:
            ties = tl.load(ties_ptr + n * C + c, mask=cmask, other=1.0)
        coef_max = 0.5 * dp / ties
        dp = 0.5 * dp
    coef_avg = dp / HW
    off_n = n.to(tl.int64) * C * HW
    for hw0 in range(hw_lo, hw_hi, BLOCK_HW):
        ptrs, m = tile_ptrs(off_n, c, hw0 + tl.arange(0, BLOCK_HW), cmask, hw_hi, stride_c, stride_hw)
        if LAST:
            dy = tl.load(dy_ptr + ptrs, mask=m, other=0.0, eviction_policy="evict_first")
        else:
            dy = tl.load(dy_ptr + ptrs, mask=m, other=0.0)
        g = dy.to(ACC) * s[:, None] + coef_avg[:, None]
        if POOL_MAX:
            if LAST:
                x = tl.load(x_ptr + ptrs, mask=m, other=0.0, eviction_policy="evict_first").to(ACC)
            else:
                x = tl.load(x_ptr + ptrs, mask=m, other=0.0).to(ACC)
            g += tl.where(x == pm[:, None], coef_max[:, None], 0.0)
        if LAST:
            tl.store(dx_ptr + ptrs, cast_to(g, dx_ptr.dtype.element_ty), mask=m, eviction_policy="evict_first")
        else:
            tl.store(dx_ptr + ptrs, cast_to(g, dx_ptr.dtype.element_ty), mask=m)


@triton.jit
def _bwd_dx_tile(
    pid, dy_ptr, x_ptr, dx_ptr, w1_ptr, du_ptr, s_ptr, pmax_ptr, ties_ptr,
    C, HW, Cr, n_cblk, n_split, hw_per_split, stride_c, stride_hw,
    POOL_MAX: tl.constexpr, ACC: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_R: tl.constexpr, LAST: tl.constexpr,
    FC1: tl.constexpr,
):
    """dx tile pid. LAST: du and the tie counts were written during this launch (read them
    through L2) and this is dy's (and x's) last read (evict-first, as is dx's store).
    FC1 False: the single-layer form, dp = du."""
    n, cb, sp, c, hw_lo, hw_hi = tile_of(pid, n_cblk, n_split, hw_per_split, HW, BLOCK_C)
    cmask = c < C
    # dp = W1[:, cb]^T du for this block's channels, spread over the pooling
    if FC1:
        dp = channel_layer(w1_ptr, 1, C, du_ptr + n * Cr, Cr, c, cmask, "relu", False, ACC, BLOCK_R, LAST)
    elif LAST:
        dp = tl.load(du_ptr + n * C + c, mask=cmask, other=0.0, cache_modifier=".cg")
    else:
        dp = tl.load(du_ptr + n * C + c, mask=cmask, other=0.0)
    _dx_stream(dy_ptr, x_ptr, dx_ptr, s_ptr, pmax_ptr, ties_ptr, n, dp, C, HW, c, cmask, hw_lo, hw_hi,
               stride_c, stride_hw, POOL_MAX, ACC, BLOCK_HW, LAST)


@triton.jit(do_not_specialize=["N"])  # (N: read by the batched tiles only)
def _se_bwd_dx(
    dy_ptr, x_ptr, dx_ptr, w1_ptr, du_ptr, s_ptr, pmax_ptr, ties_ptr,
    N, C, HW, Cr, n_cblk, n_split, hw_per_split, stride_c, stride_hw,
    POOL_MAX: tl.constexpr, ACC: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_R: tl.constexpr, FC1: tl.constexpr,
    GROUP: tl.constexpr,
):
    pid = tl.num_programs(0) - 1 - tl.program_id(0)  # reverse order of the reduction
    if GROUP == 1:
        _bwd_dx_tile(pid, dy_ptr, x_ptr, dx_ptr, w1_ptr, du_ptr, s_ptr, pmax_ptr, ties_ptr, C, HW, Cr, n_cblk,
                     n_split, hw_per_split, stride_c, stride_hw, POOL_MAX, ACC, BLOCK_C, BLOCK_HW, BLOCK_R, False,
                     FC1)
    else:
        _bwd_dx_group_tile(pid, dy_ptr, x_ptr, dx_ptr, w1_ptr, du_ptr, s_ptr, pmax_ptr, ties_ptr, N, C, HW, Cr,
                           n_cblk, n_split, hw_per_split, stride_c, stride_hw, POOL_MAX, ACC, BLOCK_C, BLOCK_HW,
                           BLOCK_R, FC1, GROUP)


@triton.jit
def _se_bwd_pipelined(
    dy_ptr, x_ptr, dx_ptr, w1_ptr, w2_ptr, s_ptr, z_ptr, u_ptr, pmax_ptr, ws_ptr, wsu_ptr, counter_ptr,
    dz_ptr, du_ptr, ties_ptr,
    N, C, HW, Cr, n_cblk, n_split, hw_per_split, stride_c, stride_hw, lag,
    ACT: tl.constexpr, GATE: tl.constexpr, POOL_MAX: tl.constexpr, ACC: tl.constexpr,
    SPLIT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_ROWS: tl.constexpr, SPIN_CAP: tl.constexpr, FC1: tl.constexpr, GROUP: tl.constexpr,
):
    """The backward's reduction and dx in one launch, ticket-ordered like _se_pipelined: a dx tile
    waits for its sample's du and re-reads dy (and x) from L2. _se_bwd_weights runs after."""
    tl.static_assert(GROUP == 1, "the pipelined tiles are per sample (the plan's GROUP)")
    per_sample, total, ready_ptr, ticket_ptr, last_ticket = _pipe_setup(counter_ptr, N, n_cblk, n_split)
    t = _take_ticket(ticket_ptr, last_ticket)
    while t < total:
        is_reduce, n, idx = _pipe_item(t, N, per_sample, lag)
        pid = n * per_sample + idx
        if is_reduce:
            if _bwd_reduce_tile(pid, dy_ptr, x_ptr, w2_ptr, z_ptr, u_ptr, pmax_ptr, ws_ptr, wsu_ptr,
                                counter_ptr, dz_ptr, du_ptr, ties_ptr, N, C, HW, Cr, n_cblk, n_split,
                                hw_per_split, stride_c, stride_hw, ACT, GATE, POOL_MAX, ACC, SPLIT, BLOCK_C,
                                BLOCK_HW, BLOCK_R, BLOCK_ROWS):
                _publish(ready_ptr + n)
        else:
            _wait_ready(ready_ptr + n, SPIN_CAP)
            _bwd_dx_tile(pid, dy_ptr, x_ptr, dx_ptr, w1_ptr, du_ptr, s_ptr, pmax_ptr, ties_ptr, C, HW, Cr,
                         n_cblk, n_split, hw_per_split, stride_c, stride_hw, POOL_MAX, ACC, BLOCK_C, BLOCK_HW,
                         BLOCK_R, True, FC1)
            _tile_done(ready_ptr + n, per_sample)
        t = _take_ticket(ticket_ptr, last_ticket)


# --------------------------------------------------------------------------------------------
# variant "batched": a program covers a group of GROUP samples of its channel block, so each block
# of the weights it reads serves the whole group (N / GROUP x |W| through L2 a launch instead of
# N x |W|: at ResNet-50 stage 4, 128 x 2048 x 7 x 7, |W| per sample is 5x x's). The group's
# per-sample vectors of a block are one (GROUP, BLOCK_C) tile; x still streams a sample at a time
# through the same stream helpers as the per-sample tiles.
# --------------------------------------------------------------------------------------------
@triton.jit
def _group_of(grp, N, GROUP: tl.constexpr):
    """The group's first sample, its samples (GROUP,) and their mask, and how many there are."""
    n0 = grp * GROUP
    ns = n0 + tl.arange(0, GROUP)
    return n0, ns, ns < N, tl.minimum(GROUP, N - n0)


@triton.jit
def _row(M, g):
    """Row g of M (a select, then a sum over the other rows' zeros: non-finite values pass)."""
    return tl.sum(tl.where(tl.arange(0, M.shape[0])[:, None] == g, M, 0.0), axis=0)


@triton.jit
def _group_totals(ws_ptr, counter_ptr, N, grp, cb, ns, nmask, n_cblk, n_split, SPLIT: tl.constexpr,
                  B_IS_MAX: tl.constexpr, HAS_B: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr,
                  GROUP: tl.constexpr):
    """(last, A, B): the group's per-channel totals (GROUP, BLOCK_C) of the partials each sample
    parked in ws[n, cb, sp] (park; b combined by max if B_IS_MAX), in the last split of (grp,
    cb) to arrive (one arrival per (group, cb), its counter after the per-group ones). Parked
    even without HW splits: carried across the sample loop as tiles, the group's sums took
    124-142 registers in fp32 (channels_last, sm_90 AOT); the barrier orders the program's own
    stores before its loads there."""
    if SPLIT:
        last = arrive_last(counter_ptr + N + grp * n_cblk + cb, n_split)
    else:
        tl.debug_barrier()
        last = True
    A = tl.zeros([GROUP, BLOCK_C], dtype=ACC)
    if B_IS_MAX:
        B = tl.full([GROUP, BLOCK_C], float("-inf"), dtype=ACC)
    else:
        B = tl.zeros([GROUP, BLOCK_C], dtype=ACC)
    if last:
        p = ws_ptr + ((ns * n_cblk + cb) * n_split * 2 * BLOCK_C)[:, None] + tl.arange(0, BLOCK_C)[None, :]
        m = nmask[:, None]
        for sp in range(n_split):  # .cg: the rows were written by other SMs
            A += tl.load(p + sp * 2 * BLOCK_C, mask=m, other=0.0, cache_modifier=".cg")
            if HAS_B:
                b = tl.load(p + sp * 2 * BLOCK_C + BLOCK_C, mask=m, other=0.0, cache_modifier=".cg")
                if B_IS_MAX:
                    B = nanmax(B, b)
                else:
                    B += b
    return last, A, B


@triton.jit
def _group_matvec(w_ptr, stride_out, stride_in, V, i_in, in_mask, i_out, out_mask, ACC: tl.constexpr):
    """OUT[g, o] = sum_i W[o, i] * V[g, i]: matvec for each row of V (GROUP, len(i_in), ACC), the
    weight block loaded once for all of them. tl.dot, exact ("ieee": FFMA for fp32, DMMA for
    fp64; no tf32), because it sums over i inside each thread: the same products as a broadcast
    and tl.sum over i spread i over the lanes, and SASS had 96-192 shuffles and ~400
    instructions per block of rows, 1.8x split's per sample. Needs len(i_in) >= 16 (_plan_for)."""
    w = tl.load(w_ptr + i_out[:, None] * stride_out + i_in[None, :] * stride_in,
                mask=out_mask[:, None] & in_mask[None, :], other=0.0)
    return tl.dot(V, tl.trans(w.to(ACC)), input_precision="ieee", out_dtype=ACC)


@triton.jit
def _store_group_shares(wsu_ptr, w_ptr, stride_out, stride_in, V, ns, nmask, cb, n_cblk, c, cmask, Cr,
                        ACC: tl.constexpr, BLOCK_R: tl.constexpr):
    """wsu[n, cb, :] = W[:, cb] @ V[g] for the group's samples n = ns[g]: this channel block's
    share of a layer of width Cr (W[r, c] at r * stride_out + c * stride_in)."""
    rows = (ns * n_cblk + cb) * Cr
    for r0 in range(0, Cr, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        tl.store(wsu_ptr + rows[:, None] + r[None, :],
                 _group_matvec(w_ptr, stride_out, stride_in, V, c, cmask, r, r < Cr, ACC),
                 mask=nmask[:, None] & (r < Cr)[None, :])


@triton.jit
def _group_layer(w_ptr, stride_out, stride_in, v_ptr, ns, nmask, n_in, c, cmask, ACT: tl.constexpr,
                 APPLY_ACT: tl.constexpr, ACC: tl.constexpr, GROUP: tl.constexpr, BLOCK_R: tl.constexpr):
    """OUT[g, c] = sum_r W[c, r] * f(v[ns[g], r]): channel_layer for the group's samples."""
    out = tl.zeros([GROUP, c.shape[0]], dtype=ACC)
    for r0 in range(0, n_in, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        v = tl.load(v_ptr + ns[:, None] * n_in + r[None, :], mask=nmask[:, None] & (r < n_in)[None, :],
                    other=0.0)
        if APPLY_ACT:
            v = activation(v, ACT)
        out += _group_matvec(w_ptr, stride_out, stride_in, v, r, r < n_in, c, cmask, ACC)
    return out


@triton.jit
def _squeeze_group_tile(
    pid, x_ptr, w1_ptr, b1_ptr, ws_ptr, wsu_ptr, counter_ptr, u_ptr, p_ptr, pmax_ptr,
    N, C, HW, Cr, n_cblk, n_split, hw_per_split, stride_c, stride_hw,
    HAS_B1: tl.constexpr, POOL_MAX: tl.constexpr, ACC: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_ROWS: tl.constexpr,
    FC1: tl.constexpr, GROUP: tl.constexpr,
):
    """_squeeze_tile for the samples of group grp: the last split of (grp, cb) (counter after
    the per-group ones) stores the group's layer-1 shares, W1 read once; the last channel block
    of the group finishes u for each of its samples."""
    grp, cb, sp, c, hw_lo, hw_hi = tile_of(pid, n_cblk, n_split, hw_per_split, HW, BLOCK_C)
    cmask = c < C
    n0, ns, nmask, gs = _group_of(grp, N, GROUP)
    for g in range(gs):
        n = n0 + g
        psum, pmax = pool_stream(x_ptr + n.to(tl.int64) * C * HW, c, cmask, hw_lo, hw_hi, stride_c, stride_hw,
                                  POOL_MAX, ACC, BLOCK_C, BLOCK_HW)
        park(ws_ptr + (n * n_cblk + cb) * n_split * 2 * BLOCK_C, sp, psum, pmax, POOL_MAX, BLOCK_C)
    last, P, PM = _group_totals(ws_ptr, counter_ptr, N, grp, cb, ns, nmask, n_cblk, n_split, SPLIT, True,
                                POOL_MAX, ACC, BLOCK_C, GROUP)
    if last:
        m2 = nmask[:, None] & cmask[None, :]
        off = ns[:, None] * C + c[None, :]
        PV = P / HW
        if POOL_MAX:
            tl.store(pmax_ptr + off, PM, mask=m2)
            PV = 0.5 * PV + 0.5 * PM
        tl.store(p_ptr + off, PV, mask=m2)
        if FC1:
            _store_group_shares(wsu_ptr, w1_ptr, C, 1, tl.where(m2, PV, 0.0), ns, nmask, cb, n_cblk, c, cmask,
                                Cr, ACC, BLOCK_R)
        else:
            tl.store(u_ptr + off, PV, mask=m2)
        if arrive_last(counter_ptr + grp, n_cblk):
            if FC1:
                for g in range(gs):
                    finish_layer(n0 + g, wsu_ptr, b1_ptr, u_ptr, n_cblk, Cr, HAS_B1, ACC, BLOCK_R, BLOCK_ROWS)


@triton.jit
def _rescale_group_tile(
    pid, x_ptr, y_ptr, w2_ptr, b2_ptr, u_ptr, s_ptr, z_ptr,
    N, C, HW, Cr, n_cblk, n_split, hw_per_split, stride_c, stride_hw,
    HAS_B2: tl.constexpr, ACT: tl.constexpr, GATE: tl.constexpr, ACC: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_R: tl.constexpr, GROUP: tl.constexpr,
):
    """_rescale_tile for the samples of group grp: layer 2 of the block's channels for the whole
    group (W2[cb, :] read once), then each sample's rescale."""
    grp, cb, sp, c, hw_lo, hw_hi = tile_of(pid, n_cblk, n_split, hw_per_split, HW, BLOCK_C)
    cmask = c < C
    n0, ns, nmask, gs = _group_of(grp, N, GROUP)
    Z = _group_layer(w2_ptr, Cr, 1, u_ptr, ns, nmask, Cr, c, cmask, ACT, True, ACC, GROUP, BLOCK_R)
    if HAS_B2:
        Z += tl.load(b2_ptr + c, mask=cmask, other=0.0).to(ACC)[None, :]
    S = gate(Z, GATE)
    if sp == 0:
        m2 = nmask[:, None] & cmask[None, :]
        tl.store(z_ptr + ns[:, None] * C + c[None, :], Z, mask=m2)
        tl.store(s_ptr + ns[:, None] * C + c[None, :], S, mask=m2)
    for g in range(gs):
        _scale_stream(x_ptr, y_ptr, (n0 + g).to(tl.int64) * C * HW, c, cmask, _row(S, g), hw_lo, hw_hi,
                      stride_c, stride_hw, ACC, BLOCK_HW, False)


@triton.jit
def _bwd_reduce_group_tile(
    pid, dy_ptr, x_ptr, w2_ptr, z_ptr, u_ptr, pmax_ptr, ws_ptr, wsu_ptr, counter_ptr,
    dz_ptr, du_ptr, ties_ptr,
    N, C, HW, Cr, n_cblk, n_split, hw_per_split, stride_c, stride_hw,
    ACT: tl.constexpr, GATE: tl.constexpr, POOL_MAX: tl.constexpr, ACC: tl.constexpr,
    SPLIT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_ROWS: tl.constexpr, GROUP: tl.constexpr,
):
    """_bwd_reduce_tile for the samples of group grp (counters as in _squeeze_group_tile): the
    group's dh shares with W2[cb, :] read once, then du for each sample."""
    grp, cb, sp, c, hw_lo, hw_hi = tile_of(pid, n_cblk, n_split, hw_per_split, HW, BLOCK_C)
    cmask = c < C
    n0, ns, nmask, gs = _group_of(grp, N, GROUP)
    for g in range(gs):
        n = n0 + g
        ds, ties = _dyx_stream(dy_ptr, x_ptr, pmax_ptr, n, C, HW, c, cmask, hw_lo, hw_hi, stride_c, stride_hw,
                               POOL_MAX, ACC, BLOCK_C, BLOCK_HW)
        park(ws_ptr + (n * n_cblk + cb) * n_split * 2 * BLOCK_C, sp, ds, ties, POOL_MAX, BLOCK_C)
    last, DS, TIES = _group_totals(ws_ptr, counter_ptr, N, grp, cb, ns, nmask, n_cblk, n_split, SPLIT, False,
                                   POOL_MAX, ACC, BLOCK_C, GROUP)
    if last:
        m2 = nmask[:, None] & cmask[None, :]
        off = ns[:, None] * C + c[None, :]
        DZ = gate_bwd(tl.load(z_ptr + off, mask=m2, other=0.0), DS, GATE)
        tl.store(dz_ptr + off, DZ, mask=m2)
        if POOL_MAX:
            tl.store(ties_ptr + off, TIES, mask=m2)
        _store_group_shares(wsu_ptr, w2_ptr, 1, Cr, tl.where(m2, DZ, 0.0), ns, nmask, cb, n_cblk, c, cmask, Cr,
                            ACC, BLOCK_R)
        if arrive_last(counter_ptr + grp, n_cblk):
            for g in range(gs):
                _finish_du(n0 + g, wsu_ptr, u_ptr, du_ptr, n_cblk, Cr, ACT, ACC, BLOCK_R, BLOCK_ROWS)


@triton.jit
def _bwd_dx_group_tile(
    pid, dy_ptr, x_ptr, dx_ptr, w1_ptr, du_ptr, s_ptr, pmax_ptr, ties_ptr,
    N, C, HW, Cr, n_cblk, n_split, hw_per_split, stride_c, stride_hw,
    POOL_MAX: tl.constexpr, ACC: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_R: tl.constexpr, FC1: tl.constexpr,
    GROUP: tl.constexpr,
):
    """_bwd_dx_tile for the samples of group grp: dp = W1[:, cb]^T du for the whole group (W1
    read once), then each sample's dx."""
    grp, cb, sp, c, hw_lo, hw_hi = tile_of(pid, n_cblk, n_split, hw_per_split, HW, BLOCK_C)
    cmask = c < C
    n0, ns, nmask, gs = _group_of(grp, N, GROUP)
    if FC1:
        DP = _group_layer(w1_ptr, 1, C, du_ptr, ns, nmask, Cr, c, cmask, "relu", False, ACC, GROUP, BLOCK_R)
    else:
        DP = tl.load(du_ptr + ns[:, None] * C + c[None, :], mask=nmask[:, None] & cmask[None, :], other=0.0)
    for g in range(gs):
        _dx_stream(dy_ptr, x_ptr, dx_ptr, s_ptr, pmax_ptr, ties_ptr, n0 + g, _row(DP, g), C, HW, c, cmask,
                   hw_lo, hw_hi, stride_c, stride_hw, POOL_MAX, ACC, BLOCK_HW, False)


# --------------------------------------------------------------------------------------------
# launchers (inputs validated and normalized by attnkernels/se.py)
# --------------------------------------------------------------------------------------------
_TILE = 2048          # elements of x per (BLOCK_C, BLOCK_HW) tile: 16 per thread at 4 warps
_LAYER_TILE = 2048    # elements of a (BLOCK_R, BLOCK_C) weight tile
_GROUP_MAX = 8        # samples per group of the batched variant (the CUDA one's kGroupMax)


def _plan(x: torch.Tensor, Cr: int, variant: str = "split", bps: int = 0):
    """Tile shape and grid of all the SE kernels: (sample, channel block, HW split), and the
    constexprs of the split combine; variant "batched": (group of samples, channel block, HW
    split). bps > 0 sets the HW splits (tests). Cached per shape and layout: this Python (~14 us
    on the dev machine) ran twice per forward+backward."""
    group = min(_GROUP_MAX, max(2, triton.next_power_of_2(x.shape[0]))) if variant == "batched" else 1
    return _plan_for(tuple(x.shape), x.is_contiguous(), Cr, x.device, group, bps)


@functools.lru_cache(maxsize=4096)
def _plan_for(shape, nchw: bool, Cr: int, device: torch.device, group: int = 1, bps: int = 0, *, op: str = "se",
              shares: int = 1):
    """_plan's, for a shape. op, shares: another op on this grid (CBAM's) names itself in the 32-bit
    errors, and keeps `shares` layer-share rows of Cr a channel block (one per MLP input)."""
    N, C, H, W = shape
    HW = H * W
    # batched (group > 1): the group's layer products are tl.dot's, which sum over at least 16
    # (triton 3.6): channel and row blocks of 16 or more (masked past C, Cr)
    min_block = 16 if group > 1 else 1
    if not nchw:  # channels_last: the C channels of a pixel are contiguous
        block_c = max(min_block, min(triton.next_power_of_2(C), 64))
        block_hw = max(1, min(triton.next_power_of_2(HW), _TILE // block_c))
        stride_c, stride_hw = 1, C
    else:  # NCHW: channel planes are contiguous
        block_hw = min(triton.next_power_of_2(HW), 512, _TILE // min_block)
        block_c = max(1, min(triton.next_power_of_2(C), _TILE // block_hw, 256))
        block_c = max(min_block, block_c)
        stride_c, stride_hw = HW, 1
    n_cblk = triton.cdiv(C, block_c)
    hw_blocks = triton.cdiv(HW, block_hw)
    # batched: halve the group while its grid, HW splits included, would have under ~2 programs
    # an SM (N = 16 at ResNet-50 stage 4: 2 groups of 8 x 64 channel blocks, 128 programs)
    while group > 2 and triton.cdiv(N, group) * n_cblk * hw_blocks < target_programs(device) // 2:
        group //= 2
    n_groups = triton.cdiv(N, group)
    n_split = bps or target_programs(device) // max(1, n_groups * n_cblk)
    n_split = max(1, min(hw_blocks, n_split))
    hw_per_split = triton.cdiv(hw_blocks, n_split) * block_hw
    n_split = triton.cdiv(HW, hw_per_split)
    # batched: weight blocks of 1024 (tl.dot holds a block's operands in registers: with 2048,
    # 160-168 registers a thread in the channels_last reductions and the NCHW dx, sm_90 AOT)
    block_r = max(min_block, min(triton.next_power_of_2(Cr), (_LAYER_TILE if group == 1 else 1024) // block_c))
    grid = (n_groups * n_cblk * n_split,)
    args = dict(C=C, HW=HW, Cr=Cr, n_cblk=n_cblk, n_split=n_split, hw_per_split=hw_per_split,
                stride_c=stride_c, stride_hw=stride_hw, BLOCK_C=block_c, BLOCK_HW=block_hw,
                BLOCK_R=block_r, GROUP=group)
    rows = dict(SPLIT=n_split > 1, BLOCK_ROWS=max(1, min(32, _LAYER_TILE // max(block_c, block_r))))
    _check_int32_extents(shape, Cr, n_cblk * max(shares * Cr, 2 * n_split * block_c), op)
    # read-only views: the cached plan is shared by every call of this shape
    return grid, types.MappingProxyType(args), types.MappingProxyType(rows)


_INT32_MAX = 2**31 - 1


def _check_int32_extents(shape, Cr, scratch_per_sample, op="se"):
    """The kernels index within a sample, and the per-(sample, channel) vectors and scratch, with
    32-bit integers (x's per-sample offsets are 64-bit): refuse what would overflow them rather
    than read or write out of bounds. op: the op whose grid this is (its name in the error)."""
    N, C, H, W = shape
    if C * H * W > _INT32_MAX:
        raise ValueError(f"{op} (triton): x of shape {tuple(shape)} has C*H*W = {C * H * W} elements a sample; "
                         f"the Triton kernels index a sample with 32-bit integers (at most {_INT32_MAX})")
    if N * max(C, Cr, scratch_per_sample) > _INT32_MAX:
        raise ValueError(f"{op} (triton): x of shape {tuple(shape)} has too many samples for the Triton kernels' "
                         f"32-bit indexing of their per-(sample, channel) vectors and scratch "
                         f"(N x {max(C, Cr, scratch_per_sample)} > {_INT32_MAX})")


def _workspaces(N, Cr, a, dtype, device, pipelined=False, shares=True):
    """Split partials (N, n_cblk, n_split, 2, BLOCK_C), layer shares (N, n_cblk, Cr; not for the
    single-layer forward: shares=False), counters: the first two are scratch of one launch, cached
    per stream (_common.workspaces). The pipelined launches also count per-sample readiness and
    take a ticket after those counters."""
    park = a["n_split"] > 1 or a["GROUP"] > 1  # batched parks its partials even without HW splits
    ws, wsu = workspaces(device, dtype, N * a["n_cblk"] * a["n_split"] * 2 * a["BLOCK_C"] if park else 1,
                         N * a["n_cblk"] * Cr if shares else 1)
    counters = arrival_counters(device, N + N * a["n_cblk"] + (N + 1 if pipelined else 0))
    return ws, wsu, counters


_last_variant = None
_PIPE_L2_SHARE = 0.3  # share of L2 the lag's slabs (squeezed, not yet rescaled) may fill


def last_variant():
    """The SE forward variant of the last se_forward call: "split", "pipelined" or "batched"."""
    return _last_variant


@functools.lru_cache(maxsize=None)
def _l2_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).L2_cache_size)
    return 4 << 20  # the interpreter: a small pretend L2, so the default lag stays below N in tests


def _pipe_lag(x, lag):
    if lag > 0:
        return min(lag, x.shape[0])
    slab = (x.numel() // x.shape[0]) * x.element_size()
    return max(1, min(x.shape[0], int(_PIPE_L2_SHARE * _l2_bytes(x.device) / slab)))


def _pipe_programs(grid, device):
    """Persistent programs of a pipelined launch: the tiles of both grids, capped at a few per SM."""
    return max(1, min(2 * grid[0], target_programs(device)))


def _spin_cap(device):
    """0 (wait as long as it takes) on a GPU; the interpreter runs programs one after another, so a
    wait there is a bug: give up after one retry and let the wrong answer fail the tests. (The
    tests that run the interpreter's programs interleaved, with tests/triton_interpreter.py:
    interleaved_programs, patch this to 0: there a wait is real.)"""
    return 0 if device.type == "cuda" else 1


@on_x_device
def se_forward(x, w1, b1, w2, b2, act, gate, pool):
    """Variant "pipelined" (attnkernels/_variant.py) runs _se_pipelined, "batched" the two
    launches over groups of samples; any other the two-launch split forward (the default until a
    GPU run has measured the others)."""
    N, C = x.shape[:2]
    req = request()
    plan = _plan(x, w2.shape[1], req[0], req[1])  # first: it refuses what 32-bit indices cannot reach
    acc = acc_dtype(x.dtype)
    s, z, p = empty((N, C), acc, x.device), empty((N, C), acc, x.device), empty((N, C), acc, x.device)
    u = empty((N, w2.shape[1]), acc, x.device)
    pmax = empty((N, C) if pool == "avgmax" else (0,), acc, x.device)
    return _forward(x, w1, b1, w2, b2, act, gate, pool, s, z, u, p, pmax, req, plan)


@on_x_device
def se_inference(x, w1, b1, w2, b2, act, gate, pool):
    """-> y: the forward when no backward follows (attnkernels.se with nothing to differentiate).
    The per-(n, c) vectors the backward would need go to cached scratch instead of five fresh
    allocations (~1-2 us of host time each)."""
    N, C = x.shape[:2]
    req = request()
    plan = _plan(x, w2.shape[1], req[0], req[1])  # first: it refuses what 32-bit indices cannot reach
    NC = N * C
    # separate buffers, not slices of one: no view ops, and each starts 16-byte aligned, so the
    # launches reuse se_forward's compiled kernels (triton specializes on pointer alignment)
    s, z, p, pmax, u = workspaces(x.device, acc_dtype(x.dtype), NC, NC, NC, NC if pool == "avgmax" else 1,
                                  N * w2.shape[1], across_launches="inference")
    return _forward(x, w1, b1, w2, b2, act, gate, pool, s, z, u, p, pmax, req, plan)[0]


def _forward(x, w1, b1, w2, b2, act, gate, pool, s, z, u, p, pmax, req, plan):
    global _last_variant
    N = x.shape[0]
    Cr = w2.shape[1]
    fc1 = w1 is not None
    if not fc1:
        w1 = w2  # (never read: FC1=False)
    acc = s.dtype
    accd = tl_acc_dtype(x.dtype)
    pool_max = pool == "avgmax"
    variant, bps, lag = req
    pipelined = variant == "pipelined"
    grid, a, rows = plan
    ws, wsu, counters = _workspaces(N, Cr, a, acc, x.device, pipelined=pipelined, shares=fc1)
    y = empty_like(x)
    if pipelined:
        launcher(_se_pipelined)[(_pipe_programs(grid, x.device),)](
            x, y, w1, b1 if b1 is not None else w1, w2, b2 if b2 is not None else w2, ws, wsu, counters,
            u, p, pmax if pool_max else p, s, z, N, **a, lag=_pipe_lag(x, lag), **rows,
            HAS_B1=b1 is not None, HAS_B2=b2 is not None, ACT=act, GATE=gate, POOL_MAX=pool_max,
            ACC=accd, SPIN_CAP=_spin_cap(x.device), FC1=fc1, num_warps=4)
        _last_variant = "pipelined"
        return y, s, z, u, p, pmax
    _last_variant = "batched" if a["GROUP"] > 1 else "split"
    launcher(_se_squeeze)[grid](
        x, w1, b1 if b1 is not None else w1, ws, wsu, counters, u, p, pmax if pool_max else p, N,
        **a, **rows, HAS_B1=b1 is not None, POOL_MAX=pool_max, ACC=accd, FC1=fc1, num_warps=4)
    launcher(_se_excite_rescale)[grid](
        x, y, w2, b2 if b2 is not None else w2, u, s, z, N, **a,
        HAS_B2=b2 is not None, ACT=act, GATE=gate, ACC=accd, num_warps=4)
    return y, s, z, u, p, pmax


@on_x_device
def se_backward(dy, x, w1, w2, s, z, u, p, pmax, act, gate, pool):
    """Variant "pipelined" runs the reduction and dx in one launch (_se_bwd_pipelined), then the
    weight gradients; any other: reduction, weight gradients, dx. No w1 (the single-layer form):
    dw1 and db1 are empty (0,) tensors."""
    N, C = x.shape[:2]
    Cr = w2.shape[1]
    fc1 = w1 is not None
    pool_max = pool == "avgmax"
    accd = tl_acc_dtype(x.dtype)
    variant, bps, lag = request()
    pipelined = variant == "pipelined"
    grid, a, rows = _plan(x, Cr, variant, bps)
    ws, wsu, counters = _workspaces(N, Cr, a, s.dtype, x.device, pipelined)
    # the gradients of z and u and the max-pool tie counts pass from the reduce launch to the
    # weight-gradient and dx launches: scratch of this call, like se_inference's vectors
    dz, du, ties = workspaces(x.device, s.dtype, N * C, N * Cr, N * C if pool_max else 1,
                              across_launches="backward")
    if not pool_max:
        ties = s
    dx = empty_like(x)
    if pipelined:
        launcher(_se_bwd_pipelined)[(_pipe_programs(grid, x.device),)](
            dy, x, dx, w1 if fc1 else w2, w2, s, z, u, pmax if pool_max else s, ws, wsu, counters, dz, du, ties,
            N, **a, lag=_pipe_lag(x, lag), **rows, ACT=act, GATE=gate, POOL_MAX=pool_max, ACC=accd,
            SPIN_CAP=_spin_cap(x.device), FC1=fc1, num_warps=4)
    else:
        launcher(_se_bwd_reduce)[grid](
            dy, x, w2, z, u, pmax if pool_max else s, ws, wsu, counters, dz, du, ties, N, **a, **rows,
            ACT=act, GATE=gate, POOL_MAX=pool_max, ACC=accd, num_warps=4)
    dw1 = empty_like(w1) if fc1 else empty((0,), w2.dtype, x.device)
    db1 = empty((Cr if fc1 else 0,), w2.dtype, x.device)
    dw2, db2 = empty_like(w2), empty((C,), w2.dtype, x.device)
    wgrid, block_a, block_b = _weights_plan(C, Cr, fc1)
    launcher(_se_bwd_weights)[wgrid](dz, du, u, p, dw1 if fc1 else dw2, db1 if fc1 else db2, dw2, db2,
                                     N, C, Cr, ACT=act, ACC=accd, BLOCK_A=block_a, BLOCK_B=block_b,
                                     num_warps=4)  # (single layer: no dW1 tiles, its pointers unused)
    if pipelined:
        return dx, dw1, db1, dw2, db2
    launcher(_se_bwd_dx)[grid](dy, x, dx, w1 if fc1 else w2, du, s, pmax if pool_max else s, ties, N, **a,
                               POOL_MAX=pool_max, ACC=accd, FC1=fc1, num_warps=4)
    return dx, dw1, db1, dw2, db2

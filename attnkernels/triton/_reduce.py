"""Reductions shared by the Triton kernels of every op: a (channel block) x (HW range) tile of a
sample, streaming sum/max over it, the per-split partials parked in a workspace and combined by the
last program to arrive (arrival counters, no spinning, a fixed order: deterministic).

The grid these serve: programs over (sample n, channel block cb, HW split sp); tile_of maps a
program id to its tile. NCHW and channels_last differ only in (stride_c, stride_hw).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._common import nanmax, nanmax_over

# Stages of the software pipeline of the loops streaming x (and dy) into a reduction: tiles in
# flight per program. (Rolled, ptxas issued a tile's second 16-byte load only after the first one's
# sums: one load in flight per thread, and the reductions were latency-bound. The elementwise
# passes already issue a tile's loads together.)
STREAM_STAGES = tl.constexpr(3)


@triton.jit
def tile_of(pid, n_cblk, n_split, hw_per_split, HW, BLOCK_C: tl.constexpr):
    """(n, cb, sp) of a program of the reduction grid, its channels and its HW range."""
    per_sample = n_cblk * n_split
    n = pid // per_sample
    r = pid % per_sample
    cb = r // n_split
    sp = r % n_split
    hw_lo = sp * hw_per_split
    hw_hi = tl.minimum(hw_lo + hw_per_split, HW)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    return n, cb, sp, c, hw_lo, hw_hi


@triton.jit
def tile_ptrs(base, c, hw, cmask, hw_hi, stride_c, stride_hw):
    """Pointers and mask of a (BLOCK_C, BLOCK_HW) tile of one sample (NCHW or channels_last)."""
    return base + c[:, None] * stride_c + hw[None, :] * stride_hw, cmask[:, None] & (hw < hw_hi)[None, :]


@triton.jit
def arrive_last(counter_ptr, count):
    """Count this program in; True for the last of `count` programs, which also resets the
    counter for the next call. The barrier orders every thread's partial stores before the
    (release) atomic; its acquire orders the loads of the other programs' partials after it."""
    tl.debug_barrier()
    prev = tl.atomic_add(counter_ptr, 1, sem="acq_rel")
    last = prev == count - 1
    if last:
        tl.atomic_xchg(counter_ptr, 0)
    return last


@triton.jit
def sum_rows(ptr, n_rows, row_stride, cols, cmask, ACC: tl.constexpr, BLOCK_ROWS: tl.constexpr,
              MAX: tl.constexpr):
    """Sum (or max) over n_rows rows of ptr[row * row_stride + cols], BLOCK_ROWS rows per load
    so the reads are in flight together. .cg: the rows were written by other SMs."""
    if MAX:
        acc = tl.full([BLOCK_ROWS, cols.shape[0]], float("-inf"), dtype=ACC)
    else:
        acc = tl.zeros([BLOCK_ROWS, cols.shape[0]], dtype=ACC)
    rows0 = tl.arange(0, BLOCK_ROWS)
    for r0 in range(0, n_rows, BLOCK_ROWS):
        rows = r0 + rows0
        m = (rows < n_rows)[:, None] & cmask[None, :]
        p = ptr + rows[:, None] * row_stride + cols[None, :]
        if MAX:
            acc = nanmax(acc, tl.load(p, mask=m, other=float("-inf"), cache_modifier=".cg"))
        else:
            acc += tl.load(p, mask=m, other=0.0, cache_modifier=".cg")
    if MAX:
        return nanmax_over(acc, 0)
    return tl.sum(acc, axis=0)


@triton.jit
def park(ws, sp, a, b, HAS_B: tl.constexpr, BLOCK_C: tl.constexpr):
    """Park split sp's per-channel partials (a, and b if HAS_B) in ws[sp, {a, b}, :], ws being
    the (n_split, 2, BLOCK_C) partials of one (n, cb)."""
    j = tl.arange(0, BLOCK_C)
    tl.store(ws + sp * 2 * BLOCK_C + j, a)
    if HAS_B:
        tl.store(ws + sp * 2 * BLOCK_C + BLOCK_C + j, b)


@triton.jit
def split_totals(ws, n_split, B_IS_MAX: tl.constexpr, HAS_B: tl.constexpr, ACC: tl.constexpr,
                  BLOCK_C: tl.constexpr, BLOCK_ROWS: tl.constexpr):
    """The totals over all splits of the partials park left in ws (b by max if B_IS_MAX; without
    HAS_B, b is a again)."""
    j = tl.arange(0, BLOCK_C)
    a = sum_rows(ws, n_split, 2 * BLOCK_C, j, j < BLOCK_C, ACC, BLOCK_ROWS, False)
    b = a
    if HAS_B:
        b = sum_rows(ws + BLOCK_C, n_split, 2 * BLOCK_C, j, j < BLOCK_C, ACC, BLOCK_ROWS, B_IS_MAX)
    return a, b


@triton.jit
def combine_splits(ws_ptr, counter_ptr, ncb, sp, n_split, a, b, B_IS_MAX: tl.constexpr,
                    HAS_B: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr,
                    BLOCK_ROWS: tl.constexpr):
    """Park this split's per-channel partials (a, and b if HAS_B) in ws[ncb, sp, {a, b}, :];
    return (last, a, b): last is True in the last split of (n, cb) to arrive, whose a and b are
    then the totals over all splits (b combined by max if B_IS_MAX, else by sum)."""
    ws = ws_ptr + ncb * n_split * 2 * BLOCK_C
    park(ws, sp, a, b, HAS_B, BLOCK_C)
    last = arrive_last(counter_ptr, n_split)
    if last:
        a, b_total = split_totals(ws, n_split, B_IS_MAX, HAS_B, ACC, BLOCK_C, BLOCK_ROWS)
        if HAS_B:
            b = b_total
    return last, a, b


@triton.jit
def pool_stream(base, c, cmask, hw_lo, hw_hi, stride_c, stride_hw, POOL_MAX: tl.constexpr,
                 ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, w_ptr=None):
    """(sum, max) over [hw_lo, hw_hi) of one sample's channels c (base: the sample's x). w_ptr: the
    sum weighs location hw by w_ptr[hw] (SCA's "sc" order pools the alpha-weighted features)."""
    acc_sum = tl.zeros([BLOCK_C, BLOCK_HW], dtype=ACC)
    acc_max = tl.full([BLOCK_C, BLOCK_HW], float("-inf"), dtype=ACC)
    # STREAM_STAGES: the compiler prefetches the next tiles (cp.async into shared memory) while
    # this one is summed; without it each thread waited for a tile's loads before the next's
    for hw0 in tl.range(hw_lo, hw_hi, BLOCK_HW, num_stages=STREAM_STAGES):
        ptrs, m = tile_ptrs(base, c, hw0 + tl.arange(0, BLOCK_HW), cmask, hw_hi, stride_c, stride_hw)
        v = tl.load(ptrs, mask=m, other=0.0).to(ACC)
        if w_ptr is not None:
            hw = hw0 + tl.arange(0, BLOCK_HW)
            acc_sum += v * tl.load(w_ptr + hw, mask=hw < hw_hi, other=0.0).to(ACC)[None, :]
        else:
            acc_sum += v
        if POOL_MAX:
            acc_max = nanmax(acc_max, tl.where(m, v, float("-inf")))
    return tl.sum(acc_sum, axis=1), nanmax_over(acc_max, 1)


@triton.jit
def pool_tile(pid, x_ptr, ws_ptr, split_counter_ptr, C, HW, n_cblk, n_split, hw_per_split, stride_c, stride_hw,
              POOL_MAX: tl.constexpr, ACC: tl.constexpr, SPLIT: tl.constexpr, BLOCK_C: tl.constexpr,
              BLOCK_HW: tl.constexpr, BLOCK_ROWS: tl.constexpr):
    """The global pool of tile pid of the reduction grid: (last, n, cb, c, cmask, sum, max), the sum
    and (if POOL_MAX) the max of x (N, C, HW) for sample n's channels c, over the tile's HW range,
    and, in the program that is `last`, over the sample's whole HW (tile_totals)."""
    n, cb, sp, c, hw_lo, hw_hi = tile_of(pid, n_cblk, n_split, hw_per_split, HW, BLOCK_C)
    cmask = c < C
    psum, pmax = pool_stream(x_ptr + n.to(tl.int64) * C * HW, c, cmask, hw_lo, hw_hi, stride_c, stride_hw,
                             POOL_MAX, ACC, BLOCK_C, BLOCK_HW)
    last, psum, pmax = tile_totals(ws_ptr, split_counter_ptr, n * n_cblk + cb, sp, n_split, psum, pmax, True,
                                   POOL_MAX, SPLIT, ACC, BLOCK_C, BLOCK_ROWS)
    return last, n, cb, c, cmask, psum, pmax


@triton.jit
def tile_totals(ws_ptr, split_counter_ptr, ncb, sp, n_split, a, b, B_IS_MAX: tl.constexpr, HAS_B: tl.constexpr,
                SPLIT: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_ROWS: tl.constexpr):
    """(last, a, b) of tile ncb = n * n_cblk + cb of the reduction grid after its HW splits: with
    SPLIT, combine_splits on counter split_counter_ptr[ncb] (last: the last split of (n, cb) to
    arrive, holding the totals); without, the tile's own (a, b) and last = True."""
    last = True
    if SPLIT:
        last, a, b = combine_splits(ws_ptr, split_counter_ptr + ncb, ncb, sp, n_split, a, b, B_IS_MAX, HAS_B, ACC,
                                    BLOCK_C, BLOCK_ROWS)
    return last, a, b

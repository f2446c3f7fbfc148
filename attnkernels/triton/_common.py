"""Pieces shared by the Triton kernels: activations, gates and their derivatives, launch sizing.

Activations and gates are selected by a constexpr name, so every kernel specializes at compile
time and one definition serves every op (SE, CBAM, BAM, ...).
"""
from __future__ import annotations

import functools
import os
import threading

import numpy as np
import torch
import triton
import triton.language as tl

from .._alloc import _fill, acc_dtype, poisoning as _poison_active

# The interpreter converts fp32 -> bf16 by truncation (the GPU rounds to nearest even); kernels
# cast their outputs through `cast_to` so both round the same way.
_INTERPRET = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"))

INV_SQRT2 = tl.constexpr(0.7071067811865476)
INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


@triton.jit
def cast_to(v, DST: tl.constexpr):
    """v.to(DST), rounding to nearest even also under the interpreter (fp32 -> bf16)."""
    if _INTERPRET and DST == tl.bfloat16:
        bits = v.to(tl.float32).to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return v.to(DST)


@triton.jit
def dot_acc(a, b, acc, PREC: tl.constexpr):
    """acc + a @ b (tl.dot: tensor cores on a GPU). PREC: "ieee" or "tf32", the input precision of
    fp32 operands (ignored for others). The interpreter's bf16 matmul is wrong (numpy has no
    bf16): there the operands are upcast, which is exact. out_dtype: older Triton (3.6) defaults it
    to fp32 whatever acc is, and rejects an fp64 acc."""
    if _INTERPRET and a.dtype == tl.bfloat16:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PREC, out_dtype=acc.dtype)


@triton.jit
def tanh(v):
    """tanh from one exp, sign(v) (1 - e) / (1 + e) with e = exp(-2|v|) <= 1 (no overflow; +-1
    for large |v|, NaN stays NaN); absolute error a few ulp."""
    e = tl.exp(-2.0 * tl.abs(v))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(v < 0.0, -t, t)


@triton.jit
def tanh_and_slope(v):
    """(tanh(v), 1 - tanh(v)^2), the slope as 4e / (1 + e)^2 from the same e: accurate relative to
    itself as tanh saturates, where 1 - t^2 from a rounded t (autograd's) loses its digits."""
    e = tl.exp(-2.0 * tl.abs(v))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(v < 0.0, -t, t), 4.0 * e / ((1.0 + e) * (1.0 + e))


@triton.jit
def sigmoid(v):
    return 1.0 / (1.0 + tl.exp(-v))


@triton.jit
def _clamp_0_6(t):
    """min(max(t, 0), 6) that keeps a NaN, as torch's relu6 / hardswish / hardsigmoid do (on a GPU
    tl.maximum / tl.minimum return the other operand by default)."""
    return tl.where(t < 0.0, 0.0, tl.where(t > 6.0, 6.0, t))


@triton.jit
def nanmax(a, b):
    """max that propagates NaN, as torch.amax does (tl.maximum's default returns the other operand)."""
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def nanmax_over(v, axis: tl.constexpr):
    """tl.max of v over axis with NaN propagating."""
    return tl.reduce(v, axis, nanmax)


@triton.jit
def activation(u, ACT: tl.constexpr):
    """The excitation MLP's hidden activation: relu / silu / hardswish / gelu (exact erf) /
    identity (the single-layer form's). NaN in, NaN out, as in torch."""
    if ACT == "identity":
        return u
    elif ACT == "relu":
        return tl.where(u < 0.0, 0.0, u)
    elif ACT == "silu":
        return u * sigmoid(u)
    elif ACT == "hardswish":
        return u * _clamp_0_6(u + 3.0) / 6.0
    else:  # gelu
        return 0.5 * u * (1.0 + tl.erf(u * INV_SQRT2))


@triton.jit
def activation_bwd(u, g, ACT: tl.constexpr):
    """g * activation'(u), as PyTorch's backward computes it: relu and hardswish pick (a flat piece
    gives 0 even for an inf or NaN g, a NaN u passes g on) and take PyTorch's side at the kinks
    (relu: 0 at 0; hardswish: 0 at -3, g at 3); the others multiply."""
    if ACT == "identity":
        return g
    elif ACT == "relu":
        return tl.where(u <= 0.0, 0.0, g)
    elif ACT == "silu":
        sg = sigmoid(u)
        return g * (sg * (1.0 + u * (1.0 - sg)))
    elif ACT == "hardswish":
        return tl.where(u <= -3.0, 0.0, tl.where(u < 3.0, g * (u / 3.0 + 0.5), g))
    else:  # gelu
        cdf = 0.5 * (1.0 + tl.erf(u * INV_SQRT2))
        return g * (cdf + u * tl.exp(-0.5 * u * u) * INV_SQRT_2PI)


@triton.jit
def gate(z, GATE: tl.constexpr):
    """The gate turning an excitation into a scale: sigmoid / hardsigmoid."""
    if GATE == "sigmoid":
        return sigmoid(z)
    else:  # hardsigmoid, torch's formula
        return _clamp_0_6(z + 3.0) / 6.0


@triton.jit
def gate_bwd(z, g, GATE: tl.constexpr):
    """g * gate'(z). sigmoid: e / (1 + e)^2 with e = exp(-|z|), from z (autograd's s * (1 - s) loses
    1 - s's precision as s -> 1). hardsigmoid picks like PyTorch: g / 6 strictly inside (-3, 3), 0
    elsewhere and for a NaN z, even for an inf g."""
    if GATE == "sigmoid":
        e = tl.exp(-tl.abs(z))
        return g * (e / ((1.0 + e) * (1.0 + e)))
    else:
        # PyTorch multiplies by the float constant 1.0f / 6.0f, also for float64 (a Python float
        # here would be a float64 1/6 there and miss autograd's float64 result by ~1e-8)
        return tl.where((z > -3.0) & (z < 3.0), g * tl.full([], 1.0 / 6.0, tl.float32), 0.0)


def fp32_pair(v: float) -> tuple[float, float]:
    """v as two float32 values whose sum is v to ~2^-48 relative: a Python float reaches a kernel
    as float32, which would round a float64 BatchNorm's eps (the kernels add the two)."""
    hi = float(np.float32(v))
    return hi, float(np.float32(v - hi))


def tl_acc_dtype(dtype: torch.dtype):
    """attnkernels._alloc.acc_dtype as a Triton dtype."""
    return tl.float64 if acc_dtype(dtype) == torch.float64 else tl.float32


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def target_programs(device: torch.device) -> int:
    """How many programs a reduction grid should aim for: enough to fill the GPU several times
    over; on the CPU (interpreter) a few, so tests still exercise the split paths cheaply."""
    if device.type == "cuda":
        return 4 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return 4


_counters: dict = {}
_scratch: dict = {}
# The current stream's handle, as triton's driver reads it (torch.cuda.current_stream builds a
# Stream object each call: a few us of host time per launch at batch 1).
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream",
                      lambda index: torch.cuda.current_stream(index).cuda_stream)
_stream_capturing = getattr(torch._C, "_cuda_isCurrentStreamCapturing", lambda: False)


def capturing(device: torch.device) -> bool:
    """True while the current stream is capturing a CUDA graph (torch.cuda.graph, or inductor's
    CUDA graph trees recording): the call then uses buffers of its own, not the caches'."""
    return device.type == "cuda" and _stream_capturing()


def _outside_graph_pools(device: torch.device, make):
    """make() for a buffer that a cache keeps, allocated where no CUDA graph pool takes it.
    Inductor's CUDA graph trees (torch.compile mode="reduce-overhead") route every allocation of
    the thread that warms up a graph to their private pool, and reset that pool to a checkpoint
    when the tree branches, freeing whatever it holds: a cached buffer allocated there would be
    freed under the cache. The routing is per thread, so a helper thread allocates, on the
    caller's stream (it runs only when a cache grows: the first call of a stream, a larger shape).
    Never an inference tensor (a first call under torch.inference_mode): later calls outside it
    update the buffer in place (the tests' poisoning), which torch forbids on those."""
    if device.type != "cuda":
        with torch.inference_mode(False):
            return make()
    stream = torch.cuda.current_stream(device)
    box = []

    def run():
        try:
            with torch.cuda.stream(stream), torch.inference_mode(False):
                box.append(make())
        except BaseException as e:  # re-raised in the caller
            box.append(e)
    helper = threading.Thread(target=run, name="attnkernels-alloc")
    helper.start()
    helper.join()
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def _order_key(device: torch.device):
    """What orders the calls that share a cached buffer: on a GPU the current stream (its
    launches run one after another), on the CPU (the interpreter runs a launch to its end) the
    calling thread."""
    return _raw_stream(device.index) if device.type == "cuda" else threading.get_ident()


def arrival_counters(device: torch.device, n: int) -> torch.Tensor:
    """A zeroed int32 buffer of >= n arrival counters, cached per (device, stream). Kernels that
    use it ("the last program of a sample finishes the job") reset their counter to 0 when done,
    so the buffer needs no memset launch per call, and calls on one stream run in order, so
    they never share a counter at the same time. While a CUDA graph is being captured, a fresh
    zeroed buffer of the call's own: a graph-owned temporary, whose memset the graph replays."""
    if capturing(device):
        return torch.zeros(n, dtype=torch.int32, device=device)
    key = (device, _order_key(device))
    buf = _counters.get(key)
    if buf is None or buf.numel() < n:
        buf = _counters[key] = _outside_graph_pools(
            device, lambda: torch.zeros(max(n, 1024), dtype=torch.int32, device=device))
    return buf


def workspaces(device: torch.device, dtype: torch.dtype, *sizes: int, across_launches: str | None = None) -> list:
    """Scratch buffers of >= sizes[i] elements, cached per (device, stream, dtype) like the
    counters: each is written and read within one launch (the split partials and layer shares
    of a reduce kernel, combined by its last program), and launches on one stream run in order,
    so calls can share them, also calls from two threads on one stream; one dict lookup instead
    of an allocation per buffer and call. Under attnkernels._alloc.poisoned() they are poisoned
    on every call, as fresh buffers would be, so a read of an element the call did not write
    still fails the tests. across_launches: the name of a set of buffers that one launch of a
    call writes and a later one reads (the inference forward's per-(n, c) vectors, the
    backward's gradients of them); another thread's call on the same stream could land between
    the two, so those are cached per thread too. While a CUDA graph is being captured: fresh
    buffers (graph-owned temporaries), so no two graphs, nor a graph and eager calls, share one."""
    if capturing(device):
        return [_fill(torch.empty(n, dtype=dtype, device=device)) for n in sizes]
    key = (device, _order_key(device), dtype,
           (across_launches, threading.get_ident()) if across_launches else None)
    bufs = _scratch.get(key)
    if bufs is None or len(bufs) < len(sizes) or any(b.numel() < n for b, n in zip(bufs, sizes)):
        old = bufs or []
        # (a call may ask for fewer buffers than an earlier one of another op: those stay cached)
        bufs = _scratch[key] = [
            old[i] if i < len(old) and (i >= len(sizes) or old[i].numel() >= sizes[i]) else
            _outside_graph_pools(device, lambda n=sizes[i]: torch.empty(max(n, 1024), dtype=dtype, device=device))
            for i in range(max(len(old), len(sizes)))]
    bufs = bufs[:len(sizes)]
    if _poison_active():
        for b in bufs:
            _fill(b)
    return bufs

// Activations and gates of every op's kernels, forward and backward, as PyTorch computes them
// (both builds: nvcc, and the host compiler with csrc/cuemu). Selected by a run-time code (the
// enums): the Triton kernels' twins are attnkernels/triton/_common.py's activation / gate.
#pragma once

#include "device_utils.cuh"

namespace ak {
inline namespace AK_BACKEND_NS {

enum { ACT_RELU = 0, ACT_SILU = 1, ACT_HARDSWISH = 2, ACT_GELU = 3, ACT_IDENTITY = 4 };
enum { GATE_SIGMOID = 0, GATE_HARDSIGMOID = 1 };

template <typename A> AK_INL A act_fwd(int act, A u) {
  switch (act) {
    case ACT_RELU: return u < A(0) ? A(0) : u;
    case ACT_SILU: return u / (A(1) + ak_exp(-u));
    case ACT_HARDSWISH: {
      A t = u + A(3);
      t = t < A(0) ? A(0) : (t > A(6) ? A(6) : t);
      return u * t / A(6);
    }
    case ACT_IDENTITY: return u;
    default: return A(0.5) * u * (A(1) + ak_erf(u * A(0.70710678118654752440)));
  }
}

// g * act'(u), the activation's backward, as PyTorch computes it: where its backward picks instead
// of multiplying (threshold_backward for relu, hardswish_backward) a flat piece gives 0 even for an
// inf or NaN g, and a NaN u passes g on; the kinks take PyTorch's side (relu: 0 at 0; hardswish:
// 0 at -3, g at 3). Finite values: the same bits as g times the derivative.
template <typename A> AK_INL A act_bwd(int act, A u, A g) {
  switch (act) {
    case ACT_RELU: return u <= A(0) ? A(0) : g;
    case ACT_SILU: {
      A sg = A(1) / (A(1) + ak_exp(-u));
      return g * (sg * (A(1) + u * (A(1) - sg)));
    }
    case ACT_HARDSWISH: return u <= A(-3) ? A(0) : (u < A(3) ? g * (u / A(3) + A(0.5)) : g);
    case ACT_IDENTITY: return g;
    default: {
      A cdf = A(0.5) * (A(1) + ak_erf(u * A(0.70710678118654752440)));
      A pdf = ak_exp(A(-0.5) * u * u) * A(0.39894228040143267794);
      return g * (cdf + u * pdf);
    }
  }
}

template <typename A> AK_INL A gate_fwd(int gate, A z) {
  if (gate == GATE_SIGMOID) return A(1) / (A(1) + ak_exp(-z));
  A t = z + A(3);
  t = t < A(0) ? A(0) : (t > A(6) ? A(6) : t);
  return t / A(6);
}

// g * gate'(z). sigmoid'(z) from z, e / (1 + e)^2 with e = exp(-|z|): a few ulps relative
// everywhere. Autograd's s * (1 - s) from the rounded gate loses the relative precision of 1 - s as
// the gate saturates (z = 7: 1 - s ~ 1e-3, so one ulp of s is ~6e-5 of it; that error reached dz,
// then du and dW1). hardsigmoid picks like PyTorch's hardsigmoid_backward: 0 outside (-3, 3) and for
// a NaN z, even for an inf g; inside, g times the float constant 1.0f / 6.0f, also for float64, as
// PyTorch does (CPU and CUDA), so float64 gradients match autograd to the last bits.
template <typename A> AK_INL A gate_bwd(int gate, A z, A g) {
  if (gate == GATE_SIGMOID) {
    const A e = ak_exp(-(z < A(0) ? -z : z)), d = A(1) + e;
    return g * (e / (d * d));
  }
  return (z > A(-3) && z < A(3)) ? g * A(1.0f / 6.0f) : A(0);
}

}  // namespace AK_BACKEND_NS
}  // namespace ak

// Plain C++ interface between the torch binding (csrc/cbam/binding.h) and the CBAM launch code
// (csrc/cbam/launch.h), compiled once per backend into the same extension: ak::cbam::cuda (nvcc,
// cbam_cuda.cu) and ak::cbam::emu (g++ against csrc/cuemu, cbam_emu.cpp). No CUDA, emulation or
// torch header here. The inputs and outputs are the backend contract's (attnkernels/cbam.py);
// attnkernels/cuda/cbam.py maps the option strings to the codes below.
#pragma once
#include <cstddef>

#include "../common/api.h"

namespace ak {
namespace cbam {

// The channel MLP's input (pool) and the spatial pool's channels (spool), as attnkernels/cuda/cbam.py
// codes them. Activation and gate codes: csrc/common/activations.cuh (ACT_*, GATE_*).
enum Pool { POOL_AVG = 0, POOL_MAX = 1, POOL_AVG_MAX = 2, POOL_AVGMAX = 3 };
enum SPool { SPOOL_MAX_MEAN = 0, SPOOL_MEAN_MAX = 1, SPOOL_AVGMAX = 2 };

// MLP passes P (u's rows) and spatial pool channels S (m's, conv_w's) of an option code.
inline int pool_passes(int pool) { return pool == POOL_AVG_MAX ? 2 : 1; }
inline int spool_channels(int spool) { return spool == SPOOL_AVGMAX ? 1 : 2; }

// Zeroed counters a call needs, private to the stream: one per sample (the channel reductions'
// last-block elections) and one grid-wide (the spatial passes' combines). The kernels leave them
// zeroed.
inline long long counters_needed(long long N) { return N + 1; }

struct Problem {
  int dtype;  // x's (api.h Dtype); everything in the accumulation dtype is float (double for float64)
  int N, C, H, W, Cr;
  bool nhwc;
  int act, gate, pool, spool;
  bool spatial;      // conv_w given
  int K;             // conv size (odd)
  bool batch_stats;  // normalize t with its batch statistics (else bn_mean / bn_var)
  double eps;
};

struct FwdIO {
  const void *x, *w1, *b1, *w2, *b2;                 // x's dtype; b1 / b2 may be null
  const void *conv_w, *bn_w, *bn_b, *bn_mean, *bn_var;  // accumulation dtype; bn_w / bn_b may be null,
                                                        // bn_mean / bn_var with !batch_stats only
  void *y;                                            // like x
  void *pools, *u, *z, *m, *t, *bstat;                // accumulation dtype (m, t, bstat: spatial only)
  unsigned* counters;                                 // counters_needed(N), zeroed
};

struct BwdIO {
  const void *dy, *x, *w1, *w2;                       // x's dtype
  const void *conv_w, *bn_w, *bn_b;                   // accumulation dtype (spatial only; bn_* may be null)
  const void *pools, *u, *z, *m, *t, *bstat;          // the forward's outputs
  void *dx, *dw1, *db1, *dw2, *db2;                   // x's dtype
  void *dconv_w, *dbn_w, *dbn_b;                      // accumulation dtype (spatial only)
  unsigned* counters;                                 // counters_needed(N), zeroed
};

// The entry points of one backend (namespace ns). alloc: the call's workspaces.
#define AK_CBAM_DECLARE_BACKEND(ns)                                                            \
  namespace ns {                                                                             \
  void forward(const Problem& pr, const FwdIO& io, void* stream, const Alloc& alloc);        \
  void backward(const Problem& pr, const BwdIO& io, void* stream, const Alloc& alloc);       \
  }
AK_CBAM_DECLARE_BACKEND(cuda)
AK_CBAM_DECLARE_BACKEND(emu)
#undef AK_CBAM_DECLARE_BACKEND

}  // namespace cbam
}  // namespace ak

// Plain C++ interface between the torch binding (csrc/bindings.cpp) and the SE launch code
// (csrc/se/launch.h). The launch code is compiled once per backend into the same extension:
// ak::se::cuda (nvcc, se_cuda.cu) and ak::se::emu (g++ against csrc/cuemu, se_emu.cpp). The
// types here are shared; no CUDA or emulation header here.
#pragma once
#include <cstddef>
#include <string>

#include "../common/api.h"

namespace ak {
namespace se {

enum VariantReq { VAR_AUTO = 0, VAR_SPLIT = 1, VAR_FUSED = 2, VAR_PIPELINED = 3, VAR_BATCHED = 4 };

// Zeroed counters a call needs, private to the stream: N per sample, the ticket of the pipelined
// and batched variants, and the batched variant's 3 per group (at most N groups).
inline long long counters_needed(long long N) { return 4 * N + 1; }

struct Problem {
  int dtype;
  int N, C, HW, Cr;
  bool nhwc;
  int pool, act, gate;  // see the enums in kernels.cuh
};

struct FwdIO {
  const void *x, *w1, *b1, *w2, *b2;  // b1/b2 may be null
  void *y, *s, *z, *u, *p, *pmax;      // pmax only for avgmax
  unsigned* counters;                  // counters_needed(N) zeroed counters, private to the stream
};

struct BwdIO {
  const void *dy, *x, *w1, *w2, *s, *z, *u, *p, *pmax;
  void *dx, *dw1, *db1, *dw2, *db2;
  unsigned* counters;  // counters_needed(N) zeroed counters, private to the stream
};

// The entry points of one backend (namespace ns):
//   forward: runs the forward; returns the variant that ran ("split", "pipelined", "batched" or
//     "fused[-cluster<k>]").
//     bps_hint > 0 overrides the target number of squeeze blocks per sample, lag_hint > 0 the lag
//     (in samples) of the pipelined variant (tests, benchmarks).
//   forward_variant: the variant forward() would pick (no launch).
//   backward: VAR_PIPELINED runs the ticket-ordered reduce+dx kernel (then the weight gradients),
//     any other variant the split kernels.
#define AK_SE_DECLARE_BACKEND(ns)                                                                       \
  namespace ns {                                                                                      \
  std::string forward(const Problem& pr, const FwdIO& io, int variant, int bps_hint, int lag_hint,   \
                      void* stream, const Alloc& alloc);                                              \
  std::string forward_variant(const Problem& pr, int variant);                                        \
  void backward(const Problem& pr, const BwdIO& io, int variant, int bps_hint, int lag_hint,          \
                void* stream, const Alloc& alloc);                                                    \
  }
AK_SE_DECLARE_BACKEND(cuda)
AK_SE_DECLARE_BACKEND(emu)
#undef AK_SE_DECLARE_BACKEND

}  // namespace se
}  // namespace ak

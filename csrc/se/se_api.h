// Plain C++ interface between the torch binding (csrc/bindings.cpp) and the SE launch code
// (csrc/se/launch.h), compiled once per backend: AK_SE_NS is `cuda` (nvcc, attnkernels._C) or
// `emu` (g++ against csrc/cuemu, attnkernels._C_emu). No CUDA or emulation header here.
#pragma once
#include <cstddef>
#include <functional>
#include <string>

#ifndef AK_SE_NS
#error "define AK_SE_NS (cuda or emu)"
#endif

namespace ak {
namespace se {
namespace AK_SE_NS {

enum Dtype { DT_F32 = 0, DT_F16 = 1, DT_BF16 = 2, DT_F64 = 3 };
enum VariantReq { VAR_AUTO = 0, VAR_SPLIT = 1, VAR_FUSED = 2, VAR_PIPELINED = 3 };

struct Problem {
  int dtype;
  int N, C, HW, Cr;
  bool nhwc;
  int pool, act, gate;  // see the enums in kernels.cuh
};

struct FwdIO {
  const void *x, *w1, *b1, *w2, *b2;  // b1/b2 may be null
  void *y, *s, *z, *u, *p, *pmax;      // pmax only for avgmax
  unsigned* counters;                  // >= N + 1 zeroed counters, private to the stream
};

struct BwdIO {
  const void *dy, *x, *w1, *w2, *s, *z, *u, *p, *pmax;
  void *dx, *dw1, *db1, *dw2, *db2;
  unsigned* counters;  // >= N + 1 zeroed counters, private to the stream
};

// Workspace allocator (stream-ordered; freed after the call returns).
using Alloc = std::function<void*(size_t bytes)>;

// Runs the forward; returns the variant that ran ("split", "pipelined" or "fused").
// bps_hint > 0 overrides the target number of squeeze blocks per sample, lag_hint > 0 the lag (in
// samples) of the pipelined variant (tests, benchmarks).
std::string forward(const Problem& pr, const FwdIO& io, int variant, int bps_hint, int lag_hint,
                    void* stream, const Alloc& alloc);
// The variant forward() would pick (no launch).
std::string forward_variant(const Problem& pr, int variant);
// The backward: VAR_PIPELINED runs the ticket-ordered reduce+dx kernel (then the weight
// gradients), any other variant the split kernels.
void backward(const Problem& pr, const BwdIO& io, int variant, int bps_hint, int lag_hint, void* stream,
              const Alloc& alloc);

}  // namespace AK_SE_NS
}  // namespace se
}  // namespace ak

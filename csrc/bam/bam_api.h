// Plain C++ interface between the torch binding (csrc/bam/binding.h) and the BAM launch code
// (csrc/bam/launch.h), compiled once per backend into the same extension: ak::bam::cuda (nvcc,
// bam_cuda.cu) and ak::bam::emu (g++ against csrc/cuemu, bam_emu.cpp). No CUDA or emulation
// header here. The contract (the tensors, their shapes and dtypes) is attnkernels/bam.py's
// backend contract; the binding checks it.
#pragma once
#include <cstddef>

#include "../common/api.h"

namespace ak {
namespace bam {

// How Mc (N, C) and Ms (N, H*W) combine before the sigmoid: Mc * Ms (the official code) or
// Mc + Ms (the paper). attnkernels/cuda/bam.py maps the names to these codes.
enum Combine { COMBINE_PROD = 0, COMBINE_SUM = 1 };

// Zeroed counters a call needs, private to the stream: one per sample (its reduce blocks
// arriving) and one for the batch (the samples' epilogues arriving).
inline long long counters_needed(long long N) { return N + 1; }

struct Problem {
  int dtype;
  int N, C, HW, Cr;
  bool nhwc;
  bool batch_stats;  // BatchNorm1d on the batch's statistics (training), else bn_mean / bn_var
  int combine;       // Combine
  double eps;
  int bps_hint;  // > 0: reduce blocks per sample asked for (tests: the split partials' combine)
};

// Accumulation-dtype vectors (fp32; fp64 for fp64 x) are marked acc; the rest have x's dtype.
struct FwdIO {
  const void *x, *ms;           // x (N, C, H, W); ms (N, HW)
  const void *w0, *b0;          // (Cr, C), (Cr,) or null
  const void *w1, *b1;          // (C, Cr), (C,) or null
  const void *bn_w, *bn_b;      // acc (Cr,) or null (affine=False)
  const void *bn_mean, *bn_var; // acc (Cr,); null when batch_stats
  void* y;                      // like x
  void *p, *u, *mc, *bstat;     // acc (N, C), (N, Cr), (N, C), (3, Cr): mean, invstd, var
  unsigned* counters;           // counters_needed(N) zeroed counters, private to the stream
};

struct BwdIO {
  const void *dy, *x, *ms, *w0, *w1;
  const void *bn_w, *bn_b;              // acc (Cr,) or null
  const void *p, *u, *mc, *bstat;       // acc: the forward's
  void *dx, *dms;                       // like x; (N, HW)
  void *dw0, *db0, *dw1, *db1;          // x's dtype: (Cr, C), (Cr,), (C, Cr), (C,)
  void *dbn_w, *dbn_b;                  // acc (Cr,)
  unsigned* counters;                   // counters_needed(N) zeroed counters, private to the stream
};

#define AK_BAM_DECLARE_BACKEND(ns)                                                        \
  namespace ns {                                                                         \
  void forward(const Problem& pr, const FwdIO& io, void* stream, const Alloc& alloc);   \
  void backward(const Problem& pr, const BwdIO& io, void* stream, const Alloc& alloc);  \
  }
AK_BAM_DECLARE_BACKEND(cuda)
AK_BAM_DECLARE_BACKEND(emu)
#undef AK_BAM_DECLARE_BACKEND

}  // namespace bam
}  // namespace ak

// Plain C++ interface between the torch binding (csrc/sca/binding.h) and the SCA launch code
// (csrc/sca/launch.h), compiled once per backend into the same extension: ak::sca::cuda (nvcc,
// sca_cuda.cu) and ak::sca::emu (g++ against csrc/cuemu, sca_emu.cpp). The backend contract these
// implement is the docstring of attnkernels/triton/sca.py. No CUDA or emulation header here.
#pragma once
#include <cstddef>

#include "../common/api.h"

namespace ak {
namespace sca {

enum Order { ORDER_CS = 0, ORDER_SC = 1, ORDER_C = 2, ORDER_S = 3 };

// Zeroed counters a call needs, private to the stream: the channel and spatial softmaxes' arrivals
// (N each) and the channel pooling's split combine (one per (sample, channel block); the pooling
// takes 8 channels a block or more, kernels.cuh).
inline long long counters_needed(long long N, long long C) { return 2 * N + N * ((C + 7) / 8); }

struct Problem {
  int dtype;               // V's (api.h Dtype); every tensor but the saved acc-dtype ones has it
  int N, C, HW, d;         // d >= 0
  int k_c, k_s;            // units of the channel / spatial branch (0: the order lacks it)
  bool nhwc;               // V (and dX, X, dV) channels_last
  int order;               // Order
  bool scale;              // the weights are applied as C * beta and HW * alpha
  long long dp_budget;     // elements of the backward's dP scratch (samples run in chunks)
  int split_hint;          // > 0: HW splits of the channel pooling (tests), else chosen here
};

// Pointers of an absent branch are null (its outputs have no elements).
struct FwdIO {
  const void *V, *h, *w_c, *b_c, *W_hc, *u_c, *W_s, *b_s, *W_hs, *u_s;
  void* X;                                 // V's dtype and layout
  void *hc, *hs, *v, *beta, *alpha;        // acc dtype: (N, k_c), (N, k_s), (N, C), (N, C), (N, HW)
  unsigned* counters;                      // counters_needed zeroed counters; zero again on return
};

struct BwdIO {
  const void *dX, *V, *h, *w_c, *W_hc, *u_c, *W_s, *W_hs, *u_s;
  const void *hc, *hs, *v, *beta, *alpha;  // the forward's (acc dtype)
  const void *dbeta, *dalpha;              // acc dtype, (N, C) / (N, HW), or null
  void *dV, *dh;                           // V's / h's dtype
  void *dw_c, *db_c, *dW_hc, *du_c, *dc_c, *dW_s, *db_s, *dW_hs, *du_s, *dc_s;  // V's dtype
};

// The entry points of one backend (namespace ns). Workspaces come from alloc.
#define AK_SCA_DECLARE_BACKEND(ns)                                                             \
  namespace ns {                                                                             \
  void forward(const Problem& pr, const FwdIO& io, void* stream, const Alloc& alloc);         \
  void backward(const Problem& pr, const BwdIO& io, void* stream, const Alloc& alloc);        \
  }
AK_SCA_DECLARE_BACKEND(cuda)
AK_SCA_DECLARE_BACKEND(emu)
#undef AK_SCA_DECLARE_BACKEND

}  // namespace sca
}  // namespace ak

// Second translation unit of the self-test: checks that several TUs including cuemu.h link into
// one program (weak context-switch symbols, inline thread_local state) and share the runtime.
#include "common/cuda_compat.h"

__global__ void k_tu2_scale(float* x, float a, int n) {
  __shared__ float sa;
  if (threadIdx.x == 0) sa = a;
  __syncthreads();
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  float v = i < n ? x[i] : 0.f;
  v = __shfl_xor_sync(0xffffffffu, v, 1);  // swap neighbours
  if (i < n) x[i ^ 1] = v * sa;
}

void tu2_scale(float* x, float a, int n) {
  ak::launch(k_tu2_scale, dim3((n + 127) / 128), dim3(128), 0, ak::default_stream(), x, a, n);
}

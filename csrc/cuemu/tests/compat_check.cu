// The same source compiles with nvcc (real GPU) and with g++ -x c++ (cuemu): checks that
// csrc/common/cuda_compat.h works in both builds (AK_DYNAMIC_SHARED, ak::launch, errors).
//   nvcc -std=c++17 -arch=sm_90 -I<repo>/csrc compat_check.cu -o cc && ./cc
//   g++ -x c++ -std=c++17 -O2 -fno-strict-aliasing -fno-extern-tls-init -pthread -I<repo>/csrc
//       -I/usr/local/cuda/include compat_check.cu -o cc && ./cc
#include <cstdio>
#include <stdexcept>
#include <vector>

#include "common/cuda_compat.h"

template <typename T, int kWarps>
__global__ void __launch_bounds__(kWarps * 32) k_row_sum(const T* __restrict__ x, T* __restrict__ y, int cols) {
  AK_DYNAMIC_SHARED(T, partial);  // kWarps entries
  const T* row = x + static_cast<size_t>(blockIdx.x) * cols;
  T v = T(0);
  for (int i = threadIdx.x; i < cols; i += blockDim.x) v += __ldg(row + i);
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    T s = T(0);
    for (int w = 0; w < kWarps; ++w) s += partial[w];
    y[blockIdx.x] = s;
  }
}

int main() {
  const int rows = 300, cols = 1000;
  std::vector<float> hx(static_cast<size_t>(rows) * cols), hy(rows);
  for (size_t i = 0; i < hx.size(); ++i) hx[i] = static_cast<float>(i % 5);
  float *x, *y;
#if AK_EMU
  x = hx.data();
  y = hy.data();
#else
  cudaMalloc(&x, hx.size() * sizeof(float));
  cudaMalloc(&y, rows * sizeof(float));
  cudaMemcpy(x, hx.data(), hx.size() * sizeof(float), cudaMemcpyHostToDevice);
#endif
  auto kernel = k_row_sum<float, 8>;
  ak::launch(kernel, dim3(rows), dim3(256), 8 * sizeof(float), ak::default_stream(),
             static_cast<const float*>(x), y, cols);
  bool raised = false;
  try {
    ak::launch(kernel, dim3(rows), dim3(2048), 0, ak::default_stream(), static_cast<const float*>(x), y, cols);
  } catch (std::runtime_error& e) {
    raised = true;
    std::printf("expected error: %s\n", e.what());
  }
  // > 48 KB of dynamic shared memory fails without the opt-in (CUDA error / cuemu::Error), works with it
  bool raised_smem = false;
  try {
    ak::launch(kernel, dim3(rows), dim3(256), 64 * 1024, ak::default_stream(), static_cast<const float*>(x), y, cols);
  } catch (std::runtime_error& e) {
    raised_smem = true;
    std::printf("expected error: %s\n", e.what());
  }
  raised = raised && raised_smem;
  ak::set_max_dynamic_shared_memory(kernel, 64 * 1024);
  ak::launch(kernel, dim3(rows), dim3(256), 64 * 1024, ak::default_stream(), static_cast<const float*>(x), y, cols);
#if !AK_EMU
  cudaMemcpy(hy.data(), y, rows * sizeof(float), cudaMemcpyDeviceToHost);
  if (cudaDeviceSynchronize() != cudaSuccess) raised = false;
#endif
  int bad = 0;
  for (int r = 0; r < rows; ++r) {
    double ref = 0;
    for (int c = 0; c < cols; ++c) ref += hx[static_cast<size_t>(r) * cols + c];
    bad += hy[r] != static_cast<float>(ref);
  }
  std::printf("%s compat_check (%s) bad_rows=%d raised=%d\n", bad == 0 && raised ? "PASS" : "FAIL",
              AK_EMU ? "cuemu" : "nvcc", bad, raised);
  return bad == 0 && raised ? 0 : 1;
}

// The same source compiles with nvcc (real GPU) and with g++ -x c++ (cuemu): checks that
// csrc/common/cuda_compat.h works in both builds (AK_DYNAMIC_SHARED, ak::launch, errors) and that
// the nvcuda::wmma calls the kernels make compile with both (cuemu/wmma.h, <mma.h>).
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

// D (16 x 16) = 0.5 * A (16 x K, row major) B (K x 16, column major) on the tensor cores, one warp;
// the scaling is element-wise on the accumulator fragment (its element mapping is unspecified).
template <typename T>
__global__ void k_wmma_tile(const T* __restrict__ a, const T* __restrict__ b, float* __restrict__ d, int K) {
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, T, nvcuda::wmma::row_major> fa;
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, T, nvcuda::wmma::col_major> fb;
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> acc;
  nvcuda::wmma::fill_fragment(acc, 0.f);
  for (int k = 0; k < K; k += 16) {
    nvcuda::wmma::load_matrix_sync(fa, a + k, K);
    nvcuda::wmma::load_matrix_sync(fb, b + k, K);
    nvcuda::wmma::mma_sync(acc, fa, fb, acc);
  }
  for (int i = 0; i < acc.num_elements; ++i) acc.x[i] *= 0.5f;
  nvcuda::wmma::store_matrix_sync(d, acc, 16, nvcuda::wmma::mem_row_major);
}

// Runs k_wmma_tile<T> on small integers (exact in any summation order); returns the wrong count.
template <typename T>
static int wmma_check() {
  const int K = 48;
  alignas(32) static T ha[16 * K], hb[16 * K];
  alignas(32) static float hd[256];
  for (int i = 0; i < 16 * K; ++i) {
    ha[i] = T(static_cast<float>(i % 7 - 3));
    hb[i] = T(static_cast<float>(i % 5 - 2));
  }
  T *a = ha, *b = hb;
  float* d = hd;
#if !AK_EMU
  cudaMalloc(&a, sizeof ha);
  cudaMalloc(&b, sizeof hb);
  cudaMalloc(&d, sizeof hd);
  cudaMemcpy(a, ha, sizeof ha, cudaMemcpyHostToDevice);
  cudaMemcpy(b, hb, sizeof hb, cudaMemcpyHostToDevice);
#endif
  auto kernel = k_wmma_tile<T>;
  ak::launch(kernel, dim3(1), dim3(32), 0, ak::default_stream(), static_cast<const T*>(a), static_cast<const T*>(b),
             d, K);
#if !AK_EMU
  cudaMemcpy(hd, d, sizeof hd, cudaMemcpyDeviceToHost);
#endif
  int bad = 0;
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      float ref = 0.f;
      for (int k = 0; k < K; ++k) ref += static_cast<float>(ha[i * K + k]) * static_cast<float>(hb[j * K + k]);
      bad += hd[i * 16 + j] != 0.5f * ref;
    }
  return bad;
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
  int bad = wmma_check<__half>() + wmma_check<__nv_bfloat16>();
  for (int r = 0; r < rows; ++r) {
    double ref = 0;
    for (int c = 0; c < cols; ++c) ref += hx[static_cast<size_t>(r) * cols + c];
    bad += hy[r] != static_cast<float>(ref);
  }
  std::printf("%s compat_check (%s) bad=%d raised=%d\n", bad == 0 && raised ? "PASS" : "FAIL",
              AK_EMU ? "cuemu" : "nvcc", bad, raised);
  return bad == 0 && raised ? 0 : 1;
}

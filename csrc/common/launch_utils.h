// Host-side launch helpers shared by every op's launch code (csrc/<op>/launch.h), in both builds:
// the device's properties, stream and shared-memory plumbing, integer helpers, the dtype switch.
// Include standard headers before this (it pulls in cuda_compat.h; csrc/cuemu/README.md).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "api.h"
#include "cuda_compat.h"

namespace ak {
inline namespace AK_BACKEND_NS {

struct DevInfo {
  int sms;
  int smem_optin;  // bytes of dynamic shared memory one block may opt into
  long long l2;    // L2 cache bytes
  int cc_major;    // compute capability major
  // The arch (__CUDA_ARCH__ / 10) the device's image of the op's kernels was compiled for: sm_90
  // code (clusters, ticket-ordered kernels) is there from 90 only. Less than cc_major * 10 when the
  // device JIT-compiles an older arch's PTX (a build for 8.0+PTX on an H100, say).
  int code_arch;
};

#if defined(__CUDACC__)
inline void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}
// The current device's properties; `probe`: one of the op's kernels (every kernel of a translation
// unit comes from one image, whose arch it reports). Cached per device and probe.
template <typename K> inline DevInfo dev_info_of(K probe) {
  static DevInfo cache[128];
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  if (dev >= 0 && dev < 128 && cache[dev].sms > 0) return cache[dev];
  DevInfo d{0, 0, 0, 0, 0};
  int l2 = 0;
  check_cuda(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
  check_cuda(cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev),
             "cudaDeviceGetAttribute");
  check_cuda(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev), "cudaDeviceGetAttribute");
  check_cuda(cudaDeviceGetAttribute(&d.cc_major, cudaDevAttrComputeCapabilityMajor, dev), "cudaDeviceGetAttribute");
  cudaFuncAttributes fa;
  check_cuda(cudaFuncGetAttributes(&fa, reinterpret_cast<const void*>(probe)), "cudaFuncGetAttributes");
  d.code_arch = fa.ptxVersion;
  d.l2 = l2;
  if (dev >= 0 && dev < 128) cache[dev] = d;
  return d;
}
#else
// Emulation: a small pretend GPU (keeps emulated grids short) with an H100's shared memory and
// clusters, and a 4 MB L2 (so SE's pipelined lag is below N at test sizes).
template <typename K> inline DevInfo dev_info_of(K) { return DevInfo{8, 227 * 1024, 4LL << 20, 9, 90}; }
#endif

template <typename K> inline void smem_attr(K kernel, size_t bytes) {
  if (bytes > 48 * 1024) ak::set_max_dynamic_shared_memory(kernel, bytes);
}

#if AK_EMU
inline ak::Stream to_stream(void*) { return ak::Stream{}; }
#else
inline ak::Stream to_stream(void* s) { return reinterpret_cast<ak::Stream>(s); }
#endif

inline long long cdiv(long long a, long long b) { return (a + b - 1) / b; }
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Calls f.template operator()<T>() with T the element type of dtype code `dtype` (api.h's Dtype):
//   return dispatch_dtype(pr.dtype, "cbam", [&](auto tag) { return forward_t<decltype(tag)>(...); });
// (a tag value of type T is passed: C++17 generic lambdas have no explicit template parameters).
template <typename F> inline auto dispatch_dtype(int dtype, const char* op, F&& f) {
  switch (dtype) {
    case DT_F32: return f(float{});
    case DT_F16: return f(__half{});
    case DT_BF16: return f(__nv_bfloat16{});
    case DT_F64: return f(double{});
  }
  throw std::runtime_error(std::string(op) + ": unsupported dtype code " + std::to_string(dtype));
}

}  // namespace AK_BACKEND_NS
}  // namespace ak

// cuemu.h - run CUDA kernel source on the CPU with CUDA block / warp semantics (header-only).
//
// Compile kernels with a host compiler (no __CUDACC__), e.g.
//   g++ -std=c++17 -O2 -fno-strict-aliasing -fno-extern-tls-init -pthread -I/usr/local/cuda/include ...
// (see CUEMU_CXXFLAGS below and README.md). Each CUDA thread runs as a fiber; a block runs on one
// worker OS thread; blocks are spread over one worker per core. Launch with cuemu::launch(...) or
// the portable ak::launch(...) from csrc/common/cuda_compat.h.
#pragma once

#if defined(__CUDACC__)
#error "cuemu.h is the host-compiler emulation of CUDA; nvcc builds must use the real CUDA headers"
#endif

#define CUEMU 1
#define CUEMU_VERSION 1

// Flags every translation unit compiled against cuemu must use (also in README.md).
#define CUEMU_CXXFLAGS "-std=c++17 -O2 -fno-strict-aliasing -fno-extern-tls-init -pthread"

// 1. Standard headers first: later keyword macros (__noinline__) must not leak into libstdc++.
#include <algorithm>
#include <atomic>
#include <cassert>
#include <chrono>
#include <condition_variable>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// 2. CUDA's own host-compilable headers (types, half/bfloat16 arithmetic and conversions).
//    They go through crt/host_defines.h, which defines the execution-space keywords as empty
//    annotations for host compilers; we redefine the ones that need emulation right after.
#include <vector_types.h>
#include <vector_functions.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

// 3. Runtime (scheduler, fibers, launch).
#include "runtime.h"

// 4. Keywords.
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __launch_bounds__
#undef __noinline__
#define __global__
#define __device__
#define __host__
// Static shared memory: one instance per worker OS thread; a worker runs one block at a time and
// all fibers of that block live on it, so this is exactly "one instance per block". Contents are
// NOT reset between blocks (stale data of the previous block); see AK_SHARED_ARRAY for poisoning.
#define __shared__ static thread_local
#define __launch_bounds__(...)
#define __noinline__ __attribute__((noinline))
#ifndef __forceinline__
#define __forceinline__ inline __attribute__((always_inline))
#endif
#ifndef __align__
#define __align__(n) __attribute__((aligned(n)))
#endif
#ifndef __grid_constant__
#define __grid_constant__
#endif

// 5. Device built-ins and intrinsics; the warp matrix API (nvcuda::wmma).
#include "device.h"
#include "wmma.h"

// 6. Device-side assert: raise a cuemu::Error (reported by launch) instead of abort()ing the
//    process. Note: a later #include <cassert>/<assert.h> restores the libc assert. Disabled by
//    NDEBUG (as with nvcc) unless CUEMU_FORCE_ASSERT is defined (setuptools passes -DNDEBUG).
#if !defined(NDEBUG) || defined(CUEMU_FORCE_ASSERT)
#undef assert
#define assert(e) \
  (static_cast<bool>(e) ? void(0) : ::cuemu::detail::assert_fail(#e, __FILE__, __LINE__, __PRETTY_FUNCTION__))
#endif

namespace cuemu {
// Static shared array that CUEMU_POISON_SHARED=1 fills with 0xFF bytes once per block (first use).
// Use as: CUEMU_SHARED_ARRAY(float, buf, 256);  (ak: AK_SHARED_ARRAY in cuda_compat.h)
#define CUEMU_SHARED_ARRAY(T, name, N)                                                  \
  static thread_local T name[N];                                                        \
  do {                                                                                  \
    if (::cuemu::detail::runner()->launch()->opts.poison_static)                        \
      ::cuemu::detail::runner()->poison_static(static_cast<void*>(name), sizeof(name)); \
  } while (0)

// Alignment-checked vector load/store (a misaligned float4 access faults on the GPU and may
// segfault or silently work on the host): raises a cuemu::Error naming the address.
template <typename V>
inline void check_aligned(const void* p, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % alignof(V) != 0) {
    char b[96];
    std::snprintf(b, sizeof b, "misaligned %zu-byte vector %s at %p (needs %zu-byte alignment)", sizeof(V), what, p,
                  alignof(V));
    detail::BlockRunner* r = detail::tls_runner;
    if (r && r->cur()) r->fail(b);
    throw Error(std::string("cuemu: ") + b);
  }
}
}  // namespace cuemu

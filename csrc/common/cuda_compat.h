// cuda_compat.h - the portable layer kernel headers include in BOTH builds:
//   nvcc (__CUDACC__): the real CUDA runtime / fp16 / bf16 headers, kernel<<<...>>> launches;
//   host compiler   : csrc/cuemu (CUDA emulated on the CPU, backend "cuda-emu").
//
// Provides
//   AK_EMU                              1 in the emulator build, 0 under nvcc
//   AK_BACKEND_NS                       emu / cuda: the namespace each build's copy of the kernel
//                                       code lives in (ak::<it> here, ak::se::<it> for SE), so that
//                                       both builds link into one extension without sharing a
//                                       symbol (same-named inline functions or templates with
//                                       different bodies would be an ODR violation: the linker
//                                       keeps one of them)
//   AK_DYNAMIC_SHARED(T, name)          `T* name` -> the launch's dynamic shared memory
//   AK_SHARED_ARRAY(T, name, N)         `__shared__ T name[N]` (+ poisoned per block with CUEMU_POISON_SHARED=1)
//   ak::Stream                          cudaStream_t (nvcc) / dummy (emu)
//   ak::launch(kernel, grid, block, dyn_smem_bytes, stream, args...)   validated, throws std::runtime_error
//   ak::set_max_dynamic_shared_memory(kernel, bytes)                   opt-in above 48 KB (<= 227 KB)
//   ak::max_active_blocks(kernel, threads, dyn_smem_bytes)             resident blocks per SM (persistent
//                                       grids); emu: 2
//   ak::load_vec<V>(ptr) / ak::store_vec<V>(ptr, v)                    vector access, alignment-checked in emu
//                                       (unless AK_NO_ALIGN_CHECK is defined)
//   ak::load_vec_last<V>(ptr) / ak::store_vec_stream<V>(ptr, v)        16-byte access with the evict-first
//                                       hint (ld/st.global.cs): last use of x, y that is not read again
//   ak::launch_cluster(kernel, grid, block, dyn_smem, stream, cluster_x, args...)  thread-block clusters of
//                                       cluster_x blocks along x (sm_90, 1-D grids)
//   ak::cluster_rank(), ak::cluster_size(), ak::cluster_sync(), ak::cluster_map(ptr, rank)
//                                       the block's rank and its cluster's size, a
//                                       cluster-wide barrier, ptr's address in block `rank`'s shared memory
//                                       (DSMEM); below sm_90: clusters of one block; emu: a cluster's blocks
//                                       run at once on their own OS threads (dynamic smem only is mapped)
//   ak::ld_volatile(ptr), ak::spin_pause(iter)                          inter-block spin-waits: the wait
//                                       loop body; emu: throws if the launch failed or after
//                                       CUEMU_SPIN_TIMEOUT_S (a wait on a block that never runs)
//   nvcuda::wmma                        the warp matrix API (m16n16k16, __half / __nv_bfloat16 in,
//                                       float accumulators): <mma.h> / cuemu/wmma.h
// Never include torch headers from here: nvcc builds need only <cuda_runtime.h>.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>

#if defined(__CUDACC__)

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cooperative_groups.h>
#include <mma.h>  // nvcuda::wmma (tensor cores); cuemu has its own (cuemu/wmma.h)

#define AK_EMU 0
#define AK_BACKEND_NS cuda
#define AK_DYNAMIC_SHARED(T, name)                         \
  extern __shared__ __align__(16) unsigned char ak_dyn_smem_[]; \
  T* name = reinterpret_cast<T*>(ak_dyn_smem_)
#define AK_SHARED_ARRAY(T, name, N) __shared__ T name[N]

namespace ak {
inline namespace AK_BACKEND_NS {
using Stream = cudaStream_t;
inline Stream default_stream() { return nullptr; }

namespace detail {
inline std::string dims(dim3 d) {
  return "(" + std::to_string(d.x) + "," + std::to_string(d.y) + "," + std::to_string(d.z) + ")";
}
inline void validate_launch(dim3 grid, dim3 block, size_t smem) {
  auto bad = [&](const char* m) {
    throw std::runtime_error(std::string("ak::launch: invalid launch configuration (grid ") + dims(grid) +
                             ", block " + dims(block) + ", dynamic smem " + std::to_string(smem) + " B): " + m);
  };
  if (block.x == 0 || block.y == 0 || block.z == 0) bad("block dimensions must be >= 1");
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) bad("grid dimensions must be >= 1");
  if (static_cast<unsigned long long>(block.x) * block.y * block.z > 1024) bad("more than 1024 threads per block");
  if (block.x > 1024 || block.y > 1024 || block.z > 64) bad("block dimension limits are (1024, 1024, 64)");
  if (grid.y > 65535 || grid.z > 65535) bad("grid dimension limits are (2^31-1, 65535, 65535)");
  if (smem > 227u * 1024u) bad("dynamic shared memory exceeds the 227 KB (232448 B) per-block maximum");
}
inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": CUDA error " + cudaGetErrorName(e) + ": " + cudaGetErrorString(e));
}
}  // namespace detail

template <typename... P, typename... A>
inline void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t dyn_smem, Stream stream, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "ak::launch: wrong number of kernel arguments");
  detail::validate_launch(grid, block, dyn_smem);
  kernel<<<grid, block, dyn_smem, stream>>>(std::forward<A>(args)...);
  detail::check(cudaGetLastError(), "ak::launch");
}

template <typename... P>
inline void set_max_dynamic_shared_memory(void (*kernel)(P...), size_t bytes) {
  detail::check(cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)),
                "ak::set_max_dynamic_shared_memory");
}

template <typename... P, typename... A>
inline void launch_cluster(void (*kernel)(P...), dim3 grid, dim3 block, size_t dyn_smem, Stream stream,
                           unsigned cluster_x, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "ak::launch_cluster: wrong number of kernel arguments");
  detail::validate_launch(grid, block, dyn_smem);
  if (cluster_x == 0 || grid.x % cluster_x != 0)
    throw std::runtime_error("ak::launch_cluster: grid.x " + std::to_string(grid.x) + " is not a multiple of the cluster size " +
                             std::to_string(cluster_x));
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = dyn_smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = cluster_x;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  if (cluster_x > 8)  // beyond the portable size (an H100 schedules 16)
    detail::check(cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                       cudaFuncAttributeNonPortableClusterSizeAllowed, 1),
                  "ak::launch_cluster (non-portable cluster size)");
  int clusters = 0;
  detail::check(cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg), "ak::launch_cluster (occupancy)");
  if (clusters < 1)
    throw std::runtime_error("ak::launch_cluster: a cluster of " + std::to_string(cluster_x) + " blocks with " +
                             std::to_string(dyn_smem) + " B of shared memory each cannot be scheduled");
  detail::check(cudaLaunchKernelEx(&cfg, kernel, std::forward<A>(args)...), "ak::launch_cluster");
}

__device__ __forceinline__ unsigned cluster_rank() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  return cooperative_groups::this_cluster().block_rank();
#else
  return 0;
#endif
}
__device__ __forceinline__ unsigned cluster_size() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  return cooperative_groups::this_cluster().num_blocks();
#else
  return 1;
#endif
}
__device__ __forceinline__ void cluster_sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cooperative_groups::this_cluster().sync();
#else
  __syncthreads();
#endif
}
template <typename T>
__device__ __forceinline__ T* cluster_map(T* p, unsigned rank) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  return cooperative_groups::this_cluster().map_shared_rank(p, rank);
#else
  (void)rank;
  return p;
#endif
}

template <typename... P>
inline int max_active_blocks(void (*kernel)(P...), int threads, size_t dyn_smem) {
  int n = 0;
  detail::check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, dyn_smem),
                "ak::max_active_blocks");
  return n;
}

template <typename V>
__device__ __forceinline__ V load_vec(const V* p) { return *p; }
template <typename V>
__device__ __forceinline__ void store_vec(V* p, const V& v) { *p = v; }
template <typename V>
__device__ __forceinline__ V load_vec_last(const V* p) {
  static_assert(sizeof(V) == 16, "16-byte vectors only");
  const int4 r = __ldcs(reinterpret_cast<const int4*>(p));
  V v;
  memcpy(&v, &r, 16);
  return v;
}
template <typename V>
__device__ __forceinline__ void store_vec_stream(V* p, const V& v) {
  static_assert(sizeof(V) == 16, "16-byte vectors only");
  int4 r;
  memcpy(&r, &v, 16);
  __stcs(reinterpret_cast<int4*>(p), r);
}
__device__ __forceinline__ unsigned ld_volatile(const unsigned* p) { return *const_cast<const volatile unsigned*>(p); }
__device__ __forceinline__ void spin_pause(unsigned) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
  __nanosleep(64);
#endif
}
}  // namespace AK_BACKEND_NS
}  // namespace ak

#else  // ------------------------------------------------------------ host compiler: emulator

#include "../cuemu/cuemu.h"

#define AK_EMU 1
#define AK_BACKEND_NS emu
#define AK_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(::cuemu::dynamic_shared_memory())
#define AK_SHARED_ARRAY(T, name, N) CUEMU_SHARED_ARRAY(T, name, N)

namespace ak {
inline namespace AK_BACKEND_NS {
using Stream = ::cuemu::Stream;
inline Stream default_stream() { return Stream{}; }

template <typename... P, typename... A>
inline void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t dyn_smem, Stream, A&&... args) {
  ::cuemu::launch(kernel, grid, block, dyn_smem, std::forward<A>(args)...);
}

template <typename... P>
inline void set_max_dynamic_shared_memory(void (*kernel)(P...), size_t bytes) {
  ::cuemu::set_max_dynamic_shared_memory(kernel, bytes);
}

template <typename... P>
inline int max_active_blocks(void (*)(P...), int, size_t) { return 2; }

// Clusters: the emulator runs a cluster's blocks at once, one OS thread each (csrc/cuemu).
template <typename... P, typename... A>
inline void launch_cluster(void (*kernel)(P...), dim3 grid, dim3 block, size_t dyn_smem, Stream,
                           unsigned cluster_x, A&&... args) {
  ::cuemu::launch_cluster(kernel, grid, block, dyn_smem, cluster_x, std::forward<A>(args)...);
}
inline unsigned cluster_rank() { return ::cuemu::cluster_rank(); }
inline unsigned cluster_size() { return ::cuemu::cluster_size(); }
inline void cluster_sync(const char* f = __builtin_FILE(), unsigned l = __builtin_LINE()) { ::cuemu::cluster_sync(f, l); }
template <typename T>
inline T* cluster_map(T* p, unsigned rank) { return ::cuemu::cluster_map(p, rank); }

template <typename V>
inline V load_vec(const V* p) {
#ifndef AK_NO_ALIGN_CHECK
  ::cuemu::check_aligned<V>(p, "load");
#endif
  return *p;
}
template <typename V>
inline void store_vec(V* p, const V& v) {
#ifndef AK_NO_ALIGN_CHECK
  ::cuemu::check_aligned<V>(p, "store");
#endif
  *p = v;
}
template <typename V>
inline V load_vec_last(const V* p) { return load_vec(p); }
template <typename V>
inline void store_vec_stream(V* p, const V& v) { store_vec(p, v); }
inline unsigned ld_volatile(const unsigned* p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
inline void spin_pause(unsigned iter) { ::cuemu::spin_pause(iter); }
}  // namespace AK_BACKEND_NS
}  // namespace ak

#endif

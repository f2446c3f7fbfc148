// cuemu/device.h - device-side built-ins and intrinsics for host compilation. Included by cuemu.h
// after the keyword macros; everything here is in the global namespace like CUDA's built-ins.
#pragma once

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "runtime.h"

namespace cuemu {
namespace detail {
inline const uint3& thread_idx() { return runner()->cur()->tid; }
inline const uint3& block_idx() { return runner()->block_idx(); }
inline const dim3& block_dim() { return runner()->launch()->block; }
inline const dim3& grid_dim() { return runner()->launch()->grid; }

template <typename T>
inline uint64_t to_bits(const T& v) {
  static_assert(sizeof(T) <= 8, "cuemu: warp collectives take values of at most 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, static_cast<const void*>(&v), sizeof(T));
  return b;
}
template <typename T>
inline T from_bits(uint64_t b) {
  T v;
  std::memcpy(static_cast<void*>(&v), &b, sizeof(T));
  return v;
}
template <typename T>
inline T shfl(WOp op, unsigned mask, T var, int arg, int width, const char* f, unsigned l) {
  return from_bits<T>(runner()->warp_op(op, mask, to_bits(var), sizeof(T), arg, width, f, l));
}

// CAS loop on the bit pattern of a 2/4/8-byte value (used for float/half/bf16 atomics).
template <typename T, typename F>
inline T atomic_rmw(T* addr, F f) {
  using U = std::conditional_t<sizeof(T) == 2, uint16_t, std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>>;
  static_assert(sizeof(T) == sizeof(U), "cuemu: atomic_rmw size");
  U* p = reinterpret_cast<U*>(addr);
  U old = __atomic_load_n(p, __ATOMIC_RELAXED);
  for (;;) {
    T o;
    std::memcpy(static_cast<void*>(&o), &old, sizeof(T));
    T n = f(o);
    U nb;
    std::memcpy(&nb, static_cast<const void*>(&n), sizeof(T));
    if (__atomic_compare_exchange_n(p, &old, nb, true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) return o;
  }
}
[[noreturn]] inline void assert_fail(const char* expr, const char* file, unsigned line, const char* func) {
  BlockRunner* r = tls_runner;
  if (r && r->cur())
    r->fail(std::string("device-side assertion `") + expr + "' failed in " + func + " at " + loc(file, line));
  // host code (outside a kernel): behave like glibc's assert (its __assert_fail is not declared
  // under NDEBUG, so do not depend on it)
  std::fprintf(stderr, "%s:%u: %s: Assertion `%s' failed.\n", file, line, func, expr);
  std::abort();
}
}  // namespace detail
}  // namespace cuemu

// ---------------------------------------------------------------- built-in variables
#define threadIdx (::cuemu::detail::thread_idx())
#define blockIdx (::cuemu::detail::block_idx())
#define blockDim (::cuemu::detail::block_dim())
#define gridDim (::cuemu::detail::grid_dim())
constexpr int warpSize = 32;

// ---------------------------------------------------------------- block barriers
inline void __syncthreads(const char* f = __builtin_FILE(), unsigned l = __builtin_LINE()) {
  ::cuemu::detail::runner()->barrier(::cuemu::detail::BarKind::Sync, 0, f, l);
}
inline int __syncthreads_count(int pred, const char* f = __builtin_FILE(), unsigned l = __builtin_LINE()) {
  return ::cuemu::detail::runner()->barrier(::cuemu::detail::BarKind::Count, pred, f, l);
}
inline int __syncthreads_and(int pred, const char* f = __builtin_FILE(), unsigned l = __builtin_LINE()) {
  return ::cuemu::detail::runner()->barrier(::cuemu::detail::BarKind::And, pred, f, l);
}
inline int __syncthreads_or(int pred, const char* f = __builtin_FILE(), unsigned l = __builtin_LINE()) {
  return ::cuemu::detail::runner()->barrier(::cuemu::detail::BarKind::Or, pred, f, l);
}

// ---------------------------------------------------------------- warp collectives
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* f = __builtin_FILE(), unsigned l = __builtin_LINE()) {
  ::cuemu::detail::runner()->warp_op(::cuemu::detail::WOp::SyncWarp, mask, 0, 0, 0, 32, f, l);
}
// Lanes of the calling warp that have not exited (the emulator has no divergence information).
inline unsigned __activemask() { return ::cuemu::detail::runner()->active_mask(); }

template <typename T>
inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = 32, const char* f = __builtin_FILE(),
                     unsigned l = __builtin_LINE()) {
  return ::cuemu::detail::shfl(::cuemu::detail::WOp::ShflIdx, mask, var, srcLane, width, f, l);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32, const char* f = __builtin_FILE(),
                        unsigned l = __builtin_LINE()) {
  return ::cuemu::detail::shfl(::cuemu::detail::WOp::ShflUp, mask, var, static_cast<int>(delta), width, f, l);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32, const char* f = __builtin_FILE(),
                          unsigned l = __builtin_LINE()) {
  return ::cuemu::detail::shfl(::cuemu::detail::WOp::ShflDown, mask, var, static_cast<int>(delta), width, f, l);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = 32, const char* f = __builtin_FILE(),
                         unsigned l = __builtin_LINE()) {
  return ::cuemu::detail::shfl(::cuemu::detail::WOp::ShflXor, mask, var, laneMask, width, f, l);
}
inline unsigned __ballot_sync(unsigned mask, int pred, const char* f = __builtin_FILE(), unsigned l = __builtin_LINE()) {
  return static_cast<unsigned>(
      ::cuemu::detail::runner()->warp_op(::cuemu::detail::WOp::Ballot, mask, pred != 0, 4, 0, 32, f, l));
}
inline int __any_sync(unsigned mask, int pred, const char* f = __builtin_FILE(), unsigned l = __builtin_LINE()) {
  return static_cast<int>(::cuemu::detail::runner()->warp_op(::cuemu::detail::WOp::Any, mask, pred != 0, 4, 0, 32, f, l));
}
inline int __all_sync(unsigned mask, int pred, const char* f = __builtin_FILE(), unsigned l = __builtin_LINE()) {
  return static_cast<int>(::cuemu::detail::runner()->warp_op(::cuemu::detail::WOp::All, mask, pred != 0, 4, 0, 32, f, l));
}
template <typename T>
inline unsigned __match_any_sync(unsigned mask, T value, const char* f = __builtin_FILE(), unsigned l = __builtin_LINE()) {
  return static_cast<unsigned>(::cuemu::detail::runner()->warp_op(
      ::cuemu::detail::WOp::MatchAny, mask, ::cuemu::detail::to_bits(value), sizeof(T), 0, 32, f, l));
}
template <typename T>
inline unsigned __match_all_sync(unsigned mask, T value, int* pred, const char* f = __builtin_FILE(),
                                 unsigned l = __builtin_LINE()) {
  return static_cast<unsigned>(::cuemu::detail::runner()->warp_op(
      ::cuemu::detail::WOp::MatchAll, mask, ::cuemu::detail::to_bits(value), sizeof(T), 0, 32, f, l, pred));
}
#define CUEMU_REDUCE_(name, T, OP)                                                                      \
  inline T name(unsigned mask, T value, const char* f = __builtin_FILE(), unsigned l = __builtin_LINE()) { \
    return static_cast<T>(::cuemu::detail::runner()->warp_op(::cuemu::detail::WOp::OP, mask,             \
                                                             static_cast<uint32_t>(value), 4, 0, 32, f, l)); \
  }
CUEMU_REDUCE_(__reduce_add_sync, unsigned, RedAddU)
CUEMU_REDUCE_(__reduce_add_sync, int, RedAddU)
CUEMU_REDUCE_(__reduce_min_sync, unsigned, RedMinU)
CUEMU_REDUCE_(__reduce_min_sync, int, RedMinI)
CUEMU_REDUCE_(__reduce_max_sync, unsigned, RedMaxU)
CUEMU_REDUCE_(__reduce_max_sync, int, RedMaxI)
CUEMU_REDUCE_(__reduce_and_sync, unsigned, RedAnd)
CUEMU_REDUCE_(__reduce_or_sync, unsigned, RedOr)
CUEMU_REDUCE_(__reduce_xor_sync, unsigned, RedXor)
#undef CUEMU_REDUCE_

// ---------------------------------------------------------------- thread-block clusters
// (launched with cuemu::launch_cluster; outside a cluster launch: a cluster of one block)
namespace cuemu {
inline unsigned cluster_rank() { return detail::tls_cluster ? detail::tls_cluster_rank : 0u; }
inline unsigned cluster_size() { return detail::tls_cluster ? detail::tls_cluster->size : 1u; }
// cluster.sync(): the block's barrier, thread (0,0,0) waits for the cluster's other blocks, the
// block's barrier again (so every thread of every block has arrived before any goes on).
inline void cluster_sync(const char* f = __builtin_FILE(), unsigned l = __builtin_LINE()) {
  __syncthreads(f, l);
  const uint3& t = threadIdx;
  if (detail::tls_cluster && t.x == 0 && t.y == 0 && t.z == 0) detail::tls_cluster->barrier();
  __syncthreads(f, l);
}
// The address of p (in this block's dynamic shared memory) in block `rank`'s (DSMEM).
template <typename T>
inline T* cluster_map(T* p, unsigned rank) {
  detail::ClusterCtx* C = detail::tls_cluster;
  if (!C) {
    if (rank != 0) throw Error("cuemu: cluster_map: rank " + std::to_string(rank) + " outside a cluster launch");
    return p;
  }
  if (rank >= C->size)
    throw Error("cuemu: cluster_map: rank " + std::to_string(rank) + " >= cluster size " + std::to_string(C->size));
  unsigned char* b = reinterpret_cast<unsigned char*>(const_cast<std::remove_const_t<T>*>(p));
  unsigned char* mine = C->smem[detail::tls_cluster_rank];
  if (b < mine || b >= mine + C->L->dyn_smem)
    throw Error("cuemu: cluster_map: not an address in the block's dynamic shared memory (only that is mapped)");
  return reinterpret_cast<T*>(C->smem[rank] + (b - mine));
}
}  // namespace cuemu

// Lets the other threads of the block run (so intra-block spin-waits with __nanosleep progress).
inline void __nanosleep(unsigned) { ::cuemu::detail::runner()->yield_runnable(); }

inline long long clock64() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch()).count();
}

// ---------------------------------------------------------------- memory fences and loads
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
template <typename T> inline T __ldg(const T* p) { return *p; }
template <typename T> inline T __ldcg(const T* p) { return *p; }
template <typename T> inline T __ldca(const T* p) { return *p; }
template <typename T> inline T __ldcs(const T* p) { return *p; }
template <typename T> inline T __ldlu(const T* p) { return *p; }
template <typename T> inline T __ldcv(const T* p) { return *p; }
template <typename T> inline void __stcg(T* p, T v) { *p = v; }
template <typename T> inline void __stcs(T* p, T v) { *p = v; }
template <typename T> inline void __stwb(T* p, T v) { *p = v; }
template <typename T> inline void __stwt(T* p, T v) { *p = v; }

// ---------------------------------------------------------------- atomics (real atomics: blocks run concurrently)
#define CUEMU_ATOMIC_INT_(T)                                                                              \
  inline T atomicAdd(T* a, T v) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); }                   \
  inline T atomicExch(T* a, T v) { return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST); }                 \
  inline T atomicCAS(T* a, T cmp, T v) {                                                                  \
    __atomic_compare_exchange_n(a, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                   \
    return cmp;                                                                                           \
  }                                                                                                       \
  inline T atomicMax(T* a, T v) { return ::cuemu::detail::atomic_rmw(a, [v](T o) { return o < v ? v : o; }); } \
  inline T atomicMin(T* a, T v) { return ::cuemu::detail::atomic_rmw(a, [v](T o) { return v < o ? v : o; }); } \
  inline T atomicAnd(T* a, T v) { return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST); }                   \
  inline T atomicOr(T* a, T v) { return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST); }                     \
  inline T atomicXor(T* a, T v) { return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST); }
CUEMU_ATOMIC_INT_(int)
CUEMU_ATOMIC_INT_(unsigned int)
CUEMU_ATOMIC_INT_(unsigned long long int)
#undef CUEMU_ATOMIC_INT_
inline long long atomicMax(long long* a, long long v) {
  return ::cuemu::detail::atomic_rmw(a, [v](long long o) { return o < v ? v : o; });
}
inline long long atomicMin(long long* a, long long v) {
  return ::cuemu::detail::atomic_rmw(a, [v](long long o) { return v < o ? v : o; });
}
inline int atomicSub(int* a, int v) { return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicSub(unsigned* a, unsigned v) { return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST); }
inline unsigned short atomicCAS(unsigned short* a, unsigned short cmp, unsigned short v) {
  __atomic_compare_exchange_n(a, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return cmp;
}
inline unsigned atomicInc(unsigned* a, unsigned v) {
  return ::cuemu::detail::atomic_rmw(a, [v](unsigned o) { return o >= v ? 0u : o + 1; });
}
inline unsigned atomicDec(unsigned* a, unsigned v) {
  return ::cuemu::detail::atomic_rmw(a, [v](unsigned o) { return (o == 0 || o > v) ? v : o - 1; });
}
inline float atomicExch(float* a, float v) {
  return ::cuemu::detail::atomic_rmw(a, [v](float) { return v; });
}
inline float atomicAdd(float* a, float v) {
  return ::cuemu::detail::atomic_rmw(a, [v](float o) { return o + v; });
}
inline double atomicAdd(double* a, double v) {
  return ::cuemu::detail::atomic_rmw(a, [v](double o) { return o + v; });
}
inline __half atomicAdd(__half* a, __half v) {
  return ::cuemu::detail::atomic_rmw(a, [v](__half o) { return __float2half(__half2float(o) + __half2float(v)); });
}
inline __nv_bfloat16 atomicAdd(__nv_bfloat16* a, __nv_bfloat16 v) {
  return ::cuemu::detail::atomic_rmw(
      a, [v](__nv_bfloat16 o) { return __float2bfloat16(__bfloat162float(o) + __bfloat162float(v)); });
}
inline __half2 atomicAdd(__half2* a, __half2 v) {
  return ::cuemu::detail::atomic_rmw(a, [v](__half2 o) {
    return __floats2half2_rn(__low2float(o) + __low2float(v), __high2float(o) + __high2float(v));
  });
}
inline __nv_bfloat162 atomicAdd(__nv_bfloat162* a, __nv_bfloat162 v) {
  return ::cuemu::detail::atomic_rmw(a, [v](__nv_bfloat162 o) {
    return __floats2bfloat162_rn(__low2float(o) + __low2float(v), __high2float(o) + __high2float(v));
  });
}
// sm_90 vector atomics (each component atomically, like the hardware)
inline float2 atomicAdd(float2* a, float2 v) {
  float2 r;
  r.x = atomicAdd(&a->x, v.x);
  r.y = atomicAdd(&a->y, v.y);
  return r;
}
inline float4 atomicAdd(float4* a, float4 v) {
  float4 r;
  r.x = atomicAdd(&a->x, v.x);
  r.y = atomicAdd(&a->y, v.y);
  r.z = atomicAdd(&a->z, v.z);
  r.w = atomicAdd(&a->w, v.w);
  return r;
}
#define CUEMU_ATOMIC_SCOPED_(op)                                                              \
  template <typename T, typename... A> inline auto op##_block(T* a, A... v) { return op(a, v...); } \
  template <typename T, typename... A> inline auto op##_system(T* a, A... v) { return op(a, v...); }
CUEMU_ATOMIC_SCOPED_(atomicAdd)
CUEMU_ATOMIC_SCOPED_(atomicSub)
CUEMU_ATOMIC_SCOPED_(atomicExch)
CUEMU_ATOMIC_SCOPED_(atomicCAS)
CUEMU_ATOMIC_SCOPED_(atomicMax)
CUEMU_ATOMIC_SCOPED_(atomicMin)
CUEMU_ATOMIC_SCOPED_(atomicAnd)
CUEMU_ATOMIC_SCOPED_(atomicOr)
CUEMU_ATOMIC_SCOPED_(atomicXor)
CUEMU_ATOMIC_SCOPED_(atomicInc)
CUEMU_ATOMIC_SCOPED_(atomicDec)
#undef CUEMU_ATOMIC_SCOPED_

// ---------------------------------------------------------------- min / max as in device code
#define CUEMU_MINMAX_(R, A, B)                                   \
  inline R min(A a, B b) { return static_cast<R>(a) < static_cast<R>(b) ? static_cast<R>(a) : static_cast<R>(b); } \
  inline R max(A a, B b) { return static_cast<R>(a) > static_cast<R>(b) ? static_cast<R>(a) : static_cast<R>(b); }
CUEMU_MINMAX_(int, int, int)
CUEMU_MINMAX_(unsigned int, unsigned int, unsigned int)
CUEMU_MINMAX_(unsigned int, int, unsigned int)
CUEMU_MINMAX_(unsigned int, unsigned int, int)
CUEMU_MINMAX_(long, long, long)
CUEMU_MINMAX_(unsigned long, unsigned long, unsigned long)
CUEMU_MINMAX_(unsigned long, long, unsigned long)
CUEMU_MINMAX_(unsigned long, unsigned long, long)
CUEMU_MINMAX_(long long, long long, long long)
CUEMU_MINMAX_(unsigned long long, unsigned long long, unsigned long long)
CUEMU_MINMAX_(unsigned long long, long long, unsigned long long)
CUEMU_MINMAX_(unsigned long long, unsigned long long, long long)
#undef CUEMU_MINMAX_
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
inline double min(float a, double b) { return std::fmin(static_cast<double>(a), b); }
inline double max(float a, double b) { return std::fmax(static_cast<double>(a), b); }
inline double min(double a, float b) { return std::fmin(a, static_cast<double>(b)); }
inline double max(double a, float b) { return std::fmax(a, static_cast<double>(b)); }

// ---------------------------------------------------------------- math intrinsics (exact on the host)
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float rcbrtf(float x) { return 1.0f / std::cbrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __exp10f(float x) { return std::pow(10.0f, x); }
inline float __logf(float x) { return std::log(x); }
inline float __log2f(float x) { return std::log2(x); }
inline float __log10f(float x) { return std::log10(x); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanf(float x) { return std::tan(x); }
inline void __sincosf(float x, float* s, float* c) { *s = std::sin(x); *c = std::cos(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline double __drcp_rn(double x) { return 1.0 / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __frsqrt_rn(float x) { return 1.0f / std::sqrt(x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline float __saturatef(float x) { return x >= 1.0f ? 1.0f : (x > 0.0f ? x : 0.0f); }  // NaN -> 0
inline float normcdff(float x) { return 0.5f * std::erfc(-x * 0.70710678118654752f); }
inline double normcdf(double x) { return 0.5 * std::erfc(-x * 0.70710678118654752440); }
inline int __float_as_int(float x) { int r; std::memcpy(&r, &x, 4); return r; }
inline unsigned __float_as_uint(float x) { unsigned r; std::memcpy(&r, &x, 4); return r; }
inline float __int_as_float(int x) { float r; std::memcpy(&r, &x, 4); return r; }
inline float __uint_as_float(unsigned x) { float r; std::memcpy(&r, &x, 4); return r; }
inline long long __double_as_longlong(double x) { long long r; std::memcpy(&r, &x, 8); return r; }
inline double __longlong_as_double(long long x) { double r; std::memcpy(&r, &x, 8); return r; }
inline int __float2int_rn(float x) { return static_cast<int>(std::nearbyint(x)); }
inline int __float2int_rz(float x) { return static_cast<int>(x); }
inline int __float2int_rd(float x) { return static_cast<int>(std::floor(x)); }
inline int __float2int_ru(float x) { return static_cast<int>(std::ceil(x)); }
inline unsigned __float2uint_rn(float x) { return static_cast<unsigned>(std::nearbyint(x)); }
inline long long __float2ll_rn(float x) { return static_cast<long long>(std::nearbyint(x)); }
inline float __int2float_rn(int x) { return static_cast<float>(x); }
inline float __uint2float_rn(unsigned x) { return static_cast<float>(x); }
inline float __ll2float_rn(long long x) { return static_cast<float>(x); }
inline float __double2float_rn(double x) { return static_cast<float>(x); }
inline int __double2int_rn(double x) { return static_cast<int>(std::nearbyint(x)); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0F0F0F0Fu) | ((x & 0x0F0F0F0Fu) << 4);
  x = ((x >> 8) & 0x00FF00FFu) | ((x & 0x00FF00FFu) << 8);
  return (x >> 16) | (x << 16);
}
inline int __mul24(int a, int b) { return ((a << 8) >> 8) * ((b << 8) >> 8); }
inline unsigned __umul24(unsigned a, unsigned b) { return (a & 0xFFFFFFu) * (b & 0xFFFFFFu); }
inline int __mulhi(int a, int b) { return static_cast<int>((static_cast<long long>(a) * b) >> 32); }
inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<unsigned long long>(a) * b) >> 32);
}
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
  return static_cast<unsigned long long>((static_cast<unsigned __int128>(a) * b) >> 64);
}
inline long long __mul64hi(long long a, long long b) {
  return static_cast<long long>((static_cast<__int128>(a) * b) >> 64);
}

// ---------------------------------------------------------------- fp16 / bf16 helpers missing on the host
inline __half __hfma(__half a, __half b, __half c) {
  return __float2half(std::fma(__half2float(a), __half2float(b), __half2float(c)));
}
inline __nv_bfloat16 __hfma(__nv_bfloat16 a, __nv_bfloat16 b, __nv_bfloat16 c) {
  return __float2bfloat16(std::fma(__bfloat162float(a), __bfloat162float(b), __bfloat162float(c)));
}
#define CUEMU_HMATH_(name, fn)                                                                          \
  inline __half name(__half x) { return __float2half(fn(__half2float(x))); }                            \
  inline __nv_bfloat16 name(__nv_bfloat16 x) { return __float2bfloat16(fn(__bfloat162float(x))); }
CUEMU_HMATH_(hexp, std::exp)
CUEMU_HMATH_(hlog, std::log)
CUEMU_HMATH_(hsqrt, std::sqrt)
CUEMU_HMATH_(hrsqrt, 1.0f / std::sqrt)
CUEMU_HMATH_(hrcp, 1.0f /)
CUEMU_HMATH_(htanh, std::tanh)
#undef CUEMU_HMATH_
inline int __half2int_rn(__half h) { return static_cast<int>(std::nearbyint(__half2float(h))); }

// Device helpers shared by every op's kernels, in both builds (nvcc, and the host compiler with
// csrc/cuemu): inlining macros, the accumulation type and conversions, math wrappers, warp-group
// and block reductions in a fixed order, L2-coherent and 16-byte vector loads.
#pragma once

#include <math.h>
#include <stdint.h>

#include "cuda_compat.h"

#if defined(__CUDACC__)
#define AK_INL __device__ __forceinline__
#define AK_HD_INL __host__ __device__ __forceinline__
#define AK_PRAGMA_UNROLL(n) _Pragma("unroll")
#define AK_UNROLL4 _Pragma("unroll 4")
#define AK_UNROLL2 _Pragma("unroll 2")
#define AK_NOINL __device__ __noinline__
#else
#define AK_INL __device__ inline
#define AK_HD_INL __host__ __device__ inline
#define AK_PRAGMA_UNROLL(n)
#define AK_UNROLL4
#define AK_UNROLL2
#define AK_NOINL __device__ inline
#endif

namespace ak {
inline namespace AK_BACKEND_NS {  // one copy per build (cuda_compat.h)

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

// ------------------------------------------------------------------ conversions / math
AK_INL float to_acc(float v) { return v; }
AK_INL double to_acc(double v) { return v; }
AK_INL float to_acc(__half v) { return __half2float(v); }
AK_INL float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> struct Cvt;
template <> struct Cvt<float> { static AK_INL float from(float v) { return v; } };
template <> struct Cvt<double> { static AK_INL double from(double v) { return v; } };
template <> struct Cvt<__half> { static AK_INL __half from(float v) { return __float2half_rn(v); } };
template <> struct Cvt<__nv_bfloat16> {
  static AK_INL __nv_bfloat16 from(float v) { return __float2bfloat16_rn(v); }
};

AK_INL float ak_exp(float v) { return expf(v); }
AK_INL double ak_exp(double v) { return exp(v); }
AK_INL float ak_erf(float v) { return erff(v); }
AK_INL double ak_erf(double v) { return erf(v); }
AK_INL float ak_sqrt(float v) { return sqrtf(v); }
AK_INL double ak_sqrt(double v) { return sqrt(v); }
AK_INL float neg_inf(float) { return -HUGE_VALF; }
AK_INL double neg_inf(double) { return -HUGE_VAL; }

// max that propagates NaN like torch.amax
template <typename A> AK_INL A nanmax(A m, A v) { return (m != m || v <= m) ? m : v; }

// sum / max over aligned groups of G lanes (G a power of two <= 32); every lane of the warp calls it
template <typename A> AK_INL A group_sum(A v, int G) {
  for (int off = G >> 1; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}
template <typename A> AK_INL A group_max(A v, int G) {
  for (int off = G >> 1; off > 0; off >>= 1) v = nanmax(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

// loads of partials written by other blocks of the same grid: bypass L1
template <typename A> AK_INL A ld_cg(const A* p) {
#if defined(__CUDA_ARCH__)
  return __ldcg(p);
#else
  return *const_cast<const volatile A*>(p);
#endif
}

template <typename T> struct alignas(16) Vec {
  static constexpr int N = 16 / sizeof(T);
  T v[N];
};

// VV consecutive elements aligned as one access of their size (VV a power of two, 16 bytes at most:
// Elems<T, Vec<T>::N> is a 16-byte vector).
template <typename T, int VV> struct alignas(sizeof(T) * VV) Elems {
  T v[VV];
};

// w[0..VV) = p[0..VV): one access of VV elements when VV > 1 (p aligned to their size), else one
// element.
template <typename T, int VV> AK_INL void load_elems(const T* p, T* w) {
  if (VV > 1) {
    const Elems<T, VV> t = ak::load_vec(reinterpret_cast<const Elems<T, VV>*>(p));
    AK_PRAGMA_UNROLL(VV)
    for (int j = 0; j < VV; ++j) w[j] = t.v[j];
  } else {
    w[0] = p[0];
  }
}

// dst[i] = f(src[i]) for the 16-byte vectors i in [u0, u1), `step` apart (a thread's share of an
// elementwise pass): f(Vec<T>& v, int i) transforms vector i in place. U vectors a thread at a
// time, all loaded before the first is transformed and stored: as far as the compiler knows dst
// may alias src, so a load cannot pass the store before it, and one vector at a time left one
// 16-byte load in flight per thread (SASS: LDG, STG, LDG). LAST: the last use of src and a dst not
// read again soon (the evict-first hint).
template <typename T, int U, bool LAST = false, typename F>
AK_INL void map_vectors(const T* src, T* dst, int u0, int u1, int step, F&& f) {
  const Vec<T>* s4 = reinterpret_cast<const Vec<T>*>(src);
  Vec<T>* d4 = reinterpret_cast<Vec<T>*>(dst);
  for (int i0 = u0; i0 < u1; i0 += U * step) {
    Vec<T> ts[U];
    AK_PRAGMA_UNROLL(U)
    for (int j = 0; j < U; ++j) {
      const int i = i0 + j * step;
      if (i < u1) ts[j] = LAST ? ak::load_vec_last(s4 + i) : ak::load_vec(s4 + i);
    }
    AK_PRAGMA_UNROLL(U)
    for (int j = 0; j < U; ++j) {
      const int i = i0 + j * step;
      if (i >= u1) continue;
      f(ts[j], i);
      if (LAST)
        ak::store_vec_stream(d4 + i, ts[j]);
      else
        ak::store_vec(d4 + i, ts[j]);
    }
  }
}

AK_HD_INL int pow2_at_least(int v) {
  int g = 1;
  while (g < v) g <<= 1;
  return g;
}

// Adds up the P partials of each of `width` outputs, held by threads q * width + o (q < P), so that
// thread q = 0 ends with the total of output o: a pairwise tree through shared memory, slot
// q * width + o. Fixed order (deterministic), and a rounding error that grows like log2 P, as the
// blocked sums of BLAS and torch do, where adding the partials one after another grew like P
// (fp32 dW1 at Cr <= 2 missed the tests' 2x-the-reference bar); log2 P barriers instead of a P-long
// chain of shared loads in one thread. store(slot): this thread's values into the slot;
// merge(slot): the slot's values into this thread's (+, or max for a max-pool). Every thread of
// the block calls it (P uniform); ends without a barrier: the caller syncs before reusing red.
template <typename Store, typename Merge>
AK_INL void tree_combine(int q, int o, int P, int width, Store store, Merge merge) {
  if (P <= 1) return;
  if (q < P) store(q * width + o);
  __syncthreads();
  for (int h = pow2_at_least(P) >> 1; h >= 1; h >>= 1) {
    // reads slots [h, 2h), writes slots [0, h): no overlap within a step
    if (q < h && q + h < P) {
      merge((q + h) * width + o);
      if (h > 1) store(q * width + o);
    }
    if (h > 1) __syncthreads();
  }
}

// sum of term(n) over n < N in a fixed order with the rounding of a blocked sum: trees of 8 terms
// (8 loads in flight), added into a block of 64, blocks added in order: 8 + 3 + N / 64 roundings
// deep instead of N (the weight gradients' sums over the batch, the epilogues' over a sample's
// S slice partials).
template <typename A, typename F> AK_INL A blocked_sum(int N, F term) {
  A tot = A(0);
  for (int n0 = 0; n0 < N; n0 += 64) {
    const int n1 = min(N, n0 + 64);
    A blk = A(0);
    for (int n = n0; n < n1; n += 8) {
      A t[8];
      AK_PRAGMA_UNROLL(8)
      for (int j = 0; j < 8; ++j) t[j] = n + j < n1 ? term(n + j) : A(0);
      blk += ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
    }
    tot += blk;
  }
  return tot;
}

// Last-block election (Triton: _reduce.arrive_last): true in every thread of the last of `count`
// blocks to arrive at counter n. `reset` re-zeroes the counter for the next launch on this stream
// (a caller that counts on, as SE's pipelined forward does, resets it itself). flag: one int of
// shared memory.
AK_INL bool arrive_last(unsigned* counters, int n, int count, int* flag, bool reset = true) {
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned prev = atomicAdd(counters + n, 1u);
    *flag = (prev == (unsigned)(count - 1)) ? 1 : 0;
  }
  __syncthreads();
  const bool last = *flag != 0;
  if (last) {
    __threadfence();
    if (reset && threadIdx.x == 0) counters[n] = 0u;  // ready for the next launch on this stream
  }
  return last;
}

}  // namespace AK_BACKEND_NS
}  // namespace ak

// Whole-block matrix-vector products (the excitation MLPs' layers: rows of W or columns of W
// dotted with a vector in shared memory), deterministic: every sum in a fixed order.
#pragma once

#include "device_utils.cuh"

namespace ak {
inline namespace AK_BACKEND_NS {

// Rows of W (M x K, row-major) dotted with v (K, shared memory): out[m] = sum_k W[m*K + k] v[k].
// G lanes per row (16-byte loads when K % V == 0 and W is aligned), R rows in flight per group
// (R = 2 fits an 80-register budget, 4 needs more); f(m, value) is called by lane 0 of the group.
// Every thread of the block calls it.
template <typename T, typename A, int VV, int R, typename F>
AK_INL void rowdots_v(const T* W, const A* v, int M, int K, F& f) {
  const int KV = K / VV;
  const int G = min(32, pow2_at_least((KV + 3) / 4));  // >= 4 vectors per lane: more rows in flight
  const int tid = threadIdx.x, gl = tid % G, grp = tid / G, ngrp = blockDim.x / G;
  for (int base = 0; base < M; base += ngrp * R) {
    A acc[R];
    AK_PRAGMA_UNROLL(R)
    for (int r = 0; r < R; ++r) acc[r] = A(0);
    AK_UNROLL2
    for (int kv = gl; kv < KV; kv += G) {
      T w[R][VV];
      AK_PRAGMA_UNROLL(R)
      for (int r = 0; r < R; ++r) {
        const int m = base + r * ngrp + grp;
        if (m < M) load_elems<T, VV>(W + (size_t)m * K + (size_t)kv * VV, w[r]);
      }
      AK_PRAGMA_UNROLL(R)
      for (int r = 0; r < R; ++r) {
        if (base + r * ngrp + grp < M) {
          AK_PRAGMA_UNROLL(VV)
          for (int j = 0; j < VV; ++j) acc[r] += to_acc(w[r][j]) * v[kv * VV + j];
        }
      }
    }
    AK_PRAGMA_UNROLL(R)
    for (int r = 0; r < R; ++r) {
      const int m = base + r * ngrp + grp;
      const A tot = group_sum(acc[r], G);
      if (m < M && gl == 0) f(m, tot);
    }
  }
}

template <typename T, typename A, int R, typename F>
AK_INL void rowdots(const T* W, const A* v, int M, int K, F f) {
  constexpr int V = Vec<T>::N;
  if (K % V == 0 && ((uintptr_t)W & 15u) == 0)
    rowdots_v<T, A, V, R>(W, v, M, K, f);
  else
    rowdots_v<T, A, 1, R>(W, v, M, K, f);
}

// Columns of W (K x M, row-major) dotted with v (K, shared memory): out[m] = sum_k v[k] W[k*M + m],
// VV consecutive outputs per thread (16-byte loads when M % V == 0 and W is aligned), the K range
// split over P = blockDim / (M / VV) thread sets whose sums tree_combine adds (deterministic).
// red: blockDim * V accumulators. Caller syncs before (v ready) and after (outputs ready).
template <typename T, typename A, int VV, typename F>
AK_INL void coldots_v(const T* W, const A* v, int M, int K, A* red, F& f) {
  const int tid = threadIdx.x, nt = blockDim.x;
  const int MV = M / VV;
  const int P = MV >= nt ? 1 : nt / MV;
  auto col = [&](int mv, int k0, int dk, A* acc) {
    AK_PRAGMA_UNROLL(VV)
    for (int j = 0; j < VV; ++j) acc[j] = A(0);
    AK_UNROLL4
    for (int k = k0; k < K; k += dk) {
      const T* w = W + (size_t)k * M + (size_t)mv * VV;
      const A vk = v[k];
      if (VV > 1) {
        const Vec<T> t = ak::load_vec(reinterpret_cast<const Vec<T>*>(w));
        AK_PRAGMA_UNROLL(VV)
        for (int j = 0; j < VV; ++j) acc[j] += vk * to_acc(t.v[j]);
      } else {
        acc[0] += vk * to_acc(w[0]);
      }
    }
  };
  A acc[VV];
  if (P == 1) {
    for (int mv = tid; mv < MV; mv += nt) {
      col(mv, 0, 1, acc);
      AK_PRAGMA_UNROLL(VV)
      for (int j = 0; j < VV; ++j) f(mv * VV + j, acc[j]);
    }
    return;
  }
  const int mv = tid % MV, part = tid / MV;
  if (part < P) col(mv, part, P, acc);
  tree_combine(
      part, mv, P, MV,
      [&](int slot) {
        AK_PRAGMA_UNROLL(VV)
        for (int j = 0; j < VV; ++j) red[slot * VV + j] = acc[j];
      },
      [&](int slot) {
        AK_PRAGMA_UNROLL(VV)
        for (int j = 0; j < VV; ++j) acc[j] += red[slot * VV + j];
      });
  if (part == 0) {
    AK_PRAGMA_UNROLL(VV)
    for (int j = 0; j < VV; ++j) f(mv * VV + j, acc[j]);
  }
}

template <typename T, typename A, typename F>
AK_INL void coldots(const T* W, const A* v, int M, int K, A* red, F f) {
  constexpr int V = Vec<T>::N;
  if (M % V == 0 && ((uintptr_t)W & 15u) == 0)
    coldots_v<T, A, V>(W, v, M, K, red, f);
  else
    coldots_v<T, A, 1>(W, v, M, K, red, f);
}

// The weight gradients of a two-layer channel MLP over a batch of N, z = W2 act(u) + b2 with
// u = W1 p + b1 (W2: C x Cr, W1: Cr x C), from the per-sample vectors dz (N, C), h = act(u) and
// du (N, Cr), p (N, C): dw2[c,j] = sum_n dz[n,c] h[n,j]; db2[c] = sum_n dz[n,c];
// dw1[j,c] = sum_n du[n,j] p[n,c]; db1[j] = sum_n du[n,j] (the last two only when du is given:
// a single-layer form has no W1). One thread per output, a blocked_sum over n: deterministic.
// Blocks [0, nblocks) of the calling kernel (block b: b-th of them) share the outputs.
AK_HD_INL long long mlp_wgrad_outputs(int C, int Cr, bool fc1) {
  return (long long)C * Cr + C + (fc1 ? (long long)Cr * C + Cr : 0);
}

template <typename T, typename A>
AK_INL void mlp_wgrad(int b, int nblocks, int N, int C, int Cr, const A* dz, const A* h, const A* du, const A* p,
                      T* dw2, T* db2, T* dw1, T* db1) {
  const long long n1 = (long long)Cr * C;
  const long long total = mlp_wgrad_outputs(C, Cr, du != nullptr);
  for (long long i = (long long)b * blockDim.x + threadIdx.x; i < total; i += (long long)nblocks * blockDim.x) {
    if (i < n1) {  // dw2[c, j]
      const int c = (int)(i / Cr), j = (int)(i - (long long)c * Cr);
      dw2[i] = Cvt<T>::from(blocked_sum<A>(N, [&](int n) { return dz[(size_t)n * C + c] * h[(size_t)n * Cr + j]; }));
    } else if (i < n1 + C) {  // db2[c]
      const int c = (int)(i - n1);
      db2[c] = Cvt<T>::from(blocked_sum<A>(N, [&](int n) { return dz[(size_t)n * C + c]; }));
    } else if (i < 2 * n1 + C) {  // dw1[j, c]
      const long long k = i - n1 - C;
      const int j = (int)(k / C), c = (int)(k - (long long)j * C);
      dw1[k] = Cvt<T>::from(blocked_sum<A>(N, [&](int n) { return du[(size_t)n * Cr + j] * p[(size_t)n * C + c]; }));
    } else {  // db1[j]
      const int j = (int)(i - 2 * n1 - C);
      db1[j] = Cvt<T>::from(blocked_sum<A>(N, [&](int n) { return du[(size_t)n * Cr + j]; }));
    }
  }
}

}  // namespace AK_BACKEND_NS
}  // namespace ak

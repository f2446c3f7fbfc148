// The squeeze: per-channel sums (and maxes) of a sample over HW, in blocks over (channel, HW
// segment) units (NCHW) or (channel tile, pixel split) tiles (channels_last), each block writing
// per-split partials its op combines in a fixed order (SE's squeeze and its backward's sum of
// dy*x; BAM's channel pooling). Both builds (nvcc, and the host compiler with csrc/cuemu); the
// host side sizes the grid (squeeze_geom).
#pragma once

#include "device_utils.cuh"
#include "launch_utils.h"

namespace ak {
inline namespace AK_BACKEND_NS {  // one copy per build (cuda_compat.h)

// Squeeze / reduction loops: 16-byte loads in flight per lane and stream (a backward reading two
// streams, x and dy, takes half as many positions per step).
constexpr int kStreamLoads = 4;

// Accumulate one row segment (contiguous, len elements) into (a, b).
// Forward: a += x, b = max(b, x). Backward: a += dy*x, b += (x == pm).
template <typename T, bool BWD, bool MAXP, int U>
AK_INL void row_accum(const T* x, const T* dy, int len, int gl, int G, bool vec_ok,
                      typename Acc<T>::type pm, typename Acc<T>::type& a,
                      typename Acc<T>::type& b) {
  using A = typename Acc<T>::type;
  constexpr int V = Vec<T>::N;
  int head = 0, nvec = 0;
  if (vec_ok) {
    head = (int)(((16u - (unsigned)((uintptr_t)x & 15u)) & 15u) / sizeof(T));
    if (head > len) head = len;
    nvec = (len - head) / V;
  }
  auto elem = [&](A xv, A dv) {
    if (BWD) {
      a += dv * xv;
      if (MAXP) b += (xv == pm) ? A(1) : A(0);
    } else {
      a += xv;
      if (MAXP) b = nanmax(b, xv);
    }
  };
  // The row's unaligned ends, up to V - 1 elements each (a short row, 7x7 or 14x14, is largely
  // ends): a lane's first kEdgeLoads elements of each are loaded here, with the vectors in flight
  // behind them, instead of one element per round trip; the order of sums of one element at a time.
  constexpr int kEdgeLoads = (U + 1) / 2;  // (with U: the register budget of the caller's kernel)
  const int tail0 = head + nvec * V;
  T hx[kEdgeLoads] = {}, hd[kEdgeLoads] = {}, tx[kEdgeLoads] = {}, td[kEdgeLoads] = {};
  AK_PRAGMA_UNROLL(kEdgeLoads)
  for (int q = 0; q < kEdgeLoads; ++q) {
    const int i = gl + q * G, t = tail0 + gl + q * G;
    if (i < head) {
      hx[q] = x[i];
      if (BWD) hd[q] = dy[i];
    }
    if (t < len) {
      tx[q] = x[t];
      if (BWD) td[q] = dy[t];
    }
  }
  AK_PRAGMA_UNROLL(kEdgeLoads)
  for (int q = 0; q < kEdgeLoads; ++q)
    if (gl + q * G < head) elem(to_acc(hx[q]), BWD ? to_acc(hd[q]) : A(0));
  for (int i = gl + kEdgeLoads * G; i < head; i += G) elem(to_acc(x[i]), BWD ? to_acc(dy[i]) : A(0));
  const Vec<T>* xv = reinterpret_cast<const Vec<T>*>(x + head);
  const Vec<T>* dv = reinterpret_cast<const Vec<T>*>(BWD ? dy + head : x + head);
  // U vectors a lane at a time, all loads issued before the first use, so that each
  // lane has that many 16-byte loads in flight (a rolled loop, or one unrolled with an exit test
  // after each body, waits for each load before issuing the next: the squeeze, a pure stream,
  // was latency-bound). Same summation order as one vector at a time.
  for (int v0 = gl; v0 < nvec; v0 += U * G) {
    Vec<T> xx[U], dd[U];
    AK_PRAGMA_UNROLL(U)
    for (int j = 0; j < U; ++j) {
      if (v0 + j * G < nvec) {
        xx[j] = ak::load_vec(xv + v0 + j * G);
        if (BWD) dd[j] = ak::load_vec(dv + v0 + j * G);
      }
    }
    AK_PRAGMA_UNROLL(U)
    for (int j = 0; j < U; ++j) {
      if (v0 + j * G < nvec) {
        AK_PRAGMA_UNROLL(V)
        for (int k = 0; k < V; ++k) elem(to_acc(xx[j].v[k]), BWD ? to_acc(dd[j].v[k]) : A(0));
      }
    }
  }
  AK_PRAGMA_UNROLL(kEdgeLoads)
  for (int q = 0; q < kEdgeLoads; ++q)
    if (tail0 + gl + q * G < len) elem(to_acc(tx[q]), BWD ? to_acc(td[q]) : A(0));
  for (int i = tail0 + gl + kEdgeLoads * G; i < len; i += G) elem(to_acc(x[i]), BWD ? to_acc(dy[i]) : A(0));
}

// NCHW: this block reduces units [u0, u1) of one sample; unit = (channel c, segment sg), u = c*S + sg.
// Results go to out_a/out_b[sg*C + c].
template <typename T, bool BWD, bool MAXP, int U = kStreamLoads>
AK_INL void nchw_units(const T* xs, const T* dys, int C, int HW, int S, int seg_len, int u0, int u1,
                       int G, bool vec_ok, const typename Acc<T>::type* pm_n,
                       typename Acc<T>::type* out_a, typename Acc<T>::type* out_b) {
  using A = typename Acc<T>::type;
  const int tid = threadIdx.x, grp = tid / G, gl = tid % G, ngrp = blockDim.x / G;
  for (int base = u0; base < u1; base += ngrp) {  // uniform trip count across the block
    const int u = base + grp;
    const bool active = u < u1;
    A a = A(0), b = BWD ? A(0) : neg_inf(A(0));
    int c = 0, sg = 0;
    if (active) {
      c = u / S;
      sg = u - c * S;
      const int h0 = sg * seg_len;
      const int len = min(seg_len, HW - h0);
      const size_t off = (size_t)c * HW + h0;
      A pm = (BWD && MAXP) ? pm_n[c] : A(0);
      row_accum<T, BWD, MAXP, U>(xs + off, BWD ? dys + off : nullptr, len, gl, G, vec_ok, pm, a, b);
    }
    a = group_sum(a, G);
    if (MAXP) b = BWD ? group_sum(b, G) : group_max(b, G);
    if (active && gl == 0) {
      out_a[(size_t)sg * C + c] = a;
      if (MAXP) out_b[(size_t)sg * C + c] = b;
    }
  }
}

// NHWC geometry: vector columns per tile (ctv) for `threads` threads; rows (pixels) per pass = threads/ctv.
AK_HD_INL int nhwc_ctv(int C, int vc, int threads) {
  int cv = C / vc;
  return cv < threads ? cv : threads;
}

// NHWC: one tile of ctv vector columns (starting at vector column cv0), pixels [p0, p1) of a sample.
// red: shared scratch of (threads/ctv)*ctv*VC accumulators, twice that with MAXP. Ends with
// __syncthreads().
template <typename T, bool BWD, bool MAXP, int VC, int U = kStreamLoads>
AK_INL void nhwc_tile(const T* xs, const T* dys, int C, int p0, int p1, int cv0, int ctv,
                      const typename Acc<T>::type* pm_n, typename Acc<T>::type* out_a,
                      typename Acc<T>::type* out_b, typename Acc<T>::type* red) {
  using A = typename Acc<T>::type;
  const int tid = threadIdx.x;
  const int TY = blockDim.x / ctv;
  const int tx = tid % ctv, ty = tid / ctv;
  const int cv = cv0 + tx;
  const bool active = ty < TY && cv * VC < C;
  A a[VC], b[VC], pm[VC];
  AK_PRAGMA_UNROLL(VC)
  for (int k = 0; k < VC; ++k) {
    a[k] = A(0);
    b[k] = BWD ? A(0) : neg_inf(A(0));
    pm[k] = A(0);
  }
  if (active) {
    if (BWD && MAXP) {
      AK_PRAGMA_UNROLL(VC)
      for (int k = 0; k < VC; ++k) pm[k] = pm_n[cv * VC + k];
    }
    // U pixels a thread at a time, loads first (see row_accum); same order of sums
    for (int p0t = p0 + ty; p0t < p1; p0t += U * TY) {
      T xx[U][VC], dd[U][VC];
      AK_PRAGMA_UNROLL(U)
      for (int j = 0; j < U; ++j) {
        const int p = p0t + j * TY;
        if (p < p1) {
          const size_t off = (size_t)p * C + (size_t)cv * VC;
          load_elems<T, VC>(xs + off, xx[j]);
          if (BWD) load_elems<T, VC>(dys + off, dd[j]);
        }
      }
      AK_PRAGMA_UNROLL(U)
      for (int j = 0; j < U; ++j) {
        if (p0t + j * TY < p1) {
          AK_PRAGMA_UNROLL(VC)
          for (int k = 0; k < VC; ++k) {
            A xv = to_acc(xx[j][k]);
            if (BWD) {
              a[k] += to_acc(dd[j][k]) * xv;
              if (MAXP) b[k] += (xv == pm[k]) ? A(1) : A(0);
            } else {
              a[k] += xv;
              if (MAXP) b[k] = nanmax(b[k], xv);
            }
          }
        }
      }
    }
  }
  const int stride = TY * ctv * VC;  // red's second half holds b
  tree_combine(
      ty, tx, TY, ctv,
      [&](int slot) {
        AK_PRAGMA_UNROLL(VC)
        for (int k = 0; k < VC; ++k) {
          red[slot * VC + k] = a[k];
          if (MAXP) red[stride + slot * VC + k] = b[k];
        }
      },
      [&](int slot) {
        AK_PRAGMA_UNROLL(VC)
        for (int k = 0; k < VC; ++k) {
          a[k] += red[slot * VC + k];
          if (MAXP) {
            const A o = red[stride + slot * VC + k];
            b[k] = BWD ? b[k] + o : nanmax(b[k], o);
          }
        }
      });
  if (ty == 0 && active) {
    AK_PRAGMA_UNROLL(VC)
    for (int k = 0; k < VC; ++k) {
      out_a[cv * VC + k] = a[k];
      if (MAXP) out_b[cv * VC + k] = b[k];
    }
  }
  __syncthreads();
}

// Block reduction part shared by forward / backward squeeze kernels.
template <typename T, bool BWD, bool MAXP, bool NHWC, int U = kStreamLoads>
AK_INL void squeeze_block(const T* xs, const T* dys, int C, int HW, int b, int S, int G, int seg_len,
                          int upb, int vc, int ctv, int ctiles, bool vec_ok,
                          const typename Acc<T>::type* pm_n, typename Acc<T>::type* pa,
                          typename Acc<T>::type* pb, typename Acc<T>::type* red) {
  if (!NHWC) {
    const int units = C * S;
    const int u0 = b * upb;
    const int u1 = min(units, u0 + upb);
    nchw_units<T, BWD, MAXP, U>(xs, dys, C, HW, S, seg_len, u0, u1, G, vec_ok, pm_n, pa, pb);
  } else {
    const int tile = b % ctiles, split = b / ctiles;
    const int p0 = split * seg_len, p1 = min(HW, p0 + seg_len);
    const size_t o = (size_t)split * C;
    if (vc > 1)
      nhwc_tile<T, BWD, MAXP, Vec<T>::N, U>(xs, dys, C, p0, p1, tile * ctv, ctv, pm_n, pa + o, pb + o, red);
    else
      nhwc_tile<T, BWD, MAXP, 1, U>(xs, dys, C, p0, p1, tile * ctv, ctv, pm_n, pa + o, pb + o, red);
  }
}


// ------------------------------------------------------------------ host: the grid
// Geometry of a squeeze over one sample per block group: blocks per sample, partials per
// channel (S) and the per-layout tiling the kernels above take.
struct SqueezeGeom {
  int bps = 1, S = 1, G = 1, seg_len = 1, upb = 1, vc = 1, ctv = 1, ctiles = 1;
  size_t red_elems = 0;  // NHWC cross-row reduction scratch (accumulators)
};

// bps_hint > 0: the blocks per sample asked for; else about 4 blocks per SM over the batch, and
// at most one per 8192 elements of a sample. vec_ok: x is 16-byte aligned (channels_last vector
// columns); maxp: the second accumulator (max or tie count) is kept too.
template <typename T>
SqueezeGeom squeeze_geom(int N, int C, int HW, bool nhwc, bool maxp, int sms, int bps_hint, bool vec_ok,
                         int threads) {
  constexpr int V = Vec<T>::N;
  auto mn = [](long long a, long long b) { return a < b ? a : b; };
  auto mx = [](long long a, long long b) { return a < b ? b : a; };
  SqueezeGeom g;
  const long long E = (long long)C * HW;
  long long target = bps_hint > 0 ? bps_hint : mn(cdiv(4LL * sms, N), mx(1LL, cdiv(E, 8192)));
  target = mx(1LL, target);
  if (!nhwc) {
    const int nvrow = (int)cdiv(HW, V);
    g.G = (int)mn(32, pow2_at_least((int)mx(1LL, cdiv(nvrow, 2))));
    const int ngrp = threads / g.G;
    long long S = 1;
    if (target * ngrp > C) {
      S = cdiv(target * ngrp, C);
      S = mn(S, mx(1, HW / (g.G * V * 2)));
    }
    long long seg = cdiv(cdiv(HW, S), V) * V;
    S = cdiv(HW, seg);
    g.S = (int)S;
    g.seg_len = (int)seg;
    const long long units = (long long)C * S;
    long long upb = cdiv(cdiv(units, target), ngrp) * ngrp;
    upb = mn(upb, units);
    g.upb = (int)upb;
    g.bps = (int)cdiv(units, upb);
  } else {
    g.vc = (C % V == 0 && vec_ok) ? V : 1;
    g.ctv = nhwc_ctv(C, g.vc, threads);
    const int TY = threads / g.ctv;
    g.ctiles = (int)cdiv(C / g.vc, g.ctv);
    long long S = mx(1LL, cdiv(target, g.ctiles));
    S = mn(S, mx(1, HW / (TY * 2)));
    const long long seg = cdiv(HW, S);
    g.S = (int)cdiv(HW, seg);
    g.seg_len = (int)seg;
    g.bps = g.ctiles * g.S;
    // nhwc_tile's second half (maxes / tie counts) only with maxp
    g.red_elems = TY > 1 ? (size_t)TY * g.ctv * g.vc * (maxp ? 2 : 1) : 0;
  }
  return g;
}

}  // namespace AK_BACKEND_NS
}  // namespace ak

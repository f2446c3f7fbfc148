// CBAM (channel gate, then spatial gate) kernels: one source for nvcc (CUDA) and g++ (csrc/cuemu
// emulation). The passes and their names are those of the Triton kernels (attnkernels/triton/
// cbam.py: _cbam_<pass>), the contract of the backend functions attnkernels/cuda/cbam.py wraps.
// With s_c = gate(z[n, c]) the channel gate, x1 = x * s_c, m the spatial pool of x1 over the
// channels, t = conv(m), s_s = gate(BN(t)):
//
// Forward (x read 3 times, y written once)
//   cbam_channel_pool_kernel         sum and max of x over HW per (n, c) on the squeeze's grid; the
//                                    last block of a sample: pools, the MLP's layer 1 -> u,
//                                    h = sum_p act(u_p)
//   cbam_channel_excite_kernel       z = W2 h + P b2, per (n, channel block)
//   cbam_spatial_pool_kernel         per (n, pixel tile): max and mean over c of x1 -> m
//   cbam_spatial_conv_kernel         per (n, pixel tile): t = conv(m); batch statistics: moments
//                                    of each block's t, combined in order by the last block -> bstat
//   cbam_rescale_kernel              y = x * s_c * s_s, per (n, tile of the layout's matrix)
// Backward (dy and x read 3 times each, dx written once)
//   cbam_bwd_spatial_reduce_kernel   per pixel: ds_s = sum_c dy * x1, max of x1 and its ties
//   cbam_bwd_spatial_bn_kernel       dtn = ds_s * gate'(BN(t)); sum(dtn), sum(dtn * x_hat) -> dbn_b,
//                                    dbn_w (the last block, in order)
//   cbam_bwd_spatial_conv_kernel     dt (the BN backward), dm = conv^T(dt) -> the spatial pool's
//                                    backward coefficients per pixel; dconv_w per block, summed in
//                                    order by the last block
//   cbam_bwd_channel_reduce_kernel   ds_c = sum_hw dx1 * x (dx1 = dL/dx1) and the ties of the channel
//                                    max; the last block of a sample: dz, dh = W2^T dz, du_p, and
//                                    dx's per-channel coefficients (W1^T du_p)
//   cbam_bwd_weights_kernel          dW2, db2, dW1, db1: sums over the batch in a fixed order
//   cbam_bwd_dx_kernel               dx = dx1 * s_c + the channel pools' backward
// Deterministic: no float atomics; every partial is combined in an order fixed by the geometry.
// Tied maxima share the gradient evenly, as torch.amax's backward does.
#pragma once

#include "../common/activations.cuh"
#include "../common/device_utils.cuh"
#include "../common/matvec.cuh"
#include "../common/squeeze.cuh"
#include "../common/streams.cuh"
#include "cbam_api.h"

namespace ak {
namespace cbam {
namespace AK_BACKEND_NS {  // one copy per build (cuda_compat.h)

constexpr int kThreads = 256;
constexpr int kHeader = 16;     // bytes at the start of dynamic smem: the last-block flag
constexpr int kStreamLoads = 4;  // 16-byte loads in flight per thread and stream (two streams: half)
constexpr int kMlpRows = 2;     // rows in flight of the MLP's row dot products (matvec.cuh rowdots)
constexpr int kBnSpan = 4;      // pixels per thread of cbam_bwd_spatial_bn_kernel
constexpr int kMapUnits = 1024;  // units (16-byte vectors or elements) per element-wise tile

// ------------------------------------------------------------------ geometry (launch.h sizes it)
// Channel reductions (channel_pool, bwd_channel_reduce): the squeeze's grid, bps blocks a sample.
// NCHW: units (channel, HW segment of seg_len pixels), S segments a channel, G lanes a row, upb
// units a block. channels_last: tiles of ctv columns of vc channels (ctiles of them), S pixel splits
// of seg_len pixels; block b: tile b % ctiles, split b / ctiles. cspan: channels a block reads at
// most.
struct ChanGeom {
  int bps, S, G, seg_len, upb, vc, ctv, ctiles, cspan;
};
// Pixel reductions over all channels (spatial_pool, bwd_spatial_reduce), `tiles` blocks a sample.
// NCHW: ctv columns of vc pixels, the thread rows down the channels; channels_last: ppb pixels a
// block, G lanes a pixel.
struct PixGeom {
  int tiles, vc, ctv, G, ppb;
};
// The spatial conv's output tiles: th x tw pixels (at most kThreads), tiles_w across, `tiles` a
// sample.
struct ConvGeom {
  int th, tw, tiles_w, tiles;
};
// Element-wise tiles (rescale, bwd_dx) of a sample's (rows x cols) matrix (NCHW: C x HW;
// channels_last: HW x C): tr x tc, rtiles x ctiles of them; vec: 16-byte units along the columns.
struct MapGeom {
  int tr, tc, rtiles, ctiles, vec;
};

// Per-pixel and per-channel coefficients of the backward (one 16-byte load for float).
template <typename A> struct alignas(4 * sizeof(A)) PixCoef {
  A ss;  // s_s, the spatial gate
  A cb;  // d(mean over c)/C: dm of the mean channel / C
  A cc;  // dm of the max channel / its ties
  A mx;  // max over c of x1
};
template <typename A> struct alignas(4 * sizeof(A)) ChanCoef {
  A sc;    // s_c, the channel gate
  A ca;    // dp_avg / HW
  A cm;    // dp_max / the ties of the channel's max over HW
  A pmax;  // the channel's max over HW
};

// ------------------------------------------------------------------ parameters
template <typename T> struct FwdParams {
  using A = typename Acc<T>::type;
  const T *x, *w1, *b1, *w2, *b2;  // b1, b2 may be null
  const A *conv_w, *bn_w, *bn_b, *bn_mean, *bn_var;  // bn_w, bn_b may be null (affine=False)
  T* y;
  A *pools, *u, *z, *m, *t, *bstat;
  A* part_a;  // (N, S, C) sums of x over the HW splits
  A* part_b;  // (N, S, C) maxes
  A* h;       // (N, Cr) sum_p act(u_p)
  A* mom;     // (conv blocks, 3) moments (count, mean, M2) of t per block
  unsigned* counters;  // N per sample, then one grid-wide: zero on entry and exit
  A eps;
  int N, C, H, W, HW, Cr, P, SP, K;  // P: MLP passes; SP: spatial pool channels; K: conv size
  int act, gate, pool, spool, batch_stats, spatial;
  int excite_rows;  // channel_excite: rows of W2 a block
  ChanGeom cg;
  PixGeom pg;
  ConvGeom kg;
  MapGeom mg;
};

template <typename T> struct BwdParams {
  using A = typename Acc<T>::type;
  const T *dy, *x, *w1, *w2;
  const A *conv_w, *bn_w, *bn_b;
  const A *pools, *u, *z, *m, *t, *bstat;
  T *dx, *dw1, *db1, *dw2, *db2;
  A *dconv_w, *dbn_w, *dbn_b;
  A* dss;           // (N, HW) sum_c dy * x1
  A* cnt;           // (N, HW) channels at the max of x1
  A* dtn;           // (N, HW) dL/d(BN output)
  PixCoef<A>* pix;  // (N, HW)
  A* bn_part;       // (bn blocks, 2) sums of dtn, dtn * x_hat
  A* conv_part;     // (conv blocks, SP * K * K) dconv_w per block
  A* part_a;        // (N, S, C) sums of dx1 * x over the HW splits
  A* part_b;        // (N, S, C) ties of the channel max
  ChanCoef<A>* chan;  // (N, C)
  A *dz, *du, *h;   // (N, C), (N, P, Cr), (N, Cr)
  unsigned* counters;
  int N, C, H, W, HW, Cr, P, SP, K;
  int act, gate, pool, spool, batch_stats, spatial;
  int vec_in;  // x and dy have the same alignment mod 16 (row streams of both)
  ChanGeom cg;
  PixGeom pg;
  ConvGeom kg;
  MapGeom mg;
};

// ------------------------------------------------------------------ reduction states (streams.cuh)
template <typename A> struct SumMax {  // sum, max (NaN-propagating like torch.amax)
  using value_type = A;
  static constexpr int NF = 2;
  A v[NF];
  AK_INL void init() { v[0] = A(0), v[1] = neg_inf(A(0)); }
  AK_INL void add(A x) { v[0] += x, v[1] = nanmax(v[1], x); }
  AK_INL void merge(const SumMax& o) { v[0] += o.v[0], v[1] = nanmax(v[1], o.v[1]); }
};

template <typename A> struct Sum2 {  // two sums
  using value_type = A;
  static constexpr int NF = 2;
  A v[NF];
  AK_INL void init() { v[0] = A(0), v[1] = A(0); }
  AK_INL void merge(const Sum2& o) { v[0] += o.v[0], v[1] += o.v[1]; }
};

template <typename A> struct SumMaxCnt {  // a sum, and a max with the number of values at it
  using value_type = A;
  static constexpr int NF = 3;
  A v[NF];
  AK_INL void init() { v[0] = A(0), v[1] = neg_inf(A(0)), v[2] = A(0); }
  AK_INL void add_max(A x) {
    const A m = nanmax(v[1], x);
    v[2] = (v[1] == m ? v[2] : A(0)) + (x == m ? A(1) : A(0));
    v[1] = m;
  }
  AK_INL void merge(const SumMaxCnt& o) {
    v[0] += o.v[0];
    const A m = nanmax(v[1], o.v[1]);
    v[2] = (v[1] == m ? v[2] : A(0)) + (o.v[1] == m ? o.v[2] : A(0));
    v[1] = m;
  }
};

template <typename A> struct Moments {  // count, mean, M2 (sum of squared deviations): Chan et al.
  using value_type = A;
  static constexpr int NF = 3;
  A v[NF];
  AK_INL void init() { v[0] = A(0), v[1] = A(0), v[2] = A(0); }
  AK_INL void merge(const Moments& o) {
    if (o.v[0] == A(0)) return;
    if (v[0] == A(0)) {
      v[0] = o.v[0], v[1] = o.v[1], v[2] = o.v[2];
      return;
    }
    const A n = v[0] + o.v[0], d = o.v[1] - v[1];
    v[1] += d * (o.v[0] / n);
    v[2] += o.v[2] + d * d * (v[0] * o.v[0] / n);
    v[0] = n;
  }
};

// ------------------------------------------------------------------ shared pieces
// The channel MLP's input of pass p from a channel's mean and max.
template <typename A> AK_INL A pool_input(int pool, int p, A mean, A mx) {
  switch (pool) {
    case POOL_AVG: return mean;
    case POOL_MAX: return mx;
    case POOL_AVG_MAX: return p == 0 ? mean : mx;
    default: return A(0.5) * mean + A(0.5) * mx;
  }
}

// The BN of the spatial branch: bstat = [mean, invstd, var] the forward normalized with.
template <typename A> struct BnCoef {
  A mean, invstd, w, b;
  AK_INL A xhat(A tv) const { return (tv - mean) * invstd; }
  AK_INL A out(A tv) const { return xhat(tv) * w + b; }
};
template <typename A> AK_INL BnCoef<A> bn_coef(const A* bstat, const A* bn_w, const A* bn_b) {
  return BnCoef<A>{bstat[0], bstat[1], bn_w ? bn_w[0] : A(1), bn_b ? bn_b[0] : A(0)};
}

// Rows [r0, r1) x columns [cv0 * VC, ...) (ctv columns of VC) of a row-major matrix (ld elements a
// row, ncols columns), each column reduced over the rows: elem(st, r, col, x, dy) per element,
// out(col, st) per column (thread row 0). red: (blockDim / ctv) * ctv * VC * NF accumulators. Ends
// with a barrier.
template <typename T, bool TWO, int VC, typename St, int U, typename Elem, typename Out>
AK_INL void cols_reduce(const T* xs, const T* dys, size_t ld, int ncols, int r0, int r1, int cv0, int ctv,
                        Elem& elem, Out& out, typename St::value_type* red) {
  using A = typename St::value_type;
  const int tid = threadIdx.x, TY = blockDim.x / ctv, tx = tid % ctv, ty = tid / ctv;
  const int col = (cv0 + tx) * VC;
  const bool active = ty < TY && col < ncols;
  St s[VC];
  AK_PRAGMA_UNROLL(VC)
  for (int k = 0; k < VC; ++k) s[k].init();
  if (active) {
    auto f = [&](int r, int k, A xv, A dv) { elem(s[k], r, col + k, xv, dv); };
    col_stream<T, TWO, VC, U>(xs + col, TWO ? dys + col : nullptr, ld, r0, r1, ty, TY, f);
  }
  tree_merge<VC>(s, ty, tx, TY, ctv, red);
  if (ty == 0 && active) {
    AK_PRAGMA_UNROLL(VC)
    for (int k = 0; k < VC; ++k) out(col + k, s[k]);
  }
  __syncthreads();
}

// Rows [r0, r1) of a row-major matrix (ld elements a row, len reduced), G lanes a row:
// elem(st, r, i, x, dy) per element i, out(r, st) per row (the group's lane 0).
template <typename T, bool TWO, typename St, int U, typename Elem, typename Out>
AK_INL void rows_reduce(const T* xs, const T* dys, size_t ld, int len, int r0, int r1, int G, bool vec_ok,
                        Elem& elem, Out& out) {
  using A = typename St::value_type;
  const int tid = threadIdx.x, grp = tid / G, gl = tid % G, ngrp = blockDim.x / G;
  for (int base = r0; base < r1; base += ngrp) {  // a uniform trip count across the block
    const int r = base + grp;
    St s;
    s.init();
    if (r < r1) {
      const size_t off = (size_t)r * ld;
      auto f = [&](int i, A xv, A dv) { elem(s, r, i, xv, dv); };
      row_stream<T, TWO, U>(xs + off, TWO ? dys + off : nullptr, len, gl, G, vec_ok, f);
    }
    group_merge(s, G);
    if (r < r1 && gl == 0) out(r, s);
  }
}

// Block b of a sample's channel reduction (ChanGeom): elem(st, c, p, x, dy) per element,
// out(split, c, st) per (HW split, channel). red: the channels_last tiles' scratch.
template <typename T, bool TWO, bool NHWC, typename St, int U, typename Elem, typename Out>
AK_INL void chan_reduce(const T* xs, const T* dys, int C, int HW, int b, const ChanGeom& g, bool vec_ok,
                        Elem& elem, Out& out, typename St::value_type* red) {
  using A = typename St::value_type;
  if (!NHWC) {  // units (c, segment): rows of the C x HW matrix
    const int S = g.S, G = g.G, units = C * S, u0 = b * g.upb, u1 = min(units, u0 + g.upb);
    const int tid = threadIdx.x, grp = tid / G, gl = tid % G, ngrp = blockDim.x / G;
    for (int base = u0; base < u1; base += ngrp) {
      const int u = base + grp;
      St s;
      s.init();
      int c = 0, sg = 0;
      if (u < u1) {
        c = u / S;
        sg = u - c * S;
        const int h0 = sg * g.seg_len, len = min(g.seg_len, HW - h0);
        const size_t off = (size_t)c * HW + h0;
        auto f = [&](int i, A xv, A dv) { elem(s, c, h0 + i, xv, dv); };
        row_stream<T, TWO, U>(xs + off, TWO ? dys + off : nullptr, len, gl, G, vec_ok, f);
      }
      group_merge(s, G);
      if (u < u1 && gl == 0) out(sg, c, s);
    }
  } else {  // a tile of channel columns of the HW x C matrix, over one pixel split
    const int tile = b % g.ctiles, split = b / g.ctiles;
    const int p0 = split * g.seg_len, p1 = min(HW, p0 + g.seg_len);
    auto e = [&](St& s, int p, int c, A xv, A dv) { elem(s, c, p, xv, dv); };
    auto o = [&](int c, const St& s) { out(split, c, s); };
    if (g.vc > 1)
      cols_reduce<T, TWO, Vec<T>::N, St, U>(xs, dys, C, C, p0, p1, tile * g.ctv, g.ctv, e, o, red);
    else
      cols_reduce<T, TWO, 1, St, U>(xs, dys, C, C, p0, p1, tile * g.ctv, g.ctv, e, o, red);
  }
}

// The channels block b of a channel reduction reads: [c_lo, c_hi).
AK_INL void chan_range(const ChanGeom& g, bool nhwc, int C, int b, int& c_lo, int& c_hi) {
  if (!nhwc) {
    const int u0 = b * g.upb, u1 = min(C * g.S, u0 + g.upb);
    c_lo = u0 / g.S;
    c_hi = (u1 - 1) / g.S + 1;
  } else {
    c_lo = (b % g.ctiles) * g.ctv * g.vc;
    c_hi = min(C, c_lo + g.ctv * g.vc);
  }
}

// Pixel tile `tile` of a sample reduced over all channels (PixGeom): elem(st, c, p, x, dy) per
// element, out(p, st) per pixel. red: the NCHW tiles' scratch.
template <typename T, bool TWO, bool NHWC, typename St, int U, typename Elem, typename Out>
AK_INL void pix_reduce(const T* xs, const T* dys, int C, int HW, int tile, const PixGeom& g, bool vec_ok,
                       Elem& elem, Out& out, typename St::value_type* red) {
  using A = typename St::value_type;
  if (!NHWC) {  // columns of the C x HW matrix
    if (g.vc > 1)
      cols_reduce<T, TWO, Vec<T>::N, St, U>(xs, dys, HW, HW, 0, C, tile * g.ctv, g.ctv, elem, out, red);
    else
      cols_reduce<T, TWO, 1, St, U>(xs, dys, HW, HW, 0, C, tile * g.ctv, g.ctv, elem, out, red);
  } else {  // rows of the HW x C matrix
    const int p0 = tile * g.ppb, p1 = min(HW, p0 + g.ppb);
    auto e = [&](St& s, int p, int c, A xv, A dv) { elem(s, c, p, xv, dv); };
    rows_reduce<T, TWO, St, U>(xs, dys, C, C, p0, p1, g.G, vec_ok, e, out);
  }
}

// A block's element-wise tile (MapGeom) of sample n: rows [r0, r1), columns [c0, c1).
struct MapTile {
  int n, r0, r1, c0, c1;
};
AK_INL MapTile map_tile_of(const MapGeom& g, int rows, int cols) {
  const int per = g.rtiles * g.ctiles, n = blockIdx.x / per, rem = blockIdx.x - n * per;
  const int rt = rem / g.ctiles, ct = rem - rt * g.ctiles;
  MapTile m;
  m.n = n;
  m.r0 = rt * g.tr;
  m.r1 = min(rows, m.r0 + g.tr);
  m.c0 = ct * g.tc;
  m.c1 = min(cols, m.c0 + g.tc);
  return m;
}

// The conv tile of block blockIdx.x: sample n, output pixels [h0, h0 + th) x [w0, w0 + tw).
struct ConvTile {
  int n, h0, w0;
};
AK_INL ConvTile conv_tile_of(const ConvGeom& g) {
  const int n = blockIdx.x / g.tiles, tile = blockIdx.x - n * g.tiles;
  return ConvTile{n, (tile / g.tiles_w) * g.th, (tile % g.tiles_w) * g.tw};
}

// dst[(s * hh + yy) * hw + xx] = src[s][h0 + yy][w0 + xx] (zero outside the H x W map) for
// s < planes, yy < hh, xx < hw: a tile and its halo. value(s, i) reads element i of plane s.
template <typename A, typename F>
AK_INL void load_halo(A* dst, int planes, int H, int W, int h0, int w0, int hh, int hw, F value) {
  const int per = hh * hw;
  for (int i = threadIdx.x; i < planes * per; i += blockDim.x) {
    const int s = i / per, r = i - s * per, yy = r / hw, xx = r - yy * hw;
    const int h = h0 + yy, w = w0 + xx;
    dst[i] = (h >= 0 && h < H && w >= 0 && w < W) ? value(s, h * W + w) : A(0);
  }
}

// ------------------------------------------------------------------ forward kernels
// The last block of sample n: the pools from the S partials, the MLP's layer 1 for each pass ->
// u, and h = sum_p act(u_p) for channel_excite. sm: P * (C + Cr) accumulators. Out of line: one
// copy per T (nvcc time), and its registers apart from the streaming loop's.
template <typename T>
AK_NOINL void channel_layer1(const FwdParams<T>& P, int n, typename Acc<T>::type* sm) {
  using A = typename Acc<T>::type;
  const int C = P.C, Cr = P.Cr, S = P.cg.S, NP = P.P, tid = threadIdx.x, nt = blockDim.x;
  const A* pa = P.part_a + (size_t)n * S * C;
  const A* pb = P.part_b + (size_t)n * S * C;
  A* v = sm;            // (NP, C) the MLP's inputs
  A* us = sm + NP * C;  // (NP, Cr) its pre-activations
  for (int c = tid; c < C; c += nt) {
    const A sum = blocked_sum<A>(S, [&](int q) { return ld_cg(pa + (size_t)q * C + c); });
    A mx = neg_inf(A(0));
    for (int q = 0; q < S; ++q) mx = nanmax(mx, ld_cg(pb + (size_t)q * C + c));
    const A mean = sum / A(P.HW);
    P.pools[(size_t)n * 2 * C + c] = mean;
    P.pools[((size_t)n * 2 + 1) * C + c] = mx;
    for (int p = 0; p < NP; ++p) v[p * C + c] = pool_input(P.pool, p, mean, mx);
  }
  __syncthreads();
  for (int p = 0; p < NP; ++p)
    rowdots<T, A, kMlpRows>(P.w1, v + p * C, Cr, C, [&](int j, A acc) {
      const A uv = acc + (P.b1 ? to_acc(P.b1[j]) : A(0));
      P.u[((size_t)n * NP + p) * Cr + j] = uv;
      us[p * Cr + j] = uv;
    });
  __syncthreads();
  for (int j = tid; j < Cr; j += nt) {
    A hv = act_fwd(P.act, us[j]);
    for (int p = 1; p < NP; ++p) hv += act_fwd(P.act, us[p * Cr + j]);
    P.h[(size_t)n * Cr + j] = hv;
  }
}

template <typename T, bool NHWC>
__global__ void __launch_bounds__(kThreads, 2) cbam_channel_pool_kernel(const __grid_constant__ FwdParams<T> P) {
  using A = typename Acc<T>::type;
  AK_DYNAMIC_SHARED(unsigned char, smem_raw);
  int* flag = reinterpret_cast<int*>(smem_raw);
  A* scratch = reinterpret_cast<A*>(smem_raw + kHeader);
  const ChanGeom& g = P.cg;
  const int n = blockIdx.x / g.bps, b = blockIdx.x - n * g.bps, C = P.C;
  A* pa = P.part_a + (size_t)n * g.S * C;
  A* pb = P.part_b + (size_t)n * g.S * C;
  auto elem = [](SumMax<A>& s, int, int, A xv, A) { s.add(xv); };
  auto out = [&](int sg, int c, const SumMax<A>& s) {
    pa[(size_t)sg * C + c] = s.v[0];
    pb[(size_t)sg * C + c] = s.v[1];
  };
  chan_reduce<T, false, NHWC, SumMax<A>, kStreamLoads>(P.x + (size_t)n * C * P.HW, nullptr, C, P.HW, b, g, true,
                                                       elem, out, scratch);
  if (!arrive_last(P.counters, n, g.bps, flag)) return;
  channel_layer1<T>(P, n, scratch);
}

// z[n, c] = W2[c, :] h[n] + P b2[c] for the excite_rows channels of this block.
template <typename T>
__global__ void __launch_bounds__(kThreads) cbam_channel_excite_kernel(const __grid_constant__ FwdParams<T> P) {
  using A = typename Acc<T>::type;
  AK_DYNAMIC_SHARED(unsigned char, smem_raw);
  A* hs = reinterpret_cast<A*>(smem_raw);
  const int C = P.C, Cr = P.Cr, nb = (C + P.excite_rows - 1) / P.excite_rows;
  const int n = blockIdx.x / nb, c0 = (blockIdx.x - n * nb) * P.excite_rows, c1 = min(C, c0 + P.excite_rows);
  for (int j = threadIdx.x; j < Cr; j += blockDim.x) hs[j] = P.h[(size_t)n * Cr + j];
  __syncthreads();
  const A np = A(P.P);
  rowdots<T, A, kMlpRows>(P.w2 + (size_t)c0 * Cr, hs, c1 - c0, Cr, [&](int i, A acc) {
    const int c = c0 + i;
    P.z[(size_t)n * C + c] = acc + (P.b2 ? np * to_acc(P.b2[c]) : A(0));
  });
}

// sg[c] = gate(z[n, c]) for every channel (shared memory). Ends with a barrier.
template <typename A> AK_INL void stage_channel_gates(A* sg, const A* z, int gate, int C) {
  for (int c = threadIdx.x; c < C; c += blockDim.x) sg[c] = gate_fwd(gate, z[c]);
  __syncthreads();
}

template <typename T, bool NHWC>
__global__ void __launch_bounds__(kThreads, 2) cbam_spatial_pool_kernel(const __grid_constant__ FwdParams<T> P) {
  using A = typename Acc<T>::type;
  AK_DYNAMIC_SHARED(unsigned char, smem_raw);
  const int C = P.C, HW = P.HW, n = blockIdx.x / P.pg.tiles, tile = blockIdx.x - n * P.pg.tiles;
  A* sc = reinterpret_cast<A*>(smem_raw);
  A* red = sc + C;
  stage_channel_gates(sc, P.z + (size_t)n * C, P.gate, C);
  A* mn = P.m + (size_t)n * P.SP * HW;
  const int spool = P.spool;
  auto elem = [&](SumMax<A>& s, int c, int, A xv, A) { s.add(xv * sc[c]); };
  auto out = [&](int p, const SumMax<A>& s) {
    const A mean = s.v[0] / A(C), mx = s.v[1];
    if (spool == SPOOL_AVGMAX) {
      mn[p] = A(0.5) * mean + A(0.5) * mx;
    } else {
      mn[p] = spool == SPOOL_MAX_MEAN ? mx : mean;
      mn[HW + p] = spool == SPOOL_MAX_MEAN ? mean : mx;
    }
  };
  pix_reduce<T, false, NHWC, SumMax<A>, kStreamLoads>(P.x + (size_t)n * C * HW, nullptr, C, HW, tile, P.pg, true,
                                                      elem, out, red);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) cbam_spatial_conv_kernel(const __grid_constant__ FwdParams<T> P) {
  using A = typename Acc<T>::type;
  AK_DYNAMIC_SHARED(unsigned char, smem_raw);
  int* flag = reinterpret_cast<int*>(smem_raw);
  const ConvGeom& g = P.kg;
  const int K = P.K, pad = K / 2, SP = P.SP, H = P.H, W = P.W, HW = P.HW, tid = threadIdx.x;
  const int hh = g.th + K - 1, hw = g.tw + K - 1;
  A* wsm = reinterpret_cast<A*>(smem_raw + kHeader);  // (SP, K, K)
  A* mh = wsm + SP * K * K;                            // (SP, hh, hw) m around the tile
  A* red = mh + SP * hh * hw;                          // block_merge's
  const ConvTile ct = conv_tile_of(g);
  for (int i = tid; i < SP * K * K; i += blockDim.x) wsm[i] = P.conv_w[i];
  const A* ms = P.m + (size_t)ct.n * SP * HW;
  load_halo(mh, SP, H, W, ct.h0 - pad, ct.w0 - pad, hh, hw, [&](int s, int i) { return ms[(size_t)s * HW + i]; });
  __syncthreads();
  const int ty = tid / g.tw, tx = tid - ty * g.tw, h = ct.h0 + ty, w = ct.w0 + tx;
  Moments<A> st;
  st.init();
  if (tid < g.th * g.tw && h < H && w < W) {
    A acc = A(0);
    for (int s = 0; s < SP; ++s)
      for (int i = 0; i < K; ++i)
        for (int j = 0; j < K; ++j) acc += wsm[(s * K + i) * K + j] * mh[(s * hh + ty + i) * hw + tx + j];
    P.t[(size_t)ct.n * HW + h * W + w] = acc;
    st.v[0] = A(1), st.v[1] = acc;
  }
  if (!P.batch_stats) {  // the running statistics
    if (blockIdx.x == 0 && tid == 0) {
      const A var = P.bn_var[0];
      P.bstat[0] = P.bn_mean[0];
      P.bstat[1] = A(1) / ak_sqrt(var + P.eps);
      P.bstat[2] = var;
    }
    return;
  }
  st = block_merge(st, red);
  if (tid == 0) {
    for (int f = 0; f < 3; ++f) P.mom[(size_t)blockIdx.x * 3 + f] = st.v[f];
  }
  if (!arrive_last(P.counters, P.N, gridDim.x, flag)) return;
  // the batch's moments: each thread folds blocks tid, tid + nt, ... in order, then the block merge
  Moments<A> tot;
  tot.init();
  for (int q = tid; q < (int)gridDim.x; q += blockDim.x) {
    Moments<A> o;
    for (int f = 0; f < 3; ++f) o.v[f] = ld_cg(P.mom + (size_t)q * 3 + f);
    tot.merge(o);
  }
  tot = block_merge(tot, red);
  if (tid == 0) {
    const A var = tot.v[2] / tot.v[0];  // biased, as BatchNorm normalizes with
    P.bstat[0] = tot.v[1];
    P.bstat[1] = A(1) / ak_sqrt(var + P.eps);
    P.bstat[2] = var;
  }
}

template <typename T, bool NHWC>
__global__ void __launch_bounds__(kThreads) cbam_rescale_kernel(const __grid_constant__ FwdParams<T> P) {
  using A = typename Acc<T>::type;
  constexpr int V = Vec<T>::N;
  AK_DYNAMIC_SHARED(unsigned char, smem_raw);
  const int C = P.C, HW = P.HW, rows = NHWC ? HW : C, cols = NHWC ? C : HW;
  const MapTile mt = map_tile_of(P.mg, rows, cols);
  A* gr = reinterpret_cast<A*>(smem_raw);  // the tile rows' gates
  A* gc = gr + P.mg.tr;                    // its columns'
  const size_t nC = (size_t)mt.n * C, nHW = (size_t)mt.n * HW;
  BnCoef<A> bn{A(0), A(1), A(1), A(0)};
  if (P.spatial) bn = bn_coef(P.bstat, P.bn_w, P.bn_b);
  const int gate = P.gate;
  const bool spatial = P.spatial != 0;
  auto chan_gate = [&](int c) { return gate_fwd(gate, P.z[nC + c]); };
  auto pix_gate = [&](int p) { return spatial ? gate_fwd(gate, bn.out(P.t[nHW + p])) : A(1); };
  for (int i = threadIdx.x; i < mt.r1 - mt.r0; i += blockDim.x) gr[i] = NHWC ? pix_gate(mt.r0 + i) : chan_gate(mt.r0 + i);
  for (int i = threadIdx.x; i < mt.c1 - mt.c0; i += blockDim.x) gc[i] = NHWC ? chan_gate(mt.c0 + i) : pix_gate(mt.c0 + i);
  __syncthreads();
  auto f = [&](int r, int c, A xv, A) {
    const A a = gr[r - mt.r0], b = gc[c - mt.c0];
    return NHWC ? xv * b * a : xv * a * b;  // x * s_c * s_s
  };
  const size_t off = (size_t)mt.n * C * HW;
  if (P.mg.vec)
    map_tile<T, false, V, kStreamLoads>(P.x + off, nullptr, P.y + off, cols, mt.r0, mt.r1, mt.c0, mt.c1, f);
  else
    map_tile<T, false, 1, kStreamLoads>(P.x + off, nullptr, P.y + off, cols, mt.r0, mt.r1, mt.c0, mt.c1, f);
}

// ------------------------------------------------------------------ backward kernels
template <typename T, bool NHWC>
__global__ void __launch_bounds__(kThreads, 2)
    cbam_bwd_spatial_reduce_kernel(const __grid_constant__ BwdParams<T> P) {
  using A = typename Acc<T>::type;
  AK_DYNAMIC_SHARED(unsigned char, smem_raw);
  const int C = P.C, HW = P.HW, n = blockIdx.x / P.pg.tiles, tile = blockIdx.x - n * P.pg.tiles;
  A* sc = reinterpret_cast<A*>(smem_raw);
  A* red = sc + C;
  stage_channel_gates(sc, P.z + (size_t)n * C, P.gate, C);
  const size_t nHW = (size_t)n * HW, off = (size_t)n * C * HW;
  auto elem = [&](SumMaxCnt<A>& s, int c, int, A xv, A dv) {
    const A v = xv * sc[c];
    s.v[0] += dv * v;
    s.add_max(v);
  };
  auto out = [&](int p, const SumMaxCnt<A>& s) {
    P.dss[nHW + p] = s.v[0];
    P.pix[nHW + p].mx = s.v[1];
    P.cnt[nHW + p] = s.v[2];
  };
  pix_reduce<T, true, NHWC, SumMaxCnt<A>, kStreamLoads / 2>(P.x + off, P.dy + off, C, HW, tile, P.pg, P.vec_in != 0,
                                                            elem, out, red);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) cbam_bwd_spatial_bn_kernel(const __grid_constant__ BwdParams<T> P) {
  using A = typename Acc<T>::type;
  AK_DYNAMIC_SHARED(unsigned char, smem_raw);
  int* flag = reinterpret_cast<int*>(smem_raw);
  A* red = reinterpret_cast<A*>(smem_raw + kHeader);
  const BnCoef<A> bn = bn_coef(P.bstat, P.bn_w, P.bn_b);
  const long long M = (long long)P.N * P.HW, base = (long long)blockIdx.x * blockDim.x * kBnSpan;
  const int gate = P.gate;
  Sum2<A> s;
  s.init();
  for (int j = 0; j < kBnSpan; ++j) {
    const long long i = base + (long long)j * blockDim.x + threadIdx.x;
    if (i < M) {
      const A xh = bn.xhat(P.t[i]), o = xh * bn.w + bn.b;  // (BnCoef::out)
      const A d = gate_bwd(gate, o, P.dss[i]);
      P.dtn[i] = d;
      P.pix[i].ss = gate_fwd(gate, o);
      s.v[0] += d;
      s.v[1] += d * xh;
    }
  }
  s = block_merge(s, red);
  if (threadIdx.x == 0) {
    P.bn_part[(size_t)blockIdx.x * 2] = s.v[0];
    P.bn_part[(size_t)blockIdx.x * 2 + 1] = s.v[1];
  }
  if (!arrive_last(P.counters, P.N, gridDim.x, flag)) return;
  const int f = threadIdx.x;
  if (f < 2) {
    const A tot = blocked_sum<A>(gridDim.x, [&](int q) { return ld_cg(P.bn_part + (size_t)q * 2 + f); });
    (f == 0 ? P.dbn_b : P.dbn_w)[0] = tot;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) cbam_bwd_spatial_conv_kernel(const __grid_constant__ BwdParams<T> P) {
  using A = typename Acc<T>::type;
  AK_DYNAMIC_SHARED(unsigned char, smem_raw);
  int* flag = reinterpret_cast<int*>(smem_raw);
  const ConvGeom& g = P.kg;
  const int K = P.K, pad = K / 2, SP = P.SP, H = P.H, W = P.W, HW = P.HW, C = P.C;
  const int tid = threadIdx.x, nt = blockDim.x, width = SP * K * K;
  const int hh = g.th + K - 1, hw = g.tw + K - 1;
  A* wsm = reinterpret_cast<A*>(smem_raw + kHeader);  // (SP, K, K)
  A* dth = wsm + width;                                // (hh, hw) dt around the tile
  A* mh = dth + hh * hw;                               // (SP, hh, hw) m around the tile
  A* red = mh + SP * hh * hw;                          // (nt) the dconv_w partials' tree
  const ConvTile ct = conv_tile_of(g);
  const size_t nHW = (size_t)ct.n * HW;
  // dt = dL/dt, the BN's backward (batch statistics: with the terms of the mean and variance)
  const BnCoef<A> bn = bn_coef(P.bstat, P.bn_w, P.bn_b);
  const A k = bn.w * bn.invstd, M = A((double)P.N * HW);
  const bool bs = P.batch_stats != 0;
  const A mean_d = bs ? P.dbn_b[0] / M : A(0), mean_dx = bs ? P.dbn_w[0] / M : A(0);
  const A* dtn = P.dtn + nHW;
  const A* tn = P.t + nHW;
  for (int i = tid; i < width; i += nt) wsm[i] = P.conv_w[i];
  load_halo(dth, 1, H, W, ct.h0 - pad, ct.w0 - pad, hh, hw, [&](int, int i) {
    const A d = dtn[i];
    return bs ? k * (d - mean_d - bn.xhat(tn[i]) * mean_dx) : k * d;
  });
  const A* ms = P.m + (size_t)ct.n * SP * HW;
  load_halo(mh, SP, H, W, ct.h0 - pad, ct.w0 - pad, hh, hw, [&](int s, int i) { return ms[(size_t)s * HW + i]; });
  __syncthreads();
  const int ty = tid / g.tw, tx = tid - ty * g.tw, h = ct.h0 + ty, w = ct.w0 + tx;
  if (tid < g.th * g.tw && h < H && w < W) {
    // dm of plane s at this pixel: the transposed conv of dt
    auto dm = [&](int s) {
      A acc = A(0);
      for (int i = 0; i < K; ++i)
        for (int j = 0; j < K; ++j) acc += wsm[(s * K + i) * K + j] * dth[(ty + K - 1 - i) * hw + tx + K - 1 - j];
      return acc;
    };
    A dmax, dmean;
    if (P.spool == SPOOL_AVGMAX) {
      dmax = dmean = A(0.5) * dm(0);
    } else {
      const A d0 = dm(0), d1 = dm(1);
      dmax = P.spool == SPOOL_MAX_MEAN ? d0 : d1;
      dmean = P.spool == SPOOL_MAX_MEAN ? d1 : d0;
    }
    const size_t i = nHW + h * W + w;
    P.pix[i].cb = dmean / A(C);
    P.pix[i].cc = dmax / P.cnt[i];
  }
  // this tile's share of dconv_w[o], o = (s, i, j): sum over its pixels q of dt(q) * m_s(q + (i, j) - pad)
  const int npix = g.th * g.tw;
  auto term = [&](int o, int q) {
    const int qy = q / g.tw, qx = q - qy * g.tw;
    if (ct.h0 + qy >= H || ct.w0 + qx >= W) return A(0);
    const int s = o / (K * K), ij = o - s * K * K, i = ij / K, j = ij - i * K;
    return dth[(qy + pad) * hw + qx + pad] * mh[(s * hh + qy + i) * hw + qx + j];
  };
  A* part = P.conv_part + (size_t)blockIdx.x * width;
  if (width >= nt) {
    for (int o = tid; o < width; o += nt) part[o] = blocked_sum<A>(npix, [&](int q) { return term(o, q); });
  } else {  // nt / width thread sets take every (nt / width)-th pixel; a tree adds their sums
    const int Pq = nt / width, q0 = tid / width, o = tid - q0 * width;
    A acc = A(0);
    if (q0 < Pq) acc = blocked_sum<A>((npix - q0 + Pq - 1) / Pq, [&](int r) { return term(o, q0 + r * Pq); });
    tree_combine(
        q0, o, Pq, width, [&](int slot) { red[slot] = acc; }, [&](int slot) { acc += red[slot]; });
    if (q0 == 0) part[o] = acc;
  }
  if (!arrive_last(P.counters, P.N, gridDim.x, flag)) return;
  for (int o = tid; o < width; o += nt)
    P.dconv_w[o] = blocked_sum<A>(gridDim.x, [&](int q) { return ld_cg(P.conv_part + (size_t)q * width + o); });
}

// The last block of sample n: ds_c and the channel max's ties from the S partials, dz, dh = W2^T dz,
// du_p, h, and dx's per-channel coefficients from dp_p = W1^T du_p. sm: 2 C + (1 + P) Cr +
// kThreads * V accumulators. Out of line (see channel_layer1).
template <typename T>
AK_NOINL void channel_mlp_bwd(const BwdParams<T>& P, int n, typename Acc<T>::type* sm) {
  using A = typename Acc<T>::type;
  const int C = P.C, Cr = P.Cr, S = P.cg.S, NP = P.P, tid = threadIdx.x, nt = blockDim.x;
  const size_t nC = (size_t)n * C;
  const A* pa = P.part_a + nC * S;
  const A* pb = P.part_b + nC * S;
  A* sdz = sm;             // (C)
  A* scnt = sdz + C;       // (C) ties of each channel's max
  A* sdh = scnt + C;       // (Cr)
  A* sdu = sdh + Cr;       // (NP, Cr)
  A* red = sdu + NP * Cr;  // coldots'
  ChanCoef<A>* ch = P.chan + nC;
  for (int c = tid; c < C; c += nt) {
    const A ds = blocked_sum<A>(S, [&](int q) { return ld_cg(pa + (size_t)q * C + c); });
    A cnt = A(0);  // small integers: exact in any order
    for (int q = 0; q < S; ++q) cnt += ld_cg(pb + (size_t)q * C + c);
    const A zv = P.z[nC + c], dz = gate_bwd(P.gate, zv, ds);
    P.dz[nC + c] = dz;
    sdz[c] = dz;
    scnt[c] = cnt;
    ch[c].sc = gate_fwd(P.gate, zv);
    ch[c].pmax = P.pools[(2 * (size_t)n + 1) * C + c];
    ch[c].ca = A(0);
    ch[c].cm = A(0);
  }
  __syncthreads();
  coldots<T, A>(P.w2, sdz, Cr, C, red, [&](int j, A dh) { sdh[j] = dh; });
  __syncthreads();
  for (int j = tid; j < Cr; j += nt) {
    A hv = A(0);
    for (int p = 0; p < NP; ++p) {
      const size_t i = ((size_t)n * NP + p) * Cr + j;
      const A uv = P.u[i], du = act_bwd(P.act, uv, sdh[j]), a = act_fwd(P.act, uv);
      P.du[i] = du;
      sdu[p * Cr + j] = du;
      hv = p == 0 ? a : hv + a;
    }
    P.h[(size_t)n * Cr + j] = hv;
  }
  __syncthreads();
  const A hwv = A(P.HW);
  const int pool = P.pool;
  for (int p = 0; p < NP; ++p) {
    coldots<T, A>(P.w1, sdu + p * Cr, C, Cr, red, [&](int c, A dp) {
      if (pool == POOL_AVG || (pool == POOL_AVG_MAX && p == 0)) {
        ch[c].ca = dp / hwv;
      } else if (pool == POOL_MAX || pool == POOL_AVG_MAX) {
        ch[c].cm = dp / scnt[c];
      } else {  // avgmax: half to each pool
        const A half = A(0.5) * dp;
        ch[c].ca = half / hwv;
        ch[c].cm = half / scnt[c];
      }
    });
    __syncthreads();
  }
}

template <typename T, bool NHWC>
__global__ void __launch_bounds__(kThreads, 2)
    cbam_bwd_channel_reduce_kernel(const __grid_constant__ BwdParams<T> P) {
  using A = typename Acc<T>::type;
  AK_DYNAMIC_SHARED(unsigned char, smem_raw);
  int* flag = reinterpret_cast<int*>(smem_raw);
  A* scratch = reinterpret_cast<A*>(smem_raw + kHeader);
  const ChanGeom& g = P.cg;
  const int n = blockIdx.x / g.bps, b = blockIdx.x - n * g.bps, C = P.C, HW = P.HW;
  int c_lo, c_hi;
  chan_range(g, NHWC, C, b, c_lo, c_hi);
  A* ssc = scratch;         // (cspan) s_c of the block's channels
  A* spm = ssc + g.cspan;   // (cspan) their max over HW
  A* red = spm + g.cspan;
  const size_t nC = (size_t)n * C;
  for (int i = threadIdx.x; i < c_hi - c_lo; i += blockDim.x) {
    ssc[i] = gate_fwd(P.gate, P.z[nC + c_lo + i]);
    spm[i] = P.pools[(2 * (size_t)n + 1) * C + c_lo + i];
  }
  __syncthreads();
  const PixCoef<A>* pix = P.pix + (size_t)n * HW;
  const bool spatial = P.spatial != 0, maxp = P.pool != POOL_AVG;
  // dx1 = dL/dx1 = dy * s_s + the spatial pool's backward; ds_c = sum dx1 * x
  auto elem = [&](Sum2<A>& s, int c, int p, A xv, A dv) {
    const A sc = ssc[c - c_lo];
    A d = dv;
    if (spatial) {
      const PixCoef<A> q = pix[p];
      d = dv * q.ss + q.cb;
      if (xv * sc == q.mx) d += q.cc;
    }
    s.v[0] += d * xv;
    if (maxp && xv == spm[c - c_lo]) s.v[1] += A(1);
  };
  A* pa = P.part_a + nC * g.S;
  A* pb = P.part_b + nC * g.S;
  auto out = [&](int sg, int c, const Sum2<A>& s) {
    pa[(size_t)sg * C + c] = s.v[0];
    pb[(size_t)sg * C + c] = s.v[1];
  };
  const size_t off = nC * HW;
  chan_reduce<T, true, NHWC, Sum2<A>, kStreamLoads / 2>(P.x + off, P.dy + off, C, HW, b, g, P.vec_in != 0, elem, out,
                                                        red);
  if (!arrive_last(P.counters, n, g.bps, flag)) return;
  channel_mlp_bwd<T>(P, n, scratch);
}

// dw2[c, j] = sum_n dz[n, c] h[n, j]; db2[c] = P sum_n dz[n, c]; dw1[j, c] = sum_n sum_p du_p[n, j]
// in_p[n, c]; db1[j] = sum_n sum_p du_p[n, j]. One thread an output, a blocked_sum over n.
template <typename T>
__global__ void __launch_bounds__(kThreads) cbam_bwd_weights_kernel(const __grid_constant__ BwdParams<T> P) {
  using A = typename Acc<T>::type;
  const int C = P.C, Cr = P.Cr, N = P.N, NP = P.P, pool = P.pool;
  const long long n1 = (long long)C * Cr, total = 2 * n1 + C + Cr;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (long long)gridDim.x * blockDim.x) {
    if (i < n1) {
      const int c = (int)(i / Cr), j = (int)(i - (long long)c * Cr);
      P.dw2[i] = Cvt<T>::from(blocked_sum<A>(N, [&](int n) { return P.dz[(size_t)n * C + c] * P.h[(size_t)n * Cr + j]; }));
    } else if (i < n1 + C) {
      const int c = (int)(i - n1);
      P.db2[c] = Cvt<T>::from(A(NP) * blocked_sum<A>(N, [&](int n) { return P.dz[(size_t)n * C + c]; }));
    } else if (i < 2 * n1 + C) {  // (NP == 2 is avg+max: the second pass's input is the max)
      const long long k = i - n1 - C;
      const int j = (int)(k / C), c = (int)(k - (long long)j * C);
      P.dw1[k] = Cvt<T>::from(blocked_sum<A>(N, [&](int n) {
        const A mean = P.pools[(2 * (size_t)n) * C + c], mx = P.pools[(2 * (size_t)n + 1) * C + c];
        const A* du = P.du + (size_t)n * NP * Cr + j;
        const A a = du[0] * pool_input(pool, 0, mean, mx);
        return NP == 2 ? a + du[Cr] * mx : a;
      }));
    } else {
      const int j = (int)(i - 2 * n1 - C);
      P.db1[j] = Cvt<T>::from(blocked_sum<A>(N, [&](int n) {
        const A* du = P.du + (size_t)n * NP * Cr + j;
        return NP == 2 ? du[0] + du[Cr] : du[0];
      }));
    }
  }
}

template <typename T, bool NHWC>
__global__ void __launch_bounds__(kThreads) cbam_bwd_dx_kernel(const __grid_constant__ BwdParams<T> P) {
  using A = typename Acc<T>::type;
  constexpr int V = Vec<T>::N;
  AK_DYNAMIC_SHARED(unsigned char, smem_raw);
  const int C = P.C, HW = P.HW, rows = NHWC ? HW : C, cols = NHWC ? C : HW;
  const MapTile mt = map_tile_of(P.mg, rows, cols);
  const int cap = max(P.mg.tr, P.mg.tc);
  A* sm = reinterpret_cast<A*>(smem_raw);
  A *csc = sm, *cca = sm + cap, *ccm = sm + 2 * cap, *cpm = sm + 3 * cap;  // the tile's channels
  A *pss = sm + 4 * cap, *pcb = sm + 5 * cap, *pcc = sm + 6 * cap, *pmx = sm + 7 * cap;  // its pixels
  const int ch0 = NHWC ? mt.c0 : mt.r0, ch1 = NHWC ? mt.c1 : mt.r1;
  const int px0 = NHWC ? mt.r0 : mt.c0, px1 = NHWC ? mt.r1 : mt.c1;
  const bool spatial = P.spatial != 0, maxp = P.pool != POOL_AVG;
  for (int i = threadIdx.x; i < ch1 - ch0; i += blockDim.x) {
    const ChanCoef<A> q = P.chan[(size_t)mt.n * C + ch0 + i];
    csc[i] = q.sc, cca[i] = q.ca, ccm[i] = q.cm, cpm[i] = q.pmax;
  }
  if (spatial) {
    for (int i = threadIdx.x; i < px1 - px0; i += blockDim.x) {
      const PixCoef<A> q = P.pix[(size_t)mt.n * HW + px0 + i];
      pss[i] = q.ss, pcb[i] = q.cb, pcc[i] = q.cc, pmx[i] = q.mx;
    }
  }
  __syncthreads();
  auto f = [&](int r, int c, A xv, A dv) {
    const int ci = (NHWC ? c : r) - ch0, pi = (NHWC ? r : c) - px0;
    const A sc = csc[ci];
    A d = dv;  // dx1 (as cbam_bwd_channel_reduce_kernel computes it)
    if (spatial) {
      d = dv * pss[pi] + pcb[pi];
      if (xv * sc == pmx[pi]) d += pcc[pi];
    }
    A o = d * sc + cca[ci];
    if (maxp && xv == cpm[ci]) o += ccm[ci];
    return o;
  };
  const size_t off = (size_t)mt.n * C * HW;
  if (P.mg.vec)
    map_tile<T, true, V, kStreamLoads / 2>(P.x + off, P.dy + off, P.dx + off, cols, mt.r0, mt.r1, mt.c0, mt.c1, f);
  else
    map_tile<T, true, 1, kStreamLoads / 2>(P.x + off, P.dy + off, P.dx + off, cols, mt.r0, mt.r1, mt.c0, mt.c1, f);
}

}  // namespace AK_BACKEND_NS
}  // namespace cbam
}  // namespace ak

// SCA (SCA-CNN spatial and channel-wise attention) kernels: one source for nvcc (CUDA) and g++
// (csrc/cuemu emulation). The passes, their order per attention order and the formulas are those
// of the backend contract in attnkernels/triton/sca.py's docstring (each Triton `_sca_<name>` is
// `sca_<name>_kernel` here); the tile sizes and the workspace layouts are this backend's own.
//
// The three (locations x C) x (C x k)-shaped products (the spatial logits' P = U W_s^T, dW_s's
// dP^T V and dV's dP W_s) go through gemm_tile: a block of 4 warps computes a 64 x 64 tile of the
// product into shared memory, on the tensor cores (nvcuda::wmma, m16n16k16, fp32 accumulation)
// for fp16 / bf16 operands and with FMAs in the accumulation type for fp32 (fp32 products: no
// TF32) and fp64 (a 32 x 32 tile). The epilogues read the tile from shared memory, because the
// element mapping of a wmma fragment is unspecified.
//
// Deterministic: no float atomics. Partials go to workspaces and are added in a fixed order; an
// arrival counter (arrive_last, reset for the next call) only elects which block combines them.
#pragma once

#include <type_traits>

#include "../common/device_utils.cuh"
#include "sca_api.h"

namespace ak {
namespace sca {
namespace AK_BACKEND_NS {  // one copy per build (cuda_compat.h)

constexpr int kThreads = 256;      // pooling, element-wise and reduction kernels
constexpr int kGemmThreads = 128;  // the kernels built on gemm_tile (4 warps)
constexpr int kHidUnits = 16;      // hidden projection: units per block
constexpr int kTile = 32;          // bwd_reduce: a 32 x 32 (channels x locations) tile; channel_bwd: 32 channels

template <typename T> using AccT = typename Acc<T>::type;
template <typename T> AK_INL T zero() { return Cvt<T>::from(AccT<T>(0)); }
AK_INL float sca_tanh(float x) { return tanhf(x); }
AK_INL double sca_tanh(double x) { return tanh(x); }
AK_INL float sca_expm1(float x) { return expm1f(x); }
AK_INL double sca_expm1(double x) { return expm1(x); }
// tanh(x), and its slope 1 - tanh(x)^2 into `slope`, from one em = expm1(-2|x|) (e = 1 + em):
// t = sign(x) (-em) / (2 + em), slope = 4e / (1 + e)^2 (the contract's): the slope accurate
// relative to itself as tanh saturates, where 1 - t^2 of a rounded t loses its digits.
template <typename A> AK_INL A tanh_and_slope(A x, A& slope) {
  const A em = sca_expm1(A(-2) * (x < A(0) ? -x : x)), e = A(1) + em;
  slope = A(4) * e / ((A(1) + e) * (A(1) + e));
  const A t = -em / (A(2) + em);
  return x < A(0) ? -t : t;
}

// Everything a kernel reads or writes (one struct, passed by value to every kernel). The saved
// vectors and the workspaces are in the accumulation dtype A; pointers of what a call lacks are
// null and never read.
template <typename T> struct Params {
  using A = AccT<T>;
  // forward inputs / outputs
  const T *V, *h, *w_c, *b_c, *W_hc, *u_c, *W_s, *b_s, *W_hs, *u_s;
  T* X;
  A *hc, *hs, *v, *beta, *alpha;
  // backward inputs / outputs
  const T* dX;
  const A *dbeta, *dalpha;
  T *dV, *dh, *dw_c, *db_c, *dW_hc, *du_c, *dc_c, *dW_s, *db_s, *dW_hs, *du_s, *dc_s;
  // workspaces
  A *ws_pool, *wsm_c, *wsm_s;  // forward: pooling split partials, parked (max, sum exp) pairs
  A *loc, *loc2, *ch, *g2, *dzc, *dzs, *dv, *rhc, *ruc, *rwc, *rhs, *rus, *dhc, *dhs, *dws_acc;
  T* dP;                       // (chunk, HW, k_s): dP of the chunk's samples
  unsigned* counters;          // [0, N) channel softmax, [N, 2N) spatial softmax, then the pooling's
  // shape and options
  int N, C, HW, d, k_c, k_s, order;
  bool has_c, has_s, nhwc;
  A cs, ss;                    // C and HW with scale, else 1
  long long sc, sl;            // strides of a channel and of a location within a sample
  // geometry (launch.h)
  int n_kb_h;                  // hidden: unit blocks
  int bc, n_cb, n_split, hw_per_split;  // channel pooling: channels per block, blocks, HW splits
  int n_lb;                    // gemm kernels: location blocks (GemmCfg::BM each)
  int n_kb;                    // spatial_bwd: unit blocks (BN); n_kb_dw: spatial_dw's (BM), = g2 rows
  int n_kb_dw, n_gcb;          // spatial_dw / dx: channel blocks (BN)
  int rcb, rlb;                // bwd_reduce: channel / location blocks (kTile) = loc / ch rows
  int n_cbc;                   // channel_bwd: channel blocks (kTile) = rhc / ruc / rwc rows
  int n_db;                    // hidden_bwd: d blocks (kGemmThreads)
};

template <typename T> AK_INL long long vidx(const Params<T>& p, int n, int c, int l) {
  return (long long)n * p.C * p.HW + c * p.sc + l * p.sl;
}

// ------------------------------------------------------------------ softmax pieces
// (max, sum exp(z - max)) of z[0, cnt), by one thread: a block's logits, parked for the block that
// finishes the softmax.
template <typename A> AK_INL void park_softmax(const A* z, int cnt, A* out) {
  A m = neg_inf(A(0));
  for (int i = 0; i < cnt; ++i) m = nanmax(m, z[i]);
  A s = A(0);
  for (int i = 0; i < cnt; ++i) s += ak_exp(z[i] - m);
  out[0] = m;
  out[1] = s;
}

// p[0, size) holds one softmax's logits, parts[0, 2 n_parts) the (max, sum exp) pairs its blocks
// parked (other blocks of this launch wrote both: read through L2): combine the pairs in order
// and rewrite p = exp(z - max) / sum. Every thread of the block calls it; ms: 2 A of shared memory.
template <typename A> AK_INL void finish_softmax(A* p, const A* parts, int n_parts, int size, A* ms) {
  if (threadIdx.x == 0) {
    A m = neg_inf(A(0));
    for (int r = 0; r < n_parts; ++r) m = nanmax(m, ld_cg(parts + 2 * r));
    A s = A(0);
    for (int r = 0; r < n_parts; ++r) s += ld_cg(parts + 2 * r + 1) * ak_exp(ld_cg(parts + 2 * r) - m);
    ms[0] = m;
    ms[1] = s;
  }
  __syncthreads();
  const A m = ms[0], s = ms[1];
  for (int i = threadIdx.x; i < size; i += blockDim.x) p[i] = ak_exp(ld_cg(p + i) - m) / s;
}

// Sum over a warp in a fixed order, the result in every lane (every lane calls it).
template <typename A> AK_INL A warp_sum(A v) { return group_sum(v, 32); }

// ------------------------------------------------------------------ block tile product
template <typename T> struct GemmCfg {
  using A = AccT<T>;
  static constexpr bool kWmma = std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value;
  static constexpr int BM = sizeof(T) == 8 ? 32 : 64;  // tile rows (4 warps x 16 for wmma)
  static constexpr int BN = BM;                        // tile columns
  static constexpr int BK = sizeof(T) == 8 ? 16 : 32;  // reduction step staged in shared memory
  // wmma: ldm a multiple of 8 elements and every 16 x 16 fragment 32-byte aligned (rows of 40 / 72
  // halves: 80 / 144 bytes); the FMA path pads A's rows against bank conflicts of the staging.
  static constexpr int LDA = BK + (kWmma ? 8 : 1);
  static constexpr int LDB = BN + (kWmma ? 8 : 0);
  static constexpr int LDO = BN + 4;  // the result (A), row major; a multiple of 4 floats for wmma
  static constexpr size_t kStage = (size_t)BM * LDA * sizeof(T) + (size_t)BK * LDB * sizeof(T);
  static constexpr size_t kOut = (size_t)BM * LDO * sizeof(A);
  static constexpr size_t kBytes = ((kStage > kOut ? kStage : kOut) + 31) / 32 * 32;
};

// Out (BM x BN, row stride LDO, the accumulation type, at the start of smem) = A (BM x K) B (K x
// BN), A's element (m, kk) being la(m, kk) and B's (kk, n) lb(kk, n) (T; the loaders return 0
// outside the matrices), staged through shared memory BK at a time. a_kfast: consecutive kk of A
// are adjacent in memory, so the staging walks kk fastest (coalesced); b_nfast likewise for n of
// B. Every thread of the kGemmThreads block calls it; on return Out is complete and visible to the
// block. smem: GemmCfg<T>::kBytes, 32-byte aligned (the staging buffers and Out share it): the
// kernels that call it declare no static shared memory, so their dynamic shared memory starts the
// block's shared window (cuemu checks every wmma pointer's alignment).
template <typename T, typename LA, typename LB>
AK_INL void gemm_tile(unsigned char* smem, int K, const LA& la, const LB& lb, bool a_kfast, bool b_nfast) {
  using Cfg = GemmCfg<T>;
  using A = AccT<T>;
  constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK;
  T* As = reinterpret_cast<T*>(smem);
  T* Bs = As + BM * Cfg::LDA;
  A* Out = reinterpret_cast<A*>(smem);
  const int t = threadIdx.x;
  auto stage = [&](int k0) {
    for (int e = t; e < BM * BK; e += kGemmThreads) {
      const int m = a_kfast ? e / BK : e % BM, kk = a_kfast ? e % BK : e / BM;
      As[m * Cfg::LDA + kk] = la(m, k0 + kk);
    }
    for (int e = t; e < BK * BN; e += kGemmThreads) {
      const int kk = b_nfast ? e / BN : e % BK, n = b_nfast ? e % BN : e / BK;
      Bs[kk * Cfg::LDB + n] = lb(k0 + kk, n);
    }
  };
  if constexpr (Cfg::kWmma) {
    namespace wm = nvcuda::wmma;
    const int w = t / 32;  // rows 16 w .. 16 w + 15
    wm::fragment<wm::accumulator, 16, 16, 16, float> acc[BN / 16];
    AK_PRAGMA_UNROLL(4)
    for (int j = 0; j < BN / 16; ++j) wm::fill_fragment(acc[j], 0.f);
    for (int k0 = 0; k0 < K; k0 += BK) {
      stage(k0);
      __syncthreads();
      AK_PRAGMA_UNROLL(2)
      for (int kk = 0; kk < BK; kk += 16) {
        wm::fragment<wm::matrix_a, 16, 16, 16, T, wm::row_major> fa;
        wm::load_matrix_sync(fa, As + 16 * w * Cfg::LDA + kk, Cfg::LDA);
        AK_PRAGMA_UNROLL(4)
        for (int j = 0; j < BN / 16; ++j) {
          wm::fragment<wm::matrix_b, 16, 16, 16, T, wm::row_major> fb;
          wm::load_matrix_sync(fb, Bs + kk * Cfg::LDB + 16 * j, Cfg::LDB);
          wm::mma_sync(acc[j], fa, fb, acc[j]);
        }
      }
      __syncthreads();
    }
    AK_PRAGMA_UNROLL(4)
    for (int j = 0; j < BN / 16; ++j)
      wm::store_matrix_sync(Out + 16 * w * Cfg::LDO + 16 * j, acc[j], Cfg::LDO, wm::mem_row_major);
  } else {
    // thread (tr, tc) owns rows tr + 8 p and columns tc + 16 q
    constexpr int RM = BM / 8, RN = BN / 16;
    const int tr = t / 16, tc = t % 16;
    A acc[RM][RN];
    AK_PRAGMA_UNROLL(RM)
    for (int i = 0; i < RM; ++i)
      AK_PRAGMA_UNROLL(RN)
      for (int j = 0; j < RN; ++j) acc[i][j] = A(0);
    for (int k0 = 0; k0 < K; k0 += BK) {
      stage(k0);
      __syncthreads();
      for (int kk = 0; kk < BK; ++kk) {
        A a[RM], b[RN];
        AK_PRAGMA_UNROLL(RM)
        for (int i = 0; i < RM; ++i) a[i] = to_acc(As[(tr + 8 * i) * Cfg::LDA + kk]);
        AK_PRAGMA_UNROLL(RN)
        for (int j = 0; j < RN; ++j) b[j] = to_acc(Bs[kk * Cfg::LDB + tc + 16 * j]);
        AK_PRAGMA_UNROLL(RM)
        for (int i = 0; i < RM; ++i)
          AK_PRAGMA_UNROLL(RN)
          for (int j = 0; j < RN; ++j) acc[i][j] += a[i] * b[j];
      }
      __syncthreads();
    }
    AK_PRAGMA_UNROLL(RM)
    for (int i = 0; i < RM; ++i)
      AK_PRAGMA_UNROLL(RN)
      for (int j = 0; j < RN; ++j) Out[(tr + 8 * i) * Cfg::LDO + tc + 16 * j] = acc[i][j];
  }
  __syncthreads();
}

// U[n][c][l] as the spatial logits read it: V, or (fold, order "cs") V * cs * beta[c] rounded to
// V's dtype, the reference's V'.
template <typename T> AK_INL T spatial_input(const Params<T>& p, int n, int c, int l, bool fold) {
  const T x = p.V[vidx(p, n, c, l)];
  return fold ? Cvt<T>::from(to_acc(x) * (p.cs * p.beta[(long long)n * p.C + c])) : x;
}

// P (locations l0.., units j0..) = U[n] W_s^T over all channels, into the gemm tile.
template <typename T>
AK_INL void project(const Params<T>& p, unsigned char* smem, int n, int l0, int j0, bool fold) {
  auto la = [&](int m, int c) { return l0 + m < p.HW && c < p.C ? spatial_input(p, n, c, l0 + m, fold) : zero<T>(); };
  auto lb = [&](int c, int q) {
    return c < p.C && j0 + q < p.k_s ? p.W_s[(long long)(j0 + q) * p.C + c] : zero<T>();
  };
  gemm_tile<T>(smem, p.C, la, lb, p.nhwc, false);
}

// ------------------------------------------------------------------ forward
// hc[n] = W_hc h[n] + b_c and hs[n] = W_hs h[n] + b_s, kHidUnits units per block (a warp a unit).
template <typename T> __global__ void __launch_bounds__(kGemmThreads) sca_hidden_kernel(const Params<T> p) {
  using A = AccT<T>;
  const int n = blockIdx.x / p.n_kb_h, kb = blockIdx.x % p.n_kb_h;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const T* hn = p.h + (long long)n * p.d;
  auto unit = [&](const T* W, const T* b, A* out, int j) {
    A s = A(0);
    for (int i = lane; i < p.d; i += 32) s += to_acc(W[(long long)j * p.d + i]) * to_acc(hn[i]);
    s = warp_sum(s);
    if (lane == 0) out[j] = to_acc(b[j]) + s;
  };
  for (int u = warp; u < kHidUnits; u += kGemmThreads / 32) {
    const int j = kb * kHidUnits + u;
    if (p.has_c && j < p.k_c) unit(p.W_hc, p.b_c, p.hc + (long long)n * p.k_c, j);
    if (p.has_s && j < p.k_s) unit(p.W_hs, p.b_s, p.hs + (long long)n * p.k_s, j);
  }
}

// Channel attention over the grid (sample, channel block, HW split): the split's sums over its
// locations (weighted by alpha for "sc"), combined in split order by the last split to arrive;
// v = sum * ss / HW (ss: weighted only); that block's channels' logits into beta and their parked
// (max, sum exp); the last channel block of the sample finishes the softmax over C.
template <typename T> __global__ void __launch_bounds__(kThreads) sca_channel_kernel(const Params<T> p, int weighted) {
  using A = AccT<T>;
  AK_SHARED_ARRAY(A, red, kThreads);
  AK_SHARED_ARRAY(A, vz, 64);  // the block's v [0, 32) and logits [32, 64)
  AK_SHARED_ARRAY(A, ms, 2);
  AK_SHARED_ARRAY(int, flag, 1);
  const int sp = blockIdx.x % p.n_split, ncb = blockIdx.x / p.n_split;
  const int cb = ncb % p.n_cb, n = ncb / p.n_cb;
  const int TC = p.bc, TL = kThreads / TC, t = threadIdx.x;
  // lanes walk the contiguous dimension: locations (NCHW) or channels (channels_last)
  const int cl = p.nhwc ? t % TC : t / TL, lp = p.nhwc ? t / TC : t % TL;
  const int c = cb * TC + cl;
  const int lo = sp * p.hw_per_split, hi = min(p.HW, lo + p.hw_per_split);
  A s = A(0);
  if (c < p.C)
    for (int l = lo + lp; l < hi; l += TL) {
      A x = to_acc(p.V[vidx(p, n, c, l)]);
      if (weighted) x *= p.alpha[(long long)n * p.HW + l];
      s += x;
    }
  red[p.nhwc ? lp * TC + cl : cl * TL + lp] = s;
  __syncthreads();
  A tot = A(0);
  if (t < TC) {
    for (int q = 0; q < TL; ++q) tot += red[p.nhwc ? q * TC + t : t * TL + q];
  }
  if (p.n_split > 1) {
    A* part = p.ws_pool + (long long)ncb * p.n_split * TC;
    if (t < TC) part[sp * TC + t] = tot;
    if (!arrive_last(p.counters + 2 * p.N, ncb, p.n_split, flag)) return;
    if (t < TC) {
      tot = A(0);
      for (int q = 0; q < p.n_split; ++q) tot += ld_cg(part + q * TC + t);
    }
  }
  const int nc = min(TC, p.C - cb * TC);  // the block's channels
  if (t < nc) {
    const A vv = tot * (weighted ? p.ss : A(1)) / A(p.HW);
    p.v[(long long)n * p.C + cb * TC + t] = vv;
    vz[t] = vv;
  }
  __syncthreads();
  const int warp = t / 32, lane = t % 32;
  const A* hcn = p.hc + (long long)n * p.k_c;
  for (int q = warp; q < nc; q += kThreads / 32) {
    const A vv = vz[q];
    A z = A(0);
    for (int j = lane; j < p.k_c; j += 32) z += sca_tanh(vv * to_acc(p.w_c[j]) + hcn[j]) * to_acc(p.u_c[j]);
    z = warp_sum(z);
    if (lane == 0) {
      vz[32 + q] = z;
      p.beta[(long long)n * p.C + cb * TC + q] = z;
    }
  }
  __syncthreads();
  if (t == 0) park_softmax(vz + 32, nc, p.wsm_c + 2 * ((long long)n * p.n_cb + cb));
  if (arrive_last(p.counters, n, p.n_cb, flag))
    finish_softmax(p.beta + (long long)n * p.C, p.wsm_c + 2LL * n * p.n_cb, p.n_cb, p.C, ms);
}

// Spatial attention, one (sample, location block) a block: for each block of units, P = U W_s^T
// (gemm_tile), zs[l] += tanh(P + hs) . u_s; the logits into alpha, their parked (max, sum exp);
// the last location block of the sample finishes the softmax over HW. fold: order "cs".
template <typename T>
__global__ void __launch_bounds__(kGemmThreads) sca_spatial_kernel(const Params<T> p, int fold) {
  using A = AccT<T>;
  using Cfg = GemmCfg<T>;
  AK_DYNAMIC_SHARED(unsigned char, smem);
  A* zrow = reinterpret_cast<A*>(smem + Cfg::kBytes);  // BM logits
  A* ms = zrow + Cfg::BM;
  int* flag = reinterpret_cast<int*>(ms + 2);
  const int n = blockIdx.x / p.n_lb, lb = blockIdx.x % p.n_lb, l0 = lb * Cfg::BM;
  const int t = threadIdx.x, warp = t / 32, lane = t % 32;
  for (int m = t; m < Cfg::BM; m += kGemmThreads) zrow[m] = A(0);
  const A* hsn = p.hs + (long long)n * p.k_s;
  const A* P = reinterpret_cast<const A*>(smem);
  for (int j0 = 0; j0 < p.k_s; j0 += Cfg::BN) {
    project(p, smem, n, l0, j0, fold != 0);
    for (int m = warp; m < Cfg::BM; m += kGemmThreads / 32) {
      A s = A(0);
      for (int q = lane; q < Cfg::BN && j0 + q < p.k_s; q += 32)
        s += sca_tanh(P[m * Cfg::LDO + q] + hsn[j0 + q]) * to_acc(p.u_s[j0 + q]);
      s = warp_sum(s);
      if (lane == 0) zrow[m] += s;
    }
    __syncthreads();  // (the next product overwrites P)
  }
  const int nl = min(Cfg::BM, p.HW - l0);
  for (int m = t; m < nl; m += kGemmThreads) p.alpha[(long long)n * p.HW + l0 + m] = zrow[m];
  if (t == 0) park_softmax(zrow, nl, p.wsm_s + 2LL * blockIdx.x);
  if (arrive_last(p.counters + p.N, n, p.n_lb, flag))
    finish_softmax(p.alpha + (long long)n * p.HW, p.wsm_s + 2LL * n * p.n_lb, p.n_lb, p.HW, ms);
}

// X = V * (cs beta[c]) * (ss alpha[l]) (the factors the order has), one rounding.
template <typename T> __global__ void __launch_bounds__(kThreads) sca_apply_kernel(const Params<T> p) {
  using A = AccT<T>;
  const long long per = (long long)p.C * p.HW, total = per * p.N;
  for (long long i = (long long)blockIdx.x * kThreads + threadIdx.x; i < total; i += (long long)gridDim.x * kThreads) {
    const int n = (int)(i / per);
    const long long r = i - n * per;
    const int c = (int)(p.nhwc ? r % p.C : r / p.HW), l = (int)(p.nhwc ? r / p.C : r % p.HW);
    A y = to_acc(p.V[i]);
    if (p.has_c) y = y * (p.beta[(long long)n * p.C + c] * p.cs);
    if (p.has_s) y = y * (p.alpha[(long long)n * p.HW + l] * p.ss);
    p.X[i] = Cvt<T>::from(y);
  }
}

// ------------------------------------------------------------------ backward
// One kTile x kTile (channels x locations) tile of T = dX * V (mode_dv: V * dv[c]): its sums over
// the channels into loc rows [n, cb, l] (times beta[c] if loc_beta, times loc_mul / loc_div) and
// over the locations into ch rows [n, lb, c] (times alpha[l] if ch_alpha, times ch_mul).
template <typename T>
__global__ void __launch_bounds__(kThreads) sca_bwd_reduce_kernel(const Params<T> p, AccT<T>* loc_out, int mode_dv,
                                                                  int do_loc, int do_ch, int loc_beta, int ch_alpha,
                                                                  AccT<T> loc_mul, AccT<T> loc_div, AccT<T> ch_mul) {
  using A = AccT<T>;
  AK_SHARED_ARRAY(A, tile, kTile * (kTile + 1));
  const int per = p.rcb * p.rlb;
  const int n = blockIdx.x / per, r = blockIdx.x % per, cb = r / p.rlb, lb = r % p.rlb;
  const int c0 = cb * kTile, l0 = lb * kTile, t = threadIdx.x;
  for (int e = t; e < kTile * kTile; e += kThreads) {
    const int ci = p.nhwc ? e % kTile : e / kTile, li = p.nhwc ? e / kTile : e % kTile;
    const int c = c0 + ci, l = l0 + li;
    A x = A(0);
    if (c < p.C && l < p.HW) {
      const long long i = vidx(p, n, c, l);
      x = to_acc(p.V[i]) * (mode_dv ? p.dv[(long long)n * p.C + c] : to_acc(p.dX[i]));
    }
    tile[ci * (kTile + 1) + li] = x;
  }
  __syncthreads();
  if (do_loc && t < kTile && l0 + t < p.HW) {
    A s = A(0);
    for (int ci = 0; ci < kTile && c0 + ci < p.C; ++ci) {
      const A x = tile[ci * (kTile + 1) + t];
      s += loc_beta ? x * p.beta[(long long)n * p.C + c0 + ci] : x;
    }
    loc_out[((long long)n * p.rcb + cb) * p.HW + l0 + t] = s * loc_mul / loc_div;
  }
  if (do_ch && t >= kTile && t < 2 * kTile && c0 + t - kTile < p.C) {
    const int ci = t - kTile;
    A s = A(0);
    for (int li = 0; li < kTile && l0 + li < p.HW; ++li) {
      const A x = tile[ci * (kTile + 1) + li];
      s += ch_alpha ? x * p.alpha[(long long)n * p.HW + l0 + li] : x;
    }
    p.ch[((long long)n * p.rlb + lb) * p.C + c0 + ci] = s * ch_mul;
  }
}

// One sample's softmax backward: g = the sum of its R1 rows of r1, then of its R2 rows of r2 (+
// ext, the gradient reaching the returned map); dz = prob * (g - sum prob g).
template <typename T>
__global__ void __launch_bounds__(kThreads) sca_softmax_bwd_kernel(const Params<T> p, const AccT<T>* prob,
                                                                   const AccT<T>* r1, int R1, const AccT<T>* r2,
                                                                   int R2, const AccT<T>* ext, AccT<T>* dz, int size) {
  using A = AccT<T>;
  AK_SHARED_ARRAY(A, wpart, kThreads / 32);
  const int n = blockIdx.x, t = threadIdx.x;
  const long long base = (long long)n * size;
  A part = A(0);
  for (int m = t; m < size; m += kThreads) {
    A g = A(0);
    for (int r = 0; r < R1; ++r) g += r1[((long long)n * R1 + r) * size + m];
    for (int r = 0; r < R2; ++r) g += r2[((long long)n * R2 + r) * size + m];
    if (ext) g += ext[base + m];
    dz[base + m] = g;
    part += prob[base + m] * g;
  }
  part = warp_sum(part);
  if (t % 32 == 0) wpart[t / 32] = part;
  __syncthreads();
  A dot = A(0);
  for (int w = 0; w < kThreads / 32; ++w) dot += wpart[w];
  for (int m = t; m < size; m += kThreads) dz[base + m] = prob[base + m] * (dz[base + m] - dot);
  (void)p;
}

// The channel logits' backward for a (sample, block of kTile channels): b = tanh(v w_c + hc),
// dB = dzc u_c (1 - b^2) (tanh_and_slope); dv[n, c] = dB . w_c, and the block's rows of dhc =
// sum_c dB, du_c = sum_c dzc b, dw_c = sum_c dB v.
template <typename T> __global__ void __launch_bounds__(kThreads) sca_channel_bwd_kernel(const Params<T> p) {
  using A = AccT<T>;
  AK_SHARED_ARRAY(A, dB, kTile * (kTile + 1));
  AK_SHARED_ARRAY(A, zb, kTile * (kTile + 1));
  const int n = blockIdx.x / p.n_cbc, cb = blockIdx.x % p.n_cbc, c0 = cb * kTile, t = threadIdx.x;
  const A* hcn = p.hc + (long long)n * p.k_c;
  A dv = A(0);
  for (int j0 = 0; j0 < p.k_c; j0 += kTile) {
    for (int e = t; e < kTile * kTile; e += kThreads) {
      const int ci = e / kTile, jj = e % kTile, c = c0 + ci, j = j0 + jj;
      A g = A(0), zbv = A(0);
      if (c < p.C && j < p.k_c) {
        const A dz = p.dzc[(long long)n * p.C + c];
        A slope;
        const A b = tanh_and_slope(p.v[(long long)n * p.C + c] * to_acc(p.w_c[j]) + hcn[j], slope);
        g = dz * to_acc(p.u_c[j]) * slope;
        zbv = dz * b;
      }
      dB[ci * (kTile + 1) + jj] = g;
      zb[ci * (kTile + 1) + jj] = zbv;
    }
    __syncthreads();
    if (t < kTile) {
      for (int jj = 0; jj < kTile && j0 + jj < p.k_c; ++jj) dv += dB[t * (kTile + 1) + jj] * to_acc(p.w_c[j0 + jj]);
    } else if (t < 4 * kTile && j0 + t % kTile < p.k_c) {
      const int jj = t % kTile, what = t / kTile;  // 1: dhc, 2: du_c, 3: dw_c
      A s = A(0);
      for (int ci = 0; ci < kTile && c0 + ci < p.C; ++ci) {
        const int o = ci * (kTile + 1) + jj;
        s += what == 1 ? dB[o] : what == 2 ? zb[o] : dB[o] * p.v[(long long)n * p.C + c0 + ci];
      }
      A* rows = what == 1 ? p.rhc : what == 2 ? p.ruc : p.rwc;
      rows[(long long)blockIdx.x * p.k_c + j0 + jj] = s;
    }
    __syncthreads();
  }
  if (t < kTile && c0 + t < p.C) p.dv[(long long)n * p.C + c0 + t] = dv;
}

// dP = dzs u_s (1 - a^2), a = tanh(P + hs) (tanh_and_slope), for one (chunk sample s, location
// block, unit block), P recomputed as the forward computes it, into the chunk's dP scratch (V's
// dtype); rows: also the block's rows of dhs = sum_l dP and du_s = sum_l dzs a.
template <typename T>
__global__ void __launch_bounds__(kGemmThreads) sca_spatial_bwd_kernel(const Params<T> p, int n0, int fold, int rows) {
  using A = AccT<T>;
  using Cfg = GemmCfg<T>;
  AK_DYNAMIC_SHARED(unsigned char, smem);
  const int per = p.n_lb * p.n_kb;
  const int s = blockIdx.x / per, r = blockIdx.x % per, lb = r / p.n_kb, kb = r % p.n_kb;
  const int n = n0 + s, l0 = lb * Cfg::BM, j0 = kb * Cfg::BN, t = threadIdx.x;
  project(p, smem, n, l0, j0, fold != 0);
  const A* P = reinterpret_cast<const A*>(smem);
  const int j = j0 + t;
  if (t < Cfg::BN && j < p.k_s) {  // one unit a thread, down the block's locations
    const A hsj = p.hs[(long long)n * p.k_s + j], u = to_acc(p.u_s[j]);
    A sdp = A(0), sza = A(0);
    for (int m = 0; m < Cfg::BM && l0 + m < p.HW; ++m) {
      const int l = l0 + m;
      A slope;
      const A a = tanh_and_slope(P[m * Cfg::LDO + t] + hsj, slope), dz = p.dzs[(long long)n * p.HW + l];
      const A g = dz * u * slope;
      p.dP[((long long)s * p.HW + l) * p.k_s + j] = Cvt<T>::from(g);
      sdp += g;
      sza += dz * a;
    }
    if (rows) {
      const long long row = ((long long)n * p.n_lb + lb) * p.k_s + j;
      p.rhs[row] = sdp;
      p.rus[row] = sza;
    }
  }
}

// A (unit block, channel block) tile of dW_s over the chunk's samples, in order: M_n = dP_n^T V_n
// (gemm_tile over the sample's locations), dW_s += M_n (* cs beta_n[c] with fold, order "cs",
// which also writes the g2 rows [n, kb, c] = cs sum_j W_s[j, c] M_n[j, c]). first: start from 0,
// else from the accumulator dws_acc; last: store dW_s, else the accumulator. The running sum lives
// in shared memory after the product's (a thread owns elements t + 128 i): in registers, next to
// the product's accumulators, it spilled.
template <typename T>
__global__ void __launch_bounds__(kGemmThreads) sca_spatial_dw_kernel(const Params<T> p, int n0, int ns, int fold,
                                                                      int first, int last) {
  using A = AccT<T>;
  using Cfg = GemmCfg<T>;
  constexpr int E = Cfg::BM * Cfg::BN;
  AK_DYNAMIC_SHARED(unsigned char, smem);
  A* tot = reinterpret_cast<A*>(smem + Cfg::kBytes);  // E
  const int kb = blockIdx.x / p.n_gcb, cb = blockIdx.x % p.n_gcb;
  const int j0 = kb * Cfg::BM, c0 = cb * Cfg::BN, t = threadIdx.x;
  const A* M = reinterpret_cast<const A*>(smem);
  for (int e = t; e < E; e += kGemmThreads) {
    const int j = j0 + e / Cfg::BN, c = c0 + e % Cfg::BN;
    tot[e] = !first && j < p.k_s && c < p.C ? p.dws_acc[(long long)j * p.C + c] : A(0);
  }
  for (int s = 0; s < ns; ++s) {
    const int n = n0 + s;
    auto la = [&](int m, int l) {
      return j0 + m < p.k_s && l < p.HW ? p.dP[((long long)s * p.HW + l) * p.k_s + j0 + m] : zero<T>();
    };
    auto lb = [&](int l, int q) { return l < p.HW && c0 + q < p.C ? p.V[vidx(p, n, c0 + q, l)] : zero<T>(); };
    gemm_tile<T>(smem, p.HW, la, lb, false, p.nhwc);
    for (int e = t; e < E; e += kGemmThreads) {
      const int q = e % Cfg::BN, c = c0 + q;
      const A x = M[(e / Cfg::BN) * Cfg::LDO + q];
      tot[e] += fold ? x * (c < p.C ? p.cs * p.beta[(long long)n * p.C + c] : A(0)) : x;
    }
    if (fold && t < Cfg::BN && c0 + t < p.C) {
      A g = A(0);
      for (int m = 0; m < Cfg::BM && j0 + m < p.k_s; ++m)
        g += to_acc(p.W_s[(long long)(j0 + m) * p.C + c0 + t]) * M[m * Cfg::LDO + t];
      p.g2[((long long)n * p.n_kb_dw + kb) * p.C + c0 + t] = g * p.cs;
    }
    __syncthreads();  // (the next product overwrites M)
  }
  for (int e = t; e < E; e += kGemmThreads) {
    const int j = j0 + e / Cfg::BN, c = c0 + e % Cfg::BN;
    if (j < p.k_s && c < p.C) {
      if (last) p.dW_s[(long long)j * p.C + c] = Cvt<T>::from(tot[e]);
      else p.dws_acc[(long long)j * p.C + c] = tot[e];
    }
  }
}

// dV for a (chunk sample, location block, channel block) tile: G = dP[n, lb, :] W_s[:, cb]
// (gemm_tile; orders with "s"), then
//   "s": dX ss alpha + G;  "cs": (dX ss alpha + G) cs beta + dv / HW;
//   "sc": (dX cs beta + dv / HW) ss alpha + G;  "c": dX cs beta + dv / HW.
template <typename T> __global__ void __launch_bounds__(kGemmThreads) sca_dx_kernel(const Params<T> p, int n0) {
  using A = AccT<T>;
  using Cfg = GemmCfg<T>;
  AK_DYNAMIC_SHARED(unsigned char, smem);
  const int per = p.n_lb * p.n_gcb;
  const int s = blockIdx.x / per, r = blockIdx.x % per, lb = r / p.n_gcb, cb = r % p.n_gcb;
  const int n = n0 + s, l0 = lb * Cfg::BM, c0 = cb * Cfg::BN, t = threadIdx.x;
  const A* G = reinterpret_cast<const A*>(smem);
  if (p.has_s) {
    auto la = [&](int m, int j) {
      return l0 + m < p.HW && j < p.k_s ? p.dP[((long long)s * p.HW + l0 + m) * p.k_s + j] : zero<T>();
    };
    auto lb = [&](int j, int q) { return j < p.k_s && c0 + q < p.C ? p.W_s[(long long)j * p.C + c0 + q] : zero<T>(); };
    gemm_tile<T>(smem, p.k_s, la, lb, true, true);
  }
  for (int e = t; e < Cfg::BM * Cfg::BN; e += kGemmThreads) {
    // the walk follows the layout's contiguous dimension
    const int m = p.nhwc ? e / Cfg::BN : e % Cfg::BM, q = p.nhwc ? e % Cfg::BN : e / Cfg::BM;
    const int l = l0 + m, c = c0 + q;
    if (l >= p.HW || c >= p.C) continue;
    const long long i = vidx(p, n, c, l);
    A g = to_acc(p.dX[i]);
    A col = A(0), dvc = A(0), row = A(0), gv = A(0);
    if (p.has_c) {
      col = p.beta[(long long)n * p.C + c] * p.cs;
      dvc = p.dv[(long long)n * p.C + c] / A(p.HW);
    }
    if (p.has_s) {
      row = p.alpha[(long long)n * p.HW + l] * p.ss;
      gv = G[m * Cfg::LDO + q];
    }
    switch (p.order) {
      case ORDER_S: g = g * row + gv; break;
      case ORDER_CS: g = (g * row + gv) * col + dvc; break;
      case ORDER_SC: g = (g * col + dvc) * row + gv; break;
      default: g = g * col + dvc; break;
    }
    p.dV[i] = Cvt<T>::from(g);
  }
}

// dh[n, db] = W_hc[:, db]^T dhc[n] + W_hs[:, db]^T dhs[n], dhc / dhs being the sample's rows summed
// in order (the d block 0 stores them for the weight gradients). smem: (k_c + k_s) A.
template <typename T> __global__ void __launch_bounds__(kGemmThreads) sca_hidden_bwd_kernel(const Params<T> p) {
  using A = AccT<T>;
  AK_DYNAMIC_SHARED(A, g);
  const int n = blockIdx.x / p.n_db, db = blockIdx.x % p.n_db, t = threadIdx.x;
  A* gc = g;
  A* gs = g + p.k_c;
  auto gather = [&](const A* rows, int R, int k, A* out, A* keep) {
    for (int j = t; j < k; j += kGemmThreads) {
      A s = A(0);
      for (int r = 0; r < R; ++r) s += rows[((long long)n * R + r) * k + j];
      out[j] = s;
      if (db == 0) keep[(long long)n * k + j] = s;
    }
  };
  if (p.has_c) gather(p.rhc, p.n_cbc, p.k_c, gc, p.dhc);
  if (p.has_s) gather(p.rhs, p.n_lb, p.k_s, gs, p.dhs);
  __syncthreads();
  const int i = db * kGemmThreads + t;
  if (i < p.d) {
    A out = A(0);
    if (p.has_c)
      for (int j = 0; j < p.k_c; ++j) out += to_acc(p.W_hc[(long long)j * p.d + i]) * gc[j];
    if (p.has_s)
      for (int j = 0; j < p.k_s; ++j) out += to_acc(p.W_hs[(long long)j * p.d + i]) * gs[j];
    p.dh[(long long)n * p.d + i] = Cvt<T>::from(out);
  }
}

// The parameter gradients, one thread an element (every sum over the batch or over rows in a
// fixed blocked order): dW_hc = dhc^T h, db_c = sum_n dhc, dW_hs, db_s likewise, du_c, dw_c, du_s
// (their rows summed); the last block: dc_c = 0 * sum dzc, dc_s = 0 * sum dzs (a shift of every
// logit leaves a softmax as it is: exactly 0, and NaN where a gradient was not finite, as eager's
// sum of dz is then).
template <typename T> __global__ void __launch_bounds__(kThreads) sca_bwd_weights_kernel(const Params<T> p) {
  using A = AccT<T>;
  AK_SHARED_ARRAY(A, wpart, kThreads / 32);
  const long long kc = p.has_c ? p.k_c : 0, ks = p.has_s ? p.k_s : 0, d = p.d;
  const long long total = kc * d + kc + ks * d + ks + 2 * kc + ks;
  const int t = threadIdx.x;
  if (blockIdx.x + 1 < gridDim.x) {
    long long e = (long long)blockIdx.x * kThreads + t;
    if (e >= total) return;
    auto outer = [&](const A* dhid, long long k, long long jj, long long ii) {
      return blocked_sum<A>(p.N, [&](int n) { return dhid[n * k + jj] * to_acc(p.h[n * d + ii]); });
    };
    auto colsum = [&](const A* m, long long rows, long long k, long long jj) {
      return blocked_sum<A>((int)rows, [&](int r) { return m[r * k + jj]; });
    };
    if (e < kc * d) { p.dW_hc[e] = Cvt<T>::from(outer(p.dhc, kc, e / d, e % d)); return; }
    e -= kc * d;
    if (e < kc) { p.db_c[e] = Cvt<T>::from(colsum(p.dhc, p.N, kc, e)); return; }
    e -= kc;
    if (e < ks * d) { p.dW_hs[e] = Cvt<T>::from(outer(p.dhs, ks, e / d, e % d)); return; }
    e -= ks * d;
    if (e < ks) { p.db_s[e] = Cvt<T>::from(colsum(p.dhs, p.N, ks, e)); return; }
    e -= ks;
    if (e < kc) { p.du_c[e] = Cvt<T>::from(colsum(p.ruc, (long long)p.N * p.n_cbc, kc, e)); return; }
    e -= kc;
    if (e < kc) { p.dw_c[e] = Cvt<T>::from(colsum(p.rwc, (long long)p.N * p.n_cbc, kc, e)); return; }
    e -= kc;
    p.du_s[e] = Cvt<T>::from(colsum(p.rus, (long long)p.N * p.n_lb, ks, e));
    return;
  }
  // the last block: dc_c and dc_s
  auto total_of = [&](const A* z, long long cnt) {
    A s = A(0);
    for (long long i = t; i < cnt; i += kThreads) s += z[i];
    s = warp_sum(s);
    __syncthreads();  // (wpart reused)
    if (t % 32 == 0) wpart[t / 32] = s;
    __syncthreads();
    A tot = A(0);
    for (int w = 0; w < kThreads / 32; ++w) tot += wpart[w];
    return tot;
  };
  if (p.has_c) {
    const A s = total_of(p.dzc, (long long)p.N * p.C);
    if (t == 0) p.dc_c[0] = Cvt<T>::from(A(0) * s);
  }
  if (p.has_s) {
    const A s = total_of(p.dzs, (long long)p.N * p.HW);
    if (t == 0) p.dc_s[0] = Cvt<T>::from(A(0) * s);
  }
}

}  // namespace AK_BACKEND_NS
}  // namespace sca
}  // namespace ak

// BAM (bottleneck attention module) kernels: the channel branch (pooling, the MLP with its
// BatchNorm1d), the combination with the spatial map Ms (an input: its convolutions stay on
// torch), the sigmoid, the `1 +` and the rescale, forward and backward. One source for nvcc (CUDA)
// and g++ (csrc/cuemu emulation). The Triton twins are attnkernels/triton/bam.py's _bam_<pass>.
//
// Forward (x read twice, y written once)
//   bam_channel_pool_kernel  blocks over (sample, slice): per-channel sums of x (the squeeze,
//                            common/squeeze.cuh); the last block of a sample to arrive: p and
//                            u = W0 p + b0, and with running statistics the rest of the MLP (mc);
//                            with batch statistics the last sample to arrive computes them.
//   bam_bn_relu_fc1_kernel   (batch statistics) a block per sample: mc = W1 relu(bn(u)) + b1.
//   bam_gate_kernel          y = x * (1 + sigmoid(mc (op) ms)), samples in reverse order.
// Backward (dy read twice, x once, dx written once)
//   bam_bwd_reduce_kernel    tiles of rows x a column segment of a sample: g = dy x sigmoid'(att);
//                            per-row and per-column partial sums of g (times ms or mc); the last
//                            tile of a sample: dmc, dms, dh = W1^T dmc, relu'; the last sample:
//                            the BatchNorm backward over the batch (dbn_w, dbn_b, du).
//   bam_bwd_mlp_kernel       blocks [0, N): dp = W0^T du; the others: dW1, db1, dW0, db0.
//   bam_bwd_dx_kernel        dx = dy * (1 + sigmoid(att)) + dp / HW, samples in reverse order.
// Every sum is in a fixed order (no float atomics): the results are the same bits run to run.
#pragma once

#include "../common/activations.cuh"
#include "../common/device_utils.cuh"
#include "../common/matvec.cuh"
#include "../common/squeeze.cuh"
#include "bam_api.h"

namespace ak {
namespace bam {
namespace AK_BACKEND_NS {  // one copy per build (cuda_compat.h)

constexpr int kThreads = 256;  // every kernel's block size
constexpr int kHeader = 16;    // bytes at the start of dynamic smem (the last-block flag)
// The epilogues' matrix-vector products: rows in flight per lane group (matvec.cuh's rowdots;
// the reduce kernels run at 2 blocks of 256 per SM, 128 registers a thread).
constexpr int kRows = 4;

// ------------------------------------------------------------------ parameters
template <typename T> struct FwdParams {
  using A = typename Acc<T>::type;
  const T* x;
  const T* ms;  // (N, HW)
  const T* w0;  // (Cr, C)
  const T* b0;  // may be null
  const T* w1;  // (C, Cr)
  const T* b1;  // may be null
  const A* bn_w;     // may be null (affine=False), as bn_b
  const A* bn_b;
  const A* bn_mean;  // running statistics (not batch_stats)
  const A* bn_var;
  T* y;
  A* p;      // (N, C)
  A* u;      // (N, Cr)
  A* mc;     // (N, C)
  A* bstat;  // (3, Cr): mean, invstd, var
  A* ws;     // (N, S, C) per-slice channel sums
  unsigned* counters;  // N + 1, zero on entry and exit
  int N, C, HW, Cr;
  int batch_stats, combine;
  A eps;
  // squeeze geometry (common/squeeze.cuh)
  int bps, S, G, seg_len, upb, vc, ctv, ctiles;
  // gate pass
  int vec;      // 16-byte units (see gate_range)
  int ms_vec;   // NCHW: ms rows in 16-byte units too
  int chunks;   // blocks per sample
  int rs_span;  // units per block
};

template <typename T> struct BwdParams {
  using A = typename Acc<T>::type;
  const T* dy;
  const T* x;
  const T* ms;
  const T* w0;
  const T* w1;
  const A* bn_w;
  const A* bn_b;
  const A* p;
  const A* u;
  const A* mc;
  const A* bstat;
  T* dx;
  T* dms;  // (N, HW)
  T* dw0;
  T* db0;
  T* dw1;
  T* db1;
  A* dbn_w;
  A* dbn_b;
  A* ws_row;  // (N, Sk, R) row partials (see bam_bwd_reduce_kernel)
  A* ws_col;  // (N, Sr, K) column partials
  A* dmc;     // (N, C)
  A* coef;    // (N, C): dp / HW
  A* gy;      // (N, Cr): the gradient of the BatchNorm's output
  A* h;       // (N, Cr): relu(bn(u))
  A* du;      // (N, Cr)
  unsigned* counters;  // N + 1, zero on entry and exit
  int N, C, HW, Cr;
  int batch_stats, combine;
  // reduce tiles: G lanes per row, a tile covers seg columns and rpb rows; Sk x Sr tiles a sample
  int G, seg, Sk, rpb, Sr, tiles;
  // dx pass (as the gate's)
  int vec, ms_vec, chunks, rs_span;
};

// ------------------------------------------------------------------ pieces
// The pre-sigmoid attention Mc (op) Ms.
template <typename A> AK_INL A combine_att(int combine, A m, A s) { return combine == COMBINE_SUM ? m + s : m * s; }

// BatchNorm1d of channel j's pre-BN value uv with the statistics in use (w, b: null without affine).
template <typename A> AK_INL A bn_apply(const A* w, const A* b, int j, A uv, A mean, A invstd) {
  A t = (uv - mean) * invstd;
  if (w) t *= w[j];
  if (b) t += b[j];
  return t;
}

// The statistics channel j's BatchNorm uses in the forward: the running ones (their invstd computed
// here, as bstat gets it), or the batch's (bstat, written earlier by the last sample's block or the
// previous launch: through L2).
template <typename T>
AK_INL void fwd_bn_stats(const FwdParams<T>& P, int j, typename Acc<T>::type& mean, typename Acc<T>::type& invstd) {
  using A = typename Acc<T>::type;
  if (P.batch_stats) {
    mean = ld_cg(P.bstat + j);
    invstd = ld_cg(P.bstat + P.Cr + j);
  } else {
    mean = P.bn_mean[j];
    invstd = A(1) / ak_sqrt(P.bn_var[j] + P.eps);
  }
}

// Sample n's h = relu(bn(u)) (u_n: its u) into sh (shared, Cr), then mc = W1 h + b1 out.
template <typename T>
AK_INL void mlp_tail(const FwdParams<T>& P, int n, const typename Acc<T>::type* u_n, typename Acc<T>::type* sh) {
  using A = typename Acc<T>::type;
  for (int j = threadIdx.x; j < P.Cr; j += blockDim.x) {
    A mean, invstd;
    fwd_bn_stats(P, j, mean, invstd);
    sh[j] = act_fwd(ACT_RELU, bn_apply(P.bn_w, P.bn_b, j, u_n[j], mean, invstd));
  }
  __syncthreads();
  const T* b1 = P.b1;
  A* mc = P.mc + (size_t)n * P.C;
  rowdots<T, A, kRows>(P.w1, sh, P.C, P.Cr, [&](int c, A acc) { mc[c] = acc + (b1 ? to_acc(b1[c]) : A(0)); });
}

// The batch's mean and biased variance per channel of u (every sample's u is out: the caller is
// the last sample's block), and invstd, into bstat. Fixed-order sums over the batch, in double:
// N x Cr terms, and the BatchNorm's backward with batch statistics cancels to a fraction of its
// terms (bn_backward), so what rounding the statistics carry is worth keeping small.
template <typename T> AK_INL void batch_stats(const FwdParams<T>& P) {
  using A = typename Acc<T>::type;
  const int N = P.N, Cr = P.Cr;
  for (int j = threadIdx.x; j < Cr; j += blockDim.x) {
    const A* uj = P.u + j;
    const double mean = blocked_sum<double>(N, [&](int m) { return (double)ld_cg(uj + (size_t)m * Cr); }) / N;
    const double var = blocked_sum<double>(N, [&](int m) {
                         const double dv = (double)ld_cg(uj + (size_t)m * Cr) - mean;
                         return dv * dv;
                       }) / N;
    P.bstat[j] = (A)mean;
    P.bstat[Cr + j] = (A)(1.0 / ak_sqrt(var + (double)P.eps));
    P.bstat[2 * Cr + j] = (A)var;
  }
}

// The last block of sample n: p from the S slice partials, u = W0 p + b0; then the rest of the MLP
// (running statistics) or, in the batch's last sample, the batch statistics. Out of line: one copy
// per (T) instead of one per kernel (nvcc time), as SE's epilogues.
// scratch: [p: C][u: Cr][h: Cr]
template <typename T>
AK_NOINL void pool_epilogue(const FwdParams<T>& P, int n, typename Acc<T>::type* scratch, int* flag) {
  using A = typename Acc<T>::type;
  const int C = P.C, Cr = P.Cr, S = P.S;
  A* sp = scratch;
  A* su = sp + C;
  A* sh = su + Cr;
  const A* pa = P.ws + (size_t)n * S * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const A pv = blocked_sum<A>(S, [&](int q) { return ld_cg(pa + (size_t)q * C + c); }) / A(P.HW);
    P.p[(size_t)n * C + c] = pv;
    sp[c] = pv;
  }
  __syncthreads();
  const T* b0 = P.b0;
  A* u = P.u + (size_t)n * Cr;
  rowdots<T, A, kRows>(P.w0, sp, Cr, C, [&](int j, A acc) {
    const A uv = acc + (b0 ? to_acc(b0[j]) : A(0));
    u[j] = uv;
    su[j] = uv;
  });
  __syncthreads();
  if (!P.batch_stats) {
    if (n == 0) {  // the statistics used, for the backward
      for (int j = threadIdx.x; j < Cr; j += blockDim.x) {
        A mean, invstd;
        fwd_bn_stats(P, j, mean, invstd);
        P.bstat[j] = mean;
        P.bstat[Cr + j] = invstd;
        P.bstat[2 * Cr + j] = P.bn_var[j];
      }
    }
    mlp_tail(P, n, su, sh);
    return;
  }
  if (arrive_last(P.counters, P.N, P.N, flag)) batch_stats(P);
}

// y = src * (1 + sigmoid(mc[c] (op) ms[hw])), plus coef[c] with COEF (the backward's dx from dy),
// over units [u0, u1) of one sample, `step` apart: a unit is a 16-byte vector when vec (NCHW:
// C*HW % V == 0, a vector may straddle channels; channels_last: C % V == 0), else an element.
// ms_vec (NCHW): HW % V == 0 and ms aligned, so a vector's ms values are a vector too. U: vectors
// a thread loads before it computes and stores them (map_vectors).
template <typename T, bool NHWC, bool COEF, int U>
AK_INL void gate_range(const T* src, T* dst, const typename Acc<T>::type* mc, const T* ms,
                       const typename Acc<T>::type* coef, int combine, int C, int HW, int u0, int u1, int step,
                       bool vec, bool ms_vec) {
  using A = typename Acc<T>::type;
  constexpr int V = Vec<T>::N;
  auto one = [&](A v, A m, A s, int c) {
    A r = v * (A(1) + gate_fwd(GATE_SIGMOID, combine_att(combine, m, s)));
    if (COEF) r += coef[c];
    return Cvt<T>::from(r);
  };
  if (vec) {
    map_vectors<T, U>(src, dst, u0, u1, step, [&](Vec<T>& t, int i) {
      const int e = i * V;
      if (!NHWC) {
        const int c = e / HW, hw = e - c * HW;
        if (HW - hw >= V) {  // the vector lies in one channel
          const A m = mc[c];
          if (ms_vec) {
            const Vec<T> sv = ak::load_vec(reinterpret_cast<const Vec<T>*>(ms + hw));
            AK_PRAGMA_UNROLL(V)
            for (int k = 0; k < V; ++k) t.v[k] = one(to_acc(t.v[k]), m, to_acc(sv.v[k]), c);
          } else {
            AK_PRAGMA_UNROLL(V)
            for (int k = 0; k < V; ++k) t.v[k] = one(to_acc(t.v[k]), m, to_acc(ms[hw + k]), c);
          }
        } else {  // it straddles channels (HW % V != 0)
          AK_PRAGMA_UNROLL(V)
          for (int k = 0; k < V; ++k) {
            const int ck = (e + k) / HW;
            t.v[k] = one(to_acc(t.v[k]), mc[ck], to_acc(ms[e + k - ck * HW]), ck);
          }
        }
      } else {
        const int px = e / C, c0 = e - px * C;
        const A s = to_acc(ms[px]);
        AK_PRAGMA_UNROLL(V)
        for (int k = 0; k < V; ++k) t.v[k] = one(to_acc(t.v[k]), mc[c0 + k], s, c0 + k);
      }
    });
  } else {
    for (int e = u0; e < u1; e += step) {
      int c, hw;
      if (NHWC) {
        hw = e / C;
        c = e - hw * C;
      } else {
        c = e / HW;
        hw = e - c * HW;
      }
      dst[e] = one(to_acc(src[e]), mc[c], to_acc(ms[hw]), c);
    }
  }
}

// ------------------------------------------------------------------ forward kernels
template <typename T, bool NHWC>
__global__ void __launch_bounds__(kThreads, 2) bam_channel_pool_kernel(const __grid_constant__ FwdParams<T> P) {
  using A = typename Acc<T>::type;
  AK_DYNAMIC_SHARED(unsigned char, smem_raw);
  int* flag = reinterpret_cast<int*>(smem_raw);
  A* scratch = reinterpret_cast<A*>(smem_raw + kHeader);
  const int n = blockIdx.x / P.bps, b = blockIdx.x - n * P.bps;
  A* pa = P.ws + (size_t)n * P.S * P.C;
  squeeze_block<T, false, false, NHWC>(P.x + (size_t)n * P.C * P.HW, nullptr, P.C, P.HW, b, P.S, P.G, P.seg_len,
                                       P.upb, P.vc, P.ctv, P.ctiles, true, nullptr, pa, pa, scratch);
  if (!arrive_last(P.counters, n, P.bps, flag)) return;
  pool_epilogue(P, n, scratch, flag);
}

// Batch statistics: every sample's u and the statistics are out (the previous launch).
template <typename T>
__global__ void __launch_bounds__(kThreads) bam_bn_relu_fc1_kernel(const __grid_constant__ FwdParams<T> P) {
  using A = typename Acc<T>::type;
  AK_DYNAMIC_SHARED(A, sh);
  const int n = blockIdx.x;
  mlp_tail(P, n, P.u + (size_t)n * P.Cr, sh);
}

// Samples in reverse order of the pooling: the tail of x is still in L2.
template <typename T, bool NHWC>
__global__ void __launch_bounds__(kThreads) bam_gate_kernel(const __grid_constant__ FwdParams<T> P) {
  const int q = blockIdx.x / P.chunks, chunk = blockIdx.x - q * P.chunks;
  const int n = P.N - 1 - q;
  const int E = P.C * P.HW, units = P.vec ? E / Vec<T>::N : E;
  const size_t off = (size_t)n * E;
  const int u0 = chunk * P.rs_span, u1 = min(units, u0 + P.rs_span);
  gate_range<T, NHWC, false, kStreamLoads>(P.x + off, P.y + off, P.mc + (size_t)n * P.C, P.ms + (size_t)n * P.HW,
                                          nullptr, P.combine, P.C, P.HW, u0 + threadIdx.x, u1, blockDim.x,
                                          P.vec != 0, P.ms_vec != 0);
}

// ------------------------------------------------------------------ backward kernels
// Elements a lane takes per row of a reduce tile: two 16-byte vectors (or as many elements).
template <typename T> __host__ __device__ constexpr int reduce_lane_elems() { return 2 * Vec<T>::N; }

// The BatchNorm backward of every sample (the caller is the batch's last block: every sample's gy
// is out): dbn_b = sum_n gy, dbn_w = sum_n gy * xhat, and du: with batch statistics
// w invstd (gy - dbn_b / N - xhat dbn_w / N) (the statistics' own gradients), else w invstd gy.
// With batch statistics du is what is left of gy after two projections, a small fraction of it for
// small batches (N = 2: eps / (var + eps) of it), so it is computed in double, with the batch's
// mean recomputed from u (sum_n xhat = 0 to double precision: db0 = sum_n du cancels as it should).
template <typename T> AK_INL void bn_backward(const BwdParams<T>& P) {
  using A = typename Acc<T>::type;
  const int N = P.N, Cr = P.Cr;
  for (int j = threadIdx.x; j < Cr; j += blockDim.x) {
    const A* gj = P.gy + j;
    const A* uj = P.u + j;
    const double mean = P.batch_stats ? blocked_sum<double>(N, [&](int m) { return (double)uj[(size_t)m * Cr]; }) / N
                                      : (double)P.bstat[j];
    const double invstd = P.bstat[Cr + j];
    auto xhat = [&](int m) { return ((double)uj[(size_t)m * Cr] - mean) * invstd; };
    const double sg = blocked_sum<double>(N, [&](int m) { return (double)ld_cg(gj + (size_t)m * Cr); });
    const double sgx = blocked_sum<double>(N, [&](int m) { return (double)ld_cg(gj + (size_t)m * Cr) * xhat(m); });
    P.dbn_b[j] = (A)sg;
    P.dbn_w[j] = (A)sgx;
    const double scale = (P.bn_w ? (double)P.bn_w[j] : 1.0) * invstd;
    const double mg = sg / N, mgx = sgx / N;
    for (int m = 0; m < N; ++m) {
      const double g = ld_cg(gj + (size_t)m * Cr);
      P.du[(size_t)m * Cr + j] = (A)(P.batch_stats ? scale * (g - mg - xhat(m) * mgx) : scale * g);
    }
  }
}

// The last tile of sample n: totals of the row and column partials (NCHW: rows are channels, so
// the row totals are dmc and the column totals dms; channels_last the other way round), dh = W1^T
// dmc, and the gradient at the BatchNorm's output through the relu; then, in the batch's last
// sample, the BatchNorm backward. Out of line (see pool_epilogue).
// scratch: [coldots' red: blockDim * V][dmc: C][dh: Cr]
template <typename T, bool NHWC>
AK_NOINL void bwd_epilogue(const BwdParams<T>& P, int n, typename Acc<T>::type* scratch, int* flag) {
  using A = typename Acc<T>::type;
  const int C = P.C, HW = P.HW, Cr = P.Cr, R = NHWC ? HW : C, K = NHWC ? C : HW;
  const int tid = threadIdx.x, nt = blockDim.x;
  A* red = scratch;
  A* sdmc = red + (size_t)nt * Vec<T>::N;
  A* sdh = sdmc + C;
  A* dmc = P.dmc + (size_t)n * C;
  T* dms = P.dms + (size_t)n * HW;
  auto put = [&](bool channel, int i, A v) {
    if (channel) {
      sdmc[i] = v;
      dmc[i] = v;
    } else {
      dms[i] = Cvt<T>::from(v);
    }
  };
  const A* wr = P.ws_row + (size_t)n * P.Sk * R;
  for (int r = tid; r < R; r += nt) put(!NHWC, r, blocked_sum<A>(P.Sk, [&](int q) { return ld_cg(wr + (size_t)q * R + r); }));
  const A* wc = P.ws_col + (size_t)n * P.Sr * K;
  for (int k = tid; k < K; k += nt) put(NHWC, k, blocked_sum<A>(P.Sr, [&](int q) { return ld_cg(wc + (size_t)q * K + k); }));
  __syncthreads();
  coldots<T, A>(P.w1, sdmc, Cr, C, red, [&](int j, A dh) { sdh[j] = dh; });
  __syncthreads();
  for (int j = tid; j < Cr; j += nt) {
    const size_t i = (size_t)n * Cr + j;
    const A bn = bn_apply(P.bn_w, P.bn_b, j, P.u[i], P.bstat[j], P.bstat[Cr + j]);
    P.gy[i] = act_bwd(ACT_RELU, bn, sdh[j]);
    P.h[i] = act_fwd(ACT_RELU, bn);
  }
  if (arrive_last(P.counters, P.N, P.N, flag)) bn_backward(P);
}

// A sample's tile: rows [r0, r1) (NCHW: channels; channels_last: pixels) by the columns of
// segment ks (NCHW: pixels; channels_last: channels). G lanes per row, each with the same
// reduce_lane_elems() columns in every row (VV-element loads), so its per-column sums stay in
// registers across the rows its group takes; the per-row sums are group sums. The groups'
// column sums are added in a tree through shared memory. att = mc (op) ms: one factor is the
// row's (rv), the other the column's (cv); g = dy x sigmoid'(att), and the row and column sums
// are of g * cv and g * rv ("prod": d att / d rv = cv) or of g ("sum").
template <typename T, bool NHWC, int VV>
__global__ void __launch_bounds__(kThreads, 2) bam_bwd_reduce_kernel(const __grid_constant__ BwdParams<T> P) {
  using A = typename Acc<T>::type;
  constexpr int EPL = reduce_lane_elems<T>(), U = EPL / VV, UB = U < 4 ? U : 4;
  AK_DYNAMIC_SHARED(unsigned char, smem_raw);
  int* flag = reinterpret_cast<int*>(smem_raw);
  A* red = reinterpret_cast<A*>(smem_raw + kHeader);
  const int n = blockIdx.x / P.tiles, b = blockIdx.x - n * P.tiles;
  const int ks = b % P.Sk, rs = b / P.Sk;
  const int C = P.C, HW = P.HW, R = NHWC ? HW : C, K = NHWC ? C : HW;
  const size_t E = (size_t)C * HW;
  const T* xs = P.x + (size_t)n * E;
  const T* dys = P.dy + (size_t)n * E;
  const A* mc = P.mc + (size_t)n * C;
  const T* ms = P.ms + (size_t)n * HW;
  const int G = P.G, tid = threadIdx.x, gl = tid % G, grp = tid / G, ngrp = blockDim.x / G;
  const int combine = P.combine;
  const bool prod = combine == COMBINE_PROD;
  const int k0 = ks * P.seg + gl * VV;  // the lane's column j * G * VV + i is k0 + j * G * VV + i
  A cv[U][VV], ca[U][VV];
  AK_PRAGMA_UNROLL(U)
  for (int j = 0; j < U; ++j) {
    AK_PRAGMA_UNROLL(VV)
    for (int i = 0; i < VV; ++i) {
      const int k = k0 + j * G * VV + i;
      cv[j][i] = k < K ? (NHWC ? mc[k] : to_acc(ms[k])) : A(0);
      ca[j][i] = A(0);
    }
  }
  const int r0 = rs * P.rpb, r1 = min(R, r0 + P.rpb);
  for (int base = r0; base < r1; base += ngrp) {  // uniform trip count: the group sums need every lane
    const int r = base + grp;
    const bool active = r < r1;
    A ra = A(0);
    if (active) {
      const A rv = NHWC ? to_acc(ms[r]) : mc[r];
      const T* xr = xs + (size_t)r * K;
      const T* dyr = dys + (size_t)r * K;
      // UB positions at a time, every load issued before the first use (UB < U: the element path's
      // 16 positions of both streams and their sums did not fit 128 registers)
      AK_PRAGMA_UNROLL(U / UB)
      for (int j0 = 0; j0 < U; j0 += UB) {
        T xx[UB][VV], dd[UB][VV];
        AK_PRAGMA_UNROLL(UB)
        for (int jj = 0; jj < UB; ++jj) {
          const int k = k0 + (j0 + jj) * G * VV;
          if (k < K) {
            load_elems<T, VV>(xr + k, xx[jj]);
            load_elems<T, VV>(dyr + k, dd[jj]);
          }
        }
        AK_PRAGMA_UNROLL(UB)
        for (int jj = 0; jj < UB; ++jj) {
          const int j = j0 + jj;
          if (k0 + j * G * VV < K) {  // (VV > 1: K % VV == 0, a vector is in or out whole)
            AK_PRAGMA_UNROLL(VV)
            for (int i = 0; i < VV; ++i) {
              const A g = gate_bwd(GATE_SIGMOID, combine_att(combine, rv, cv[j][i]), to_acc(dd[jj][i]) * to_acc(xx[jj][i]));
              ra += prod ? g * cv[j][i] : g;
              ca[j][i] += prod ? g * rv : g;
            }
          }
        }
      }
    }
    ra = group_sum(ra, G);
    if (active && gl == 0) P.ws_row[((size_t)n * P.Sk + ks) * R + r] = ra;
  }
  tree_combine(
      grp, gl, ngrp, G,
      [&](int slot) {
        AK_PRAGMA_UNROLL(U)
        for (int j = 0; j < U; ++j) {
          AK_PRAGMA_UNROLL(VV)
          for (int i = 0; i < VV; ++i) red[slot * EPL + j * VV + i] = ca[j][i];
        }
      },
      [&](int slot) {
        AK_PRAGMA_UNROLL(U)
        for (int j = 0; j < U; ++j) {
          AK_PRAGMA_UNROLL(VV)
          for (int i = 0; i < VV; ++i) ca[j][i] += red[slot * EPL + j * VV + i];
        }
      });
  if (grp == 0) {
    A* out = P.ws_col + ((size_t)n * P.Sr + rs) * K;
    AK_PRAGMA_UNROLL(U)
    for (int j = 0; j < U; ++j) {
      AK_PRAGMA_UNROLL(VV)
      for (int i = 0; i < VV; ++i) {
        const int k = k0 + j * G * VV + i;
        if (k < K) out[k] = ca[j][i];
      }
    }
  }
  if (!arrive_last(P.counters, n, P.tiles, flag)) return;
  bwd_epilogue<T, NHWC>(P, n, red, flag);
}

// Blocks [0, N): sample n's dp = W0^T du (every du is out: the previous launch), stored as dx's
// per-channel term dp / HW. The others: the weight gradients (matvec.cuh's mlp_wgrad).
template <typename T>
__global__ void __launch_bounds__(kThreads) bam_bwd_mlp_kernel(const __grid_constant__ BwdParams<T> P) {
  using A = typename Acc<T>::type;
  const int N = P.N, C = P.C, Cr = P.Cr;
  if ((int)blockIdx.x >= N) {
    mlp_wgrad<T, A>(blockIdx.x - N, gridDim.x - N, N, C, Cr, P.dmc, P.h, P.du, P.p, P.dw1, P.db1, P.dw0, P.db0);
    return;
  }
  AK_DYNAMIC_SHARED(A, sdu);
  A* red = sdu + Cr;
  const int n = blockIdx.x;
  for (int j = threadIdx.x; j < Cr; j += blockDim.x) sdu[j] = P.du[(size_t)n * Cr + j];
  __syncthreads();
  A* coef = P.coef + (size_t)n * C;
  const A hw = A(P.HW);
  coldots<T, A>(P.w0, sdu, C, Cr, red, [&](int c, A dp) { coef[c] = dp / hw; });
}

template <typename T, bool NHWC>
__global__ void __launch_bounds__(kThreads) bam_bwd_dx_kernel(const __grid_constant__ BwdParams<T> P) {
  const int q = blockIdx.x / P.chunks, chunk = blockIdx.x - q * P.chunks;
  const int n = P.N - 1 - q;  // reverse order of the reduction: the tail of dy is still in L2
  const int E = P.C * P.HW, units = P.vec ? E / Vec<T>::N : E;
  const size_t off = (size_t)n * E, nC = (size_t)n * P.C;
  const int u0 = chunk * P.rs_span, u1 = min(units, u0 + P.rs_span);
  gate_range<T, NHWC, true, kStreamLoads>(P.dy + off, P.dx + off, P.mc + nC, P.ms + (size_t)n * P.HW, P.coef + nC,
                                         P.combine, P.C, P.HW, u0 + threadIdx.x, u1, blockDim.x, P.vec != 0,
                                         P.ms_vec != 0);
}

}  // namespace AK_BACKEND_NS
}  // namespace bam
}  // namespace ak

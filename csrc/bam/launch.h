// BAM launch logic (grid sizing, workspaces), shared by the nvcc TU (bam_cuda.cu) and the g++
// emulation TU (bam_emu.cpp). Defines the entry points bam_api.h declares, in ak::bam::cuda or
// ak::bam::emu (AK_BACKEND_NS, from cuda_compat.h).
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "bam_api.h"  // standard headers before cuda_compat.h (csrc/cuemu/README.md)
#include "../common/launch_utils.h"
#include "kernels.cuh"

namespace ak {
namespace bam {
namespace AK_BACKEND_NS {

// The device's properties, asked through one of BAM's kernels (for the arch of their image).
inline DevInfo dev_info() { return dev_info_of(bam_gate_kernel<float, false>); }

// Reduce blocks per sample wanted: the caller's hint, else about 4 blocks per SM over the batch
// and at most one per 8192 elements of a sample (the squeeze's rule, common/squeeze.cuh).
inline long long target_blocks(const Problem& pr, int sms) {
  if (pr.bps_hint > 0) return pr.bps_hint;
  const long long E = (long long)pr.C * pr.HW;
  return std::max(1LL, std::min(cdiv(4LL * sms, pr.N), std::max(1LL, cdiv(E, 8192))));
}

// The elementwise pass (gate, dx): 16-byte units where the layout and the pointers allow (see
// gate_range), 4 per thread and block.
template <typename T, typename Params>
inline void set_elementwise(Params& P, const Problem& pr, const void* src, const void* dst, const void* ms) {
  constexpr int V = Vec<T>::N;
  const long long E = (long long)pr.C * pr.HW;
  const bool vec = (pr.nhwc ? pr.C % V == 0 : E % V == 0) && aligned16(src) && aligned16(dst);
  P.vec = vec ? 1 : 0;
  P.ms_vec = (!pr.nhwc && pr.HW % V == 0 && aligned16(ms)) ? 1 : 0;
  P.rs_span = kThreads * 4;
  P.chunks = (int)std::max(1LL, cdiv(vec ? E / V : E, (long long)P.rs_span));
  if ((long long)pr.N * P.chunks >= (1LL << 31))
    throw std::runtime_error("bam: N*C*H*W = " + std::to_string(pr.N * E) + " is too large for one launch");
}

inline void check_smem(size_t bytes, const DevInfo& d, const Problem& pr) {
  if (bytes > (size_t)d.smem_optin)
    throw std::runtime_error("bam: C=" + std::to_string(pr.C) + ", Cr=" + std::to_string(pr.Cr) +
                             " need " + std::to_string(bytes) + " bytes of shared memory; the device allows " +
                             std::to_string(d.smem_optin) + " per block");
}

template <typename T>
void forward_t(const Problem& pr, const FwdIO& io, void* stream, const Alloc& alloc) {
  using A = typename Acc<T>::type;
  const DevInfo d = dev_info();
  FwdParams<T> P{};
  P.x = static_cast<const T*>(io.x);
  P.ms = static_cast<const T*>(io.ms);
  P.w0 = static_cast<const T*>(io.w0);
  P.b0 = static_cast<const T*>(io.b0);
  P.w1 = static_cast<const T*>(io.w1);
  P.b1 = static_cast<const T*>(io.b1);
  P.bn_w = static_cast<const A*>(io.bn_w);
  P.bn_b = static_cast<const A*>(io.bn_b);
  P.bn_mean = static_cast<const A*>(io.bn_mean);
  P.bn_var = static_cast<const A*>(io.bn_var);
  P.y = static_cast<T*>(io.y);
  P.p = static_cast<A*>(io.p);
  P.u = static_cast<A*>(io.u);
  P.mc = static_cast<A*>(io.mc);
  P.bstat = static_cast<A*>(io.bstat);
  P.counters = io.counters;
  P.N = pr.N;
  P.C = pr.C;
  P.HW = pr.HW;
  P.Cr = pr.Cr;
  P.batch_stats = pr.batch_stats ? 1 : 0;
  P.combine = pr.combine;
  P.eps = (A)pr.eps;
  const SqueezeGeom g = squeeze_geom<T>(pr.N, pr.C, pr.HW, pr.nhwc, false, d.sms, (int)target_blocks(pr, d.sms),
                                        aligned16(io.x), kThreads);
  P.bps = g.bps;
  P.S = g.S;
  P.G = g.G;
  P.seg_len = g.seg_len;
  P.upb = g.upb;
  P.vc = g.vc;
  P.ctv = g.ctv;
  P.ctiles = g.ctiles;
  set_elementwise<T>(P, pr, io.x, io.y, io.ms);
  P.ws = static_cast<A*>(alloc((size_t)pr.N * g.S * pr.C * sizeof(A)));
  // scratch: the squeeze's cross-row reduction, then the epilogue's p, u, h
  const size_t smem = kHeader + std::max<size_t>(g.red_elems, (size_t)pr.C + 2 * (size_t)pr.Cr) * sizeof(A);
  check_smem(smem, d, pr);
  const ak::Stream st = to_stream(stream);
  auto k1 = pr.nhwc ? bam_channel_pool_kernel<T, true> : bam_channel_pool_kernel<T, false>;
  smem_attr(k1, smem);
  ak::launch(k1, dim3((unsigned)((long long)pr.N * g.bps)), dim3(kThreads), smem, st, P);
  if (pr.batch_stats)
    ak::launch(bam_bn_relu_fc1_kernel<T>, dim3((unsigned)pr.N), dim3(kThreads), (size_t)pr.Cr * sizeof(A), st, P);
  auto k3 = pr.nhwc ? bam_gate_kernel<T, true> : bam_gate_kernel<T, false>;
  ak::launch(k3, dim3((unsigned)((long long)pr.N * P.chunks)), dim3(kThreads), (size_t)0, st, P);
}

template <typename T>
void backward_t(const Problem& pr, const BwdIO& io, void* stream, const Alloc& alloc) {
  using A = typename Acc<T>::type;
  constexpr int V = Vec<T>::N, EPL = reduce_lane_elems<T>();
  const DevInfo d = dev_info();
  BwdParams<T> P{};
  P.dy = static_cast<const T*>(io.dy);
  P.x = static_cast<const T*>(io.x);
  P.ms = static_cast<const T*>(io.ms);
  P.w0 = static_cast<const T*>(io.w0);
  P.w1 = static_cast<const T*>(io.w1);
  P.bn_w = static_cast<const A*>(io.bn_w);
  P.bn_b = static_cast<const A*>(io.bn_b);
  P.p = static_cast<const A*>(io.p);
  P.u = static_cast<const A*>(io.u);
  P.mc = static_cast<const A*>(io.mc);
  P.bstat = static_cast<const A*>(io.bstat);
  P.dx = static_cast<T*>(io.dx);
  P.dms = static_cast<T*>(io.dms);
  P.dw0 = static_cast<T*>(io.dw0);
  P.db0 = static_cast<T*>(io.db0);
  P.dw1 = static_cast<T*>(io.dw1);
  P.db1 = static_cast<T*>(io.db1);
  P.dbn_w = static_cast<A*>(io.dbn_w);
  P.dbn_b = static_cast<A*>(io.dbn_b);
  P.counters = io.counters;
  P.N = pr.N;
  P.C = pr.C;
  P.HW = pr.HW;
  P.Cr = pr.Cr;
  P.batch_stats = pr.batch_stats ? 1 : 0;
  P.combine = pr.combine;
  // reduce tiles (bam_bwd_reduce_kernel): rows R, row length K; a lane's EPL columns in VV-element
  // loads (16 bytes when every row is aligned: K % V == 0 and x, dy aligned; else 8 bytes where
  // that much is, as 14 x 14 maps of 2-byte types; else elements), G lanes a row (fewer for short
  // rows), a column segment of G * EPL; rows split so the batch gets target_blocks.
  const int R = pr.nhwc ? pr.HW : pr.C, K = pr.nhwc ? pr.C : pr.HW;
  auto rows_aligned = [&](int vv) {
    const uintptr_t a = (uintptr_t)vv * sizeof(T) - 1;
    return K % vv == 0 && ((reinterpret_cast<uintptr_t>(io.x) | reinterpret_cast<uintptr_t>(io.dy)) & a) == 0;
  };
  const int vv = rows_aligned(V) ? V : (V > 2 && rows_aligned(V / 2)) ? V / 2 : 1;
  P.G = std::min(32, pow2_at_least((int)std::max(1LL, cdiv(K, EPL))));
  P.seg = P.G * EPL;
  P.Sk = (int)cdiv(K, P.seg);
  const int ngrp = kThreads / P.G;
  const long long sr = std::min(std::max(1LL, cdiv(target_blocks(pr, d.sms), P.Sk)), cdiv(R, ngrp));
  P.rpb = (int)(cdiv(cdiv(R, sr), ngrp) * ngrp);
  P.Sr = (int)cdiv(R, P.rpb);
  P.tiles = P.Sk * P.Sr;
  if ((long long)pr.N * P.tiles >= (1LL << 31)) throw std::runtime_error("bam: too many reduce blocks");
  set_elementwise<T>(P, pr, io.dy, io.dx, io.ms);
  // workspace: row and column partials, dmc, coef (N*C each), gy, h, du (N*Cr each)
  const size_t nrow = (size_t)pr.N * P.Sk * R, ncol = (size_t)pr.N * P.Sr * K;
  const size_t nc = (size_t)pr.N * pr.C, ncr = (size_t)pr.N * pr.Cr;
  A* w = static_cast<A*>(alloc((nrow + ncol + 2 * nc + 3 * ncr) * sizeof(A)));
  P.ws_row = w;
  P.ws_col = w + nrow;
  P.dmc = P.ws_col + ncol;
  P.coef = P.dmc + nc;
  P.gy = P.coef + nc;
  P.h = P.gy + ncr;
  P.du = P.h + ncr;
  const ak::Stream st = to_stream(stream);
  // scratch: the tile's column sums (EPL per thread), then the epilogue's coldots scratch, dmc, dh
  const size_t smem1 = kHeader + std::max<size_t>((size_t)kThreads * EPL,
                                                  (size_t)kThreads * V + pr.C + pr.Cr) * sizeof(A);
  check_smem(smem1, d, pr);
  constexpr int V2 = V > 2 ? V / 2 : 1;  // (float64: no 8-byte path besides its elements)
  auto k1 = vv == V    ? (pr.nhwc ? bam_bwd_reduce_kernel<T, true, V> : bam_bwd_reduce_kernel<T, false, V>)
            : vv == V2 ? (pr.nhwc ? bam_bwd_reduce_kernel<T, true, V2> : bam_bwd_reduce_kernel<T, false, V2>)
                       : (pr.nhwc ? bam_bwd_reduce_kernel<T, true, 1> : bam_bwd_reduce_kernel<T, false, 1>);
  smem_attr(k1, smem1);
  ak::launch(k1, dim3((unsigned)((long long)pr.N * P.tiles)), dim3(kThreads), smem1, st, P);
  const long long wblocks = std::min(cdiv(mlp_wgrad_outputs(pr.C, pr.Cr, true), kThreads), 65535LL);
  const size_t smem2 = ((size_t)pr.Cr + (size_t)kThreads * V) * sizeof(A);
  check_smem(smem2, d, pr);
  auto k2 = bam_bwd_mlp_kernel<T>;
  smem_attr(k2, smem2);
  ak::launch(k2, dim3((unsigned)(pr.N + wblocks)), dim3(kThreads), smem2, st, P);
  auto k3 = pr.nhwc ? bam_bwd_dx_kernel<T, true> : bam_bwd_dx_kernel<T, false>;
  ak::launch(k3, dim3((unsigned)((long long)pr.N * P.chunks)), dim3(kThreads), (size_t)0, st, P);
}

void forward(const Problem& pr, const FwdIO& io, void* stream, const Alloc& alloc) {
  dispatch_dtype(pr.dtype, "bam", [&](auto t) { forward_t<decltype(t)>(pr, io, stream, alloc); });
}

void backward(const Problem& pr, const BwdIO& io, void* stream, const Alloc& alloc) {
  dispatch_dtype(pr.dtype, "bam", [&](auto t) { backward_t<decltype(t)>(pr, io, stream, alloc); });
}

}  // namespace AK_BACKEND_NS
}  // namespace bam
}  // namespace ak

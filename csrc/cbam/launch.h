// CBAM launch logic (grid sizing, workspaces, the pass sequence), shared by the nvcc TU
// (cbam_cuda.cu) and the g++ emulation TU (cbam_emu.cpp). Defines the entry points cbam_api.h
// declares, in ak::cbam::cuda or ak::cbam::emu (AK_BACKEND_NS, from cuda_compat.h).
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cbam_api.h"  // standard headers before cuda_compat.h (csrc/cuemu/README.md)
#include "../common/launch_utils.h"
#include "kernels.cuh"

namespace ak {
namespace cbam {
namespace AK_BACKEND_NS {

// The device's properties, asked through one of CBAM's kernels (for the arch of their image).
inline DevInfo dev_info() { return dev_info_of(cbam_channel_excite_kernel<float>); }

// Channel reductions: the squeeze's geometry (common/squeeze.cuh squeeze_geom, SE's and BAM's):
// about 4 blocks per SM over the batch, 8K elements a block at least; cspan, the channels a block
// reads (chan_range). *red_elems: the channels_last tiles' scratch for states of nf fields.
template <typename T>
ChanGeom chan_geom(int N, int C, int HW, bool nhwc, int sms, bool vec_ok, int nf, size_t* red_elems) {
  const SqueezeGeom s = squeeze_geom<T>(N, C, HW, nhwc, false, sms, 0, vec_ok, kThreads);
  ChanGeom g{s.bps, s.S, s.G, s.seg_len, s.upb, s.vc, s.ctv, s.ctiles, 0};
  g.cspan = nhwc ? g.ctv * g.vc : (int)std::min<long long>(C, g.upb / g.S + 2);
  *red_elems = nhwc ? (size_t)(kThreads / g.ctv) * g.ctv * g.vc * nf : 0;
  return g;
}

// Pixel reductions over the channels: NCHW: 32 columns (of vc pixels) a block, 8 thread rows down
// the channels; channels_last: G lanes a pixel (~2 16-byte loads a lane), 2 pixels a group.
// *red_elems: the NCHW tiles' scratch for states of nf fields.
template <typename T> PixGeom pix_geom(int C, int HW, bool nhwc, bool vec_ok, int nf, size_t* red_elems) {
  constexpr int V = Vec<T>::N;
  PixGeom g{};
  *red_elems = 0;
  if (!nhwc) {
    g.vc = (HW % V == 0 && vec_ok) ? V : 1;
    const int ncv = HW / g.vc;
    g.ctv = std::min(ncv, 32);
    g.tiles = (int)cdiv(ncv, g.ctv);
    *red_elems = (size_t)(kThreads / g.ctv) * g.ctv * g.vc * nf;
  } else {
    g.G = std::min(32, pow2_at_least((int)std::max(1LL, cdiv(cdiv(C, V), 2))));
    g.ppb = (kThreads / g.G) * 2;
    g.tiles = (int)cdiv(HW, g.ppb);
  }
  return g;
}

inline ConvGeom conv_geom(int H, int W) {
  ConvGeom g{};
  g.tw = std::min(W, 32);
  g.th = std::min(H, kThreads / g.tw);
  g.tiles_w = (int)cdiv(W, g.tw);
  g.tiles = g.tiles_w * (int)cdiv(H, g.th);
  return g;
}

// Element-wise tiles: up to 64 units across (a 1 KB row segment of 16-byte units), kMapUnits
// units a tile: the per-row and per-column factors a block stages stay a small part of its work.
template <typename T> MapGeom map_geom(int rows, int cols, bool vec) {
  constexpr int V = Vec<T>::N;
  MapGeom g{};
  g.vec = vec ? 1 : 0;
  const int vv = vec ? V : 1;
  const int tcv = (int)std::min<long long>(cdiv(cols, vv), 64);
  g.tc = tcv * vv;
  g.tr = std::min(rows, std::max(1, kMapUnits / tcv));
  g.rtiles = (int)cdiv(rows, g.tr);
  g.ctiles = (int)cdiv(cols, g.tc);
  return g;
}

// One workspace allocation carved into pieces, each 64-byte aligned: a first pass (base null)
// sizes it.
struct Carver {
  char* base = nullptr;
  size_t off = 0;
  template <typename X> X* take(size_t n) {
    X* p = base ? reinterpret_cast<X*>(base + off) : nullptr;
    off += (std::max<size_t>(n, 1) * sizeof(X) + 63) / 64 * 64;
    return p;
  }
};

template <typename F> inline void carve(const Alloc& alloc, F assign) {
  Carver sizing;
  assign(sizing);
  Carver c;
  c.base = static_cast<char*>(alloc(sizing.off));
  assign(c);
}

// Dynamic shared memory of a launch: bytes, checked against the device's opt-in limit.
template <typename K>
inline size_t smem_for(K kernel, size_t bytes, const DevInfo& d, const Problem& pr, const char* pass) {
  if (bytes > (size_t)d.smem_optin)
    throw std::runtime_error("cbam (cuda): C=" + std::to_string(pr.C) + ", Cr=" + std::to_string(pr.Cr) +
                             ", k=" + std::to_string(pr.K) + " need " + std::to_string(bytes) +
                             " bytes of shared memory in the " + pass + " pass; the device allows " +
                             std::to_string(d.smem_optin) + " per block (the triton backend has no such limit)");
  smem_attr(kernel, bytes);
  return bytes;
}

// The sizes and options both parameter structs carry.
template <typename Params> inline void set_problem(Params& P, const Problem& pr) {
  P.N = pr.N;
  P.C = pr.C;
  P.H = pr.H;
  P.W = pr.W;
  P.HW = pr.H * pr.W;
  P.Cr = pr.Cr;
  P.P = pool_passes(pr.pool);
  P.SP = spool_channels(pr.spool);
  P.K = pr.K;
  P.act = pr.act;
  P.gate = pr.gate;
  P.pool = pr.pool;
  P.spool = pr.spool;
  P.batch_stats = pr.batch_stats ? 1 : 0;
  P.spatial = pr.spatial ? 1 : 0;
}

// Rows of W2 a channel_excite block takes: one pass of rowdots' row groups (its lanes a row as
// rowdots picks them).
template <typename T> inline int excite_rows(int Cr) {
  constexpr int V = Vec<T>::N;
  const int kv = Cr % V == 0 ? Cr / V : Cr;
  return (kThreads / std::min(32, pow2_at_least((kv + 3) / 4))) * kMlpRows;
}

template <typename T, bool NHWC>
void launch_forward(FwdParams<T>& P, const Problem& pr, const FwdIO& io, const DevInfo& d, ak::Stream st,
                    const Alloc& alloc) {
  using A = typename Acc<T>::type;
  constexpr int V = Vec<T>::N;
  const int N = pr.N, C = pr.C, HW = P.HW, Cr = pr.Cr;
  size_t red_c = 0, red_p = 0;
  P.cg = chan_geom<T>(N, C, HW, NHWC, d.sms, aligned16(io.x), SumMax<A>::NF, &red_c);
  P.pg = pix_geom<T>(C, HW, NHWC, aligned16(io.x), SumMax<A>::NF, &red_p);
  P.kg = conv_geom(pr.H, pr.W);
  const int rows = NHWC ? HW : C, cols = NHWC ? C : HW;
  P.mg = map_geom<T>(rows, cols, cols % V == 0 && aligned16(io.x) && aligned16(io.y));
  P.excite_rows = excite_rows<T>(Cr);
  const long long conv_blocks = (long long)N * P.kg.tiles;
  carve(alloc, [&](Carver& c) {
    P.part_a = c.take<A>((size_t)N * P.cg.S * C);
    P.part_b = c.take<A>((size_t)N * P.cg.S * C);
    P.h = c.take<A>((size_t)N * Cr);
    P.mom = c.take<A>(pr.spatial && pr.batch_stats ? (size_t)conv_blocks * 3 : 0);
  });

  auto k1 = cbam_channel_pool_kernel<T, NHWC>;
  const size_t s1 =
      smem_for(k1, kHeader + std::max(red_c, (size_t)P.P * (C + Cr)) * sizeof(A), d, pr, "channel_pool");
  ak::launch(k1, dim3((unsigned)((long long)N * P.cg.bps)), dim3(kThreads), s1, st, P);
  auto k2 = cbam_channel_excite_kernel<T>;
  const size_t s2 = smem_for(k2, (size_t)Cr * sizeof(A), d, pr, "channel_excite");
  ak::launch(k2, dim3((unsigned)((long long)N * cdiv(C, P.excite_rows))), dim3(kThreads), s2, st, P);
  if (pr.spatial) {
    auto k3 = cbam_spatial_pool_kernel<T, NHWC>;
    const size_t s3 = smem_for(k3, ((size_t)C + red_p) * sizeof(A), d, pr, "spatial_pool");
    ak::launch(k3, dim3((unsigned)((long long)N * P.pg.tiles)), dim3(kThreads), s3, st, P);
    auto k4 = cbam_spatial_conv_kernel<T>;
    const size_t halo = (size_t)(P.kg.th + pr.K - 1) * (P.kg.tw + pr.K - 1);
    const size_t s4 = smem_for(k4, kHeader + ((size_t)P.SP * (pr.K * pr.K + halo) + 32 * 3) * sizeof(A), d, pr,
                               "spatial_conv");
    ak::launch(k4, dim3((unsigned)conv_blocks), dim3(kThreads), s4, st, P);
  }
  auto k5 = cbam_rescale_kernel<T, NHWC>;
  const size_t s5 = smem_for(k5, (size_t)(P.mg.tr + P.mg.tc) * sizeof(A), d, pr, "rescale");
  ak::launch(k5, dim3((unsigned)((long long)N * P.mg.rtiles * P.mg.ctiles)), dim3(kThreads), s5, st, P);
}

template <typename T>
void forward_t(const Problem& pr, const FwdIO& io, void* stream, const Alloc& alloc) {
  using A = typename Acc<T>::type;
  const DevInfo d = dev_info();
  FwdParams<T> P{};
  P.x = static_cast<const T*>(io.x);
  P.w1 = static_cast<const T*>(io.w1);
  P.b1 = static_cast<const T*>(io.b1);
  P.w2 = static_cast<const T*>(io.w2);
  P.b2 = static_cast<const T*>(io.b2);
  P.conv_w = static_cast<const A*>(io.conv_w);
  P.bn_w = static_cast<const A*>(io.bn_w);
  P.bn_b = static_cast<const A*>(io.bn_b);
  P.bn_mean = static_cast<const A*>(io.bn_mean);
  P.bn_var = static_cast<const A*>(io.bn_var);
  P.y = static_cast<T*>(io.y);
  P.pools = static_cast<A*>(io.pools);
  P.u = static_cast<A*>(io.u);
  P.z = static_cast<A*>(io.z);
  P.m = static_cast<A*>(io.m);
  P.t = static_cast<A*>(io.t);
  P.bstat = static_cast<A*>(io.bstat);
  P.counters = io.counters;
  P.eps = (A)pr.eps;
  set_problem(P, pr);
  const ak::Stream st = to_stream(stream);
  if (pr.nhwc)
    launch_forward<T, true>(P, pr, io, d, st, alloc);
  else
    launch_forward<T, false>(P, pr, io, d, st, alloc);
}

template <typename T, bool NHWC>
void launch_backward(BwdParams<T>& P, const Problem& pr, const BwdIO& io, const DevInfo& d, ak::Stream st,
                     const Alloc& alloc) {
  using A = typename Acc<T>::type;
  constexpr int V = Vec<T>::N;
  const int N = pr.N, C = pr.C, HW = P.HW, Cr = pr.Cr;
  const bool both = aligned16(io.x) && aligned16(io.dy);
  size_t red_c = 0, red_p = 0;
  P.cg = chan_geom<T>(N, C, HW, NHWC, d.sms, both, Sum2<A>::NF, &red_c);
  P.pg = pix_geom<T>(C, HW, NHWC, both, SumMaxCnt<A>::NF, &red_p);
  P.kg = conv_geom(pr.H, pr.W);
  const int rows = NHWC ? HW : C, cols = NHWC ? C : HW;
  P.mg = map_geom<T>(rows, cols, cols % V == 0 && both && aligned16(io.dx));
  const long long M = (long long)N * HW, conv_blocks = (long long)N * P.kg.tiles;
  const long long bn_blocks = cdiv(M, (long long)kThreads * kBnSpan);
  const int width = P.SP * pr.K * pr.K;
  const bool sp = pr.spatial;
  carve(alloc, [&](Carver& c) {
    P.pix = c.take<PixCoef<A>>(sp ? (size_t)M : 0);
    P.chan = c.take<ChanCoef<A>>((size_t)N * C);
    P.dss = c.take<A>(sp ? (size_t)M : 0);
    P.cnt = c.take<A>(sp ? (size_t)M : 0);
    P.dtn = c.take<A>(sp ? (size_t)M : 0);
    P.bn_part = c.take<A>(sp ? (size_t)bn_blocks * 2 : 0);
    P.conv_part = c.take<A>(sp ? (size_t)conv_blocks * width : 0);
    P.part_a = c.take<A>((size_t)N * P.cg.S * C);
    P.part_b = c.take<A>((size_t)N * P.cg.S * C);
    P.dz = c.take<A>((size_t)N * C);
    P.du = c.take<A>((size_t)N * P.P * Cr);
    P.h = c.take<A>((size_t)N * Cr);
  });

  if (sp) {
    auto k1 = cbam_bwd_spatial_reduce_kernel<T, NHWC>;
    const size_t s1 = smem_for(k1, ((size_t)C + red_p) * sizeof(A), d, pr, "bwd_spatial_reduce");
    ak::launch(k1, dim3((unsigned)((long long)N * P.pg.tiles)), dim3(kThreads), s1, st, P);
    auto k2 = cbam_bwd_spatial_bn_kernel<T>;
    const size_t s2 = smem_for(k2, kHeader + 32 * 2 * sizeof(A), d, pr, "bwd_spatial_bn");
    ak::launch(k2, dim3((unsigned)bn_blocks), dim3(kThreads), s2, st, P);
    auto k3 = cbam_bwd_spatial_conv_kernel<T>;
    const size_t halo = (size_t)(P.kg.th + pr.K - 1) * (P.kg.tw + pr.K - 1);
    const size_t s3 =
        smem_for(k3, kHeader + ((size_t)width + (1 + P.SP) * halo + kThreads) * sizeof(A), d, pr,
                 "bwd_spatial_conv");
    ak::launch(k3, dim3((unsigned)conv_blocks), dim3(kThreads), s3, st, P);
  }
  auto k4 = cbam_bwd_channel_reduce_kernel<T, NHWC>;
  const size_t epi = 2 * (size_t)C + (size_t)(1 + P.P) * Cr + (size_t)kThreads * V;
  const size_t s4 =
      smem_for(k4, kHeader + std::max(2 * (size_t)P.cg.cspan + red_c, epi) * sizeof(A), d, pr,
               "bwd_channel_reduce");
  ak::launch(k4, dim3((unsigned)((long long)N * P.cg.bps)), dim3(kThreads), s4, st, P);
  const long long wtotal = 2LL * C * Cr + C + Cr;
  ak::launch(cbam_bwd_weights_kernel<T>, dim3((unsigned)std::min(cdiv(wtotal, kThreads), 65535LL)), dim3(kThreads),
             (size_t)0, st, P);
  auto k6 = cbam_bwd_dx_kernel<T, NHWC>;
  const size_t s6 = smem_for(k6, 8 * (size_t)std::max(P.mg.tr, P.mg.tc) * sizeof(A), d, pr, "bwd_dx");
  ak::launch(k6, dim3((unsigned)((long long)N * P.mg.rtiles * P.mg.ctiles)), dim3(kThreads), s6, st, P);
}

template <typename T>
void backward_t(const Problem& pr, const BwdIO& io, void* stream, const Alloc& alloc) {
  using A = typename Acc<T>::type;
  const DevInfo d = dev_info();
  BwdParams<T> P{};
  P.dy = static_cast<const T*>(io.dy);
  P.x = static_cast<const T*>(io.x);
  P.w1 = static_cast<const T*>(io.w1);
  P.w2 = static_cast<const T*>(io.w2);
  P.conv_w = static_cast<const A*>(io.conv_w);
  P.bn_w = static_cast<const A*>(io.bn_w);
  P.bn_b = static_cast<const A*>(io.bn_b);
  P.pools = static_cast<const A*>(io.pools);
  P.u = static_cast<const A*>(io.u);
  P.z = static_cast<const A*>(io.z);
  P.m = static_cast<const A*>(io.m);
  P.t = static_cast<const A*>(io.t);
  P.bstat = static_cast<const A*>(io.bstat);
  P.dx = static_cast<T*>(io.dx);
  P.dw1 = static_cast<T*>(io.dw1);
  P.db1 = static_cast<T*>(io.db1);
  P.dw2 = static_cast<T*>(io.dw2);
  P.db2 = static_cast<T*>(io.db2);
  P.dconv_w = static_cast<A*>(io.dconv_w);
  P.dbn_w = static_cast<A*>(io.dbn_w);
  P.dbn_b = static_cast<A*>(io.dbn_b);
  P.counters = io.counters;
  set_problem(P, pr);
  P.vec_in = ((reinterpret_cast<uintptr_t>(io.x) ^ reinterpret_cast<uintptr_t>(io.dy)) & 15u) == 0 ? 1 : 0;
  const ak::Stream st = to_stream(stream);
  if (pr.nhwc)
    launch_backward<T, true>(P, pr, io, d, st, alloc);
  else
    launch_backward<T, false>(P, pr, io, d, st, alloc);
}

void forward(const Problem& pr, const FwdIO& io, void* stream, const Alloc& alloc) {
  dispatch_dtype(pr.dtype, "cbam", [&](auto t) { forward_t<decltype(t)>(pr, io, stream, alloc); });
}

void backward(const Problem& pr, const BwdIO& io, void* stream, const Alloc& alloc) {
  dispatch_dtype(pr.dtype, "cbam", [&](auto t) { backward_t<decltype(t)>(pr, io, stream, alloc); });
}

}  // namespace AK_BACKEND_NS
}  // namespace cbam
}  // namespace ak

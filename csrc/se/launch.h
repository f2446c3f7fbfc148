// SE launch logic (grid sizing, variant choice, workspace), shared by the nvcc TU (se_cuda.cu)
// and the g++ emulation TU (se_emu.cpp). Defines the entry points se_api.h declares, in
// ak::se::cuda or ak::se::emu (AK_BACKEND_NS, from cuda_compat.h).
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "se_api.h"  // standard headers before cuda_compat.h (csrc/cuemu/README.md)
#include "../common/launch_utils.h"
#include "kernels.cuh"
#include "batched.cuh"

namespace ak {
namespace se {
namespace AK_BACKEND_NS {

// Variants a build lacks (the dispatcher runs "split" instead and reports it): float64, the
// gradcheck dtype, has the split kernels only, and the pipelined kernels are compiled for sm_90
// and newer only (kernels.cuh) -- together ~20 s of nvcc time, for kernels no one would run.
template <typename T> constexpr bool has_fast_variants() { return sizeof(T) != 8; }
inline bool clusters_ok(const DevInfo& d) { return d.cc_major >= 9 && d.code_arch >= 90; }
inline bool pipelined_ok(const DevInfo& d) { return d.code_arch >= 90; }

// The device's properties, asked through one of SE's kernels (for the arch of their image).
inline DevInfo dev_info() { return dev_info_of(se_rescale_kernel<float>); }

// Geometry of the squeeze (forward) / reduction (backward) pass (common/squeeze.cuh).
using Geom = SqueezeGeom;
template <typename T>
Geom squeeze_geom(const Problem& pr, int sms, int bps_hint, bool vec_ok, int threads) {
  return ak::squeeze_geom<T>(pr.N, pr.C, pr.HW, pr.nhwc, pr.pool == POOL_AVGMAX, sms, bps_hint, vec_ok, threads);
}

// Shared memory of the fused kernel with `cl` blocks per sample (see se_fused_kernel).
template <typename T> inline size_t fused_smem_bytes(const Problem& pr, const Geom& g, int cl) {
  using A = typename Acc<T>::type;
  int c0, c1;
  fused_part(pr.C, pr.HW, pr.nhwc, cl, 0, c0, c1);
  const size_t part = ((size_t)(c1 - c0) * (pr.nhwc ? pr.C : pr.HW) * sizeof(T) + 15) / 16 * 16;
  return part + ((size_t)(cl > 1 ? 4 : 2) * pr.C + pr.Cr + g.red_elems) * sizeof(A);
}

// Blocks per sample of the fused kernel: 1 if the slab fits one block's shared memory, else the
// smallest cluster (sm_90: 2, 4, 8, or the non-portable 16 an H100 schedules) whose parts fit;
// 0 if none does.
template <typename T> inline int fused_cluster(const Problem& pr, const Geom& g, const DevInfo& d) {
  for (int cl = 1; cl <= (clusters_ok(d) ? 16 : 1); cl *= 2)
    if (fused_smem_bytes<T>(pr, g, cl) <= (size_t)d.smem_optin) return cl;
  return 0;
}

// Pipelined forward: bytes per work item (squeeze slice or rescale chunk; the ticket window,
// kPipeBlocksPerSM * #SMs items, must stay well inside L2 next to the lag), share of L2 the lag's
// slabs (squeezed, not yet rescaled) may fill.
constexpr long long kPipeItemBytes = 32 * 1024;
constexpr double kPipeL2Share = 0.3;

enum Variant { V_SPLIT = 0, V_FUSED = 1, V_PIPELINED = 2, V_BATCHED = 3 };
inline std::string variant_name(int v, int cl = 1) {
  if (v == V_FUSED) return cl > 1 ? "fused-cluster" + std::to_string(cl) : "fused";
  if (v == V_BATCHED) return "batched";
  return v == V_PIPELINED ? "pipelined" : "split";
}

// Samples between a squeeze and the rescale issued with it, in [1, N].
template <typename T> inline int pipe_lag(const Problem& pr, int lag_hint, const DevInfo& d) {
  if (lag_hint > 0) return std::min(lag_hint, pr.N);
  const double slab = (double)pr.C * pr.HW * sizeof(T);
  const long long lag = (long long)(kPipeL2Share * (double)d.l2 / slab);
  return (int)std::max(1LL, std::min<long long>(lag, pr.N));
}

// The variant to run and, for "fused", its blocks per sample (*cl).
template <typename T> inline int choose_variant(const Problem& pr, int variant, const DevInfo& d, int* cl) {
  *cl = 1;
  if (!has_fast_variants<T>()) return V_SPLIT;
  const Geom gf = squeeze_geom<T>(pr, d.sms, 0, true, kFusedThreads);
  *cl = fused_cluster<T>(pr, gf, d);
  if (variant == VAR_FUSED) {
    if (*cl == 0)
      throw std::runtime_error("se: the 'fused' variant needs " + std::to_string(fused_smem_bytes<T>(pr, gf, 1)) +
                               " bytes of shared memory (" +
                               (clusters_ok(d) ? "even split over a cluster of 16 blocks"
                                               : "no clusters: they need sm_90 code") +
                               "); the device allows " + std::to_string(d.smem_optin) + " per block");
    return V_FUSED;
  }
  if (variant == VAR_SPLIT) return V_SPLIT;
  if (variant == VAR_PIPELINED) return pipelined_ok(d) ? V_PIPELINED : V_SPLIT;
  if (variant == VAR_BATCHED) return pipelined_ok(d) ? V_BATCHED : V_SPLIT;  // (same device-code rule)
  // One block per sample: worth it when the slab fits and there is at least a wave of samples.
  // (Clusters and the pipelined and batched variants are not chosen automatically until a GPU
  // run has measured them.)
  if (*cl == 1 && pr.N >= d.sms) return V_FUSED;
  return V_SPLIT;
}

// The sizes and options both parameter structs carry.
template <typename Params> inline void set_problem(Params& P, const Problem& pr) {
  P.N = pr.N;
  P.C = pr.C;
  P.HW = pr.HW;
  P.Cr = pr.Cr;
  P.act = pr.act;
  P.gate = pr.gate;
}

// The reduction geometry both parameter structs carry.
template <typename Params> inline void set_geom(Params& P, const Geom& g) {
  P.bps = g.bps;
  P.S = g.S;
  P.G = g.G;
  P.seg_len = g.seg_len;
  P.upb = g.upb;
  P.vc = g.vc;
  P.ctv = g.ctv;
  P.ctiles = g.ctiles;
}

// Reduce slices per sample: the caller's hint, else (pipelined) slices about as large as the
// elementwise chunks they are interleaved with, else 0 (squeeze_geom's choice).
template <typename T> inline int reduce_slices_hint(const Problem& pr, int bps_hint, bool pipelined, const DevInfo& d) {
  if (bps_hint > 0 || !pipelined) return bps_hint;
  const long long bytes = (long long)pr.C * pr.HW * (long long)sizeof(T);
  return (int)std::min<long long>(4LL * d.sms, std::max(1LL, cdiv(bytes, kPipeItemBytes)));
}

// A pipelined launch's lag and ticket (after the N per-sample counters); returns its grid (the
// item count, capped by launch_pipelined at what the SMs hold), or 0 when the 32-bit ticket
// would wrap (then run the split kernels).
template <typename T, typename Params>
inline int setup_pipeline(Params& P, const Problem& pr, int lag_hint, const DevInfo& d, unsigned* counters) {
  const long long total = (long long)pr.N * (P.bps + P.chunks);
  const int grid = (int)std::min<long long>(total, (long long)d.sms * kPipeBlocksPerSM);
  if (total + grid >= (1LL << 32)) return 0;
  P.lag = pipe_lag<T>(pr, lag_hint, d);
  P.ticket = counters + pr.N;
  return grid;
}

// A batched launch's ticket and group counters (after the N per-sample counters: the IO structs
// carry counters_needed(N)); P.grp and the tile counts set. Returns its grid (one item a block), or
// 0 when that many blocks would not fit a grid (then run the split kernels).
template <typename Params>
inline int setup_batched(Params& P, const Problem& pr, int bps, unsigned* counters) {
  const long long total = batch_items(pr.N, P.grp, bps, P.l1_tiles, P.l2_tiles);
  if (total >= (1LL << 31)) return 0;
  P.ticket = counters + pr.N;
  P.gcnt = counters + pr.N + 1;
  return (int)total;
}

template <typename K, typename Params>
inline void launch_pipelined(K kernel, int grid, size_t smem, ak::Stream st, Params& P) {
  smem_attr(kernel, smem);
  const int per_sm = std::max(1, std::min(kPipeBlocksPerSM, ak::max_active_blocks(kernel, kThreads, smem)));
  grid = (int)std::min<long long>(grid, (long long)per_sm * dev_info().sms);
  ak::launch(kernel, dim3((unsigned)grid), dim3(kThreads), smem, st, P);
}

template <typename T, int POOL, bool NHWC>
void launch_forward(FwdParams<T>& P, int var, int grid, const Geom& g, size_t smem, ak::Stream st,
                    const Alloc& alloc) {
  using A = typename Acc<T>::type;
  if constexpr (has_fast_variants<T>()) {
    if (var == V_FUSED) {
      auto k = se_fused_kernel<T, POOL, NHWC>;
      smem_attr(k, smem);
      const dim3 grid((unsigned)((long long)P.N * P.cl));
      if (P.cl > 1)
        ak::launch_cluster(k, grid, dim3(kFusedThreads), smem, st, (unsigned)P.cl, P);
      else
        ak::launch(k, grid, dim3(kFusedThreads), smem, st, P);
      return;
    }
  }
  const size_t ws = (size_t)P.N * g.S * P.C;
  A* w = static_cast<A*>(alloc(2 * ws * sizeof(A)));
  P.ws_a = w;
  P.ws_b = w + ws;
  if constexpr (has_fast_variants<T>()) {
    if (var == V_PIPELINED) {
      launch_pipelined(se_pipelined_kernel<T, POOL, NHWC>, grid, smem, st, P);
      return;
    }
  }
  auto k1 = se_squeeze_excite_kernel<T, POOL, NHWC>;
  long long blocks = (long long)P.N * g.bps;
  if constexpr (has_fast_variants<T>()) {
    if (var == V_BATCHED) {  // squeeze slices and the groups' layer tiles, one item a block
      const size_t groups = (size_t)cdiv(P.N, P.grp);
      P.part = static_cast<A*>(alloc(std::max<size_t>(1, groups * P.l1_tiles * kGroupMax * P.Cr) * sizeof(A)));
      k1 = se_squeeze_batched_kernel<T, POOL, NHWC>;
      blocks = grid;
    }
  }
  smem_attr(k1, smem);
  ak::launch(k1, dim3((unsigned)blocks), dim3(kThreads), smem, st, P);
  auto k2 = se_rescale_kernel<T>;
  ak::launch(k2, dim3((unsigned)((long long)P.N * P.chunks)), dim3(kThreads), (size_t)0, st, P);
}

template <typename T>
std::string forward_t(const Problem& pr, const FwdIO& io, int variant, int bps_hint, int lag_hint,
                      void* stream, const Alloc& alloc) {
  using A = typename Acc<T>::type;
  constexpr int V = Vec<T>::N;
  const DevInfo d = dev_info();
  int cl = 1;
  int var = choose_variant<T>(pr, variant, d, &cl);
  const bool fused = var == V_FUSED;
  FwdParams<T> P{};
  P.x = static_cast<const T*>(io.x);
  P.w1 = static_cast<const T*>(io.w1);
  P.b1 = static_cast<const T*>(io.b1);
  P.w2 = static_cast<const T*>(io.w2);
  P.b2 = static_cast<const T*>(io.b2);
  P.y = static_cast<T*>(io.y);
  P.s = static_cast<A*>(io.s);
  P.z = static_cast<A*>(io.z);
  P.u = static_cast<A*>(io.u);
  P.p = static_cast<A*>(io.p);
  P.pmax = static_cast<A*>(io.pmax);
  P.counters = io.counters;
  set_problem(P, pr);
  // NCHW vectors may straddle channels (scale_range), so what counts is the sample, not the row
  const long long E = (long long)pr.C * pr.HW;
  const bool vec_scale = (pr.nhwc ? pr.C % V == 0 : E % V == 0) && aligned16(io.x) && aligned16(io.y);
  P.vec = vec_scale ? 1 : 0;
  const long long units = vec_scale ? E / V : E;
  // rescale work per block (item): 4 units per thread (split), 8 (pipelined: fewer tickets)
  P.rs_span = kThreads * (var == V_PIPELINED ? 8 : 4);
  P.chunks = (int)std::max(1LL, cdiv(units, (long long)P.rs_span));
  P.nhwc = pr.nhwc ? 1 : 0;
  Geom g;
  size_t smem;
  int grid = 0;
  if (fused) {
    g = squeeze_geom<T>(pr, d.sms, 0, true, kFusedThreads);
    P.cl = cl;
    smem = fused_smem_bytes<T>(pr, g, cl);
    if (E % V == 0 && aligned16(io.x)) P.vec |= 2;
  } else {
    g = squeeze_geom<T>(pr, d.sms, reduce_slices_hint<T>(pr, bps_hint, var == V_PIPELINED, d), aligned16(io.x),
                        kThreads);
    if (var == V_PIPELINED) {
      P.bps = g.bps;
      grid = setup_pipeline<T>(P, pr, lag_hint, d, io.counters);
      if (grid == 0) var = V_SPLIT;
    }
    size_t scratch = (size_t)pr.C + pr.Cr;  // the epilogue's vectors
    if (var == V_BATCHED) {  // fc1 tiles: 256-column chunks of W1; fc2 tiles: one pass of group_rows
      P.grp = std::min(kGroupMax, pr.N);
      P.l1_tiles = io.w1 ? (int)cdiv(pr.C, kGroupChunk) : 0;
      P.l2_rows = group_rows_per_pass(pr.Cr, pr.Cr % V == 0 && aligned16(io.w2), V);
      P.l2_tiles = (int)cdiv(pr.C, P.l2_rows);
      grid = setup_batched(P, pr, g.bps, io.counters);
      if (grid == 0) var = V_SPLIT;
      else scratch = (size_t)kGroupMax * kGroupChunk;  // a layer tile's staged inputs
    }
    smem = kHeader + std::max<size_t>(g.red_elems, scratch) * sizeof(A);
    if (smem > (size_t)d.smem_optin)
      throw std::runtime_error("se: C=" + std::to_string(pr.C) + " needs too much shared memory");
  }
  set_geom(P, g);
  const ak::Stream st = to_stream(stream);
  const int key = (pr.pool == POOL_AVGMAX ? 2 : 0) + (pr.nhwc ? 1 : 0);
  switch (key) {
    case 0: launch_forward<T, POOL_AVG, false>(P, var, grid, g, smem, st, alloc); break;
    case 1: launch_forward<T, POOL_AVG, true>(P, var, grid, g, smem, st, alloc); break;
    case 2: launch_forward<T, POOL_AVGMAX, false>(P, var, grid, g, smem, st, alloc); break;
    default: launch_forward<T, POOL_AVGMAX, true>(P, var, grid, g, smem, st, alloc); break;
  }
  return variant_name(var, fused ? cl : 1);
}

template <typename T, int POOL, bool NHWC>
void launch_backward(BwdParams<T>& P, int var, int grid, const Geom& g, size_t smem, ak::Stream st) {
  const long long total = mlp_wgrad_outputs(P.C, P.Cr, P.w1 != nullptr);
  const long long wblocks = std::min(cdiv(total, kThreads), 65535LL);
  auto k1 = se_bwd_reduce_kernel<T, POOL, NHWC>;
  long long blocks = (long long)P.N * g.bps;
  if constexpr (has_fast_variants<T>()) {
    if (var == V_PIPELINED) {
      launch_pipelined(se_bwd_pipelined_kernel<T, POOL, NHWC>, grid, smem, st, P);
      ak::launch(se_wgrad_kernel<T>, dim3((unsigned)wblocks), dim3(kThreads), (size_t)0, st, P);
      return;
    }
    if (var == V_BATCHED) {  // reduction slices and the groups' dh / dp tiles, one item a block
      k1 = se_bwd_reduce_batched_kernel<T, POOL, NHWC>;
      blocks = grid;
    }
  }
  smem_attr(k1, smem);
  ak::launch(k1, dim3((unsigned)blocks), dim3(kThreads), smem, st, P);
  ak::launch(se_wgrad_kernel<T>, dim3((unsigned)wblocks), dim3(kThreads), (size_t)0, st, P);
  ak::launch(se_dx_kernel<T>, dim3((unsigned)((long long)P.N * P.chunks)), dim3(kThreads),
             (size_t)0, st, P);
}

template <typename T>
void backward_t(const Problem& pr, const BwdIO& io, int variant, int bps_hint, int lag_hint, void* stream,
                const Alloc& alloc) {
  using A = typename Acc<T>::type;
  constexpr int V = Vec<T>::N;
  const DevInfo d = dev_info();
  BwdParams<T> P{};
  P.dy = static_cast<const T*>(io.dy);
  P.x = static_cast<const T*>(io.x);
  P.w1 = static_cast<const T*>(io.w1);
  P.w2 = static_cast<const T*>(io.w2);
  P.s = static_cast<const A*>(io.s);
  P.z = static_cast<const A*>(io.z);
  P.u = static_cast<const A*>(io.u);
  P.p = static_cast<const A*>(io.p);
  P.pmax = static_cast<const A*>(io.pmax);
  P.dx = static_cast<T*>(io.dx);
  P.dw1 = static_cast<T*>(io.dw1);
  P.db1 = static_cast<T*>(io.db1);
  P.dw2 = static_cast<T*>(io.dw2);
  P.db2 = static_cast<T*>(io.db2);
  P.counters = io.counters;
  set_problem(P, pr);
  const bool same_align =
      ((reinterpret_cast<uintptr_t>(io.x) ^ reinterpret_cast<uintptr_t>(io.dy)) & 15u) == 0;
  const bool vec_in = pr.nhwc ? (aligned16(io.x) && aligned16(io.dy)) : same_align;
  P.vec_in = vec_in ? 1 : 0;
  const long long E = (long long)pr.C * pr.HW;
  const bool fast = has_fast_variants<T>() && pipelined_ok(d);
  int var = fast && variant == VAR_PIPELINED ? V_PIPELINED : fast && variant == VAR_BATCHED ? V_BATCHED : V_SPLIT;
  const bool pipelined = var == V_PIPELINED;
  const Geom g = squeeze_geom<T>(pr, d.sms, reduce_slices_hint<T>(pr, bps_hint, pipelined, d), vec_in, kThreads);
  set_geom(P, g);
  const bool vec = (pr.nhwc ? pr.C % V == 0 : E % V == 0) && aligned16(io.x) && aligned16(io.dy) &&
                   aligned16(io.dx);  // (NCHW: see forward_t)
  P.vec = vec ? 1 : 0;
  P.rs_span = kThreads * (pipelined ? 8 : 4);
  P.chunks = (int)std::max(1LL, cdiv(vec ? E / V : E, (long long)P.rs_span));
  P.nhwc = pr.nhwc ? 1 : 0;
  P.pool = pr.pool;
  int grid = 0;
  if (var == V_PIPELINED) {
    grid = setup_pipeline<T>(P, pr, lag_hint, d, io.counters);
    if (grid == 0) var = V_SPLIT;
  }
  size_t parts = 0;
  if (var == V_BATCHED) {  // dh tiles: 256-row chunks of W2; dp tiles: kThreads columns of W1
    P.grp = std::min(kGroupMax, pr.N);
    P.l1_tiles = (int)cdiv(pr.C, kGroupChunk);
    P.l2_cols = kThreads;
    P.l2_tiles = io.w1 ? (int)cdiv(pr.C, P.l2_cols) : 0;
    grid = setup_batched(P, pr, g.bps, io.counters);
    if (grid == 0) var = V_SPLIT;
    else parts = (size_t)cdiv(pr.N, P.grp) * P.l1_tiles * kGroupMax * pr.Cr;
  }
  // workspace: partials (2 x N*S*C), dz, coef_a, coef_b (N*C each), du, h (N*Cr each), batched: dh parts
  const size_t nsc = (size_t)pr.N * g.S * pr.C, nc = (size_t)pr.N * pr.C, ncr = (size_t)pr.N * pr.Cr;
  A* w = static_cast<A*>(alloc((2 * nsc + 3 * nc + 2 * ncr + parts) * sizeof(A)));
  P.ws_a = w;
  P.ws_b = w + nsc;
  P.dz = w + 2 * nsc;
  P.coef_a = P.dz + nc;
  P.coef_b = P.coef_a + nc;
  P.du = P.coef_b + nc;
  P.h = P.du + ncr;
  P.part = parts ? P.h + ncr : nullptr;
  // scratch: reduction tiles, or the epilogue's vectors, or (pipelined dx) two coefficient ranges,
  // or (batched) a tile's staged inputs and its k-parts' sums
  const size_t smem =
      kHeader + std::max<size_t>({g.red_elems,
                                  var == V_BATCHED ? (size_t)kGroupMax * (kGroupChunk + kThreads)
                                                   : (size_t)pr.C + pr.Cr + (size_t)kThreads * V,
                                  var == V_PIPELINED ? 2 * (size_t)pr.C : 0}) * sizeof(A);
  if (smem > (size_t)d.smem_optin)
    throw std::runtime_error("se: C=" + std::to_string(pr.C) + " needs too much shared memory");
  const ak::Stream st = to_stream(stream);
  const int key = (pr.pool == POOL_AVGMAX ? 2 : 0) + (pr.nhwc ? 1 : 0);
  switch (key) {
    case 0: launch_backward<T, POOL_AVG, false>(P, var, grid, g, smem, st); break;
    case 1: launch_backward<T, POOL_AVG, true>(P, var, grid, g, smem, st); break;
    case 2: launch_backward<T, POOL_AVGMAX, false>(P, var, grid, g, smem, st); break;
    default: launch_backward<T, POOL_AVGMAX, true>(P, var, grid, g, smem, st); break;
  }
}

std::string forward(const Problem& pr, const FwdIO& io, int variant, int bps_hint, int lag_hint,
                    void* stream, const Alloc& alloc) {
  return dispatch_dtype(pr.dtype, "se", [&](auto t) {
    return forward_t<decltype(t)>(pr, io, variant, bps_hint, lag_hint, stream, alloc);
  });
}

std::string forward_variant(const Problem& pr, int variant) {
  const DevInfo d = dev_info();
  int cl = 1;
  const int v = dispatch_dtype(pr.dtype, "se", [&](auto t) { return choose_variant<decltype(t)>(pr, variant, d, &cl); });
  return variant_name(v, cl);
}

void backward(const Problem& pr, const BwdIO& io, int variant, int bps_hint, int lag_hint, void* stream,
              const Alloc& alloc) {
  dispatch_dtype(pr.dtype, "se", [&](auto t) {
    backward_t<decltype(t)>(pr, io, variant, bps_hint, lag_hint, stream, alloc);
  });
}

}  // namespace AK_BACKEND_NS
}  // namespace se
}  // namespace ak

// SCA launch logic (grid sizes, workspaces, the passes of each order), shared by the nvcc TU
// (sca_cuda.cu) and the g++ emulation TU (sca_emu.cpp). Defines the entry points sca_api.h
// declares, in ak::sca::cuda or ak::sca::emu (AK_BACKEND_NS, from cuda_compat.h).
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "sca_api.h"  // standard headers before cuda_compat.h (csrc/cuemu/README.md)
#include "../common/launch_utils.h"
#include "kernels.cuh"

namespace ak {
namespace sca {
namespace AK_BACKEND_NS {

inline DevInfo dev_info() { return dev_info_of(sca_apply_kernel<float>); }

template <typename K, typename... Args>
inline void go(K kernel, long long grid, int block, size_t smem, ak::Stream st, Args... args) {
  if (grid < 1 || grid > 2147483647LL) throw std::runtime_error("sca: grid of " + std::to_string(grid) + " blocks");
  smem_attr(kernel, smem);
  ak::launch(kernel, dim3((unsigned)grid), dim3(block), smem, st, args...);
}

// The shape, options and every kernel's geometry (kernels.cuh's Params).
template <typename T> Params<T> make_params(const Problem& pr) {
  using A = AccT<T>;
  using Cfg = GemmCfg<T>;
  Params<T> p{};
  p.N = pr.N;
  p.C = pr.C;
  p.HW = pr.HW;
  p.d = pr.d;
  p.order = pr.order;
  p.has_c = pr.order != ORDER_S;
  p.has_s = pr.order != ORDER_C;
  p.k_c = p.has_c ? pr.k_c : 0;
  p.k_s = p.has_s ? pr.k_s : 0;
  p.nhwc = pr.nhwc;
  p.cs = pr.scale ? A(pr.C) : A(1);
  p.ss = pr.scale ? A(pr.HW) : A(1);
  p.sc = pr.nhwc ? 1 : pr.HW;
  p.sl = pr.nhwc ? pr.C : 1;
  p.n_kb_h = (int)std::max(1LL, cdiv(std::max(p.k_c, p.k_s), kHidUnits));
  // channel pooling: 8 channels a block (a warp down each location row) for NCHW, 32 (a warp
  // across each pixel's channels) for channels_last; HW split until the grid has ~4 blocks per SM
  p.bc = pr.nhwc ? 32 : 8;
  p.n_cb = (int)cdiv(pr.C, p.bc);
  long long split = pr.split_hint > 0
                        ? pr.split_hint
                        : std::min(cdiv(4LL * dev_info().sms, (long long)pr.N * p.n_cb), std::max(1LL, pr.HW / 1024LL));
  split = std::max(1LL, std::min<long long>(split, pr.HW));
  p.hw_per_split = (int)cdiv(pr.HW, split);
  p.n_split = (int)cdiv(pr.HW, p.hw_per_split);
  p.n_lb = (int)cdiv(pr.HW, Cfg::BM);
  p.n_kb = (int)std::max(1LL, cdiv(p.k_s, Cfg::BN));
  p.n_kb_dw = (int)std::max(1LL, cdiv(p.k_s, Cfg::BM));
  p.n_gcb = (int)cdiv(pr.C, Cfg::BN);
  p.rcb = (int)cdiv(pr.C, kTile);
  p.rlb = (int)cdiv(pr.HW, kTile);
  p.n_cbc = (int)cdiv(pr.C, kTile);
  p.n_db = (int)std::max(1LL, cdiv(pr.d, kGemmThreads));
  return p;
}

// A workspace of n elements of U from alloc (null when n is 0: the order lacks it).
template <typename U> U* ws(const Alloc& alloc, long long n) {
  return n > 0 ? static_cast<U*>(alloc((size_t)n * sizeof(U))) : nullptr;
}

template <typename T> void forward_t(const Problem& pr, const FwdIO& io, ak::Stream st, const Alloc& alloc) {
  using A = AccT<T>;
  using Cfg = GemmCfg<T>;
  Params<T> p = make_params<T>(pr);
  p.V = static_cast<const T*>(io.V);
  p.h = static_cast<const T*>(io.h);
  p.w_c = static_cast<const T*>(io.w_c);
  p.b_c = static_cast<const T*>(io.b_c);
  p.W_hc = static_cast<const T*>(io.W_hc);
  p.u_c = static_cast<const T*>(io.u_c);
  p.W_s = static_cast<const T*>(io.W_s);
  p.b_s = static_cast<const T*>(io.b_s);
  p.W_hs = static_cast<const T*>(io.W_hs);
  p.u_s = static_cast<const T*>(io.u_s);
  p.X = static_cast<T*>(io.X);
  p.hc = static_cast<A*>(io.hc);
  p.hs = static_cast<A*>(io.hs);
  p.v = static_cast<A*>(io.v);
  p.beta = static_cast<A*>(io.beta);
  p.alpha = static_cast<A*>(io.alpha);
  p.counters = io.counters;
  const long long N = pr.N;
  p.ws_pool = p.has_c && p.n_split > 1 ? ws<A>(alloc, N * p.n_cb * p.n_split * p.bc) : nullptr;
  p.wsm_c = p.has_c ? ws<A>(alloc, 2 * N * p.n_cb) : nullptr;
  p.wsm_s = p.has_s ? ws<A>(alloc, 2 * N * p.n_lb) : nullptr;

  go(sca_hidden_kernel<T>, N * p.n_kb_h, kGemmThreads, 0, st, p);
  auto channel = [&](int weighted) {
    go(sca_channel_kernel<T>, N * p.n_cb * p.n_split, kThreads, 0, st, p, weighted);
  };
  auto spatial = [&](int fold) {
    go(sca_spatial_kernel<T>, N * p.n_lb, kGemmThreads, Cfg::kBytes + (Cfg::BM + 2) * sizeof(A) + 16, st, p, fold);
  };
  switch (pr.order) {
    case ORDER_CS: channel(0); spatial(1); break;
    case ORDER_SC: spatial(0); channel(1); break;
    case ORDER_C: channel(0); break;
    default: spatial(0); break;
  }
  const long long total = N * pr.C * pr.HW;
  go(sca_apply_kernel<T>, std::min(cdiv(total, kThreads), 32LL * dev_info().sms), kThreads, 0, st, p);
}

template <typename T> void backward_t(const Problem& pr, const BwdIO& io, ak::Stream st, const Alloc& alloc) {
  using A = AccT<T>;
  using Cfg = GemmCfg<T>;
  Params<T> p = make_params<T>(pr);
  p.dX = static_cast<const T*>(io.dX);
  p.V = static_cast<const T*>(io.V);
  p.h = static_cast<const T*>(io.h);
  p.w_c = static_cast<const T*>(io.w_c);
  p.W_hc = static_cast<const T*>(io.W_hc);
  p.u_c = static_cast<const T*>(io.u_c);
  p.W_s = static_cast<const T*>(io.W_s);
  p.W_hs = static_cast<const T*>(io.W_hs);
  p.u_s = static_cast<const T*>(io.u_s);
  p.hc = const_cast<A*>(static_cast<const A*>(io.hc));
  p.hs = const_cast<A*>(static_cast<const A*>(io.hs));
  p.v = const_cast<A*>(static_cast<const A*>(io.v));
  p.beta = const_cast<A*>(static_cast<const A*>(io.beta));
  p.alpha = const_cast<A*>(static_cast<const A*>(io.alpha));
  p.dbeta = static_cast<const A*>(io.dbeta);
  p.dalpha = static_cast<const A*>(io.dalpha);
  p.dV = static_cast<T*>(io.dV);
  p.dh = static_cast<T*>(io.dh);
  p.dw_c = static_cast<T*>(io.dw_c);
  p.db_c = static_cast<T*>(io.db_c);
  p.dW_hc = static_cast<T*>(io.dW_hc);
  p.du_c = static_cast<T*>(io.du_c);
  p.dc_c = static_cast<T*>(io.dc_c);
  p.dW_s = static_cast<T*>(io.dW_s);
  p.db_s = static_cast<T*>(io.db_s);
  p.dW_hs = static_cast<T*>(io.dW_hs);
  p.du_s = static_cast<T*>(io.du_s);
  p.dc_s = static_cast<T*>(io.dc_s);
  const long long N = pr.N, C = pr.C, HW = pr.HW, kc = p.k_c, ks = p.k_s;
  const bool hc = p.has_c, hs = p.has_s, both = hc && hs;
  // the dP scratch holds S samples' (HW, k_s): the samples run in chunks of S
  const long long S = hs ? std::max(1LL, std::min(N, pr.dp_budget / std::max(1LL, HW * ks))) : N;
  std::vector<std::pair<int, int>> chunks;
  for (long long n0 = 0; n0 < N; n0 += S) chunks.emplace_back((int)n0, (int)std::min(S, N - n0));
  p.loc = ws<A>(alloc, hs ? N * p.rcb * HW : 0);
  p.loc2 = ws<A>(alloc, pr.order == ORDER_SC ? N * p.rcb * HW : 0);
  p.ch = ws<A>(alloc, hc ? N * p.rlb * C : 0);
  p.g2 = ws<A>(alloc, pr.order == ORDER_CS ? N * p.n_kb_dw * C : 0);
  p.dzc = ws<A>(alloc, hc ? N * C : 0);
  p.dzs = ws<A>(alloc, hs ? N * HW : 0);
  p.dv = ws<A>(alloc, hc ? N * C : 0);
  p.rhc = ws<A>(alloc, N * p.n_cbc * kc);
  p.ruc = ws<A>(alloc, N * p.n_cbc * kc);
  p.rwc = ws<A>(alloc, N * p.n_cbc * kc);
  p.rhs = ws<A>(alloc, N * p.n_lb * ks);
  p.rus = ws<A>(alloc, N * p.n_lb * ks);
  p.dhc = ws<A>(alloc, N * kc);
  p.dhs = ws<A>(alloc, N * ks);
  p.dws_acc = ws<A>(alloc, chunks.size() > 1 ? ks * C : 0);
  p.dP = ws<T>(alloc, hs ? S * HW * ks : 0);

  auto reduce = [&](bool mode_dv) {
    auto k = sca_bwd_reduce_kernel<T>;
    const long long grid = N * p.rcb * p.rlb;
    if (!mode_dv)
      go(k, grid, kThreads, 0, st, p, p.loc, 0, (int)hs, (int)hc, (int)both, (int)both, both ? p.cs * p.ss : p.ss,
         A(1), both ? p.cs * p.ss : p.cs);
    else  // "sc": the dv share of alpha's gradient, sum_c V dv[c] ss / HW
      go(k, grid, kThreads, 0, st, p, p.loc2, 1, 1, 0, 0, 0, p.ss, A(HW), A(1));
  };
  auto softmax_bwd = [&](const A* prob, const A* r1, int R1, const A* r2, int R2, const A* ext, A* dz, int size) {
    go(sca_softmax_bwd_kernel<T>, N, kThreads, 0, st, p, prob, r1, R1, r2, R2, ext, dz, size);
  };
  auto channel_bwd = [&]() { go(sca_channel_bwd_kernel<T>, N * p.n_cbc, kThreads, 0, st, p); };
  const int fold = pr.order == ORDER_CS;
  auto spatial_bwd = [&](int n0, int ns, int rows) {
    go(sca_spatial_bwd_kernel<T>, (long long)ns * p.n_lb * p.n_kb, kGemmThreads, Cfg::kBytes, st, p, n0, fold, rows);
  };
  auto spatial_dw = [&](size_t i, int n0, int ns) {
    go(sca_spatial_dw_kernel<T>, (long long)p.n_kb_dw * p.n_gcb, kGemmThreads,
       Cfg::kBytes + (size_t)Cfg::BM * Cfg::BN * sizeof(A), st, p, n0, ns, fold,
       (int)(i == 0), (int)(i + 1 == chunks.size()));
  };
  auto dx = [&](int n0, int ns) {
    go(sca_dx_kernel<T>, (long long)ns * p.n_lb * p.n_gcb, kGemmThreads, hs ? Cfg::kBytes : 0, st, p, n0);
  };
  auto spatial_pass = [&](bool with_dx) {
    for (size_t i = 0; i < chunks.size(); ++i) {
      spatial_bwd(chunks[i].first, chunks[i].second, 1);
      spatial_dw(i, chunks[i].first, chunks[i].second);
      if (with_dx) dx(chunks[i].first, chunks[i].second);
    }
  };

  reduce(false);
  switch (pr.order) {
    case ORDER_C:
      softmax_bwd(p.beta, p.ch, p.rlb, nullptr, 0, p.dbeta, p.dzc, pr.C);
      channel_bwd();
      dx(0, pr.N);
      break;
    case ORDER_S:
      softmax_bwd(p.alpha, p.loc, p.rcb, nullptr, 0, p.dalpha, p.dzs, pr.HW);
      spatial_pass(true);
      break;
    case ORDER_CS:
      softmax_bwd(p.alpha, p.loc, p.rcb, nullptr, 0, p.dalpha, p.dzs, pr.HW);
      spatial_pass(false);
      softmax_bwd(p.beta, p.ch, p.rlb, p.g2, p.n_kb_dw, p.dbeta, p.dzc, pr.C);
      channel_bwd();
      for (const auto& c : chunks) {
        if (chunks.size() > 1) spatial_bwd(c.first, c.second, 0);  // (the scratch holds the last chunk's dP)
        dx(c.first, c.second);
      }
      break;
    default:  // ORDER_SC
      softmax_bwd(p.beta, p.ch, p.rlb, nullptr, 0, p.dbeta, p.dzc, pr.C);
      channel_bwd();
      reduce(true);
      softmax_bwd(p.alpha, p.loc, p.rcb, p.loc2, p.rcb, p.dalpha, p.dzs, pr.HW);
      spatial_pass(true);
      break;
  }
  go(sca_hidden_bwd_kernel<T>, N * p.n_db, kGemmThreads, std::max<size_t>(16, (size_t)(kc + ks) * sizeof(A)), st, p);
  const long long elems = kc * pr.d + kc + ks * pr.d + ks + 2 * kc + ks;
  go(sca_bwd_weights_kernel<T>, cdiv(elems, kThreads) + 1, kThreads, 0, st, p);
}

void forward(const Problem& pr, const FwdIO& io, void* stream, const Alloc& alloc) {
  dispatch_dtype(pr.dtype, "sca", [&](auto tag) { forward_t<decltype(tag)>(pr, io, to_stream(stream), alloc); });
}

void backward(const Problem& pr, const BwdIO& io, void* stream, const Alloc& alloc) {
  dispatch_dtype(pr.dtype, "sca", [&](auto tag) { backward_t<decltype(tag)>(pr, io, to_stream(stream), alloc); });
}

}  // namespace AK_BACKEND_NS
}  // namespace sca
}  // namespace ak

// SE variant "batched": the excitation of a group of samples at once, spread over the launch.
//
// The split variant runs each sample's MLP in the last squeeze block of that sample: one block
// streams the whole of W1 and W2 per sample, N times a call. Late-stage SE blocks carry more
// weight than activation per sample (ResNet-50 stage 4: 1 MB of W against 200 KB of x;
// MobileNetV3's last blocks ~10x; VoVNet's ESE stage 4 ~20x), so that stream, latency-bound in
// one block and N-fold in L2, dominates those calls. Here the squeeze launch takes its work in
// the order of an atomic ticket, in rounds: round r holds the squeeze slices of group r, the
// fc1 tiles of group r - 1 and the fc2 tiles of group r - 2. A tile reads its block of the
// weights once for the group's (up to kGroupMax) samples; it waits for what it needs (the
// group's pooled vectors; fc1's u), which items with smaller tickets produce: taken by blocks
// that are running or done, so no deadlock whatever the residency (the emulator runs it too).
// The rescale launch is the split variant's.
//
//   fc1 tile k of group g: columns [k*kGroupChunk, ...) of W1, every row: partial u of the
//     group's samples; the group's last fc1 tile adds the partials (fixed order) and b1 -> u.
//   fc2 tile i of group g: rows [i*l2_rows, ...) of W2 against act(u): z, s.
// The backward's reduction launch does the same with the transposed products (below).
#pragma once

#include "kernels.cuh"

namespace ak {
namespace se {
namespace AK_BACKEND_NS {

constexpr int kGroupMax = 8;      // samples per group
constexpr int kGroupChunk = 256;  // columns of a weight tile staged at a time: 8 KB of fp32 inputs
constexpr int kGroupRows = 2;     // rows in flight per lane group (group_rows)

// Lanes per row of group_rows for K columns (16-byte vectors of VV elements): >= 4 vectors a lane.
AK_HD_INL int group_lanes(int K, int VV) {
  const int kv = (K < kGroupChunk ? K : kGroupChunk) / VV;
  const int lg = pow2_at_least((kv + 3) / 4);
  return lg < 32 ? lg : 32;
}

// Rows of W one pass of group_rows covers (kThreads threads): an fc2 tile.
AK_HD_INL int group_rows_per_pass(int K, bool vec, int V) { return kThreads / group_lanes(K, vec ? V : 1) * kGroupRows; }

// Chunk [k0, k0 + kc) of K inputs, staged by stage(k0, kc) when `restage` (several chunks, or the
// first pass: one chunk serves every pass); returns kc. Every thread calls it.
template <typename Stage> AK_INL int stage_chunk(Stage& stage, int k0, int K, bool restage) {
  const int kc = min(kGroupChunk, K - k0);
  if (restage) {
    __syncthreads();  // the previous chunk's readers are done
    stage(k0, kc);
    __syncthreads();
  }
  return kc;
}

// Inputs of group_rows: sm[s * kc + k] = f(src[s * lds + k0 + k]) for s < gs, 0 for the rest of
// the kGroupMax rows. src was written during this launch: read through L2.
template <typename A, typename F>
AK_INL void stage_group(const A* src, size_t lds, int gs, int k0, int kc, A* sm, F f) {
  for (int i = threadIdx.x; i < kGroupMax * kc; i += blockDim.x) {
    const int s = i / kc, k = i - s * kc;
    sm[i] = s < gs ? f(ld_cg(src + (size_t)s * lds + k0 + k)) : A(0);
  }
}

// out[s][o] = sum_k W[o * ldw + k] * in[s][k] for rows o in [o0, o1), k < K, every s < kGroupMax
// (the inputs of the samples a group lacks are zero): f(o, s, value), from one lane per row.
// The inputs are staged kGroupChunk columns at a time by stage(k0, kc) into sm ([s][kc]); each
// weight vector loaded is used for all kGroupMax samples. G lanes per row (group_lanes), R rows
// in flight per lane group; a pass covers (threads / G) * R rows. Every thread calls it.
template <typename T, typename A, int VV, int R, typename Stage, typename F>
AK_INL void group_rows_v(const T* W, size_t ldw, int o0, int o1, int K, A* sm, Stage& stage, F& f) {
  const int G = group_lanes(K, VV);
  const int tid = threadIdx.x, gl = tid % G, grp = tid / G, ngrp = blockDim.x / G;
  const int nchunks = (K + kGroupChunk - 1) / kGroupChunk;
  for (int base = o0; base < o1; base += ngrp * R) {  // uniform trip count across the block
    A acc[R][kGroupMax];
    AK_PRAGMA_UNROLL(R)
    for (int r = 0; r < R; ++r) {
      AK_PRAGMA_UNROLL(kGroupMax)
      for (int s = 0; s < kGroupMax; ++s) acc[r][s] = A(0);
    }
    for (int ch = 0; ch < nchunks; ++ch) {
      const int k0 = ch * kGroupChunk, kc = stage_chunk(stage, k0, K, nchunks > 1 || base == o0);
      for (int kv = gl; kv < kc / VV; kv += G) {
        T w[R][VV];
        AK_PRAGMA_UNROLL(R)
        for (int r = 0; r < R; ++r) {
          const int m = base + r * ngrp + grp;  // (a row past o1 reads row o0: in bounds, unused)
          load_elems<T, VV>(W + (size_t)(m < o1 ? m : o0) * ldw + k0 + (size_t)kv * VV, w[r]);
        }
        AK_PRAGMA_UNROLL(kGroupMax)
        for (int s = 0; s < kGroupMax; ++s) {
          const A* in = sm + s * kc + kv * VV;
          A v[VV];
          if (VV % Vec<A>::N == 0) {  // 16-byte shared loads (kc, and so each row, a multiple of VV)
            AK_PRAGMA_UNROLL(VV)
            for (int q = 0; q < VV; q += Vec<A>::N) load_elems<A, Vec<A>::N>(in + q, v + q);
          } else {
            AK_PRAGMA_UNROLL(VV)
            for (int j = 0; j < VV; ++j) v[j] = in[j];
          }
          AK_PRAGMA_UNROLL(VV)
          for (int j = 0; j < VV; ++j) {
            AK_PRAGMA_UNROLL(R)
            for (int r = 0; r < R; ++r) acc[r][s] += to_acc(w[r][j]) * v[j];
          }
        }
      }
    }
    AK_PRAGMA_UNROLL(R)
    for (int r = 0; r < R; ++r) {
      const int m = base + r * ngrp + grp;
      AK_PRAGMA_UNROLL(kGroupMax)
      for (int s = 0; s < kGroupMax; ++s) {
        const A tot = group_sum(acc[r][s], G);
        if (m < o1 && gl == 0) f(m, s, tot);
      }
    }
  }
}

template <typename T, typename A, typename Stage, typename F>
AK_INL void group_rows(const T* W, size_t ldw, int o0, int o1, int K, A* sm, Stage stage, F f) {
  constexpr int V = Vec<T>::N;
  if (K % V == 0 && ldw % V == 0 && ((uintptr_t)W & 15u) == 0)
    group_rows_v<T, A, V, kGroupRows>(W, ldw, o0, o1, K, sm, stage, f);
  else
    group_rows_v<T, A, 1, kGroupRows>(W, ldw, o0, o1, K, sm, stage, f);
}

// Inputs of group_cols: sm[k * kGroupMax + s] = src[s * lds + k0 + k] for s < gs, 0 for the rest
// (the kGroupMax inputs of one k side by side: two 16-byte broadcast loads). Through L2, as above.
template <typename A>
AK_INL void stage_group_t(const A* src, size_t lds, int gs, int k0, int kc, A* sm) {
  for (int i = threadIdx.x; i < kGroupMax * kc; i += blockDim.x) {
    const int k = i / kGroupMax, s = i - k * kGroupMax;
    sm[i] = s < gs ? ld_cg(src + (size_t)s * lds + k0 + k) : A(0);
  }
}

// out[s][o] = sum_k W[k * ldw + o] * in[s][k] for o in [o0, o1), k < K, every s < kGroupMax:
// f(o, s, value) from one thread per output. The transposed products of the backward (dh = W2^T dz,
// dp = W1^T du), whose outputs run along W's rows: consecutive threads take consecutive outputs
// (coalesced loads of each row), a pass covers up to blockDim outputs, and the threads a narrower
// pass leaves over split the k range P ways, their partial sums added by tree_combine through
// red (blockDim * kGroupMax accumulators). Inputs staged as in group_rows (stage(k0, kc) into sm,
// [k][kGroupMax]). Every thread calls it.
template <typename T, typename A, typename Stage, typename F>
AK_INL void group_cols(const T* W, size_t ldw, int o0, int o1, int K, A* sm, A* red, Stage stage, F f) {
  const int nt = blockDim.x, tid = threadIdx.x;
  const int nchunks = (K + kGroupChunk - 1) / kGroupChunk;
  for (int base = o0; base < o1; base += nt) {  // uniform trip count across the block
    const int width = min(nt, o1 - base), P = nt / width;
    const int part = tid / width, o = base + tid % width;
    const bool active = part < P;
    A acc[kGroupMax];
    AK_PRAGMA_UNROLL(kGroupMax)
    for (int s = 0; s < kGroupMax; ++s) acc[s] = A(0);
    for (int ch = 0; ch < nchunks; ++ch) {
      const int k0 = ch * kGroupChunk, kc = stage_chunk(stage, k0, K, nchunks > 1 || base == o0);
      if (active) {
        AK_UNROLL4
        for (int k = part; k < kc; k += P) {
          const A w = to_acc(W[(size_t)(k0 + k) * ldw + o]);
          A v[kGroupMax];
          AK_PRAGMA_UNROLL(kGroupMax)
          for (int s = 0; s < kGroupMax; s += Vec<A>::N) load_elems<A, Vec<A>::N>(sm + k * kGroupMax + s, v + s);
          AK_PRAGMA_UNROLL(kGroupMax)
          for (int s = 0; s < kGroupMax; ++s) acc[s] += w * v[s];
        }
      }
    }
    if (P > 1) {  // the k-parts' sums, added by a tree (see tree_combine)
      __syncthreads();  // red free: the previous pass's tree has been read
      tree_combine(
          part, tid % width, P, width,
          [&](int slot) {
            AK_PRAGMA_UNROLL(kGroupMax)
            for (int s = 0; s < kGroupMax; ++s) red[(size_t)slot * kGroupMax + s] = acc[s];
          },
          [&](int slot) {
            AK_PRAGMA_UNROLL(kGroupMax)
            for (int s = 0; s < kGroupMax; ++s) acc[s] += red[(size_t)slot * kGroupMax + s];
          });
    }
    if (part == 0) {
      AK_PRAGMA_UNROLL(kGroupMax)
      for (int s = 0; s < kGroupMax; ++s) f(o, s, acc[s]);
    }
  }
}

// The work item of ticket t (see the top of this file): kind 0, the slice idx of sample n;
// kind 1 / 2, tile idx of the first / second layer of group n.
struct BatchItem {
  int kind, n, idx;
};
AK_HD_INL long long batch_round_start(int r, int N, int grp, int groups, int bps, int ta, int tb) {
  const long long ra = r - 1 < groups ? r - 1 : groups, rb = r - 2 < groups ? r - 2 : groups;
  return (long long)bps * ((long long)r * grp < N ? (long long)r * grp : N) + (long long)ta * (ra > 0 ? ra : 0) +
         (long long)tb * (rb > 0 ? rb : 0);
}
AK_HD_INL BatchItem batch_item(long long t, int N, int grp, int bps, int ta, int tb) {
  const int groups = (N + grp - 1) / grp;
  int lo = 0, hi = groups + 2;  // the last round whose first ticket is <= t
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (batch_round_start(mid, N, grp, groups, bps, ta, tb) <= t)
      lo = mid;
    else
      hi = mid;
  }
  long long off = t - batch_round_start(lo, N, grp, groups, bps, ta, tb);
  if (lo < groups) {
    const int n0 = lo * grp, gs = (N - n0 < grp ? N - n0 : grp);
    if (off < (long long)gs * bps) return BatchItem{0, n0 + (int)(off / bps), (int)(off % bps)};
    off -= (long long)gs * bps;
  }
  if (lo >= 1 && lo <= groups) {
    if (off < ta) return BatchItem{1, lo - 1, (int)off};
    off -= ta;
  }
  return BatchItem{2, lo - 2, (int)off};
}
AK_HD_INL long long batch_items(int N, int grp, int bps, int ta, int tb) {
  return (long long)N * bps + (long long)((N + grp - 1) / grp) * (ta + tb);
}

// This block's item: one ticket per block; the block taking the last one re-zeroes the counter.
AK_INL unsigned take_one_ticket(unsigned* ticket, unsigned* slot) {
  if (threadIdx.x == 0) {
    const unsigned t = atomicAdd(ticket, 1u);
    if (t == gridDim.x - 1) atomicExch(ticket, 0u);
    *slot = t;
  }
  __syncthreads();
  return *slot;
}

// A tile of the group's second layer is done; the last of its `tiles` re-zeroes the group's
// counters for the next launch (every item of the group is done by then). Every thread calls it.
AK_INL void group_item_done(unsigned* gc, int tiles, int* flag) {
  if (arrive_last(gc, 2, tiles, flag, false) && threadIdx.x == 0) {
    gc[0] = 0u;
    gc[1] = 0u;
    gc[2] = 0u;
  }
}

// Squeeze slices and the group's layer tiles, one item a block (grid: batch_items).
template <typename T, int POOL, bool NHWC>
__global__ void __launch_bounds__(kThreads, 2) se_squeeze_batched_kernel(const __grid_constant__ FwdParams<T> P) {
#if AK_PIPELINED_CODE
  using A = typename Acc<T>::type;
  AK_DYNAMIC_SHARED(unsigned char, smem_raw);
  int* flag = reinterpret_cast<int*>(smem_raw);
  unsigned* slot = reinterpret_cast<unsigned*>(smem_raw) + 1;
  A* scratch = reinterpret_cast<A*>(smem_raw + kHeader);
  const int C = P.C, Cr = P.Cr;
  const BatchItem it = batch_item(take_one_ticket(P.ticket, slot), P.N, P.grp, P.bps, P.l1_tiles, P.l2_tiles);
  if (it.kind == 0) {  // a squeeze slice; the sample's last one pools, then counts into its group
    const int n = it.n;
    A* pa = P.ws_a + (size_t)n * P.S * C;
    A* pb = P.ws_b + (size_t)n * P.S * C;
    squeeze_block<T, false, POOL == POOL_AVGMAX, NHWC>(P.x + (size_t)n * C * P.HW, nullptr, C, P.HW, it.idx, P.S,
                                                       P.G, P.seg_len, P.upb, P.vc, P.ctv, P.ctiles, true, nullptr,
                                                       pa, pb, scratch);
    if (!arrive_last(P.counters, n, P.bps, flag)) return;
    fwd_pool<T, POOL>(P, n, pa, pb, P.S, true, nullptr, true);
    if (!P.w1) {  // single layer: u = p
      for (int c = threadIdx.x; c < C; c += blockDim.x) P.u[(size_t)n * C + c] = P.p[(size_t)n * C + c];
    }
    publish_sample(P.gcnt + 3 * (n / P.grp));
    return;
  }
  const int g = it.n, n0 = g * P.grp, gs = min(P.grp, P.N - n0);
  unsigned* gc = P.gcnt + 3 * g;
  if (it.kind == 1) {  // fc1 tile: a column chunk of W1, every row, the group's partial u
    wait_sample(gc, gs - 1);
    const int k0 = it.idx * kGroupChunk, kc = min(kGroupChunk, C - k0);
    A* part = P.part + ((size_t)g * P.l1_tiles + it.idx) * kGroupMax * Cr;
    group_rows<T, A>(
        P.w1 + k0, C, 0, Cr, kc, scratch,
        [&](int c0, int cc) { stage_group(P.p + (size_t)n0 * C, C, gs, k0 + c0, cc, scratch, [](A v) { return v; }); },
        [&](int j, int s, A v) { part[(size_t)s * Cr + j] = v; });
    if (!arrive_last(gc, 1, P.l1_tiles, flag, false)) return;
    // the group's last fc1 tile: u = a blocked_sum of the partials + b1
    const A* parts = P.part + (size_t)g * P.l1_tiles * kGroupMax * Cr;
    for (int i = threadIdx.x; i < gs * Cr; i += blockDim.x) {
      const int s = i / Cr, j = i - s * Cr;
      const A u = blocked_sum<A>(P.l1_tiles, [&](int q) { return ld_cg(parts + ((size_t)q * kGroupMax + s) * Cr + j); });
      P.u[(size_t)(n0 + s) * Cr + j] = u + (P.b1 ? to_acc(P.b1[j]) : A(0));
    }
    publish_sample(gc + 1);  // now l1_tiles + 1: u is out
    return;
  }
  // fc2 tile: rows [r0, r1) of W2 against act(u) of the group: z, s
  if (P.w1)
    wait_sample(gc + 1, P.l1_tiles);
  else
    wait_sample(gc, gs - 1);
  const int r0 = it.idx * P.l2_rows, r1 = min(C, r0 + P.l2_rows);
  const int act = P.act, gate = P.gate;
  group_rows<T, A>(
      P.w2, Cr, r0, r1, Cr, scratch,
      [&](int k0, int kc) {
        stage_group(P.u + (size_t)n0 * Cr, Cr, gs, k0, kc, scratch, [&](A v) { return act_fwd(act, v); });
      },
      [&](int c, int s, A v) {
        if (s < gs) {
          const size_t i = (size_t)(n0 + s) * C + c;
          const A zv = v + (P.b2 ? to_acc(P.b2[c]) : A(0));
          P.z[i] = zv;
          P.s[i] = gate_fwd(gate, zv);
        }
      });
  group_item_done(gc, P.l2_tiles, flag);
#else
  __trap();
#endif
}

// The backward's reduction in the same rounds: slices of sum(dy*x) (the sample's last one forms
// dz), then per group the dh tiles (a 256-row chunk of W2 against dz: partial dh, which the group's
// last dh tile adds up into du = dh * act'(u), and h) and the dp tiles (a column range of W1
// against du: dp, the coefficients of dx). Single-layer form: dp = du, formed with du, no dp tiles.
template <typename T, int POOL, bool NHWC>
__global__ void __launch_bounds__(kThreads, 2) se_bwd_reduce_batched_kernel(const __grid_constant__ BwdParams<T> P) {
#if AK_PIPELINED_CODE
  using A = typename Acc<T>::type;
  constexpr bool MAXP = POOL == POOL_AVGMAX;
  AK_DYNAMIC_SHARED(unsigned char, smem_raw);
  int* flag = reinterpret_cast<int*>(smem_raw);
  unsigned* slot = reinterpret_cast<unsigned*>(smem_raw) + 1;
  A* scratch = reinterpret_cast<A*>(smem_raw + kHeader);
  A* red = scratch + kGroupMax * kGroupChunk;
  const int C = P.C, Cr = P.Cr;
  const BatchItem it = batch_item(take_one_ticket(P.ticket, slot), P.N, P.grp, P.bps, P.l1_tiles, P.l2_tiles);
  if (it.kind == 0) {  // a slice of sum(dy*x); the sample's last one forms dz, then counts into its group
    const int n = it.n;
    const size_t sample = (size_t)C * P.HW;
    A* pa = P.ws_a + (size_t)n * P.S * C;
    A* pb = P.ws_b + (size_t)n * P.S * C;
    squeeze_block<T, true, MAXP, NHWC, kStreamLoads / 2>(P.x + (size_t)n * sample, P.dy + (size_t)n * sample, C,
                                                         P.HW, it.idx, P.S, P.G, P.seg_len, P.upb, P.vc, P.ctv,
                                                         P.ctiles, P.vec_in != 0,
                                                         MAXP ? P.pmax + (size_t)n * C : nullptr, pa, pb, scratch);
    if (!arrive_last(P.counters, n, P.bps, flag)) return;
    bwd_dz<T, POOL>(P, n, pa, pb, P.S, nullptr);
    publish_sample(P.gcnt + 3 * (n / P.grp));
    return;
  }
  const int g = it.n, n0 = g * P.grp, gs = min(P.grp, P.N - n0);
  unsigned* gc = P.gcnt + 3 * g;
  if (it.kind == 1) {  // dh tile: rows [k0, k0 + kc) of W2 against dz, the group's partial dh
    wait_sample(gc, gs - 1);
    const int k0 = it.idx * kGroupChunk, kc = min(kGroupChunk, C - k0);
    A* part = P.part + ((size_t)g * P.l1_tiles + it.idx) * kGroupMax * Cr;
    group_cols<T, A>(
        P.w2 + (size_t)k0 * Cr, Cr, 0, Cr, kc, scratch, red,
        [&](int c0, int cc) { stage_group_t(P.dz + (size_t)n0 * C, C, gs, k0 + c0, cc, scratch); },
        [&](int j, int s, A v) { part[(size_t)s * Cr + j] = v; });
    if (!arrive_last(gc, 1, P.l1_tiles, flag, false)) return;
    // the group's last dh tile: dh = a blocked_sum of the partials; du = dh * act'(u), h = act(u)
    const A* parts = P.part + (size_t)g * P.l1_tiles * kGroupMax * Cr;
    const int act = P.act;
    for (int i = threadIdx.x; i < gs * Cr; i += blockDim.x) {
      const int s = i / Cr, j = i - s * Cr;
      const A dh = blocked_sum<A>(P.l1_tiles, [&](int q) { return ld_cg(parts + ((size_t)q * kGroupMax + s) * Cr + j); });
      const size_t e = (size_t)(n0 + s) * Cr + j;
      const A uv = P.u[e], duv = act_bwd(act, uv, dh);
      P.du[e] = duv;
      P.h[e] = act_fwd(act, uv);
      if (!P.w1) store_coefs<T, POOL>(P, e, duv);  // single layer: dp = du (Cr == C)
    }
    if (P.l2_tiles > 0)
      publish_sample(gc + 1);  // now l1_tiles + 1: du is out
    else
      group_item_done(gc, 1, flag);  // single layer: the group's last item
    return;
  }
  // dp tile: columns [c0, c1) of W1 against du: the coefficients of dx
  wait_sample(gc + 1, P.l1_tiles);
  const int c0 = it.idx * P.l2_cols, c1 = min(C, c0 + P.l2_cols);
  group_cols<T, A>(
      P.w1, C, c0, c1, Cr, scratch, red,
      [&](int j0, int jc) { stage_group_t(P.du + (size_t)n0 * Cr, Cr, gs, j0, jc, scratch); },
      [&](int c, int s, A v) {
        if (s < gs) store_coefs<T, POOL>(P, (size_t)(n0 + s) * C + c, v);
      });
  group_item_done(gc, P.l2_tiles, flag);
#else
  __trap();
#endif
}

}  // namespace AK_BACKEND_NS
}  // namespace se
}  // namespace ak

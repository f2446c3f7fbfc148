// SE (squeeze-and-excitation) kernels: one source for nvcc (CUDA) and g++ (csrc/cuemu emulation).
//
// Forward
//   se_squeeze_excite_kernel  blocks over (sample, slice): per-channel sum (+max) partials; the last
//                             block of each sample (atomic counter) runs fc1+act, fc2+gate.
//   se_rescale_kernel         y = x * s, vectorized, samples in reverse order.
//   se_pipelined_kernel       both in one launch: persistent blocks take squeeze slices and rescale
//                             chunks in ticket order, each rescale a lag behind its squeeze, so the
//                             second read of x hits L2.
//   se_fused_kernel           single pass: a sample's slab in the shared memory of one block, or
//                             (sm_90) split over a thread-block cluster that pools through DSMEM.
// Backward
//   se_bwd_reduce_kernel      ds = sum dy*x (+ tie count), last block per sample: gate/MLP backward.
//   se_wgrad_kernel           dw2/db2/dw1/db1 from the per-sample vectors (deterministic).
//   se_dx_kernel              dx = dy*s + A[n,c] + B[n,c]*(x == pmax[n,c]).
//   se_bwd_pipelined_kernel   reduce + dx in one launch, ticket-ordered like the pipelined forward
//                             (dy and x re-read from L2), then se_wgrad_kernel.
#pragma once

#include "../common/activations.cuh"
#include "../common/device_utils.cuh"
#include "../common/matvec.cuh"
#include "../common/squeeze.cuh"

namespace ak {
namespace se {
namespace AK_BACKEND_NS {  // one copy per build (cuda_compat.h)

enum { POOL_AVG = 0, POOL_AVGMAX = 1 };

constexpr int kThreads = 256;       // squeeze / rescale / backward block size
constexpr int kFusedThreads = 512;  // single-pass (slab in shared memory) block size
constexpr int kHeader = 16;         // bytes at the start of dynamic smem (last-block flag)
// The pipelined kernels' squeeze / reduction loads in flight (kStreamLoads: common/squeeze.cuh):
// they keep to 80 registers (3 blocks per SM), where more loads in flight spill.
constexpr int kPipeStreamLoads = 2;
constexpr int kFusedLoads = 8;  // the fused kernel's slab load: 16-byte loads in flight per thread
// Pipelined kernels: at most this many persistent blocks per SM (the launch asks the occupancy
// calculator how many fit). The launch bounds ask for 3 (80 registers) where that costs no spills:
// not with channels_last's per-thread channel vectors. (No float64 build: launch.h.)
constexpr int kPipeBlocksPerSM = 3;
template <bool NHWC> __host__ __device__ constexpr int pipe_min_blocks() {
  return NHWC ? 2 : kPipeBlocksPerSM;
}
// The pipelined kernels' device code exists for sm_90 and newer only, where they are tuned and
// measured (their code for older archs traps; launch.h's pipelined_ok keeps them off there).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define AK_PIPELINED_CODE 0
#else
#define AK_PIPELINED_CODE 1
#endif

// ------------------------------------------------------------------ parameters
// w1 null: the single-layer form (timm's EffectiveSEModule): no fc1, u = p, Cr = C, so the MLP
// is z = w2 @ act(p) + b2. Every kernel takes it at run time, in the epilogues only.
template <typename T> struct FwdParams {
  using A = typename Acc<T>::type;
  const T* x;
  const T* w1;  // null: single-layer form
  const T* b1;  // may be null
  const T* w2;
  const T* b2;  // may be null
  T* y;
  A* s;
  A* z;
  A* u;
  A* p;
  A* pmax;          // (N, C) for avgmax
  A* ws_a;          // (N, S, C) partial sums
  A* ws_b;          // (N, S, C) partial maxes
  unsigned* counters;  // (N,) zero on entry, zero on exit
  int N, C, HW, Cr;
  int act, gate;
  // squeeze geometry
  int bps;     // blocks per sample
  int S;       // partials per channel (HW segments / pixel splits)
  int G;       // NCHW: lanes per row
  int seg_len; // NCHW: row segment length; NHWC: pixels per split
  int upb;     // NCHW: units (channel, segment) per block
  int vc;      // NHWC: channels per vector (V or 1)
  int ctv;     // NHWC: vector columns per tile
  int ctiles;  // NHWC: tiles over channels
  int vec;     // rescale: vectorized path allowed
  int chunks;  // rescale: blocks (items) per sample
  int rs_span; // rescale: units (16-byte vectors if vec, else elements) per block (item)
  int nhwc;    // rescale: channels_last
  int lag;     // pipelined: samples between a squeeze and the rescale issued with it
  unsigned* ticket;  // pipelined, batched: work-item counter, zero on entry and exit
  int cl;      // fused: blocks (cluster size) per sample
  // batched (batched.cuh): the excitation of `grp` samples at once, in tiles over the weights
  int grp;       // samples per group (<= kGroupMax)
  int l1_tiles;  // fc1 tiles per group (column chunks of W1; 0: the single-layer form)
  int l2_tiles;  // fc2 tiles per group (row ranges of W2)
  int l2_rows;   // rows of W2 per fc2 tile
  A* part;       // (groups, l1_tiles, kGroupMax, Cr) fc1 partial sums
  unsigned* gcnt;  // 3 per group, zero on entry and exit: samples pooled, fc1 tiles (+1: u out), fc2 tiles
};

template <typename T> struct BwdParams {
  using A = typename Acc<T>::type;
  const T* dy;
  const T* x;
  const T* w1;  // null: single-layer form (dw1, db1 null too)
  const T* w2;
  const A* s;
  const A* z;
  const A* u;
  const A* p;
  const A* pmax;
  A* ws_a;   // (N, S, C) partial sum dy*x
  A* ws_b;   // (N, S, C) partial tie counts
  A* dz;     // (N, C)
  A* du;     // (N, Cr)
  A* h;      // (N, Cr)
  A* coef_a; // (N, C) dp_avg / HW
  A* coef_b; // (N, C) dp_max / count
  unsigned* counters;
  T* dx;
  T* dw1;
  T* db1;
  T* dw2;
  T* db2;
  int N, C, HW, Cr;
  int act, gate;
  int bps, S, G, seg_len, upb, vc, ctv, ctiles;
  int vec_in;  // x and dy have the same 16-byte alignment (row vector loads)
  int vec;     // dx pass vectorized
  int chunks;  // dx: blocks (items) per sample
  int rs_span; // dx: units (16-byte vectors if vec, else elements) per block (item)
  int nhwc, pool;
  int lag;           // pipelined: samples between a reduce and the dx issued with it
  unsigned* ticket;  // pipelined, batched: work-item counter, zero on entry and exit
  // batched (batched.cuh): the MLP backward of `grp` samples at once, in tiles over the weights
  int grp;       // samples per group
  int l1_tiles;  // dh tiles per group (row chunks of W2: dh = W2^T dz)
  int l2_tiles;  // dp tiles per group (column ranges of W1: dp = W1^T du; 0: single-layer form)
  int l2_cols;   // columns of W1 per dp tile
  A* part;       // (groups, l1_tiles, kGroupMax, Cr) dh partial sums
  unsigned* gcnt;  // 3 per group, zero on entry and exit: samples reduced, dh tiles (+1: du out), dp tiles
};

// ------------------------------------------------------------------ epilogue helpers
// Forward epilogue of one sample: pool from S partials, fc1+act, fc2+gate for channels
// [c_lo, c_hi) (c_hi < 0: all). On exit sp[c] = s[n,c] there. store_pu: write p, pmax, u out;
// store_zs: z, s of [c_lo, c_hi) (in a cluster, each of p, u, z, s is written by one block).
// R: rows in flight of the matrix-vector products (rowdots).
// Pooled p of sample n from its S partials (cg: written by other blocks of this launch), into
// sp[c] when sp is given; store_pu: p (and pmax) out.
template <typename T, int POOL>
AK_INL void fwd_pool(const FwdParams<T>& P, int n, const typename Acc<T>::type* pa, const typename Acc<T>::type* pb,
                     int S, bool cg, typename Acc<T>::type* sp, bool store_pu) {
  using A = typename Acc<T>::type;
  const int C = P.C;
  const size_t nC = (size_t)n * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const A sum = blocked_sum<A>(S, [&](int q) { return cg ? ld_cg(pa + (size_t)q * C + c) : pa[(size_t)q * C + c]; });
    A mx = neg_inf(A(0));
    if (POOL == POOL_AVGMAX) {
      for (int q = 0; q < S; ++q) mx = nanmax(mx, cg ? ld_cg(pb + (size_t)q * C + c) : pb[(size_t)q * C + c]);
    }
    A pv = sum / A(P.HW);
    if (POOL == POOL_AVGMAX) {
      pv = A(0.5) * pv + A(0.5) * mx;
      if (store_pu) P.pmax[nC + c] = mx;
    }
    if (store_pu) P.p[nC + c] = pv;
    if (sp) sp[c] = pv;
  }
}

template <typename T, int POOL, int R>
AK_INL void fwd_epilogue(const FwdParams<T>& P, int n, const typename Acc<T>::type* pa,
                         const typename Acc<T>::type* pb, int S, bool cg,
                         typename Acc<T>::type* sp, typename Acc<T>::type* sh, int c_lo = 0, int c_hi = -1,
                         bool store_pu = true, bool store_zs = true) {
  using A = typename Acc<T>::type;
  const int C = P.C, Cr = P.Cr, tid = threadIdx.x, nt = blockDim.x;
  if (c_hi < 0) c_hi = C;
  const size_t nC = (size_t)n * C, nCr = (size_t)n * Cr;
  fwd_pool<T, POOL>(P, n, pa, pb, S, cg, sp, store_pu);
  __syncthreads();
  const T* b1 = P.b1;
  const int act = P.act;
  if (P.w1) {
    rowdots<T, A, R>(P.w1, sp, Cr, C, [&](int j, A acc) {
      A uv = acc + (b1 ? to_acc(b1[j]) : A(0));
      if (store_pu) P.u[nCr + j] = uv;
      sh[j] = act_fwd(act, uv);
    });
  } else {  // single layer: u = p (Cr == C)
    for (int j = tid; j < Cr; j += nt) {
      if (store_pu) P.u[nCr + j] = sp[j];
      sh[j] = act_fwd(act, sp[j]);
    }
  }
  __syncthreads();
  // The gate runs in a loop of its own, not in rowdots' callback: one copy of its code instead of
  // one per unrolled row (nvcc time).
  rowdots<T, A, R>(P.w2 + (size_t)c_lo * Cr, sh, c_hi - c_lo, Cr, [&](int i, A acc) { sp[c_lo + i] = acc; });
  __syncthreads();
  const T* b2 = P.b2;
  const int gate = P.gate;
  for (int c = c_lo + tid; c < c_hi; c += nt) {
    const A zv = sp[c] + (b2 ? to_acc(b2[c]) : A(0));
    const A sv = gate_fwd(gate, zv);
    if (store_zs) {
      P.z[nC + c] = zv;
      P.s[nC + c] = sv;
    }
    sp[c] = sv;
  }
  __syncthreads();
}

// The epilogues out of line: nvcc then optimizes one copy per (T, POOL, R) rather than one per
// kernel (with the loops above, nvcc's time per arch went from 68 to 38 s; the pipelined kernels'
// calls took it to ~33 s). Their kernels take P as __grid_constant__, so passing it by reference
// copies nothing (a plain by-value P was copied to local memory at kernel start). A kernel's
// register count includes its callee's: kernels launched with 80 registers a thread (3 blocks of
// 256 per SM) call the R = 2 copy, which fits (R = 4 spilled there); those with 128, the R = 4 one.
template <int THREADS, int MIN_BLOCKS> __host__ __device__ constexpr int epilogue_rows() {
  return 65536 / (THREADS * MIN_BLOCKS) >= 128 ? 4 : 2;
}

template <typename T, int POOL, int R>
AK_NOINL void fwd_epilogue_call(const FwdParams<T>& P, int n, const typename Acc<T>::type* pa,
                                const typename Acc<T>::type* pb, int S, bool cg, typename Acc<T>::type* sp,
                                typename Acc<T>::type* sh, int c_lo = 0, int c_hi = -1, bool store_pu = true,
                                bool store_zs = true) {
  fwd_epilogue<T, POOL, R>(P, n, pa, pb, S, cg, sp, sh, c_lo, c_hi, store_pu, store_zs);
}

// ------------------------------------------------------------------ ticket-ordered (pipelined) kernels
// Persistent blocks take work items in the order of an atomic ticket: per sample, `bps` reduce
// slices (the last one runs the sample's epilogue) and `chunks` elementwise chunks that need the
// epilogue's results. A chunk spin-waits for its sample; every item it waits for holds a smaller
// ticket, so it was taken by a block that is running or done: no deadlock whatever the residency
// (and the emulator, whose workers take blocks in order and run them to completion, runs it too).
// counters[n]: bps slice arrivals, +1 when the epilogue's results are out, +1 per finished chunk;
// the sample's last chunk re-zeroes it, the block taking the launch's last ticket the ticket.

// This block's next item (every thread gets it). Each of the gridDim.x blocks takes one ticket
// past `total` before it exits; the block taking the very last one re-zeroes the counter.
AK_INL unsigned take_ticket(unsigned* ticket, unsigned total, unsigned* slot) {
  if (threadIdx.x == 0) {
    const unsigned t = atomicAdd(ticket, 1u);
    if (t == total + gridDim.x - 1) atomicExch(ticket, 0u);
    *slot = t;
  }
  __syncthreads();
  return *slot;
}

// The last slice of a sample has written the sample's epilogue results: publish them.
AK_INL void publish_sample(unsigned* cnt) {
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) atomicAdd(cnt, 1u);
}

// Before a chunk: wait until the sample's slices and epilogue are done.
AK_INL void wait_sample(const unsigned* cnt, int bps) {
  if (threadIdx.x == 0) {
    for (unsigned i = 0; ak::ld_volatile(cnt) <= (unsigned)bps; ++i) ak::spin_pause(i);
    __threadfence();
  }
  __syncthreads();
}

// After a chunk: count it; the sample's last chunk re-zeroes the counter for the next launch.
AK_INL void chunk_done(unsigned* cnt, int bps, int chunks) {
  __syncthreads();
  if (threadIdx.x == 0 && atomicAdd(cnt, 1u) == (unsigned)(bps + chunks)) atomicExch(cnt, 0u);
}

// Work item of ticket t: the reduce slices of samples [0, L) first, then for k = 0, 1, ...: the
// slices of sample k + L (while there is one), the chunks of sample k. The lag L keeps sample k's
// data in L2 between its two passes (the host sizes it from the L2 size).
struct PipeItem {
  bool reduce;
  int n, idx;  // sample, slice (reduce) or chunk
};
AK_HD_INL PipeItem pipe_item(long long t, int N, int bps, int chunks, int L) {
  const long long head = (long long)L * bps;
  if (t < head) return PipeItem{true, (int)(t / bps), (int)(t % bps)};
  t -= head;
  const long long g = (long long)bps + chunks, full = (long long)(N - L) * g;
  if (t < full) {
    const int k = (int)(t / g), r = (int)(t - (long long)k * g);
    return r < bps ? PipeItem{true, k + L, r} : PipeItem{false, k, r - bps};
  }
  t -= full;
  return PipeItem{false, N - L + (int)(t / chunks), (int)(t % chunks)};
}

// Channels [c_lo, c_hi] that units [u0, u1) of a sample touch (units as in scale_range).
AK_INL void chunk_channels(int u0, int u1, int V, int C, int HW, bool nhwc, int& c_lo, int& c_hi) {
  if (nhwc) {
    c_lo = 0;
    c_hi = C - 1;
  } else {
    c_lo = u0 * V / HW;
    c_hi = (u1 * V - 1) / HW;
  }
}

// dst[c - c_lo] = src[c] through L2: values written during this launch (L1 is not coherent).
template <typename A> AK_INL void stage_channels(const A* src, A* dst, int c_lo, int c_hi) {
  for (int c = c_lo + (int)threadIdx.x; c <= c_hi; c += blockDim.x) dst[c - c_lo] = ld_cg(src + c);
}

// The work loop of a ticket-ordered kernel (FwdParams and BwdParams both carry what it reads;
// dynamic smem starts with the kHeader bytes it uses). slice(n, idx) reduces one slice of sample
// n; epilogue(n) runs in the sample's last slice; chunk(n, u0, u1, c_lo, c_hi) processes units
// [u0, u1) (16-byte vectors if P.vec, else elements; channels c_lo..c_hi) once the epilogue's
// results are out.
template <bool NHWC, int V, typename Params, typename Slice, typename Epilogue, typename Chunk>
AK_INL void pipelined_loop(const Params& P, unsigned char* smem_raw, Slice&& slice, Epilogue&& epilogue,
                           Chunk&& chunk) {
  int* flag = reinterpret_cast<int*>(smem_raw);
  unsigned* slot = reinterpret_cast<unsigned*>(smem_raw) + 1;
  const int bps = P.bps, chunks = P.chunks, vv = P.vec ? V : 1, units = P.C * P.HW / vv;
  const unsigned total = (unsigned)P.N * (unsigned)(bps + chunks);  // < 2^32 - gridDim.x (host)
  for (;;) {
    const unsigned t = take_ticket(P.ticket, total, slot);
    if (t >= total) return;
    const PipeItem it = pipe_item(t, P.N, bps, chunks, P.lag);
    unsigned* cnt = P.counters + it.n;
    if (it.reduce) {
      slice(it.n, it.idx);
      if (arrive_last(P.counters, it.n, bps, flag, false)) {
        epilogue(it.n);
        publish_sample(cnt);
      }
    } else {
      wait_sample(cnt, bps);
      const int u0 = it.idx * P.rs_span, u1 = min(units, u0 + P.rs_span);
      int c_lo, c_hi;
      chunk_channels(u0, u1, vv, P.C, P.HW, NHWC, c_lo, c_hi);
      chunk(it.n, u0, u1, c_lo, c_hi);
      chunk_done(cnt, bps, chunks);
    }
    __syncthreads();  // the slot, flag and scratch are rewritten by the next item
  }
}

// ------------------------------------------------------------------ forward kernels
template <typename T, int POOL, bool NHWC>
__global__ void __launch_bounds__(kThreads, 2) se_squeeze_excite_kernel(const __grid_constant__ FwdParams<T> P) {
  using A = typename Acc<T>::type;
  AK_DYNAMIC_SHARED(unsigned char, smem_raw);
  int* flag = reinterpret_cast<int*>(smem_raw);
  A* scratch = reinterpret_cast<A*>(smem_raw + kHeader);
  const int n = blockIdx.x / P.bps, b = blockIdx.x - n * P.bps;
  const size_t sample = (size_t)P.C * P.HW;
  const T* xs = P.x + (size_t)n * sample;
  A* pa = P.ws_a + (size_t)n * P.S * P.C;
  A* pb = P.ws_b + (size_t)n * P.S * P.C;
  squeeze_block<T, false, POOL == POOL_AVGMAX, NHWC>(xs, nullptr, P.C, P.HW, b, P.S, P.G, P.seg_len,
                                                     P.upb, P.vc, P.ctv, P.ctiles, true, nullptr, pa, pb,
                                                     scratch);
  if (!arrive_last(P.counters, n, P.bps, flag)) return;
  fwd_epilogue_call<T, POOL, epilogue_rows<kThreads, 2>()>(P, n, pa, pb, P.S, true, scratch, scratch + P.C);
}

// y = x * s over units [u0, u1) of one sample, `step` apart; a unit is a 16-byte vector when vec
// (NCHW: C*HW % V == 0, a vector may straddle channels; NHWC: C % V == 0), else an element.
// sv[c - c_lo] is the gate of channel c. LAST: the last read of x and a y not read again here, so
// both get the evict-first hint and leave L2 to the x still waiting for its rescale. U: vectors a
// thread loads before it scales and stores them (map_vectors).
template <typename T, bool NHWC, bool LAST, int U = 1>
AK_INL void scale_range(const T* src, T* dst, const typename Acc<T>::type* sv, int c_lo, int C, int HW,
                        int u0, int u1, int step, bool vec) {
  using A = typename Acc<T>::type;
  constexpr int V = Vec<T>::N;
  if (vec) {
    map_vectors<T, U, LAST>(src, dst, u0, u1, step, [&](Vec<T>& t, int i) {
      const int e = i * V;
      if (!NHWC) {
        const int c = e / HW;
        if ((c + 1) * HW - e >= V) {  // the vector lies in one channel
          const A sc = sv[c - c_lo];
          AK_PRAGMA_UNROLL(V)
          for (int k = 0; k < V; ++k) t.v[k] = Cvt<T>::from(to_acc(t.v[k]) * sc);
        } else {  // it straddles channels (HW % V != 0: rows of 7x7, 14x14 bf16, ...)
          AK_PRAGMA_UNROLL(V)
          for (int k = 0; k < V; ++k) t.v[k] = Cvt<T>::from(to_acc(t.v[k]) * sv[(e + k) / HW - c_lo]);
        }
      } else {
        const int c0 = e % C - c_lo;
        AK_PRAGMA_UNROLL(V)
        for (int k = 0; k < V; ++k) t.v[k] = Cvt<T>::from(to_acc(t.v[k]) * sv[c0 + k]);
      }
    });
  } else {
    for (int e = u0; e < u1; e += step) {
      const int c = NHWC ? e % C : e / HW;
      dst[e] = Cvt<T>::from(to_acc(src[e]) * sv[c - c_lo]);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) se_rescale_kernel(FwdParams<T> P) {
  const int q = blockIdx.x / P.chunks, chunk = blockIdx.x - q * P.chunks;
  const int n = P.N - 1 - q;  // reverse order of the squeeze: the tail of x is still in L2
  const int E = P.C * P.HW, units = P.vec ? E / Vec<T>::N : E;
  const size_t off = (size_t)n * E;
  const int u0 = chunk * P.rs_span, u1 = min(units, u0 + P.rs_span);
  const typename Acc<T>::type* sv = P.s + (size_t)n * P.C;
  if (P.nhwc)
    scale_range<T, true, false, kStreamLoads>(P.x + off, P.y + off, sv, 0, P.C, P.HW, u0 + threadIdx.x, u1, blockDim.x,
                                              P.vec != 0);
  else
    scale_range<T, false, false, kStreamLoads>(P.x + off, P.y + off, sv, 0, P.C, P.HW, u0 + threadIdx.x, u1, blockDim.x,
                                               P.vec != 0);
}

// Squeeze and rescale in one launch (the ticket-ordered scheme above): slices squeeze, the
// sample's last slice runs the MLP, chunks rescale a lag behind, so the rescale's read of x hits L2
// and x crosses HBM once.
template <typename T, int POOL, bool NHWC>
__global__ void __launch_bounds__(kThreads, (pipe_min_blocks<NHWC>()))
    se_pipelined_kernel(const __grid_constant__ FwdParams<T> P) {
#if AK_PIPELINED_CODE
  using A = typename Acc<T>::type;
  AK_DYNAMIC_SHARED(unsigned char, smem_raw);
  A* scratch = reinterpret_cast<A*>(smem_raw + kHeader);
  const int C = P.C, HW = P.HW;
  const size_t E = (size_t)C * HW, SC = (size_t)P.S * C;
  pipelined_loop<NHWC, Vec<T>::N>(
      P, smem_raw,
      [&](int n, int idx) {
        squeeze_block<T, false, POOL == POOL_AVGMAX, NHWC, kPipeStreamLoads>(
            P.x + n * E, nullptr, C, HW, idx, P.S, P.G, P.seg_len, P.upb, P.vc, P.ctv, P.ctiles, true, nullptr,
            P.ws_a + n * SC, P.ws_b + n * SC, scratch);
      },
      [&](int n) {
        constexpr int R = epilogue_rows<kThreads, pipe_min_blocks<NHWC>()>();
        fwd_epilogue_call<T, POOL, R>(P, n, P.ws_a + n * SC, P.ws_b + n * SC, P.S, true, scratch, scratch + C);
      },
      [&](int n, int u0, int u1, int c_lo, int c_hi) {
        stage_channels(P.s + (size_t)n * C, scratch, c_lo, c_hi);
        __syncthreads();
        scale_range<T, NHWC, true, kPipeStreamLoads>(P.x + n * E, P.y + n * E, scratch, c_lo, C, HW, u0 + threadIdx.x, u1,
                                   blockDim.x, P.vec != 0);
      });
#else
  __trap();
#endif
}

// The part of a sample's slab that block `rank` of its cluster holds: NCHW channels [c0, c1),
// channels_last pixels [c0, c1) (contiguous either way); the whole slab when cl == 1.
AK_HD_INL void fused_part(int C, int HW, bool nhwc, int cl, int rank, int& c0, int& c1) {
  const int m = nhwc ? HW : C, per = (m + cl - 1) / cl;
  c0 = min(m, rank * per);
  c1 = min(m, c0 + per);
}

// Single pass (x read from HBM once, y written once): a sample's slab staged in shared memory,
// by one block or (sm_90, P.cl > 1) split over a cluster of P.cl blocks. Each block reduces its
// part into per-channel sums (maxes); in a cluster the blocks read each other's through DSMEM
// (NCHW: a channel's owner has it whole; channels_last: every block has a share of every
// channel), run the MLP for the channels they hold (block 0 writes p and u out, each block the
// z and s of its channels) and rescale their part from shared memory. The emulator runs clusters
// too (csrc/cuemu: a cluster's blocks at once, one OS thread each).
// smem: [part: rounded to 16 B][sa: C][sb: C]([fa: C][fb: C] if cl > 1)[sh: Cr][red]
template <typename T, int POOL, bool NHWC>
__global__ void __launch_bounds__(kFusedThreads, 1) se_fused_kernel(const __grid_constant__ FwdParams<T> P) {
  using A = typename Acc<T>::type;
  constexpr int V = Vec<T>::N;
  constexpr bool MAXP = POOL == POOL_AVGMAX;
  AK_DYNAMIC_SHARED(unsigned char, smem_raw);
  const int cl = P.cl, rank = cl > 1 ? (int)ak::cluster_rank() : 0;
  const int n = blockIdx.x / cl;
  const int C = P.C, HW = P.HW, E = C * HW;
  int c0, c1;
  fused_part(C, HW, NHWC, cl, 0, c0, c1);
  const int part_max = (c1 - c0) * (NHWC ? C : HW);  // elements of the largest part
  fused_part(C, HW, NHWC, cl, rank, c0, c1);
  const int part = (c1 - c0) * (NHWC ? C : HW), off = c0 * (NHWC ? C : HW);
  T* slab = reinterpret_cast<T*>(smem_raw);
  A* sa = reinterpret_cast<A*>(smem_raw + ((size_t)part_max * sizeof(T) + 15) / 16 * 16);
  A* sb = sa + C;
  A* fa = cl > 1 ? sb + C : sa;  // the cluster's totals (a copy only when there are others)
  A* fb = cl > 1 ? fa + C : sb;
  A* sh = fb + C;
  A* red = sh + P.Cr;
  const T* xs = P.x + (size_t)n * E + off;
  const int tid = threadIdx.x, nt = blockDim.x;
  if ((P.vec & 2) && off % V == 0 && part % V == 0) {  // 16-byte aligned part
    // kFusedLoads vectors a thread in flight, all loaded before any is stored: one block per SM
    // streams the slab in, and one load at a time (a load, then its store to shared memory,
    // which the compiler keeps in order) left its load phase latency-bound.
    const Vec<T>* s4 = reinterpret_cast<const Vec<T>*>(xs);
    Vec<T>* d4 = reinterpret_cast<Vec<T>*>(slab);
    const int nv = part / V;
    for (int i0 = tid; i0 < nv; i0 += kFusedLoads * nt) {
      Vec<T> t[kFusedLoads];
      AK_PRAGMA_UNROLL(kFusedLoads)
      for (int j = 0; j < kFusedLoads; ++j)
        if (i0 + j * nt < nv) t[j] = ak::load_vec(s4 + i0 + j * nt);
      AK_PRAGMA_UNROLL(kFusedLoads)
      for (int j = 0; j < kFusedLoads; ++j)
        if (i0 + j * nt < nv) ak::store_vec(d4 + i0 + j * nt, t[j]);
    }
  } else {
    for (int i = tid; i < part; i += nt) slab[i] = xs[i];
  }
  __syncthreads();
  if (!NHWC) {  // this block's channels, whole
    nchw_units<T, false, MAXP>(slab, nullptr, c1 - c0, HW, 1, HW, 0, c1 - c0, P.G, true, nullptr, sa + c0,
                               sb + c0);
    __syncthreads();
  } else {  // every channel, over this block's pixels
    for (int t = 0; t < P.ctiles; ++t) {
      if (P.vc > 1)
        nhwc_tile<T, false, MAXP, V>(slab, nullptr, C, 0, c1 - c0, t * P.ctv, P.ctv, nullptr, sa, sb, red);
      else
        nhwc_tile<T, false, MAXP, 1>(slab, nullptr, C, 0, c1 - c0, t * P.ctv, P.ctv, nullptr, sa, sb, red);
    }
  }
  if (cl > 1) {  // the cluster's totals through DSMEM, in rank order (deterministic)
    ak::cluster_sync();
    int o0, o1;
    fused_part(C, HW, NHWC, cl, 0, o0, o1);
    const int per = o1 - o0;
    for (int c = tid; c < C; c += nt) {
      if (!NHWC) {
        const int owner = c / per;
        fa[c] = ak::cluster_map(sa, owner)[c];
        if (MAXP) fb[c] = ak::cluster_map(sb, owner)[c];
      } else {
        A a = A(0), b = neg_inf(A(0));
        for (int r = 0; r < cl; ++r) {
          a += ak::cluster_map(sa, r)[c];
          if (MAXP) b = nanmax(b, ak::cluster_map(sb, r)[c]);
        }
        fa[c] = a;
        fb[c] = b;
      }
    }
    __syncthreads();
  }
  // gates of the channels this block holds (channels_last: all of them); block 0 writes p and u,
  // each block the z and s of its channels (channels_last: block 0 all of them)
  constexpr int R = epilogue_rows<kFusedThreads, 1>();
  fwd_epilogue_call<T, POOL, R>(P, n, fa, fb, 1, false, fa, sh, NHWC ? 0 : c0, NHWC ? C : c1, rank == 0,
                                NHWC ? rank == 0 : true);
  const bool vec = (P.vec & 1) != 0 && off % V == 0 && part % V == 0;  // (a cluster's part may not be)
  scale_range<T, NHWC, false>(slab, P.y + (size_t)n * E + off, NHWC ? fa : fa + c0, 0, C, HW, tid,
                              vec ? part / V : part, nt, vec);
  if (cl > 1) ak::cluster_sync();  // the others may still read this block's sa / sb
}

// ------------------------------------------------------------------ backward kernels
// dz[n, c] = ds * gate'(z) from the S partial sums of dy*x (written by other blocks of this
// launch), into sdz[c] when sdz is given; avgmax: the tie count of the max into coef_b (the
// coefficients replace it, store_coefs).
template <typename T, int POOL>
AK_INL void bwd_dz(const BwdParams<T>& P, int n, const typename Acc<T>::type* pa, const typename Acc<T>::type* pb,
                   int S, typename Acc<T>::type* sdz) {
  using A = typename Acc<T>::type;
  const int C = P.C, gate = P.gate;
  const size_t nC = (size_t)n * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const A ds = blocked_sum<A>(S, [&](int q) { return ld_cg(pa + (size_t)q * C + c); });
    A cnt = A(0);  // tie counts: small integers, exact in any order
    if (POOL == POOL_AVGMAX) {
      for (int q = 0; q < S; ++q) cnt += ld_cg(pb + (size_t)q * C + c);
    }
    const A dzv = gate_bwd(gate, P.z[nC + c], ds);
    P.dz[nC + c] = dzv;
    if (sdz) sdz[c] = dzv;
    if (POOL == POOL_AVGMAX) P.coef_b[nC + c] = cnt;
  }
}

// dx's coefficients of element i = n * C + c from the pooled gradient dp: coef_a = dp_avg / HW,
// coef_b = dp_max / (tie count, which coef_b holds until then; through L2: another block of the
// launch may have written it).
template <typename T, int POOL>
AK_INL void store_coefs(const BwdParams<T>& P, size_t i, typename Acc<T>::type dp) {
  using A = typename Acc<T>::type;
  const A hw = A(P.HW);
  if (POOL == POOL_AVGMAX) {
    const A half = A(0.5) * dp;
    P.coef_a[i] = half / hw;
    P.coef_b[i] = half / ld_cg(P.coef_b + i);
  } else {
    P.coef_a[i] = dp / hw;
  }
}

// Backward epilogue of one sample: dz, dh, du, h, dp -> coefficients of dx.
template <typename T, int POOL>
AK_INL void bwd_epilogue(const BwdParams<T>& P, int n, const typename Acc<T>::type* pa,
                         const typename Acc<T>::type* pb, int S, typename Acc<T>::type* sdz,
                         typename Acc<T>::type* sdu, typename Acc<T>::type* red) {
  using A = typename Acc<T>::type;
  const int C = P.C, Cr = P.Cr, tid = threadIdx.x, nt = blockDim.x;
  const size_t nC = (size_t)n * C, nCr = (size_t)n * Cr;
  const int act = P.act;
  bwd_dz<T, POOL>(P, n, pa, pb, S, sdz);
  __syncthreads();
  coldots<T, A>(P.w2, sdz, Cr, C, red, [&](int j, A dh) { sdu[j] = dh; });
  __syncthreads();
  for (int j = tid; j < Cr; j += nt) {  // not in coldots' callback: one copy (see fwd_epilogue)
    const A uv = P.u[nCr + j];
    const A duv = act_bwd(act, uv, sdu[j]);
    P.du[nCr + j] = duv;
    P.h[nCr + j] = act_fwd(act, uv);
    sdu[j] = duv;
  }
  __syncthreads();
  auto coefs = [&](int c, A dp) { store_coefs<T, POOL>(P, nC + c, dp); };
  if (P.w1) {
    coldots<T, A>(P.w1, sdu, C, Cr, red, coefs);
  } else {  // single layer: dp = du (Cr == C)
    for (int c = tid; c < C; c += nt) coefs(c, sdu[c]);
  }
}

// Out of line: see fwd_epilogue_call.
template <typename T, int POOL>
AK_NOINL void bwd_epilogue_call(const BwdParams<T>& P, int n, const typename Acc<T>::type* pa,
                                const typename Acc<T>::type* pb, int S, typename Acc<T>::type* sdz,
                                typename Acc<T>::type* sdu, typename Acc<T>::type* red) {
  bwd_epilogue<T, POOL>(P, n, pa, pb, S, sdz, sdu, red);
}

template <typename T, int POOL, bool NHWC>
__global__ void __launch_bounds__(kThreads, 2) se_bwd_reduce_kernel(const __grid_constant__ BwdParams<T> P) {
  using A = typename Acc<T>::type;
  AK_DYNAMIC_SHARED(unsigned char, smem_raw);
  int* flag = reinterpret_cast<int*>(smem_raw);
  A* scratch = reinterpret_cast<A*>(smem_raw + kHeader);
  const int n = blockIdx.x / P.bps, b = blockIdx.x - n * P.bps;
  const size_t sample = (size_t)P.C * P.HW;
  A* pa = P.ws_a + (size_t)n * P.S * P.C;
  A* pb = P.ws_b + (size_t)n * P.S * P.C;
  constexpr bool MAXP = POOL == POOL_AVGMAX;
  squeeze_block<T, true, MAXP, NHWC, kStreamLoads / 2>(P.x + (size_t)n * sample, P.dy + (size_t)n * sample, P.C,
                                                       P.HW, b, P.S, P.G, P.seg_len, P.upb, P.vc, P.ctv, P.ctiles,
                                                       P.vec_in != 0, MAXP ? P.pmax + (size_t)n * P.C : nullptr,
                                                       pa, pb, scratch);
  if (!arrive_last(P.counters, n, P.bps, flag)) return;
  A* sdz = scratch;
  A* sdu = sdz + P.C;
  A* red = sdu + P.Cr;
  bwd_epilogue_call<T, POOL>(P, n, pa, pb, P.S, sdz, sdu, red);
}

// dw2, db2, dw1, db1 from the per-sample vectors (matvec.cuh's mlp_wgrad: deterministic).
template <typename T>
__global__ void __launch_bounds__(kThreads) se_wgrad_kernel(BwdParams<T> P) {
  mlp_wgrad<T, typename Acc<T>::type>(blockIdx.x, gridDim.x, P.N, P.C, P.Cr, P.dz, P.h, P.w1 ? P.du : nullptr, P.p,
                                      P.dw2, P.db2, P.dw1, P.db1);
}

// dx over units [u0, u1) of sample n, `step` apart (units as in scale_range). s and pmax are read
// by channel c, the coefficients ca/cb by c - c_lo. LAST: the last reads of dy and x and a dx not
// read again here get the evict-first hint. U: positions whose dy (and x) a thread loads before it
// computes and stores them (see scale_range).
template <typename T, bool MAXP, bool NHWC, bool LAST, int U = 1>
AK_INL void dx_range(const BwdParams<T>& P, int n, const typename Acc<T>::type* ca,
                     const typename Acc<T>::type* cb, int c_lo, int u0, int u1, int step) {
  using A = typename Acc<T>::type;
  constexpr int V = Vec<T>::N;
  const int C = P.C, HW = P.HW, E = C * HW;
  const size_t off = (size_t)n * E, nC = (size_t)n * C;
  const T* xs = P.x + off;
  const T* dys = P.dy + off;
  T* dxs = P.dx + off;
  const A* sv = P.s + nC;
  const A* pm = MAXP ? P.pmax + nC : nullptr;
  auto one = [&](A d, A xv, int c) {
    A r = d * sv[c] + ca[c - c_lo];
    if (MAXP && xv == pm[c]) r += cb[c - c_lo];
    return r;
  };
  if (P.vec) {
    const Vec<T>* d4 = reinterpret_cast<const Vec<T>*>(dys);
    const Vec<T>* x4 = reinterpret_cast<const Vec<T>*>(xs);
    Vec<T>* o4 = reinterpret_cast<Vec<T>*>(dxs);
    for (int i0 = u0; i0 < u1; i0 += U * step) {
      Vec<T> dq[U], xq[U];
      AK_PRAGMA_UNROLL(U)
      for (int j = 0; j < U; ++j) {
        const int i = i0 + j * step;
        if (i < u1) {
          dq[j] = LAST ? ak::load_vec_last(d4 + i) : ak::load_vec(d4 + i);
          if (MAXP) xq[j] = LAST ? ak::load_vec_last(x4 + i) : ak::load_vec(x4 + i);
        }
      }
      AK_PRAGMA_UNROLL(U)
      for (int j = 0; j < U; ++j) {
        const int i = i0 + j * step;
        if (i >= u1) continue;
        const Vec<T>& d = dq[j];
        const Vec<T>& xx = xq[j];
        Vec<T> o;
        const int e = i * V;
        if (!NHWC) {
          const int c = e / HW;
          const bool straddles = (c + 1) * HW - e < V;  // see scale_range
          AK_PRAGMA_UNROLL(V)
          for (int k = 0; k < V; ++k)
            o.v[k] = Cvt<T>::from(one(to_acc(d.v[k]), MAXP ? to_acc(xx.v[k]) : A(0), straddles ? (e + k) / HW : c));
        } else {
          const int c0 = e % C;
          AK_PRAGMA_UNROLL(V)
          for (int k = 0; k < V; ++k)
            o.v[k] = Cvt<T>::from(one(to_acc(d.v[k]), MAXP ? to_acc(xx.v[k]) : A(0), c0 + k));
        }
        if (LAST)
          ak::store_vec_stream(o4 + i, o);
        else
          ak::store_vec(o4 + i, o);
      }
    }
  } else {
    for (int e = u0; e < u1; e += step) {
      const int c = NHWC ? e % C : e / HW;
      dxs[e] = Cvt<T>::from(one(to_acc(dys[e]), MAXP ? to_acc(xs[e]) : A(0), c));
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) se_dx_kernel(BwdParams<T> P) {
  const int q = blockIdx.x / P.chunks, chunk = blockIdx.x - q * P.chunks;
  const int n = P.N - 1 - q;  // reverse order of the reduction pass
  const int E = P.C * P.HW, units = P.vec ? E / Vec<T>::N : E;
  const int u0 = chunk * P.rs_span + threadIdx.x, u1 = min(units, chunk * P.rs_span + P.rs_span);
  const size_t nC = (size_t)n * P.C;
  const auto* ca = P.coef_a + nC;
  const auto* cb = P.coef_b + nC;
  switch ((P.pool == POOL_AVGMAX ? 2 : 0) + (P.nhwc ? 1 : 0)) {
    case 0: dx_range<T, false, false, false, kStreamLoads / 2>(P, n, ca, cb, 0, u0, u1, blockDim.x); break;
    case 1: dx_range<T, false, true, false, kStreamLoads / 2>(P, n, ca, cb, 0, u0, u1, blockDim.x); break;
    case 2: dx_range<T, true, false, false, kStreamLoads / 2>(P, n, ca, cb, 0, u0, u1, blockDim.x); break;
    default: dx_range<T, true, true, false, kStreamLoads / 2>(P, n, ca, cb, 0, u0, u1, blockDim.x); break;
  }
}

// The backward's reduction and dx in one launch (the ticket-ordered scheme): slices reduce
// sum(dy*x) (+ tie counts), the sample's last slice runs the gate/MLP backward, dx chunks follow a
// lag behind and re-read dy (and x) from L2. The weight gradients need every sample: se_wgrad_kernel
// runs after.
template <typename T, int POOL, bool NHWC>
__global__ void __launch_bounds__(kThreads, (pipe_min_blocks<NHWC>()))
    se_bwd_pipelined_kernel(const __grid_constant__ BwdParams<T> P) {
#if AK_PIPELINED_CODE
  using A = typename Acc<T>::type;
  constexpr bool MAXP = POOL == POOL_AVGMAX;
  AK_DYNAMIC_SHARED(unsigned char, smem_raw);
  A* scratch = reinterpret_cast<A*>(smem_raw + kHeader);
  const int C = P.C, HW = P.HW;
  const size_t E = (size_t)C * HW, SC = (size_t)P.S * C;
  pipelined_loop<NHWC, Vec<T>::N>(
      P, smem_raw,
      [&](int n, int idx) {
        squeeze_block<T, true, MAXP, NHWC, kPipeStreamLoads / 2>(
            P.x + n * E, P.dy + n * E, C, HW, idx, P.S, P.G, P.seg_len, P.upb, P.vc, P.ctv, P.ctiles, P.vec_in != 0,
            MAXP ? P.pmax + (size_t)n * C : nullptr, P.ws_a + n * SC, P.ws_b + n * SC, scratch);
      },
      [&](int n) {
        bwd_epilogue_call<T, POOL>(P, n, P.ws_a + n * SC, P.ws_b + n * SC, P.S, scratch, scratch + C,
                                   scratch + C + P.Cr);
      },
      [&](int n, int u0, int u1, int c_lo, int c_hi) {
        A* ca = scratch;
        A* cb = scratch + (c_hi - c_lo + 1);
        stage_channels(P.coef_a + (size_t)n * C, ca, c_lo, c_hi);
        if (MAXP) stage_channels(P.coef_b + (size_t)n * C, cb, c_lo, c_hi);
        __syncthreads();
        dx_range<T, MAXP, NHWC, true>(P, n, ca, cb, c_lo, u0 + threadIdx.x, u1, blockDim.x);
      });
#else
  __trap();
#endif
}

}  // namespace AK_BACKEND_NS
}  // namespace se
}  // namespace ak

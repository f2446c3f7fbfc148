// Self-test program for cuemu (driven by tests/test_cuemu.py).
// Usage: cuemu_selftest <case>; prints "PASS <case> ..." and exits 0, prints "FAIL ..." and exits 1,
// or prints "ERROR: <message>" and exits 3 when the launch raised (the expected outcome of the
// error cases). Compile: g++ -std=c++17 -O2 -fno-strict-aliasing -fno-extern-tls-init -pthread
//   -I<repo>/csrc -I/usr/local/cuda/include cuemu_selftest.cpp
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "common/cuda_compat.h"

#define CHECK(cond)                                                             \
  do {                                                                          \
    if (!(cond)) {                                                              \
      std::printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);               \
      return 1;                                                                 \
    }                                                                           \
  } while (0)

static const ak::Stream S = ak::default_stream();

// ------------------------------------------------------------------ kernels
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

// block reduction: shared-memory tree + __syncthreads, one partial per block, atomicAdd total
__global__ void __launch_bounds__(256) k_block_reduce(const float* __restrict__ x, float* partial, double* total, int n) {
  __shared__ float s[256];
  const int i = blockIdx.x * blockDim.x * 4 + threadIdx.x;
  float v = 0.f;
  for (int r = 0; r < 4; ++r) {
    int j = i + r * blockDim.x;
    if (j < n) v += x[j];
  }
  s[threadIdx.x] = v;
  __syncthreads();
  for (int k = blockDim.x / 2; k > 0; k >>= 1) {
    if ((int)threadIdx.x < k) s[threadIdx.x] += s[threadIdx.x + k];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    partial[blockIdx.x] = s[0];
    atomicAdd(total, (double)s[0]);
  }
}

// representative kernel: grid-stride loads + warp-shuffle reduction + shared cross-warp reduction
__global__ void k_warp_block_reduce(const float* __restrict__ x, float* out, int n) {
  __shared__ float warp_part[32];
  float v = 0.f;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) v += x[i] * x[i];
  v = warp_sum(v);
  const int lane = threadIdx.x % warpSize, warp = threadIdx.x / warpSize;
  if (lane == 0) warp_part[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < (int)(blockDim.x / warpSize) ? warp_part[lane] : 0.f;
    v = warp_sum(v);
    if (lane == 0) atomicAdd(out, v);
  }
  __syncthreads();
}

// SE-like: per (n,c) plane mean via block reduction, then sigmoid-gated scaling (2 passes)
__global__ void k_se_like(const float* __restrict__ x, float* __restrict__ y, int hw) {
  __shared__ float warp_part[32];
  __shared__ float gate;
  const float* p = x + (size_t)blockIdx.x * hw;
  float v = 0.f;
  for (int i = threadIdx.x; i < hw; i += blockDim.x) v += p[i];
  v = warp_sum(v);
  if (threadIdx.x % 32 == 0) warp_part[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    v = threadIdx.x < blockDim.x / 32 ? warp_part[threadIdx.x] : 0.f;
    v = warp_sum(v);
    if (threadIdx.x == 0) gate = 1.f / (1.f + __expf(-v / hw));
  }
  __syncthreads();
  float* q = y + (size_t)blockIdx.x * hw;
  for (int i = threadIdx.x; i < hw; i += blockDim.x) q[i] = p[i] * gate;
}

struct WarpOut {
  float fsum;
  double dsum;
  int imax;
  long long llsum;
  unsigned uxor;
  int scan;        // inclusive scan via __shfl_up_sync
  float bcast;     // __shfl_sync broadcast from lane 5
  float sub16;     // width-16 reduction
  unsigned ballot;
  int any, all;
  unsigned match;
  unsigned radd;
};

__global__ void k_warp(WarpOut* out) {
  const unsigned full = 0xffffffffu;
  const int lane = threadIdx.x % 32;
  WarpOut r;
  float f = lane + 0.5f;
  for (int o = 16; o; o >>= 1) f += __shfl_xor_sync(full, f, o);
  r.fsum = f;
  double d = lane * 1.25;
  for (int o = 16; o; o >>= 1) d += __shfl_down_sync(full, d, o);
  r.dsum = d;
  int m = (lane * 7) % 32;
  for (int o = 16; o; o >>= 1) m = max(m, __shfl_xor_sync(full, m, o));
  r.imax = m;
  long long ll = (long long)lane << 33;
  for (int o = 16; o; o >>= 1) ll += __shfl_xor_sync(full, ll, o);
  r.llsum = ll;
  unsigned u = 1u << lane;
  for (int o = 1; o < 32; o <<= 1) u ^= __shfl_xor_sync(full, u, o);
  r.uxor = u;
  int s = lane;
  for (int o = 1; o < 32; o <<= 1) {
    int t = __shfl_up_sync(full, s, o);
    if (lane >= o) s += t;
  }
  r.scan = s;
  r.bcast = __shfl_sync(full, lane * 2.0f, 5);
  float g = (float)lane;
  for (int o = 8; o; o >>= 1) g += __shfl_down_sync(full, g, o, 16);
  r.sub16 = __shfl_sync(full, g, 0, 16);
  r.ballot = __ballot_sync(full, lane % 3 == 0);
  r.any = __any_sync(full, lane == 31);
  r.all = __all_sync(full, lane < 31);
  r.match = __match_any_sync(full, lane / 8);
  r.radd = __reduce_add_sync(full, (unsigned)lane);
  __syncwarp();
  out[blockIdx.x * blockDim.x + threadIdx.x] = r;
}

struct AtomicOut {
  float f;
  __half h;
  __nv_bfloat16 b;
  double d;
  unsigned long long cas_counter;
  int imax, imin;
  unsigned inc;
  unsigned long long ull;
};

__global__ void k_atomics(AtomicOut* o) {
  atomicAdd(&o->f, 1.0f);
  if (threadIdx.x == 0) {
    atomicAdd(&o->h, __float2half(1.0f));
    atomicAdd(&o->b, __float2bfloat16(1.0f));
  }
  atomicAdd(&o->d, 0.5);
  // lock-free increment through atomicCAS
  unsigned long long old = o->cas_counter, assumed;
  do {
    assumed = old;
    old = atomicCAS(&o->cas_counter, assumed, assumed + 1);
  } while (old != assumed);
  const int g = blockIdx.x * blockDim.x + threadIdx.x;
  atomicMax(&o->imax, g);
  atomicMin(&o->imin, -g);
  atomicInc(&o->inc, 99u);
  atomicAdd(&o->ull, 2ull);
}

__global__ void k_dyn_smem(float* out, int* poisoned) {
  AK_DYNAMIC_SHARED(float, buf);
  const int n = 16384;  // 64 KB
  // every byte must be 0xFF (NaN) at block start, even though the previous block wrote it
  int bad = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    unsigned u;
    std::memcpy(&u, &buf[i], 4);
    if (u != 0xFFFFFFFFu || !std::isnan(buf[i])) ++bad;
  }
  if (bad) atomicAdd(poisoned, bad);
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) buf[i] = (float)(i + blockIdx.x);
  __syncthreads();
  float acc = 0.f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) acc += buf[n - 1 - i];
  atomicAdd(&out[blockIdx.x], acc);
}

__global__ void k_sync_votes(int* out) {
  const int t = threadIdx.x;
  int c = __syncthreads_count(t % 3 == 0);
  int a1 = __syncthreads_and(t < 1000);
  int a0 = __syncthreads_and(t != 17);
  int o1 = __syncthreads_or(t == 100);
  int o0 = __syncthreads_or(t > 5000);
  if (t == 0) {
    out[0] = c; out[1] = a1; out[2] = a0; out[3] = o1; out[4] = o0;
  }
}

// correct: write, barrier, read the neighbour; missing: the same without the barrier
template <bool WithBarrier>
__global__ void k_neighbor(int* out) {
  __shared__ int s[256];
  const int t = threadIdx.x;
  s[t] = t * 3 + (int)blockIdx.x * 1000;
  if (WithBarrier) __syncthreads();
  // lower neighbour: happens to be right under round robin (thread t-1 ran first) even without the
  // barrier; a random schedule exposes the missing __syncthreads
  out[blockIdx.x * blockDim.x + t] = t > 0 ? s[t - 1] : -1;
}

__global__ void k_bad_shfl_src(float* out) {
  // lanes 0-15 shuffle among themselves but lane 3 reads lane 20 (not in the mask)
  if (threadIdx.x < 16) {
    float v = __shfl_sync(0x0000ffffu, (float)threadIdx.x, threadIdx.x == 3 ? 20 : 0);
    out[threadIdx.x] = v;
  }
}
__global__ void k_bad_shfl_exited(float* out) {
  if (threadIdx.x >= 16) return;  // upper half exits, lower half still names it in the mask
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1.0f, 1);
}
__global__ void k_bad_shfl_notself(float* out) {
  out[threadIdx.x] = __shfl_sync(0x1u, 1.0f, 0);  // lanes 1.. are not in their own mask
}
__global__ void k_mismatch(unsigned* out) {
  if (threadIdx.x % 2) out[threadIdx.x] = __ballot_sync(0xffffffffu, 1);
  else out[threadIdx.x] = (unsigned)__shfl_xor_sync(0xffffffffu, 1, 1);
}
__global__ void k_deadlock_barriers(int* out) {
  if (threadIdx.x < 64) {
    __syncthreads();
    out[0] = 1;
  } else {
    __syncthreads();
    out[1] = 1;
  }
}
__global__ void k_deadlock_warp_vs_barrier(int* out) {
  if (threadIdx.x % 32 < 16) out[threadIdx.x] = __shfl_sync(0xffffffffu, 1, 0);
  else __syncthreads();
}
__global__ void k_partial_barrier(int* out) {
  if (threadIdx.x >= 32) return;  // allowed by default, flagged with CUEMU_STRICT=1
  __syncthreads();
  out[threadIdx.x] = 1;
}
__global__ void k_throw(int* out) {
  if (blockIdx.x == 5 && threadIdx.x == 7) throw std::runtime_error("boom from device code");
  __syncthreads();
  out[blockIdx.x] = 1;
}
__global__ void k_assert(const int* x) {
  (void)x;
  assert(x[threadIdx.x] >= 0);
}
__global__ void k_printf() {
  if (threadIdx.x == 3 && blockIdx.x == 1) printf("hello from block %d thread %d\n", (int)blockIdx.x, (int)threadIdx.x);
}
__global__ void k_vec(const float* p, float* out) {
  float4 v = ak::load_vec(reinterpret_cast<const float4*>(p));
  out[threadIdx.x] = v.x + v.y + v.z + v.w;
}
__global__ void k_noop(int*) {}
__global__ void k_fp16(const __half* a, const __nv_bfloat16* b, float* out, int n) {
  __shared__ __half sh[64];        // shared arrays of class types and vector types
  __shared__ float4 sv[2];
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  sh[threadIdx.x] = i < n ? a[i] : __float2half(0.f);
  if (threadIdx.x < 2) sv[threadIdx.x] = make_float4(0.f, 0.f, 0.f, 0.f);
  __syncthreads();
  __half h = __shfl_sync(0xffffffffu, sh[threadIdx.x], threadIdx.x % 32);  // 2-byte shuffle
  if (i < n) out[i] = __half2float(__hadd(h, sh[threadIdx.x])) + __bfloat162float(b[i]) + __saturatef(2.f) +
                      rsqrtf(4.f) + __fdividef(1.f, 4.f) + min(i, 3) - max(0.5f, 0.25f) + erff(0.f) +
                      __frcp_rn(2.f) + sv[threadIdx.x % 2].y;
}
// Inter-block wait in ticket order: block with ticket t waits for ticket t-1 to finish, then
// extends a running sum (a chain through every block): progresses on any number of workers.
__global__ void k_ticket_chain(unsigned* ticket, unsigned* done, int* out) {
  __shared__ unsigned t;
  if (threadIdx.x == 0) t = atomicAdd(ticket, 1u);
  __syncthreads();
  const unsigned my = t;
  if (threadIdx.x == 0) {
    if (my > 0)
      for (unsigned i = 0; ak::ld_volatile(done + my - 1) == 0u; ++i) ak::spin_pause(i);
    __threadfence();
    out[my] = (my > 0 ? out[my - 1] : 0) + 1;
    __threadfence();
    atomicExch(done + my, 1u);
  }
}
// Clusters: every block writes into its dynamic shared memory, the cluster syncs, each block reads
// its right neighbour's through cluster_map (DSMEM), syncs again before exiting.
__global__ void k_cluster_ring(int* out) {
  AK_DYNAMIC_SHARED(int, sm);
  const unsigned r = ak::cluster_rank(), cl = ak::cluster_size();
  sm[threadIdx.x] = (int)(blockIdx.x * 1000 + threadIdx.x);
  ak::cluster_sync();
  const int* nb = ak::cluster_map(sm, (r + 1) % cl);
  out[blockIdx.x * blockDim.x + threadIdx.x] = nb[threadIdx.x] + (int)r * 1000000;
  ak::cluster_sync();
}
__global__ void k_cluster_map_static(int* out) {
  __shared__ int st[4];
  st[0] = 1;
  ak::cluster_sync();
  out[0] = *ak::cluster_map(st, 1);  // static shared memory is not mapped by the emulator
}
__global__ void k_cluster_divergent(int* out) {
  if (ak::cluster_rank() != 1) ak::cluster_sync();  // rank 1 never arrives
  out[blockIdx.x] = 1;
}
// The order blocks start in: thread 0 takes a ticket and records its block there.
__global__ void k_block_order(unsigned* ticket, int* order) {
  if (threadIdx.x == 0) order[atomicAdd(ticket, 1u)] = (int)blockIdx.x;
}
// Block 0 waits for block 1: fine with two workers, a wait that cannot end with one.
__global__ void k_wait_later_block(unsigned* flag) {
  if (threadIdx.x != 0) return;
  if (blockIdx.x == 0) {
    for (unsigned i = 0; ak::ld_volatile(flag) == 0u; ++i) ak::spin_pause(i);
  } else {
    atomicExch(flag, 1u);
  }
}
__global__ void k_spin(int* flag, int* out) {
  // intra-block producer/consumer through shared memory with __nanosleep back-off
  __shared__ volatile int ready;
  if (threadIdx.x == 0) ready = 0;
  __syncthreads();
  if (threadIdx.x == 1) {
    while (!ready) __nanosleep(100);
    out[0] = 42;
  }
  if (threadIdx.x == 0) {
    for (int i = 0; i < 3; ++i) __nanosleep(10);
    ready = 1;
  }
  (void)flag;
}
__global__ void k_static_poison(int* bad) {
  AK_SHARED_ARRAY(unsigned, s, 64);
  __syncthreads();
  if (threadIdx.x < 64 && s[threadIdx.x] != 0xFFFFFFFFu) atomicAdd(bad, 1);
  __syncthreads();
  if (threadIdx.x < 64) s[threadIdx.x] = threadIdx.x;
}


// ---- tensor cores (nvcuda::wmma, cuemu/wmma.h)
namespace wm = nvcuda::wmma;
// D (M x N) = 2 * (A (M x K) B (K x N) + C (M x N)), one warp per 16x16 tile of D (blockDim.x = 32 *
// tiles along N, gridDim.x = tiles along M). A and B lie in memory as their fragments' layouts say
// (row major: consecutive columns adjacent), C row major, D column major; the factor 2 is applied
// element-wise to the accumulator fragment (x[i], the same for every element).
template <typename T, typename LA, typename LB>
__global__ void k_wmma_gemm(const T* a, const T* b, const float* c, float* d, int M, int N, int K) {
  const int tm = blockIdx.x, tn = threadIdx.x / 32;
  const bool ra = std::is_same<LA, wm::row_major>::value, rb = std::is_same<LB, wm::row_major>::value;
  wm::fragment<wm::matrix_a, 16, 16, 16, T, LA> fa;
  wm::fragment<wm::matrix_b, 16, 16, 16, T, LB> fb;
  wm::fragment<wm::accumulator, 16, 16, 16, float> acc;
  wm::load_matrix_sync(acc, c + (size_t)tm * 16 * N + tn * 16, N, wm::mem_row_major);
  for (int k = 0; k < K; k += 16) {
    wm::load_matrix_sync(fa, ra ? a + (size_t)tm * 16 * K + k : a + (size_t)k * M + tm * 16, ra ? K : M);
    wm::load_matrix_sync(fb, rb ? b + (size_t)k * N + tn * 16 : b + (size_t)tn * 16 * K + k, rb ? N : K);
    wm::mma_sync(acc, fa, fb, acc);
  }
  for (int i = 0; i < acc.num_elements; ++i) acc.x[i] *= 2.f;
  wm::store_matrix_sync(d + (size_t)tn * 16 * M + tm * 16, acc, M, wm::mem_col_major);
}
// The same through shared memory with a __half accumulator: the tile is staged in dynamic shared
// memory, multiplied with a zero C (fill_fragment), stored row major to shared memory and copied out
// after __syncwarp (another lane's elements).
__global__ void k_wmma_half_acc(const __half* a, const __half* b, __half* d) {
  AK_DYNAMIC_SHARED(__half, sm);  // A (16x16), B (16x16), D (16x16)
  for (int i = threadIdx.x; i < 256; i += 32) {
    sm[i] = a[i];
    sm[256 + i] = b[i];
  }
  __syncwarp();
  wm::fragment<wm::matrix_a, 16, 16, 16, __half, wm::row_major> fa;
  wm::fragment<wm::matrix_b, 16, 16, 16, __half, wm::row_major> fb;
  wm::fragment<wm::accumulator, 16, 16, 16, __half> acc;
  wm::fill_fragment(acc, __float2half(0.f));
  wm::load_matrix_sync(fa, sm, 16);
  wm::load_matrix_sync(fb, sm + 256, 16);
  wm::mma_sync(acc, fa, fb, acc);
  wm::store_matrix_sync(sm + 512, acc, 16, wm::mem_row_major);
  __syncwarp();
  for (int i = threadIdx.x; i < 256; i += 32) d[255 - i] = sm[512 + 255 - i];
}
// Products of two fp16 (bf16) values are exact in fp32: every element of A and B is 1 + e.
template <typename T>
__global__ void k_wmma_exact(const T* ab, float* d) {
  wm::fragment<wm::matrix_a, 16, 16, 16, T, wm::row_major> fa;
  wm::fragment<wm::matrix_b, 16, 16, 16, T, wm::col_major> fb;
  wm::fragment<wm::accumulator, 16, 16, 16, float> acc;
  wm::fill_fragment(acc, 0.f);
  wm::load_matrix_sync(fa, ab, 16);
  wm::load_matrix_sync(fb, ab, 16);
  wm::mma_sync(acc, fa, fb, acc);
  wm::store_matrix_sync(d, acc, 16, wm::mem_row_major);
}
// Misuse: each raises. kind 0: lane 5 exits before mma_sync; 1: lane 3 waits at __syncthreads
// instead of loading; 2: lane 7 passes another pointer; 3: a misaligned pointer; 4: ldm 12 (not a
// multiple of 8 halves); 5: lane 0 changes one element of its fp16 A fragment (a copy differs);
// 6: odd lanes store while even lanes multiply.
__global__ void k_wmma_bad(const __half* ab, float* d, int kind) {
  const int lane = threadIdx.x % 32;
  wm::fragment<wm::matrix_a, 16, 16, 16, __half, wm::row_major> fa;
  wm::fragment<wm::matrix_b, 16, 16, 16, __half, wm::col_major> fb;
  wm::fragment<wm::accumulator, 16, 16, 16, float> acc;
  wm::fill_fragment(acc, 0.f);
  if (kind == 1 && threadIdx.x == 3) {
    __syncthreads();
    return;
  }
  const __half* p = ab;
  unsigned ldm = 16;
  if (kind == 2 && lane == 7) p = ab + 16;
  if (kind == 3) p = ab + 1;
  if (kind == 4) ldm = 12;
  wm::load_matrix_sync(fa, p, ldm);
  wm::load_matrix_sync(fb, ab, 16);
  if (kind == 5 && lane == 0) fa.x[0] = __float2half(3.f);
  if (kind == 0 && lane == 5) return;
  if (kind == 6 && lane % 2) {
    wm::store_matrix_sync(d, acc, 16, wm::mem_row_major);
    return;
  }
  wm::mma_sync(acc, fa, fb, acc);
  wm::store_matrix_sync(d, acc, 16, wm::mem_row_major);
  __syncthreads();
}

// ------------------------------------------------------------------ cases
static int c_block_reduce() {
  const int n = 1 << 20, T = 256, B = (n + T * 4 - 1) / (T * 4);
  std::vector<float> x(n);
  for (int i = 0; i < n; ++i) x[i] = (float)(i % 7);
  std::vector<float> partial(B, -1.f);
  double total = 0;
  ak::launch(k_block_reduce, dim3(B), dim3(T), 0, S, x.data(), partial.data(), &total, n);
  double ref = 0;
  for (int b = 0; b < B; ++b) {
    double p = 0;
    for (int j = b * T * 4; j < std::min(n, (b + 1) * T * 4); ++j) p += x[j];
    CHECK(partial[b] == (float)p);
    ref += p;
  }
  CHECK(total == ref);
  std::printf("PASS block_reduce total=%.1f\n", total);
  return 0;
}

static int c_warp() {
  const int T = 96;  // 3 warps
  std::vector<WarpOut> out(T * 2);
  ak::launch(k_warp, dim3(2), dim3(T), 0, S, out.data());
  for (int i = 0; i < T * 2; ++i) {
    const WarpOut& r = out[i];
    const int lane = i % 32;
    CHECK(r.fsum == 512.f);  // sum(lane + .5)
    if (lane == 0) CHECK(r.dsum == 1.25 * 496);
    CHECK(r.imax == 31);
    CHECK(r.llsum == (496ll << 33));
    CHECK(r.uxor == 0xffffffffu);
    CHECK(r.scan == lane * (lane + 1) / 2);
    CHECK(r.bcast == 10.f);
    const int base = lane < 16 ? 0 : 16;
    CHECK(r.sub16 == (float)(16 * base + 120));
    unsigned bal = 0;
    for (int l = 0; l < 32; l += 3) bal |= 1u << l;
    CHECK(r.ballot == bal);
    CHECK(r.any == 1 && r.all == 0);
    CHECK(r.match == (0xFFu << (8 * (lane / 8))));
    CHECK(r.radd == 496u);
  }
  std::printf("PASS warp\n");
  return 0;
}

static int c_atomics() {
  AtomicOut o{};
  o.h = __float2half(0.f);
  o.b = __float2bfloat16(0.f);
  o.imin = 0;
  const int B = 200, T = 128;  // 25600 threads
  ak::launch(k_atomics, dim3(B), dim3(T), 0, S, &o);
  CHECK(o.f == (float)(B * T));
  CHECK(__half2float(o.h) == (float)B);
  CHECK(__bfloat162float(o.b) == (float)B);
  CHECK(o.d == 0.5 * B * T);
  CHECK(o.cas_counter == (unsigned long long)(B * T));
  CHECK(o.imax == B * T - 1);
  CHECK(o.imin == -(B * T - 1));
  CHECK(o.inc == (unsigned)((B * T) % 100));
  CHECK(o.ull == 2ull * B * T);
  std::printf("PASS atomics\n");
  return 0;
}

static int c_dyn_smem() {
  const int B = 8, T = 256, n = 16384;
  std::vector<float> out(B, 0.f);
  int poisoned = 0;
  // 64 KB needs the opt-in, exactly like CUDA
  bool raised = false;
  try {
    ak::launch(k_dyn_smem, dim3(B), dim3(T), n * 4, S, out.data(), &poisoned);
  } catch (std::runtime_error& e) {
    raised = std::strstr(e.what(), "48 KB") != nullptr;
  }
  CHECK(raised);
  ak::set_max_dynamic_shared_memory(k_dyn_smem, n * 4);
  ak::launch(k_dyn_smem, dim3(B), dim3(T), n * 4, S, out.data(), &poisoned);
  CHECK(poisoned == 0);
  for (int b = 0; b < B; ++b) {
    double ref = 0;
    for (int i = 0; i < n; ++i) ref += i + b;
    CHECK(std::fabs(out[b] - ref) <= 1e-5 * ref);
  }
  std::printf("PASS dyn_smem\n");
  return 0;
}

static int c_sync_votes() {
  std::vector<int> out(5, -1);
  ak::launch(k_sync_votes, dim3(3), dim3(300), 0, S, out.data());
  CHECK(out[0] == 100);
  CHECK(out[1] == 1 && out[2] == 0 && out[3] == 1 && out[4] == 0);
  std::printf("PASS sync_votes\n");
  return 0;
}

// prints how many elements were wrong; PASS only when all are right
template <bool WithBarrier>
static int c_neighbor() {
  const int B = 4, T = 256;
  std::vector<int> out(B * T, -1);
  ak::launch(k_neighbor<WithBarrier>, dim3(B), dim3(T), 0, S, out.data());
  int wrong = 0;
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t) wrong += out[b * T + t] != (t > 0 ? (t - 1) * 3 + b * 1000 : -1);
  std::printf("%s neighbor wrong=%d\n", wrong ? "FAIL" : "PASS", wrong);
  return wrong ? 1 : 0;
}

template <typename K, typename P>
static int run_expect_error(K kernel, dim3 g, dim3 b, P arg) {
  ak::launch(kernel, g, b, 0, S, arg);
  std::printf("FAIL no error raised\n");
  return 1;
}

static int c_launch_config() {
  int dummy = 0;
  const char* msgs[4] = {};
  int k = 0;
  auto attempt = [&](dim3 g, dim3 b, size_t sm) {
    try {
      ak::launch(k_noop, g, b, sm, S, &dummy);
      msgs[k++] = nullptr;
    } catch (std::runtime_error& e) {
      static std::string keep[4];
      keep[k] = e.what();
      msgs[k] = keep[k].c_str();
      ++k;
    }
  };
  attempt(dim3(1), dim3(2048), 0);
  attempt(dim3(1, 70000), dim3(32), 0);
  attempt(dim3(0), dim3(32), 0);
  attempt(dim3(1), dim3(32), 300 * 1024);
  for (int i = 0; i < 4; ++i) {
    CHECK(msgs[i] != nullptr);
    std::printf("  %s\n", msgs[i]);
  }
  CHECK(std::strstr(msgs[0], "1024 threads") != nullptr);
  std::printf("PASS launch_config\n");
  return 0;
}

static int c_perf() {
  const int n = 1 << 22;  // 4M floats
  std::vector<float> x(n);
  for (int i = 0; i < n; ++i) x[i] = (float)((i % 13) - 6) * 0.125f;
  float out = 0;
  double ref = 0;
  for (int i = 0; i < n; ++i) ref += (double)x[i] * x[i];
  // warm-up (stack pool) then timed
  ak::launch(k_warp_block_reduce, dim3(1024), dim3(256), 0, S, x.data(), &out, n);
  out = 0;
  auto t0 = std::chrono::steady_clock::now();
  ak::launch(k_warp_block_reduce, dim3(1024), dim3(256), 0, S, x.data(), &out, n);
  auto t1 = std::chrono::steady_clock::now();
  CHECK(std::fabs(out - ref) <= 1e-4 * ref);
  // SE-like: 64x256 planes of 16x16 = 4M elements, one 256-thread block per plane
  const int planes = 64 * 256, hw = 256;
  std::vector<float> y(n);
  auto t2 = std::chrono::steady_clock::now();
  ak::launch(k_se_like, dim3(planes), dim3(256), 0, S, x.data(), y.data(), hw);
  auto t3 = std::chrono::steady_clock::now();
  for (int p = 0; p < planes; p += 997) {
    double m = 0;
    for (int i = 0; i < hw; ++i) m += x[(size_t)p * hw + i];
    float gate = 1.f / (1.f + std::exp((float)(-m / hw)));
    for (int i = 0; i < hw; ++i) CHECK(std::fabs(y[(size_t)p * hw + i] - x[(size_t)p * hw + i] * gate) < 1e-5f);
  }
  const double ms1 = std::chrono::duration<double, std::milli>(t1 - t0).count();
  const double ms2 = std::chrono::duration<double, std::milli>(t3 - t2).count();
  std::printf("PASS perf reduce_4M_grid1024x256_ms=%.1f se_like_16384x256_ms=%.1f\n", ms1, ms2);
  return 0;
}

static int c_fp16() {
  const int n = 100;
  std::vector<__half> a(n);
  std::vector<__nv_bfloat16> b(n);
  for (int i = 0; i < n; ++i) { a[i] = __float2half(i * 0.5f); b[i] = __float2bfloat16((float)i); }
  std::vector<float> out(n);
  ak::launch(k_fp16, dim3(2), dim3(64), 0, S, a.data(), b.data(), out.data(), n);
  for (int i = 0; i < n; ++i) {
    float ref = i * 1.0f + i + 1.f + 0.5f + 0.25f + std::min(i, 3) - 0.5f + 0.f + 0.5f;
    CHECK(out[i] == ref);
  }
  std::printf("PASS fp16\n");
  return 0;
}

static int c_spin() {
  int out = 0, flag = 0;
  ak::launch(k_spin, dim3(2), dim3(64), 0, S, &flag, &out);
  CHECK(out == 42);
  std::printf("PASS spin\n");
  return 0;
}

static int c_ticket_chain() {
  const int nb = 64;
  unsigned ticket = 0;
  std::vector<unsigned> done(nb, 0u);
  std::vector<int> out(nb, -1);
  ak::launch(k_ticket_chain, dim3(nb), dim3(64), 0, S, &ticket, done.data(), out.data());
  for (int i = 0; i < nb; ++i) CHECK(out[i] == i + 1);
  std::printf("PASS ticket_chain\n");
  return 0;
}

static int c_cluster_ring() {
  const int nb = 8, nt = 64;  // two clusters of 4
  std::vector<int> out(nb * nt, -1);
  ak::launch_cluster(k_cluster_ring, dim3(nb), dim3(nt), nt * sizeof(int), S, 4u, out.data());
  for (int b = 0; b < nb; ++b) {
    const int r = b % 4, nbr = b - r + (r + 1) % 4;
    for (int t = 0; t < nt; ++t) CHECK(out[b * nt + t] == nbr * 1000 + t + r * 1000000);
  }
  std::printf("PASS cluster_ring\n");
  return 0;
}

static int c_block_order() {
  const int nb = 37;
  unsigned ticket = 0;
  std::vector<int> order(nb, -1);
  ak::launch(k_block_order, dim3(nb), dim3(32), 0, S, &ticket, order.data());
  std::vector<int> seen(nb, 0);
  for (int b : order) CHECK(b >= 0 && b < nb && seen[b]++ == 0);  // every block once
  std::printf("PASS block_order");
  for (int b : order) std::printf(" %d", b);
  std::printf("\n");
  return 0;
}

static int c_wait_later_block() {
  unsigned flag = 0;
  ak::launch(k_wait_later_block, dim3(2), dim3(32), 0, S, &flag);
  std::printf("PASS wait_later_block\n");
  return 0;
}

void tu2_scale(float* x, float a, int n);
static int c_multi_tu() {
  std::vector<float> x(1000);
  for (int i = 0; i < 1000; ++i) x[i] = (float)i;
  tu2_scale(x.data(), 2.f, 1000);
  for (int i = 0; i < 1000; ++i) CHECK(x[i] == 2.f * i);
  std::printf("PASS multi_tu\n");
  return 0;
}

static int c_static_poison() {
  int bad = 0;
  ak::launch(k_static_poison, dim3(16), dim3(64), 0, S, &bad);
  std::printf("%s static_poison bad=%d\n", bad ? "FAIL" : "PASS", bad);
  return bad ? 1 : 0;
}


// wmma pointers must be 32-byte aligned (malloc gives 16)
template <typename T>
struct Aligned32 {
  using value_type = T;
  Aligned32() = default;
  template <typename U>
  Aligned32(const Aligned32<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(std::aligned_alloc(32, (n * sizeof(T) + 31) / 32 * 32)); }
  void deallocate(T* p, size_t) { std::free(p); }
  template <typename U>
  bool operator==(const Aligned32<U>&) const { return true; }
  template <typename U>
  bool operator!=(const Aligned32<U>&) const { return false; }
};
template <typename T>
using avec = std::vector<T, Aligned32<T>>;

// Random multiples of 1/8 in [-2, 2]: every product and partial sum is exact in fp32, so the
// result must equal the float64 matmul exactly, whatever the summation order: checks the element
// mapping, every layout and the accumulate.
template <typename T, typename LA, typename LB>
static int wmma_gemm_case(const char* name) {
  const int M = 32, N = 48, K = 64;
  const bool ra = std::is_same<LA, wm::row_major>::value, rb = std::is_same<LB, wm::row_major>::value;
  avec<float> A(M * K), B(K * N), C(M * N);
  unsigned s = 12345;
  auto rnd = [&s]() {
    s = s * 1103515245u + 12345u;
    return (float)((int)((s >> 16) % 33) - 16) / 8.f;
  };
  for (auto& v : A) v = rnd();
  for (auto& v : B) v = rnd();
  for (auto& v : C) v = rnd();
  avec<T> a(M * K), b(K * N);
  for (int i = 0; i < M; ++i)
    for (int k = 0; k < K; ++k) a[ra ? i * K + k : k * M + i] = T(A[i * K + k]);
  for (int k = 0; k < K; ++k)
    for (int j = 0; j < N; ++j) b[rb ? k * N + j : j * K + k] = T(B[k * N + j]);
  avec<float> d(M * N, -1.f);
  auto kern = k_wmma_gemm<T, LA, LB>;
  ak::launch(kern, dim3(M / 16), dim3(32 * (N / 16)), 0, S, static_cast<const T*>(a.data()),
             static_cast<const T*>(b.data()), static_cast<const float*>(C.data()), d.data(), M, N, K);
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      double ref = C[i * N + j];
      for (int k = 0; k < K; ++k) ref += (double)A[i * K + k] * B[k * N + j];
      if (d[j * M + i] != (float)(2 * ref)) {
        std::printf("FAIL %s d[%d][%d]=%g ref=%g\n", name, i, j, d[j * M + i], 2 * ref);
        return 1;
      }
    }
  return 0;
}

static int c_wmma() {
  static_assert(wm::fragment<wm::matrix_a, 16, 16, 16, __half, wm::row_major>::num_elements == 16, "fp16 A");
  static_assert(wm::fragment<wm::matrix_b, 16, 16, 16, __half, wm::col_major>::num_elements == 16, "fp16 B");
  static_assert(wm::fragment<wm::matrix_a, 16, 16, 16, __nv_bfloat16, wm::row_major>::num_elements == 8, "bf16 A");
  static_assert(wm::fragment<wm::accumulator, 16, 16, 16, float>::num_elements == 8, "f32 acc");
  static_assert(wm::fragment<wm::accumulator, 16, 16, 16, __half>::num_elements == 8, "f16 acc");
  int bad = 0;
  bad += wmma_gemm_case<__half, wm::row_major, wm::col_major>("fp16 row col");
  bad += wmma_gemm_case<__half, wm::col_major, wm::row_major>("fp16 col row");
  bad += wmma_gemm_case<__half, wm::row_major, wm::row_major>("fp16 row row");
  bad += wmma_gemm_case<__half, wm::col_major, wm::col_major>("fp16 col col");
  bad += wmma_gemm_case<__nv_bfloat16, wm::row_major, wm::col_major>("bf16 row col");
  bad += wmma_gemm_case<__nv_bfloat16, wm::col_major, wm::row_major>("bf16 col row");
  CHECK(bad == 0);
  // __half accumulator through shared memory: small integers, exact
  avec<__half> a(256), b(256), d(256, __float2half(-1.f));
  for (int i = 0; i < 256; ++i) {
    a[i] = __float2half((float)(i % 7 - 3));
    b[i] = __float2half((float)(i % 5 - 2));
  }
  ak::launch(k_wmma_half_acc, dim3(1), dim3(32), 3 * 256 * sizeof(__half), S, static_cast<const __half*>(a.data()),
             static_cast<const __half*>(b.data()), d.data());
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      float ref = 0;
      for (int k = 0; k < 16; ++k) ref += __half2float(a[i * 16 + k]) * __half2float(b[k * 16 + j]);
      CHECK(__half2float(d[i * 16 + j]) == ref);
    }
  // exact products: (1 + 2^-10)^2 = 1 + 2^-9 + 2^-20 (fp16), (1 + 2^-7)^2 = 1 + 2^-6 + 2^-14 (bf16),
  // 16 of them summed exactly in fp32; a product rounded to the input type would lose the last term
  avec<__half> h(256, __float2half(1.f + 1.f / 1024));
  avec<__nv_bfloat16> bh(256, __float2bfloat16(1.f + 1.f / 128));
  avec<float> dh(256), db(256);
  auto kh = k_wmma_exact<__half>;
  auto kb = k_wmma_exact<__nv_bfloat16>;
  ak::launch(kh, dim3(1), dim3(32), 0, S, static_cast<const __half*>(h.data()), dh.data());
  ak::launch(kb, dim3(1), dim3(32), 0, S, static_cast<const __nv_bfloat16*>(bh.data()), db.data());
  for (int i = 0; i < 256; ++i) {
    CHECK(dh[i] == 16.f + std::ldexp(1.f, -5) + std::ldexp(1.f, -16));
    CHECK(db[i] == 16.f + std::ldexp(1.f, -2) + std::ldexp(1.f, -10));
  }
  std::printf("PASS wmma\n");
  return 0;
}

static int c_wmma_bad(int kind, int threads) {
  alignas(32) static __half ab[512];
  alignas(32) static float d[256];
  for (int i = 0; i < 512; ++i) ab[i] = __float2half(1.f);
  ak::launch(k_wmma_bad, dim3(1), dim3(threads), 0, S, static_cast<const __half*>(ab), d, kind);
  std::printf("FAIL no error raised\n");
  return 1;
}

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s <case>\n", argv[0]);
    return 2;
  }
  const std::string c = argv[1];
  static std::vector<float> buf(1024, 1.f);
  static std::vector<int> ibuf(1024, 0);
  static std::vector<unsigned> ubuf(1024, 0);
  std::map<std::string, std::function<int()>> cases = {
      {"block_reduce", c_block_reduce},
      {"warp", c_warp},
      {"atomics", c_atomics},
      {"dyn_smem", c_dyn_smem},
      {"sync_votes", c_sync_votes},
      {"neighbor_ok", c_neighbor<true>},
      {"neighbor_missing_barrier", c_neighbor<false>},
      {"launch_config", c_launch_config},
      {"perf", c_perf},
      {"fp16", c_fp16},
      {"spin", c_spin},
      {"ticket_chain", c_ticket_chain},
      {"wait_later_block", c_wait_later_block},
      {"block_order", c_block_order},
      {"cluster_ring", c_cluster_ring},
      {"cluster_map_static",
       [] {
         ak::launch_cluster(k_cluster_map_static, dim3(2), dim3(32), 16, S, 2u, ibuf.data());
         std::printf("FAIL no error raised\n");
         return 1;
       }},
      {"cluster_divergent",
       [] {
         ak::launch_cluster(k_cluster_divergent, dim3(2), dim3(32), 16, S, 2u, ibuf.data());
         std::printf("FAIL no error raised\n");
         return 1;
       }},
      {"cluster_bad_size",
       [] {
         ak::launch_cluster(k_cluster_divergent, dim3(6), dim3(32), 16, S, 4u, ibuf.data());
         std::printf("FAIL no error raised\n");
         return 1;
       }},
      {"static_poison", c_static_poison},
      {"wmma", c_wmma},
      {"wmma_lane_exits", [] { return c_wmma_bad(0, 32); }},
      {"wmma_lane_at_barrier", [] { return c_wmma_bad(1, 64); }},
      {"wmma_other_pointer", [] { return c_wmma_bad(2, 32); }},
      {"wmma_misaligned", [] { return c_wmma_bad(3, 32); }},
      {"wmma_bad_ldm", [] { return c_wmma_bad(4, 32); }},
      {"wmma_copies_differ", [] { return c_wmma_bad(5, 32); }},
      {"wmma_mismatch", [] { return c_wmma_bad(6, 32); }},
      {"wmma_partial_warp", [] { return c_wmma_bad(7, 48); }},
      {"multi_tu", c_multi_tu},
      {"bad_shfl_src", [] { return run_expect_error(k_bad_shfl_src, dim3(1), dim3(32), buf.data()); }},
      {"bad_shfl_exited", [] { return run_expect_error(k_bad_shfl_exited, dim3(1), dim3(32), buf.data()); }},
      {"bad_shfl_notself", [] { return run_expect_error(k_bad_shfl_notself, dim3(1), dim3(32), buf.data()); }},
      {"mismatch", [] { return run_expect_error(k_mismatch, dim3(1), dim3(32), ubuf.data()); }},
      {"deadlock_barriers", [] { return run_expect_error(k_deadlock_barriers, dim3(2), dim3(128), ibuf.data()); }},
      {"deadlock_warp", [] { return run_expect_error(k_deadlock_warp_vs_barrier, dim3(1), dim3(64), ibuf.data()); }},
      {"partial_barrier",
       [] {
         ak::launch(k_partial_barrier, dim3(2), dim3(128), 0, S, ibuf.data());
         std::printf("PASS partial_barrier\n");
         return 0;
       }},
      {"throw", [] { return run_expect_error(k_throw, dim3(16), dim3(64), ibuf.data()); }},
      {"assert",
       [] {
         ibuf[9] = -1;
         return run_expect_error(k_assert, dim3(1), dim3(32), static_cast<const int*>(ibuf.data()));
       }},
      {"printf",
       [] {
         ak::launch(k_printf, dim3(2), dim3(8), 0, S);
         std::printf("PASS printf\n");
         return 0;
       }},
      {"vec_ok",
       [] {
         std::vector<float> o(4);
         ak::launch(k_vec, dim3(1), dim3(4), 0, S, static_cast<const float*>(buf.data()), o.data());
         std::printf("%s vec_ok\n", o[0] == 4.f ? "PASS" : "FAIL");
         return o[0] == 4.f ? 0 : 1;
       }},
      {"vec_misaligned",
       [] {
         std::vector<float> o(4);
         ak::launch(k_vec, dim3(1), dim3(4), 0, S, static_cast<const float*>(buf.data() + 1), o.data());
         std::printf("FAIL no error raised\n");
         return 1;
       }},
  };
  auto it = cases.find(c);
  if (it == cases.end()) {
    std::fprintf(stderr, "unknown case %s\n", c.c_str());
    return 2;
  }
  try {
    int rc = it->second();
    std::fflush(stdout);
    return rc;
  } catch (std::exception& e) {
    std::printf("ERROR: %s\n", e.what());
    std::fflush(stdout);
    return 3;
  }
}

// cuemu/runtime.h - block scheduler, warp rendezvous, barriers, launch. Included by cuemu.h.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <cxxabi.h>
#include <dlfcn.h>

#include <vector_types.h>

#include "fiber.h"

namespace cuemu {

// Every error raised by the emulator (and every exception escaping device code, re-wrapped with
// kernel/block/thread context) reaches the caller of launch() as a cuemu::Error.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Stream {};  // dummy: every emulated launch is synchronous

// CUDA limits the launch is validated against (sm_90).
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr unsigned kMaxBlockDimXY = 1024, kMaxBlockDimZ = 64;
constexpr unsigned long long kMaxGridDimX = 2147483647ull;
constexpr unsigned kMaxGridDimYZ = 65535;
constexpr size_t kDefaultDynSmemLimit = 48 * 1024;  // without the opt-in attribute
constexpr size_t kMaxDynSmem = 227 * 1024;          // 232448 bytes, H100 opt-in maximum

struct Options {
  bool random = false;   // CUEMU_SCHEDULE=random:<seed>
  uint64_t seed = 0;
  bool strict = false;   // CUEMU_STRICT=1
  bool poison_static = false;  // CUEMU_POISON_SHARED=1
  unsigned threads = 0;  // CUEMU_THREADS=N (0: hardware concurrency)
  size_t stack_bytes = 256 * 1024;  // CUEMU_STACK_KB
  double spin_timeout_s = 60.0;     // CUEMU_SPIN_TIMEOUT_S: inter-block spin-waits (spin_pause)
  bool no_run = false;   // CUEMU_NO_RUN=1: validate launches, run no block (host-overhead timing)
  // CUEMU_BLOCK_ORDER=index (default) | reverse | random:<seed>: the order workers take blocks
  // in (a GPU promises none): exposes results that depend on which block of a group is last.
  enum class BlockOrder : uint8_t { Index, Reverse, Random } block_order = BlockOrder::Index;
  uint64_t block_seed = 0;

  static Options from_env() {
    Options o;
    if (const char* s = std::getenv("CUEMU_SCHEDULE")) {
      std::string v(s);
      if (v.empty() || v == "rr" || v == "roundrobin" || v == "round-robin") {
      } else if (v == "random") {
        o.random = true;
      } else if (v.rfind("random:", 0) == 0) {
        o.random = true;
        char* end = nullptr;
        o.seed = std::strtoull(v.c_str() + 7, &end, 0);
        if (!end || *end) throw Error("cuemu: bad CUEMU_SCHEDULE='" + v + "' (use rr or random:<seed>)");
      } else {
        throw Error("cuemu: bad CUEMU_SCHEDULE='" + v + "' (use rr or random:<seed>)");
      }
    }
    auto flag = [](const char* n) {
      const char* s = std::getenv(n);
      return s && *s && std::strcmp(s, "0") != 0;
    };
    o.strict = flag("CUEMU_STRICT");
    o.poison_static = flag("CUEMU_POISON_SHARED");
    o.no_run = flag("CUEMU_NO_RUN");
    if (const char* s = std::getenv("CUEMU_BLOCK_ORDER")) {
      std::string v(s);
      char* end = nullptr;
      if (v.empty() || v == "index") {
      } else if (v == "reverse") {
        o.block_order = BlockOrder::Reverse;
      } else if (v.rfind("random:", 0) == 0) {
        o.block_seed = std::strtoull(v.c_str() + 7, &end, 0);
        if (v.size() == 7 || !end || *end)
          throw Error("cuemu: bad CUEMU_BLOCK_ORDER='" + v + "' (use index, reverse or random:<seed>)");
        o.block_order = BlockOrder::Random;
      } else {
        throw Error("cuemu: bad CUEMU_BLOCK_ORDER='" + v + "' (use index, reverse or random:<seed>)");
      }
    }
    if (const char* s = std::getenv("CUEMU_SPIN_TIMEOUT_S")) o.spin_timeout_s = std::atof(s);
    if (const char* s = std::getenv("CUEMU_THREADS")) o.threads = static_cast<unsigned>(std::atoi(s));
    if (const char* s = std::getenv("CUEMU_STACK_KB")) {
      long kb = std::atol(s);
      if (kb >= 16) o.stack_bytes = static_cast<size_t>(kb) * 1024;
    }
    return o;
  }
};

namespace detail {

enum class St : uint8_t { Runnable, WaitBarrier, WaitWarp, Done };
enum class BarKind : uint8_t { Sync, Count, And, Or };
enum class WOp : uint8_t {
  ShflIdx, ShflUp, ShflDown, ShflXor, Ballot, Any, All, SyncWarp, MatchAny, MatchAll,
  RedAddU, RedMinU, RedMaxU, RedMinI, RedMaxI, RedAnd, RedOr, RedXor,
  WmmaLoad, WmmaStore, WmmaMma
};

inline const char* wop_name(WOp op) {
  switch (op) {
    case WOp::ShflIdx: return "__shfl_sync";
    case WOp::ShflUp: return "__shfl_up_sync";
    case WOp::ShflDown: return "__shfl_down_sync";
    case WOp::ShflXor: return "__shfl_xor_sync";
    case WOp::Ballot: return "__ballot_sync";
    case WOp::Any: return "__any_sync";
    case WOp::All: return "__all_sync";
    case WOp::SyncWarp: return "__syncwarp";
    case WOp::MatchAny: return "__match_any_sync";
    case WOp::MatchAll: return "__match_all_sync";
    case WOp::RedAddU: return "__reduce_add_sync";
    case WOp::RedMinU: case WOp::RedMinI: return "__reduce_min_sync";
    case WOp::RedMaxU: case WOp::RedMaxI: return "__reduce_max_sync";
    case WOp::RedAnd: return "__reduce_and_sync";
    case WOp::RedOr: return "__reduce_or_sync";
    case WOp::RedXor: return "__reduce_xor_sync";
    case WOp::WmmaLoad: return "nvcuda::wmma::load_matrix_sync";
    case WOp::WmmaStore: return "nvcuda::wmma::store_matrix_sync";
    case WOp::WmmaMma: return "nvcuda::wmma::mma_sync";
  }
  return "?";
}

inline const char* bar_name(BarKind k) {
  switch (k) {
    case BarKind::Sync: return "__syncthreads";
    case BarKind::Count: return "__syncthreads_count";
    case BarKind::And: return "__syncthreads_and";
    case BarKind::Or: return "__syncthreads_or";
  }
  return "?";
}

struct FiberAbort {};

class BlockRunner;
// A warp collective whose lanes exchange more than one value (the wmma operations, wmma.h): each
// lane passes a pointer to its descriptor (on its own stack: it stays valid while the lane waits);
// the last lane to arrive runs `complete` with every lane's descriptor (lanes[l], null outside
// the mask) before any of them resumes.
struct WarpCall {
  void (*complete)(const WarpCall* const* lanes, unsigned mask, BlockRunner* R);
};  // thrown at a sync point to unwind a fiber of an aborted block

struct ThreadCtx {
  FiberCtx ctx;
  uint3 tid;
  unsigned linear = 0, lane = 0, warp = 0;
  St state = St::Done;
  bool started = false;
  // barrier
  BarKind bar_kind = BarKind::Sync;
  const char* bar_file = nullptr;
  unsigned bar_line = 0;
  int bar_pred = 0, bar_result = 0;
  // warp collective
  WOp op = WOp::SyncWarp;
  unsigned wmask = 0, wsize = 0;
  int warg = 0, wwidth = 32;
  uint64_t wval = 0, wout = 0;
  int wpred = 0;
  const char* wfile = nullptr;
  unsigned wline = 0;
};

struct WarpState {
  unsigned valid = 0;       // lanes that exist (partial last warp)
  unsigned exited = 0;      // lanes that returned
  unsigned arrived = 0;     // lanes waiting in a warp collective
  unsigned at_barrier = 0;  // lanes waiting in a block barrier
};

struct LaunchCtx {
  std::string kernel_name;
  dim3 grid, block;
  size_t dyn_smem = 0;
  unsigned nthreads = 0;
  unsigned long long nblocks = 0;
  void (*invoke)(const void*) = nullptr;
  const void* payload = nullptr;
  Options opts;
  std::atomic<unsigned long long> next_block{0};
  // the i-th block taken is block (mul * i + add) % nblocks (mul coprime to nblocks: a bijection)
  unsigned long long order_mul = 1, order_add = 0;
  std::atomic<bool> failed{false};
  std::mutex err_mu;
  std::exception_ptr err;
  void set_error(std::exception_ptr e) {
    std::lock_guard<std::mutex> g(err_mu);
    if (!err) err = e;
    failed.store(true);
  }
};

inline std::string fmt3(const uint3& v) {
  return "(" + std::to_string(v.x) + "," + std::to_string(v.y) + "," + std::to_string(v.z) + ")";
}
inline std::string hex32(unsigned m) {
  char b[16];
  std::snprintf(b, sizeof b, "0x%08x", m);
  return b;
}
inline std::string loc(const char* f, unsigned l) {
  if (!f) return "?";
  const char* s = std::strrchr(f, '/');
  return std::string(s ? s + 1 : f) + ":" + std::to_string(l);
}
inline bool same_site(const char* f1, unsigned l1, const char* f2, unsigned l2) {
  return l1 == l2 && (f1 == f2 || (f1 && f2 && std::strcmp(f1, f2) == 0));
}
// "0-15,32,40-47"
inline std::string ranges(const std::vector<unsigned>& v) {
  std::string s;
  for (size_t i = 0; i < v.size();) {
    size_t j = i;
    while (j + 1 < v.size() && v[j + 1] == v[j] + 1) ++j;
    if (!s.empty()) s += ",";
    s += std::to_string(v[i]);
    if (j > i) s += "-" + std::to_string(v[j]);
    i = j + 1;
  }
  return s;
}

class BlockRunner;
inline thread_local BlockRunner* tls_runner = nullptr;

class BlockRunner {
 public:
  explicit BlockRunner(LaunchCtx* L) : L_(L) {
    threads_.resize(L->nthreads);
    stacks_.resize(L->nthreads);
    size_t bytes = std::max<size_t>(L->dyn_smem, 16);
    bytes = (bytes + 127) / 128 * 128;
    dyn_smem_ = static_cast<unsigned char*>(std::aligned_alloc(128, bytes));
    if (!dyn_smem_) throw Error("cuemu: out of memory for dynamic shared memory");
    for (unsigned i = 0; i < L->nthreads; ++i) {
      ThreadCtx& t = threads_[i];
      t.linear = i;
      t.tid.x = i % L->block.x;
      t.tid.y = (i / L->block.x) % L->block.y;
      t.tid.z = i / (L->block.x * L->block.y);
      t.lane = i % 32;
      t.warp = i / 32;
    }
    round_.reserve(L->nthreads);
    next_.reserve(L->nthreads);
    warps_.resize((L->nthreads + 31) / 32);
    for (unsigned w = 0; w < warps_.size(); ++w) {
      unsigned nl = std::min(32u, L->nthreads - w * 32);
      warps_[w].valid = nl == 32 ? 0xffffffffu : ((1u << nl) - 1);
    }
  }
  ~BlockRunner() {
    stack_pool().release(stacks_);
    std::free(dyn_smem_);
  }

  // Runs the block; on error stores it into the launch context and returns false.
  bool run_block(unsigned long long linear_block) {
    const dim3& g = L_->grid;
    block_idx_.x = static_cast<unsigned>(linear_block % g.x);
    block_idx_.y = static_cast<unsigned>((linear_block / g.x) % g.y);
    block_idx_.z = static_cast<unsigned>(linear_block / (static_cast<unsigned long long>(g.x) * g.y));
    ++epoch_;
    if (L_->dyn_smem) std::memset(dyn_smem_, 0xFF, L_->dyn_smem);  // NaN for floats
    err_ = nullptr;
    aborting_ = false;
    const unsigned n = L_->nthreads;
    if (L_->opts.random)
      rng_.seed(L_->opts.seed * 0x9E3779B97F4A7C15ull ^ (linear_block + 0x632BE59BD9B4E019ull));
    for (unsigned i = 0; i < n; ++i) {
      ThreadCtx& t = threads_[i];
      if (!stacks_[i].base) stacks_[i] = stack_pool().acquire(L_->opts.stack_bytes);
      t.state = St::Runnable;
      t.started = false;
      // stagger stack tops so that the fibers' hot frames do not alias in the caches
      Stack st = stacks_[i];
      st.size -= (static_cast<size_t>(i) * 1088u) % 16384u;
      fiber_init(&t.ctx, st, &BlockRunner::fiber_entry, &t);
    }
    round_.resize(n);
    for (unsigned i = 0; i < n; ++i) round_[i] = i;
    next_.clear();
    for (auto& w : warps_) w.exited = w.arrived = w.at_barrier = 0;
    alive_ = n;
    BlockRunner* saved = tls_runner;
    tls_runner = this;
    while (alive_ > 0) {
      // One round: run every runnable fiber once, in the (deterministic) order in which they became
      // runnable - thread order at block start and after barriers - or shuffled in random mode.
      // Fibers hand over directly to the next one (switch_next); the last returns here. Threads
      // made runnable during the round (warp collective / barrier completed) go to next_.
      if (L_->opts.random) std::shuffle(round_.begin(), round_.end(), rng_);
      pos_ = -1;
      if (ThreadCtx* first = next_runnable()) {
        cur_ = first;
        fiber_switch(&sched_, &first->ctx);
        cur_ = nullptr;
      } else {
        resolve_waits(alive_);
      }
      if (err_) break;
      round_.swap(next_);
      next_.clear();
    }
    if (err_) abort_block();
    tls_runner = saved;
    if (err_) {
      L_->set_error(err_);
      return false;
    }
    return true;
  }

  // ---- accessors used by device code ----
  ThreadCtx* cur() const { return cur_; }
  const uint3& block_idx() const { return block_idx_; }
  LaunchCtx* launch() const { return L_; }
  unsigned char* dyn_smem() const { return dyn_smem_; }
  uint64_t epoch() const { return epoch_; }

  std::string where(const ThreadCtx* t) const {
    std::string s = "kernel '" + L_->kernel_name + "' block " + fmt3(block_idx_);
    if (t) s += " thread " + fmt3(t->tid) + " (warp " + std::to_string(t->warp) + ", lane " +
                std::to_string(t->lane) + ")";
    return s;
  }
  [[noreturn, gnu::noinline, gnu::cold]] void fail(const std::string& msg) const {
    throw Error("cuemu: " + msg + " [" + where(cur_) + "]");
  }

  // Called from device code at a sync point: hand control to the next fiber of this round.
  void yield() {
    switch_next(cur_);
    if (aborting_) throw FiberAbort{};
  }

  int barrier(BarKind kind, int pred, const char* file, unsigned line) {
    ThreadCtx* t = cur_;
    t->state = St::WaitBarrier;
    t->bar_kind = kind;
    t->bar_pred = pred != 0;
    t->bar_file = file;
    t->bar_line = line;
    warps_[t->warp].at_barrier |= 1u << t->lane;
    yield();
    return t->bar_result;
  }

  [[noreturn, gnu::noinline, gnu::cold]] void bad_warp_args(WOp op, unsigned mask, int width, const char* file,
                                                            unsigned line) const {
    if (!((mask >> cur_->lane) & 1u))
      fail(std::string(wop_name(op)) + ": calling lane " + std::to_string(cur_->lane) +
           " is not in its member mask " + hex32(mask) + " at " + loc(file, line));
    fail(std::string(wop_name(op)) + ": width " + std::to_string(width) + " is not a power of two in [1,32] at " +
         loc(file, line));
  }

  // A nanosleep / explicit yield point: lets other threads of the block run (spin-waits).
  void yield_runnable() {
    cur_->state = St::Runnable;
    next_.push_back(cur_->linear);
    yield();
  }

  uint64_t warp_op(WOp op, unsigned mask, uint64_t val, unsigned size, int arg, int width,
                   const char* file, unsigned line, int* pred_out = nullptr) {
    ThreadCtx* t = cur_;
    if (__builtin_expect(!((mask >> t->lane) & 1u) || width < 1 || width > 32 || (width & (width - 1)), 0))
      bad_warp_args(op, mask, width, file, line);
    t->state = St::WaitWarp;
    t->op = op;
    t->wmask = mask;
    t->wsize = size;
    t->warg = arg;
    t->wwidth = width;
    t->wval = val;
    t->wfile = file;
    t->wline = line;
    warps_[t->warp].arrived |= 1u << t->lane;
    if (try_complete_warp(t)) {
      if (L_->opts.random) {  // let the others run first sometimes
        next_.push_back(t->linear);
        yield();
      }
    } else {
      yield();
    }
    if (pred_out) *pred_out = t->wpred;
    return t->wout;
  }

  unsigned active_mask() const {
    const WarpState& w = warps_[cur_->warp];
    return w.valid & ~w.exited;
  }

  // CUEMU_POISON_SHARED support for AK_SHARED_ARRAY: poison once per block per variable.
  void poison_static(void* p, size_t bytes) {
    uint64_t& e = poisoned_[p];
    if (e != epoch_) {
      e = epoch_;
      std::memset(p, 0xFF, bytes);
    }
  }

 private:
  static void fiber_entry(void* arg) {
    ThreadCtx* t = static_cast<ThreadCtx*>(arg);
    BlockRunner* R = tls_runner;
    t->started = true;
    if (!R->aborting_) {
      try {
        R->L_->invoke(R->L_->payload);
      } catch (FiberAbort&) {
      } catch (Error& e) {
        if (!R->err_) R->err_ = std::current_exception();
      } catch (std::exception& e) {
        if (!R->err_)
          R->err_ = std::make_exception_ptr(
              Error(std::string("cuemu: exception in device code: ") + e.what() + " [" + R->where(t) + "]"));
      } catch (...) {
        if (!R->err_)
          R->err_ = std::make_exception_ptr(
              Error("cuemu: unknown exception in device code [" + R->where(t) + "]"));
      }
    }
    t->state = St::Done;
    --R->alive_;
    R->warps_[t->warp].exited |= 1u << t->lane;
    R->warps_[t->warp].arrived &= ~(1u << t->lane);
    if (!R->err_ && !R->aborting_ && R->warps_[t->warp].arrived) R->on_exit(t);
    R->switch_next(t);
    __builtin_trap();  // a finished fiber is never resumed
  }

  ThreadCtx* next_runnable() {
    const int n = static_cast<int>(round_.size());
    for (int k = pos_ + 1; k < n; ++k) {
      ThreadCtx& t = threads_[round_[k]];
      if (t.state == St::Runnable) {
        pos_ = k;
        return &t;
      }
    }
    pos_ = n;
    return nullptr;
  }

  void switch_next(ThreadCtx* from) {
    ThreadCtx* next = (err_ || aborting_) ? nullptr : next_runnable();
    if (next) {
      cur_ = next;
      fiber_switch(&from->ctx, &next->ctx);
    } else {
      cur_ = nullptr;
      fiber_switch(&from->ctx, &sched_);
    }
  }

  void resume(ThreadCtx& t) {
    cur_ = &t;
    fiber_switch(&sched_, &t.ctx);
    cur_ = nullptr;
  }

  // An exiting lane must not be awaited by a pending warp collective of its warp.
  void on_exit(ThreadCtx* t) {
    unsigned base = t->warp * 32;
    for (unsigned l = 0; l < 32 && base + l < L_->nthreads; ++l) {
      const ThreadCtx& o = threads_[base + l];
      if (o.state == St::WaitWarp && ((o.wmask >> t->lane) & 1u)) {
        set_err("lane " + std::to_string(t->lane) + " exited while lane " + std::to_string(o.lane) +
                    " waits for it in " + wop_name(o.op) + " (mask " + hex32(o.wmask) + ") at " +
                    loc(o.wfile, o.wline) + " (exited/absent lanes must not be in the member mask)",
                &o);
        return;
      }
    }
  }

  void set_err(const std::string& msg, const ThreadCtx* t) {
    if (!err_) err_ = std::make_exception_ptr(Error("cuemu: " + msg + " [" + where(t) + "]"));
  }

  bool try_complete_warp(ThreadCtx* t) {
    const unsigned base = t->warp * 32, mask = t->wmask;
    const WarpState& ws = warps_[t->warp];
    if (__builtin_expect(mask & (~ws.valid | ws.exited | ws.at_barrier), 0)) bad_warp_members(t);
    if ((ws.arrived & mask) != mask) return false;
    for (unsigned m = mask; m; m &= m - 1) {
      const ThreadCtx& o = threads_[base + static_cast<unsigned>(__builtin_ctz(m))];
      if (__builtin_expect(o.op != t->op || o.wmask != mask || o.wsize != t->wsize, 0)) mismatch(t, o);
    }
    complete_warp(base, mask, t);
    warps_[t->warp].arrived &= ~mask;
    return true;
  }

  [[noreturn, gnu::noinline, gnu::cold]] void bad_warp_members(const ThreadCtx* t) const {
    const unsigned base = t->warp * 32, mask = t->wmask;
    const WarpState& ws = warps_[t->warp];
    if (mask & ~ws.valid) {
      const unsigned l = static_cast<unsigned>(__builtin_ctz(mask & ~ws.valid));
      fail(std::string(wop_name(t->op)) + ": member mask " + hex32(mask) + " names lane " + std::to_string(l) +
           " which does not exist (block has " + std::to_string(L_->nthreads) + " threads) at " +
           loc(t->wfile, t->wline));
    }
    if (mask & ws.exited) {
      const unsigned l = static_cast<unsigned>(__builtin_ctz(mask & ws.exited));
      fail(std::string(wop_name(t->op)) + ": member mask " + hex32(mask) + " names lane " + std::to_string(l) +
           " which has exited, at " + loc(t->wfile, t->wline));
    }
    const unsigned l = static_cast<unsigned>(__builtin_ctz(mask & ws.at_barrier));
    const ThreadCtx& o = threads_[base + l];
    fail(std::string(wop_name(t->op)) + " at " + loc(t->wfile, t->wline) + " (mask " + hex32(mask) +
         ") waits for lane " + std::to_string(l) + " which is blocked in " + bar_name(o.bar_kind) + " at " +
         loc(o.bar_file, o.bar_line) + ": deadlock");
  }

  [[noreturn, gnu::noinline, gnu::cold]] void mismatch(const ThreadCtx* t, const ThreadCtx& o) const {
    // wsize of a wmma operation is a code of its overload (fragment types and layouts)
    auto what = [](const ThreadCtx& x) {
      const bool wmma = x.op == WOp::WmmaLoad || x.op == WOp::WmmaStore || x.op == WOp::WmmaMma;
      return std::string(wop_name(x.op)) + " (mask " + hex32(x.wmask) + ", " +
             (wmma ? "fragment types " + std::to_string(x.wsize) : std::to_string(x.wsize) + "-byte") + ") at " +
             loc(x.wfile, x.wline);
    };
    fail("mismatched warp collectives: this lane calls " + what(*t) + " but lane " + std::to_string(o.lane) +
         " waits in " + what(o));
  }

  [[noreturn, gnu::noinline, gnu::cold]] void bad_src_lane(ThreadCtx& x, unsigned l, int j, unsigned mask) {
    cur_ = &x;
    fail(std::string(wop_name(x.op)) + ": source lane " + std::to_string(j) + " of lane " + std::to_string(l) +
         " is not in the member mask " + hex32(mask) + " (undefined result on the GPU) at " + loc(x.wfile, x.wline));
  }

  void complete_warp(unsigned base, unsigned mask, ThreadCtx* t) {
    const WOp op = t->op;
    ThreadCtx* w = &threads_[base];
    auto lanes = [&](auto f) {
      for (unsigned l = 0; l < 32; ++l)
        if ((mask >> l) & 1u) f(l, w[l]);
    };
    switch (op) {
      case WOp::ShflIdx: case WOp::ShflUp: case WOp::ShflDown: case WOp::ShflXor: {
        uint64_t out[32];
        lanes([&](unsigned l, ThreadCtx& x) {
          // PTX shfl.sync semantics with c = ((32-width)<<8) | clamp
          const unsigned segmask = (32u - static_cast<unsigned>(x.wwidth)) & 31u;
          const unsigned cval = op == WOp::ShflUp ? 0u : 31u;
          const unsigned maxLane = (l & segmask) | (cval & ~segmask);
          const unsigned minLane = l & segmask;
          const unsigned b = static_cast<unsigned>(x.warg) & 31u;
          int j = 0;
          bool pval = false;
          switch (op) {
            case WOp::ShflUp: j = static_cast<int>(l) - static_cast<int>(b); pval = j >= static_cast<int>(maxLane); break;
            case WOp::ShflDown: j = static_cast<int>(l + b); pval = j <= static_cast<int>(maxLane); break;
            case WOp::ShflXor: j = static_cast<int>(l ^ b); pval = j <= static_cast<int>(maxLane); break;
            default: j = static_cast<int>(minLane | (b & ~segmask)); pval = j <= static_cast<int>(maxLane); break;
          }
          if (!pval) j = static_cast<int>(l);
          if (__builtin_expect(!((mask >> j) & 1u), 0)) bad_src_lane(x, l, j, mask);
          out[l] = w[j].wval;
        });
        cur_ = t;
        lanes([&](unsigned l, ThreadCtx& x) { x.wout = out[l]; });
        break;
      }
      case WOp::Ballot: case WOp::Any: case WOp::All: {
        unsigned bal = 0;
        lanes([&](unsigned l, ThreadCtx& x) { if (x.wval) bal |= 1u << l; });
        uint64_t r = op == WOp::Ballot ? bal : op == WOp::Any ? (bal != 0) : (bal == mask);
        lanes([&](unsigned, ThreadCtx& x) { x.wout = r; });
        break;
      }
      case WOp::SyncWarp:
        break;
      case WOp::WmmaLoad: case WOp::WmmaStore: case WOp::WmmaMma: {
        const WarpCall* d[32] = {};
        lanes([&](unsigned l, ThreadCtx& x) { d[l] = reinterpret_cast<const WarpCall*>(x.wval); });
        cur_ = t;
        d[t->lane]->complete(d, mask, this);
        break;
      }
      case WOp::MatchAny: {
        lanes([&](unsigned, ThreadCtx& x) {
          unsigned m = 0;
          lanes([&](unsigned l2, ThreadCtx& y) { if (y.wval == x.wval) m |= 1u << l2; });
          x.wout = m;
        });
        break;
      }
      case WOp::MatchAll: {
        bool all = true;
        lanes([&](unsigned, ThreadCtx& x) { if (x.wval != t->wval) all = false; });
        lanes([&](unsigned, ThreadCtx& x) { x.wout = all ? mask : 0; x.wpred = all; });
        break;
      }
      default: {
        uint64_t acc = 0;
        bool first = true;
        lanes([&](unsigned, ThreadCtx& x) {
          const uint32_t v = static_cast<uint32_t>(x.wval);
          uint32_t a = static_cast<uint32_t>(acc);
          if (first) { a = v; first = false; }
          else switch (op) {
            case WOp::RedAddU: a += v; break;
            case WOp::RedMinU: a = std::min(a, v); break;
            case WOp::RedMaxU: a = std::max(a, v); break;
            case WOp::RedMinI: a = static_cast<uint32_t>(std::min(static_cast<int32_t>(a), static_cast<int32_t>(v))); break;
            case WOp::RedMaxI: a = static_cast<uint32_t>(std::max(static_cast<int32_t>(a), static_cast<int32_t>(v))); break;
            case WOp::RedAnd: a &= v; break;
            case WOp::RedOr: a |= v; break;
            case WOp::RedXor: a ^= v; break;
            default: break;
          }
          acc = a;
        });
        lanes([&](unsigned, ThreadCtx& x) { x.wout = acc; });
        break;
      }
    }
    lanes([&](unsigned, ThreadCtx& x) {
      x.state = St::Runnable;
      if (&x != t) next_.push_back(x.linear);  // t itself keeps running (or queues itself)
    });
  }

  // Nothing is runnable: either every live thread waits at one barrier (release it) or deadlock.
  void resolve_waits(unsigned alive) {
    const unsigned n = L_->nthreads;
    for (unsigned i = 0; i < n; ++i) {
      const ThreadCtx& t = threads_[i];
      if (t.state != St::WaitWarp) continue;
      std::vector<unsigned> missing;
      std::string why;
      const unsigned base = t.warp * 32;
      for (unsigned l = 0; l < 32; ++l) {
        if (!((t.wmask >> l) & 1u) || base + l >= n) continue;
        const ThreadCtx& o = threads_[base + l];
        if (o.state == St::WaitBarrier && why.empty())
          why = "; lane " + std::to_string(l) + " is blocked in " + std::string(bar_name(o.bar_kind)) + " at " +
                loc(o.bar_file, o.bar_line);
        if (o.state != St::WaitWarp) missing.push_back(l);
      }
      set_err(std::string("deadlock: ") + wop_name(t.op) + " at " + loc(t.wfile, t.wline) + " (mask " +
                  hex32(t.wmask) + ") never completes; lanes " + ranges(missing) + " did not arrive" + why,
              &t);
      return;
    }
    // all live threads are at barriers; group by call site
    std::vector<std::pair<const ThreadCtx*, std::vector<unsigned>>> groups;
    for (unsigned i = 0; i < n; ++i) {
      const ThreadCtx& t = threads_[i];
      if (t.state != St::WaitBarrier) continue;
      bool found = false;
      for (auto& g : groups)
        if (g.first->bar_kind == t.bar_kind && same_site(g.first->bar_file, g.first->bar_line, t.bar_file, t.bar_line)) {
          g.second.push_back(i);
          found = true;
          break;
        }
      if (!found) groups.push_back({&t, {i}});
    }
    if (groups.size() != 1) {
      std::string msg = "deadlock: threads of the block wait at different barriers:";
      for (auto& g : groups)
        msg += " threads " + ranges(g.second) + " at " + bar_name(g.first->bar_kind) + " " +
               loc(g.first->bar_file, g.first->bar_line) + ";";
      if (alive < n) msg += " " + std::to_string(n - alive) + " threads exited";
      set_err(msg, nullptr);
      return;
    }
    const ThreadCtx* first = groups[0].first;
    if (alive < n && L_->opts.strict) {
      std::vector<unsigned> exited;
      for (unsigned i = 0; i < n; ++i)
        if (threads_[i].state == St::Done) exited.push_back(i);
      set_err(std::string(bar_name(first->bar_kind)) + " at " + loc(first->bar_file, first->bar_line) + " reached by " +
                  std::to_string(alive) + " of " + std::to_string(n) + " threads; threads " + ranges(exited) +
                  " exited (allowed on the GPU since Volta, flagged by CUEMU_STRICT=1)",
              nullptr);
      return;
    }
    int cnt = 0;
    for (unsigned i : groups[0].second) cnt += threads_[i].bar_pred;
    const int total = static_cast<int>(groups[0].second.size());
    int result = 0;
    switch (first->bar_kind) {
      case BarKind::Sync: result = 0; break;
      case BarKind::Count: result = cnt; break;
      case BarKind::And: result = cnt == total; break;
      case BarKind::Or: result = cnt != 0; break;
    }
    for (unsigned i : groups[0].second) {
      threads_[i].bar_result = result;
      threads_[i].state = St::Runnable;
      next_.push_back(i);
    }
    for (auto& w : warps_) w.at_barrier = 0;
  }

  // Unwind every suspended fiber (FiberAbort thrown from its sync point) so destructors run.
  void abort_block() {
    aborting_ = true;
    for (auto& t : threads_) {
      if (t.state == St::Done) continue;
      if (!t.started) {
        t.state = St::Done;
        --alive_;
        continue;
      }
      resume(t);
    }
    aborting_ = false;
  }

  LaunchCtx* L_;
  std::vector<ThreadCtx> threads_;
  std::vector<Stack> stacks_;
  std::vector<unsigned> round_, next_;  // runnable thread indices: this round / next round
  std::vector<WarpState> warps_;
  FiberCtx sched_;
  ThreadCtx* cur_ = nullptr;
  unsigned alive_ = 0;
  int pos_ = -1;
  uint3 block_idx_{0, 0, 0};
  unsigned char* dyn_smem_ = nullptr;
  uint64_t epoch_ = 0;
  std::exception_ptr err_;
  bool aborting_ = false;
  std::mt19937_64 rng_;
  std::map<void*, uint64_t> poisoned_;
};

[[noreturn]] inline void not_in_kernel(const char* what) {
  throw Error(std::string("cuemu: ") + what + " used outside of a kernel launched by cuemu::launch");
}

inline BlockRunner* runner() {
  BlockRunner* r = tls_runner;
  if (__builtin_expect(r == nullptr || r->cur() == nullptr, 0)) not_in_kernel("a device intrinsic");
  return r;
}

template <typename... P>
inline std::string param_list() {
  std::string s = __PRETTY_FUNCTION__;  // "... [with P = {const float*, int}; ...]"
  size_t a = s.find("P = {");
  if (a == std::string::npos) return sizeof...(P) ? "..." : "";
  a += 5;
  size_t b = s.find('}', a);
  return s.substr(a, b == std::string::npos ? std::string::npos : b - a);
}

// Kernel name for messages: the (demangled) symbol when the dynamic symbol table has it (shared
// libraries, or executables linked with -rdynamic), else its address and parameter types.
inline std::string kernel_name_of(const void* fn, const std::string& params) {
  Dl_info info;
  if (dladdr(fn, &info) && info.dli_sname && info.dli_saddr == fn) {
    int status = 0;
    char* d = abi::__cxa_demangle(info.dli_sname, nullptr, nullptr, &status);
    std::string s = (status == 0 && d) ? d : info.dli_sname;
    std::free(d);
    return s;
  }
  char b[32];
  std::snprintf(b, sizeof b, "kernel@%p", fn);
  return std::string(b) + "(" + params + ")";
}

inline std::mutex& smem_attr_mu() {
  static std::mutex* m = new std::mutex();
  return *m;
}
inline std::map<const void*, size_t>& smem_attr() {
  static auto* m = new std::map<const void*, size_t>();
  return *m;
}

inline void validate_launch(const std::string& name, const void* fn, dim3 grid, dim3 block, size_t smem) {
  auto bad = [&](const std::string& m) {
    throw Error("cuemu: invalid launch configuration of kernel '" + name + "' (grid " + fmt3(uint3{grid.x, grid.y, grid.z}) +
                ", block " + fmt3(uint3{block.x, block.y, block.z}) + ", dynamic smem " + std::to_string(smem) +
                " B): " + m);
  };
  if (block.x == 0 || block.y == 0 || block.z == 0) bad("block dimensions must be >= 1");
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) bad("grid dimensions must be >= 1");
  if (static_cast<unsigned long long>(block.x) * block.y * block.z > kMaxThreadsPerBlock)
    bad("more than 1024 threads per block");
  if (block.x > kMaxBlockDimXY || block.y > kMaxBlockDimXY || block.z > kMaxBlockDimZ)
    bad("block dimension limits are (1024, 1024, 64)");
  if (grid.x > kMaxGridDimX || grid.y > kMaxGridDimYZ || grid.z > kMaxGridDimYZ)
    bad("grid dimension limits are (2^31-1, 65535, 65535)");
  size_t limit = kDefaultDynSmemLimit;
  {
    std::lock_guard<std::mutex> g(smem_attr_mu());
    auto it = smem_attr().find(fn);
    if (it != smem_attr().end()) limit = it->second;
  }
  if (smem > limit) {
    if (smem > kMaxDynSmem) bad("dynamic shared memory exceeds the 227 KB (232448 B) per-block maximum");
    bad("dynamic shared memory exceeds " + std::to_string(limit) +
        " B; above 48 KB the kernel must opt in first (ak::set_max_dynamic_shared_memory / "
        "cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize))");
  }
}

template <typename Kernel, typename Tuple>
struct Payload {
  Kernel kernel;
  Tuple params;
  static void invoke(const void* p) {
    const Payload* self = static_cast<const Payload*>(p);
    std::apply(self->kernel, self->params);  // each thread gets its own by-value copies
  }
};

// CUEMU_BLOCK_ORDER as the affine bijection run_grid maps the take order through: reverse is
// (n - 1) - i; random:<seed> a seeded multiplier coprime to n and a seeded offset.
inline void set_block_order(LaunchCtx& L) {
  const unsigned long long n = L.nblocks;
  if (n < 2 || L.opts.block_order == Options::BlockOrder::Index) return;
  if (L.opts.block_order == Options::BlockOrder::Reverse) {
    L.order_mul = n - 1;  // (n - 1) * i + (n - 1) = (n - 1) - i (mod n)
    L.order_add = n - 1;
    return;
  }
  uint64_t h = L.opts.block_seed * 0x9E3779B97F4A7C15ull + 0xD1B54A32D192ED03ull;
  h ^= h >> 31;
  unsigned long long mul = 1 + h % (n - 1);
  while (std::gcd(mul, n) != 1) mul = mul % (n - 1) + 1;
  L.order_mul = mul;
  L.order_add = (h >> 17) % n;
}

inline void run_grid(LaunchCtx& L) {
  // default: one worker per core, at most 24 (each worker maps 2 VMAs per fiber stack: keeps
  // 1024-thread blocks below the default vm.max_map_count); CUEMU_THREADS overrides.
  unsigned hw = std::min(24u, std::max(1u, std::thread::hardware_concurrency()));
  unsigned nw = L.opts.threads ? L.opts.threads : hw;
  if (static_cast<unsigned long long>(nw) > L.nblocks) nw = static_cast<unsigned>(L.nblocks);
  if (nw < 1) nw = 1;
  set_block_order(L);
  auto work = [&L]() {
    try {
      BlockRunner R(&L);
      for (;;) {
        if (L.failed.load(std::memory_order_relaxed)) break;
        unsigned long long b = L.next_block.fetch_add(1);
        if (b >= L.nblocks) break;
        b = static_cast<unsigned long long>((static_cast<unsigned __int128>(L.order_mul) * b + L.order_add) % L.nblocks);
        if (!R.run_block(b)) break;
      }
    } catch (...) {
      L.set_error(std::current_exception());
    }
  };
  std::vector<std::thread> ws;
  ws.reserve(nw - 1);
  for (unsigned i = 1; i < nw; ++i) ws.emplace_back(work);
  work();  // the calling thread is worker 0
  for (auto& w : ws) w.join();
  if (L.err) std::rethrow_exception(L.err);
}

// A thread-block cluster in flight: its blocks run at the same time, one OS thread each, so the
// cluster barrier is a barrier across those threads, and a block reaches the others' dynamic
// shared memory by rank (DSMEM).
struct ClusterCtx {
  LaunchCtx* L = nullptr;
  unsigned size = 1;
  std::vector<unsigned char*> smem;  // each rank's dynamic shared memory
  std::mutex mu;
  std::condition_variable cv;
  unsigned arrived = 0;
  unsigned long long phase = 0;

  // Returns when every block of the cluster has arrived; raises instead of hanging when the
  // launch failed meanwhile or a block does not arrive within CUEMU_SPIN_TIMEOUT_S.
  void barrier() {
    std::unique_lock<std::mutex> lk(mu);
    const unsigned long long my = phase;
    if (++arrived == size) {
      arrived = 0;
      ++phase;
      cv.notify_all();
      return;
    }
    const auto t0 = std::chrono::steady_clock::now();
    while (phase == my) {
      cv.wait_for(lk, std::chrono::milliseconds(20));
      if (phase != my) break;
      if (L->failed.load())
        throw Error("cuemu: " + L->kernel_name + ": cluster barrier abandoned, another block failed");
      if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > L->opts.spin_timeout_s)
        throw Error("cuemu: " + L->kernel_name + ": cluster barrier: not every block of the cluster arrived within " +
                    std::to_string(L->opts.spin_timeout_s) + " s (CUEMU_SPIN_TIMEOUT_S)");
    }
  }
};
inline thread_local ClusterCtx* tls_cluster = nullptr;
inline thread_local unsigned tls_cluster_rank = 0;

// Clusters of cx consecutive blocks along x, one cluster at a time, its blocks on cx OS threads.
inline void run_grid_clusters(LaunchCtx& L, unsigned cx) {
  const unsigned long long nclusters = L.nblocks / cx;
  for (unsigned long long k = 0; k < nclusters && !L.failed.load(); ++k) {
    ClusterCtx C;
    C.L = &L;
    C.size = cx;
    C.smem.assign(cx, nullptr);
    auto body = [&C, &L, k, cx](unsigned r) {
      try {
        BlockRunner R(&L);
        C.smem[r] = R.dyn_smem();
        tls_cluster = &C;
        tls_cluster_rank = r;
        C.barrier();  // every rank's shared memory is registered before any block runs
        R.run_block(k * cx + r);
      } catch (...) {
        L.set_error(std::current_exception());
      }
      tls_cluster = nullptr;
    };
    std::vector<std::thread> ts;
    ts.reserve(cx - 1);
    for (unsigned r = 1; r < cx; ++r) ts.emplace_back(body, r);
    body(0);
    for (auto& t : ts) t.join();
  }
  if (L.err) std::rethrow_exception(L.err);
}

}  // namespace detail

// Opt a kernel into more than 48 KB of dynamic shared memory (cudaFuncSetAttribute analogue).
template <typename... P>
inline void set_max_dynamic_shared_memory(void (*kernel)(P...), size_t bytes) {
  if (bytes > kMaxDynSmem)
    throw Error("cuemu: set_max_dynamic_shared_memory(" + std::to_string(bytes) +
                "): exceeds the 227 KB (232448 B) maximum");
  std::lock_guard<std::mutex> g(detail::smem_attr_mu());
  detail::smem_attr()[reinterpret_cast<const void*>(kernel)] = bytes;
}

namespace detail {
template <typename... P, typename... A>
inline void launch_impl(void (*kernel)(P...), dim3 grid, dim3 block, size_t dyn_smem, unsigned cluster_x,
                        A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "cuemu::launch: wrong number of kernel arguments");
  if (tls_runner && tls_runner->cur())
    throw Error("cuemu: launching a kernel from device code (dynamic parallelism) is not supported");
  const void* fn = reinterpret_cast<const void*>(kernel);
  std::string name = kernel_name_of(fn, param_list<P...>());
  validate_launch(name, fn, grid, block, dyn_smem);
  if (cluster_x != 1 && (cluster_x == 0 || cluster_x > 16 || grid.x % cluster_x != 0 || grid.y != 1 || grid.z != 1))
    throw Error("cuemu: " + name + ": invalid cluster of " + std::to_string(cluster_x) + " blocks for grid " +
                fmt3(uint3{grid.x, grid.y, grid.z}) + " (1-16 blocks along x; grid.x a multiple, grid 1-D)");
  using Tuple = std::tuple<std::decay_t<P>...>;
  using Pl = Payload<void (*)(P...), Tuple>;
  Pl payload{kernel, Tuple(std::forward<A>(args)...)};
  LaunchCtx L;
  L.kernel_name = std::move(name);
  L.grid = grid;
  L.block = block;
  L.dyn_smem = dyn_smem;
  L.nthreads = block.x * block.y * block.z;
  L.nblocks = static_cast<unsigned long long>(grid.x) * grid.y * grid.z;
  L.invoke = &Pl::invoke;
  L.payload = &payload;
  L.opts = Options::from_env();
  if (L.opts.no_run) return;
  if (cluster_x > 1)
    run_grid_clusters(L, cluster_x);
  else
    run_grid(L);
}
}  // namespace detail

// Runs the whole grid on the CPU and returns when it is done; rethrows any device-side error.
template <typename... P, typename... A>
inline void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t dyn_smem, A&&... args) {
  detail::launch_impl(kernel, grid, block, dyn_smem, 1u, std::forward<A>(args)...);
}

// The same with thread-block clusters of cluster_x consecutive blocks along x (1-D grids): the
// cluster's blocks run concurrently on their own OS threads (cluster_sync, cluster_map below).
template <typename... P, typename... A>
inline void launch_cluster(void (*kernel)(P...), dim3 grid, dim3 block, size_t dyn_smem, unsigned cluster_x,
                           A&&... args) {
  detail::launch_impl(kernel, grid, block, dyn_smem, cluster_x, std::forward<A>(args)...);
}

// The body of an inter-block spin-wait loop (iter = 0, 1, 2, ... within one wait). Workers take
// blocks in blockIdx order and run each to completion, so a wait on a block that started earlier
// (e.g. an item with a smaller atomic ticket) progresses on another worker. A wait that cannot end
// (on a block that has not started, or after another block failed) raises instead of hanging.
inline void spin_pause(unsigned iter) {
  detail::BlockRunner* R = detail::runner();
  detail::LaunchCtx* L = R->launch();
  if (L->failed.load())
    throw Error("cuemu: " + L->kernel_name + ": spin-wait abandoned, another block failed");
  using clock = std::chrono::steady_clock;
  static thread_local clock::time_point t0;
  if (iter == 0) {
    t0 = clock::now();
  } else if (std::chrono::duration<double>(clock::now() - t0).count() > L->opts.spin_timeout_s) {
    throw Error("cuemu: " + L->kernel_name + ": inter-block spin-wait still waiting after " +
                std::to_string(L->opts.spin_timeout_s) +
                " s (CUEMU_SPIN_TIMEOUT_S): waiting on a block that has not started?");
  }
  R->yield_runnable();
  if (iter >= 16) std::this_thread::yield();
}

inline unsigned char* dynamic_shared_memory() {
  return detail::runner()->dyn_smem();
}

}  // namespace cuemu

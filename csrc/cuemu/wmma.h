// cuemu/wmma.h - CUDA's warp matrix API (nvcuda::wmma, <mma.h>) for host compilation: the
// m16n16k16 shape with __half / __nv_bfloat16 inputs and float (or __half) accumulators, as the
// tensor cores of sm_80+ run it. Included by cuemu.h after device.h; kernels use it exactly as
// under nvcc (csrc/common/cuda_compat.h includes <mma.h> there).
//
// Semantics kept from the GPU:
//  * load_matrix_sync, store_matrix_sync and mma_sync are warp collectives: every lane of the warp
//    calls them (the same overload), load/store with the same pointer, ldm and layout. A lane that
//    is missing, has exited or calls something else raises a cuemu::Error as the other warp
//    collectives do (deadlock, exited lane, mismatched collectives); a lane passing a different
//    pointer / ldm / layout raises too. fill_fragment is a per-lane loop, as in <mma.h>.
//  * The pointer must be 256-bit (32-byte) aligned and ldm a multiple of 16 bytes (8 __half or
//    __nv_bfloat16 elements, 4 floats), or the call raises (the GPU faults or reads garbage).
//  * fragment<...>::num_elements and x[] per lane are those of <mma.h>: 16 for __half matrix_a /
//    matrix_b, 8 for __nv_bfloat16 matrix_a / matrix_b and for accumulators. Which matrix element a
//    lane's x[i] holds is unspecified by CUDA; here it is the mma.m16n8k16 register layout (lane =
//    4 * g + t; x[i] of an accumulator or a matrix_a holds row g + 8 * ((i >> 1) & 1), column
//    2 * t + (i & 1) + 8 * (i >> 2); x[i] of a matrix_b holds row 2 * t + (i & 1) + 8 * ((i >> 1) & 1),
//    column g + 8 * (i >> 2)). A __half matrix_a / matrix_b fragment holds every element twice (x[i]
//    and x[i + 8]), as its 16 elements per lane do on the GPU; mma_sync raises when the two copies
//    differ: a kernel that changed only some elements depends on the unspecified mapping.
//  * mma_sync: D = A B + C with every product exact (a product of two fp16 or two bf16 values fits
//    a float) and the sum accumulated in fp32 in k order starting from C, one rounding per add; a
//    __half D is rounded from that float sum. The tensor cores add the products with a wider
//    aligned sum and truncate, so results can differ from the GPU in the last bits of fp32.
//  * A store is each lane writing its own elements after the rendezvous: another lane reads them
//    only after __syncwarp() / __syncthreads(), as with plain stores (CUEMU_SCHEDULE=random shows
//    a missing one).
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>

#include "runtime.h"

namespace nvcuda {
namespace wmma {

struct row_major;
struct col_major;
struct matrix_a;
struct matrix_b;
struct accumulator;

enum layout_t { mem_row_major, mem_col_major };

template <typename T>
struct helper_traits {
  typedef T element_type;
  typedef T storage_element_type;
  typedef T fill_argument_type;
};

template <typename T, int size, int packed_size = size>
struct __align__(8) __frag_base {
  enum { num_elements = size };
  enum { num_storage_elements = packed_size };
  typedef T element_type;
  typedef typename helper_traits<T>::storage_element_type storage_element_type;
  storage_element_type x[num_storage_elements];
};

template <typename FragEleType, int size, int packed_size>
inline void fill_fragment(__frag_base<FragEleType, size, packed_size>& f,
                          const typename helper_traits<FragEleType>::fill_argument_type& in) {
  for (int i = 0; i < f.num_storage_elements; i++) f.x[i] = in;
}

// Only the combinations <mma.h> defines for m16n16k16 with floating-point inputs exist: any other
// fragment is an incomplete type, a compile error as under nvcc.
template <typename Use, int m, int n, int k, typename T, typename Layout = void>
class fragment;
template <> class fragment<matrix_a, 16, 16, 16, __half, row_major> : public __frag_base<__half, 16> {};
template <> class fragment<matrix_a, 16, 16, 16, __half, col_major> : public __frag_base<__half, 16> {};
template <> class fragment<matrix_b, 16, 16, 16, __half, row_major> : public __frag_base<__half, 16> {};
template <> class fragment<matrix_b, 16, 16, 16, __half, col_major> : public __frag_base<__half, 16> {};
template <> class fragment<accumulator, 16, 16, 16, __half> : public __frag_base<__half, 8> {};
template <> class fragment<accumulator, 16, 16, 16, float> : public __frag_base<float, 8> {};
template <> class fragment<matrix_a, 16, 16, 16, __nv_bfloat16, row_major> : public __frag_base<__nv_bfloat16, 8> {};
template <> class fragment<matrix_a, 16, 16, 16, __nv_bfloat16, col_major> : public __frag_base<__nv_bfloat16, 8> {};
template <> class fragment<matrix_b, 16, 16, 16, __nv_bfloat16, row_major> : public __frag_base<__nv_bfloat16, 8> {};
template <> class fragment<matrix_b, 16, 16, 16, __nv_bfloat16, col_major> : public __frag_base<__nv_bfloat16, 8> {};

}  // namespace wmma
}  // namespace nvcuda

namespace cuemu {
namespace detail {
namespace wmma {
namespace W = ::nvcuda::wmma;

template <typename T> inline float to_f(T v) { return static_cast<float>(v); }
template <> inline float to_f<__half>(__half v) { return __half2float(v); }
template <> inline float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> inline T from_f(float v) { return static_cast<T>(v); }
template <> inline __half from_f<__half>(float v) { return __float2half_rn(v); }

template <typename T> constexpr unsigned type_code() {
  return std::is_same<T, __half>::value ? 1u : std::is_same<T, __nv_bfloat16>::value ? 2u : 3u;
}
template <typename Use> constexpr unsigned use_code() {
  return std::is_same<Use, W::matrix_a>::value ? 1u : std::is_same<Use, W::matrix_b>::value ? 2u : 3u;
}
template <typename L> constexpr unsigned layout_code() {
  return std::is_same<L, W::row_major>::value ? 1u : std::is_same<L, W::col_major>::value ? 2u : 0u;
}

// The (row, column) in its 16x16 matrix (A: m x k, B: k x n, C/D: m x n) that element i of lane's
// fragment holds (the mma.m16n8k16 register layout; x[i + 8] of a __half A/B repeats x[i]).
template <typename Use>
inline void elem_pos(unsigned lane, int i, int& r, int& c) {
  const int g = static_cast<int>(lane >> 2), t = static_cast<int>(lane & 3u), j = i & 7;
  if (std::is_same<Use, W::matrix_b>::value) {
    r = 2 * t + (j & 1) + 8 * ((j >> 1) & 1);
    c = g + 8 * (j >> 2);
  } else {
    r = g + 8 * ((j >> 1) & 1);
    c = 2 * t + (j & 1) + 8 * (j >> 2);
  }
}

// Offset of element (r, c) in memory: `row` is true when consecutive columns are adjacent.
inline size_t mem_offset(int r, int c, unsigned ldm, bool row) {
  return row ? static_cast<size_t>(r) * ldm + static_cast<size_t>(c) : static_cast<size_t>(c) * ldm + static_cast<size_t>(r);
}

[[noreturn, gnu::noinline, gnu::cold]] inline void fail(const std::string& m) { runner()->fail(m); }

// Lane-local argument checks (the GPU's requirements for wmma.load / wmma.store).
inline void check_ptr(WOp op, const void* p, unsigned ldm, size_t elem, const char* f, unsigned l) {
  const char* name = wop_name(op);
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) {
    char b[64];
    std::snprintf(b, sizeof b, "%p", p);
    fail(std::string(name) + ": pointer " + b + " is not 256-bit (32-byte) aligned at " + loc(f, l));
  }
  if ((static_cast<size_t>(ldm) * elem) % 16 != 0)
    fail(std::string(name) + ": ldm " + std::to_string(ldm) + " must be a multiple of " +
         std::to_string(16 / elem) + " elements (16 bytes) at " + loc(f, l));
}

struct MemDesc : WarpCall {
  const void* p;
  unsigned ldm;
  int layout;  // 1: consecutive columns adjacent (row major), 0: consecutive rows adjacent
  WOp op;
  const char* f;
  unsigned l;
};

// load / store: every lane of the mask must name the same memory.
inline void check_same_mem(const WarpCall* const* lanes, unsigned mask, BlockRunner*) {
  const MemDesc* first = nullptr;
  unsigned first_lane = 0;
  for (unsigned l = 0; l < 32; ++l) {
    if (!((mask >> l) & 1u)) continue;
    const MemDesc* d = static_cast<const MemDesc*>(lanes[l]);
    if (!first) {
      first = d;
      first_lane = l;
      continue;
    }
    if (d->p != first->p || d->ldm != first->ldm || d->layout != first->layout) {
      char b[160];
      std::snprintf(b, sizeof b, "lane %u passes (%p, ldm %u, %s) but lane %u passes (%p, ldm %u, %s)", l, d->p,
                    d->ldm, d->layout ? "row major" : "col major", first_lane, first->p, first->ldm,
                    first->layout ? "row major" : "col major");
      fail(std::string(wop_name(d->op)) + ": every lane of the warp must pass the same matrix: " + b + " at " +
           loc(d->f, d->l));
    }
  }
}

inline void warp_call(WOp op, const WarpCall* d, unsigned code, const char* f, unsigned l) {
  runner()->warp_op(op, 0xffffffffu, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(d)), code, 0, 32, f, l);
}

// The rendezvous of a load or store of the matrix at p (code: the overload); returns the lane.
inline unsigned mem_call(WOp op, const void* p, unsigned ldm, size_t elem, bool row, unsigned code, const char* f,
                         unsigned l) {
  check_ptr(op, p, ldm, elem, f, l);
  MemDesc d;
  d.complete = &check_same_mem;
  d.p = p;
  d.ldm = ldm;
  d.layout = row;
  d.op = op;
  d.f = f;
  d.l = l;
  warp_call(op, &d, code, f, l);
  return runner()->cur()->lane;
}

template <typename Use, typename T, typename Layout>
inline void load(W::fragment<Use, 16, 16, 16, T, Layout>& a, const T* p, unsigned ldm, bool row, const char* f,
                 unsigned l) {
  const unsigned lane = mem_call(WOp::WmmaLoad, p, ldm, sizeof(T), row,
                                 100 * use_code<Use>() + 10 * type_code<T>() + layout_code<Layout>(), f, l);
  for (int i = 0; i < a.num_elements; ++i) {
    int r, c;
    elem_pos<Use>(lane, i, r, c);
    a.x[i] = p[mem_offset(r, c, ldm, row)];
  }
}

// Both copies of each element of a __half A/B fragment (x[i], x[i + 8]) must agree.
template <typename Frag>
inline void check_copies(const Frag& a, const char* what, unsigned lane, const char* f, unsigned l) {
  if (a.num_elements != 16) return;
  for (int i = 0; i < 8; ++i)
    if (std::memcmp(&a.x[i], &a.x[i + 8], sizeof(a.x[i])) != 0)
      fail(std::string("nvcuda::wmma::mma_sync: lane ") + std::to_string(lane) + "'s " + what + " fragment has x[" +
           std::to_string(i) + "] != x[" + std::to_string(i + 8) +
           "], two copies of one matrix element here: the element mapping is unspecified, so change every "
           "element of a fragment alike at " +
           loc(f, l));
}

struct MmaDesc : WarpCall {
  void* d;
  const void *a, *b, *c;
  const char* f;
  unsigned l;
};

template <typename Td, typename Tab, typename La, typename Lb, typename Tc>
struct Mma {
  using FD = W::fragment<W::accumulator, 16, 16, 16, Td>;
  using FA = W::fragment<W::matrix_a, 16, 16, 16, Tab, La>;
  using FB = W::fragment<W::matrix_b, 16, 16, 16, Tab, Lb>;
  using FC = W::fragment<W::accumulator, 16, 16, 16, Tc>;

  // Gathers A, B, C from every lane's fragments, then writes every lane's D (D may be C or alias
  // nothing; everything is read before anything is written).
  static void complete(const WarpCall* const* lanes, unsigned, BlockRunner*) {
    float A[16][16], B[16][16], C[16][16];
    for (unsigned ln = 0; ln < 32; ++ln) {
      const MmaDesc* m = static_cast<const MmaDesc*>(lanes[ln]);
      const FA& a = *static_cast<const FA*>(m->a);
      const FB& b = *static_cast<const FB*>(m->b);
      const FC& c = *static_cast<const FC*>(m->c);
      check_copies(a, "matrix_a", ln, m->f, m->l);
      check_copies(b, "matrix_b", ln, m->f, m->l);
      int r, q;
      for (int i = 0; i < 8; ++i) {
        elem_pos<W::matrix_a>(ln, i, r, q);
        A[r][q] = to_f(a.x[i]);
        elem_pos<W::matrix_b>(ln, i, r, q);
        B[r][q] = to_f(b.x[i]);
        elem_pos<W::accumulator>(ln, i, r, q);
        C[r][q] = to_f(c.x[i]);
      }
    }
    float D[16][16];
    for (int i = 0; i < 16; ++i)
      for (int j = 0; j < 16; ++j) {
        float s = C[i][j];
        for (int k = 0; k < 16; ++k) s += A[i][k] * B[k][j];  // the product is exact in fp32
        D[i][j] = s;
      }
    for (unsigned ln = 0; ln < 32; ++ln) {
      FD& d = *static_cast<FD*>(static_cast<const MmaDesc*>(lanes[ln])->d);
      int r, q;
      for (int i = 0; i < 8; ++i) {
        elem_pos<W::accumulator>(ln, i, r, q);
        d.x[i] = from_f<Td>(D[r][q]);
      }
    }
  }
};

}  // namespace wmma
}  // namespace detail
}  // namespace cuemu

namespace nvcuda {
namespace wmma {

// matrix_a / matrix_b: the fragment's own layout says how the matrix lies in memory.
template <typename Use, typename T, typename Layout,
          typename = std::enable_if_t<!std::is_same<Use, accumulator>::value>>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& a, const T* p, unsigned ldm,
                             const char* f = __builtin_FILE(), unsigned l = __builtin_LINE()) {
  ::cuemu::detail::wmma::load(a, p, ldm, std::is_same<Layout, row_major>::value, f, l);
}

template <typename T>
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, T>& a, const T* p, unsigned ldm, layout_t layout,
                             const char* f = __builtin_FILE(), unsigned l = __builtin_LINE()) {
  ::cuemu::detail::wmma::load(a, p, ldm, layout == mem_row_major, f, l);
}

template <typename T>
inline void store_matrix_sync(T* p, const fragment<accumulator, 16, 16, 16, T>& a, unsigned ldm, layout_t layout,
                              const char* f = __builtin_FILE(), unsigned l = __builtin_LINE()) {
  namespace E = ::cuemu::detail::wmma;
  using ::cuemu::detail::WOp;
  const bool row = layout == mem_row_major;
  const unsigned lane = E::mem_call(WOp::WmmaStore, p, ldm, sizeof(T), row, 300 + 10 * E::type_code<T>(), f, l);
  for (int i = 0; i < a.num_elements; ++i) {
    int r, c;
    E::elem_pos<accumulator>(lane, i, r, c);
    p[E::mem_offset(r, c, ldm, row)] = a.x[i];
  }
}

// D = A B + C. __half inputs: any accumulator types; __nv_bfloat16 inputs: float only (<mma.h>).
template <typename Td, typename Tab, typename La, typename Lb, typename Tc>
inline void mma_sync(fragment<accumulator, 16, 16, 16, Td>& d, const fragment<matrix_a, 16, 16, 16, Tab, La>& a,
                     const fragment<matrix_b, 16, 16, 16, Tab, Lb>& b, const fragment<accumulator, 16, 16, 16, Tc>& c,
                     const char* f = __builtin_FILE(), unsigned l = __builtin_LINE()) {
  namespace E = ::cuemu::detail::wmma;
  static_assert(std::is_same<Tab, __half>::value ||
                    (std::is_same<Td, float>::value && std::is_same<Tc, float>::value),
                "nvcuda::wmma::mma_sync: __nv_bfloat16 inputs take float accumulators only");
  E::MmaDesc m;
  m.complete = &E::Mma<Td, Tab, La, Lb, Tc>::complete;
  m.d = &d;
  m.a = &a;
  m.b = &b;
  m.c = &c;
  m.f = f;
  m.l = l;
  const unsigned code = 1000 * E::type_code<Td>() + 100 * E::type_code<Tab>() + 10 * E::layout_code<La>() +
                        E::layout_code<Lb>() + 10000 * E::type_code<Tc>();
  E::warp_call(::cuemu::detail::WOp::WmmaMma, &m, code, f, l);
}

}  // namespace wmma
}  // namespace nvcuda

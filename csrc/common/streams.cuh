// Streaming passes over one sample of a feature map viewed as a row-major (rows x cols) matrix
// (NCHW: channels x pixels; channels_last: pixels x channels), with the per-element work a functor
// (both builds: nvcc, and the host compiler with csrc/cuemu):
//   row_stream   the lanes of a group share a row segment (its contiguous elements; 16-byte loads
//                from the first aligned element on)
//   col_stream   a thread takes VC adjacent columns and strides down the rows (16-byte loads when
//                VC > 1)
//   map_tile     an element-wise map of a tile, out = f(row, col, x, dy)
// and the fixed-order merges of the partial results they leave ("states": structs with
//   using value_type = A;  static constexpr int NF;  A v[NF];  void merge(const State& o)
// that fold o into *this). Every merge runs in an order fixed by the geometry, so results are the
// same bits run to run. SE's squeeze (csrc/se/kernels.cuh: row_accum, nhwc_tile) is a hand-tuned
// sum/max instance of row_stream / col_stream.
#pragma once

#include "device_utils.cuh"

namespace ak {
inline namespace AK_BACKEND_NS {

// Merge over aligned groups of G lanes (a power of two <= 32; every lane of the warp calls it): a
// butterfly, so the group's lane 0 ends with a value fixed by the lanes' inputs.
template <typename St> AK_INL void group_merge(St& s, int G) {
  for (int off = G >> 1; off > 0; off >>= 1) {
    St o;
    AK_PRAGMA_UNROLL(St::NF)
    for (int f = 0; f < St::NF; ++f) o.v[f] = __shfl_xor_sync(0xffffffffu, s.v[f], off);
    s.merge(o);
  }
}

// Merge of every thread's state (blockDim.x a multiple of 32): the warps' butterflies, then
// thread 0 folds the warps in order. The result is in thread 0. red: 32 * NF accumulators of shared
// memory. Ends with a barrier.
template <typename St> AK_INL St block_merge(St s, typename St::value_type* red) {
  group_merge(s, 32);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  if (lane == 0 && warp > 0) {
    AK_PRAGMA_UNROLL(St::NF)
    for (int f = 0; f < St::NF; ++f) red[warp * St::NF + f] = s.v[f];
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < nw; ++w) {
      St o;
      AK_PRAGMA_UNROLL(St::NF)
      for (int f = 0; f < St::NF; ++f) o.v[f] = red[w * St::NF + f];
      s.merge(o);
    }
  }
  __syncthreads();
  return s;
}

// The states of VC columns held by thread rows ty < TY (thread ty * width + tx) folded into thread
// row 0 (tree_combine: log2 TY steps, fixed order). red: TY * width * VC * NF accumulators. Every
// thread of the block calls it; ends without a barrier (the caller syncs before reusing red).
template <int VC, typename St>
AK_INL void tree_merge(St (&s)[VC], int ty, int tx, int TY, int width, typename St::value_type* red) {
  tree_combine(
      ty, tx, TY, width,
      [&](int slot) {
        AK_PRAGMA_UNROLL(VC)
        for (int k = 0; k < VC; ++k) {
          AK_PRAGMA_UNROLL(St::NF)
          for (int f = 0; f < St::NF; ++f) red[(slot * VC + k) * St::NF + f] = s[k].v[f];
        }
      },
      [&](int slot) {
        AK_PRAGMA_UNROLL(VC)
        for (int k = 0; k < VC; ++k) {
          St o;
          AK_PRAGMA_UNROLL(St::NF)
          for (int f = 0; f < St::NF; ++f) o.v[f] = red[(slot * VC + k) * St::NF + f];
          s[k].merge(o);
        }
      });
}

// f(i, x[i], dy[i]) (as the accumulation type; dy 0 unless TWO) for the elements i < len of a
// contiguous row segment that lane gl of a G-lane group takes: the elements before the first
// 16-byte boundary one at a time, then 16-byte vectors (U of them loaded before any is used, so a
// lane has U loads in flight), then the tail. vec_ok: 16-byte loads allowed (TWO: x and dy must
// have the same alignment mod 16). A fixed order for a given geometry.
template <typename T, bool TWO, int U, typename F>
AK_INL void row_stream(const T* x, const T* dy, int len, int gl, int G, bool vec_ok, F& f) {
  using A = typename Acc<T>::type;
  constexpr int V = Vec<T>::N;
  int head = len, nvec = 0;
  if (vec_ok) {
    head = min(len, (int)(((16u - (unsigned)((uintptr_t)x & 15u)) & 15u) / sizeof(T)));
    nvec = (len - head) / V;
  }
  for (int i = gl; i < head; i += G) f(i, to_acc(x[i]), TWO ? to_acc(dy[i]) : A(0));
  const Vec<T>* xv = reinterpret_cast<const Vec<T>*>(x + head);
  const Vec<T>* dv = reinterpret_cast<const Vec<T>*>((TWO ? dy : x) + head);
  for (int v0 = gl; v0 < nvec; v0 += U * G) {
    Vec<T> xx[U], dd[U];
    AK_PRAGMA_UNROLL(U)
    for (int j = 0; j < U; ++j) {
      if (v0 + j * G < nvec) {
        xx[j] = ak::load_vec(xv + v0 + j * G);
        if (TWO) dd[j] = ak::load_vec(dv + v0 + j * G);
      }
    }
    AK_PRAGMA_UNROLL(U)
    for (int j = 0; j < U; ++j) {
      if (v0 + j * G < nvec) {
        const int i0 = head + (v0 + j * G) * V;
        AK_PRAGMA_UNROLL(V)
        for (int k = 0; k < V; ++k) f(i0 + k, to_acc(xx[j].v[k]), TWO ? to_acc(dd[j].v[k]) : A(0));
      }
    }
  }
  for (int i = head + nvec * V + gl; i < len; i += G) f(i, to_acc(x[i]), TWO ? to_acc(dy[i]) : A(0));
}

// f(r, k, x[r * ld + k], dy[r * ld + k]) for k < VC and the rows r = r0 + ty, r0 + ty + TY, ... < r1
// (x, dy: this thread's first column of row 0; 16-byte aligned when VC > 1), U rows loaded before
// any is used.
template <typename T, bool TWO, int VC, int U, typename F>
AK_INL void col_stream(const T* x, const T* dy, size_t ld, int r0, int r1, int ty, int TY, F& f) {
  using A = typename Acc<T>::type;
  for (int rb = r0 + ty; rb < r1; rb += U * TY) {
    T xx[U][VC], dd[U][VC];
    AK_PRAGMA_UNROLL(U)
    for (int j = 0; j < U; ++j) {
      const int r = rb + j * TY;
      if (r < r1) {
        load_elems<T, VC>(x + (size_t)r * ld, xx[j]);
        if (TWO) load_elems<T, VC>(dy + (size_t)r * ld, dd[j]);
      }
    }
    AK_PRAGMA_UNROLL(U)
    for (int j = 0; j < U; ++j) {
      const int r = rb + j * TY;
      if (r < r1) {
        AK_PRAGMA_UNROLL(VC)
        for (int k = 0; k < VC; ++k) f(r, k, to_acc(xx[j][k]), TWO ? to_acc(dd[j][k]) : A(0));
      }
    }
  }
}

// p[0..VV) = w[0..VV): one 16-byte store when VV > 1 (p aligned), else one element.
template <typename T, int VV> AK_INL void store_elems(T* p, const T* w) {
  if (VV > 1) {
    Vec<T> t;
    AK_PRAGMA_UNROLL(VV)
    for (int j = 0; j < VV; ++j) t.v[j] = w[j];
    ak::store_vec(reinterpret_cast<Vec<T>*>(p), t);
  } else {
    p[0] = w[0];
  }
}

// out[r * ld + c] = f(r, c, x[r * ld + c], dy[...]) over rows [r0, r1) x columns [c0, c1) of a
// row-major matrix, VV adjacent columns a unit (VV > 1: 16-byte accesses, so x, dy, out aligned,
// ld, c0 and c1 - c0 multiples of VV), the block's threads over the units in order, U units a
// thread loaded before any is stored (out may alias nothing the compiler can see, so a load would
// otherwise wait for the store before it).
template <typename T, bool TWO, int VV, int U, typename F>
AK_INL void map_tile(const T* x, const T* dy, T* out, size_t ld, int r0, int r1, int c0, int c1, F& f) {
  using A = typename Acc<T>::type;
  const int cw = (c1 - c0) / VV, units = (r1 - r0) * cw, nt = blockDim.x;
  for (int u0 = threadIdx.x; u0 < units; u0 += U * nt) {
    T xx[U][VV], dd[U][VV];
    AK_PRAGMA_UNROLL(U)
    for (int j = 0; j < U; ++j) {
      const int u = u0 + j * nt;
      if (u < units) {
        const int r = r0 + u / cw, c = c0 + (u % cw) * VV;
        load_elems<T, VV>(x + (size_t)r * ld + c, xx[j]);
        if (TWO) load_elems<T, VV>(dy + (size_t)r * ld + c, dd[j]);
      }
    }
    AK_PRAGMA_UNROLL(U)
    for (int j = 0; j < U; ++j) {
      const int u = u0 + j * nt;
      if (u < units) {
        const int r = r0 + u / cw, c = c0 + (u % cw) * VV;
        T o[VV];
        AK_PRAGMA_UNROLL(VV)
        for (int k = 0; k < VV; ++k)
          o[k] = Cvt<T>::from(f(r, c + k, to_acc(xx[j][k]), TWO ? to_acc(dd[j][k]) : A(0)));
        store_elems<T, VV>(out + (size_t)r * ld + c, o);
      }
    }
  }
}

}  // namespace AK_BACKEND_NS
}  // namespace ak

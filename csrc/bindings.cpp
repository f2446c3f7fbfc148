// Torch binding of the hand-written kernels. Compiled twice:
//   attnkernels._C      (CUDA tensors; kernels from csrc/se/se_cuda.cu)
//   attnkernels._C_emu  (CPU tensors; the same kernels compiled by g++ against csrc/cuemu), with
//                       -DAK_BUILD_EMU. This file never includes the emulation headers.
// Per-op ATen headers rather than ATen/ATen.h: half the compile time of this file.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#ifdef AK_BUILD_EMU
#define AK_SE_NS emu
#else
#define AK_SE_NS cuda
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "se/se_api.h"

namespace {

namespace impl = ak::se::AK_SE_NS;

#ifdef AK_BUILD_EMU
constexpr const char* kBackend = "cuda-emu";
bool on_device(const at::Tensor& t) { return t.device().is_cpu(); }
#else
constexpr const char* kBackend = "cuda";
bool on_device(const at::Tensor& t) { return t.device().is_cuda(); }
#endif

int dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return impl::DT_F32;
    case at::kHalf: return impl::DT_F16;
    case at::kBFloat16: return impl::DT_BF16;
    case at::kDouble: return impl::DT_F64;
    default: TORCH_CHECK(false, "se (", kBackend, "): unsupported dtype ", t);
  }
  return -1;
}

at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

void check_tensor(const at::Tensor& t, const at::Tensor& x, const char* name, at::ScalarType dt, int64_t dim) {
  TORCH_CHECK(t.defined(), "se (", kBackend, "): ", name, " is undefined");
  TORCH_CHECK(on_device(t), "se (", kBackend, "): ", name, " is on the wrong device (", t.device(), ")");
  TORCH_CHECK(t.device() == x.device(), "se (", kBackend, "): ", name, " is on ", t.device(), ", x on ", x.device());
  TORCH_CHECK(t.scalar_type() == dt, "se (", kBackend, "): ", name, " has dtype ", t.scalar_type(), ", expected ", dt);
  TORCH_CHECK(t.dim() == dim, "se (", kBackend, "): ", name, " must have ", dim, " dims, got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), "se (", kBackend, "): ", name, " must be contiguous");
}

// x must be NCHW-contiguous or channels_last; true for channels_last (NCHW preferred when both).
bool layout_of(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 4, "se (", kBackend, "): ", name, " must be (N, C, H, W), got ", x.sizes());
  if (x.is_contiguous()) return false;
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast), "se (", kBackend, "): ", name,
              " must be contiguous in NCHW or channels_last");
  return true;
}

void* stream_of(const at::Tensor& x) {
#ifdef AK_BUILD_EMU
  (void)x;
  return nullptr;
#else
  return static_cast<void*>(c10::cuda::getCurrentCUDAStream(x.device().index()).stream());
#endif
}

// N zeroed counters private to the stream: the kernels leave them zeroed, so they are allocated
// once per (device, stream). The emulated build keeps one set per calling thread (its launches are
// synchronous) and checks after every call that the kernels did re-zero them.
unsigned* counters_for(const at::Tensor& x, int64_t n, std::vector<at::Tensor>& keep) {
#ifdef AK_BUILD_EMU
  (void)keep;
  static thread_local at::Tensor t;
  if (!t.defined() || t.numel() < n) t = at::zeros({std::max<int64_t>(n, 64)}, x.options().dtype(at::kInt));
  return reinterpret_cast<unsigned*>(t.data_ptr());
#else
  static std::mutex mu;
  static auto* cache = new std::map<std::pair<int, void*>, at::Tensor>();  // never freed
  std::lock_guard<std::mutex> g(mu);
  at::Tensor& t = (*cache)[{(int)x.device().index(), stream_of(x)}];
  if (!t.defined() || t.numel() < n) t = at::zeros({std::max<int64_t>(n, 1024)}, x.options().dtype(at::kInt));
  (void)keep;
  return reinterpret_cast<unsigned*>(t.data_ptr());
#endif
}

void check_counters_rezeroed(const unsigned* c, int64_t n, const char* op) {
#ifdef AK_BUILD_EMU
  int64_t bad = -1;
  for (int64_t i = 0; i < n && bad < 0; ++i)
    if (c[i] != 0u) bad = i;
  if (bad >= 0) {
    std::fill(const_cast<unsigned*>(c), const_cast<unsigned*>(c) + n, 0u);
    TORCH_CHECK(false, op, " (", kBackend, "): the kernels left counter ", bad, " of ", n,
                " non-zero (a missing reset would corrupt the next call on this stream)");
  }
#else
  (void)c, (void)n, (void)op;
#endif
}

impl::Alloc make_alloc(const at::Tensor& x, std::vector<at::Tensor>& keep, bool poison) {
  return [&x, &keep, poison](size_t bytes) -> void* {
    const int64_t n = (int64_t)((bytes + 7) / 8);
    keep.push_back(at::empty({std::max<int64_t>(n, 1)}, x.options().dtype(at::kDouble)));
    if (poison) keep.back().fill_(std::numeric_limits<double>::quiet_NaN());
    return keep.back().data_ptr();
  };
}

int check_int(int64_t v, const char* name) {
  TORCH_CHECK(v >= 1 && v <= INT32_MAX, "se (", kBackend, "): ", name, " = ", v, " out of range");
  return (int)v;
}

impl::Problem problem(const at::Tensor& x, const at::Tensor& w1, bool nhwc, int64_t act, int64_t gate,
                      int64_t pool) {
  TORCH_CHECK(act >= 0 && act <= 3 && gate >= 0 && gate <= 1 && pool >= 0 && pool <= 1, "se (", kBackend,
              "): bad act/gate/pool code");
  impl::Problem pr;
  pr.dtype = dtype_code(x.scalar_type());
  pr.N = check_int(x.size(0), "N");
  pr.C = check_int(x.size(1), "C");
  pr.HW = check_int(x.size(2) * x.size(3), "H*W");
  check_int(x.size(1) * x.size(2) * x.size(3), "C*H*W");
  pr.Cr = check_int(w1.size(0), "Cr");
  pr.nhwc = nhwc;
  pr.act = (int)act;
  pr.gate = (int)gate;
  pr.pool = (int)pool;
  return pr;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, std::string> se_forward(
    const at::Tensor& x, const at::Tensor& w1, const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
    const c10::optional<at::Tensor>& b2, int64_t act, int64_t gate, int64_t pool, int64_t variant,
    int64_t bps_hint, int64_t lag_hint, bool poison) {
  TORCH_CHECK(on_device(x), "se (", kBackend, "): x is on the wrong device (", x.device(), ")");
  const bool nhwc = layout_of(x, "x");
  const at::ScalarType dt = x.scalar_type();
  dtype_code(dt);
  check_tensor(w1, x, "w1", dt, 2);
  check_tensor(w2, x, "w2", dt, 2);
  const int64_t N = x.size(0), C = x.size(1), Cr = w1.size(0);
  TORCH_CHECK(w1.size(1) == C && w2.size(0) == C && w2.size(1) == Cr, "se (", kBackend,
              "): weight shapes w1 ", w1.sizes(), ", w2 ", w2.sizes(), " do not match C=", C);
  const bool has_b1 = b1.has_value() && b1->defined(), has_b2 = b2.has_value() && b2->defined();
  if (has_b1) {
    check_tensor(*b1, x, "b1", dt, 1);
    TORCH_CHECK(b1->size(0) == Cr, "se: b1 must be (Cr,)");
  }
  if (has_b2) {
    check_tensor(*b2, x, "b2", dt, 1);
    TORCH_CHECK(b2->size(0) == C, "se: b2 must be (C,)");
  }
  TORCH_CHECK(variant >= 0 && variant <= 3, "se: bad variant code");
  impl::Problem pr = problem(x, w1, nhwc, act, gate, pool);
#ifndef AK_BUILD_EMU
  c10::cuda::CUDAGuard guard(x.device());
#endif
  const auto accopt = x.options().dtype(acc_dtype(dt));
  at::Tensor y = at::empty_like(x);  // same strides as x (dense)
  at::Tensor s = at::empty({N, C}, accopt), z = at::empty({N, C}, accopt), u = at::empty({N, Cr}, accopt),
             p = at::empty({N, C}, accopt);
  at::Tensor pmax = pool == 1 ? at::empty({N, C}, accopt) : at::empty({0}, accopt);
  if (poison) {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    for (at::Tensor* t : {&y, &s, &z, &u, &p, &pmax}) t->fill_(nan);
  }
  std::vector<at::Tensor> keep;
  impl::FwdIO io;
  io.x = x.data_ptr();
  io.w1 = w1.data_ptr();
  io.b1 = has_b1 ? b1->data_ptr() : nullptr;
  io.w2 = w2.data_ptr();
  io.b2 = has_b2 ? b2->data_ptr() : nullptr;
  io.y = y.data_ptr();
  io.s = s.data_ptr();
  io.z = z.data_ptr();
  io.u = u.data_ptr();
  io.p = p.data_ptr();
  io.pmax = pool == 1 ? pmax.data_ptr() : nullptr;
  io.counters = counters_for(x, N + 1, keep);  // + the pipelined variant's ticket
  std::string ran = impl::forward(pr, io, (int)variant, (int)bps_hint, (int)lag_hint, stream_of(x),
                                  make_alloc(x, keep, poison));
  check_counters_rezeroed(io.counters, N + 1, "se_forward");
  return {y, s, z, u, p, pmax, ran};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> se_backward(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w2, const at::Tensor& s,
    const at::Tensor& z, const at::Tensor& u, const at::Tensor& p, const at::Tensor& pmax, int64_t act,
    int64_t gate, int64_t pool, int64_t variant, int64_t bps_hint, int64_t lag_hint, bool poison) {
  TORCH_CHECK(on_device(x), "se (", kBackend, "): x is on the wrong device (", x.device(), ")");
  const bool nhwc = layout_of(x, "x");
  const at::ScalarType dt = x.scalar_type(), at_ = acc_dtype(dt);
  dtype_code(dt);
  TORCH_CHECK(dy.sizes() == x.sizes(), "se: dy must have the shape of x");
  TORCH_CHECK(dy.scalar_type() == dt && dy.device() == x.device(), "se: dy must match x in dtype and device");
  TORCH_CHECK(nhwc ? dy.is_contiguous(at::MemoryFormat::ChannelsLast) : dy.is_contiguous(), "se (", kBackend,
              "): dy must have the memory format of x");
  check_tensor(w1, x, "w1", dt, 2);
  check_tensor(w2, x, "w2", dt, 2);
  const int64_t N = x.size(0), C = x.size(1), Cr = w1.size(0);
  TORCH_CHECK(w1.size(1) == C && w2.size(0) == C && w2.size(1) == Cr, "se: weight shapes do not match");
  check_tensor(s, x, "s", at_, 2);
  check_tensor(z, x, "z", at_, 2);
  check_tensor(u, x, "u", at_, 2);
  check_tensor(p, x, "p", at_, 2);
  TORCH_CHECK(s.size(0) == N && s.size(1) == C && z.sizes() == s.sizes() && p.sizes() == s.sizes() &&
                  u.size(0) == N && u.size(1) == Cr,
              "se: saved tensors have wrong shapes");
  if (pool == 1) {
    check_tensor(pmax, x, "pmax", at_, 2);
    TORCH_CHECK(pmax.sizes() == s.sizes(), "se: pmax must be (N, C)");
  }
  impl::Problem pr = problem(x, w1, nhwc, act, gate, pool);
#ifndef AK_BUILD_EMU
  c10::cuda::CUDAGuard guard(x.device());
#endif
  at::Tensor dx = at::empty_like(x);
  at::Tensor dw1 = at::empty({Cr, C}, w1.options()), db1 = at::empty({Cr}, w1.options()),
             dw2 = at::empty({C, Cr}, w1.options()), db2 = at::empty({C}, w1.options());
  if (poison) {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    for (at::Tensor* t : {&dx, &dw1, &db1, &dw2, &db2}) t->fill_(nan);
  }
  std::vector<at::Tensor> keep;
  impl::BwdIO io;
  io.dy = dy.data_ptr();
  io.x = x.data_ptr();
  io.w1 = w1.data_ptr();
  io.w2 = w2.data_ptr();
  io.s = s.data_ptr();
  io.z = z.data_ptr();
  io.u = u.data_ptr();
  io.p = p.data_ptr();
  io.pmax = pool == 1 ? pmax.data_ptr() : nullptr;
  io.dx = dx.data_ptr();
  io.dw1 = dw1.data_ptr();
  io.db1 = db1.data_ptr();
  io.dw2 = dw2.data_ptr();
  io.db2 = db2.data_ptr();
  TORCH_CHECK(variant >= 0 && variant <= 3, "se: bad variant code");
  io.counters = counters_for(x, N + 1, keep);  // + the pipelined variant's ticket
  impl::backward(pr, io, (int)variant, (int)bps_hint, (int)lag_hint, stream_of(x), make_alloc(x, keep, poison));
  check_counters_rezeroed(io.counters, N + 1, "se_backward");
  return {dx, dw1, db1, dw2, db2};
}

// dtype: 0 float32, 1 float16, 2 bfloat16, 3 float64
std::string se_forward_variant(int64_t N, int64_t C, int64_t H, int64_t W, int64_t Cr, int64_t dtype,
                               bool nhwc, int64_t pool, int64_t variant) {
  TORCH_CHECK(dtype >= 0 && dtype <= 3, "se: bad dtype code");
  impl::Problem pr;
  pr.dtype = (int)dtype;
  pr.N = check_int(N, "N");
  pr.C = check_int(C, "C");
  pr.HW = check_int(H * W, "H*W");
  pr.Cr = check_int(Cr, "Cr");
  pr.nhwc = nhwc;
  pr.act = 0;
  pr.gate = 0;
  pr.pool = (int)pool;
  return impl::forward_variant(pr, (int)variant);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "attnkernels hand-written kernels";
  m.attr("backend") = kBackend;
  m.def("se_forward", &se_forward, "SE forward -> (y, s, z, u, p, pmax, variant)", pybind11::arg("x"),
        pybind11::arg("w1"), pybind11::arg("b1"), pybind11::arg("w2"), pybind11::arg("b2"), pybind11::arg("act"),
        pybind11::arg("gate"), pybind11::arg("pool"), pybind11::arg("variant") = 0, pybind11::arg("bps_hint") = 0,
        pybind11::arg("lag_hint") = 0, pybind11::arg("poison") = false);
  m.def("se_backward", &se_backward, "SE backward -> (dx, dw1, db1, dw2, db2)", pybind11::arg("dy"),
        pybind11::arg("x"), pybind11::arg("w1"), pybind11::arg("w2"), pybind11::arg("s"), pybind11::arg("z"),
        pybind11::arg("u"), pybind11::arg("p"), pybind11::arg("pmax"), pybind11::arg("act"), pybind11::arg("gate"),
        pybind11::arg("pool"), pybind11::arg("variant") = 0, pybind11::arg("bps_hint") = 0,
        pybind11::arg("lag_hint") = 0, pybind11::arg("poison") = false);
  m.def("se_forward_variant", &se_forward_variant, "the forward variant the dispatcher would pick");
}

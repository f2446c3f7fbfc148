// Torch binding of the SCA kernels (csrc/sca/launch.h through sca_api.h): sca_forward and
// sca_backward, the backend contract of attnkernels/triton/sca.py's docstring (attnkernels/cuda/
// sca.py wraps them; the custom ops of attnkernels/sca.py validate the inputs first, so the checks
// here guard the kernels' assumptions). Included by csrc/bindings.cpp.
#pragma once

#include <tuple>
#include <utility>

#include "../common/binding_utils.h"
#include "sca_api.h"

namespace ak_binding {
namespace sca_binding {

namespace sca = ak::sca;
using OptT = c10::optional<at::Tensor>;

// A parameter of a branch the order has: V's dtype and device, contiguous, this shape.
inline const at::Tensor& param(const Build& be, const OptT& t, const at::Tensor& V, const char* name,
                               std::initializer_list<int64_t> shape) {
  TORCH_CHECK(given(t), "sca (", be.name, "): ", name, " is required by the order");
  check_tensor("sca", be, *t, V, name, V.scalar_type(), (int64_t)shape.size());
  TORCH_CHECK(t->sizes() == at::IntArrayRef(shape), "sca (", be.name, "): ", name, " must be ", at::IntArrayRef(shape),
              ", got ", t->sizes());
  return *t;
}

// A saved vector (the accumulation dtype), this shape.
inline void saved(const Build& be, const at::Tensor& t, const at::Tensor& V, const char* name,
                  std::initializer_list<int64_t> shape) {
  check_tensor("sca", be, t, V, name, acc_dtype(V.scalar_type()), (int64_t)shape.size());
  TORCH_CHECK(t.sizes() == at::IntArrayRef(shape), "sca (", be.name, "): ", name, " must be ", at::IntArrayRef(shape),
              ", got ", t.sizes());
}

inline const void* ptr(const OptT& t) { return given(t) ? t->data_ptr() : nullptr; }

// The problem of V (N, C, H, W), h (N, d) and the order's parameters (checked; k_c / k_s from
// W_hc / W_s).
inline sca::Problem problem(const Build& be, const at::Tensor& V, const at::Tensor& h, const OptT& W_hc,
                            const OptT& W_s, int64_t order, bool scale) {
  TORCH_CHECK(order >= 0 && order <= 3, "sca (", be.name, "): bad order code ", order);
  sca::Problem pr{};
  pr.nhwc = layout_of("sca", be, V, "V");
  pr.dtype = dtype_code("sca", be, V.scalar_type());
  pr.N = check_int("sca", be, V.size(0), "N");
  pr.C = check_int("sca", be, V.size(1), "C");
  pr.HW = check_int("sca", be, V.size(2) * V.size(3), "H*W");
  check_int("sca", be, V.size(1) * V.size(2) * V.size(3), "C*H*W");
  check_tensor("sca", be, h, V, "h", V.scalar_type(), 2);
  TORCH_CHECK(h.size(0) == V.size(0), "sca (", be.name, "): h must be (N, d) with N = ", V.size(0), ", got ",
              h.sizes());
  TORCH_CHECK(h.size(1) >= 0 && h.size(1) <= INT32_MAX, "sca (", be.name, "): d out of range");
  pr.d = (int)h.size(1);
  pr.order = (int)order;
  pr.scale = scale;
  if (order != sca::ORDER_S) {
    TORCH_CHECK(given(W_hc) && W_hc->dim() == 2, "sca (", be.name, "): W_hc must be (k_c, d)");
    pr.k_c = check_int("sca", be, W_hc->size(0), "k_c");
  }
  if (order != sca::ORDER_C) {
    TORCH_CHECK(given(W_s) && W_s->dim() == 2, "sca (", be.name, "): W_s must be (k_s, C)");
    pr.k_s = check_int("sca", be, W_s->size(0), "k_s");
  }
  return pr;
}

// Points each IO slot at its output tensor's data, NaN-filled first when poisoning.
inline void set_outputs(bool poison, std::initializer_list<std::pair<at::Tensor*, void**>> outs) {
  for (const auto& o : outs) {
    if (poison) poison_all({o.first});
    *o.second = o.first->data_ptr();
  }
}

inline at::Tensor vec_or_empty(bool has, std::initializer_list<int64_t> shape, const at::TensorOptions& opt) {
  return has ? at::empty(shape, opt) : at::empty({0}, opt);
}

// -> (X, hc, hs, v, beta, alpha)
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sca_forward(
    const at::Tensor& V, const at::Tensor& h, const OptT& w_c, const OptT& b_c, const OptT& W_hc, const OptT& u_c,
    const OptT& W_s, const OptT& b_s, const OptT& W_hs, const OptT& u_s, int64_t order, bool scale, bool tf32,
    int64_t split_hint, bool poison) {
  (void)tf32;  // fp32 products are IEEE fp32 FMAs on this backend (kernels.cuh)
  const Build& be = build_of(V, "sca");
  sca::Problem pr = problem(be, V, h, W_hc, W_s, order, scale);
  pr.split_hint = (int)std::max<int64_t>(0, std::min<int64_t>(split_hint, INT32_MAX));
  const int64_t N = pr.N, C = pr.C, HW = pr.HW, d = pr.d, kc = pr.k_c, ks = pr.k_s;
  const bool has_c = kc > 0, has_s = ks > 0;
  sca::FwdIO io{};
  io.V = V.data_ptr();
  io.h = h.data_ptr();
  if (has_c) {
    io.w_c = param(be, w_c, V, "w_c", {kc}).data_ptr();
    io.b_c = param(be, b_c, V, "b_c", {kc}).data_ptr();
    io.W_hc = param(be, W_hc, V, "W_hc", {kc, d}).data_ptr();
    io.u_c = param(be, u_c, V, "u_c", {kc}).data_ptr();
  }
  if (has_s) {
    io.W_s = param(be, W_s, V, "W_s", {ks, C}).data_ptr();
    io.b_s = param(be, b_s, V, "b_s", {ks}).data_ptr();
    io.W_hs = param(be, W_hs, V, "W_hs", {ks, d}).data_ptr();
    io.u_s = param(be, u_s, V, "u_s", {ks}).data_ptr();
  }
  const DeviceFor device(V);
  const auto acc = V.options().dtype(acc_dtype(V.scalar_type()));
  at::Tensor X = at::empty_like(V);  // V's strides (dense)
  at::Tensor hc = vec_or_empty(has_c, {N, kc}, acc), hs = vec_or_empty(has_s, {N, ks}, acc);
  at::Tensor v = vec_or_empty(has_c, {N, C}, acc), beta = vec_or_empty(has_c, {N, C}, acc);
  at::Tensor alpha = vec_or_empty(has_s, {N, HW}, acc);
  set_outputs(poison,
              {{&X, &io.X}, {&hc, &io.hc}, {&hs, &io.hs}, {&v, &io.v}, {&beta, &io.beta}, {&alpha, &io.alpha}});
  std::vector<at::Tensor> keep;
  const long long nc = sca::counters_needed(N, C);
  io.counters = counters_for("sca", be, V, nc, keep);
  AK_BUILD_FN(be, sca, forward)(pr, io, stream_of(be, V), make_alloc(V, keep, poison));
  check_counters_rezeroed(be, io.counters, nc, "sca_forward");
  return {X, hc, hs, v, beta, alpha};
}

// -> (dV, dh, dw_c, db_c, dW_hc, du_c, dc_c, dW_s, db_s, dW_hs, du_s, dc_s)
using BwdOut = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                          at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
inline BwdOut sca_backward(const at::Tensor& dX, const at::Tensor& V, const at::Tensor& h, const OptT& w_c,
                           const OptT& W_hc, const OptT& u_c, const OptT& W_s, const OptT& W_hs, const OptT& u_s,
                           const at::Tensor& hc, const at::Tensor& hs, const at::Tensor& v, const at::Tensor& beta,
                           const at::Tensor& alpha, const OptT& dbeta, const OptT& dalpha, int64_t order, bool scale,
                           bool tf32, int64_t dp_budget, bool poison) {
  (void)tf32;
  const Build& be = build_of(V, "sca");
  sca::Problem pr = problem(be, V, h, W_hc, W_s, order, scale);
  TORCH_CHECK(dp_budget >= 1, "sca (", be.name, "): dp_budget must be >= 1");
  pr.dp_budget = dp_budget;
  check_like_x("sca", be, dX, V, pr.nhwc, "dX");
  const int64_t N = pr.N, C = pr.C, HW = pr.HW, d = pr.d, kc = pr.k_c, ks = pr.k_s;
  const bool has_c = kc > 0, has_s = ks > 0;
  sca::BwdIO io{};
  io.dX = dX.data_ptr();
  io.V = V.data_ptr();
  io.h = h.data_ptr();
  if (has_c) {
    io.w_c = param(be, w_c, V, "w_c", {kc}).data_ptr();
    io.W_hc = param(be, W_hc, V, "W_hc", {kc, d}).data_ptr();
    io.u_c = param(be, u_c, V, "u_c", {kc}).data_ptr();
    saved(be, hc, V, "hc", {N, kc});
    saved(be, v, V, "v", {N, C});
    saved(be, beta, V, "beta", {N, C});
    io.hc = hc.data_ptr();
    io.v = v.data_ptr();
    io.beta = beta.data_ptr();
    if (given(dbeta)) saved(be, *dbeta, V, "dbeta", {N, C});
    io.dbeta = ptr(dbeta);
  }
  if (has_s) {
    io.W_s = param(be, W_s, V, "W_s", {ks, C}).data_ptr();
    io.W_hs = param(be, W_hs, V, "W_hs", {ks, d}).data_ptr();
    io.u_s = param(be, u_s, V, "u_s", {ks}).data_ptr();
    saved(be, hs, V, "hs", {N, ks});
    saved(be, alpha, V, "alpha", {N, HW});
    io.hs = hs.data_ptr();
    io.alpha = alpha.data_ptr();
    if (given(dalpha)) saved(be, *dalpha, V, "dalpha", {N, HW});
    io.dalpha = ptr(dalpha);
  }
  const DeviceFor device(V);
  const auto wopt = V.options();
  at::Tensor dV = at::empty_like(V), dh = at::empty({N, d}, h.options());
  at::Tensor dw_c = vec_or_empty(has_c, {kc}, wopt), db_c = vec_or_empty(has_c, {kc}, wopt),
             dW_hc = vec_or_empty(has_c, {kc, d}, wopt), du_c = vec_or_empty(has_c, {kc}, wopt),
             dc_c = vec_or_empty(has_c, {1}, wopt);
  at::Tensor dW_s = vec_or_empty(has_s, {ks, C}, wopt), db_s = vec_or_empty(has_s, {ks}, wopt),
             dW_hs = vec_or_empty(has_s, {ks, d}, wopt), du_s = vec_or_empty(has_s, {ks}, wopt),
             dc_s = vec_or_empty(has_s, {1}, wopt);
  set_outputs(poison, {{&dV, &io.dV}, {&dh, &io.dh}, {&dw_c, &io.dw_c}, {&db_c, &io.db_c}, {&dW_hc, &io.dW_hc},
                       {&du_c, &io.du_c}, {&dc_c, &io.dc_c}, {&dW_s, &io.dW_s}, {&db_s, &io.db_s},
                       {&dW_hs, &io.dW_hs}, {&du_s, &io.du_s}, {&dc_s, &io.dc_s}});
  std::vector<at::Tensor> keep;
  AK_BUILD_FN(be, sca, backward)(pr, io, stream_of(be, V), make_alloc(V, keep, poison));
  return {dV, dh, dw_c, db_c, dW_hc, du_c, dc_c, dW_s, db_s, dW_hs, du_s, dc_s};
}

}  // namespace sca_binding

inline void register_sca(pybind11::module_& m) {
  using namespace sca_binding;
  namespace py = pybind11;
  m.def("sca_forward", &sca_forward, "SCA forward -> (X, hc, hs, v, beta, alpha)", py::arg("V"), py::arg("h"),
        py::arg("w_c"), py::arg("b_c"), py::arg("W_hc"), py::arg("u_c"), py::arg("W_s"), py::arg("b_s"),
        py::arg("W_hs"), py::arg("u_s"), py::arg("order"), py::arg("scale"), py::arg("tf32") = false,
        py::arg("split_hint") = 0, py::arg("poison") = false);
  m.def("sca_backward", &sca_backward,
        "SCA backward -> (dV, dh, dw_c, db_c, dW_hc, du_c, dc_c, dW_s, db_s, dW_hs, du_s, dc_s)", py::arg("dX"),
        py::arg("V"), py::arg("h"), py::arg("w_c"), py::arg("W_hc"), py::arg("u_c"), py::arg("W_s"), py::arg("W_hs"),
        py::arg("u_s"), py::arg("hc"), py::arg("hs"), py::arg("v"), py::arg("beta"), py::arg("alpha"),
        py::arg("dbeta"), py::arg("dalpha"), py::arg("order"), py::arg("scale"), py::arg("tf32") = false,
        py::arg("dp_budget") = 1LL << 22, py::arg("poison") = false);
}

}  // namespace ak_binding

// Torch binding of the BAM kernels (csrc/bam/launch.h through bam_api.h): the raw ops bam_forward /
// bam_backward of the backend contract (attnkernels/cuda/bam.py wraps them; attnkernels/bam.py's
// custom ops call that). Included by csrc/bindings.cpp.
#pragma once

#include <tuple>

#include "../common/binding_utils.h"
#include "bam_api.h"

namespace ak_binding {
namespace bam_binding {

namespace bam = ak::bam;
constexpr const char* kOp = "bam";

using OptT = c10::optional<at::Tensor>;

// t is a contiguous tensor of x's device, of dtype dt and shape `shape` (an optional one may be absent).
inline void check_shaped(const Build& be, const OptT& t, const at::Tensor& x, const char* name, at::ScalarType dt,
                         at::IntArrayRef shape, bool optional) {
  if (!given(t)) {
    TORCH_CHECK(optional, kOp, " (", be.name, "): ", name, " is required");
    return;
  }
  check_tensor(kOp, be, *t, x, name, dt, (int64_t)shape.size());
  TORCH_CHECK(t->sizes() == shape, kOp, " (", be.name, "): ", name, " must have shape ", shape, ", got ", t->sizes());
}

// x's layout (true: channels_last) and the problem, after checking x, ms and the weights'
// shapes (w0 (Cr, C), w1 (C, Cr)).
inline bool check_x_ms_weights(const Build& be, const at::Tensor& x, const at::Tensor& ms, const at::Tensor& w0,
                               const at::Tensor& w1, bam::Problem& pr) {
  const bool nhwc = layout_of(kOp, be, x, "x");
  const at::ScalarType dt = x.scalar_type();
  pr.dtype = dtype_code(kOp, be, dt);
  pr.N = check_int(kOp, be, x.size(0), "N");
  pr.C = check_int(kOp, be, x.size(1), "C");
  pr.HW = check_int(kOp, be, x.size(2) * x.size(3), "H*W");
  check_int(kOp, be, x.size(1) * x.size(2) * x.size(3), "C*H*W");
  pr.nhwc = nhwc;
  check_tensor(kOp, be, w0, x, "w0", dt, 2);
  pr.Cr = check_int(kOp, be, w0.size(0), "Cr");
  const int64_t C = pr.C, Cr = pr.Cr, N = pr.N, HW = pr.HW;
  TORCH_CHECK(w0.size(1) == C, kOp, " (", be.name, "): w0 must be (Cr, C) with C=", C, ", got ", w0.sizes());
  check_shaped(be, w1, x, "w1", dt, {C, Cr}, false);
  check_shaped(be, ms, x, "ms", dt, {N, HW}, false);
  return nhwc;
}

inline int combine_code(const Build& be, int64_t combine) {
  TORCH_CHECK(combine == bam::COMBINE_PROD || combine == bam::COMBINE_SUM, kOp, " (", be.name,
              "): combine code must be 0 (prod) or 1 (sum), got ", combine);
  return (int)combine;
}

// -> (y, p, u, mc, bstat): y like x; p (N, C) = mean_hw x; u (N, Cr) = w0 p + b0; mc (N, C);
// bstat (3, Cr) = the BatchNorm's mean, invstd, var (the batch's with batch_stats, else the
// running ones): the accumulation dtype.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> bam_forward(
    const at::Tensor& x, const at::Tensor& ms, const at::Tensor& w0, const OptT& b0, const at::Tensor& w1,
    const OptT& b1, const OptT& bn_w, const OptT& bn_b, const OptT& bn_mean, const OptT& bn_var, double eps,
    bool batch_stats, int64_t combine, bool poison, int64_t bps_hint) {
  const Build& be = build_of(x, kOp);
  bam::Problem pr{};
  check_x_ms_weights(be, x, ms, w0, w1, pr);
  const at::ScalarType dt = x.scalar_type(), acc = acc_dtype(dt);
  const int64_t N = pr.N, C = pr.C, Cr = pr.Cr;
  check_shaped(be, b0, x, "b0", dt, {Cr}, true);
  check_shaped(be, b1, x, "b1", dt, {C}, true);
  check_shaped(be, bn_w, x, "bn_w", acc, {Cr}, true);
  check_shaped(be, bn_b, x, "bn_b", acc, {Cr}, true);
  if (batch_stats) {
    TORCH_CHECK(!given(bn_mean) && !given(bn_var), kOp, " (", be.name,
                "): bn_mean / bn_var must be None with batch statistics");
    TORCH_CHECK(N > 1, kOp, " (", be.name, "): batch statistics need more than 1 value per channel (N=1)");
  } else {
    check_shaped(be, bn_mean, x, "bn_mean", acc, {Cr}, false);
    check_shaped(be, bn_var, x, "bn_var", acc, {Cr}, false);
  }
  TORCH_CHECK(eps >= 0.0, kOp, " (", be.name, "): eps must be >= 0, got ", eps);
  TORCH_CHECK(bps_hint >= 0 && bps_hint <= (1 << 20), kOp, " (", be.name, "): bps_hint out of range");
  pr.batch_stats = batch_stats;
  pr.combine = combine_code(be, combine);
  pr.eps = eps;
  pr.bps_hint = (int)bps_hint;
  const DeviceFor device(x);
  const auto accopt = x.options().dtype(acc);
  at::Tensor y = at::empty_like(x);  // x's strides (dense)
  at::Tensor p = at::empty({N, C}, accopt), u = at::empty({N, Cr}, accopt), mc = at::empty({N, C}, accopt),
             bstat = at::empty({3, Cr}, accopt);
  if (poison) poison_all({&y, &p, &u, &mc, &bstat});
  std::vector<at::Tensor> keep;
  bam::FwdIO io;
  io.x = x.data_ptr();
  io.ms = ms.data_ptr();
  io.w0 = w0.data_ptr();
  io.b0 = ptr_or_null(b0);
  io.w1 = w1.data_ptr();
  io.b1 = ptr_or_null(b1);
  io.bn_w = ptr_or_null(bn_w);
  io.bn_b = ptr_or_null(bn_b);
  io.bn_mean = batch_stats ? nullptr : bn_mean->data_ptr();
  io.bn_var = batch_stats ? nullptr : bn_var->data_ptr();
  io.y = y.data_ptr();
  io.p = p.data_ptr();
  io.u = u.data_ptr();
  io.mc = mc.data_ptr();
  io.bstat = bstat.data_ptr();
  io.counters = counters_for(kOp, be, x, bam::counters_needed(N), keep);
  AK_BUILD_FN(be, bam, forward)(pr, io, stream_of(be, x), make_alloc(x, keep, poison));
  check_counters_rezeroed(be, io.counters, bam::counters_needed(N), "bam_forward");
  return {y, p, u, mc, bstat};
}

// -> (dx, dms, dw0, db0, dw1, db1, dbn_w, dbn_b): dx like x (through the channel branch and the
// gate only), dms (N, HW), the weight and bias gradients in x's dtype, dbn_w / dbn_b (Cr,) in the
// accumulation dtype.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
bam_backward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& ms, const at::Tensor& w0,
             const at::Tensor& w1, const OptT& bn_w, const OptT& bn_b, const at::Tensor& p, const at::Tensor& u,
             const at::Tensor& mc, const at::Tensor& bstat, bool batch_stats, int64_t combine, bool poison,
             int64_t bps_hint) {
  const Build& be = build_of(x, kOp);
  bam::Problem pr{};
  const bool nhwc = check_x_ms_weights(be, x, ms, w0, w1, pr);
  check_like_x(kOp, be, dy, x, nhwc, "dy");
  const at::ScalarType dt = x.scalar_type(), acc = acc_dtype(dt);
  const int64_t N = pr.N, C = pr.C, Cr = pr.Cr, HW = pr.HW;
  check_shaped(be, bn_w, x, "bn_w", acc, {Cr}, true);
  check_shaped(be, bn_b, x, "bn_b", acc, {Cr}, true);
  check_shaped(be, p, x, "p", acc, {N, C}, false);
  check_shaped(be, u, x, "u", acc, {N, Cr}, false);
  check_shaped(be, mc, x, "mc", acc, {N, C}, false);
  check_shaped(be, bstat, x, "bstat", acc, {3, Cr}, false);
  TORCH_CHECK(bps_hint >= 0 && bps_hint <= (1 << 20), kOp, " (", be.name, "): bps_hint out of range");
  pr.batch_stats = batch_stats;
  pr.combine = combine_code(be, combine);
  pr.eps = 0.0;  // (the backward uses bstat's invstd)
  pr.bps_hint = (int)bps_hint;
  const DeviceFor device(x);
  const auto opt = x.options(), accopt = opt.dtype(acc);
  at::Tensor dx = at::empty_like(x);
  at::Tensor dms = at::empty({N, HW}, opt), dw0 = at::empty({Cr, C}, opt), db0 = at::empty({Cr}, opt),
             dw1 = at::empty({C, Cr}, opt), db1 = at::empty({C}, opt), dbn_w = at::empty({Cr}, accopt),
             dbn_b = at::empty({Cr}, accopt);
  if (poison) poison_all({&dx, &dms, &dw0, &db0, &dw1, &db1, &dbn_w, &dbn_b});
  std::vector<at::Tensor> keep;
  bam::BwdIO io;
  io.dy = dy.data_ptr();
  io.x = x.data_ptr();
  io.ms = ms.data_ptr();
  io.w0 = w0.data_ptr();
  io.w1 = w1.data_ptr();
  io.bn_w = ptr_or_null(bn_w);
  io.bn_b = ptr_or_null(bn_b);
  io.p = p.data_ptr();
  io.u = u.data_ptr();
  io.mc = mc.data_ptr();
  io.bstat = bstat.data_ptr();
  io.dx = dx.data_ptr();
  io.dms = dms.data_ptr();
  io.dw0 = dw0.data_ptr();
  io.db0 = db0.data_ptr();
  io.dw1 = dw1.data_ptr();
  io.db1 = db1.data_ptr();
  io.dbn_w = dbn_w.data_ptr();
  io.dbn_b = dbn_b.data_ptr();
  io.counters = counters_for(kOp, be, x, bam::counters_needed(N), keep);
  AK_BUILD_FN(be, bam, backward)(pr, io, stream_of(be, x), make_alloc(x, keep, poison));
  check_counters_rezeroed(be, io.counters, bam::counters_needed(N), "bam_backward");
  return {dx, dms, dw0, db0, dw1, db1, dbn_w, dbn_b};
}

}  // namespace bam_binding

inline void register_bam(pybind11::module_& m) {
  using namespace bam_binding;
  namespace py = pybind11;
  m.def("bam_forward", &bam_forward, "BAM forward -> (y, p, u, mc, bstat)", py::arg("x"), py::arg("ms"),
        py::arg("w0"), py::arg("b0"), py::arg("w1"), py::arg("b1"), py::arg("bn_w"), py::arg("bn_b"),
        py::arg("bn_mean"), py::arg("bn_var"), py::arg("eps"), py::arg("batch_stats"), py::arg("combine"),
        py::arg("poison") = false, py::arg("bps_hint") = 0);
  m.def("bam_backward", &bam_backward, "BAM backward -> (dx, dms, dw0, db0, dw1, db1, dbn_w, dbn_b)", py::arg("dy"),
        py::arg("x"), py::arg("ms"), py::arg("w0"), py::arg("w1"), py::arg("bn_w"), py::arg("bn_b"), py::arg("p"),
        py::arg("u"), py::arg("mc"), py::arg("bstat"), py::arg("batch_stats"), py::arg("combine"),
        py::arg("poison") = false, py::arg("bps_hint") = 0);
}

}  // namespace ak_binding

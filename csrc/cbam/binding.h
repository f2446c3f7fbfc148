// Torch binding of the CBAM kernels (csrc/cbam/launch.h through cbam_api.h): the raw functions
// cbam_forward / cbam_backward that attnkernels/cuda/cbam.py wraps for the backend contract (the
// front end's custom ops call them, eagerly and under torch.compile alike). Every input is checked
// here, with errors naming the op and the argument. Included by csrc/bindings.cpp.
#pragma once

#include <cmath>
#include <tuple>
#include <vector>

#include "../common/binding_utils.h"
#include "cbam_api.h"

namespace ak_binding {
namespace cbam_binding {

namespace cb = ak::cbam;
constexpr const char* kOp = "cbam";
using OptTensor = c10::optional<at::Tensor>;

// The option codes (attnkernels/cuda/cbam.py maps the names): activations.cuh's ACT_* / GATE_*,
// cbam_api.h's Pool / SPool.
void check_codes(const Build& be, int64_t act, int64_t gate, int64_t pool, int64_t spool) {
  TORCH_CHECK(act >= 0 && act <= 4, kOp, " (", be.name, "): bad act code ", act);
  TORCH_CHECK(gate >= 0 && gate <= 1, kOp, " (", be.name, "): bad gate code ", gate);
  TORCH_CHECK(pool >= cb::POOL_AVG && pool <= cb::POOL_AVGMAX, kOp, " (", be.name, "): bad pool code ", pool);
  TORCH_CHECK(spool >= cb::SPOOL_MAX_MEAN && spool <= cb::SPOOL_AVGMAX, kOp, " (", be.name, "): bad spool code ",
              spool);
}

// A (n,) tensor of dtype dt on x's device (the BN's parameters and statistics, the bias vectors).
void check_vector(const Build& be, const at::Tensor& t, const at::Tensor& x, const char* name, at::ScalarType dt,
                  int64_t n) {
  check_tensor(kOp, be, t, x, name, dt, 1);
  TORCH_CHECK(t.size(0) == n, kOp, " (", be.name, "): ", name, " must have ", n, " elements, got ", t.sizes());
}

// t must be contiguous with exactly these sizes.
void check_shape(const Build& be, const at::Tensor& t, const at::Tensor& x, const char* name, at::ScalarType dt,
                 at::IntArrayRef sizes) {
  check_tensor(kOp, be, t, x, name, dt, (int64_t)sizes.size());
  TORCH_CHECK(t.sizes() == sizes, kOp, " (", be.name, "): ", name, " must be ", sizes, ", got ", t.sizes());
}

// The problem of checked inputs (x, the MLP's weights and biases, the conv and BN parameters).
cb::Problem check_inputs(const Build& be, const at::Tensor& x, const at::Tensor& w1, const OptTensor& b1,
                         const at::Tensor& w2, const OptTensor& b2, const OptTensor& conv_w, const OptTensor& bn_w,
                         const OptTensor& bn_b, int64_t act, int64_t gate, int64_t pool, int64_t spool) {
  check_codes(be, act, gate, pool, spool);
  cb::Problem pr{};
  pr.nhwc = layout_of(kOp, be, x, "x");
  const at::ScalarType dt = x.scalar_type(), acc = acc_dtype(dt);
  pr.dtype = dtype_code(kOp, be, dt);
  TORCH_CHECK(x.numel() > 0, kOp, " (", be.name, "): x is empty, ", x.sizes());
  check_tensor(kOp, be, w1, x, "w1", dt, 2);
  check_tensor(kOp, be, w2, x, "w2", dt, 2);
  const int64_t C = x.size(1), Cr = w1.size(0);
  TORCH_CHECK(w1.size(1) == C && w2.size(0) == C && w2.size(1) == Cr, kOp, " (", be.name, "): weight shapes w1 ",
              w1.sizes(), ", w2 ", w2.sizes(), " do not match C=", C);
  if (given(b1)) check_vector(be, *b1, x, "b1", dt, Cr);
  if (given(b2)) check_vector(be, *b2, x, "b2", dt, C);
  pr.N = check_int(kOp, be, x.size(0), "N");
  pr.C = check_int(kOp, be, C, "C");
  pr.H = check_int(kOp, be, x.size(2), "H");
  pr.W = check_int(kOp, be, x.size(3), "W");
  check_int(kOp, be, x.size(2) * x.size(3), "H*W");
  check_int(kOp, be, C * x.size(2) * x.size(3), "C*H*W");
  pr.Cr = check_int(kOp, be, Cr, "Cr");
  pr.act = (int)act;
  pr.gate = (int)gate;
  pr.pool = (int)pool;
  pr.spool = (int)spool;
  pr.spatial = given(conv_w);
  pr.K = 1;
  if (pr.spatial) {
    const int64_t S = cb::spool_channels((int)spool);
    check_tensor(kOp, be, *conv_w, x, "conv_w", acc, 4);
    const int64_t K = conv_w->size(2);
    TORCH_CHECK(conv_w->size(0) == 1 && conv_w->size(1) == S && conv_w->size(3) == K && K % 2 == 1, kOp, " (",
                be.name, "): conv_w must be (1, ", S, ", k, k) with k odd, got ", conv_w->sizes());
    pr.K = check_int(kOp, be, K, "k");
    if (given(bn_w)) check_vector(be, *bn_w, x, "bn_w", acc, 1);
    if (given(bn_b)) check_vector(be, *bn_b, x, "bn_b", acc, 1);
  }
  return pr;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> cbam_forward(
    const at::Tensor& x, const at::Tensor& w1, const OptTensor& b1, const at::Tensor& w2, const OptTensor& b2,
    const OptTensor& conv_w, const OptTensor& bn_w, const OptTensor& bn_b, const OptTensor& bn_mean,
    const OptTensor& bn_var, double eps, bool batch_stats, int64_t act, int64_t gate, int64_t pool, int64_t spool,
    bool poison) {
  const Build& be = build_of(x, kOp);
  cb::Problem pr = check_inputs(be, x, w1, b1, w2, b2, conv_w, bn_w, bn_b, act, gate, pool, spool);
  const at::ScalarType acc = acc_dtype(x.scalar_type());
  pr.batch_stats = batch_stats;
  pr.eps = eps;
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, kOp, " (", be.name, "): eps must be finite and >= 0, got ", eps);
  if (pr.spatial && !batch_stats) {
    TORCH_CHECK(given(bn_mean) && given(bn_var), kOp, " (", be.name,
                "): bn_mean and bn_var are needed without batch statistics");
    check_vector(be, *bn_mean, x, "bn_mean", acc, 1);
    check_vector(be, *bn_var, x, "bn_var", acc, 1);
  }
  const DeviceFor device(x);
  const int64_t N = pr.N, C = pr.C, H = pr.H, W = pr.W;
  const auto accopt = x.options().dtype(acc);
  at::Tensor y = at::empty_like(x);  // x's strides (dense NCHW or channels_last)
  at::Tensor pools = at::empty({N, 2, C}, accopt), u = at::empty({N, cb::pool_passes(pr.pool), pr.Cr}, accopt),
             z = at::empty({N, C}, accopt);
  const std::vector<int64_t> m_shape = pr.spatial ? std::vector<int64_t>{N, cb::spool_channels(pr.spool), H, W}
                                                  : std::vector<int64_t>{0};
  const std::vector<int64_t> t_shape = pr.spatial ? std::vector<int64_t>{N, H, W} : std::vector<int64_t>{0};
  at::Tensor m = at::empty(m_shape, accopt), t = at::empty(t_shape, accopt);
  at::Tensor bstat = at::empty({pr.spatial ? 3 : 0}, accopt);
  if (poison) poison_all({&y, &pools, &u, &z, &m, &t, &bstat});
  std::vector<at::Tensor> keep;
  cb::FwdIO io{};
  io.x = x.data_ptr();
  io.w1 = w1.data_ptr();
  io.b1 = ptr_or_null(b1);
  io.w2 = w2.data_ptr();
  io.b2 = ptr_or_null(b2);
  io.conv_w = ptr_or_null(conv_w);
  io.bn_w = pr.spatial ? ptr_or_null(bn_w) : nullptr;
  io.bn_b = pr.spatial ? ptr_or_null(bn_b) : nullptr;
  io.bn_mean = pr.spatial && !batch_stats ? bn_mean->data_ptr() : nullptr;
  io.bn_var = pr.spatial && !batch_stats ? bn_var->data_ptr() : nullptr;
  io.y = y.data_ptr();
  io.pools = pools.data_ptr();
  io.u = u.data_ptr();
  io.z = z.data_ptr();
  io.m = pr.spatial ? m.data_ptr() : nullptr;
  io.t = pr.spatial ? t.data_ptr() : nullptr;
  io.bstat = pr.spatial ? bstat.data_ptr() : nullptr;
  io.counters = counters_for(kOp, be, x, cb::counters_needed(N), keep);
  AK_BUILD_FN(be, ak::cbam, forward)(pr, io, stream_of(be, x), make_alloc(x, keep, poison));
  check_counters_rezeroed(be, io.counters, cb::counters_needed(N), "cbam_forward");
  return {y, pools, u, z, m, t, bstat};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
cbam_backward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w2,
              const OptTensor& conv_w, const OptTensor& bn_w, const OptTensor& bn_b, const at::Tensor& pools,
              const at::Tensor& u, const at::Tensor& z, const at::Tensor& m, const at::Tensor& t,
              const at::Tensor& bstat, bool batch_stats, int64_t act, int64_t gate, int64_t pool, int64_t spool,
              bool poison) {
  const Build& be = build_of(x, kOp);
  cb::Problem pr = check_inputs(be, x, w1, c10::nullopt, w2, c10::nullopt, conv_w, bn_w, bn_b, act, gate, pool, spool);
  pr.batch_stats = batch_stats;
  pr.eps = 0;  // (bstat holds the invstd the forward normalized with)
  check_like_x(kOp, be, dy, x, pr.nhwc, "dy");
  const at::ScalarType dt = x.scalar_type(), acc = acc_dtype(dt);
  const int64_t N = pr.N, C = pr.C, H = pr.H, W = pr.W, Cr = pr.Cr;
  check_shape(be, pools, x, "pools", acc, {N, 2, C});
  check_shape(be, u, x, "u", acc, {N, cb::pool_passes(pr.pool), Cr});
  check_shape(be, z, x, "z", acc, {N, C});
  if (pr.spatial) {
    check_shape(be, m, x, "m", acc, {N, cb::spool_channels(pr.spool), H, W});
    check_shape(be, t, x, "t", acc, {N, H, W});
    check_shape(be, bstat, x, "bstat", acc, {3});
  }
  const DeviceFor device(x);
  const auto wopt = w1.options(), accopt = x.options().dtype(acc);
  at::Tensor dx = at::empty_like(x);
  at::Tensor dw1 = at::empty({Cr, C}, wopt), db1 = at::empty({Cr}, wopt), dw2 = at::empty({C, Cr}, wopt),
             db2 = at::empty({C}, wopt);
  at::Tensor dconv_w = pr.spatial ? at::empty(conv_w->sizes(), accopt) : at::empty({0}, accopt);
  at::Tensor dbn_w = at::empty({pr.spatial ? 1 : 0}, accopt), dbn_b = at::empty({pr.spatial ? 1 : 0}, accopt);
  if (poison) poison_all({&dx, &dw1, &db1, &dw2, &db2, &dconv_w, &dbn_w, &dbn_b});
  std::vector<at::Tensor> keep;
  cb::BwdIO io{};
  io.dy = dy.data_ptr();
  io.x = x.data_ptr();
  io.w1 = w1.data_ptr();
  io.w2 = w2.data_ptr();
  io.conv_w = ptr_or_null(conv_w);
  io.bn_w = pr.spatial ? ptr_or_null(bn_w) : nullptr;
  io.bn_b = pr.spatial ? ptr_or_null(bn_b) : nullptr;
  io.pools = pools.data_ptr();
  io.u = u.data_ptr();
  io.z = z.data_ptr();
  io.m = pr.spatial ? m.data_ptr() : nullptr;
  io.t = pr.spatial ? t.data_ptr() : nullptr;
  io.bstat = pr.spatial ? bstat.data_ptr() : nullptr;
  io.dx = dx.data_ptr();
  io.dw1 = dw1.data_ptr();
  io.db1 = db1.data_ptr();
  io.dw2 = dw2.data_ptr();
  io.db2 = db2.data_ptr();
  io.dconv_w = pr.spatial ? dconv_w.data_ptr() : nullptr;
  io.dbn_w = pr.spatial ? dbn_w.data_ptr() : nullptr;
  io.dbn_b = pr.spatial ? dbn_b.data_ptr() : nullptr;
  io.counters = counters_for(kOp, be, x, cb::counters_needed(N), keep);
  AK_BUILD_FN(be, ak::cbam, backward)(pr, io, stream_of(be, x), make_alloc(x, keep, poison));
  check_counters_rezeroed(be, io.counters, cb::counters_needed(N), "cbam_backward");
  return {dx, dw1, db1, dw2, db2, dconv_w, dbn_w, dbn_b};
}

}  // namespace cbam_binding

inline void register_cbam(pybind11::module_& m) {
  using namespace cbam_binding;
  namespace py = pybind11;
  m.def("cbam_forward", &cbam_forward, "CBAM forward -> (y, pools, u, z, m, t, bstat)", py::arg("x"), py::arg("w1"),
        py::arg("b1"), py::arg("w2"), py::arg("b2"), py::arg("conv_w"), py::arg("bn_w"), py::arg("bn_b"),
        py::arg("bn_mean"), py::arg("bn_var"), py::arg("eps"), py::arg("batch_stats"), py::arg("act"),
        py::arg("gate"), py::arg("pool"), py::arg("spool"), py::arg("poison") = false);
  m.def("cbam_backward", &cbam_backward,
        "CBAM backward -> (dx, dw1, db1, dw2, db2, dconv_w, dbn_w, dbn_b)", py::arg("dy"), py::arg("x"),
        py::arg("w1"), py::arg("w2"), py::arg("conv_w"), py::arg("bn_w"), py::arg("bn_b"), py::arg("pools"),
        py::arg("u"), py::arg("z"), py::arg("m"), py::arg("t"), py::arg("bstat"), py::arg("batch_stats"),
        py::arg("act"), py::arg("gate"), py::arg("pool"), py::arg("spool"), py::arg("poison") = false);
}

}  // namespace ak_binding

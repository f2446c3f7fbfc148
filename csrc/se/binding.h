// Torch binding of the SE kernels (csrc/se/launch.h through se_api.h): the raw ops
// (attnkernels::se_forward / se_backward, torch.compile's path), the eager path with its autograd
// in C++ (attnkernels.se on cuda / cuda-emu), and the variant query. Included by csrc/bindings.cpp.
#pragma once

#include <torch/csrc/autograd/custom_function.h>

#include <tuple>

#include "../common/binding_utils.h"
#include "se_api.h"

namespace ak_binding {
namespace se_binding {

namespace se = ak::se;

// What every call carries besides the tensors: the option codes and the variant request.
struct Opts {
  int64_t act, gate, pool, variant, bps_hint, lag_hint;
  bool poison;
  const Build* be;  // x's
};

se::Problem problem(const at::Tensor& x, const at::Tensor& w2, bool nhwc, const Opts& o) {
  const Build& be = *o.be;
  TORCH_CHECK(o.act >= 0 && o.act <= 4 && o.gate >= 0 && o.gate <= 1 && o.pool >= 0 && o.pool <= 1, "se (",
              be.name, "): bad act/gate/pool code");
  TORCH_CHECK(o.variant >= 0 && o.variant <= se::VAR_BATCHED, "se (", be.name, "): bad variant code");
  se::Problem pr;
  pr.dtype = dtype_code("se", be, x.scalar_type());
  pr.N = check_int("se", be, x.size(0), "N");
  pr.C = check_int("se", be, x.size(1), "C");
  pr.HW = check_int("se", be, x.size(2) * x.size(3), "H*W");
  check_int("se", be, x.size(1) * x.size(2) * x.size(3), "C*H*W");
  pr.Cr = check_int("se", be, w2.size(1), "Cr");
  pr.nhwc = nhwc;
  pr.act = (int)o.act;
  pr.gate = (int)o.gate;
  pr.pool = (int)o.pool;
  return pr;
}

// x, w1 (Cr, C), w2 (C, Cr) and the biases as the kernels take them; true for channels_last x.
// No w1 (nor b1): the single-layer form, w2 (C, C).
bool check_forward_inputs(const Build& be, const at::Tensor& x, const c10::optional<at::Tensor>& w1,
                          const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
                          const c10::optional<at::Tensor>& b2) {
  // (be is x's build: build_of has refused a device without one)
  const bool nhwc = layout_of("se", be, x, "x");
  const at::ScalarType dt = x.scalar_type();
  dtype_code("se", be, dt);
  check_tensor("se", be, w2, x, "w2", dt, 2);
  const int64_t C = x.size(1), Cr = w2.size(1);
  if (given(w1)) {
    check_tensor("se", be, *w1, x, "w1", dt, 2);
    TORCH_CHECK(w1->size(0) == Cr && w1->size(1) == C && w2.size(0) == C, "se (", be.name, "): weight shapes w1 ",
                w1->sizes(), ", w2 ", w2.sizes(), " do not match C=", C);
  } else {
    TORCH_CHECK(w2.size(0) == C && Cr == C, "se (", be.name, "): without w1, w2 must be (C, C), got ", w2.sizes(),
                " for C=", C);
    TORCH_CHECK(!given(b1), "se (", be.name, "): b1 given without w1");
  }
  if (b1.has_value() && b1->defined()) {
    check_tensor("se", be, *b1, x, "b1", dt, 1);
    TORCH_CHECK(b1->size(0) == Cr, "se (", be.name, "): b1 must be (Cr,)");
  }
  if (b2.has_value() && b2->defined()) {
    check_tensor("se", be, *b2, x, "b2", dt, 1);
    TORCH_CHECK(b2->size(0) == C, "se (", be.name, "): b2 must be (C,)");
  }
  return nhwc;
}

// Where the forward writes its per-(n, c) vectors (s, z, u, p, pmax): the backward reads them.
struct Stats {
  void *s, *z, *u, *p, *pmax;
};

// One buffer holding s, z, p (and pmax) (N, C) and u (N, Cr) back to back, in the accumulation
// dtype: one allocation, and the only tensor autograd saves besides x and the weights.
int64_t stats_numel(int64_t N, int64_t C, int64_t Cr, int64_t pool) { return N * ((pool == 1 ? 4 : 3) * C + Cr); }
Stats stats_view(const at::Tensor& buf, int64_t N, int64_t C, int64_t pool) {
  const int64_t nc = N * C;
  auto at = [&](int64_t off) -> void* { return static_cast<char*>(buf.data_ptr()) + off * buf.element_size(); };
  return Stats{at(0), at(nc), at(pool == 1 ? 4 * nc : 3 * nc), at(2 * nc), pool == 1 ? at(3 * nc) : nullptr};
}

// FwdIO / BwdIO: the stats pointers (pmax only with avgmax pooling).
template <typename IO> void set_stats(IO& io, const Stats& st, int64_t pool) {
  io.s = st.s;
  io.z = st.z;
  io.u = st.u;
  io.p = st.p;
  io.pmax = pool == 1 ? st.pmax : nullptr;
}

std::string& last_variant_slot() {
  static thread_local std::string v;
  return v;
}

// The forward on checked inputs: y and the stats are allocated by the caller.
void run_forward(const at::Tensor& x, const c10::optional<at::Tensor>& w1, const c10::optional<at::Tensor>& b1,
                 const at::Tensor& w2, const c10::optional<at::Tensor>& b2, bool nhwc, const at::Tensor& y,
                 const Stats& st, const Opts& o) {
  const Build& be = *o.be;
  se::Problem pr = problem(x, w2, nhwc, o);
  std::vector<at::Tensor> keep;
  se::FwdIO io;
  io.x = x.data_ptr();
  io.w1 = given(w1) ? w1->data_ptr() : nullptr;  // null: the single-layer form
  io.b1 = b1.has_value() && b1->defined() ? b1->data_ptr() : nullptr;
  io.w2 = w2.data_ptr();
  io.b2 = b2.has_value() && b2->defined() ? b2->data_ptr() : nullptr;
  io.y = y.data_ptr();
  set_stats(io, st, o.pool);
  io.counters = counters_for("se", be, x, se::counters_needed(pr.N), keep);
  last_variant_slot() = AK_BUILD_FN(be, se, forward)(pr, io, (int)o.variant, (int)o.bps_hint, (int)o.lag_hint, stream_of(be, x),
                                   make_alloc(x, keep, o.poison));
  check_counters_rezeroed(be, io.counters, se::counters_needed(pr.N), "se_forward");
}

// The backward on checked inputs: dx and the weight/bias gradients are allocated by the caller.
void run_backward(const at::Tensor& dy, const at::Tensor& x, const c10::optional<at::Tensor>& w1,
                  const at::Tensor& w2, bool nhwc, const Stats& st, const at::Tensor& dx, const at::Tensor& dw1,
                  const at::Tensor& db1, const at::Tensor& dw2, const at::Tensor& db2, const Opts& o) {
  const Build& be = *o.be;
  se::Problem pr = problem(x, w2, nhwc, o);
  std::vector<at::Tensor> keep;
  se::BwdIO io;
  io.dy = dy.data_ptr();
  io.x = x.data_ptr();
  const bool fc1 = given(w1);
  io.w1 = fc1 ? w1->data_ptr() : nullptr;  // null: the single-layer form, no dw1 / db1
  io.w2 = w2.data_ptr();
  set_stats(io, st, o.pool);
  io.dx = dx.data_ptr();
  io.dw1 = fc1 ? dw1.data_ptr() : nullptr;
  io.db1 = fc1 ? db1.data_ptr() : nullptr;
  io.dw2 = dw2.data_ptr();
  io.db2 = db2.data_ptr();
  io.counters = counters_for("se", be, x, se::counters_needed(pr.N), keep);
  AK_BUILD_FN(be, se, backward)(pr, io, (int)o.variant, (int)o.bps_hint, (int)o.lag_hint, stream_of(be, x),
              make_alloc(x, keep, o.poison));
  check_counters_rezeroed(be, io.counters, se::counters_needed(pr.N), "se_backward");
}

// Weight and bias gradients in the weight dtype (single-layer form: dw1, db1 empty (0,)).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> alloc_wgrads(const at::Tensor& w2, bool fc1, int64_t C,
                                                                        int64_t Cr) {
  const auto opt = w2.options();
  return {fc1 ? at::empty({Cr, C}, opt) : at::empty({0}, opt), at::empty({fc1 ? Cr : 0}, opt),
          at::empty({C, Cr}, opt), at::empty({C}, opt)};
}

// ---- the raw ops (attnkernels::se_forward / se_backward custom ops, torch.compile's path) ----
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, std::string> se_forward(
    const at::Tensor& x, const c10::optional<at::Tensor>& w1, const c10::optional<at::Tensor>& b1,
    const at::Tensor& w2, const c10::optional<at::Tensor>& b2, int64_t act, int64_t gate, int64_t pool,
    int64_t variant, int64_t bps_hint, int64_t lag_hint, bool poison) {
  const Build& be = build_of(x, "se");
  const Opts o{act, gate, pool, variant, bps_hint, lag_hint, poison, &be};
  const bool nhwc = check_forward_inputs(be, x, w1, b1, w2, b2);
  const DeviceFor device(x);
  const int64_t N = x.size(0), C = x.size(1), Cr = w2.size(1);
  const auto accopt = x.options().dtype(acc_dtype(x.scalar_type()));
  at::Tensor y = at::empty_like(x);  // same strides as x (dense)
  at::Tensor s = at::empty({N, C}, accopt), z = at::empty({N, C}, accopt), u = at::empty({N, Cr}, accopt),
             p = at::empty({N, C}, accopt);
  at::Tensor pmax = pool == 1 ? at::empty({N, C}, accopt) : at::empty({0}, accopt);
  if (poison) poison_all({&y, &s, &z, &u, &p, &pmax});
  run_forward(x, w1, b1, w2, b2, nhwc, y, Stats{s.data_ptr(), z.data_ptr(), u.data_ptr(), p.data_ptr(), pmax.data_ptr()},
              o);
  return {y, s, z, u, p, pmax, last_variant_slot()};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> se_backward(
    const at::Tensor& dy, const at::Tensor& x, const c10::optional<at::Tensor>& w1, const at::Tensor& w2,
    const at::Tensor& s, const at::Tensor& z, const at::Tensor& u, const at::Tensor& p, const at::Tensor& pmax,
    int64_t act, int64_t gate, int64_t pool, int64_t variant, int64_t bps_hint, int64_t lag_hint, bool poison) {
  const Build& be = build_of(x, "se");
  const Opts o{act, gate, pool, variant, bps_hint, lag_hint, poison, &be};
  const bool nhwc = check_forward_inputs(be, x, w1, c10::nullopt, w2, c10::nullopt);
  check_like_x("se", be, dy, x, nhwc, "dy");
  const at::ScalarType at_ = acc_dtype(x.scalar_type());
  const int64_t N = x.size(0), C = x.size(1), Cr = w2.size(1);
  check_tensor("se", be, s, x, "s", at_, 2);
  check_tensor("se", be, z, x, "z", at_, 2);
  check_tensor("se", be, u, x, "u", at_, 2);
  check_tensor("se", be, p, x, "p", at_, 2);
  TORCH_CHECK(s.size(0) == N && s.size(1) == C && z.sizes() == s.sizes() && p.sizes() == s.sizes() &&
                  u.size(0) == N && u.size(1) == Cr,
              "se (", be.name, "): saved tensors have wrong shapes");
  if (pool == 1) {
    check_tensor("se", be, pmax, x, "pmax", at_, 2);
    TORCH_CHECK(pmax.sizes() == s.sizes(), "se (", be.name, "): pmax must be (N, C)");
  }
  const DeviceFor device(x);
  at::Tensor dx = at::empty_like(x);
  auto [dw1, db1, dw2, db2] = alloc_wgrads(w2, given(w1), C, Cr);
  if (poison) poison_all({&dx, &dw1, &db1, &dw2, &db2});
  run_backward(dy, x, w1, w2, nhwc, Stats{s.data_ptr(), z.data_ptr(), u.data_ptr(), p.data_ptr(), pmax.data_ptr()},
               dx, dw1, db1, dw2, db2, o);
  return {dx, dw1, db1, dw2, db2};
}

// ---- the eager path: one call from Python, autograd in C++ ----------------------------------
// attnkernels.se on the cuda / cuda-emu backends outside torch.compile. What the Python path does
// in several Python layers (input layout, conv-weight views, the autograd Function, its backward)
// happens here, so a call costs one binding crossing, and the backward runs with no Python (no
// GIL hand-off to the autograd thread). Same kernels, same results as the custom ops.

// The option names, in the order of their codes (csrc/se/kernels.cuh: ACT_*, GATE_*, POOL_*).
constexpr const char* kActNames[] = {"relu", "silu", "hardswish", "gelu", "identity"};
constexpr const char* kGateNames[] = {"sigmoid", "hardsigmoid"};
constexpr const char* kPoolNames[] = {"avg", "avgmax"};

template <size_t K>
int64_t code_of(const Build& be, const std::string& v, const char* const (&names)[K], const char* what) {
  for (size_t i = 0; i < K; ++i)
    if (v == names[i]) return (int64_t)i;
  TORCH_CHECK(false, "se (", be.name, "): unknown ", what, " '", v, "'");
  return -1;
}



using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct SEFunction : public torch::autograd::Function<SEFunction> {
  // Runs with autograd off. Saves the inputs as they came (x in the kernels' layout is x itself
  // unless it had other strides; conv-shaped weights stay conv-shaped), so that a double
  // backward differentiates through them, and the stats; the biases only for that.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x_in, const c10::optional<at::Tensor>& w1_in,
                            const c10::optional<at::Tensor>& b1_in, const at::Tensor& w2_in,
                            const c10::optional<at::Tensor>& b2_in, Opts o) {
    const Build& be = *o.be;
    at::Tensor x = x_in.contiguous(kernel_format(x_in));
    const c10::optional<at::Tensor> w1 =
        given(w1_in) ? c10::optional<at::Tensor>(as_matrix("se", be, *w1_in, "w1")) : c10::nullopt;
    at::Tensor w2 = as_matrix("se", be, w2_in, "w2");
    auto dense = [](const c10::optional<at::Tensor>& b) -> c10::optional<at::Tensor> {
      if (b.has_value() && b->defined()) return b->contiguous();
      return c10::nullopt;
    };
    const c10::optional<at::Tensor> b1 = dense(b1_in), b2 = dense(b2_in);
    const bool nhwc = check_forward_inputs(be, x, w1, b1, w2, b2);
    const DeviceFor device(x);
    const int64_t N = x.size(0), C = x.size(1), Cr = w2.size(1);
    at::Tensor y = at::empty_like(x);
    at::Tensor stats = at::empty({stats_numel(N, C, Cr, o.pool)}, x.options().dtype(acc_dtype(x.scalar_type())));
    if (o.poison) poison_all({&y, &stats});
    run_forward(x, w1, b1, w2, b2, nhwc, y, stats_view(stats, N, C, o.pool), o);
    if (ctx != nullptr) {
      auto or_undefined = [](const c10::optional<at::Tensor>& t) { return given(t) ? *t : at::Tensor(); };
      ctx->save_for_backward({x_in, or_undefined(w1_in), or_undefined(b1_in), w2_in, or_undefined(b2_in), stats});
      ctx->saved_data["opts"] = std::vector<int64_t>{o.act, o.gate, o.pool, o.variant, o.bps_hint, o.lag_hint,
                                                      o.poison ? 1 : 0};
    }
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x_in = saved[0], &w1_in = saved[1], &b1_in = saved[2], &w2_in = saved[3], &b2_in = saved[4],
                     &stats = saved[5];
    const Build& be = build_of(x_in, "se");
    const std::vector<int64_t> ov = ctx->saved_data["opts"].toIntVector();
    const Opts o{ov[0], ov[1], ov[2], ov[3], ov[4], ov[5], ov[6] != 0, &be};
    if (at::GradMode::is_enabled()) return grads_with_graph(saved, grads[0], o);
    const at::Tensor x = x_in.contiguous(kernel_format(x_in));  // x_in itself, but for odd strides
    const c10::optional<at::Tensor> w1 =
        w1_in.defined() ? c10::optional<at::Tensor>(as_matrix("se", be, w1_in, "w1")) : c10::nullopt;
    const at::Tensor w2 = as_matrix("se", be, w2_in, "w2");
    const bool nhwc = layout_of("se", be, x, "x");
    at::Tensor dy = grads[0].contiguous(nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
    check_like_x("se", be, dy, x, nhwc, "dy");
    const DeviceFor device(x);
    const int64_t N = x.size(0), C = x.size(1), Cr = w2.size(1);
    at::Tensor dx = at::empty_like(x);
    auto [dw1, db1, dw2, db2] = alloc_wgrads(w2, w1.has_value(), C, Cr);
    if (o.poison) poison_all({&dx, &dw1, &db1, &dw2, &db2});
    run_backward(dy, x, w1, w2, nhwc, stats_view(stats, N, C, o.pool), dx, dw1, db1, dw2, db2, o);
    // the weight gradients in the shapes the weights came in (conv weights: (out, in, 1, 1))
    return {dx, w1 ? dw1.view(w1_in.sizes()) : at::Tensor(), b1_in.defined() ? db1 : at::Tensor(),
            dw2.view(w2_in.sizes()), b2_in.defined() ? db2 : at::Tensor(), at::Tensor()};
  }

  // create_graph=True (a double backward): the kernels' backward is not differentiable, so the
  // gradient comes from attnkernels.se.grads_with_graph, the reference's eager graph recomputed
  // from the saved inputs (one implementation, in Python, for every backend).
  static variable_list grads_with_graph(const variable_list& saved, const at::Tensor& dy, const Opts& o) {
    pybind11::gil_scoped_acquire gil;
    auto opt = [](const at::Tensor& t) { return t.defined() ? c10::optional<at::Tensor>(t) : c10::nullopt; };
    const pybind11::tuple r = pybind11::module_::import("attnkernels.se")
                                  .attr("grads_with_graph")(saved[0], opt(saved[1]), opt(saved[2]), saved[3],
                                                            opt(saved[4]), dy, kActNames[o.act], kGateNames[o.gate],
                                                            kPoolNames[o.pool]);
    variable_list out;
    for (const auto& g : r) out.push_back(g.is_none() ? at::Tensor() : g.cast<at::Tensor>());
    out.push_back(at::Tensor());  // opts
    return out;
  }
};

// -> (y, the variant that ran). Autograd records the op only when it has something to record.
std::tuple<at::Tensor, std::string> se_apply(const at::Tensor& x, const c10::optional<at::Tensor>& w1,
                                             const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
                                             const c10::optional<at::Tensor>& b2, const std::string& act,
                                             const std::string& gate, const std::string& pool, int64_t variant,
                                             int64_t bps_hint, int64_t lag_hint, bool poison) {
  const Build& be = build_of(x, "se");
  const Opts o{code_of(be, act, kActNames, "act"), code_of(be, gate, kGateNames, "gate"),
               code_of(be, pool, kPoolNames, "pool"),
               variant, bps_hint, lag_hint, poison, &be};
  auto wants_grad = [](const at::Tensor& t) { return t.requires_grad(); };
  const bool record = at::GradMode::is_enabled() &&
                      (wants_grad(x) || (given(w1) && wants_grad(*w1)) || wants_grad(w2) ||
                       (given(b1) && wants_grad(*b1)) ||
                       (given(b2) && wants_grad(*b2)));
  at::Tensor y;
  if (record) {
    y = SEFunction::apply(x, w1, b1, w2, b2, o);
  } else {
    at::AutoGradMode no_grad(false);
    y = SEFunction::forward(nullptr, x, w1, b1, w2, b2, o);
  }
  return {y, last_variant_slot()};
}

// device: "cuda" or "cpu" (cuda-emu); dtype: 0 float32, 1 float16, 2 bfloat16, 3 float64
std::string se_forward_variant(const std::string& device, int64_t N, int64_t C, int64_t H, int64_t W, int64_t Cr,
                               int64_t dtype, bool nhwc, int64_t pool, int64_t variant) {
  const Build& be = build_for(c10::Device(device).type(), "se");
  TORCH_CHECK(dtype >= 0 && dtype <= 3, "se (", be.name, "): bad dtype code");
  se::Problem pr;
  pr.dtype = (int)dtype;
  pr.N = check_int("se", be, N, "N");
  pr.C = check_int("se", be, C, "C");
  pr.HW = check_int("se", be, H * W, "H*W");
  pr.Cr = check_int("se", be, Cr, "Cr");
  pr.nhwc = nhwc;
  pr.act = 0;
  pr.gate = 0;
  pr.pool = (int)pool;
  return AK_BUILD_FN(be, se, forward_variant)(pr, (int)variant);
}

}  // namespace se_binding

inline void register_se(pybind11::module_& m) {
  using namespace se_binding;

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
  m.def("se", &se_apply, "SE forward with autograd in C++ (the eager path) -> (y, variant)", pybind11::arg("x"),
        pybind11::arg("w1"), pybind11::arg("b1"), pybind11::arg("w2"), pybind11::arg("b2"), pybind11::arg("act"),
        pybind11::arg("gate"), pybind11::arg("pool"), pybind11::arg("variant") = 0, pybind11::arg("bps_hint") = 0,
        pybind11::arg("lag_hint") = 0, pybind11::arg("poison") = false);
}

}  // namespace ak_binding

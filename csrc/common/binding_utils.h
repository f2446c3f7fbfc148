// Torch-side glue every op's binding (csrc/<op>/binding.h) shares: which kernel build serves x's
// device, input checks that name the op and the argument, streams, the cached zeroed counters,
// workspaces, poisoning. Included by csrc/bindings.cpp only (the one translation unit that sees
// torch headers); never includes the emulation or CUDA kernel headers.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DeviceGuard.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <cstdint>
#include <exception>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#ifdef AK_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "api.h"

#if !defined(AK_WITH_CUDA) && !defined(AK_WITH_EMU)
#error "build with AK_WITH_CUDA and/or AK_WITH_EMU (setup.py)"
#endif

// An op's entry point `fn` (declared in namespace ak::<op>::cuda and ak::<op>::emu by its api
// header) of the build that serves x's device: AK_BUILD_FN(be, ak::cbam, forward)(...).
#if defined(AK_WITH_CUDA) && defined(AK_WITH_EMU)
#define AK_BUILD_FN(be, ns, fn) ((be).emu ? &ns::emu::fn : &ns::cuda::fn)
#elif defined(AK_WITH_CUDA)
#define AK_BUILD_FN(be, ns, fn) (&ns::cuda::fn)
#else
#define AK_BUILD_FN(be, ns, fn) (&ns::emu::fn)
#endif

namespace ak_binding {

// One kernel build: the backend name it serves and whether it is the emulated one.
struct Build {
  const char* name;
  bool emu;  // CPU tensors, synchronous launches
};
#ifdef AK_WITH_CUDA
inline const Build kCuda{"cuda", false};
#endif
#ifdef AK_WITH_EMU
inline const Build kEmu{"cuda-emu", true};
#endif

// The backends this extension was built with (attnkernels.cuda checks a name against them).
inline std::vector<std::string> built_backends() {
  std::vector<std::string> v;
#ifdef AK_WITH_CUDA
  v.push_back(kCuda.name);
#endif
#ifdef AK_WITH_EMU
  v.push_back(kEmu.name);
#endif
  return v;
}

inline const Build& build_for(c10::DeviceType type, const char* op) {
  const Build* be = nullptr;
#ifdef AK_WITH_CUDA
  if (type == c10::DeviceType::CUDA) be = &kCuda;
#endif
#ifdef AK_WITH_EMU
  if (type == c10::DeviceType::CPU) be = &kEmu;
#endif
  TORCH_CHECK(be != nullptr, op, ": attnkernels._C has no kernels for ", type, " tensors (built with: ",
              c10::Join(", ", built_backends()), ")");
  return *be;
}
inline const Build& build_of(const at::Tensor& x, const char* op) { return build_for(x.device().type(), op); }

inline int dtype_code(const char* op, const Build& be, at::ScalarType t) {
  switch (t) {
    case at::kFloat: return ak::DT_F32;
    case at::kHalf: return ak::DT_F16;
    case at::kBFloat16: return ak::DT_BF16;
    case at::kDouble: return ak::DT_F64;
    default: TORCH_CHECK(false, op, " (", be.name, "): unsupported dtype ", t);
  }
  return -1;
}

inline at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

inline bool given(const c10::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }
inline const void* ptr_or_null(const c10::optional<at::Tensor>& t) { return given(t) ? t->data_ptr() : nullptr; }

inline void check_tensor(const char* op, const Build& be, const at::Tensor& t, const at::Tensor& x, const char* name,
                         at::ScalarType dt, int64_t dim) {
  TORCH_CHECK(t.defined(), op, " (", be.name, "): ", name, " is undefined");
  TORCH_CHECK(t.device() == x.device(), op, " (", be.name, "): ", name, " is on ", t.device(), ", x on ", x.device());
  TORCH_CHECK(t.scalar_type() == dt, op, " (", be.name, "): ", name, " has dtype ", t.scalar_type(), ", expected ",
              dt);
  TORCH_CHECK(t.dim() == dim, op, " (", be.name, "): ", name, " must have ", dim, " dims, got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), op, " (", be.name, "): ", name, " must be contiguous");
}

// A (N, C, H, W) tensor must be NCHW-contiguous or channels_last; true for channels_last (NCHW
// preferred when both).
inline bool layout_of(const char* op, const Build& be, const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 4, op, " (", be.name, "): ", name, " must be (N, C, H, W), got ", x.sizes());
  if (x.is_contiguous()) return false;
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast), op, " (", be.name, "): ", name,
              " must be contiguous in NCHW or channels_last");
  return true;
}

// g (dy, say) must have x's shape, dtype, device and memory format.
inline void check_like_x(const char* op, const Build& be, const at::Tensor& g, const at::Tensor& x, bool nhwc,
                         const char* name) {
  TORCH_CHECK(g.sizes() == x.sizes(), op, " (", be.name, "): ", name, " must have the shape of x");
  TORCH_CHECK(g.scalar_type() == x.scalar_type() && g.device() == x.device(), op, " (", be.name, "): ", name,
              " must match x in dtype and device");
  TORCH_CHECK(nhwc ? g.is_contiguous(at::MemoryFormat::ChannelsLast) : g.is_contiguous(), op, " (", be.name, "): ",
              name, " must have the memory format of x");
}

inline void* stream_of(const Build& be, const at::Tensor& x) {
#ifdef AK_WITH_CUDA
  if (!be.emu) return static_cast<void*>(c10::cuda::getCurrentCUDAStream(x.device().index()).stream());
#endif
  (void)be, (void)x;
  return nullptr;
}

// x's CUDA device current for the call (a no-op on CPU tensors).
struct DeviceFor {
  explicit DeviceFor(const at::Tensor& x) {
    if (x.is_cuda()) guard.reset_device(x.device());
  }
  c10::OptionalDeviceGuard guard;
};

#ifdef AK_WITH_CUDA
inline bool capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
  return status != cudaStreamCaptureStatusNone;
}

// n zeroed int32 on `stream`, allocated where no CUDA graph pool takes them: inductor's CUDA graph
// trees (torch.compile mode="reduce-overhead") route every allocation of the thread that warms up
// a graph to their private pool and reset that pool to a checkpoint when the tree branches,
// freeing what it holds, a cached buffer included. The routing is per thread, so a helper thread
// allocates (only when the cache grows: a stream's first call, a larger N), with the GIL released
// meanwhile: an allocator recording its history takes Python stack traces, on the helper too.
inline at::Tensor zeros_outside_graph_pools(const at::Tensor& x, int64_t n, c10::cuda::CUDAStream stream) {
  at::Tensor t;
  std::exception_ptr error;
  std::optional<pybind11::gil_scoped_release> no_gil;
  if (PyGILState_Check()) no_gil.emplace();
  std::thread helper([&] {
    try {
      c10::cuda::CUDAStreamGuard guard(stream);
      t = at::zeros({n}, x.options().dtype(at::kInt));
    } catch (...) {
      error = std::current_exception();
    }
  });
  helper.join();
  if (error) std::rethrow_exception(error);
  return t;
}
#endif

// n zeroed counters private to the stream: the kernels leave them zeroed, so they are allocated
// once per (device, stream), for every op; the call holds a reference in `keep` (another thread's
// call on the stream may replace the cached buffer with a larger one meanwhile). While the stream
// captures a CUDA graph, a fresh zeroed buffer of the call's own: a graph-owned temporary whose
// memset the graph replays, so no two graphs, nor a graph and eager calls, share counters. The
// emulated build keeps one set per calling thread (its launches are synchronous) and checks after
// every call that the kernels did re-zero them (check_counters_rezeroed).
inline unsigned* counters_for(const char* op, const Build& be, const at::Tensor& x, int64_t n,
                              std::vector<at::Tensor>& keep) {
  if (be.emu) {
    static thread_local at::Tensor t;
    if (!t.defined() || t.numel() < n) t = at::zeros({std::max<int64_t>(n, 64)}, x.options().dtype(at::kInt));
    return reinterpret_cast<unsigned*>(t.data_ptr());
  }
#ifdef AK_WITH_CUDA
  const c10::cuda::CUDAStream stream = c10::cuda::getCurrentCUDAStream(x.device().index());
  if (capturing(stream.stream())) {
    keep.push_back(at::zeros({n}, x.options().dtype(at::kInt)));
    return reinterpret_cast<unsigned*>(keep.back().data_ptr());
  }
  static std::mutex mu;
  static auto* cache = new std::map<std::pair<int, void*>, at::Tensor>();  // never freed
  const std::pair<int, void*> key{(int)x.device().index(), static_cast<void*>(stream.stream())};
  at::Tensor buf;
  {
    std::lock_guard<std::mutex> g(mu);
    buf = (*cache)[key];
  }
  if (!buf.defined() || buf.numel() < n) {
    // a miss: allocate with the lock released (the helper may wait for the GIL), then install
    buf = zeros_outside_graph_pools(x, std::max<int64_t>(n, 1024), stream);
    std::lock_guard<std::mutex> g(mu);
    at::Tensor& t = (*cache)[key];
    if (!t.defined() || t.numel() < buf.numel()) t = buf;
  }
  keep.push_back(buf);
  return reinterpret_cast<unsigned*>(buf.data_ptr());
#else
  (void)keep;
  TORCH_CHECK(false, op, " (", be.name, "): built without CUDA");
#endif
}

inline void check_counters_rezeroed(const Build& be, const unsigned* c, int64_t n, const char* what) {
  if (!be.emu) return;  // on a GPU that would cost a copy and a sync per call
  int64_t bad = -1;
  for (int64_t i = 0; i < n && bad < 0; ++i)
    if (c[i] != 0u) bad = i;
  if (bad >= 0) {
    std::fill(const_cast<unsigned*>(c), const_cast<unsigned*>(c) + n, 0u);
    TORCH_CHECK(false, what, " (", be.name, "): the kernels left counter ", bad, " of ", n,
                " non-zero (a missing reset would corrupt the next call on this stream)");
  }
}

// Workspaces of one call (stream-ordered allocations held in `keep` until the call returns);
// NaN-filled when poisoning.
inline ak::Alloc make_alloc(const at::Tensor& x, std::vector<at::Tensor>& keep, bool poison) {
  return [&x, &keep, poison](size_t bytes) -> void* {
    const int64_t n = (int64_t)((bytes + 7) / 8);
    keep.push_back(at::empty({std::max<int64_t>(n, 1)}, x.options().dtype(at::kDouble)));
    if (poison) keep.back().fill_(std::numeric_limits<double>::quiet_NaN());
    return keep.back().data_ptr();
  };
}

inline void poison_all(std::initializer_list<at::Tensor*> ts) {
  for (at::Tensor* t : ts)
    if (t->defined() && t->numel()) t->fill_(std::numeric_limits<double>::quiet_NaN());
}

inline int check_int(const char* op, const Build& be, int64_t v, const char* name) {
  TORCH_CHECK(v >= 1 && v <= INT32_MAX, op, " (", be.name, "): ", name, " = ", v, " out of range");
  return (int)v;
}

// attnkernels._validate.memory_format_of: the layout the kernels run x in.
inline at::MemoryFormat kernel_format(const at::Tensor& x) {
  if (x.is_contiguous()) return at::MemoryFormat::Contiguous;
  if (x.is_contiguous(at::MemoryFormat::ChannelsLast)) return at::MemoryFormat::ChannelsLast;
  return x.stride(1) < std::min(x.stride(2), x.stride(3)) ? at::MemoryFormat::ChannelsLast
                                                          : at::MemoryFormat::Contiguous;
}

// A Linear (out, in) or 1x1 conv (out, in, 1, 1) weight as a contiguous (out, in) matrix.
inline at::Tensor as_matrix(const char* op, const Build& be, const at::Tensor& w, const char* name) {
  TORCH_CHECK(w.dim() == 2 || (w.dim() == 4 && w.size(2) == 1 && w.size(3) == 1), op, " (", be.name, "): ", name,
              " must be (out, in) or (out, in, 1, 1), got ", w.sizes());
  return (w.dim() == 2 ? w : w.view({w.size(0), w.size(1)})).contiguous();
}

}  // namespace ak_binding

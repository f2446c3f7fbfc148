// Plain C++ types shared by the torch binding (csrc/bindings.cpp, csrc/<op>/binding.h) and every
// op's launch code (csrc/<op>/launch.h), which is compiled once per build into the same extension:
// ak::<op>::cuda (nvcc) and ak::<op>::emu (g++ against csrc/cuemu). No CUDA or emulation header
// here, no torch header either.
#pragma once
#include <cstddef>
#include <functional>

namespace ak {

// x's dtype, as the binding passes it to the launch code
enum Dtype { DT_F32 = 0, DT_F16 = 1, DT_BF16 = 2, DT_F64 = 3 };

// Workspace allocator (stream-ordered; what it returns lives until the call returns).
using Alloc = std::function<void*(size_t bytes)>;

}  // namespace ak

// Torch binding of the hand-written kernels: one extension, attnkernels._C, holding each kernel
// build it was compiled with (setup.py):
//   AK_WITH_CUDA  CUDA tensors, backend "cuda": kernels from csrc/<op>/<op>_cuda.cu (nvcc)
//   AK_WITH_EMU   CPU tensors, backend "cuda-emu": the same kernels compiled by g++ against
//                 csrc/cuemu (csrc/<op>/<op>_emu.cpp)
// x's device picks the build (attnkernels.backend.resolve has already matched the backend to it).
// This file is the extension's one translation unit that sees torch headers (the slowest to
// compile): each op's binding is a header, csrc/<op>/binding.h, on the shared glue of
// csrc/common/binding_utils.h. It never includes the emulation headers.
#include "common/binding_utils.h"
#include "se/binding.h"
#include "bam/binding.h"
#include "sca/binding.h"
#include "cbam/binding.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "attnkernels hand-written kernels";
  m.attr("backends") = ak_binding::built_backends();
  ak_binding::register_se(m);
  ak_binding::register_bam(m);
  ak_binding::register_sca(m);
  ak_binding::register_cbam(m);
}

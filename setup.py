"""attnkernels: fused CUDA and Triton kernels for CNN attention blocks (SE, CBAM, BAM, SCA).

The extension attnkernels._C holds the CUDA kernels when torch is a CUDA build and nvcc is found,
and their CPU-emulated build (backend "cuda-emu") when the CUDA headers are found; with neither
(or with ATTNKERNELS_NO_CUDA=1 ATTNKERNELS_NO_EMU=1) a pure-Python package is installed, and
setup says why.
`python setup.py dev-requirements` prints the pinned development environment (used by the Makefile),
`python setup.py min-requirements` the oldest supported one (`make test-min`).
"""
import sys

from setuptools import find_packages, setup

# The one place versions are pinned: the development / CI environment (`make test`, `make bench`).
DEV_REQUIREMENTS = [
    "torch==2.14.1",
    "torchvision==0.29.1",
    "timm==1.0.31",
    "pytest",
    "pytest-benchmark",
    "pytest-xdist",  # `make test` spreads the suite over the cores (gpu-check: -n 8)
    "pytest-timeout",  # a hung test (a spin-wait) fails alone instead of stalling the run
    "hypothesis",
    "ninja",
    "pybind11",
    "numpy",
    "matplotlib",
    # ONNX export of the drop-ins, run in onnxruntime (tests/test_se_modules.py: *onnx*); the
    # default (torch.export-based) exporter needs onnxscript
    "onnx",
    "onnxruntime",
    "onnxscript",
]

# The oldest stack supported (`torch>=2.11`; the GPU machine runs it): `make test-min` runs the
# suite on it. torch 2.11 pins triton 3.6, whose interpreter fails under numpy >= 2.4 (it takes
# int() of a 1-element array).
_MIN_PINS = {"torch": "torch==2.11.0", "torchvision": "torchvision==0.26.0", "numpy": "numpy<2.4"}
MIN_REQUIREMENTS = [_MIN_PINS.get(r.split("==")[0], r) for r in DEV_REQUIREMENTS]

# The ops with hand-written CUDA kernels, one directory each: csrc/<op>/<op>_cuda.cu (nvcc),
# csrc/<op>/<op>_emu.cpp (g++ against csrc/cuemu), csrc/<op>/binding.h (in csrc/bindings.cpp).
# `python setup.py ops` prints them (the Makefile and benchmarks/gpu_check.sh read it there).
OPS = ["se", "cbam", "bam", "sca"]

_LISTS = {"dev-requirements": DEV_REQUIREMENTS, "min-requirements": MIN_REQUIREMENTS, "ops": OPS}
if __name__ == "__main__" and len(sys.argv) == 2 and sys.argv[1] in _LISTS:
    print("\n".join(_LISTS[sys.argv[1]]))
    sys.exit(0)


import os
import shutil

_HERE = os.path.dirname(os.path.abspath(__file__))
# Flags every translation unit compiled against csrc/cuemu needs (csrc/cuemu/cuemu.h CUEMU_CXXFLAGS).
_EMU_CXXFLAGS = ["-O2", "-g0", "-fno-strict-aliasing", "-fno-extern-tls-init", "-pthread"]
_EMU_ASAN_FLAGS = ["-fsanitize=address", "-fno-omit-frame-pointer", "-g", "-DCUEMU_USE_UCONTEXT"]


def _flag(name):
    return os.environ.get(name, "") not in ("", "0")


def _say(msg):
    print(f"attnkernels setup: {msg}", file=sys.stderr)


def ext_modules_and_cmdclass():
    """The extension attnkernels._C, or ([], {}) with a one-line reason when it can't be built.

    It holds each kernel build that can be made here, of every op in OPS (csrc/bindings.cpp picks
    one by x's device):
      the kernels compiled by nvcc (backend "cuda"): needs a CUDA build of torch and nvcc; skipped
        with ATTNKERNELS_NO_CUDA=1;
      the same kernels compiled by the host C++ compiler against csrc/cuemu (CPU tensors, backend
        "cuda-emu"): needs the CUDA headers only; skipped with ATTNKERNELS_NO_EMU=1.
    One extension, so the torch binding (the slowest C++ file to compile) is compiled once.
    """
    # torch.utils.cpp_extension reads CUDA_HOME at import; its auto-detection follows the
    # /usr/local/bin/nvcc wrapper to /usr/local, whose lib64 lacks the CUDA libraries.
    if not os.environ.get("CUDA_HOME") and not os.environ.get("CUDA_PATH") and os.path.isdir("/usr/local/cuda"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
    try:
        import torch
        from torch.utils import cpp_extension as ce
    except Exception as e:  # no torch yet (e.g. metadata-only runs)
        _say(f"no extension built: torch is not importable ({type(e).__name__}: {e})")
        return [], {}

    csrc = os.path.join("csrc")
    cuda_home = ce.CUDA_HOME
    cuda_inc = os.path.join(cuda_home, "include") if cuda_home else None
    sources, cxx_flags = [os.path.join(csrc, "bindings.cpp")], ["-O2", "-g0"]

    if _flag("ATTNKERNELS_NO_EMU"):
        _say("cuda-emu kernels skipped (ATTNKERNELS_NO_EMU=1)")
    elif shutil.which(os.environ.get("CXX", "c++")) is None:
        _say("cuda-emu kernels skipped: no C++ compiler found")
    elif not cuda_inc or not os.path.isfile(os.path.join(cuda_inc, "cuda_fp16.h")):
        _say("cuda-emu kernels skipped: the CUDA headers (cuda_fp16.h, vector_types.h) were not found; set CUDA_HOME")
    else:
        sources += [os.path.join(csrc, op, f"{op}_emu.cpp") for op in OPS]
        cxx_flags += [f for f in _EMU_CXXFLAGS if f not in cxx_flags] + ["-DAK_WITH_EMU=1"]
        if _flag("ATTNKERNELS_EMU_ASAN"):  # `make test-asan`: AddressSanitizer over the emulated kernels
            # ucontext fibers: ASan follows swapcontext (its interceptor clears a pooled stack's
            # shadow); the hand-written switch would need ASan's fiber annotations
            cxx_flags += _EMU_ASAN_FLAGS

    with_cuda = False
    if _flag("ATTNKERNELS_NO_CUDA"):
        _say("cuda kernels skipped (ATTNKERNELS_NO_CUDA=1)")
    elif not torch.version.cuda:
        _say(f"cuda kernels skipped: torch {torch.__version__} is not a CUDA build")
    elif not cuda_home or not os.path.isfile(os.path.join(cuda_home, "bin", "nvcc")):
        _say("cuda kernels skipped: nvcc not found (set CUDA_HOME)")
    else:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
        sources += [os.path.join(csrc, op, f"{op}_cuda.cu") for op in OPS]
        cxx_flags.append("-DAK_WITH_CUDA=1")
        with_cuda = True

    if len(sources) == 1:
        _say("no extension built: neither the cuda nor the cuda-emu kernels can be built here")
        return [], {}
    kwargs = dict(
        include_dirs=[os.path.join(_HERE, csrc)] + ([cuda_inc] if cuda_inc else []),
        extra_link_args=["-pthread", "-ldl"] + (["-fsanitize=address"] if _flag("ATTNKERNELS_EMU_ASAN") else []),
    )
    if with_cuda:
        # --threads 0: the gencode targets compile in parallel
        ext = ce.CUDAExtension("attnkernels._C", sources=sources, **kwargs,
                               extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo", "--threads", "0"]})
    else:
        ext = ce.CppExtension("attnkernels._C", sources=sources, **kwargs, extra_compile_args={"cxx": cxx_flags})
    return [ext], {"build_ext": ce.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = ext_modules_and_cmdclass()

setup(
    name="attnkernels",
    version="0.1.0",
    description="Fused CUDA and Triton kernels for SE, CBAM, BAM and SCA attention blocks",
    packages=find_packages(include=["attnkernels", "attnkernels.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.11"],
    extras_require={"dev": DEV_REQUIREMENTS[1:]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)

# attnkernels: `make test` and `make bench` do all set-up on first use (.venv from requirements.txt).
# `make test PYTHON=python3` uses that interpreter as is: no venv, no downloads (the GPU machine).
PYTHON ?=
VENV := .venv
ifeq ($(PYTHON),)
  PY := $(VENV)/bin/python
  SETUP_DEP := $(VENV)/.installed
else
  PY := $(PYTHON)
  SETUP_DEP := build-inplace
endif
export CUDA_HOME ?= /usr/local/cuda
PYTEST_ARGS ?=

.PHONY: test test-min test-asan bench gpu-check build-inplace clean

$(VENV)/.installed: setup.py $(wildcard csrc/*/*.cu csrc/*/*.cuh csrc/*/*.cpp csrc/*/*.h csrc/*.cpp)
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	python3 setup.py dev-requirements > $(VENV)/requirements.txt
	$(VENV)/bin/python -m pip install -q -r $(VENV)/requirements.txt
	$(VENV)/bin/python -m pip install -q --no-build-isolation -e .
	touch $@

# Existing interpreter: build the extensions in place (no install, no network).
build-inplace:
	$(PY) setup.py -q build_ext --inplace

# With pytest-xdist (dev requirements; the GPU machine has it too) the suite runs on
# PYTEST_WORKERS processes (auto: one per core; 0: in this process), and with pytest-timeout a
# test that hangs fails after PYTEST_TIMEOUT_S instead of stalling the run. Without them, plain.
PYTEST_WORKERS ?= auto
PYTEST_TIMEOUT_S ?= 600
PLUGIN_ARGS_PY := from importlib.util import find_spec as f; \
  print(*(["-n", "$(PYTEST_WORKERS)"] if f("xdist") else []), \
        *(["--timeout=$(PYTEST_TIMEOUT_S)", "--timeout-method=thread"] if f("pytest_timeout") else []))

test: $(SETUP_DEP)
	TRITON_INTERPRET=$${TRITON_INTERPRET-$$($(PY) -c "import torch;print(0 if torch.cuda.is_available() else 1)")} \
	  $(PY) -m pytest -q tests $$($(PY) -c '$(PLUGIN_ARGS_PY)') $(PYTEST_ARGS)

# The suite on the oldest supported stack (`python setup.py min-requirements`: torch 2.11, the
# GPU machine's), in .venv-min, on a copy of the tree in build/min: its extension is built
# against that torch, and an in-place build here would replace the one .venv imports. Its Triton
# launches run with their programs interleaved (TRITON_SCHEDULE, tests/conftest.py; `make test`
# keeps the interpreter's pid order), so CI runs the Triton suite under both schedules; the op
# suites run on the Triton backend only there (ATTNKERNELS_TEST_BACKENDS; the emulated CUDA
# kernels' own files still run), since `make test` runs them on every backend. test_cuemu.py
# and test_cuda_build.py build csrc with g++ / nvcc alone, neither torch nor triton in them: they
# would repeat `make test`'s run word for word, so test-min leaves them out; for the same reason
# its build leaves out the nvcc kernels (csrc/<op>/<op>_cuda.cu include no torch header, and
# nothing runs them without a GPU): ATTNKERNELS_NO_CUDA=1. It also leaves out the tests that set
# their own Triton program order (test_*_triton_programs_*) and the determinism tests (two orders,
# the same bits): the order in which the kernels combine partials is no stack's, `make test` runs
# them, and here every other Triton test runs interleaved.
MIN_VENV := .venv-min
MIN_SKIP := --ignore=tests/test_cuemu.py --ignore=tests/test_cuda_build.py \
            -k 'not triton_programs_in_any_order and not triton_programs_interleaved and not is_deterministic'
MIN_TREE := build/min

$(MIN_VENV)/.installed: setup.py
	test -x $(MIN_VENV)/bin/python || python3 -m venv $(MIN_VENV)
	python3 setup.py min-requirements > $(MIN_VENV)/requirements.txt
	$(MIN_VENV)/bin/python -m pip install -q -r $(MIN_VENV)/requirements.txt
	touch $@

# $(call copy_tree,DIR): the tree's files (tracked, and untracked but not ignored) into DIR. The
# copy keeps the files' times and DIR's own build/, so only what changed is rebuilt.
copy_tree = mkdir -p $(1) && find $(1) -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} + && \
  git ls-files -co --exclude-standard | while read -r f; do [ -e "$$f" ] && echo "$$f"; done \
  | tar -cf - -T - | tar -xf - -C $(1)

test-min: $(MIN_VENV)/.installed
	$(call copy_tree,$(MIN_TREE))
	TRITON_SCHEDULE=$${TRITON_SCHEDULE-interleave:1} ATTNKERNELS_TEST_BACKENDS=$${ATTNKERNELS_TEST_BACKENDS-triton} \
	  ATTNKERNELS_NO_CUDA=$${ATTNKERNELS_NO_CUDA-1} $(MAKE) -C $(MIN_TREE) test PYTHON=$(CURDIR)/$(MIN_VENV)/bin/python PYTEST_ARGS="$(MIN_SKIP) $(PYTEST_ARGS)"

# AddressSanitizer over the emulated CUDA kernels (backend cuda-emu): an out-of-bounds read or
# write of a kernel fails the test on the CPU, as compute-sanitizer's memcheck would on a GPU. A
# copy of the tree in build/asan, its extension built with -fsanitize=address
# (ATTNKERNELS_EMU_ASAN=1; the emulated kernels only), libasan preloaded into python with
# libstdc++ (else ASan's __cxa_throw interceptor finds no real function: any C++ exception aborts).
ASAN_TREE := build/asan
ASAN_PY := $(if $(PYTHON),$(PYTHON),$(CURDIR)/$(VENV)/bin/python)
ASAN_TESTS := tests/test_se.py tests/test_se_cuda_emu.py tests/test_se_modules.py tests/test_convert.py \
              tests/test_cbam_cuda_emu.py tests/test_bam_cuda_emu.py tests/test_sca_cuda_emu.py
# (the N = 8192 case of the weight-gradient accuracy test: 4 s plain, 150 s instrumented; its
# N = 523 case runs the same blocked sums, partial block and tree included)
ASAN_SKIP := --deselect "tests/test_se.py::test_se_weight_gradients_sum_the_batch_blocked[cuda-emu-8192]"
test-asan: $(SETUP_DEP)
	$(call copy_tree,$(ASAN_TREE))
	cd $(ASAN_TREE) && ATTNKERNELS_NO_CUDA=1 ATTNKERNELS_EMU_ASAN=1 $(ASAN_PY) setup.py -q build_ext --inplace
	rm -rf $(ASAN_TREE)/asan-logs && mkdir -p $(ASAN_TREE)/asan-logs
	cd $(ASAN_TREE) && CXX=$${CXX:-c++} && ASAN_OPTIONS=detect_leaks=0:log_path=$(CURDIR)/$(ASAN_TREE)/asan-logs/asan \
	  TRITON_INTERPRET=1 LD_PRELOAD="$$($$CXX -print-file-name=libasan.so) $$($$CXX -print-file-name=libstdc++.so)" \
	  $(ASAN_PY) -m pytest -q $(ASAN_TESTS) -k cuda $(ASAN_SKIP) $$($(ASAN_PY) -c '$(PLUGIN_ARGS_PY)') $(PYTEST_ARGS) \
	  || { grep -l "ERROR: AddressSanitizer" $(CURDIR)/$(ASAN_TREE)/asan-logs/* 2>/dev/null | head -1 \
	       | xargs -r grep -A6 "ERROR: AddressSanitizer"; exit 1; }

bench: $(SETUP_DEP)
	$(PY) benchmarks/main.py

gpu-check:
	PYTHON=$(or $(PYTHON),python3) bash benchmarks/gpu_check.sh

clean:
	rm -rf build *.egg-info attnkernels/*.so $(VENV)/.installed $(MIN_VENV)/.installed

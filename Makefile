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

.PHONY: test test-min bench gpu-check build-inplace clean

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
# against that torch, and an in-place build here would replace the one .venv imports.
MIN_VENV := .venv-min
MIN_TREE := build/min

$(MIN_VENV)/.installed: setup.py
	test -x $(MIN_VENV)/bin/python || python3 -m venv $(MIN_VENV)
	python3 setup.py min-requirements > $(MIN_VENV)/requirements.txt
	$(MIN_VENV)/bin/python -m pip install -q -r $(MIN_VENV)/requirements.txt
	touch $@

# The copy keeps the files' times and its own build/, so only what changed is rebuilt.
test-min: $(MIN_VENV)/.installed
	mkdir -p $(MIN_TREE) && find $(MIN_TREE) -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} +
	git ls-files -co --exclude-standard | while read -r f; do [ -e "$$f" ] && echo "$$f"; done \
	  | tar -cf - -T - | tar -xf - -C $(MIN_TREE)
	$(MAKE) -C $(MIN_TREE) test PYTHON=$(CURDIR)/$(MIN_VENV)/bin/python

bench: $(SETUP_DEP)
	$(PY) benchmarks/main.py

gpu-check:
	PYTHON=$(or $(PYTHON),python3) bash benchmarks/gpu_check.sh

clean:
	rm -rf build *.egg-info attnkernels/*.so $(VENV)/.installed $(MIN_VENV)/.installed

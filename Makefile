# Everything from nothing: `make test` and `make demo` create .venv, install torch and noisefast,
# then run the tests or the example. On a GPU machine without network, `make gpu-check` builds
# with the Python that is already there and runs the CUDA tests and the benchmarks.

PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.14.1
PY         := $(VENV)/bin/python
PIP        := $(PY) -m pip

# Build settings (see setup.py): no debug info, both cores, one CUDA arch when no GPU is visible.
export CFLAGS   ?= -g0
export MAX_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
ifneq ($(wildcard /usr/local/cuda/bin/nvcc),)
export CUDA_HOME ?= /usr/local/cuda
endif

SHELL       := /bin/bash
.SHELLFLAGS := -o pipefail -ec

PYTEST_ARGS ?=
BENCH_ARGS  ?=

.PHONY: venv install triton36 test demo quickstart bench gpu-build gpu-test gpu-bench-noise gpu-bench-training gpu-check clean

$(VENV)/.torch-installed:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel
	$(PIP) install "$(TORCH_SPEC)"
	touch $@

venv: $(VENV)/.torch-installed

# --no-build-isolation: the build needs the torch of this environment.
install: venv
	$(PIP) install --no-build-isolation -v -e ".[test,examples,bench]" > build.log 2>&1 \
	  || { tail -n 60 build.log; echo "build failed: see build.log"; exit 1; }
	grep -E "^ *noisefast:|nvcc |Successfully installed" build.log | cut -c1-220
	$(PY) -c "import noisefast, sys; b = noisefast.backends(); print('noisefast backends:', b); sys.exit(0 if b['cpu'] else 1)"

# Triton 3.6.0, the GPU machine's, beside CI's: tests/test_aot_triton.py compiles every kernel
# variant under both (no GPU needed). Installed once into the build tree (about 30 s, 640 MB).
TRITON36_DIR ?= build/triton-3.6.0
$(TRITON36_DIR)/.installed: | $(VENV)/.torch-installed
	$(PIP) install --quiet --no-deps --target $(TRITON36_DIR) triton==3.6.0
	touch $@

triton36: $(TRITON36_DIR)/.installed

test: install triton36
	NOISEFAST_TRITON36_DIR=$(abspath $(TRITON36_DIR)) $(PY) -m pytest -q $(PYTEST_ARGS)

# The main example: consistency training on scikit-learn's digits (about 5 minutes on 2 CPU cores).
demo: install
	$(PY) examples/train_consistency.py

quickstart: install
	$(PY) examples/quickstart.py

bench: install
	$(PY) -m benchmarks.run $(BENCH_ARGS)

# For a GPU machine with no network (gpu.md: system python3 with torch, Triton, numpy, pytest,
# pytest-benchmark, ninja; no pip downloads): build in place, run the tests, then the benchmarks;
# results under benchmarks/results/<device>/, logs and results also copied to $$OUT when it is set.
# The device tool runs one command for at most 10 minutes, so the stages are separate targets,
# each well under that on an H100 (`gpu-check` runs them all, for a machine without that limit):
#   make gpu-build            compile the CPU and CUDA kernels (sm_90), check that both load;
#                             incremental (a no-op when built), so `make gpu-build gpu-test` is
#                             safe on a machine that may have been handed back and started afresh
#   make gpu-test             the `cuda` tests first (GPU kernels against the references), then the rest
#   make gpu-bench-noise      benchmarks: randn, gaussian_noise, perturbation ops (torch.compile included)
#   make gpu-bench-training   benchmarks: EMA, pseudo-Huber loss, the whole iCT noise pipeline
GPU_PYTHON ?= python3
GPU_RUN    := PYTHONPATH=$(CURDIR) $(GPU_PYTHON)
# Logs go to $$OUT (when set) as soon as they are written, so a stage cut off by a time limit
# still leaves them.
copy_to_out = if [ -n "$$OUT" ]; then cp $(1) "$$OUT/" 2>/dev/null || true; fi

gpu-build:
	TORCH_CUDA_ARCH_LIST=$${TORCH_CUDA_ARCH_LIST:-9.0} $(GPU_PYTHON) setup.py build_ext --inplace > gpu-build.log 2>&1 \
	  || { tail -n 60 gpu-build.log; $(call copy_to_out,gpu-build.log); echo "build failed: see gpu-build.log"; exit 1; }
	$(call copy_to_out,gpu-build.log noisefast/_C*.so)
	$(GPU_RUN) -c "import sys, torch, triton, noisefast; b = noisefast.backends(); \
	  print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, \
	        torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU visible'); \
	  print('noisefast backends:', b); sys.exit(0 if b['cuda'] and b['triton'] else 1)"

# The exit status is the first failure's; the second run goes on even when the first fails.
gpu-test:
	status=0; \
	$(GPU_RUN) -m pytest -q -p no:cacheprovider -rfEs -m cuda --durations=15 tests $(PYTEST_ARGS) 2>&1 \
	  | tee gpu-tests-cuda.log || status=$$?; \
	$(call copy_to_out,gpu-tests-cuda.log); \
	$(GPU_RUN) -m pytest -q -p no:cacheprovider -rfE -m "not cuda" tests $(PYTEST_ARGS) 2>&1 \
	  | tee gpu-tests-rest.log || { rc=$$?; [ "$$status" -ne 0 ] || status=$$rc; }; \
	$(call copy_to_out,gpu-tests-rest.log); \
	exit $$status

gpu-bench-noise:
	$(GPU_RUN) -m benchmarks.run --part noise $(BENCH_ARGS)

gpu-bench-training:
	$(GPU_RUN) -m benchmarks.run --part training $(BENCH_ARGS)

# Every stage; benchmarks run even when a test fails (device time is scarce). The exit status is
# the first failure's.
gpu-check: gpu-build
	status=0; \
	$(MAKE) --no-print-directory gpu-test || status=$$?; \
	$(MAKE) --no-print-directory gpu-bench-noise || { rc=$$?; [ "$$status" -ne 0 ] || status=$$rc; }; \
	$(MAKE) --no-print-directory gpu-bench-training || { rc=$$?; [ "$$status" -ne 0 ] || status=$$rc; }; \
	exit $$status

clean:
	rm -rf build *.egg-info noisefast/*.so .pytest_cache .benchmarks

# Everything from nothing: `make test` and `make demo` create .venv, install torch and noisefast,
# then run the tests or the example. On a GPU machine without network, `make gpu-check` builds
# with the Python that is already there and runs the CUDA checks and the benchmarks.

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

.PHONY: venv install triton36 test demo quickstart bench gpu-check clean

$(VENV)/.torch-installed:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel
	$(PIP) install "$(TORCH_SPEC)"
	touch $@

venv: $(VENV)/.torch-installed

# --no-build-isolation: the build needs the torch of this environment. TORCH_SPEC again, so that
# an extra's dependency (timm's torchvision) is resolved against this torch instead of upgrading it.
install: venv
	$(PIP) install --no-build-isolation -v -e ".[test,examples,bench]" "$(TORCH_SPEC)" > build.log 2>&1 \
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

# One command for a GPU machine (no network; its python3 has torch, Triton, numpy, pytest,
# pytest-benchmark, ninja; nvcc and compute-sanitizer): build for sm_90, check registers and
# spills, the `cuda` tests, compute-sanitizer memcheck, the copy bandwidth and the benchmarks, each
# stage time-capped, all within 8 minutes; at most 8 flat files in $OUT (summary.md first). The
# tree there has no .git: pass the commit measured, as in
#   NOISEFAST_COMMIT=$(git rev-parse --short HEAD) make gpu-check
# GPU_CHECK_ARGS="--only build,cuda-tests" reruns some stages; "--dry-run" runs the plumbing
# without a GPU (tests/test_gpu_check.py does, in CI). See .ci/gpu_check.py.
GPU_PYTHON     ?= python3
GPU_CHECK_ARGS ?=

gpu-check:
	$(GPU_PYTHON) .ci/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf build *.egg-info noisefast/*.so .pytest_cache .benchmarks

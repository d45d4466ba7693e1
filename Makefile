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

.PHONY: venv install test demo quickstart bench gpu-check clean

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

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The main example: consistency training on scikit-learn's digits (about 5 minutes on 2 CPU cores).
demo: install
	$(PY) examples/train_consistency.py

quickstart: install
	$(PY) examples/quickstart.py

bench: install
	$(PY) -m benchmarks.run $(BENCH_ARGS)

# For a GPU machine with no network: build in place with the installed torch, run the GPU
# tests, then the benchmarks; results under benchmarks/results/<device>/ (and $$OUT if set).
GPU_PYTHON ?= python3
# The benchmarks run even when a test fails (device time is scarce); the exit status is the
# first failure's.
gpu-check:
	TORCH_CUDA_ARCH_LIST=$${TORCH_CUDA_ARCH_LIST:-9.0} $(GPU_PYTHON) setup.py build_ext --inplace
	status=0; \
	PYTHONPATH=$(CURDIR) $(GPU_PYTHON) -m pytest -q -p no:cacheprovider tests $(PYTEST_ARGS) 2>&1 | tee gpu-tests.log || status=$$?; \
	if [ -n "$$OUT" ]; then cp gpu-tests.log "$$OUT/"; fi; \
	PYTHONPATH=$(CURDIR) $(GPU_PYTHON) -m benchmarks.run $(BENCH_ARGS) || { rc=$$?; [ "$$status" -ne 0 ] || status=$$rc; }; \
	exit $$status

clean:
	rm -rf build *.egg-info noisefast/*.so .pytest_cache .benchmarks

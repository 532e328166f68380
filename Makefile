# dixc: `make demo` and `make test` set everything up on a fresh machine (Python >= 3.10 and a C++
# compiler needed). Torch extensions build against the installed torch, so torch==2.13.0 is
# installed first and the package is built with --no-build-isolation.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check
TORCH_SPEC ?= torch==2.13.0
DEPS := $(VENV)/.dixc-deps
# glibc's malloc page-faults on large torch CPU allocations on these VMs: benchmark with these.
BENCH_ENV := MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=68719476736

.PHONY: all install demo test bench bench-scf lint format wheel cuda-check clean

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(DEPS): $(BIN)/python pyproject.toml Makefile
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q "scikit-build-core>=0.10" "pybind11>=2.12" "cmake>=3.21" ninja numpy scipy \
		"pyscf==2.14.0" h5py tqdm qm9pack safetensors pyyaml matplotlib tensorboard "geometric==1.1.1" "pytest>=8" expecttest "ruff==0.17.*" "clang-format==23.*"
	touch $@

install: $(DEPS)
	$(PIP) install -q --no-build-isolation --no-deps .

demo: install
	$(BIN)/dixc demo

test: install
	$(BIN)/python -m pytest

bench: install
	$(BENCH_ENV) $(BIN)/python bench/bench_numint.py

bench-scf: install
	$(BENCH_ENV) $(BIN)/python bench/bench_scf.py

lint: $(DEPS)
	$(BIN)/ruff check python tests bench
	$(BIN)/ruff format --check python tests bench
	$(BIN)/clang-format --dry-run -Werror $$(find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh')

format: $(DEPS)
	$(BIN)/ruff check --fix python tests bench
	$(BIN)/ruff format python tests bench
	$(BIN)/clang-format -i $$(find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh')

wheel: $(DEPS)
	$(PIP) wheel --no-build-isolation --no-deps -w dist .

# Compiles every csrc/cuda/*.cu with nvcc against the installed torch's headers (no GPU needed; a
# CPU wheel ships the ATen/c10 CUDA headers): host code and sm_90 SASS + compute_90 PTX, objects in
# build/cuda-check/. Fails on any compile error. C10_CUDA_NO_CMAKE_CONFIGURE_FILE: CPU wheels lack
# c10/cuda/impl/cuda_cmake_macros.h (it only matters for Windows DLL exports).
NVCC ?= nvcc
CUDA_CHECK_DIR := build/cuda-check
CUDA_CHECK_FLAGS := -std=c++17 -O3 -Xcompiler -fPIC --expt-relaxed-constexpr \
	-gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90 \
	-DTORCH_EXTENSION_NAME=_dixc_ops -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE -Icsrc

cuda-check: $(DEPS)
	@set -euo pipefail; \
	nvcc=$$(command -v $(NVCC) || true); \
	if [ -z "$$nvcc" ] && [ -x "$${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]; then \
		nvcc="$${CUDA_HOME:-/usr/local/cuda}/bin/nvcc"; fi; \
	if [ -z "$$nvcc" ]; then echo "cuda-check: nvcc not found (set NVCC or CUDA_HOME)" >&2; exit 1; fi; \
	abi=$$($(BIN)/python -c "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))"); \
	inc=$$($(BIN)/python -c "from torch.utils.cpp_extension import include_paths as p; \
		print(' '.join('-isystem ' + d for d in p()))"); \
	tv=$$($(BIN)/python -c "import torch; print(torch.__version__)"); \
	echo "cuda-check: $$($$nvcc --version | tail -n 2 | head -n 1), torch $$tv headers"; \
	mkdir -p $(CUDA_CHECK_DIR); \
	for src in csrc/cuda/*.cu; do \
		obj=$(CUDA_CHECK_DIR)/$$(basename "$$src" .cu).o; \
		echo "  nvcc -c $$src -> $$obj"; \
		$$nvcc $(CUDA_CHECK_FLAGS) -D_GLIBCXX_USE_CXX11_ABI=$$abi $$inc -c "$$src" -o "$$obj"; \
	done; \
	echo "cuda-check: all CUDA sources compile (sm_90 SASS + compute_90 PTX)"

clean:
	rm -rf build dist

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

.PHONY: all install demo test bench lint format wheel cuda-check clean

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(DEPS): $(BIN)/python pyproject.toml Makefile
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q "scikit-build-core>=0.10" "pybind11>=2.12" "cmake>=3.21" ninja numpy scipy \
		"pyscf==2.14.0" h5py tqdm "pytest>=8" expecttest "ruff==0.17.*" "clang-format==23.*"
	touch $@

install: $(DEPS)
	$(PIP) install -q --no-build-isolation --no-deps .

demo: install
	$(BIN)/dixc demo

test: install
	$(BIN)/python -m pytest

bench: install
	$(BENCH_ENV) $(BIN)/python bench/bench_numint.py

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

clean:
	rm -rf build dist

# One-command set-up on a fresh machine: `make test` (tests) and `make bench` (kernel benchmark).
# Both create .venv, install torch $(TORCH_VERSION) and the tools, build hal_ext in place and install
# it into .venv as an editable package (`source .venv/bin/activate`, then `import hal_ext` anywhere).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.14.1
HAL_EXT_CUDA ?= auto
BENCH_ARGS ?= --quick
export HAL_EXT_CUDA
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c

.PHONY: setup build install test test-asan test-gpu-env bench bench-full bench-record gpu-check clean

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: requirements-dev.txt
	@echo "==> creating $(VENV) with torch==$(TORCH_VERSION) (a few minutes the first time)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --progress-bar off torch==$(TORCH_VERSION) -r requirements-dev.txt
	touch $@

build: setup
	@echo "==> building hal_ext (HAL_EXT_CUDA=$(HAL_EXT_CUDA)); compiler output follows"
	@mkdir -p build
	$(PY) setup.py build_ext --inplace 2>&1 | tee build/build.log | $(PY) scripts/build_progress.py \
		|| { echo "==> build failed; last lines of build/build.log:"; tail -40 build/build.log; exit 1; }
	@(cd / && $(abspath $(PY)) -c "import importlib.util as u, os, sys; s = u.find_spec('hal_ext'); \
		sys.exit(s is None or not os.path.samefile(s.origin, sys.argv[1]))" "$(CURDIR)/hal_ext/__init__.py") \
		|| $(MAKE) --no-print-directory install
	cd / && $(abspath $(PY)) -c "import hal_ext, sys; info = hal_ext.build_info(); print('==> hal_ext', hal_ext.__version__, 'build_info:', info); sys.exit(0 if info['compiled'] else 1)"

# Installs this checkout into the venv as an editable package: the venv then imports the checkout's
# hal_ext from any folder, and later in-place builds update it. `make build` runs this whenever the
# venv's hal_ext is not this checkout's. Compat mode puts the checkout's folder on sys.path, so that
# hal_ext is found even from the checkout's parent folder, where the checkout folder itself would
# otherwise pass for an empty namespace package.
install: setup
	@echo "==> installing this checkout's hal_ext into $(VENV) (editable)"
	@mkdir -p build
	$(PY) -m pip install --no-build-isolation --no-deps --config-settings editable_mode=compat -e . \
		> build/install.log 2>&1 || { echo "==> install failed; last lines of build/install.log:"; tail -40 build/install.log; exit 1; }

test: build
	$(PY) -m pytest tests

# The CPU kernels under AddressSanitizer and UBSan (scripts/asan.sh): a copy of the tree built with
# -fsanitize=address,undefined in build/asan (the in-place build is untouched), then pytest there with
# the sanitizer runtime preloaded: ASAN_TESTS (pytest arguments), by default the whole suite. CI runs it
# after `make test`.
ASAN_TESTS ?=
test-asan: setup
	PY=$(PY) scripts/asan.sh $(ASAN_TESTS)

# The GPU machine's Python and torch (scripts/gpu_check.sh builds there against its own torch): the
# same build and tests against them, in their own venv, so that a break only they would show is
# caught here rather than in a device session. CI runs this after `make test`.
# GPU_PYTHON: python3.12 on PATH, else pyenv's newest 3.12 (pyenv's shim answers only for a selected
# version); looked up only when this target runs.
GPU_PYTHON ?= $(shell for p in python3.12 $$(ls -d "$$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12 \
	2>/dev/null | sort -V -r); do "$$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null \
	&& { echo "$$p"; break; }; done)
GPU_TORCH_VERSION ?= 2.11.0
test-gpu-env:
	@py="$(GPU_PYTHON)"; \
	if [[ -z $$py ]]; then echo "==> make test-gpu-env needs a Python 3.12 (the GPU machine's): set GPU_PYTHON" >&2; exit 1; fi; \
	echo "==> the GPU machine's Python and torch: $$py, torch $(GPU_TORCH_VERSION)"; \
	$(MAKE) clean && $(MAKE) test PYTHON="$$py" VENV=.venv-gpu-env TORCH_VERSION=$(GPU_TORCH_VERSION)

bench: build
	$(PY) -m benchmarks $(BENCH_ARGS)

bench-full:
	$(MAKE) bench BENCH_ARGS=--full

# The same run, written to the committed benchmarks/results/<machine>/ (plain `make bench` writes to
# the git-ignored runs/benchmarks/<machine>/).
bench-record:
	$(MAKE) bench BENCH_ARGS="$(BENCH_ARGS) --record"

# On a GPU machine with torch preinstalled (no .venv): build for sm_90, CUDA tests, benchmarks, under $$OUT.
gpu-check:
	scripts/gpu_check.sh

clean:
	rm -rf build hal_ext/_C*.so *.egg-info

# The CUDA kernels under the SIMT emulator (tests/test_simt.py and the operator fuzz through them,
# tests/test_simt_fuzz.py, which `make test` runs as well), built with AddressSanitizer, then with
# ThreadSanitizer, each run with the sanitizer's runtime preloaded.
SIMT_TESTS := tests/test_simt.py tests/test_simt_fuzz.py
.PHONY: test-simt-sanitize
test-simt-sanitize: build
	$(PY) scripts/build_simt.py --variant asan --test $(SIMT_TESTS)
	$(PY) scripts/build_simt.py --variant tsan --test $(SIMT_TESTS)

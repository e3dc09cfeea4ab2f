# The two set-up commands a user needs (README.md): `make demo` and `make test`.
# Both create or update .venv themselves; running them again only redoes what changed.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch for CI and laptops. A user with a GPU installs a CUDA build into .venv first
# (README, "GPU"); it is kept, because this step only runs when torch does not import.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.acat-installed
DEMO_OUT ?= demo-output
# `make demo DEMO_SERVE=0` stops after writing the files (machines without a browser)
DEMO_SERVE ?= 1
DEMO_PORT ?= 8080
# Debian packages for the web viewer (`acat view`) and its browser test: offscreen rendering through Mesa's
# EGL (libegl1 loads libegl-mesa0, which draws with llvmpipe from libgl1-mesa-dri; no display, no GPU needed),
# Debian's chromium driven by Playwright (never a browser download), a font for the page text; dicom3tools'
# dciodvfy, the DICOM validator that the tests run on what `acat explain --dicom` writes.
SYSTEM_PACKAGES ?= chromium libegl1 libegl-mesa0 libgl1-mesa-dri libgl1 libopengl0 fonts-dejavu-core dicom3tools
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: venv data system-deps test test-fast demo bench fuzz clean

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet --editable ".[test,train,data,slicer]"
	@touch $@

venv: $(STAMP)

# Real CT data comes from packages by name (Debian's invesalius-examples, PyPI's slicerio and
# pydicom-data), cached under ~/.cache/acat; nothing is committed and nothing else is downloaded.
data: venv
	$(PY) -m ACATData.sample_data fetch

# Installs only what is missing (apt-get, with sudo unless root); on a system without dpkg it says what to install.
system-deps:
	@if ! command -v dpkg-query >/dev/null; then \
	  echo "make: not a Debian/Ubuntu system: install chromium, Mesa's EGL/OpenGL libraries and dicom3tools yourself" >&2; exit 0; fi; \
	missing=$$(for p in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages:" $$missing; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi

# pytest's exit code 5 ("no tests collected") is a failure here. The tests run in TEST_WORKERS processes
# (pytest-xdist; default: one per CPU this process may use, at most 4), each test file in one worker (its
# module fixtures are built once), the longest files first (Testing/conftest.py, order_by_expected_time);
# `make test TEST_WORKERS=0` runs them in this one process.
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(min(4, len(os.sched_getaffinity(0))) if hasattr(os, 'sched_getaffinity') else 1)")
test: system-deps data
	@$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The edit loop: every test but the ones marked slow (Testing/conftest.py says which and why); CI runs `make test`.
test-fast: venv data
	@$(PY) -m pytest -m "not slow" -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-fast: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The demo case (the real head CT with a simulated left MCA infarct, as a DICOM series), explained with the
# default bundled model (overview.png among the outputs), then shown in the web viewer.
demo: system-deps data
	@mkdir -p $(DEMO_OUT)
	rm -rf $(DEMO_OUT)/phantom_case
	$(PY) -m ACATData.phantom.demo --out $(DEMO_OUT)/phantom_case > $(DEMO_OUT)/.demo_image
	$(VENV)/bin/acat info "$$(cat $(DEMO_OUT)/.demo_image)"
	$(VENV)/bin/acat explain "$$(cat $(DEMO_OUT)/.demo_image)" --out $(DEMO_OUT)/explanation --overwrite
	@test -f $(DEMO_OUT)/explanation/overview.png
	@echo "Demo outputs are in $(DEMO_OUT)/ (explanation/overview.png: CT, saliency, counterfactual, difference)"
	@if [ "$(DEMO_SERVE)" != 0 ]; then \
	  exec $(VENV)/bin/acat view "$$(cat $(DEMO_OUT)/.demo_image)" --port $(DEMO_PORT); fi

# Performance benchmark (docs/BENCHMARKS.md): prints a markdown table, writes JSON to $(BENCH_OUT).
BENCH_OUT ?= bench-output
BENCH_ARGS ?=
bench: venv data
	$(PY) Testing/benchmarks/run_benchmarks.py --out $(BENCH_OUT) $(BENCH_ARGS)

# Fuzzers over the DICOM/NRRD readers, the model-card parser and the web viewer's message handling, for a bounded time (docs/RELIABILITY.md).
FUZZ_SECONDS ?= 120
fuzz: venv data
	$(PY) Testing/fuzz/run_fuzz.py --seconds $(FUZZ_SECONDS)

clean:
	rm -rf $(VENV) $(DEMO_OUT) $(BENCH_OUT) .pytest_cache

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

.PHONY: venv data test demo clean

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet --editable ".[test,train,slicer]"
	@touch $@

venv: $(STAMP)

# Real CT data comes from packages by name (Debian's invesalius-examples, PyPI's slicerio and
# pydicom-data), cached under ~/.cache/acat; nothing is committed and nothing else is downloaded.
data: venv
	$(PY) -m ACATLogic.sample_data fetch

# pytest's exit code 5 ("no tests collected") is a failure here.
test: data
	@$(PY) -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

demo: data
	@mkdir -p $(DEMO_OUT)
	$(PY) -m ACATLogic.sample_data demo-series $(DEMO_OUT)/head_ct_dicom
	$(VENV)/bin/acat info $(DEMO_OUT)/head_ct_dicom
	$(VENV)/bin/acat convert --overwrite $(DEMO_OUT)/head_ct_dicom $(DEMO_OUT)/head_ct.nrrd
	@echo "Demo outputs are in $(DEMO_OUT)/"

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache

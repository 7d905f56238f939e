# `make demo` and `make test` work on a fresh machine: each builds .venv, torch pinned by constraints.txt.
# demo installs hf_mup[sweep] (the demo needs matplotlib besides torch/transformers); test installs hf_mup[test]
# ([train,sweep] + pytest, peft, setuptools) and microsoft's mup. Both are editable installs of this checkout.
PYTHON ?= python3
VENV := .venv
PIP := $(VENV)/bin/pip
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export NO_MKDOCS_2_WARNING := 1  # mkdocs 1.6 announces MkDocs 2 at every build

.PHONY: demo test test-fast lint typecheck docs install clean

# The venv and torch 2.13.0 (CPU wheel); constraints.txt keeps every later install from replacing it.
$(VENV)/.torch: constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	touch $@

$(VENV)/.installed-demo: $(VENV)/.torch setup.cfg pyproject.toml
	$(PIP) install -q -c constraints.txt -e '.[sweep]'
	touch $@

$(VENV)/.installed: $(VENV)/.torch setup.cfg pyproject.toml
	$(PIP) install -q -c constraints.txt -e '.[test]'
	# microsoft/mup, the test oracle: --no-deps, or it drags torchvision (which replaces torch)
	$(PIP) install -q -c constraints.txt --no-deps mup==1.0.0
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed-demo
	$(VENV)/bin/python -m hf_mup.lab.demo --out demo_out

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q -rs --durations=30

# The core's quick tests only (tests/core, markers in setup.cfg): what a change to the core needs first, in under a
# minute. tests/lab and tests/integration mirror the lab and the doors users take; `make test` runs all three.
test-fast: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q tests/core -m "not slow and not multiprocess and not server"

# ruff, configured in pyproject.toml: pyflakes, pycodestyle, import order, bugbear, pyupgrade.
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check hf_mup tests recipes benchmarks

# mypy, configured in pyproject.toml: strict on the core's public API.
typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

# The documentation site (mkdocs.yml, docs/): MkDocs Material, the API reference by mkdocstrings. --strict: a broken
# link or a missing reference fails the build.
docs: $(VENV)/.installed
	$(VENV)/bin/mkdocs build --strict --site-dir build/site

clean:
	rm -rf $(VENV) demo_out build dist

# `make demo` and `make test` work on a fresh machine: each builds .venv, torch pinned by constraints.txt.
# demo installs hf_mup[sweep] (the demo needs matplotlib besides torch/transformers); test installs hf_mup[test]
# ([train,sweep] + pytest, peft, setuptools) and microsoft's mup. Both are editable installs of this checkout.
PYTHON ?= python3
VENV := .venv
PIP := $(VENV)/bin/pip
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: demo test test-fast lint install clean

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
	$(VENV)/bin/python -m hf_mup.demo --out demo_out

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q -rs

# The quick tests only (markers in setup.cfg): what a change to the core needs first, in under a minute.
test-fast: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q -m "not slow and not multiprocess and not server"

# ruff, configured in pyproject.toml: pyflakes, pycodestyle, import order, bugbear, pyupgrade.
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check hf_mup tests recipes benchmarks

clean:
	rm -rf $(VENV) demo_out build dist

# `make demo` and `make test` work on a fresh machine: each builds .venv, torch pinned by constraints.txt.
PYTHON ?= python3
VENV := .venv
PIP := $(VENV)/bin/pip
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: demo test install clean

$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[test]'
	# microsoft/mup, the test oracle: --no-deps, or it drags torchvision (which replaces torch)
	$(PIP) install -q --no-deps mup==1.0.0
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/python -m hf_mup.demo --out demo_out

test: install
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) demo_out

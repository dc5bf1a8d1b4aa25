# nscl — two commands do all set-up on a fresh clone:
#   make run    the main job: the notebook suite on Fashion-MNIST, on CPU (GPU when present)
#   make test   the test suite (what .ci/run calls)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FMNIST_DIR := /usr/share/datasets/fashion-mnist
STAMP := $(VENV)/.nscl-installed

.PHONY: venv data test run lab clean

venv: $(STAMP)

# torch first, pinned to the wheels on this machine's disk; then the package with its dev extras
# (pyproject.toml is the one dependency list; environment.yml installs the same thing for conda).
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

# Real Fashion-MNIST: a user's $$NSCL_DATA_ROOT first, else the Debian package (installed when root).
data:
	@if [ -n "$$NSCL_DATA_ROOT" ] || ls $(FMNIST_DIR)/train-images-idx3-ubyte* >/dev/null 2>&1; then \
	  true; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else \
	  echo "Fashion-MNIST not found in $(FMNIST_DIR). Run 'sudo apt-get install dataset-fashion-mnist'," \
	       "or set NSCL_DATA_ROOT to a folder with the IDX files (or with internet: -p download=true)."; exit 1; \
	fi

test: venv data
	$(PY) -m pytest -q

run: venv data
	$(PY) -m nscl run -f params/base.yaml -p method=finetune -o results/default/finetune
	$(PY) -m nscl run -f params/base.yaml -p method=adam_nscl -o results/default/adam_nscl
	$(PY) -m nscl show results/default

lab: venv
	$(PY) -m ipykernel install --user --name nscl --display-name "Python (nscl)" >/dev/null
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf results .pytest_cache

# nscl — two commands do all set-up on a fresh clone:
#   make run    the main job: the notebook suite on Fashion-MNIST, on CPU (GPU when present)
#   make test   the test suite (what .ci/run calls)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FMNIST_DIR := /usr/share/datasets/fashion-mnist
STAMP := $(VENV)/.nscl-installed

.PHONY: venv data slurm test run notebooks compare lab clean gpu-check

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

# A real single-node SLURM for tests/test_sweep_slurm.py (installed + started when root; idempotent).
slurm:
	@if [ "$$(id -u)" = 0 ]; then bash .ci/slurm.sh start; \
	elif ! bash .ci/slurm.sh status >/dev/null 2>&1; then \
	  echo "WARNING: no SLURM running and not root: tests/test_sweep_slurm.py will FAIL." \
	       "Start one with 'sudo .ci/slurm.sh start'."; fi

# Unit tests (tests/, incl. every notebook through papermill on params/ci.yaml), then nbval: the
# committed notebooks' stored outputs must reproduce (their runs go to a fresh temporary folder).
test: venv data slurm
	$(PY) -m pytest -q
	NSCL_OUTPUT_ROOT=$$(mktemp -d) $(PY) -m pytest -q --nbval --nbval-current-env notebooks/

# The notebook suite on real Split Fashion-MNIST (params/suite.yaml; GPU when present): executed
# notebooks, results.json, figures and summary.md in results/$(NAME)/. E.g. make run NAME=try2 ARGS="-p seed=1"
NAME ?= default
run: venv data
	$(PY) -m nscl suite -f params/base.yaml -f params/suite.yaml -o results/$(NAME) $(ARGS)

# Re-execute the committed notebooks in place with their own (tiny CPU) defaults: the outputs nbval checks.
notebooks: venv data
	$(PY) -m nscl suite --regenerate

# All methods x {split,permuted} Fashion-MNIST x 3 seeds on CPU (local executor), then the comparison notebook.
compare: venv data
	-$(PY) -m nscl sweep run params/sweeps/compare_fmnist.yaml
	$(PY) -m nscl sweep collect results/sweeps/compare_fmnist
	$(VENV)/bin/papermill -k python3 notebooks/05_compare_methods.ipynb results/sweeps/compare_fmnist/05_compare_methods.ipynb \
	  -p sweep_dir $(CURDIR)/results/sweeps/compare_fmnist -p output_dir $(CURDIR)/results/sweeps/compare_fmnist/notebook

# The one prepared GPU check (<= 8 min on one H100/H200): pytest -m gpu, the projection and e2e benchmarks
# on CUDA, notebook 00 with device=cuda; JSON in results/gpu_check/. Without a GPU it says so and fails.
gpu-check: venv
	PY=$(PY) bash scripts/gpu_check.sh

lab: venv
	$(PY) -m ipykernel install --user --name nscl --display-name "Python (nscl)" >/dev/null
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf results .pytest_cache

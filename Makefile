# nscl — two commands do all set-up on a fresh clone:
#   make run    the main job: the notebook suite on Fashion-MNIST, on CPU (GPU when present)
#   make test   the test suite (what .ci/run calls)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FMNIST_DIR := /usr/share/datasets/fashion-mnist
STAMP := $(VENV)/.nscl-installed
KERNEL := $(VENV)/share/jupyter/kernels/nscl/kernel.json

.PHONY: venv data slurm browser packages avalanche test flaky slurm-timelimit-check run notebooks compare capacity capacity-page results lab clean gpu-check wheelhouse

venv: $(STAMP) $(KERNEL)

# torch pinned to the wheels on this machine's disk, and the package with its dev extras, in one pip call
# (one resolution; pyproject.toml is the one dependency list; environment.yml installs the same for conda).
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1 -e '.[dev]'
	@touch $@

# The notebooks' kernel "Python (nscl)", installed into this clone's own .venv (not the user's
# ~/.local), so that every clone has its own and papermill / JupyterLab from .venv find it.
$(KERNEL): $(STAMP)
	$(PY) -m ipykernel install --sys-prefix --name nscl --display-name "Python (nscl)" >/dev/null

# Real Fashion-MNIST: a user's $$NSCL_DATA_ROOT first, else the Debian package (installed when root).
data:
	@bash .ci/packages.sh data

# Every Debian package the tests use (Fashion-MNIST, SLURM, Chromium), missing ones in one apt-get install
packages:
	@bash .ci/packages.sh data slurm browser

# A real single-node SLURM for tests/test_sweep_slurm.py (installed + started when root; idempotent).
slurm:
	@if [ "$$(id -u)" = 0 ]; then bash .ci/slurm.sh start; \
	elif ! bash .ci/slurm.sh status >/dev/null 2>&1; then \
	  echo "WARNING: no SLURM running and not root: tests/test_sweep_slurm.py will FAIL." \
	       "Start one with 'sudo .ci/slurm.sh start'."; fi

# Debian's Chromium for tests/test_lab_browser.py (installed when root; nothing downloads a browser).
browser:
	@bash .ci/packages.sh browser

# scripts/test.sh, set-up included: the venv and, at once, the missing Debian packages; ruff; then the
# committed notebooks' stored outputs (nbval; exact, except the numbers of `training-numbers` cells, held
# within notebooks/output_tolerance.yaml) on two numeric paths at once, this machine's kernels and ATen's
# portable ones on one thread (another machine's floating-point sums), beside every test on every core
# (SLURM started in the background); then the notebook tests on the first nbval run's records. Each
# notebook executes once per path. Phase timings: results/make-test/timings.txt.
test:
	PY=$(PY) MAKE="$(MAKE)" bash scripts/test.sh

# The tests that could depend on timing (marker timing: SLURM, a browser, subprocesses, sweeps, signals, locks)
# FLAKY_N times while nbval loads the cores; each test's pass count in results/flaky/counts.txt.
FLAKY_N ?= 10
flaky: venv packages slurm avalanche
	PY=$(PY) FLAKY_N=$(FLAKY_N) bash scripts/flaky.sh

# Avalanche's import path for nscl.apps.avalanche (tests/test_avalanche.py): 25 pinned packages, --no-deps
avalanche: venv
	$(PY) -m pip install -q --no-deps -r requirements/avalanche-min.txt

# SLURM's own time-limit clock stopping a run (about 2 min; make test sends SLURM's warning itself)
slurm-timelimit-check: venv slurm
	$(PY) -m pytest -p no:cacheprovider -m slurm_timelimit tests/test_sweep_slurm.py

# The notebook suite on real Split Fashion-MNIST (params/suite.yaml; GPU when present): executed
# notebooks, results.json, figures and summary.md in results/$(NAME)/. E.g. make run NAME=try2 ARGS="-p seed=1"
# Independent notebooks run side by side, one per core (JOBS, one torch thread each; JOBS=1: one after
# another with progress bars).
NAME ?= default
JOBS ?= $(shell nproc 2>/dev/null || echo 1)
run: venv data
	$(PY) -m nscl suite -f params/base.yaml -f params/suite.yaml -o results/$(NAME) -j $(JOBS) $(ARGS)

# Re-execute the committed notebooks in place with their own (tiny CPU) defaults: the outputs nbval checks.
notebooks: venv data
	$(PY) -m nscl suite --regenerate

# All methods x {split,permuted} Fashion-MNIST x 3 seeds at the size of make run (CPU, local executor),
# then the comparison notebook on it. The same runs are the suite-size half of make results.
compare: venv data
	-$(PY) -m nscl sweep run params/sweeps/compare_fmnist.yaml
	$(PY) -m nscl sweep collect results/sweeps/compare_fmnist
	$(VENV)/bin/papermill -k python3 notebooks/05_compare_methods.ipynb results/sweeps/compare_fmnist/05_compare_methods.ipynb \
	  -p sweep_dir $(CURDIR)/results/sweeps/compare_fmnist -p output_dir $(CURDIR)/results/sweeps/compare_fmnist/notebook

# The capacity study (issue 17): first the validation sweeps (seeds 100, 101: each null-space method's
# threshold is chosen there), then E1 permuted 30 tasks MLP 64-64, E3 partition 20 tasks, E2 the width curve
# and E1's joint reference on seeds 0, 1, 2, JOBS runs at once on 1 thread each (complete runs are skipped,
# so it resumes); then the capacity section of docs/results.md (the rest of the page is left as it is) and
# notebook 06 on E1's sweep. About 70 min on 2 cores (validation 5 + 13 min, E3 17, E1 12, E2 7, joint 12).
# Then the fronts of issue 24 (one knob per method on E3 and E1, their validation seeds 100, 101, and the small
# CNN on the partition stream; 241 runs): about 2.75 h more on 2 cores (estimated: E3 52 + 34 min, E1 31 + 20,
# CNN 28), and the fronts section after the capacity section.
capacity: venv data
	-$(PY) -m nscl sweep run params/sweeps/capacity_e3_validation.yaml -j $(JOBS)
	-$(PY) -m nscl sweep run params/sweeps/capacity_e1_validation.yaml -j $(JOBS)
	-$(PY) -m nscl sweep run params/sweeps/capacity_e3.yaml -j $(JOBS)
	-$(PY) -m nscl sweep run params/sweeps/capacity_e1.yaml -j $(JOBS)
	-$(PY) -m nscl sweep run params/sweeps/capacity_e2.yaml -j $(JOBS)
	-$(PY) -m nscl sweep run params/sweeps/capacity_e1_joint.yaml -j $(JOBS)
	-$(PY) -m nscl sweep run params/sweeps/fronts_e3_validation.yaml -j $(JOBS)
	-$(PY) -m nscl sweep run params/sweeps/fronts_e1_validation.yaml -j $(JOBS)
	-$(PY) -m nscl sweep run params/sweeps/fronts_e3.yaml -j $(JOBS)
	-$(PY) -m nscl sweep run params/sweeps/fronts_e1.yaml -j $(JOBS)
	-$(PY) -m nscl sweep run params/sweeps/fronts_cnn.yaml -j $(JOBS)
	$(MAKE) capacity-page
	$(VENV)/bin/papermill -k python3 notebooks/06_capacity.ipynb results/sweeps/capacity_e1/06_capacity.ipynb \
	  -p sweep_dir $(CURDIR)/results/sweeps/capacity_e1 -p output_dir $(CURDIR)/results/sweeps/capacity_e1/notebook

# Only the capacity section of docs/results.md, from the capacity sweeps present (a sub-make: they exist now)
capacity-page: venv
	$(PY) -m nscl results -o docs/results.md $(CAPACITY_PAGE) $(FRONTS_PAGE)

# The one prepared GPU check (<= 8 min on one H100/H200): pytest -m gpu, the projection and e2e benchmarks
# on CUDA, notebook 00 with device=cuda; JSON in results/gpu_check/. Without a GPU it says so and fails.
# On a node without internet (docs/gpu.md): make gpu-check PY=python3 uses that Python and the wheelhouse,
# never the venv or an index.
gpu-check: $(if $(filter command line,$(origin PY)),,venv)
	PY=$(PY) bash scripts/gpu_check.sh

# wheelhouse/: the wheels a GPU node lacks for gpu-check (scripts/gpu_wheelhouse.txt, Python 3.12, manylinux
# x86-64), fetched here where pip reaches the index; WITH_FMNIST=1 also packs Fashion-MNIST (+30 MB).
wheelhouse:
	$(PYTHON) scripts/wheelhouse.py download $(if $(WITH_FMNIST),--fmnist $(FMNIST_DIR))


# The results page docs/results.md (+ its figure): every method x {split,permuted} Fashion-MNIST x
# {suite size, full size}, plus the small CNN on split, x seeds 0,1,2 on CPU (local executor, 2 runs at
# once, 1 thread each; complete runs are skipped, so it resumes). Not run by CI: about 1.5 h on 2
# cores. Commit the page it writes. With the capacity sweeps present (make capacity), their section too:
CAPACITY_PAGE = $(foreach s,e1 e1_joint e3 e2,$(if $(wildcard results/sweeps/capacity_$(s)/sweep.json),--capacity $(firstword $(subst _, ,$(s)))=results/sweeps/capacity_$(s))) \
  $(foreach s,e1 e3,$(if $(wildcard results/sweeps/capacity_$(s)_validation/sweep.json),--validation $(s)=results/sweeps/capacity_$(s)_validation))
# the fronts section (issue 24), after the capacity section: E1, E3 (knob values chosen on their validation sweeps)
# and the small CNN on the partition stream
FRONTS_PAGE = $(foreach s,e1 e3 cnn,$(if $(wildcard results/sweeps/fronts_$(s)/sweep.json),--fronts $(s)=results/sweeps/fronts_$(s))) \
  $(foreach s,e1 e3,$(if $(wildcard results/sweeps/fronts_$(s)_validation/sweep.json),--fronts-validation $(s)=results/sweeps/fronts_$(s)_validation))
results: venv data
	-$(PY) -m nscl sweep run params/sweeps/compare_fmnist.yaml
	-$(PY) -m nscl sweep run params/sweeps/compare_fmnist_full.yaml
	-$(PY) -m nscl sweep run params/sweeps/compare_fmnist_cnn.yaml
	$(PY) -m nscl results suite=results/sweeps/compare_fmnist full=results/sweeps/compare_fmnist_full \
	  cnn=results/sweeps/compare_fmnist_cnn -o docs/results.md $(CAPACITY_PAGE)

# JupyterLab on the project folder (notebooks/ and results/) with this clone's kernel. --allow-root only
# as root; any further flags in LAB_ARGS, e.g. make lab LAB_ARGS="--port 8899 --ip 0.0.0.0 --no-browser"
LAB_ARGS ?=
lab: venv
	JUPYTER_PREFER_ENV_PATH=1 $(PY) -m nscl.apps.notebook.lab --ServerApp.root_dir="$(CURDIR)" \
	  $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

clean:
	rm -rf results .pytest_cache

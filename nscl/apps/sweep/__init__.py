"""Sweeps: a grid of runs from one YAML file, dispatched to SLURM (one job array), a local process
pool or the current process; resumable and idempotent.

    python -m nscl sweep run params/sweeps/compare_fmnist.yaml [--executor local|fork|slurm|debug]
    python -m nscl sweep status results/sweeps/compare_fmnist
    python -m nscl sweep collect results/sweeps/compare_fmnist     # -> collected.csv (+ .parquet)

A sweep file (see ``params/sweeps/*.yaml``)::

    name: compare_fmnist
    run: cli                        # or a notebook: notebooks/01_adam_nscl.ipynb (run by papermill)
    files: [params/base.yaml]       # base parameter files, layered left to right
    params: {epochs: 2}             # fixed overrides for every run
    grid:                           # cartesian product (a list of such mappings = union of grids)
      benchmark: [split_fmnist, permuted_fmnist]
      method: [finetune, adam_nscl]
      seed: [0, 1, 2]
    overrides:                      # conditional settings, applied after the grid
      - {when: {method: ewc}, set: {ewc_lambda: 1000.0}}
    out: results/sweeps/compare_fmnist
    cell_timeout_s: 3600            # papermill per-cell timeout
    executor:
      kind: local                   # default executor (the command line may override it); slurm, local,
                                    # fork (a pool forked from this process: notebooks), debug (in-process)
      parallel: 2                   # local / fork: runs at once
      slurm: {partition: gpu, account: null, gpus_per_node: 1, cpus_per_task: 8, mem_gb: 32,
              timeout_min: 120, array_parallelism: 16}

Expansion gives explicit run specs with stable names ``<benchmark>/<method>/[<hp>_]s<seed>-<hash>``
(the hash covers every parameter of the resolved configuration that differs from its default, so
one configuration written two ways -- ``1e-3`` / ``0.001``, a default given or left out -- is one run), so resubmitting the
same sweep maps every run to the same directory ``<out>/runs/<name>``. Every spec is validated with
:mod:`nscl.experiment.config` before anything is submitted (a bad key or type fails fast, naming the run and
the key). Values that are valid but fail at run time (e.g. an ``lr`` that makes the loss NaN) fail
*that* run only: its error goes to ``error.txt`` in its directory and is reported with its name.

Idempotence: :func:`run_one` skips a run whose complete ``results.json`` has the same parameters;
a run killed part-way resumes from its per-task checkpoint (the trainer does this in the same
directory). ``sweep run`` submits only runs that are neither complete nor failed (``--retry-failed``
re-runs failed ones), so resubmitting a finished sweep runs nothing.

Notebook runs: papermill injects the full resolved parameters plus ``output_dir`` (the run
directory); the notebook must leave the run's ``results.json`` in ``output_dir``. The output
notebook is written next to it.
"""

from .cli import add_cli  # noqa: F401
from .executors import run  # noqa: F401
from .spec import SweepError, expand, load, run_name  # noqa: F401
from .state import collect, format_status, is_complete, manifest, run_one, run_state, status  # noqa: F401

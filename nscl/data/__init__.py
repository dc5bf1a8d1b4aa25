"""Datasets, continual-learning scenarios and task streams.

* :mod:`.streams`  -- :class:`TaskData`, :class:`Stream` and :func:`make_stream`, which cuts a
  dataset into a deterministic sequence of tasks (``split``, ``permuted`` or ``partition``);
* :mod:`.registry` -- one spec per dataset (names, folders, files, how to get it, loader), the
  benchmark table and the one find-or-fail search; :mod:`.paths` says where it looks;
* one module per format: :mod:`.fmnist` (IDX), :mod:`.digits` (bundled with scikit-learn),
  :mod:`.cifar` (python pickles: only read files you trust), :mod:`.tinyimagenet` (JPEG tree),
  :mod:`.synthetic` (Gaussian class prototypes).

Where data are looked for: ``data_root`` if given, else ``$NSCL_DATA_ROOT``; a root given either
way that lacks the files is an error naming what is missing. Only when neither is set are the
system folders (:data:`nscl.data.paths.SYSTEM_DATA_ROOTS`) and then the nscl cache folder
searched. Nothing is downloaded unless ``download=True``. Missing or unreadable files raise a
:class:`DataError` (:class:`DataNotFoundError`, :class:`CorruptDataError`) whose message is one
line naming the file and the fix.

Importing this package does not import torch: the stream classes are loaded on first use.
"""

from __future__ import annotations

from ..core.params import Param
from .errors import CorruptDataError, DataError, DataNotFoundError
from .paths import SYSTEM_DATA_ROOTS
from .registry import (
    BENCHMARKS,
    DATASET_CLASSES,
    DATASETS,
    DatasetSpec,
    benchmark_classes,
    distinct_halves,
    find_or_fail,
    load_dataset,
    max_tasks,
)

__all__ = [
    "BENCHMARKS",
    "DATASETS",
    "DATASET_CLASSES",
    "PARAMS",
    "SYSTEM_DATA_ROOTS",
    "CorruptDataError",
    "DataError",
    "DataNotFoundError",
    "DatasetSpec",
    "benchmark_classes",
    "distinct_halves",
    "max_tasks",
    "Stream",
    "Task",
    "TaskData",
    "find_or_fail",
    "load_dataset",
    "make_stream",
]

#: The run parameters this package reads (collected into the run schema by the config layer).
PARAMS: tuple[Param, ...] = (
    Param("benchmark", "split_fmnist", "str", "task stream, see nscl.data.BENCHMARKS"),
    Param(
        "data_root",
        None,
        "str",
        "directory with the dataset files; if set (or NSCL_DATA_ROOT), only it is searched, else the system paths",
    ),
    Param("download", False, "bool", "allow torchvision to download a missing dataset (needs internet)"),
    Param(
        "n_tasks",
        None,
        "int",
        "override the benchmark's number of tasks (split: at most its classes; evaluation after every task "
        "is O(T^2), so at most 200)",
        range="[1, 200]",
    ),
    Param(
        "samples_per_task", None, "int", "keep this many training+val samples per task (tiny runs)", range="[1, inf)"
    ),
    Param("test_samples_per_task", None, "int", "keep this many test samples per task", range="[1, inf)"),
    Param("val_fraction", 0.1, "float", "held-out fraction of each task's training data", range="[0, 1)"),
    Param(
        "class_order",
        "fixed",
        "str",
        "split class order: label order (paper) or seeded shuffle",
        choices=("fixed", "random"),
    ),
)

_STREAMS = ("Stream", "Task", "TaskData", "make_stream")


def __getattr__(name: str):
    """Load :mod:`.streams` (and torch) only when one of its names is first used."""
    if name in _STREAMS:
        from . import streams

        return getattr(streams, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_STREAMS})

"""The dataset and benchmark tables, and the one find-or-fail search.

A dataset is one :class:`DatasetSpec` in :data:`DATASETS` plus one module in this package that
reads its format (``loader`` names the function, ``"module:function"``; modules are imported on
first use, so this table costs no torch import). Adding a dataset = one module + one entry here;
a benchmark in :data:`BENCHMARKS` names its dataset.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CorruptDataError, DataNotFoundError
from .paths import Roots, cache_dir, search_roots


@dataclass(frozen=True)
class DatasetSpec:
    """How to find, get and load one dataset.

    ``files`` are the entries a folder must hold: ``"name[.gz]"`` accepts ``name.gz`` or
    ``name``, a trailing ``/`` asks for a folder. ``folders`` are where under each search root
    they may sit (``""`` is the root itself). A dataset without ``files`` is built in memory
    (bundled or generated) and its ``options`` are the keyword arguments of its loader.
    """

    name: str
    title: str
    loader: str
    aliases: tuple[str, ...] = ()
    folders: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    get: str = ""  # how to obtain the data: ends every not-found and corrupt-file message
    download: str | None = None  # "module:function(target folder)" for download=True
    options: Mapping[str, Any] = field(default_factory=dict)

    def missing(self, folder: Path) -> list[str]:
        """The entries of ``files`` that ``folder`` lacks (all of them if it does not exist)."""
        out = []
        for entry in self.files:
            if entry.endswith("/"):
                ok = (folder / entry[:-1]).is_dir()
            elif entry.endswith("]") and "[" in entry:
                stem, suffix = entry[:-1].split("[", 1)
                ok = (folder / (stem + suffix)).is_file() or (folder / stem).is_file()
            else:
                ok = (folder / entry).is_file()
            if not ok:
                out.append(entry)
        return out


#: Every dataset :func:`load_dataset` knows, by canonical name.
DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in (
        DatasetSpec(
            name="fashion_mnist",
            title="Fashion-MNIST",
            loader="fmnist:load",
            download="fmnist:download",
            aliases=("fashion-mnist", "fashionmnist", "fmnist"),
            folders=("", "fashion-mnist", "fashion_mnist", "FashionMNIST/raw"),
            files=(
                "train-images-idx3-ubyte[.gz]",
                "train-labels-idx1-ubyte[.gz]",
                "t10k-images-idx3-ubyte[.gz]",
                "t10k-labels-idx1-ubyte[.gz]",
            ),
            get="`apt-get install dataset-fashion-mnist` installs /usr/share/datasets/fashion-mnist, "
            "or pass download=True on a machine with internet access",
        ),
        DatasetSpec(name="digits", title="scikit-learn digits", loader="digits:load"),
        DatasetSpec(
            name="cifar100",
            title="CIFAR-100",
            loader="cifar:load",
            download="cifar:download",
            aliases=("cifar-100", "cifar_100"),
            folders=("cifar-100-python", ""),
            files=("train", "test"),
            get="download https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz and extract it so that "
            "<root>/cifar-100-python/{train,test,meta} exists, or pass download=True on a machine with "
            "internet access (torchvision)",
        ),
        DatasetSpec(
            name="tinyimagenet",
            title="Tiny ImageNet",
            loader="tinyimagenet:load",
            aliases=("tiny-imagenet", "tiny_imagenet", "tiny-imagenet-200"),
            folders=("tiny-imagenet-200", ""),
            files=("wnids.txt", "train/"),
            get="download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it so that "
            "<root>/tiny-imagenet-200/{wnids.txt,train/,val/} exists (there is no automatic download)",
        ),
        DatasetSpec(
            name="synthetic",
            title="synthetic",
            loader="synthetic:load",
            options={
                "n_classes": 10,
                "shape": (1, 28, 28),
                "noise_std": 1.0,
                "train_per_class": 500,
                "test_per_class": 100,
                "data_seed": None,
            },
        ),  # data_seed None: the stream seed
    )
}

_ALIASES = {alias: s.name for s in DATASETS.values() for alias in s.aliases}

#: Benchmarks accepted by :func:`nscl.data.make_stream`: name -> recipe.
#: ``dataset``/``scenario``/``n_tasks``/``augment`` are always present; ``dataset_kwargs``
#: (generated datasets only) are passed to :func:`load_dataset` and can be overridden through
#: ``make_stream(**overrides)``.
BENCHMARKS: dict[str, dict] = {
    "split_fmnist": {"dataset": "fashion_mnist", "scenario": "split", "n_tasks": 5, "augment": False},
    "permuted_fmnist": {"dataset": "fashion_mnist", "scenario": "permuted", "n_tasks": 10, "augment": False},
    # the same images every task, labelled by a seeded random 5-vs-5 split of the classes (binary)
    "partition_fmnist": {"dataset": "fashion_mnist", "scenario": "partition", "n_tasks": 20, "augment": False},
    "split_cifar100_10": {"dataset": "cifar100", "scenario": "split", "n_tasks": 10, "augment": True},
    "split_cifar100_20": {"dataset": "cifar100", "scenario": "split", "n_tasks": 20, "augment": True},
    "tinyimagenet_25": {"dataset": "tinyimagenet", "scenario": "split", "n_tasks": 25, "augment": True},
    "split_digits": {"dataset": "digits", "scenario": "split", "n_tasks": 5, "augment": False},
    "synthetic": {
        "dataset": "synthetic",
        "scenario": "split",
        "n_tasks": 5,
        "augment": False,
        "dataset_kwargs": {k: v for k, v in DATASETS["synthetic"].options.items() if k != "data_seed"},
    },
}


def spec(name: str) -> DatasetSpec:
    """The spec of a dataset by canonical name or alias (case-insensitive)."""
    key = _ALIASES.get(name.lower(), name.lower()) if isinstance(name, str) else name
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return DATASETS[key]


def _function(ref: str) -> Callable:
    module, func = ref.split(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), func)


def _search(ds: DatasetSpec, roots: Roots) -> tuple[Path | None, list[Path]]:
    looked: list[Path] = []
    for root in roots.paths:
        for sub in ds.folders:
            d = root / sub if sub else root
            looked.append(d)
            if d.is_dir() and not ds.missing(d):
                return d, looked
    return None, looked


def _not_found(ds: DatasetSpec, roots: Roots, looked: list[Path]) -> str:
    """One line: what was looked for, where, what each near miss lacks, and the fix."""
    if roots.origin == "data_root":
        where = f"data_root={roots.paths[0]}"
    elif roots.origin:
        where = f"{roots.origin}={os.pathsep.join(map(str, roots.paths))}"
    else:
        where = "the default folders (neither data_root nor NSCL_DATA_ROOT is set)"
    notes = [f"{r} does not exist" for r in roots.paths if roots.explicit and not r.exists()]
    for d in looked:
        lacks = ds.missing(d) if d.is_dir() else []
        if 0 < len(lacks) < len(ds.files):
            notes.append(f"{d} lacks {', '.join(lacks)}")
    if roots.explicit:
        fix = (
            f"put the files in one of those folders, point {roots.origin} at a folder that has them, "
            f"or unset {roots.origin} to search the system folders; "
        )
    else:
        fix = "pass data_root=<folder with the files> or set NSCL_DATA_ROOT; "
    return (
        f"{ds.title} not found in {where}: looked for {', '.join(ds.files)} in "
        f"{', '.join(map(str, looked))}" + "".join(f"; {n}" for n in notes) + f". Fix: {fix}{ds.get}."
    )


def find_or_fail(ds: DatasetSpec | str, data_root: str | os.PathLike | None = None, download: bool = False) -> Path:
    """The folder that holds dataset ``ds``, searched as :mod:`nscl.data.paths` describes.

    With ``download=True`` a missing dataset is fetched into the explicit root (else the cache
    folder) when the dataset can be downloaded. Raises :class:`DataNotFoundError` otherwise.
    """
    ds = spec(ds) if isinstance(ds, str) else ds
    roots = search_roots(data_root)
    found, looked = _search(ds, roots)
    if found is None and download and ds.download:
        target = roots.paths[0] if roots.explicit else cache_dir()
        try:
            _function(ds.download)(target)
        except Exception as e:  # network errors, checksum errors, ...
            raise DataNotFoundError(
                f"{ds.title}: download into {target} failed ({type(e).__name__}: {e}). "
                + _not_found(ds, roots, looked),
                looked,
            ) from e
        found, more = _search(ds, Roots((target,), roots.origin))
        looked += more
    if found is None:
        raise DataNotFoundError(_not_found(ds, roots, looked), looked)
    return found


def load_dataset(name: str, data_root: str | None = None, download: bool = False, **kwargs) -> dict:
    """Load a whole dataset into memory.

    Returns ``{"train": (x, y), "test": (x, y), "mean": tuple, "std": tuple, "n_classes": int,
    "source": str, "class_names": list | None}`` with ``x`` uint8 ``(N, C, H, W)`` (float32
    for ``synthetic``) and ``y`` int64.  Results are memoised in-process: do not modify the
    returned tensors in place.  ``kwargs`` are only accepted by generated datasets (``synthetic``:
    its spec's ``options`` and ``seed``).  Raises :class:`DataNotFoundError` when files are
    missing and :class:`CorruptDataError` when one cannot be read.
    """
    ds = spec(name)
    if kwargs and not ds.options:
        raise TypeError(f"load_dataset({ds.name!r}) takes no extra arguments, got {sorted(kwargs)}")
    loader = _function(ds.loader)
    if not ds.files:
        return dict(loader(**{**ds.options, **kwargs}))
    folder = find_or_fail(ds, data_root, download)
    try:
        out = loader(folder.resolve())
    except CorruptDataError as e:
        raise CorruptDataError(e.path, e.reason, f"delete or replace it with an intact copy ({ds.get})") from e
    return dict(out)


#: classes of each dataset, known without reading it (a split stream has at most this many tasks)
DATASET_CLASSES = {"fashion_mnist": 10, "cifar100": 100, "tinyimagenet": 200, "digits": 10}


def benchmark_classes(benchmark: str) -> int:
    """Number of classes a benchmark's stream is cut from (checked before any data is read)."""
    b = BENCHMARKS[benchmark]
    if b["dataset"] == "synthetic":
        return int(b["dataset_kwargs"]["n_classes"])
    return DATASET_CLASSES[b["dataset"]]


def distinct_halves(n_classes: int) -> int:
    """How many different binary labellings a ``partition`` stream can draw: splits of the classes
    into halves, a split and its complement counted once (126 for 10 classes)."""
    return math.comb(n_classes, n_classes // 2) // (2 if n_classes % 2 == 0 else 1)


def max_tasks(benchmark: str) -> int | None:
    """Most tasks a benchmark's stream can have (checked before any data is read): one class per
    task (``split``), distinct halves (``partition``), unbounded (``permuted``: None)."""
    scenario = BENCHMARKS[benchmark]["scenario"]
    if scenario == "split":
        return benchmark_classes(benchmark)
    if scenario == "partition":
        return distinct_halves(benchmark_classes(benchmark))
    return None

"""Datasets, continual-learning scenarios and task streams.

This module turns an image classification dataset into a *stream* of tasks:

* ``split``    -- the classes are partitioned into tasks of equal size (task-incremental:
  labels are remapped to ``0..k-1`` inside every task, the caller uses one head per task);
* ``permuted`` -- every task uses all classes; task 1 is the plain data, task ``t > 1``
  applies a fixed random permutation of the ``C*H*W`` input values.

Data are kept in memory in their raw storage type (``uint8`` images, or ``float32`` for
the synthetic generator).  Normalisation, the pixel permutation and the training
augmentation are applied per batch in :meth:`TaskData.get`, so a permuted stream never
materialises permuted float copies (all its tasks share one ``uint8`` tensor).

Datasets (see :func:`load_dataset`): ``fashion_mnist`` (IDX files), ``digits`` (bundled
with scikit-learn), ``cifar100`` (the python pickles), ``tinyimagenet`` (the standard
``tiny-imagenet-200`` folder tree) and ``synthetic`` (Gaussian class prototypes).
Nothing is downloaded unless ``download=True`` is passed explicitly.

Where data are looked for, in order: ``data_root``, the roots in the environment variable
``NSCL_DATA_ROOT`` (``os.pathsep`` separated), :data:`SYSTEM_DATA_ROOTS`, then the nscl
cache folder (``$NSCL_CACHE_DIR``, else ``$XDG_CACHE_HOME/nscl``, else ``~/.cache/nscl``),
which is also where ``download=True`` puts data when no ``data_root`` is given.
"""

from __future__ import annotations

import copy
import functools
import gzip
import hashlib
import os
import pickle
import sys
import tempfile
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .core.params import Param

__all__ = [
    "BENCHMARKS",
    "DATASETS",
    "DataNotFoundError",
    "Stream",
    "SYSTEM_DATA_ROOTS",
    "Task",
    "TaskData",
    "load_dataset",
    "make_stream",
]

#: System-wide data roots searched after ``data_root`` and ``$NSCL_DATA_ROOT``
#: (the Debian package ``dataset-fashion-mnist`` installs ``/usr/share/datasets/fashion-mnist``).
#: A plain module-level list so tests can monkeypatch it.
SYSTEM_DATA_ROOTS: list[str] = ["/usr/share/datasets"]

#: Canonical dataset names accepted by :func:`load_dataset`.
DATASETS = ("fashion_mnist", "digits", "cifar100", "tinyimagenet", "synthetic")

_ALIASES = {
    "fashion-mnist": "fashion_mnist",
    "fashionmnist": "fashion_mnist",
    "fmnist": "fashion_mnist",
    "cifar-100": "cifar100",
    "cifar_100": "cifar100",
    "tiny-imagenet": "tinyimagenet",
    "tiny_imagenet": "tinyimagenet",
    "tiny-imagenet-200": "tinyimagenet",
}

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
_FMNIST_MEAN, _FMNIST_STD = (0.2860,), (0.3530,)
_CIFAR100_MEAN, _CIFAR100_STD = (0.507, 0.487, 0.441), (0.267, 0.256, 0.276)
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

_SYNTHETIC_DEFAULTS = {
    "n_classes": 10,
    "shape": (1, 28, 28),
    "noise_std": 1.0,
    "train_per_class": 500,
    "test_per_class": 100,
    "data_seed": None,  # None: use the stream seed
}

#: Benchmarks accepted by :func:`make_stream`: name -> defaults.
#: ``dataset``/``scenario``/``n_tasks``/``augment`` are always present; ``dataset_kwargs``
#: (synthetic only) are passed to :func:`load_dataset` and can be overridden through
#: ``make_stream(**overrides)``.
#: the data parameters (collected into the run schema by nscl.experiment.config)
PARAMS = (
    Param("benchmark", "split_fmnist", "str", "task stream, see nscl.data.BENCHMARKS"),
    Param("data_root", None, "str", "directory with the dataset files (else NSCL_DATA_ROOT, system paths)"),
    Param("download", False, "bool", "allow torchvision to download a missing dataset (needs internet)"),
    Param("n_tasks", None, "int", "override the benchmark's number of tasks (split: at most its classes)",
          range="[1, inf)"),
    Param("samples_per_task", None, "int", "keep this many training+val samples per task (tiny runs)",
          range="[1, inf)"),
    Param("test_samples_per_task", None, "int", "keep this many test samples per task", range="[1, inf)"),
    Param("val_fraction", 0.1, "float", "held-out fraction of each task's training data", range="[0, 1)"),
    Param("class_order", "fixed", "str", "split class order: label order (paper) or seeded shuffle",
          choices=("fixed", "random")),
)

BENCHMARKS: dict[str, dict] = {
    "split_fmnist": {"dataset": "fashion_mnist", "scenario": "split", "n_tasks": 5, "augment": False},
    "permuted_fmnist": {"dataset": "fashion_mnist", "scenario": "permuted", "n_tasks": 10, "augment": False},
    "split_cifar100_10": {"dataset": "cifar100", "scenario": "split", "n_tasks": 10, "augment": True},
    "split_cifar100_20": {"dataset": "cifar100", "scenario": "split", "n_tasks": 20, "augment": True},
    "tinyimagenet_25": {"dataset": "tinyimagenet", "scenario": "split", "n_tasks": 25, "augment": True},
    "split_digits": {"dataset": "digits", "scenario": "split", "n_tasks": 5, "augment": False},
    "synthetic": {
        "dataset": "synthetic",
        "scenario": "split",
        "n_tasks": 5,
        "augment": False,
        "dataset_kwargs": {k: v for k, v in _SYNTHETIC_DEFAULTS.items() if k != "data_seed"},
    },
}

_SCENARIOS = ("split", "permuted")

#: classes of each dataset, known without reading it (a split stream has at most this many tasks)
DATASET_CLASSES = {"fashion_mnist": 10, "cifar100": 100, "tinyimagenet": 200, "digits": 10}


def benchmark_classes(benchmark: str) -> int:
    """Number of classes a benchmark's stream is cut from (checked before any data is read)."""
    b = BENCHMARKS[benchmark]
    if b["dataset"] == "synthetic":
        return int(b["dataset_kwargs"]["n_classes"])
    return DATASET_CLASSES[b["dataset"]]


class DataNotFoundError(FileNotFoundError):
    """A dataset is not on disk; the message lists every path looked at and how to get it."""

    def __init__(self, message: str, searched: Sequence[str] = ()):
        super().__init__(message)
        self.searched = [str(p) for p in searched]

    def __str__(self) -> str:  # FileNotFoundError(msg) already prints msg; keep it explicit
        return str(self.args[0]) if self.args else ""


# ----------------------------------------------------------------------------------------
# In-memory task data
# ----------------------------------------------------------------------------------------


def _as_index(idx: Any) -> torch.Tensor | slice:
    """Normalise an index (tensor, array, list, int, slice) to a 1-D long tensor or a slice."""
    if isinstance(idx, slice):
        return idx
    if isinstance(idx, torch.Tensor):
        t = idx
    else:
        t = torch.as_tensor(np.asarray(idx))
    if t.dtype == torch.bool:
        t = t.nonzero().flatten()
    t = t.long()
    if t.dim() == 0:
        t = t.reshape(1)
    return t.flatten()


def _random_crop_flip(x: torch.Tensor, generator: torch.Generator | None, pad: int = 4) -> torch.Tensor:
    """Per-sample random crop (zero padding ``pad``) and horizontal flip of a float batch."""
    b, c, h, w = x.shape
    if b == 0:
        return x
    xp = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    rows = oy[:, None] + torch.arange(h)
    cols = ox[:, None] + torch.arange(w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    dev = x.device
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    return xp[bi, ci, rows.to(dev)[:, None, :, None], cols.to(dev)[:, None, None, :]]


@dataclass
class TaskData:
    """One split (train / val / test) of one task, held in memory.

    ``x`` is raw storage (``uint8`` images scaled by 1/255 on access, or ``float32``
    used as is), ``y`` are ``int64`` labels already remapped to ``0..n_classes-1``.
    ``perm`` (a permutation of ``C*H*W``) and ``augment`` (random crop with padding 4 and
    horizontal flip, only when ``get(..., train=True)``) are applied per batch.
    ``source_index`` (optional) are the row indices of the samples in the dataset split
    they came from (``load_dataset(...)["train"]`` for train/val, ``["test"]`` for test).
    """

    x: torch.Tensor
    y: torch.Tensor
    mean: tuple
    std: tuple
    perm: torch.Tensor | None = None
    augment: bool = False
    source_index: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.x.dim() != 4:
            raise ValueError(f"TaskData.x must be (N, C, H, W), got shape {tuple(self.x.shape)}")
        if len(self.x) != len(self.y):
            raise ValueError(f"TaskData: {len(self.x)} inputs but {len(self.y)} labels")
        if self.y.dtype != torch.int64:
            self.y = self.y.long()
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        c = self.x.shape[1]
        if len(self.mean) != c or len(self.std) != c:
            raise ValueError(f"TaskData: mean/std need {c} channel values, got {self.mean} / {self.std}")
        if self.perm is not None:
            self.perm = torch.as_tensor(self.perm, dtype=torch.long)
            if self.perm.numel() != self.x[0].numel():
                raise ValueError(f"TaskData: perm has {self.perm.numel()} entries, inputs have {self.x[0].numel()}")

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        perm = None if self.perm is None else f"<perm of {self.perm.numel()}>"
        return (f"TaskData(n={len(self)}, x={self.x.dtype}{tuple(self.x.shape)}, mean={self.mean}, "
                f"std={self.std}, perm={perm}, augment={self.augment})")

    @property
    def input_shape(self) -> tuple:
        """``(C, H, W)`` of one input."""
        return tuple(int(s) for s in self.x.shape[1:])

    def get(
        self,
        idx: torch.Tensor,
        generator: torch.Generator | None = None,
        train: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(x, y)`` for the rows ``idx``: float32 ``(B, C, H, W)`` and int64 ``(B,)``.

        Order of operations: scale (uint8 -> [0, 1]), augment (only if ``train`` and
        ``self.augment``; randomness from ``generator``), normalise per channel, permute.
        ``idx`` may be a long/bool tensor, an array, a list, an int or a slice.
        """
        i = _as_index(idx)
        xb = self.x[i]
        xb = xb.float() / 255.0 if xb.dtype == torch.uint8 else xb.to(torch.float32)
        if train and self.augment:
            xb = _random_crop_flip(xb, generator)
        c = xb.shape[1]
        mean = torch.tensor(self.mean, dtype=torch.float32, device=xb.device).view(1, c, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=xb.device).view(1, c, 1, 1)
        xb = (xb - mean) / std
        if self.perm is not None:
            shape = xb.shape
            xb = xb.reshape(shape[0], -1)[:, self.perm.to(xb.device)].reshape(shape)
        return xb, self.y[i]

    def subset(self, idx) -> "TaskData":
        """A new :class:`TaskData` with the rows ``idx`` (same normalisation / perm / augment)."""
        i = _as_index(idx)
        return TaskData(
            x=self.x[i],
            y=self.y[i],
            mean=self.mean,
            std=self.std,
            perm=self.perm,
            augment=self.augment,
            source_index=None if self.source_index is None else self.source_index[i],
        )


@dataclass
class Task:
    """One task of a stream; label ``j`` inside the task is original class ``classes[j]``."""

    index: int
    name: str
    classes: list[int]
    n_classes: int
    train: TaskData
    val: TaskData
    test: TaskData


@dataclass
class Stream:
    """A sequence of tasks plus a json-serialisable description (``info``)."""

    benchmark: str
    tasks: list[Task]
    input_shape: tuple
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, i) -> Task:
        return self.tasks[i]

    def __iter__(self):
        return iter(self.tasks)


# ----------------------------------------------------------------------------------------
# Paths
# ----------------------------------------------------------------------------------------


def _cache_dir() -> Path:
    """nscl cache folder: ``$NSCL_CACHE_DIR``, else ``$XDG_CACHE_HOME/nscl``, else ``~/.cache/nscl``."""
    env = os.environ.get("NSCL_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "nscl"
    return Path.home() / ".cache" / "nscl"


def _search_roots(data_root: str | os.PathLike | None) -> list[Path]:
    """Roots to search, in order: data_root, $NSCL_DATA_ROOT, SYSTEM_DATA_ROOTS, cache dir."""
    roots: list[Path] = []
    if data_root is not None:
        roots.append(Path(data_root).expanduser())
    env = os.environ.get("NSCL_DATA_ROOT")
    if env:
        roots.extend(Path(p).expanduser() for p in env.split(os.pathsep) if p)
    roots.extend(Path(p) for p in SYSTEM_DATA_ROOTS)
    roots.append(_cache_dir())
    out: list[Path] = []
    for r in roots:
        if r not in out:
            out.append(r)
    return out


def _file_stamp(paths: Sequence[Path]) -> tuple:
    """(path, mtime_ns, size) for each file: a cache key that changes when files change."""
    out = []
    for p in paths:
        st = p.stat()
        out.append((str(p), st.st_mtime_ns, st.st_size))
    return tuple(out)


def _progress(iterable, total: int, desc: str):
    """tqdm progress bar, disabled when stderr is not a tty or NSCL_QUIET is set."""
    quiet = bool(os.environ.get("NSCL_QUIET")) or not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return iterable
    return tqdm(iterable, total=total, desc=desc, disable=quiet)


# ----------------------------------------------------------------------------------------
# Fashion-MNIST (IDX files)
# ----------------------------------------------------------------------------------------

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_FMNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (gzip-compressed if its name ends in ``.gz`` or it starts with the gzip magic)."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read()
    if path.suffix == ".gz" or raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic {raw[:4].hex()})")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX data type 0x{code:02x}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    offset = 4 + 4 * ndim
    n = int(np.prod(dims)) if dims else 1
    if len(raw) - offset != n * dtype.itemsize:
        raise ValueError(f"{path}: header says {dims} ({n * dtype.itemsize} bytes) but {len(raw) - offset} bytes follow")
    arr = np.frombuffer(raw, dtype=dtype, count=n, offset=offset).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def _fmnist_file(d: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        p = d / name
        if p.is_file():
            return p
    return None


def _fmnist_candidates(root: Path) -> list[Path]:
    return [root, root / "fashion-mnist", root / "fashion_mnist", root / "FashionMNIST" / "raw"]


def _find_fmnist(data_root) -> tuple[Path | None, list[Path]]:
    looked: list[Path] = []
    for root in _search_roots(data_root):
        for d in _fmnist_candidates(root):
            looked.append(d)
            if all(_fmnist_file(d, s) is not None for s in _FMNIST_FILES.values()):
                return d, looked
    return None, looked


@functools.lru_cache(maxsize=4)
def _load_fmnist_dir(directory: str, stamp: tuple) -> dict:
    d = Path(directory)
    arrays = {k: read_idx(_fmnist_file(d, s)) for k, s in _FMNIST_FILES.items()}
    out = {}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"{d}: {split} images {x.shape} / labels {y.shape} are inconsistent")
        out[split] = (torch.from_numpy(x.astype(np.uint8)).unsqueeze(1), torch.from_numpy(y.astype(np.int64)))
    out.update(mean=_FMNIST_MEAN, std=_FMNIST_STD, n_classes=10, source=str(d), class_names=list(FASHION_MNIST_CLASSES))
    return out


def _load_fashion_mnist(data_root, download: bool) -> dict:
    d, looked = _find_fmnist(data_root)
    if d is None and download:
        target = Path(data_root).expanduser() if data_root is not None else _cache_dir()
        try:
            import torchvision

            torchvision.datasets.FashionMNIST(str(target), train=True, download=True)
            torchvision.datasets.FashionMNIST(str(target), train=False, download=True)
        except Exception as e:  # network errors, etc.
            raise DataNotFoundError(
                f"Fashion-MNIST: download into {target} failed ({type(e).__name__}: {e}).\n"
                + _fmnist_help(looked),
                looked,
            ) from e
        d, more = _find_fmnist(target)
        looked += more
    if d is None:
        raise DataNotFoundError(_fmnist_help(looked), looked)
    files = [_fmnist_file(d, s) for s in _FMNIST_FILES.values()]
    return _load_fmnist_dir(str(d.resolve()), _file_stamp(files))


def _fmnist_help(looked: Sequence[Path]) -> str:
    names = ", ".join(f"{s}[.gz]" for s in _FMNIST_FILES.values())
    return (
        "Fashion-MNIST IDX files not found. Looked for " + names + " in:\n"
        + "".join(f"  {p}\n" for p in looked)
        + "To get the data: `apt-get install dataset-fashion-mnist` (installs /usr/share/datasets/fashion-mnist), "
        "or pass data_root=<folder with the IDX files> (or set NSCL_DATA_ROOT), "
        "or pass download=True on a machine with internet access."
    )


# ----------------------------------------------------------------------------------------
# scikit-learn digits
# ----------------------------------------------------------------------------------------


def _balanced_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Positions ordered so that every prefix is as class-balanced as possible (random within class)."""
    n = len(labels)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    rank = np.empty(n, dtype=np.int64)
    for c in np.unique(labels):
        pos = np.flatnonzero(labels == c)
        rank[rng.permutation(pos)] = np.arange(len(pos))
    tie = rng.random(n)
    return np.lexsort((tie, rank)).astype(np.int64)


def _balanced_subset(labels: np.ndarray, k: int | None, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions of a class-balanced-as-possible subset of size ``min(k, n)`` (all if k is None)."""
    if k is None or k >= len(labels):
        return np.arange(len(labels), dtype=np.int64)
    return np.sort(_balanced_order(labels, rng)[:k])


def _stratified_split(labels: np.ndarray, frac: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split positions into (keep, held_out), stratified by class.

    ``round(frac * n)`` samples are held out in total, shared between classes in proportion
    to their sizes (largest remainder); every class keeps at least one sample on the
    ``keep`` side.  Both outputs are sorted.
    """
    n = len(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if n == 0 or frac <= 0:
        return np.arange(n, dtype=np.int64), np.zeros(0, dtype=np.int64)
    exact = frac * counts
    quota = np.floor(exact).astype(np.int64)
    extra = int(round(frac * n)) - int(quota.sum())
    if extra > 0:
        tie = rng.random(len(classes))
        order = np.lexsort((tie, -(exact - quota)))
        quota[order[:extra]] += 1
    quota = np.minimum(quota, np.maximum(counts - 1, 0))
    keep, held = [], []
    for c, q in zip(classes, quota):
        pos = rng.permutation(np.flatnonzero(labels == c))
        held.append(pos[:q])
        keep.append(pos[q:])
    return np.sort(np.concatenate(keep)).astype(np.int64), np.sort(np.concatenate(held)).astype(np.int64)


@functools.lru_cache(maxsize=1)
def _load_digits_cached() -> dict:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.clip(np.round(bunch.data.astype(np.float64) * 255.0 / 16.0), 0, 255).astype(np.uint8)
    x = x.reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    tr, te = _stratified_split(y, 0.2, np.random.default_rng(0))
    xf = x[tr].astype(np.float64) / 255.0
    return {
        "train": (torch.from_numpy(x[tr].copy()), torch.from_numpy(y[tr].copy())),
        "test": (torch.from_numpy(x[te].copy()), torch.from_numpy(y[te].copy())),
        "mean": (round(float(xf.mean()), 4),),
        "std": (round(float(xf.std()), 4),),
        "n_classes": 10,
        "source": "sklearn.datasets.load_digits (bundled with scikit-learn; stratified 80/20 split, seed 0)",
        "class_names": [str(i) for i in range(10)],
    }


# ----------------------------------------------------------------------------------------
# CIFAR-100 (python pickles)
# ----------------------------------------------------------------------------------------


def _cifar_candidates(root: Path) -> list[Path]:
    return [root / "cifar-100-python", root]


def _find_cifar100(data_root) -> tuple[Path | None, list[Path]]:
    looked: list[Path] = []
    for root in _search_roots(data_root):
        for d in _cifar_candidates(root):
            looked.append(d)
            if (d / "train").is_file() and (d / "test").is_file():
                return d, looked
    return None, looked


def _unpickle(path: Path) -> dict:
    """Load a CIFAR pickle (python-2 or python-3 written); keys are returned as ``str``."""
    with open(path, "rb") as f:
        obj = pickle.load(f, encoding="latin1")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _decode_names(names) -> list[str]:
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


@functools.lru_cache(maxsize=2)
def _load_cifar100_dir(directory: str, stamp: tuple) -> dict:
    d = Path(directory)
    out: dict = {}
    for split in ("train", "test"):
        entry = _unpickle(d / split)
        data = np.asarray(entry["data"], dtype=np.uint8)
        x = data.reshape(-1, 3, 32, 32)  # rows are R(1024) G(1024) B(1024), row-major 32x32
        y = np.asarray(entry["fine_labels"], dtype=np.int64)
        if len(x) != len(y):
            raise ValueError(f"{d / split}: {len(x)} images but {len(y)} labels")
        out[split] = (torch.from_numpy(x.copy()), torch.from_numpy(y))
    names = None
    if (d / "meta").is_file():
        names = _decode_names(_unpickle(d / "meta").get("fine_label_names", [])) or None
    out.update(mean=_CIFAR100_MEAN, std=_CIFAR100_STD, n_classes=100, source=str(d), class_names=names)
    return out


def _cifar_help(looked: Sequence[Path]) -> str:
    return (
        "CIFAR-100 not found. Looked for cifar-100-python/{train,test,meta} in:\n"
        + "".join(f"  {p}\n" for p in looked)
        + "To get the data: download https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz and extract it "
        "so that <data_root>/cifar-100-python exists, then pass data_root=<data_root> (or set NSCL_DATA_ROOT); "
        "or pass download=True on a machine with internet access (uses torchvision.datasets.CIFAR100)."
    )


def _load_cifar100(data_root, download: bool) -> dict:
    d, looked = _find_cifar100(data_root)
    if d is None and download:
        target = Path(data_root).expanduser() if data_root is not None else _cache_dir()
        try:
            import torchvision

            torchvision.datasets.CIFAR100(str(target), train=True, download=True)
        except Exception as e:
            raise DataNotFoundError(
                f"CIFAR-100: download into {target} failed ({type(e).__name__}: {e}).\n" + _cifar_help(looked), looked
            ) from e
        d, more = _find_cifar100(target)
        looked += more
    if d is None:
        raise DataNotFoundError(_cifar_help(looked), looked)
    files = [d / "train", d / "test"] + ([d / "meta"] if (d / "meta").is_file() else [])
    return _load_cifar100_dir(str(d.resolve()), _file_stamp(files))


# ----------------------------------------------------------------------------------------
# Tiny ImageNet (tiny-imagenet-200 folder tree)
# ----------------------------------------------------------------------------------------

_TINY_CACHE_NAME = "nscl_tinyimagenet_v1.npz"
_TINY_SIZE = 64


def _tiny_candidates(root: Path) -> list[Path]:
    return [root / "tiny-imagenet-200", root]


def _find_tiny(data_root) -> tuple[Path | None, list[Path]]:
    looked: list[Path] = []
    for root in _search_roots(data_root):
        for d in _tiny_candidates(root):
            looked.append(d)
            if (d / "wnids.txt").is_file() and (d / "train").is_dir():
                return d, looked
    return None, looked


def _tiny_help(looked: Sequence[Path]) -> str:
    return (
        "Tiny ImageNet not found. Looked for tiny-imagenet-200/{wnids.txt,train/,val/} in:\n"
        + "".join(f"  {p}\n" for p in looked)
        + "To get the data: download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it so that "
        "<data_root>/tiny-imagenet-200 exists, then pass data_root=<data_root> (or set NSCL_DATA_ROOT). "
        "(There is no automatic download for Tiny ImageNet.)"
    )


def _tiny_listing(d: Path) -> tuple[list[str], list[tuple[str, int]], list[tuple[str, int]]]:
    """(sorted wnids, [(train relpath, label)], [(val relpath, label)])."""
    wnids_file = [w.strip() for w in (d / "wnids.txt").read_text().split() if w.strip()]
    wnids = sorted(set(wnids_file))
    lab = {w: i for i, w in enumerate(wnids)}
    train = []
    for w in wnids:
        img_dir = d / "train" / w / "images"
        if not img_dir.is_dir():
            img_dir = d / "train" / w
        files = sorted(e.name for e in os.scandir(img_dir) if e.is_file() and not e.name.endswith(".txt"))
        rel = os.path.relpath(img_dir, d)
        train += [(os.path.join(rel, f), lab[w]) for f in files]
    val = []
    ann = d / "val" / "val_annotations.txt"
    if ann.is_file():
        for line in ann.read_text().splitlines():
            parts = line.strip().split("\t")
            if len(parts) < 2:
                continue
            fname, w = parts[0], parts[1]
            if w not in lab:
                raise ValueError(f"{ann}: unknown wnid {w!r} for {fname}")
            val.append((os.path.join("val", "images", fname), lab[w]))
        val.sort()
    return wnids, train, val


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (_TINY_SIZE, _TINY_SIZE):
            im = im.resize((_TINY_SIZE, _TINY_SIZE), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


def _decode_images(d: Path, rels: list[str], desc: str) -> np.ndarray:
    out = np.empty((len(rels), 3, _TINY_SIZE, _TINY_SIZE), dtype=np.uint8)
    if not rels:
        return out
    workers = min(16, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as ex:
        it = ex.map(lambda r: _read_rgb(d / r), rels, chunksize=64)
        for i, a in enumerate(_progress(it, total=len(rels), desc=desc)):
            out[i] = a
    return out


def _tiny_cache_paths(d: Path) -> list[Path]:
    key = hashlib.sha1(str(d).encode()).hexdigest()[:12]
    return [d / _TINY_CACHE_NAME, _cache_dir() / f"tinyimagenet-{key}.npz"]


def _atomic_save_npz(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


@functools.lru_cache(maxsize=1)
def _load_tiny_dir(directory: str) -> dict:
    d = Path(directory)
    wnids, train, val = _tiny_listing(d)
    fingerprint = hashlib.sha1(repr((wnids, train, val)).encode()).hexdigest()
    arrays = None
    source_cache: Path | None = None
    for cp in _tiny_cache_paths(d):
        if cp.is_file():
            try:
                with np.load(cp, allow_pickle=False) as z:
                    if str(z["fingerprint"]) == fingerprint:
                        arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
                        source_cache = cp
                        break
            except Exception as e:  # corrupt cache: rebuild
                warnings.warn(f"ignoring unreadable Tiny ImageNet cache {cp}: {e}")
    if arrays is None:
        arrays = {
            "x_train": _decode_images(d, [r for r, _ in train], "tinyimagenet train"),
            "y_train": np.asarray([l for _, l in train], dtype=np.int64),
            "x_test": _decode_images(d, [r for r, _ in val], "tinyimagenet val"),
            "y_test": np.asarray([l for _, l in val], dtype=np.int64),
        }
        source_cache = None
        for cp in _tiny_cache_paths(d):
            try:
                _atomic_save_npz(cp, fingerprint=np.asarray(fingerprint), **arrays)
                source_cache = cp
                break
            except OSError:
                continue
        if source_cache is None:
            warnings.warn(f"could not write a Tiny ImageNet cache in any of {_tiny_cache_paths(d)}")
    return {
        "train": (torch.from_numpy(arrays["x_train"]), torch.from_numpy(arrays["y_train"])),
        "test": (torch.from_numpy(arrays["x_test"]), torch.from_numpy(arrays["y_test"])),
        "mean": _IMAGENET_MEAN,
        "std": _IMAGENET_STD,
        "n_classes": len(wnids),
        "source": str(d),
        "class_names": wnids,
        "cache": None if source_cache is None else str(source_cache),
    }


def _load_tinyimagenet(data_root, download: bool) -> dict:
    d, looked = _find_tiny(data_root)
    if d is None:
        raise DataNotFoundError(_tiny_help(looked), looked)
    return _load_tiny_dir(str(d.resolve()))


# ----------------------------------------------------------------------------------------
# Synthetic data
# ----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _make_synthetic(n_classes: int, shape: tuple, noise_std: float, train_per_class: int, test_per_class: int,
                    seed: int) -> dict:
    g = torch.Generator().manual_seed(int(seed))
    protos = torch.randn((n_classes, *shape), generator=g)

    def draw(per_class: int):
        y = torch.arange(n_classes).repeat_interleave(per_class)
        x = protos[y] + noise_std * torch.randn((len(y), *shape), generator=g)
        return x.float(), y.long()

    c = shape[0]
    return {
        "train": draw(train_per_class),
        "test": draw(test_per_class),
        "mean": (0.0,) * c,
        "std": (1.0,) * c,
        "n_classes": n_classes,
        "source": (f"synthetic(n_classes={n_classes}, shape={tuple(shape)}, noise_std={noise_std}, "
                   f"train_per_class={train_per_class}, test_per_class={test_per_class}, seed={seed})"),
        "class_names": [f"class{i}" for i in range(n_classes)],
    }


def _load_synthetic(n_classes: int = 10, shape: Sequence[int] = (1, 28, 28), noise_std: float = 1.0,
                    train_per_class: int = 500, test_per_class: int = 100, data_seed: int | None = None,
                    seed: int = 0) -> dict:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"synthetic shape must be (C, H, W), got {shape}")
    s = seed if data_seed is None else data_seed
    return _make_synthetic(int(n_classes), shape, float(noise_std), int(train_per_class), int(test_per_class), int(s))


# ----------------------------------------------------------------------------------------
# Public loaders
# ----------------------------------------------------------------------------------------


def load_dataset(name: str, data_root: str | None = None, download: bool = False, **kwargs) -> dict:
    """Load a whole dataset into memory.

    Returns ``{"train": (x, y), "test": (x, y), "mean": tuple, "std": tuple, "n_classes": int,
    "source": str, "class_names": list | None}`` with ``x`` uint8 ``(N, C, H, W)`` (float32
    for ``synthetic``) and ``y`` int64.  Results are memoised in-process: do not modify the
    returned tensors in place.  ``kwargs`` are only accepted for ``synthetic``
    (``n_classes``, ``shape``, ``noise_std``, ``train_per_class``, ``test_per_class``,
    ``data_seed``/``seed``).  Raises :class:`DataNotFoundError` when files are missing.
    """
    key = _ALIASES.get(name.lower(), name.lower()) if isinstance(name, str) else name
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if kwargs and key != "synthetic":
        raise TypeError(f"load_dataset({key!r}) takes no extra arguments, got {sorted(kwargs)}")
    if key == "fashion_mnist":
        out = _load_fashion_mnist(data_root, download)
    elif key == "digits":
        out = _load_digits_cached()
    elif key == "cifar100":
        out = _load_cifar100(data_root, download)
    elif key == "tinyimagenet":
        out = _load_tinyimagenet(data_root, download)
    else:
        out = _load_synthetic(**kwargs)
    return dict(out)


def _rng(*entropy: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(e) for e in entropy]))


def _to_jsonable(v):
    if isinstance(v, dict):
        return {str(k): _to_jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_to_jsonable(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    return v


def make_stream(
    benchmark: str,
    *,
    data_root: str | None = None,
    seed: int = 0,
    n_tasks: int | None = None,
    samples_per_task: int | None = None,
    test_samples_per_task: int | None = None,
    val_fraction: float = 0.1,
    class_order: str | Sequence[int] = "fixed",
    download: bool = False,
    **overrides,
) -> Stream:
    """Build a deterministic task stream for a benchmark in :data:`BENCHMARKS`.

    * ``n_tasks`` overrides the benchmark's number of tasks (split: ``n_classes // n_tasks``
      classes per task; leftover classes are dropped and listed in ``info["unused_classes"]``).
    * ``samples_per_task`` / ``test_samples_per_task``: keep a seeded, class-balanced-as-possible
      subset of each task's training pool (train + val, before the val split) / test set.
      In the permuted scenario the same subset is used for every task (shared storage).
    * ``val_fraction``: stratified, seeded hold-out taken from each task's training pool
      (never from test); val and train never overlap.
    * ``class_order``: ``"fixed"`` (label order), ``"random"`` (shuffled by ``seed``) or an
      explicit sequence of class ids (split scenario).
    * ``overrides``: benchmark entries (``scenario``, ``augment``) and, for ``synthetic``,
      generator parameters (``n_classes``, ``shape``, ``noise_std``, ``train_per_class``,
      ``test_per_class``, ``data_seed``).
    """
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; valid names: {', '.join(BENCHMARKS)}")
    cfg = copy.deepcopy(BENCHMARKS[benchmark])
    ds_kwargs = dict(cfg.pop("dataset_kwargs", {}) or {})
    for k, v in overrides.items():
        if k in ("scenario", "augment"):
            cfg[k] = v
        elif cfg["dataset"] == "synthetic" and k in _SYNTHETIC_DEFAULTS:
            ds_kwargs[k] = v
        else:
            raise TypeError(f"make_stream({benchmark!r}) got an unexpected keyword argument {k!r}")
    scenario = cfg["scenario"]
    if scenario not in _SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; valid: {', '.join(_SCENARIOS)}")
    if not (0.0 <= val_fraction < 1.0):
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    for nm, v in (("samples_per_task", samples_per_task), ("test_samples_per_task", test_samples_per_task)):
        if v is not None and int(v) < 1:
            raise ValueError(f"{nm} must be >= 1 or None, got {v}")
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    T = int(cfg["n_tasks"] if n_tasks is None else n_tasks)
    if T < 1:
        raise ValueError(f"n_tasks must be >= 1, got {T}")

    if cfg["dataset"] == "synthetic":
        data = load_dataset("synthetic", **ds_kwargs, seed=seed)
    else:
        data = load_dataset(cfg["dataset"], data_root=data_root, download=download)
    x_tr, y_tr = data["train"]
    x_te, y_te = data["test"]
    n_classes = int(data["n_classes"])
    mean, std = tuple(data["mean"]), tuple(data["std"])
    input_shape = tuple(int(s) for s in x_tr.shape[1:])
    y_tr_np, y_te_np = y_tr.numpy(), y_te.numpy()
    augment = bool(cfg["augment"])

    def make_split(tr_pos: np.ndarray, te_pos: np.ndarray, y_map, perm, rng_tr, rng_val, rng_te):
        """Subset + val split, returning (train, val, test) TaskData."""
        pool = tr_pos[_balanced_subset(y_tr_np[tr_pos], samples_per_task, rng_tr)]
        keep, held = _stratified_split(y_tr_np[pool], val_fraction, rng_val)
        tests = te_pos[_balanced_subset(y_te_np[te_pos], test_samples_per_task, rng_te)]

        def td(x, y, pos, aug):
            p = torch.from_numpy(pos)
            return TaskData(x=x[p], y=y_map(y[p]), mean=mean, std=std, perm=perm, augment=aug, source_index=p)

        return td(x_tr, y_tr, pool[keep], augment), td(x_tr, y_tr, pool[held], False), td(x_te, y_te, tests, False)

    tasks: list[Task] = []
    info: dict[str, Any] = {
        "benchmark": benchmark,
        "dataset": cfg["dataset"],
        "scenario": scenario,
        "source": data["source"],
        "seed": seed,
        "n_tasks": T,
        "n_classes_total": n_classes,
        "input_shape": list(input_shape),
        "mean": list(mean),
        "std": list(std),
        "augment_train": augment,
        "val_fraction": float(val_fraction),
        "samples_per_task": samples_per_task,
        "test_samples_per_task": test_samples_per_task,
        "class_order_mode": class_order if isinstance(class_order, str) else "explicit",
        "dataset_size": {"train": int(len(y_tr)), "test": int(len(y_te))},
    }
    if cfg["dataset"] == "synthetic":
        info["dataset_kwargs"] = {**{k: v for k, v in _SYNTHETIC_DEFAULTS.items()}, **ds_kwargs}
    if data.get("class_names") is not None:
        info["class_names"] = list(data["class_names"])

    if scenario == "split":
        if isinstance(class_order, str):
            if class_order == "fixed":
                order = np.arange(n_classes)
            elif class_order == "random":
                order = np.random.default_rng(seed).permutation(n_classes)
            else:
                raise ValueError(f"class_order must be 'fixed', 'random' or a list of class ids, got {class_order!r}")
        else:
            order = np.asarray(list(class_order), dtype=np.int64)
            if len(set(order.tolist())) != len(order) or order.min() < 0 or order.max() >= n_classes:
                raise ValueError(f"explicit class_order must be distinct ids in 0..{n_classes - 1}")
        cpt = len(order) // T
        if cpt < 1:
            raise ValueError(f"cannot split {len(order)} classes into {T} tasks (fewer than 1 class per task)")
        used = order[: cpt * T]
        if len(used) < len(order):
            warnings.warn(f"{benchmark}: {len(order) - len(used)} classes do not fit in {T} tasks of {cpt} and are dropped")
        info["class_order"] = [int(c) for c in order]
        info["classes_per_task"] = cpt
        info["unused_classes"] = [int(c) for c in order[cpt * T:]]
        for t in range(T):
            classes = [int(c) for c in used[t * cpt:(t + 1) * cpt]]
            lut = torch.full((n_classes,), -1, dtype=torch.long)
            lut[torch.tensor(classes)] = torch.arange(cpt)
            tr_pos = np.flatnonzero(np.isin(y_tr_np, classes)).astype(np.int64)
            te_pos = np.flatnonzero(np.isin(y_te_np, classes)).astype(np.int64)
            train, val, test = make_split(
                tr_pos, te_pos, lambda y, lut=lut: lut[y], None,
                _rng(seed, 1, t), _rng(seed, 2, t), _rng(seed, 3, t),
            )
            name = f"task{t + 1}: classes " + ",".join(str(c) for c in classes)
            tasks.append(Task(index=t, name=name, classes=classes, n_classes=cpt, train=train, val=val, test=test))
    else:  # permuted
        train0, val0, test0 = make_split(
            np.arange(len(y_tr_np), dtype=np.int64), np.arange(len(y_te_np), dtype=np.int64),
            lambda y: y, None, _rng(seed, 1, 0), _rng(seed, 2, 0), _rng(seed, 3, 0),
        )
        dim = int(np.prod(input_shape))
        classes = list(range(n_classes))
        info["class_order"] = classes
        info["classes_per_task"] = n_classes
        info["permutation_seeds"] = [None] + [[seed, 7, t + 1] for t in range(1, T)]
        for t in range(T):
            perm = None if t == 0 else torch.from_numpy(_rng(seed, 7, t + 1).permutation(dim).astype(np.int64))

            def with_perm(d: TaskData, perm=perm) -> TaskData:
                # shares x / y / source_index storage with task 0
                return TaskData(x=d.x, y=d.y, mean=d.mean, std=d.std, perm=perm, augment=d.augment,
                                source_index=d.source_index)

            tasks.append(Task(index=t, name=f"perm{t}", classes=classes, n_classes=n_classes,
                              train=with_perm(train0), val=with_perm(val0), test=with_perm(test0)))

    info["tasks"] = [
        {"index": tk.index, "name": tk.name, "classes": tk.classes, "n_classes": tk.n_classes,
         "n_train": len(tk.train), "n_val": len(tk.val), "n_test": len(tk.test)}
        for tk in tasks
    ]
    return Stream(benchmark=benchmark, tasks=tasks, input_shape=input_shape, info=_to_jsonable(info))

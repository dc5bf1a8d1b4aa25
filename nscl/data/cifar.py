"""CIFAR-100 from its "python version" folder ``cifar-100-python/{train,test,meta}``.

Security: these batch files are Python pickles. That is how the dataset is distributed, so
reading them means unpickling, and unpickling a crafted file can run arbitrary code. Only point
``data_root`` (or ``NSCL_DATA_ROOT``) at CIFAR files you downloaded yourself from the official
source or otherwise trust.
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path

import numpy as np
import torch

from .errors import CorruptDataError
from .paths import file_stamp

MEAN, STD = (0.507, 0.487, 0.441), (0.267, 0.256, 0.276)


def _unpickle(path: Path) -> dict:
    """Load a CIFAR pickle (python-2 or python-3 written); keys are returned as ``str``.

    Unpickling executes what the file says: see the module docstring.
    """
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="latin1")
    except Exception as e:  # truncated (EOFError), damaged (UnpicklingError, ...), anything else
        raise CorruptDataError(path, f"unreadable CIFAR pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise CorruptDataError(path, f"not a CIFAR batch (a pickled {type(obj).__name__}, expected a dict)")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _decode_names(names) -> list[str]:
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def _files(folder: Path) -> list[Path]:
    return [folder / "train", folder / "test"] + ([folder / "meta"] if (folder / "meta").is_file() else [])


def load(folder: Path) -> dict:
    """Load ``train`` / ``test`` (and the class names from ``meta`` when present), memoised."""
    return _load_dir(str(folder), file_stamp(_files(folder)))


@functools.lru_cache(maxsize=2)
def _load_dir(directory: str, stamp: tuple) -> dict:
    d = Path(directory)
    out: dict = {}
    for split in ("train", "test"):
        entry = _unpickle(d / split)
        if "data" not in entry or "fine_labels" not in entry:
            raise CorruptDataError(d / split, "not a CIFAR-100 batch (no 'data' / 'fine_labels')")
        data = np.asarray(entry["data"], dtype=np.uint8)
        if data.size % (3 * 32 * 32):
            raise CorruptDataError(d / split, f"'data' has {data.size} values, not a multiple of 3*32*32")
        x = data.reshape(-1, 3, 32, 32)  # rows are R(1024) G(1024) B(1024), row-major 32x32
        y = np.asarray(entry["fine_labels"], dtype=np.int64)
        if len(x) != len(y):
            raise CorruptDataError(d / split, f"{len(x)} images but {len(y)} labels")
        out[split] = (torch.from_numpy(x.copy()), torch.from_numpy(y))
    names = None
    if (d / "meta").is_file():
        names = _decode_names(_unpickle(d / "meta").get("fine_label_names", [])) or None
    out.update(mean=MEAN, std=STD, n_classes=100, source=str(d), class_names=names)
    return out


def download(target: Path) -> None:
    """Fetch and extract ``target/cifar-100-python`` with torchvision (needs internet)."""
    import torchvision

    torchvision.datasets.CIFAR100(str(target), train=True, download=True)

"""Fashion-MNIST from its four IDX files (each optionally gzip-compressed)."""

from __future__ import annotations

import functools
import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from .errors import CorruptDataError
from .paths import file_stamp

CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
MEAN, STD = (0.2860,), (0.3530,)

#: split part -> file stem; each file may also carry a ``.gz`` suffix (preferred when both exist)
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (gzip-compressed if its name ends in ``.gz`` or it starts with the gzip
    magic). A truncated, damaged or non-IDX file raises :class:`CorruptDataError` naming it."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read()
    if path.suffix == ".gz" or raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:  # truncated stream, bad CRC, bad deflate data
            raise CorruptDataError(path, f"damaged or truncated gzip file ({type(e).__name__}: {e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise CorruptDataError(path, f"not an IDX file (bad magic {raw[:4].hex()})")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise CorruptDataError(path, f"unknown IDX data type 0x{code:02x}")
    if len(raw) < 4 + 4 * ndim:
        raise CorruptDataError(path, f"IDX header cut short ({len(raw)} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    offset = 4 + 4 * ndim
    n = math.prod(dims)  # Python ints: a damaged header cannot overflow (np.prod would wrap around)
    if len(raw) - offset != n * dtype.itemsize:
        raise CorruptDataError(
            path, f"header says {dims} ({n * dtype.itemsize} bytes) but {len(raw) - offset} bytes follow (truncated?)"
        )
    arr = np.frombuffer(raw, dtype=dtype, count=n, offset=offset).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def _file(d: Path, stem: str) -> Path:
    gz = d / (stem + ".gz")
    return gz if gz.is_file() else d / stem


def load(folder: Path) -> dict:
    """Load the folder that holds the four IDX files (memoised while the files are unchanged)."""
    files = [_file(folder, s) for s in FILES.values()]
    return _load_dir(str(folder), file_stamp(files))


@functools.lru_cache(maxsize=4)
def _load_dir(directory: str, stamp: tuple) -> dict:
    d = Path(directory)
    arrays = {k: read_idx(_file(d, s)) for k, s in FILES.items()}
    out = {}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise CorruptDataError(d, f"{split} images {x.shape} / labels {y.shape} are inconsistent")
        out[split] = (torch.from_numpy(x.astype(np.uint8)).unsqueeze(1), torch.from_numpy(y.astype(np.int64)))
    out.update(mean=MEAN, std=STD, n_classes=10, source=str(d), class_names=list(CLASSES))
    return out


def download(target: Path) -> None:
    """Fetch the IDX files into ``target/FashionMNIST/raw`` with torchvision (needs internet)."""
    import torchvision

    torchvision.datasets.FashionMNIST(str(target), train=True, download=True)
    torchvision.datasets.FashionMNIST(str(target), train=False, download=True)

"""Tiny ImageNet from the standard ``tiny-imagenet-200`` folder tree (JPEGs).

Labels are the sorted wnids of ``wnids.txt``; the test split is the labelled ``val/`` folder.
Decoding 110,000 JPEGs takes minutes, so the decoded arrays are cached once in an ``.npz`` next
to the data (or in the nscl cache folder when that is read-only), keyed by the file listing.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..util import env_flag, progress
from .errors import CorruptDataError
from .paths import cache_dir

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CACHE_NAME = "nscl_tinyimagenet_v1.npz"
SIZE = 64


def _listing(d: Path) -> tuple[list[str], list[tuple[str, int]], list[tuple[str, int]]]:
    """(sorted wnids, [(train relpath, label)], [(val relpath, label)])."""
    wnids_file = [w.strip() for w in (d / "wnids.txt").read_text().split() if w.strip()]
    wnids = sorted(set(wnids_file))
    lab = {w: i for i, w in enumerate(wnids)}
    train = []
    for w in wnids:
        img_dir = d / "train" / w / "images"
        if not img_dir.is_dir():
            img_dir = d / "train" / w
        if not img_dir.is_dir():
            raise CorruptDataError(d / "wnids.txt", f"lists {w!r} but {d / 'train' / w} does not exist")
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
                raise CorruptDataError(ann, f"unknown wnid {w!r} for {fname}")
            val.append((os.path.join("val", "images", fname), lab[w]))
        val.sort()
    return wnids, train, val


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (SIZE, SIZE):
                im = im.resize((SIZE, SIZE), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    except (OSError, ValueError) as e:  # missing, truncated or not an image (PIL raises OSError subclasses)
        raise CorruptDataError(path, f"unreadable image ({type(e).__name__}: {e})") from e


def _decode_images(d: Path, rels: list[str], desc: str) -> np.ndarray:
    out = np.empty((len(rels), 3, SIZE, SIZE), dtype=np.uint8)
    if not rels:
        return out
    workers = min(16, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as ex:
        it = ex.map(lambda r: _read_rgb(d / r), rels, chunksize=64)
        quiet = env_flag("NSCL_QUIET") or not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
        for i, a in enumerate(progress(it, quiet=quiet, total=len(rels), desc=desc)):
            out[i] = a
    return out


def _cache_paths(d: Path) -> list[Path]:
    key = hashlib.sha1(str(d).encode()).hexdigest()[:12]
    return [d / CACHE_NAME, cache_dir() / f"tinyimagenet-{key}.npz"]


def _atomic_save_npz(path: Path, **arrays) -> None:
    """``np.savez`` through a temporary file + ``os.replace`` (streamed: the arrays may be GBs, so
    not through :func:`nscl.util.atomic_write`, which takes the bytes); permissions follow the umask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp creates 0600; a shared data folder needs group read
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load(folder: Path) -> dict:
    """Load the ``tiny-imagenet-200`` folder (decoded once, then from the ``.npz`` cache)."""
    return _load_dir(str(folder))


@functools.lru_cache(maxsize=1)
def _load_dir(directory: str) -> dict:
    d = Path(directory)
    wnids, train, val = _listing(d)
    fingerprint = hashlib.sha1(repr((wnids, train, val)).encode()).hexdigest()
    arrays = None
    source_cache: Path | None = None
    for cp in _cache_paths(d):
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
            "y_train": np.asarray([lbl for _, lbl in train], dtype=np.int64),
            "x_test": _decode_images(d, [r for r, _ in val], "tinyimagenet val"),
            "y_test": np.asarray([lbl for _, lbl in val], dtype=np.int64),
        }
        source_cache = None
        for cp in _cache_paths(d):
            try:
                _atomic_save_npz(cp, fingerprint=np.asarray(fingerprint), **arrays)
                source_cache = cp
                break
            except OSError:
                continue
        if source_cache is None:
            warnings.warn(f"could not write a Tiny ImageNet cache in any of {_cache_paths(d)}")
    return {
        "train": (torch.from_numpy(arrays["x_train"]), torch.from_numpy(arrays["y_train"])),
        "test": (torch.from_numpy(arrays["x_test"]), torch.from_numpy(arrays["y_test"])),
        "mean": MEAN,
        "std": STD,
        "n_classes": len(wnids),
        "source": str(d),
        "class_names": wnids,
        "cache": None if source_cache is None else str(source_cache),
    }

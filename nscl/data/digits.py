"""scikit-learn's 8x8 digits (bundled with scikit-learn, nothing on disk): smoke-test data."""

from __future__ import annotations

import functools

import numpy as np
import torch

from .sampling import stratified_split


@functools.lru_cache(maxsize=1)
def load() -> dict:
    """The 1,797 digits as uint8 images (0..16 scaled to 0..255), split 80/20 stratified with seed 0."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.clip(np.round(bunch.data.astype(np.float64) * 255.0 / 16.0), 0, 255).astype(np.uint8)
    x = x.reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    tr, te = stratified_split(y, 0.2, np.random.default_rng(0))
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

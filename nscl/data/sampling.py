"""Seeded, class-aware index selection shared by the streams and the digits train/test split."""

from __future__ import annotations

import numpy as np


def rng(*entropy: int) -> np.random.Generator:
    """A generator seeded by a tuple of integers (e.g. ``(seed, purpose, task)``)."""
    return np.random.default_rng(np.random.SeedSequence([int(e) for e in entropy]))


def balanced_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
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


def balanced_subset(labels: np.ndarray, k: int | None, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions of a class-balanced-as-possible subset of size ``min(k, n)`` (all if k is None)."""
    if k is None or k >= len(labels):
        return np.arange(len(labels), dtype=np.int64)
    return np.sort(balanced_order(labels, rng)[:k])


def stratified_split(labels: np.ndarray, frac: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
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

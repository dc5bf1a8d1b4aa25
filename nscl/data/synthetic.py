"""Synthetic data: one Gaussian prototype per class plus Gaussian noise, any (C, H, W) shape."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch


def load(
    *,
    n_classes: int,
    shape: Sequence[int],
    noise_std: float,
    train_per_class: int,
    test_per_class: int,
    data_seed: int | None = None,
    seed: int = 0,
) -> dict:
    """Draw the dataset (memoised); ``data_seed`` if given, else ``seed``, seeds the draw.

    The defaults are the ``options`` of its entry in :data:`nscl.data.registry.DATASETS`.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"synthetic shape must be (C, H, W), got {shape}")
    s = seed if data_seed is None else data_seed
    return _make(int(n_classes), shape, float(noise_std), int(train_per_class), int(test_per_class), int(s))


@functools.lru_cache(maxsize=4)
def _make(n_classes: int, shape: tuple, noise_std: float, train_per_class: int, test_per_class: int, seed: int) -> dict:
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
        "source": (
            f"synthetic(n_classes={n_classes}, shape={tuple(shape)}, noise_std={noise_std}, "
            f"train_per_class={train_per_class}, test_per_class={test_per_class}, seed={seed})"
        ),
        "class_names": [f"class{i}" for i in range(n_classes)],
    }

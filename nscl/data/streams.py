"""Task streams: a dataset cut into a sequence of tasks, held in memory.

* ``split``    -- the classes are partitioned into tasks of equal size (task-incremental:
  labels are remapped to ``0..k-1`` inside every task, the caller uses one head per task);
* ``permuted`` -- every task uses all classes; task 1 is the plain data, task ``t > 1``
  applies a fixed random permutation of the ``C*H*W`` input values;
* ``partition`` -- every task shows the same images, labelled by a seeded random split of the
  classes into two halves (binary: label 1 = the half without the first class of the split's
  order); the splits of a stream are distinct. The input covariance is the same for every task,
  so the old tasks' input null space holds nothing a new labelling could use: only capacity in
  the units themselves can help (the capacity study, issue 17).

Data are kept in their raw storage type (``uint8`` images, or ``float32`` for the synthetic
generator). Normalisation, the pixel permutation and the training augmentation are applied per
batch in :meth:`TaskData.get`, so a permuted stream never materialises permuted float copies (all
its tasks share one ``uint8`` tensor). Every random choice is seeded by ``(seed, purpose, task)``,
so a stream is bit-identical for a given seed.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..util import jsonable
from .errors import CorruptDataError
from .registry import BENCHMARKS, DatasetSpec, distinct_halves, load_dataset, spec
from .sampling import balanced_subset, rng, stratified_split

SCENARIOS = ("split", "permuted", "partition")


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
            dim = int(np.prod(self.x.shape[1:]))  # not x[0]: a split may be empty (val_fraction=0)
            if self.perm.numel() != dim:
                raise ValueError(f"TaskData: perm has {self.perm.numel()} entries, inputs have {dim}")

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        perm = None if self.perm is None else f"<perm of {self.perm.numel()}>"
        return (
            f"TaskData(n={len(self)}, x={self.x.dtype}{tuple(self.x.shape)}, mean={self.mean}, "
            f"std={self.std}, perm={perm}, augment={self.augment})"
        )

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

    def subset(self, idx) -> TaskData:
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
# Building a stream
# ----------------------------------------------------------------------------------------


@dataclass
class _Pools:
    """A loaded dataset and the sub-sampling settings: cuts out one task's train / val / test."""

    data: dict
    augment: bool
    samples_per_task: int | None
    test_samples_per_task: int | None
    val_fraction: float

    def __post_init__(self):
        self.x_tr, self.y_tr = self.data["train"]
        self.x_te, self.y_te = self.data["test"]
        self.y_tr_np, self.y_te_np = self.y_tr.numpy(), self.y_te.numpy()
        self.mean, self.std = tuple(self.data["mean"]), tuple(self.data["std"])
        self.n_classes = int(self.data["n_classes"])
        self.input_shape = tuple(int(s) for s in self.x_tr.shape[1:])
        for split, y in (("train", self.y_tr_np), ("test", self.y_te_np)):
            bad = np.flatnonzero((y < 0) | (y >= self.n_classes))
            if len(bad):  # damaged label bytes: every benchmark refuses them alike, before any task is cut
                raise CorruptDataError(
                    self.data.get("source", "the dataset"),
                    f"{split} label {int(y[bad[0]])} at row {int(bad[0])} is outside 0..{self.n_classes - 1} "
                    f"({len(bad)} such label(s))",
                )

    def task(
        self, tr_pos: np.ndarray, te_pos: np.ndarray, y_map: Callable, seed: int, t: int
    ) -> tuple[TaskData, TaskData, TaskData]:
        """Sub-sample the training pool ``tr_pos`` (seed purpose 1), hold out val from it (2),
        sub-sample the test rows ``te_pos`` (3); labels go through ``y_map``."""
        pool = tr_pos[balanced_subset(self.y_tr_np[tr_pos], self.samples_per_task, rng(seed, 1, t))]
        keep, held = stratified_split(self.y_tr_np[pool], self.val_fraction, rng(seed, 2, t))
        tests = te_pos[balanced_subset(self.y_te_np[te_pos], self.test_samples_per_task, rng(seed, 3, t))]

        def part(x, y, pos, augment):
            p = torch.from_numpy(pos)
            return TaskData(x=x[p], y=y_map(y[p]), mean=self.mean, std=self.std, augment=augment, source_index=p)

        return (
            part(self.x_tr, self.y_tr, pool[keep], self.augment),
            part(self.x_tr, self.y_tr, pool[held], False),
            part(self.x_te, self.y_te, tests, False),
        )


def _recipe(benchmark: str, overrides: dict) -> tuple[dict, DatasetSpec, dict]:
    """The benchmark's entries with ``scenario`` / ``augment`` overridden, its dataset, and the
    dataset's keyword options (generated datasets only)."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; valid names: {', '.join(BENCHMARKS)}")
    cfg = copy.deepcopy(BENCHMARKS[benchmark])
    ds_kwargs = dict(cfg.pop("dataset_kwargs", {}) or {})
    ds = spec(cfg["dataset"])
    for k, v in overrides.items():
        if k in ("scenario", "augment"):
            cfg[k] = v
        elif k in ds.options:
            ds_kwargs[k] = v
        else:
            raise TypeError(f"make_stream({benchmark!r}) got an unexpected keyword argument {k!r}")
    if cfg["scenario"] not in SCENARIOS:
        raise ValueError(f"unknown scenario {cfg['scenario']!r}; valid: {', '.join(SCENARIOS)}")
    return cfg, ds, ds_kwargs


def _check_sizes(seed, n_tasks, samples_per_task, test_samples_per_task, val_fraction) -> tuple[int, int]:
    """Validate the numeric arguments; returns ``(seed, n_tasks)`` as ints."""
    if not (0.0 <= val_fraction < 1.0):
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    for nm, v in (("samples_per_task", samples_per_task), ("test_samples_per_task", test_samples_per_task)):
        if v is not None and int(v) < 1:
            raise ValueError(f"{nm} must be >= 1 or None, got {v}")
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    T = int(n_tasks)
    if T < 1:
        raise ValueError(f"n_tasks must be >= 1, got {T}")
    return seed, T


def _class_order(class_order: str | Sequence[int], n_classes: int, seed: int) -> np.ndarray:
    """Label order (``"fixed"``), a seeded shuffle (``"random"``) or an explicit list of class ids."""
    if isinstance(class_order, str):
        if class_order == "fixed":
            return np.arange(n_classes)
        if class_order == "random":
            return np.random.default_rng(seed).permutation(n_classes)
        raise ValueError(f"class_order must be 'fixed', 'random' or a list of class ids, got {class_order!r}")
    order = np.asarray(list(class_order), dtype=np.int64)
    if len(set(order.tolist())) != len(order) or order.min() < 0 or order.max() >= n_classes:
        raise ValueError(f"explicit class_order must be distinct ids in 0..{n_classes - 1}")
    return order


def _split_tasks(pools: _Pools, T: int, class_order, seed: int, benchmark: str) -> tuple[list[Task], dict]:
    """Consecutive groups of ``len(order) // T`` classes; labels remapped to ``0..k-1`` per task."""
    order = _class_order(class_order, pools.n_classes, seed)
    cpt = len(order) // T
    if cpt < 1:
        raise ValueError(f"cannot split {len(order)} classes into {T} tasks (fewer than 1 class per task)")
    used = order[: cpt * T]
    if len(used) < len(order):
        warnings.warn(f"{benchmark}: {len(order) - len(used)} classes do not fit in {T} tasks of {cpt} and are dropped")
    tasks = []
    for t in range(T):
        classes = [int(c) for c in used[t * cpt : (t + 1) * cpt]]
        lut = torch.full((pools.n_classes,), -1, dtype=torch.long)
        lut[torch.tensor(classes)] = torch.arange(cpt)
        tr_pos = np.flatnonzero(np.isin(pools.y_tr_np, classes)).astype(np.int64)
        te_pos = np.flatnonzero(np.isin(pools.y_te_np, classes)).astype(np.int64)
        train, val, test = pools.task(tr_pos, te_pos, lambda y, lut=lut: lut[y], seed, t)
        name = f"task{t + 1}: classes " + ",".join(str(c) for c in classes)
        tasks.append(Task(index=t, name=name, classes=classes, n_classes=cpt, train=train, val=val, test=test))
    info = {
        "class_order": [int(c) for c in order],
        "classes_per_task": cpt,
        "unused_classes": [int(c) for c in order[cpt * T :]],
    }
    return tasks, info


def _permuted_tasks(pools: _Pools, T: int, seed: int) -> tuple[list[Task], dict]:
    """One sub-sample shared by all tasks; task ``t > 0`` permutes the inputs (seed purpose 7)."""
    train0, val0, test0 = pools.task(
        np.arange(len(pools.y_tr_np), dtype=np.int64),
        np.arange(len(pools.y_te_np), dtype=np.int64),
        lambda y: y,
        seed,
        0,
    )
    dim = int(np.prod(pools.input_shape))
    classes = list(range(pools.n_classes))

    def with_perm(d: TaskData, perm) -> TaskData:  # shares x / y / source_index storage with task 0
        return TaskData(x=d.x, y=d.y, mean=d.mean, std=d.std, perm=perm, augment=d.augment, source_index=d.source_index)

    tasks = []
    for t in range(T):
        perm = None if t == 0 else torch.from_numpy(rng(seed, 7, t + 1).permutation(dim).astype(np.int64))
        tasks.append(
            Task(
                index=t,
                name=f"perm{t}",
                classes=classes,
                n_classes=pools.n_classes,
                train=with_perm(train0, perm),
                val=with_perm(val0, perm),
                test=with_perm(test0, perm),
            )
        )
    info = {
        "class_order": classes,
        "classes_per_task": pools.n_classes,
        "permutation_seeds": [None] + [[seed, 7, t + 1] for t in range(1, T)],
    }
    return tasks, info


def _partitions(n_classes: int, T: int, seed: int) -> list[list[int]]:
    """``T`` distinct seeded random halves of ``range(n_classes)`` (seed purpose 8), each as the sorted
    classes labelled 1; a half and its complement are the same task, so class 0 is never in it."""
    total = distinct_halves(n_classes)
    if T > total:
        raise ValueError(f"partition: {n_classes} classes have only {total} distinct halves, asked for {T} tasks")
    seen: set[tuple[int, ...]] = set()
    out = []
    g = rng(seed, 8, 0)
    while len(out) < T:
        half = np.sort(g.permutation(n_classes)[: n_classes // 2])
        if 0 in half:
            half = np.setdiff1d(np.arange(n_classes), half)
        key = tuple(int(c) for c in half)
        if key not in seen:
            seen.add(key)
            out.append(list(key))
    return out


def _partition_tasks(pools: _Pools, T: int, seed: int) -> tuple[list[Task], dict]:
    """One sub-sample shared by all tasks (as ``permuted``); task ``t`` labels it 1 on the classes of
    its half (:func:`_partitions`) and 0 elsewhere."""
    train0, val0, test0 = pools.task(
        np.arange(len(pools.y_tr_np), dtype=np.int64),
        np.arange(len(pools.y_te_np), dtype=np.int64),
        lambda y: y,
        seed,
        0,
    )
    halves = _partitions(pools.n_classes, T, seed)

    def relabel(d: TaskData, lut: torch.Tensor) -> TaskData:  # shares x / source_index storage with task 0
        return TaskData(x=d.x, y=lut[d.y], mean=d.mean, std=d.std, augment=d.augment, source_index=d.source_index)

    tasks = []
    for t, half in enumerate(halves):
        lut = torch.zeros(pools.n_classes, dtype=torch.long)
        lut[torch.tensor(half)] = 1
        name = f"task{t + 1}: 1 = classes " + ",".join(str(c) for c in half)
        tasks.append(
            Task(
                index=t,
                name=name,
                classes=half,
                n_classes=2,
                train=relabel(train0, lut),
                val=relabel(val0, lut),
                test=relabel(test0, lut),
            )
        )
    info = {"class_order": list(range(pools.n_classes)), "classes_per_task": 2, "partitions": halves}
    return tasks, info


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
    cfg, ds, ds_kwargs = _recipe(benchmark, overrides)
    seed, T = _check_sizes(
        seed, cfg["n_tasks"] if n_tasks is None else n_tasks, samples_per_task, test_samples_per_task, val_fraction
    )
    if ds.options:  # generated: seeded by the stream seed unless data_seed is given
        data = load_dataset(ds.name, **ds_kwargs, seed=seed)
    else:
        data = load_dataset(ds.name, data_root=data_root, download=download)
    pools = _Pools(data, bool(cfg["augment"]), samples_per_task, test_samples_per_task, val_fraction)
    info: dict[str, Any] = {
        "benchmark": benchmark,
        "dataset": ds.name,
        "scenario": cfg["scenario"],
        "source": data["source"],
        "seed": seed,
        "n_tasks": T,
        "n_classes_total": pools.n_classes,
        "input_shape": list(pools.input_shape),
        "mean": list(pools.mean),
        "std": list(pools.std),
        "augment_train": pools.augment,
        "val_fraction": float(val_fraction),
        "samples_per_task": samples_per_task,
        "test_samples_per_task": test_samples_per_task,
        "class_order_mode": class_order if isinstance(class_order, str) else "explicit",
        "dataset_size": {"train": len(pools.y_tr), "test": len(pools.y_te)},
    }
    if ds.options:
        info["dataset_kwargs"] = {**ds.options, **ds_kwargs}
    if data.get("class_names") is not None:
        info["class_names"] = list(data["class_names"])
    if cfg["scenario"] == "split":
        tasks, more = _split_tasks(pools, T, class_order, seed, benchmark)
    elif cfg["scenario"] == "partition":
        tasks, more = _partition_tasks(pools, T, seed)
    else:
        tasks, more = _permuted_tasks(pools, T, seed)
    info.update(more)
    info["tasks"] = [
        {
            "index": tk.index,
            "name": tk.name,
            "classes": tk.classes,
            "n_classes": tk.n_classes,
            "n_train": len(tk.train),
            "n_val": len(tk.val),
            "n_test": len(tk.test),
        }
        for tk in tasks
    ]
    return Stream(benchmark=benchmark, tasks=tasks, input_shape=pools.input_shape, info=jsonable(info))

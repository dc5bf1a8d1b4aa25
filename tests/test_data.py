"""Tests for nscl.data: real on-disk formats written to tmp_path, scenarios, determinism."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from nscl import data as D
from nscl.data import (
    BENCHMARKS,
    DataNotFoundError,
    TaskData,
    fmnist,
    load_dataset,
    make_stream,
    paths,
    tinyimagenet,
)

FMNIST_FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


@pytest.fixture(autouse=True)
def isolated_paths(tmp_path, monkeypatch):
    """No env var, no system data, a private cache dir: only what a test writes is found."""
    monkeypatch.delenv("NSCL_DATA_ROOT", raising=False)
    monkeypatch.setenv("NSCL_CACHE_DIR", str(tmp_path / "nscl-cache"))
    monkeypatch.setattr(paths, "SYSTEM_DATA_ROOTS", [])


def write_idx(path, arr: np.ndarray, compress: bool) -> None:
    """Write an uint8 IDX file (magic 0x0000 08 ndim, big-endian uint32 dims)."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    raw = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)


def make_fmnist_dir(d, n_train=40, n_test=20, compress=True, seed=0):
    """Tiny fake Fashion-MNIST in IDX format; returns the arrays written."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for name, a in arrays.items():
        write_idx(d / name, a, compress)
    return arrays


# ---------------------------------------------------------------- loaders: real formats


@pytest.mark.parametrize("compress,layout", [(True, ""), (False, "FashionMNIST/raw"), (True, "fashion-mnist")])
def test_fashion_mnist_idx_roundtrip(tmp_path, compress, layout):
    arrays = make_fmnist_dir(tmp_path / layout if layout else tmp_path, compress=compress)
    ds = load_dataset("fashion_mnist", data_root=str(tmp_path))
    xtr, ytr = ds["train"]
    xte, yte = ds["test"]
    assert xtr.dtype == torch.uint8 and xtr.shape == (40, 1, 28, 28)
    assert ytr.dtype == torch.int64 and yte.dtype == torch.int64
    assert np.array_equal(xtr[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(ytr.numpy(), arrays["train-labels-idx1-ubyte"])
    assert np.array_equal(xte[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])
    assert np.array_equal(yte.numpy(), arrays["t10k-labels-idx1-ubyte"])
    assert ds["n_classes"] == 10 and len(ds["mean"]) == 1 and len(ds["std"]) == 1
    assert str(tmp_path) in ds["source"]


def test_fashion_mnist_env_var_and_bad_magic(tmp_path, monkeypatch):
    arrays = make_fmnist_dir(tmp_path / "envroot" / "fashion-mnist")
    monkeypatch.setenv("NSCL_DATA_ROOT", str(tmp_path / "envroot"))
    ds = load_dataset("fashion_mnist")
    assert np.array_equal(ds["train"][0][:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="magic"):
        fmnist.read_idx(bad)


def _cifar_pickle(path, data, fine, coarse):
    d = {
        b"batch_label": b"testing batch 1 of 1",
        b"filenames": [f"img{i}.png".encode() for i in range(len(fine))],
        b"fine_labels": list(fine),
        b"coarse_labels": list(coarse),
        b"data": data,
    }
    with open(path, "wb") as f:
        pickle.dump(d, f)


def test_cifar100_pickles(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    rng = np.random.default_rng(1)
    tr = rng.integers(0, 256, (5, 3072), dtype=np.uint8)
    te = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    _cifar_pickle(root / "train", tr, [3, 99, 0, 42, 7], [0, 1, 2, 3, 4])
    _cifar_pickle(root / "test", te, [5, 6, 7], [1, 1, 1])
    with open(root / "meta", "wb") as f:
        pickle.dump(
            {
                b"fine_label_names": [f"c{i}".encode() for i in range(100)],
                b"coarse_label_names": [f"s{i}".encode() for i in range(20)],
            },
            f,
        )
    ds = load_dataset("cifar100", data_root=str(tmp_path))
    x, y = ds["train"]
    assert x.shape == (5, 3, 32, 32) and x.dtype == torch.uint8
    assert y.tolist() == [3, 99, 0, 42, 7]
    assert ds["test"][1].tolist() == [5, 6, 7]
    # CHW: channel c, row r, column k is data[c*1024 + r*32 + k]
    assert x[1, 2, 5, 7].item() == tr[1, 2 * 1024 + 5 * 32 + 7]
    assert x[0, 1, 31, 0].item() == tr[0, 1024 + 31 * 32]
    assert np.array_equal(ds["test"][0].reshape(3, -1).numpy(), te)
    assert ds["class_names"][99] == "c99" and ds["n_classes"] == 100
    assert ds["mean"] == (0.507, 0.487, 0.441)


def test_tinyimagenet_tree_and_cache(tmp_path):
    from PIL import Image

    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n0300", "n0100", "n0200"]  # file order != sorted order
    colours = {"n0100": (200, 30, 30), "n0200": (30, 200, 30), "n0300": (30, 30, 200)}
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for w in wnids:
        (root / "train" / w / "images").mkdir(parents=True)
        (root / "train" / w / f"{w}_boxes.txt").write_text("")
        for i in range(2):
            Image.new("RGB", (64, 64), colours[w]).save(root / "train" / w / "images" / f"{w}_{i}.JPEG", "JPEG")
    ann = []
    for j, w in enumerate(["n0200", "n0300", "n0100"]):
        Image.new("RGB", (64, 64), colours[w]).save(root / "val" / "images" / f"val_{j}.JPEG", "JPEG")
        ann.append(f"val_{j}.JPEG\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")

    ds = load_dataset("tinyimagenet", data_root=str(tmp_path))
    x, y = ds["train"]
    assert ds["class_names"] == sorted(wnids) and ds["n_classes"] == 3
    assert x.shape == (6, 3, 64, 64) and x.dtype == torch.uint8
    assert y.tolist() == [0, 0, 1, 1, 2, 2]
    for i, lab in enumerate(y.tolist()):
        expect = torch.tensor(colours[sorted(wnids)[lab]], dtype=torch.float32).view(3, 1, 1)
        assert (x[i].float() - expect).abs().max() <= 4
    xv, yv = ds["test"]
    assert yv.tolist() == [1, 2, 0]  # val_0 n0200, val_1 n0300, val_2 n0100
    assert (xv[0].float().mean((1, 2)) - torch.tensor([30.0, 200.0, 30.0])).abs().max() <= 4
    # decoded arrays were cached as .npz and the cache is used on reload
    assert ds["cache"] is not None and ds["cache"].endswith(".npz")
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(ds["cache"]).st_mode & 0o777 == 0o666 & ~umask  # shared data folders stay readable
    tinyimagenet._load_dir.cache_clear()
    ds2 = load_dataset("tinyimagenet", data_root=str(root))
    assert ds2["cache"] == ds["cache"]
    assert torch.equal(ds2["train"][0], x) and torch.equal(ds2["test"][1], yv)


def test_missing_data_messages(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataNotFoundError) as ei:
        load_dataset("fashion_mnist", data_root=str(empty))
    msg = str(ei.value)
    assert isinstance(ei.value, FileNotFoundError)
    assert str(empty) in msg and str(empty / "FashionMNIST" / "raw") in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "download=True" in msg and "data_root" in msg
    with pytest.raises(DataNotFoundError, match="cifar-100-python") as ei:
        load_dataset("cifar100", data_root=str(empty))
    assert str(empty / "cifar-100-python") in str(ei.value)
    with pytest.raises(DataNotFoundError) as ei:
        load_dataset("tinyimagenet", data_root=str(empty))
    assert str(empty / "tiny-imagenet-200") in str(ei.value)
    with pytest.raises(ValueError, match="split_fmnist"):
        make_stream("no_such_benchmark")
    with pytest.raises(ValueError, match="fashion_mnist"):
        load_dataset("no_such_dataset")


# ---------------------------------------------------------------- scenarios


def test_split_digits_stream():
    s = make_stream("split_digits", seed=0)
    digits = load_dataset("digits")
    xtr_all, ytr_all = digits["train"]
    assert len(s) == 5 and s.input_shape == (1, 8, 8)
    seen = []
    for t in s:
        assert t.n_classes == 2 and len(t.classes) == 2
        seen += t.classes
        for part in (t.train, t.val, t.test):
            assert set(part.y.tolist()) == {0, 1}
        # val is taken from the training split, never overlaps train
        tr, va = set(t.train.source_index.tolist()), set(t.val.source_index.tolist())
        assert tr.isdisjoint(va)
        assert torch.equal(t.val.x, xtr_all[t.val.source_index])
        assert torch.equal(torch.tensor(t.classes)[t.train.y], ytr_all[t.train.source_index])
        assert torch.equal(torch.tensor(t.classes)[t.val.y], ytr_all[t.val.source_index])
        n_pool = len(t.train) + len(t.val)
        assert abs(len(t.val) - 0.1 * n_pool) <= 2
        xb, yb = t.train.get(torch.arange(4))
        assert xb.dtype == torch.float32 and xb.shape == (4, 1, 8, 8) and yb.dtype == torch.int64
    assert seen == list(range(10))  # fixed order, disjoint
    assert s.tasks[0].name == "task1: classes 0,1"
    json.dumps(s.info)
    assert s.info["class_order"] == list(range(10)) and len(s.info["tasks"]) == 5
    assert s.info["tasks"][0]["n_train"] == len(s[0].train)
    # normalisation: get() = (x/255 - mean) / std
    t = s[0]
    xb, _ = t.train.get([3])
    ref = (t.train.x[3].float() / 255 - digits["mean"][0]) / digits["std"][0]
    assert torch.allclose(xb[0], ref, atol=1e-6)


def test_permuted_stream_on_idx_files(tmp_path):
    make_fmnist_dir(tmp_path, n_train=60, n_test=20)
    s = make_stream("permuted_fmnist", data_root=str(tmp_path), n_tasks=3, val_fraction=0.2)
    assert len(s) == 3 and all(t.n_classes == 10 and t.classes == list(range(10)) for t in s)
    assert s[0].train.perm is None and s[0].test.perm is None
    p1, p2 = s[1].train.perm, s[2].train.perm
    assert torch.equal(torch.sort(p1).values, torch.arange(784))
    assert not torch.equal(p1, torch.arange(784)) and not torch.equal(p1, p2)
    # all tasks share the same uint8 storage
    assert s[1].train.x.dtype == torch.uint8
    assert s[1].train.x.data_ptr() == s[0].train.x.data_ptr() == s[2].train.x.data_ptr()
    idx = torch.tensor([0, 5])
    x0, y0 = s[0].test.get(idx)
    x1, y1 = s[1].test.get(idx)
    assert torch.equal(y0, y1)
    f0, f1 = x0.reshape(2, -1), x1.reshape(2, -1)
    assert torch.equal(f1, f0[:, p1])
    j = 123
    assert f1[1, j] == f0[1, p1[j]]
    assert len(s[0].train) + len(s[0].val) == 60 and len(s[0].val) == 12 and len(s[0].test) == 20


def test_partition_stream_same_images_distinct_binary_halves(tmp_path):
    make_fmnist_dir(tmp_path, n_train=60, n_test=20)
    s = make_stream("partition_fmnist", data_root=str(tmp_path), n_tasks=6, val_fraction=0.2, seed=3)
    assert len(s) == 6 and all(t.n_classes == 2 for t in s)
    halves = [tuple(t.classes) for t in s]
    assert len(set(halves)) == 6 and all(len(h) == 5 and 0 not in h for h in halves)  # distinct 5-vs-5 splits
    assert s.info["partitions"] == [list(h) for h in halves]
    base = make_stream("permuted_fmnist", data_root=str(tmp_path), n_tasks=1, val_fraction=0.2, seed=3)[0]
    for t in s:  # the same images (shared storage), labelled 1 exactly on the task's half
        assert t.train.x.data_ptr() == s[0].train.x.data_ptr() and t.train.perm is None
        for split in ("train", "val", "test"):
            orig = getattr(base, split).y
            assert torch.equal(getattr(t, split).y, torch.isin(orig, torch.tensor(t.classes)).long())
    again = make_stream("partition_fmnist", data_root=str(tmp_path), n_tasks=6, val_fraction=0.2, seed=3)
    other = make_stream("partition_fmnist", data_root=str(tmp_path), n_tasks=6, val_fraction=0.2, seed=4)
    assert [t.classes for t in again] == [list(h) for h in halves]
    assert [t.classes for t in other] != [list(h) for h in halves]
    with pytest.raises(ValueError, match="only 126 distinct halves"):
        make_stream("partition_fmnist", data_root=str(tmp_path), n_tasks=127)


def test_samples_per_task_and_n_tasks():
    s = make_stream("split_digits", samples_per_task=30, test_samples_per_task=10, val_fraction=0.2)
    for t in s:
        assert len(t.train) + len(t.val) == 30 and len(t.test) == 10
        assert torch.cat([t.train.y, t.val.y]).bincount().tolist() == [15, 15]
        assert t.test.y.bincount().tolist() == [5, 5]
        assert t.val.y.bincount().tolist() == [3, 3]
    s2 = make_stream("split_digits", n_tasks=2)
    assert len(s2) == 2 and s2[1].classes == [5, 6, 7, 8, 9] and set(s2[1].train.y.tolist()) == set(range(5))
    with pytest.raises(ValueError):
        make_stream("split_digits", n_tasks=11)
    s0 = make_stream("split_digits", val_fraction=0.0, samples_per_task=8)
    assert len(s0[0].val) == 0 and len(s0[0].train) == 8
    assert s0[0].val.get(torch.arange(0))[0].shape == (0, 1, 8, 8)


def test_determinism_and_class_order():
    a = make_stream("split_digits", seed=3, class_order="random", samples_per_task=40)
    b = make_stream("split_digits", seed=3, class_order="random", samples_per_task=40)
    c = make_stream("split_digits", seed=4, class_order="random", samples_per_task=40)
    assert a.info["class_order"] == b.info["class_order"]
    assert a.info["class_order"] != c.info["class_order"]
    assert sorted(a.info["class_order"]) == list(range(10))
    for ta, tb in zip(a, b):
        assert ta.classes == tb.classes
        for pa, pb in ((ta.train, tb.train), (ta.val, tb.val), (ta.test, tb.test)):
            assert torch.equal(pa.x, pb.x) and torch.equal(pa.y, pb.y)
    assert make_stream("split_digits", seed=5).info["class_order"] == list(range(10))
    # different seeds with fixed order: same classes, different subsets
    d1 = make_stream("split_digits", seed=1, samples_per_task=20)
    d2 = make_stream("split_digits", seed=2, samples_per_task=20)
    assert d1[0].classes == d2[0].classes
    assert not torch.equal(d1[0].train.source_index, d2[0].train.source_index)


def test_augmentation_crop_flip_deterministic():
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    td = TaskData(x=x, y=torch.arange(4), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), augment=True)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    a, _ = td.get(torch.arange(4), g1, train=True)
    b, _ = td.get(torch.arange(4), g2, train=True)
    assert torch.equal(a, b)
    plain, _ = td.get(torch.arange(4), train=False)
    assert torch.allclose(plain, x.float() / 255)
    # every augmented sample is a shifted (and maybe flipped) crop of the zero-padded image
    padded = torch.nn.functional.pad(plain, (4, 4, 4, 4))
    for i in range(4):
        cands = [padded[i, :, r : r + 8, c : c + 8] for r in range(9) for c in range(9)]
        cands += [cc.flip(-1) for cc in cands]
        assert any(torch.equal(a[i], cc) for cc in cands)
    sub = td.subset([2, 0])
    assert torch.equal(sub.y, torch.tensor([2, 0])) and sub.augment


def test_synthetic_benchmark_learnable_and_overrides():
    s = make_stream("synthetic", seed=0, train_per_class=40, test_per_class=10, shape=(1, 6, 6))
    assert len(s) == 5 and s.input_shape == (1, 6, 6)
    t = s[0]
    assert t.train.x.dtype == torch.float32 and len(t.train) + len(t.val) == 80 and len(t.test) == 20
    # nearest class mean separates the classes
    xtr, ytr = t.train.get(torch.arange(len(t.train)))
    xte, yte = t.test.get(torch.arange(len(t.test)))
    means = torch.stack([xtr[ytr == k].flatten(1).mean(0) for k in range(2)])
    pred = torch.cdist(xte.flatten(1), means).argmin(1)
    assert (pred == yte).float().mean() >= 0.9
    s2 = make_stream("synthetic", seed=0, train_per_class=40, test_per_class=10, shape=(1, 6, 6))
    assert torch.equal(s2[0].train.x, t.train.x)
    with pytest.raises(TypeError):
        make_stream("split_digits", noise_std=2.0)
    assert set(BENCHMARKS) >= {
        "split_fmnist",
        "permuted_fmnist",
        "split_cifar100_10",
        "split_cifar100_20",
        "tinyimagenet_25",
        "split_digits",
        "synthetic",
    }


# ---------------------------------------------------------------- real Fashion-MNIST


def test_real_fashion_mnist(monkeypatch):
    monkeypatch.setattr(paths, "SYSTEM_DATA_ROOTS", ["/usr/share/datasets"])
    try:
        ds = load_dataset("fashion_mnist")
    except DataNotFoundError:
        pytest.skip(
            "Fashion-MNIST IDX files not installed (apt-get install dataset-fashion-mnist; `make` does it in CI)"
        )
    xtr, ytr = ds["train"]
    assert xtr.shape == (60000, 1, 28, 28) and len(ds["test"][1]) == 10000
    assert abs(xtr.float().mean().item() - 72.94) < 0.05
    assert ytr.bincount().tolist() == [6000] * 10
    s = make_stream("split_fmnist")
    assert len(s) == 5
    for k, t in enumerate(s):
        assert t.classes == [2 * k, 2 * k + 1] and t.n_classes == 2
        assert len(t.train) + len(t.val) == 12000 and len(t.test) == 2000
        assert len(t.val) == 1200
    assert s.info["source"].startswith("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------- explicit roots, damaged files, one-line errors


def _one_line(err: Exception) -> str:
    msg = str(err)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


@pytest.fixture
def system_copy(tmp_path, monkeypatch):
    """A complete Fashion-MNIST in a (fake) system data folder: what a silent fall-back would find."""
    make_fmnist_dir(tmp_path / "system" / "fashion-mnist", seed=5)
    monkeypatch.setattr(paths, "SYSTEM_DATA_ROOTS", [str(tmp_path / "system")])
    assert load_dataset("fashion_mnist")["source"] == str((tmp_path / "system" / "fashion-mnist").resolve())


def test_explicit_data_root_without_the_files_is_an_error(tmp_path, system_copy):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataNotFoundError) as ei:
        load_dataset("fashion_mnist", data_root=str(empty))
    msg = _one_line(ei.value)
    assert isinstance(ei.value, D.DataError) and isinstance(ei.value, FileNotFoundError)
    assert f"data_root={empty}" in msg and "t10k-labels-idx1-ubyte[.gz]" in msg
    assert str(tmp_path / "system") not in msg  # the system folder was not searched
    assert ei.value.searched == [
        str(empty / s) if s else str(empty) for s in ("", "fashion-mnist", "fashion_mnist", "FashionMNIST/raw")
    ]
    with pytest.raises(DataNotFoundError, match="does not exist"):
        make_stream("split_fmnist", data_root=str(tmp_path / "typo"))
    # a half-copied folder: the message names the file it lacks
    make_fmnist_dir(tmp_path / "half" / "fashion-mnist")
    (tmp_path / "half" / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError) as ei:
        load_dataset("fashion_mnist", data_root=str(tmp_path / "half"))
    assert f"{tmp_path / 'half' / 'fashion-mnist'} lacks t10k-labels-idx1-ubyte[.gz]" in _one_line(ei.value)


def test_nscl_data_root_without_the_files_is_an_error(tmp_path, monkeypatch, system_copy):
    monkeypatch.setenv("NSCL_DATA_ROOT", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError) as ei:
        make_stream("split_fmnist")
    msg = _one_line(ei.value)
    assert f"NSCL_DATA_ROOT={tmp_path / 'empty'}" in msg and "unset NSCL_DATA_ROOT" in msg
    # data_root wins over the environment variable
    make_fmnist_dir(tmp_path / "mine", seed=6)
    assert load_dataset("fashion_mnist", data_root=str(tmp_path / "mine"))["source"] == str(
        (tmp_path / "mine").resolve()
    )


def test_truncated_gz_names_the_file(tmp_path):
    make_fmnist_dir(tmp_path)
    gz = tmp_path / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[: gz.stat().st_size // 2])
    with pytest.raises(D.CorruptDataError) as ei:
        make_stream("split_fmnist", data_root=str(tmp_path))
    msg = _one_line(ei.value)
    assert isinstance(ei.value, D.DataError) and ei.value.path == str(gz.resolve())
    assert msg.startswith(f"{gz.resolve()}: damaged or truncated gzip file") and "fix: delete or replace it" in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    # an IDX file cut short without compression
    make_fmnist_dir(tmp_path / "raw", compress=False)
    idx = tmp_path / "raw" / "t10k-images-idx3-ubyte"
    idx.write_bytes(idx.read_bytes()[:-10])
    with pytest.raises(D.CorruptDataError, match="t10k-images-idx3-ubyte: header says"):
        load_dataset("fashion_mnist", data_root=str(tmp_path / "raw"))


def test_damaged_cifar_pickle_and_tiny_image_name_the_file(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    data = np.zeros((2, 3072), dtype=np.uint8)
    _cifar_pickle(root / "train", data, [0, 1], [0, 0])
    _cifar_pickle(root / "test", data, [0, 1], [0, 0])
    (root / "test").write_bytes((root / "test").read_bytes()[:100])
    with pytest.raises(D.CorruptDataError) as ei:
        load_dataset("cifar100", data_root=str(tmp_path))
    assert _one_line(ei.value).startswith(f"{root.resolve() / 'test'}: unreadable CIFAR pickle")
    tiny = tmp_path / "tiny-imagenet-200"
    (tiny / "train" / "n01" / "images").mkdir(parents=True)
    (tiny / "wnids.txt").write_text("n01\n")
    (tiny / "train" / "n01" / "images" / "a.JPEG").write_bytes(b"not a jpeg")
    with pytest.raises(D.CorruptDataError) as ei:
        load_dataset("tinyimagenet", data_root=str(tmp_path))
    assert _one_line(ei.value).startswith(f"{tiny.resolve() / 'train' / 'n01' / 'images' / 'a.JPEG'}: unreadable image")


@pytest.mark.slow
def test_cli_prints_data_errors_as_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "never"
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("NSCL_DATA_ROOT", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nscl",
            "run",
            "-p",
            "benchmark=split_fmnist",
            "-p",
            f"data_root={empty}",
            "-o",
            str(out),
        ],
        check=False,
        cwd=root,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: Fashion-MNIST not found in data_root={empty}"), lines
    assert not out.exists()


def test_cli_prints_corrupt_file_as_one_line(tmp_path, capsys):
    from nscl.apps import cli

    make_fmnist_dir(tmp_path)
    gz = tmp_path / "t10k-labels-idx1-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:-6])  # cut into the gzip trailer
    rc = cli.main(["run", "-q", "-p", "benchmark=split_fmnist", "-p", f"data_root={tmp_path}", "-p", "device=cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith(f"error: {gz.resolve()}: damaged or truncated gzip")


def test_download_goes_to_the_explicit_root_else_the_cache(tmp_path, monkeypatch):
    fetched = []

    def fake_download(target):  # what torchvision does: <target>/FashionMNIST/raw
        fetched.append(target)
        make_fmnist_dir(target / "FashionMNIST" / "raw")

    monkeypatch.setattr(fmnist, "download", fake_download)
    ds = load_dataset("fashion_mnist", data_root=str(tmp_path / "mine"), download=True)
    assert fetched == [tmp_path / "mine"] and ds["source"] == str(
        (tmp_path / "mine" / "FashionMNIST" / "raw").resolve()
    )
    ds = load_dataset("fashion_mnist", download=True)
    assert fetched[-1] == tmp_path / "nscl-cache" and str(tmp_path / "nscl-cache") in ds["source"]
    assert len(fetched) == 2
    load_dataset("fashion_mnist")  # now found in the cache folder without downloading
    assert len(fetched) == 2

    def offline(target):
        raise OSError("network is unreachable")

    monkeypatch.setattr(fmnist, "download", offline)
    with pytest.raises(DataNotFoundError) as ei:
        load_dataset("fashion_mnist", data_root=str(tmp_path / "other"), download=True)
    assert _one_line(ei.value).startswith(
        f"Fashion-MNIST: download into {tmp_path / 'other'} failed (OSError: network is unreachable)"
    )


# ---- issue 27: damaged files are one DataError whatever the stream ------------------------------------
def test_idx_header_whose_dimensions_overflow_is_a_data_error(tmp_path):
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(
        struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">3I", 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF) + b"\0" * 16
    )
    with pytest.raises(D.CorruptDataError, match=r"header says \(4294967295, 4294967295, 4294967295\)"):
        fmnist.read_idx(bad)


@pytest.mark.parametrize("benchmark", ["split_fmnist", "permuted_fmnist", "partition_fmnist"])
def test_out_of_range_label_bytes_are_a_data_error_on_every_stream(benchmark, tmp_path):
    arrays = make_fmnist_dir(tmp_path, n_train=60, n_test=20)
    labels = arrays["t10k-labels-idx1-ubyte"].copy()
    labels[3] = 12  # Fashion-MNIST has classes 0..9
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels, compress=False)
    with pytest.raises(D.CorruptDataError, match=r"test label 12 .*outside 0\.\.9"):
        make_stream(benchmark, data_root=str(tmp_path), n_tasks=2, val_fraction=0.2)

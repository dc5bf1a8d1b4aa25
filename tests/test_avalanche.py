"""``nscl.apps.avalanche.NullSpacePlugin`` inside Avalanche's ``Naive`` strategy, on Avalanche's own
SplitFMNIST built from the local Fashion-MNIST files (no download), 200 images per experience.

Needs the ``avalanche`` extra (``pip install -e .[avalanche]``, or the no-deps list in docs/library.md).
With a strict rule, the first experience's outputs at every protected layer stay fixed through two
more experiences; without the plugin the same strategy changes them.
"""

from __future__ import annotations

import gzip
import shutil
import warnings

import pytest
import torch
import torch.nn as nn

from nscl.core.nullspace import NullSpaceRule
from nscl.data import paths

pytestmark = pytest.mark.slow  # importing Avalanche alone takes ~10 s

STRICT = NullSpaceRule("rel_tol", rel_tol=1e-10)


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    """The first three experiences of SplitFMNIST (classes in order), 200 train images each."""
    warnings.filterwarnings("ignore")
    from avalanche.benchmarks.classic import SplitFMNIST
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets

    found = [r / "fashion-mnist" for r in paths.search_roots(None).paths]
    src = next((p for p in found if (p / "train-images-idx3-ubyte.gz").exists()), None)
    assert src is not None, f"no Fashion-MNIST in {found}: run `make data`"
    raw = tmp_path_factory.mktemp("avalanche") / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in src.glob("*-ubyte.gz"):  # torchvision's layout: the unpacked idx files in FashionMNIST/raw
        with gzip.open(f) as a, open(raw / f.name[:-3], "wb") as b:
            shutil.copyfileobj(a, b)
    bm = SplitFMNIST(n_experiences=5, seed=0, fixed_class_order=list(range(10)), dataset_root=raw.parent.parent)
    train = [e.dataset.subset(range(200)) for e in bm.train_stream[:3]]
    test = [e.dataset.subset(range(200)) for e in bm.test_stream[:3]]
    return benchmark_from_datasets(train=train, test=test)


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def features(net, x):
    outs = {}
    hooks = [net[i].register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o.detach().clone())) for i in (1, 3)]
    net.eval()
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return outs


def train(stream, plugin):
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.supervised import Naive

    net = model()
    strategy = Naive(
        model=net,
        optimizer=torch.optim.Adam(net.parameters(), lr=1e-3),
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=32,
        train_epochs=2,
        evaluator=EvaluationPlugin(loggers=[]),
        plugins=[plugin] if plugin else [],
    )
    x1 = torch.stack([stream.train_stream[0].dataset.eval()[i][0] for i in range(200)])
    before = None
    for t, exp in enumerate(stream.train_stream):
        strategy.train(exp)
        if t == 0:
            before = features(net, x1)
    after = features(net, x1)
    change = {i: ((after[i] - before[i]).abs().max() / before[i].abs().max()).item() for i in before}
    moved = (net[1].weight - model()[1].weight).norm().item()
    return change, moved


def test_plugin_keeps_the_first_experience_fixed(stream):
    from nscl.apps.avalanche import NullSpacePlugin

    plugin = NullSpacePlugin(exclude=["5"], rule=STRICT)
    change, moved = train(stream, plugin)
    assert max(change.values()) <= 1e-4, change
    assert moved > 1e-2  # it trained
    report = plugin.protection.report()
    assert list(report) == ["1", "3"] and plugin.protection.tasks == 3
    assert 0 < report["1"]["null"] < 785


def test_without_the_plugin_the_first_experience_changes(stream):
    change, _ = train(stream, None)
    assert max(change.values()) > 1e-2, change

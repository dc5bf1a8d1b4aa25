"""The default null-space rule (chosen by the rule study, issue 13) and the presets that must not
follow it."""

from __future__ import annotations

from pathlib import Path

import pytest

from nscl.experiment import config, trainer
from nscl.data import make_stream

ROOT = Path(__file__).resolve().parent.parent


def test_default_first_layer_null_space_does_not_collapse_after_task1():
    """Suite-size MLP (params/base.yaml + params/suite.yaml: 2,000 samples/task, 2 epochs, 128-128)
    on real Split Fashion-MNIST, task 1 only. The paper's a_min rule (a=10) leaves about 30 of 784
    first-layer directions free here, and fewer after every later task: the layer is frozen and
    plasticity goes. The default must leave a sizeable share of the input space to later tasks."""
    cfg = config.resolve(
        [ROOT / "params/base.yaml", ROOT / "params/suite.yaml"],
        dict(method="adam_nscl", device="cpu", threads=1, quiet=True, checkpoint=False),
    )
    stream = make_stream(
        cfg["benchmark"],
        seed=cfg["seed"],
        samples_per_task=cfg["samples_per_task"],
        test_samples_per_task=cfg["test_samples_per_task"],
        val_fraction=cfg["val_fraction"],
    )
    stream.tasks = stream.tasks[:1]
    res = trainer.run(cfg, stream=stream)
    first = res["null_space"]["backbone.layers.0"]
    assert first["d"] == 784
    assert first["dims"][0] / first["d"] >= 0.25, first["dims"]
    assert res["acc"][0][0] > 95.0  # task 1 (T-shirt vs trouser) was learned
    # what a later task may still change stays a small share of the held-out task-1 input energy
    assert first["val_kept_energy"][0] < 0.15


@pytest.mark.parametrize(
    "preset", ["adam_nscl_official", "cifar100_10_paper", "cifar100_20_paper", "tinyimagenet_25_paper"]
)
def test_faithful_presets_keep_the_papers_a_min_rule(preset):
    """The faithful presets set the paper's rule explicitly, whatever the package default is,
    also when layered over params/base.yaml."""
    for files in ([], [ROOT / "params/base.yaml"]):
        cfg = config.resolve(files, dict(preset=preset))
        assert cfg["nullspace_rule"] == "a_min" and cfg["a_min_floor"] == "none"
        assert cfg["energy_step"] == 0.0
    assert config.resolve(overrides=dict(preset="cifar100_20_paper"))["a"] == 30.0

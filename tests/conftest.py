"""Shared fixtures: tiny configurations that train in seconds on CPU."""
import pytest
import torch

from nscl.experiment import config


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)
    yield


@pytest.fixture
def tiny_cfg():
    """A resolved config for a 5-task split_digits stream (~290 samples/task), 1 epoch, CPU, quiet."""
    def make(**overrides):
        base = dict(benchmark="split_digits", epochs=1, batch_size=32, hidden=[32, 32],
                    device="cpu", quiet=True, seed=0, nullspace_rule="a_min")  # exact invariance checks
        base.update(overrides)
        return config.resolve(overrides=base)
    return make

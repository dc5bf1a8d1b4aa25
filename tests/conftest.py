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
        base = dict(
            benchmark="split_digits",
            epochs=1,
            batch_size=32,
            hidden=[32, 32],
            device="cpu",
            quiet=True,
            seed=0,
            nullspace_rule="a_min",
        )  # exact invariance checks
        base.update(overrides)
        return config.resolve(overrides=base)

    return make


@pytest.fixture
def write_run():
    """Write a run record (``results.json``) without training: ``params`` over the defaults, every
    accuracy of the T x T matrix equal to ``value`` (so ACC = plasticity = value, BWT = 0), only the
    first ``done`` rows filled (default: all when complete). For tests of tables and listings."""
    import json
    from pathlib import Path

    from nscl.core.metrics import summary
    from nscl.experiment import records

    def make(
        d,
        value: float,
        status: str = "complete",
        done: int | None = None,
        T: int = 5,
        error: str | None = None,
        **params,
    ):
        d = Path(d)
        d.mkdir(parents=True, exist_ok=True)
        done = T if done is None else done
        acc = [[value if j <= i and i < done else None for j in range(T)] for i in range(T)]
        res = {
            "schema": records.SCHEMA,
            "status": status,
            "error": error,
            "name": d.name,
            "params": {**config.defaults(), "benchmark": "split_digits", **params},
            "tasks": [f"task{t + 1}" for t in range(T)],
            "acc": acc,
            "metrics": summary(acc),
            "timing": {"total_s": 1.0},
        }
        (d / records.RESULTS).write_text(json.dumps(res))
        return d

    return make

"""The capacity study's pieces through the real loop: SGP's scaled projection (nscl_sgp) between its
limits, and the capacity record every run carries (plasticity, r/d, exhaustion, free units, rank)."""

from __future__ import annotations

import pytest
import torch

from nscl.core import metrics
from nscl.experiment import config
from nscl.experiment import trainer as train


def resolved(**overrides):
    base = dict(
        benchmark="split_digits",
        n_tasks=3,
        epochs=1,
        batch_size=32,
        hidden=[32, 32],
        device="cpu",
        threads=1,
        quiet=True,
        seed=0,
        checkpoint=False,
    )
    base.update(overrides)
    return config.resolve(overrides=base)


# 54 training rows < 64 inputs and < 64 units: exact null spaces after task 1 (as tests/test_train.py)
INVARIANT = dict(
    samples_per_task=60,
    hidden=[64, 64],
    epochs=3,
    batch_size=16,
    lr=1e-2,
    n_tasks=2,
    nullspace_rule="a_min",
)


def task1_logit_change(cfg) -> float:
    """Relative change of task-1 logits on its training inputs from the end of task 1 to the end of task 2."""
    trainer = train.Trainer(cfg)
    x, _ = trainer.stream[0].train.get(torch.arange(len(trainer.stream[0].train)))
    out = []
    for t in range(2):
        trainer.seed_task(t)
        trainer.train_task(t)
        trainer.end_task(t)
        trainer.model.eval()
        with torch.no_grad():
            out.append(trainer.model(x, 0).clone())
    return ((out[1] - out[0]).norm() / out[0].norm()).item()


def test_nscl_sgp_between_hard_projection_and_plain_adam():
    """A huge importance scale makes every protected direction's s = 1: task-1 logits stay as under
    Adam-NSCL's hard projection. Scale 0 (s = sigma / sigma_max) lets task 2 move them, though less
    than unprojected fine-tuning does."""
    hard = task1_logit_change(resolved(method="adam_nscl", **INVARIANT))
    sgp_hard = task1_logit_change(resolved(method="nscl_sgp", sgp_scale=1e12, **INVARIANT))
    sgp_soft = task1_logit_change(resolved(method="nscl_sgp", sgp_scale=0.0, **INVARIANT))
    free = task1_logit_change(resolved(method="finetune", **INVARIANT))
    assert hard < 1e-5 and sgp_hard < 1e-5, (hard, sgp_hard)
    assert sgp_soft > 100 * max(sgp_hard, 1e-7)
    assert sgp_soft < free


def test_capacity_fractions_and_exhaustion_task():
    acc = [[90.0, None, None], [80.0, 70.0, None], [75.0, 60.0, 50.0]]
    null = {"a": {"d": 8, "dims": [6, 2, 1]}, "b": {"d": 4, "dims": [4, 4, 3]}}
    cap = metrics.capacity(acc, null, {"free_units": {"a": [3, 2, 0]}})
    assert cap["plasticity"] == [90.0, 70.0, 50.0]
    assert cap["layers"]["a"]["null_fraction"] == [0.75, 0.25, 0.125]
    assert cap["layers"]["a"]["exhausted_at"] == 3  # 0.25 is not below 0.25; 0.125 is, after task 3
    assert cap["layers"]["b"]["exhausted_at"] is None
    assert cap["free_units"] == {"a": [3, 2, 0]}
    # a partial run: only the finished tasks
    assert metrics.capacity(acc[:2] + [[None] * 3], null)["layers"]["a"]["null_dim"] == [6, 2]


@pytest.fixture(scope="module")
def records():
    torch.set_num_threads(1)
    out = {}
    for m in ("adam_nscl", "clnp", "nscl_prune", "nscl_lowrank", "finetune"):
        out[m] = train.run(resolved(method=m))
    return out


def test_every_run_records_its_capacity(records):
    for m, res in records.items():
        cap = res["capacity"]
        T = len(res["acc"])
        assert cap["plasticity"] == [res["acc"][t][t] for t in range(T)], m
        assert set(cap["layers"]) == set(res["null_space"]), m
        for name, layer in cap["layers"].items():
            h = res["null_space"][name]
            assert layer["null_fraction"] == [r / h["d"] for r in h["dims"]]
            assert layer["exhausted_at"] == metrics.exhausted_at(layer["null_fraction"])
    assert "free_units" not in records["adam_nscl"]["capacity"] and "active_rank" not in records["finetune"]["capacity"]
    for m in ("clnp", "nscl_prune"):
        units = records[m]["method_diagnostics"]["units"]
        assert records[m]["capacity"]["free_units"] == {n: u["free"] for n, u in units.items()}
    rank = records["nscl_lowrank"]["capacity"]["active_rank"]
    assert rank == {n: r["active_rank"] for n, r in records["nscl_lowrank"]["method_diagnostics"]["lowrank"].items()}
    assert all(len(v) == 3 for v in rank.values())


def test_learning_in_free_units(records):
    """clnp freezes kept units: all of a task's learning lands in the units free at its start (share 1).
    nscl_prune also trains kept units (projected), so part of it lands there (share < 1 after task 1)."""
    clnp = records["clnp"]["capacity"]["learning_in_free_units"]
    assert all(s == pytest.approx(1.0, abs=1e-12) for shares in clnp.values() for s in shares if s is not None)
    prune = records["nscl_prune"]["capacity"]["learning_in_free_units"]
    assert all(shares[0] == pytest.approx(1.0) for shares in prune.values())  # task 1: every unit is free
    assert any(s < 0.99 for shares in prune.values() for s in shares[1:] if s is not None)

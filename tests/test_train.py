"""The training loop (nscl.experiment.trainer) through its public entry points: invariance of Adam-NSCL through
the real Trainer, BN freezing, determinism, resume, NaN handling, every method, and the metrics."""

from __future__ import annotations

import json

import pytest
import torch

from nscl.core import metrics
from conftest import TINY
from nscl.experiment import config, records
from nscl.experiment import trainer as train
from nscl.methods import METHODS
from nscl.methods.base import FisherPenalty
from nscl.core.models import batchnorm_layers, projected_layers


def resolved(**overrides):
    return config.resolve(overrides={**TINY, "nullspace_rule": "a_min", **overrides})  # exact null spaces


def task1_snapshots(trainer):
    """Record, at the end of each task (before its covariance pass), task-1 logits on the task-1 training
    inputs the covariance is computed from, the backbone weights, the null spaces and the optimizer."""
    snaps, optimizers = [], []
    after_task, make_optimizer = trainer.method.after_task, trainer.method.make_optimizer

    def wrapped_after_task(t):
        after_task(t)
        data = trainer.stream[0].train
        x, _ = data.get(torch.arange(len(data)))
        trainer.model.eval()
        with torch.no_grad():
            logits = trainer.model(x, 0).clone()
        snaps.append(
            dict(
                logits=logits,
                spaces=dict(trainer.tracker.spaces),
                weights={n: m.weight.detach().clone() for n, m in projected_layers(trainer.model).items()},
                bn={
                    f"{n}.{k}": v.clone()
                    for n, m in batchnorm_layers(trainer.model).items()
                    for k, v in m.state_dict().items()
                },
            )
        )

    def wrapped_make_optimizer(t):
        opt, sched = make_optimizer(t)
        optimizers.append(opt)
        return opt, sched

    trainer.method.after_task = wrapped_after_task
    trainer.method.make_optimizer = wrapped_make_optimizer
    return snaps, optimizers


# ---- Adam-NSCL through the real loop ---------------------------------------------------------------
INVARIANT = dict(samples_per_task=60, hidden=[64, 64], epochs=3, batch_size=16, lr=1e-2, weight_decay=1e-3)


def test_trainer_adam_nscl_keeps_task1_logits_and_projects_every_step():
    """60 samples per task (54 train) < 64 inputs and < 64 hidden units: after task 1 every layer's
    covariance is rank-deficient, a_min with the rank floor picks exactly its null space, so task 2
    leaves task-1 logits unchanged up to float32 rounding -- although the loop calls
    ``zero_grad(set_to_none=True)`` (the PyTorch-2 pitfall) and the weights move."""
    trainer = train.Trainer(resolved(method="adam_nscl", **INVARIANT))
    snaps, opts = task1_snapshots(trainer)
    res = trainer.fit()
    s1, s2 = snaps[0], snaps[1]
    rel = ((s2["logits"] - s1["logits"]).norm() / s1["logits"].norm()).item()
    assert rel < 1e-5, rel
    for name, hist in res["null_space"].items():
        assert hist["rank"][0] + hist["dims"][0] == hist["d"]  # the null space after task 1 is exact
        # the weights moved during task 2, but only inside the task-1 null space
        dw = (s2["weights"][name] - s1["weights"][name]).reshape(len(s1["weights"][name]), -1).double()
        in_range = dw @ s2["spaces"][name].range_basis
        assert dw.norm() > 1e-2 * s1["weights"][name].norm()
        assert in_range.norm() < 1e-5 * dw.norm(), name
    # projection happened on every step of tasks >= 2 (2 layers each) and never on task 1
    assert [o.stats["projected_steps"] for o in opts] == [0] + [2 * o.stats["steps"] for o in opts[1:]]
    assert all(o.stats["steps"] > 0 for o in opts)
    assert res["method_diagnostics"]["optimizer_stats"] == opts[-1].stats
    assert res["acc"][1][0] == res["acc"][0][0]


def test_trainer_nested_eigen_update_keeps_task1_logits():
    """``eigen_update=nested`` through the real loop: null spaces never grow, and task 1 is still
    protected exactly."""
    trainer = train.Trainer(resolved(method="adam_nscl", eigen_update="nested", n_tasks=4, **INVARIANT))
    snaps, _ = task1_snapshots(trainer)
    res = trainer.fit()
    full = train.run(resolved(method="adam_nscl", n_tasks=4, **INVARIANT))
    for s in snaps[1:]:
        rel = ((s["logits"] - snaps[0]["logits"]).norm() / snaps[0]["logits"].norm()).item()
        assert rel < 1e-5, rel
    for name, hist in res["null_space"].items():
        dims = hist["dims"]
        assert dims == sorted(dims, reverse=True), dims
        assert all(n <= f for n, f in zip(dims, full["null_space"][name]["dims"]))
        assert dims[0] == full["null_space"][name]["dims"][0]  # task 1 is always a full decomposition


def test_subsampled_covariance_pass_counts_like_the_full_task():
    """``cov_samples`` weights the subset to the task's size, ``cov_patches`` keeps k rows per sample;
    with limits above the data size the pass is exactly the full one."""
    cnn = dict(model="cnn", cnn_channels=[4, 8], hidden=[16], samples_per_task=100, n_tasks=2)
    exact = train.Trainer(resolved(method="adam_nscl", **cnn))
    exact.fit()
    big = train.Trainer(resolved(method="adam_nscl", cov_samples=10_000, cov_patches=10_000, **cnn))
    big.fit()
    assert all(torch.equal(exact.tracker.cov.sums[n], big.tracker.cov.sums[n]) for n in exact.tracker.cov.sums)
    sub = train.Trainer(resolved(method="adam_nscl", cov_samples=30, cov_patches=5, **cnn))
    sub.fit()
    n_train = [len(t.train) for t in sub.stream]
    for name, layer in sub.tracker.layers.items():
        if isinstance(layer, torch.nn.Conv2d):  # 8x8 and 4x4 maps -> 5 of 64 / 16 positions per sample
            assert sub.tracker.cov.counts[name] == pytest.approx(5 * sum(n_train))
        else:
            assert sub.tracker.cov.counts[name] == pytest.approx(exact.tracker.cov.counts[name])
        rel = (
            (sub.tracker.cov.matrix(name) - exact.tracker.cov.matrix(name)).norm()
            / exact.tracker.cov.matrix(name).norm()
        ).item()
        assert 0 < rel < 0.5, (name, rel)


def test_trainer_finetune_changes_task1_logits():
    trainer = train.Trainer(resolved(method="finetune", **INVARIANT))
    snaps, _ = task1_snapshots(trainer)
    trainer.fit()
    rel = ((snaps[1]["logits"] - snaps[0]["logits"]).norm() / snaps[0]["logits"].norm()).item()
    assert rel > 1e-2, rel


@pytest.mark.parametrize("bn", ["freeze", "none"])
def test_bn_freeze_keeps_bn_params_and_running_stats(bn):
    cfg = resolved(method="adam_nscl", model="cnn", cnn_channels=[4, 8], hidden=[16], bn=bn, samples_per_task=80)
    trainer = train.Trainer(cfg)
    snaps, _ = task1_snapshots(trainer)
    trainer.fit()
    first, last = snaps[0]["bn"], snaps[-1]["bn"]
    assert len(first) == 2 * 5  # 2 BN layers x (weight, bias, running_mean, running_var, num_batches_tracked)
    same = {k: torch.equal(first[k], last[k]) for k in first}
    if bn == "freeze":
        assert all(same.values()), same
    else:
        assert not any(same[k] for k in first if not k.endswith("num_batches_tracked")), same


# ---- determinism, resume, failures --------------------------------------------------------------
def test_same_seed_same_results_other_seed_differs():
    runs_ = []
    for seed in (0, 0, 1):
        tr = train.Trainer(resolved(method="adam_nscl", seed=seed))
        res = tr.fit()
        runs_.append((res["acc"], res["null_space"], tr.model.state_dict()))
    (a0, n0, w0), (a1, n1, w1), (a2, _, w2) = runs_
    assert a0 == a1 and n0 == n1
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert a0 != a2
    assert not torch.equal(w0["backbone.layers.0.weight"], w2["backbone.layers.0.weight"])


@pytest.mark.parametrize(
    "method,extra",
    [
        ("adam_nscl", {}),
        ("ewc", {}),
        (
            "adam_nscl",
            dict(eigen_update="nested", model="cnn", cnn_channels=[4, 8], hidden=[16], cov_patches=5, cov_samples=100),
        ),
    ],
    ids=["adam_nscl", "ewc", "nested_subsampled"],
)
def test_killed_run_resumes_to_identical_results(method, extra, tmp_path, monkeypatch, kill_at_task):
    cfg = resolved(method=method, epochs=2, **extra)
    full = train.run(cfg, tmp_path / "full")

    killed = kill_at_task(train.Trainer(cfg, tmp_path / "resumed"))
    with pytest.raises(kill_at_task.Killed):
        killed.fit()
    partial = records.load(tmp_path / "resumed")
    assert partial["status"] == "running" and partial["metrics"]["tasks_done"] == 2
    assert records.load_checkpoint(tmp_path / "resumed")["task"] == 1
    # resuming with other parameters is refused rather than mixing two runs
    with pytest.raises(config.ConfigError, match="other parameters.*lr"):
        train.run(resolved(method=method, epochs=2, **{**extra, "lr": 0.5}), tmp_path / "resumed")

    resumed = train.run(cfg, tmp_path / "resumed")
    for key in ("status", "acc", "metrics", "null_space", "method_diagnostics", "params", "stream"):
        assert resumed[key] == full[key], key
    assert not (tmp_path / "resumed" / records.CHECKPOINT).exists()  # removed once complete
    spectra_full, spectra_res = records.load_spectra(tmp_path / "full"), records.load_spectra(tmp_path / "resumed")
    assert spectra_full.keys() == spectra_res.keys()
    assert all((spectra_full[k] == spectra_res[k]).all() for k in spectra_full)

    # a completed run is not retrained: the existing results come back
    def no_training(self, t, epochs=None):
        raise AssertionError("retrained a complete run")

    monkeypatch.setattr(train.Trainer, "train_task", no_training)
    again = train.run(cfg, tmp_path / "resumed")
    assert again["acc"] == full["acc"] and again["timing"] == records.load(tmp_path / "resumed")["timing"]

    # a complete run is never overwritten by a run with other parameters (nor its params.yaml)
    before = (tmp_path / "resumed" / records.RESULTS).read_bytes(), (tmp_path / "resumed" / records.PARAMS).read_bytes()
    with pytest.raises(config.ConfigError, match="complete run with other parameters.*seed"):
        train.run(resolved(method=method, epochs=2, **{**extra, "seed": 5}), tmp_path / "resumed")
    assert before == (
        (tmp_path / "resumed" / records.RESULTS).read_bytes(),
        (tmp_path / "resumed" / records.PARAMS).read_bytes(),
    )


def test_nan_loss_stops_with_task_epoch_step_and_keeps_finished_work(tmp_path, monkeypatch):
    cls = METHODS["finetune"]
    monkeypatch.setattr(cls, "penalty", lambda self, t: torch.tensor(float("nan")) if t == 1 else None)
    cfg = resolved(method="finetune")
    with pytest.raises(train.NonFiniteLossError, match=r"loss is nan at task 2, epoch 1, step 1"):
        train.run(cfg, tmp_path)
    with open(tmp_path / records.RESULTS) as f:
        res = json.load(f)  # plain json: readable, no NaN tokens
    assert res["status"] == "failed" and "task 2, epoch 1, step 1" in res["error"]
    assert res["acc"][0][0] is not None and res["acc"][1] == [None, None, None]
    assert res["metrics"]["tasks_done"] == 1 and res["metrics"]["acc"] == res["acc"][0][0]
    ckpt = records.load_checkpoint(tmp_path)
    assert ckpt["task"] == 0 and ckpt["acc"][0][0] == res["acc"][0][0]
    fresh = train.Trainer(cfg)
    fresh.model.load_state_dict(ckpt["model"])  # intact and loadable
    assert fresh.accuracy(0) == res["acc"][0][0]


@pytest.mark.parametrize("every", [1, 4, 100])
def test_deferred_nan_check_names_the_first_bad_step(every, tmp_path, monkeypatch):
    """The loss is looked at every ``nan_check_every`` steps (no host sync per step), yet the error
    names the step where it first went non-finite, and the record is marked failed."""
    calls = {"n": 0}

    def penalty(self, t):
        if t != 1:
            return None
        calls["n"] += 1
        return torch.tensor(float("inf") if calls["n"] in (3, 5) else 0.0)

    monkeypatch.setattr(METHODS["finetune"], "penalty", penalty)
    cfg = resolved(method="finetune", nan_check_every=every)
    steps_per_epoch = -(-len(train.Trainer(cfg).stream[1].train) // cfg["batch_size"])
    with pytest.raises(train.NonFiniteLossError, match=r"loss is inf at task 2, epoch 1, step 3 "):
        train.run(cfg, tmp_path)
    res = records.load(tmp_path)
    assert res["status"] == "failed" and "task 2, epoch 1, step 3 " in res["error"]
    # checked before step 3's backward, at step 4, or at the end of the epoch
    assert calls["n"] == {1: 3, 4: 4, 100: steps_per_epoch}[every] and steps_per_epoch > 5
    assert res["metrics"]["tasks_done"] == 1


def test_huge_lr_is_reported_as_non_finite():
    with pytest.raises(train.NonFiniteLossError, match=r"at task \d+, epoch \d+, step \d+"):
        train.run(resolved(method="finetune", lr=1e12, epochs=3))


# ---- every method on the same stream ------------------------------------------------------------
@pytest.fixture(scope="module")
def method_results():
    torch.set_num_threads(1)
    out = {}
    for m in ("finetune", "ewc", "joint", "adam_nscl"):
        tr = train.Trainer(resolved(method=m, epochs=3))
        out[m] = (tr.fit(), tr)
    return out


def test_every_method_runs_and_reports(method_results):
    for m, (res, _) in method_results.items():
        T = len(res["acc"])
        assert res["status"] == "complete" and res["params"]["method"] == m
        assert all(res["acc"][i][j] is not None for i in range(T) for j in range(i + 1))
        assert res["metrics"]["acc"] > 100 / 3 + 10, m  # well above chance on 3-class tasks


def test_joint_beats_finetune_on_task1_and_nscl_forgets_less(method_results):
    acc = {m: r["acc"] for m, (r, _) in method_results.items()}
    bwt = {m: r["metrics"]["bwt"] for m, (r, _) in method_results.items()}
    assert acc["joint"][-1][0] >= acc["finetune"][-1][0]
    assert bwt["finetune"] < 0  # the stream does forget under fine-tuning
    assert bwt["adam_nscl"] >= bwt["finetune"] - 1.0


def test_old_heads_are_frozen_and_joint_trains_all_heads(method_results):
    # finetune: head 0 got no gradient step after task 1 -> task-1 logits change only through the backbone
    for m in ("finetune", "adam_nscl"):
        tr = method_results[m][1]
        assert tr.method.trained_heads(2) == [2]
        names = {id(p) for g in tr.method.param_groups(2) for p in g["params"]}
        assert not any(id(p) in names for p in tr.model.heads[0].parameters())
    assert method_results["joint"][1].method.trained_heads(2) == [0, 1, 2]


def test_ewc_penalty_zero_at_anchor_positive_away(method_results):
    tr = method_results["ewc"][1]
    pen = tr.method.ewc
    assert len(pen.fishers) == 3
    params = dict(tr.model.backbone.named_parameters())
    saved = {n: p.detach().clone() for n, p in params.items()}
    with torch.no_grad():
        for n, p in params.items():  # put the model at the last anchor and zero the other tasks' terms
            p.copy_(pen.anchors[-1][n])
    only_last = FisherPenalty(params, pen.lam)
    only_last.fishers, only_last.anchors = pen.fishers[-1:], pen.anchors[-1:]
    assert only_last.penalty().item() == 0.0
    with torch.no_grad():
        for p in params.values():
            p.add_(0.1)
    by_hand = pen.lam * sum((pen.fishers[-1][n] * 0.1**2).sum() for n in params)
    assert only_last.penalty().item() == pytest.approx(by_hand.item(), rel=1e-4)
    assert by_hand.item() > 0
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(saved[n])


# ---- metrics ------------------------------------------------------------------------------------
def test_metrics_on_constructed_matrix():
    acc = [[90.0, None, None], [70.0, 80.0, None], [60.0, 75.0, 85.0]]
    m = metrics.summary(acc)
    assert m["acc"] == pytest.approx((60 + 75 + 85) / 3)
    assert m["plasticity"] == pytest.approx((90 + 80 + 85) / 3)
    assert m["bwt"] == pytest.approx(((60 - 90) + (75 - 80)) / 2)
    assert m["forgetting"] == pytest.approx(((90 - 60) + (80 - 75)) / 2)
    assert m["tasks_done"] == 3
    # max-based forgetting differs from -BWT when an old task improved before dropping
    acc2 = [[50.0, None, None], [70.0, 80.0, None], [65.0, 80.0, 90.0]]
    m2 = metrics.summary(acc2)
    assert m2["bwt"] == pytest.approx(((65 - 50) + 0) / 2)
    assert m2["forgetting"] == pytest.approx(((70 - 65) + 0) / 2)
    # partial run: only finished rows count
    m3 = metrics.summary([[90.0, None, None], [70.0, 80.0, None], [None, None, None]])
    assert m3["tasks_done"] == 2 and m3["acc"] == pytest.approx(75.0) and m3["bwt"] == pytest.approx(-20.0)
    one = metrics.summary([[42.0]])
    assert one["acc"] == 42.0 and one["bwt"] is None and one["forgetting"] is None
    assert metrics.summary([[None]])["tasks_done"] == 0


def test_progress_bar_per_task_unless_quiet_or_nscl_quiet(tiny_cfg, capsys, monkeypatch):
    """quiet=False shows one bar per run, counted in tasks; $NSCL_QUIET (make test, make notebooks)
    silences it whatever the parameter says, so stored notebook outputs hold no bars."""
    cfg = tiny_cfg(method="finetune", quiet=False, n_tasks=2)
    monkeypatch.delenv("NSCL_QUIET", raising=False)
    shown = train.run(cfg)
    err = capsys.readouterr().err
    assert "finetune on split_digits" in err and "2/2" in err and "task" in err
    monkeypatch.setenv("NSCL_QUIET", "1")
    silent = train.run(cfg)
    assert capsys.readouterr().err == ""
    assert silent["acc"] == shown["acc"]


def test_progress_bar_label_names_the_method_the_stream_and_only_parameters_it_reads():
    """A bar says which run it is in a few words: never a sweep folder's name, never a parameter the
    method does not read (issue 27: adam_nscl's bar named nuclear_lambda)."""
    from nscl.experiment import config as config_mod
    from nscl.experiment.trainer import Trainer

    def label(**over):
        t = Trainer.__new__(Trainer)  # the label reads only the config
        t.cfg = config_mod.resolve(overrides={"benchmark": "permuted_fmnist", **over})
        return t._bar_label()

    assert label(method="adam_nscl") == "adam_nscl on permuted_fmnist"
    assert label(method="adam_nscl", energy=0.99, nuclear_lambda=0.01) == "adam_nscl energy=0.99 on permuted_fmnist"
    assert label(method="finetune", energy=0.99) == "finetune on permuted_fmnist"  # finetune does not project
    assert label(method="lowrank", nuclear_lambda=0.001) == "lowrank nuclear_lambda=0.001 on permuted_fmnist"
    long = label(method="nscl_lowrank", nuclear_lambda=0.001, rank_schedule=[0.25, 0.5, 0.75, 1.0], energy=0.99)
    assert long.startswith("nscl_lowrank ") and long.endswith(" on permuted_fmnist") and len(long) <= 64

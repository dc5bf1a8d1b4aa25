"""CLNP / nscl_prune invariants: exact zeros, frozen weights, bit-identical old tasks, the margin."""
import math

import pytest
import torch

from nscl.core import pruning
from nscl.experiment import config
from nscl.data import make_stream
from nscl.experiment.trainer import Trainer

pytestmark = pytest.mark.filterwarnings("ignore:split_digits")


def _cfg(**kw):
    base = dict(benchmark="split_digits", n_tasks=3, epochs=1, batch_size=32, hidden=[32, 32], device="cpu",
                quiet=True, seed=0, method="clnp", checkpoint=False)
    base.update(kw)
    return config.resolve(overrides=base)


def _synthetic(shape, n_tasks=2):
    return make_stream("synthetic", seed=0, n_tasks=n_tasks, shape=shape, n_classes=2 * n_tasks,
                       train_per_class=24, test_per_class=8)


def _task(tr, t):
    """One task through the trainer's own loop and boundary (after_task = pruning, covariance, eval)."""
    torch.manual_seed(1000 + t)
    tr.train_task(t)
    tr.end_task(t)


def _test_x(tr, t, n=64):
    x, _ = tr.stream[t].test.get(torch.arange(min(n, len(tr.stream[t].test))))
    return x


def _dead(masks):
    return {n: a.cpu() == 0 for n, a in masks.alive.items()}


# ---- threshold search -------------------------------------------------------------------------------
def test_search_threshold_is_log_bisection_within_margin():
    calls = []

    def acc(theta):  # monotone: accuracy holds until theta = 0.02, then collapses
        calls.append(theta)
        return 90.0 if theta <= 0.02 else 50.0

    res = pruning.search_threshold(acc, 90.0, 1.0, theta_min=1e-4, theta_max=1.0, steps=12)
    assert len(calls) == 14  # hi, lo, then 12 bisection probes, not a linear sweep
    assert res["threshold"] <= 0.02 and res["threshold"] > 0.02 / 1.01  # converged on a log scale
    assert res["acc"] == 90.0

    def bumpy(theta):  # non-monotone: whatever is returned was evaluated and met the margin
        return 90.0 - 3.0 * (math.sin(40 * math.log(theta)) > 0.3) if theta > 0 else 90.0

    res = pruning.search_threshold(bumpy, 90.0, 1.0, steps=10)
    assert res["threshold"] is not None and [res["threshold"], res["acc"]] in res["evaluations"]
    assert 90.0 - bumpy(res["threshold"]) <= 1.0
    # even the smallest threshold breaks the margin: prune only inactive units (0), else nothing
    assert pruning.search_threshold(lambda th: 80.0 if th > 0 else 90.0, 90.0, 1.0)["threshold"] == 0.0
    assert pruning.search_threshold(lambda th: 80.0, 90.0, 1.0)["threshold"] is None


# ---- exact zeros ------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["mlp", "cnn", "resnet18"])
def test_pruned_units_output_exactly_zero(model):
    if model == "mlp":
        tr = Trainer(_cfg(bias=True, prune_margin=100.0, n_tasks=2))
    else:
        shape = (1, 12, 12) if model == "cnn" else (3, 16, 16)
        tr = Trainer(_cfg(benchmark="synthetic", model=model, width=4, cnn_channels=[4, 8], hidden=[16],
                          bias=model == "cnn", prune_margin=100.0, n_tasks=2), stream=_synthetic(shape))
    _task(tr, 0)
    masks = tr.method.masks
    dead = _dead(masks)
    assert sum(int(d.sum()) for d in dead.values()) > 0
    assert all(int((~d).sum()) > 0 for d in dead.values())  # the top unit of every group survives
    graph = masks.graph
    seen = {"mask": 0, "wire": 0}
    hooks = []
    for name, g in graph.groups.items():
        for m in g.mask_at:
            def check_out(module, inputs, out, name=name):
                assert out[:, dead[name]].abs().max() == 0 if dead[name].any() else True
                seen["mask"] += 1
            hooks.append(m.register_forward_hook(check_out))
    for w in graph.wires:
        if w.in_group is None:
            continue
        cols = dead[w.in_group].repeat_interleave(w.in_repeat if isinstance(w.module, torch.nn.Linear) else 1)

        def check_in(module, inputs, cols=cols):
            x = inputs[0]
            x = x.flatten(1) if isinstance(module, torch.nn.Linear) else x
            if cols.any():
                assert x[:, cols].abs().max() == 0  # what consumers read: exact zeros, bias/BN shift masked
            seen["wire"] += 1
        hooks.append(w.module.register_forward_pre_hook(check_in))
    tr.model.eval()
    with torch.no_grad():
        x = 10 * torch.randn(16, *tr.stream.input_shape)  # any input, far outside the data
        feats = tr.model.features(x)
        tr.model.train()
        tr.model.features(x)  # also with batch statistics
    for h in hooks:
        h.remove()
    assert seen["mask"] >= 2 * sum(len(g.mask_at) for g in graph.groups.values())
    assert seen["wire"] > 0
    fcols = dead[graph.feature_group].repeat_interleave(graph.feature_repeat)
    assert feats[:, fcols].abs().max() == 0
    assert tr.model.heads[0].weight[:, fcols].abs().max() == 0
    # the next task re-initialises and revives them
    torch.manual_seed(1)
    tr.method.before_task(1)
    assert all(a.min() == 1 for a in masks.alive.values())


# ---- clnp: old tasks bit-identical, fixed weights never move ----------------------------------
def _fixed_entries(masks, t):
    """(module, fixed (out, d) bool) per wire under clnp before task t."""
    out = []
    for w in masks.graph.wires:
        fixed = masks.interference(w) | masks.fixed_rows(w.out_group, t)[:, None]
        out.append((w, fixed))
    return out


def _flat(module):
    w = module.weight.detach().view(module.weight.shape[0], -1)
    if module.bias is not None:
        w = torch.cat([w, module.bias.detach()[:, None]], 1)
    return w.clone()


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_clnp_old_tasks_bit_identical_and_masks_hold_under_adam_weight_decay(model):
    kw = dict(weight_decay=0.5, lr=0.02, prune_margin=5.0 if model == "mlp" else 30.0, l1=1e-3)
    if model == "mlp":
        tr = Trainer(_cfg(bias=True, **kw))
    else:
        tr = Trainer(_cfg(benchmark="synthetic", model="cnn", cnn_channels=[4, 8], hidden=[16], n_tasks=3, **kw),
                     stream=_synthetic((1, 12, 12), n_tasks=3))
    _task(tr, 0)
    masks = tr.method.masks
    x0 = _test_x(tr, 0)
    tr.model.eval()
    with torch.no_grad():
        logits0 = tr.model(x0, 0).clone()
    fixed = _fixed_entries(masks, 1)
    assert sum(int(f.sum()) for _, f in fixed) > 0
    before = {w.name: _flat(w.module) for w, _ in fixed}
    zeros = {w.name: masks.interference(w) for w, _ in fixed}
    bns = [(bn, masks.fixed_rows(g, 1), bn.running_mean.clone(), bn.running_var.clone(),
            bn.weight.detach().clone()) for g, bn in masks.norms()]
    tr.cfg["epochs"] = 8  # many Adam steps with strong weight decay
    _task(tr, 1)
    tr.cfg["epochs"] = 1
    moved = free_bn = 0
    for w, f in fixed:
        after = _flat(w.module)
        assert torch.equal(after[f], before[w.name][f]), w.name  # bit-identical
        assert after[zeros[w.name]].abs().max() == 0 if zeros[w.name].any() else True
        moved += int((after[~f] != before[w.name][~f]).sum())
    assert moved > 0  # free units did train
    for bn, rows, mean, var, gamma in bns:
        assert torch.equal(bn.running_mean[rows], mean[rows]) and torch.equal(bn.running_var[rows], var[rows])
        assert torch.equal(bn.weight.detach()[rows], gamma[rows])
        free_bn += int((~rows).sum())
        if (~rows).any():
            assert not torch.equal(bn.running_mean[~rows], mean[~rows])
    assert free_bn > 0 or model == "mlp"
    _task(tr, 2)
    tr.model.eval()
    with torch.no_grad():
        assert torch.equal(tr.model(x0, 0), logits0)
    assert tr.acc[2][0] == tr.acc[0][0] and tr.acc[2][1] == tr.acc[1][1]
    d = tr.method.diagnostics()
    assert len(d["threshold"]) == 3 and d["optimizer_stats"]["projected_steps"] > 0


# ---- margin on the held-out split ---------------------------------------------------------------
def test_margin_respected_on_val_split_never_test():
    margin = 2.0
    tr = Trainer(_cfg(prune_margin=margin, l1_target="activations", l1=1e-3))
    pruned_any = False
    for t in range(3):
        torch.manual_seed(1000 + t)
        tr.train_task(t)
        base = tr.accuracy(t, "val")
        test_split = tr.stream[t].test
        tr.stream.tasks[t].test = None  # pruning must not touch the test set
        try:
            tr.method.after_task(t)
        finally:
            tr.stream.tasks[t].test = test_split
        after = tr.accuracy(t, "val")
        rec = tr.method.records[t]
        assert base - after <= margin + 1e-9
        assert rec["val_acc"] == base and rec["val_acc_pruned"] == after
        pruned_any |= rec["pruned_total"] > 0 and rec["threshold"] > 0
        tr.tracker.cov.update(tr.model.features, (x for x, _, _ in tr.batches([(tr.stream[t].train, t)])))
        tr.tracker.recompute(t)
    assert pruned_any


def test_finetune_keeps_margin_and_masks():
    tr = Trainer(_cfg(prune_margin=3.0, prune_finetune_epochs=2, n_tasks=2))
    _task(tr, 0)
    rec = tr.method.records[0]
    assert "val_acc_finetuned" in rec and rec["val_acc"] - rec["val_acc_finetuned"] <= 3.0 + 1e-9
    assert tr.method.records[0]["val_acc_finetuned"] == tr.accuracy(0, "val")
    dead = _dead(tr.method.masks)
    assert any(d.any() for d in dead.values())


# ---- nscl_prune ---------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["mlp", "resnet18"])
def test_nscl_prune_keeps_old_layer_outputs(model, monkeypatch):
    kw = dict(method="nscl_prune", prune_margin=3.0, nullspace_rule="rel_tol", rel_tol=1e-10, lr=0.01,
              weight_decay=0.1)
    if model == "mlp":
        # a fixed threshold keeps units of every task, so later tasks' units feed old units' layers
        # and the owner-restricted projection is exercised (the tiny val split cannot tell units apart)
        monkeypatch.setattr(pruning, "search_threshold",
                            lambda *a, **k: {"threshold": 0.3, "acc": 0.0, "evaluations": []})
        tr = Trainer(_cfg(samples_per_task=12, hidden=[128, 128], **kw))  # rank-deficient: real null spaces
    else:
        tr = Trainer(_cfg(benchmark="synthetic", model="resnet18", width=4, n_tasks=3, **kw),
                     stream=_synthetic((3, 16, 16), n_tasks=3))
    masks = tr.method.masks
    outs = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: outs.__setitem__(n, o.detach().clone()))
             for n, g in masks.graph.groups.items() for m in g.mask_at[-1:]]

    def snapshot(s):
        """Task s's kept-unit outputs and logits on its training data: the inputs of its covariance
        (a null space of 11 samples says nothing about unseen test images)."""
        x, _ = tr.stream[s].train.get(torch.arange(min(64, len(tr.stream[s].train))))
        tr.model.eval()
        with torch.no_grad():
            logits = tr.model(x, s)
        return x, logits, {n: o[:, masks.owner[n] <= s] for n, o in outs.items()}

    refs, rows0 = [], None
    for t in (0, 1):
        _task(tr, t)
        refs.append(snapshot(t))
        if t == 0:
            rows0 = {w.name: _flat(w.module)[masks.owner[w.out_group] == 0] for w in masks.graph.wires}
    torch.manual_seed(1002)
    tr.train_task(2)
    for w in masks.graph.wires:  # interference weights stayed exactly zero through the updates
        inter = masks.interference(w)
        if inter.any():
            assert _flat(w.module)[inter].abs().max() == 0, w.name
    tr.end_task(2)
    for s, (x, logits, ref) in enumerate(refs):
        owners = {n: masks.owner[n][masks.owner[n] <= s] for n in ref}
        _, logits_now, now = snapshot(s)
        for n, o in ref.items():
            assert owners[n].numel() == o.shape[1]
            scale = o.abs().max().item() + 1e-6 if o.numel() else 1.0
            assert (now[n] - o).abs().max().item() <= 1e-4 * scale if o.numel() else True, (s, n)
        assert (logits_now - logits).abs().max().item() <= 1e-4 * (logits.abs().max().item() + 1e-6), s
    for h in hooks:
        h.remove()
    # kept units were not frozen: their incoming weights moved (inside the null space; the MLP's
    # 11 training samples per task leave one, the ResNet's im2col rows fill every conv's input space)
    change = max((_flat(w.module)[masks.owner[w.out_group] == 0] - rows0[w.name]).abs().max().item()
                 for w in masks.graph.wires if rows0[w.name].numel())
    assert change > 1e-3 or model == "resnet18"
    assert tr.method.optimizer.stats["projected_steps"] > 0
    d = tr.method.diagnostics()
    assert d["projection"] and all(len(v) == 2 for v in d["projection"].values())
    assert set(tr.tracker.history) == {w.name for w in masks.graph.wires}


def test_resume_state_roundtrip():
    tr = Trainer(_cfg(n_tasks=2))
    _task(tr, 0)
    state = tr.method.state_dict()
    tr2 = Trainer(_cfg(n_tasks=2))
    tr2.method.load_state_dict(state)
    for n in tr.method.masks.owner:
        assert torch.equal(tr2.method.masks.owner[n], tr.method.masks.owner[n])
        assert torch.equal(tr2.method.masks.alive[n], tr.method.masks.alive[n])
    assert tr2.method.diagnostics()["threshold"] == tr.method.diagnostics()["threshold"]


def test_pruning_needs_a_val_split():
    with pytest.raises(config.ConfigError, match="val_fraction"):
        Trainer(_cfg(val_fraction=0.0))

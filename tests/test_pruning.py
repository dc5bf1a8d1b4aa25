"""CLNP / nscl_prune invariants: exact zeros, frozen weights, bit-identical old tasks, the margin."""

import copy
import math

import pytest
import torch

from nscl.core import pruning
from conftest import TINY
from nscl.experiment import config
from nscl.data import make_stream
from nscl.experiment.trainer import Trainer

pytestmark = pytest.mark.filterwarnings("ignore:split_digits")


def _cfg(**kw):
    return config.resolve(overrides={**TINY, "method": "clnp", "checkpoint": False, **kw})


def _synthetic(shape, n_tasks=2):
    return make_stream(
        "synthetic", seed=0, n_tasks=n_tasks, shape=shape, n_classes=2 * n_tasks, train_per_class=24, test_per_class=8
    )


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


def test_per_group_search_shares_the_margin_layer_by_layer():
    margin = 3.0
    cost = {
        "a": lambda th: 2.0 if th > 0.5 else 0.0,  # free up to 0.5, then over its share (1)
        "b": lambda th: 1.5 if th > 0.01 else 0.0,  # over its own share (1), within a + b's (2)
        "c": lambda th: 2.0 if th > 0.1 else 0.0,
    }  # 1.5 + 2 > 3: must stop at 0.1
    seen = []

    def acc(thetas):
        seen.append(dict(thetas))
        return 90.0 - sum(cost[g](th) for g, th in thetas.items() if th is not None)

    res = pruning.search_thresholds_per_group(acc, ["a", "b", "c"], 90.0, margin, steps=12)
    th, layers = res["thresholds"], res["layers"]
    assert 0.5 / 1.01 < th["a"] <= 0.5 and th["b"] == 1.0 and 0.1 / 1.01 < th["c"] <= 0.1
    assert [layers[g]["budget"] for g in "abc"] == pytest.approx([1.0, 2.0, 3.0])
    assert [layers[g]["acc"] for g in "abc"] == [90.0, 88.5, 88.5] and res["acc"] == 88.5
    # groups are searched in order, each with the earlier groups' thresholds applied, later ones absent
    assert all(set(d) == {"a"} for d in seen[:14]) and all(d["a"] == th["a"] for d in seen[14:])
    assert all("c" not in d for d in seen if d.get("b") not in (None, th["b"]))
    # nothing fits: that group prunes nothing and the accuracy stays the earlier groups'
    res = pruning.search_thresholds_per_group(lambda ths: 90.0 - 10 * (ths.get("b") is not None), ["a", "b"], 90.0, 1.0)
    assert res["thresholds"] == {"a": 1.0, "b": None} and res["acc"] == 90.0


# ---- exact zeros ------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["mlp", "cnn", "resnet18"])
def test_pruned_units_output_exactly_zero(model):
    if model == "mlp":
        tr = Trainer(_cfg(bias=True, prune_margin=100.0, n_tasks=2))
    else:
        shape = (1, 12, 12) if model == "cnn" else (3, 16, 16)
        tr = Trainer(
            _cfg(
                benchmark="synthetic",
                model=model,
                width=4,
                cnn_channels=[4, 8],
                hidden=[16],
                bias=model == "cnn",
                prune_margin=100.0,
                n_tasks=2,
            ),
            stream=_synthetic(shape),
        )
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
        tr = Trainer(
            _cfg(benchmark="synthetic", model="cnn", cnn_channels=[4, 8], hidden=[16], n_tasks=3, **kw),
            stream=_synthetic((1, 12, 12), n_tasks=3),
        )
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
    bns = [
        (bn, masks.fixed_rows(g, 1), bn.running_mean.clone(), bn.running_var.clone(), bn.weight.detach().clone())
        for g, bn in masks.norms()
    ]
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
        pruned_any |= rec["pruned_total"] > 0 and any(th for th in rec["thresholds"].values())
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
    kw = dict(method="nscl_prune", prune_margin=3.0, nullspace_rule="rel_tol", rel_tol=1e-10, lr=0.01, weight_decay=0.1)
    if model == "mlp":
        # a fixed threshold keeps units of every task, so later tasks' units feed old units' layers
        # and the owner-restricted projection is exercised (the tiny val split cannot tell units apart)
        monkeypatch.setattr(
            pruning, "search_threshold", lambda *a, **k: {"threshold": 0.3, "acc": 0.0, "evaluations": []}
        )
        tr = Trainer(_cfg(samples_per_task=12, hidden=[128, 128], **kw))  # rank-deficient: real null spaces
    else:
        tr = Trainer(
            _cfg(benchmark="synthetic", model="resnet18", width=4, n_tasks=3, **kw),
            stream=_synthetic((3, 16, 16), n_tasks=3),
        )
    masks = tr.method.masks
    outs = {}
    hooks = [
        m.register_forward_hook(lambda mod, i, o, n=n: outs.__setitem__(n, o.detach().clone()))
        for n, g in masks.graph.groups.items()
        for m in g.mask_at[-1:]
    ]

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
    change = max(
        (_flat(w.module)[masks.owner[w.out_group] == 0] - rows0[w.name]).abs().max().item()
        for w in masks.graph.wires
        if rows0[w.name].numel()
    )
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


# ---- conv channels: per-layer graceful forgetting on a small BatchNorm CNN -------------------------------
def _bn_cnn(method, **kw):
    """Small BN CNN (conv biases on: BN and bias shifts could leak) on real digit images, 30% val split."""
    return Trainer(
        _cfg(
            model="cnn",
            cnn_channels=[8, 16],
            hidden=[32],
            bias=True,
            n_tasks=2,
            epochs=3,
            val_fraction=0.3,
            prune_margin=6.0,
            method=method,
            **kw,
        )
    )


def _conv_groups(masks):
    return [n for n in masks.graph.groups if ".convs." in n]


@pytest.mark.parametrize("method", ["clnp", "nscl_prune"])
def test_conv_channels_pruned_per_layer_exact_zero_and_old_outputs_kept(method):
    kw = dict(nullspace_rule="rel_tol", rel_tol=1e-10) if method == "nscl_prune" else {}
    tr = _bn_cnn(method, prune_thresholds="per_layer", **kw)
    masks = tr.method.masks
    convs = _conv_groups(masks)
    torch.manual_seed(1000)
    tr.train_task(0)
    # one channel made inactive through its BatchNorm (the way a BN'd channel goes silent)
    bn0 = masks.graph.groups[convs[0]].norms[0]
    with torch.no_grad():
        bn0.weight[0], bn0.bias[0] = 0.0, -1.0
    trained = copy.deepcopy(tr.model.state_dict())
    fresh = masks.state_dict()

    # Relative activity is not comparable across layers: scaling one MLP unit's input row by c and
    # its head column by 1/c leaves the network's function unchanged but divides every other unit's
    # relative score in that layer by c. One global threshold must then stay below those scores,
    # so it prunes no conv channel; per-layer thresholds choose the same channels either way.
    mlp, head = tr.model.backbone.mlp.layers[0], tr.model.heads[0]
    x0 = _test_x(tr, 0)
    tr.model.eval()
    with torch.no_grad():
        ref = tr.model(x0, 0)
        mlp.weight[0] *= 1e3
        mlp.bias[0] *= 1e3
        head.weight[:, 0] /= 1e3
        assert torch.allclose(tr.model(x0, 0), ref, atol=1e-4)
    rescaled = copy.deepcopy(tr.model.state_dict())
    conv_pruned = {}
    for mode in ("global", "per_layer"):
        tr.model.load_state_dict(rescaled)
        masks.load_state_dict(fresh)
        tr.cfg["prune_thresholds"] = mode
        r = tr.method.prune(0)
        conv_pruned[mode] = {n: _dead(masks)[n].clone() for n in convs}
        assert r["val_acc"] - r["val_acc_pruned"] <= 6.0 + 1e-9
    assert not conv_pruned["global"][convs[1]].any()
    tr.model.load_state_dict(trained)
    masks.load_state_dict(fresh)
    tr.method.records, tr.method.activity_log = [], {n: [] for n in masks.graph.groups}

    tr.end_task(0)  # per_layer, on the network as trained
    rec = tr.method.records[0]
    dead = _dead(masks)
    assert dead[convs[0]][0]  # the inactive channel is pruned
    assert rec["pruned"][convs[1]] >= 1  # and an evenly active layer gives up its least active channels
    assert all(torch.equal(dead[n], conv_pruned["per_layer"][n]) for n in convs)
    # graceful forgetting per layer: the trained network with the prunes of the first k groups only
    # loses at most k/G of the margin on val (re-evaluated here, not read from the record)
    groups = list(rec["layers"])
    assert groups == [n for n in masks.graph.groups if rec["candidates"][n] > 0]
    final = ({n: a.clone() for n, a in masks.alive.items()}, copy.deepcopy(tr.model.state_dict()))
    tr.model.load_state_dict(trained)
    for k, g in enumerate(groups):
        masks.set_alive(
            {n: (~dead[n]).float() if n in groups[: k + 1] else torch.ones(len(dead[n])) for n in masks.alive}
        )
        acc = tr.accuracy(0, "val")
        assert rec["val_acc"] - acc <= 6.0 * (k + 1) / len(groups) + 1e-9, g
        assert acc == rec["layers"][g]["acc"]
    masks.set_alive(final[0])
    tr.model.load_state_dict(final[1])
    assert rec["val_acc"] - tr.accuracy(0, "val") <= 6.0 + 1e-9 and tr.accuracy(0, "val") == rec["val_acc_pruned"]

    # exact zeros after BN: give the pruned channels a large BN shift, conv bias and running mean
    x0 = _test_x(tr, 0)
    tr.model.eval()
    with torch.no_grad():
        logits0 = tr.model(x0, 0).clone()
        for n in convs:
            g, wire = masks.graph.groups[n], next(w for w in masks.graph.wires if w.out_group == n)
            d = dead[n].to(torch.bool)
            g.norms[0].bias[d] = 5.0
            g.norms[0].running_mean[d] = -3.0
            wire.module.bias[d] = 7.0
    outs = {}
    hooks = [
        masks.graph.groups[n]
        .norms[0]
        .register_forward_hook(lambda m, i, o, n=n: outs.__setitem__(n, o.detach().clone()))
        for n in convs
    ]
    stats = copy.deepcopy(tr.model.state_dict())  # a train-mode pass moves BN running statistics
    for train_mode in (False, True):
        tr.model.train(train_mode)
        with torch.no_grad():
            tr.model.features(x0)
        for n in convs:
            if dead[n].any():
                assert outs[n][:, dead[n]].abs().max() == 0, (n, train_mode)
            assert outs[n][:, ~dead[n]].abs().max() > 0
    for h in hooks:
        h.remove()
    tr.model.load_state_dict(stats)
    tr.model.eval()
    with torch.no_grad():
        assert torch.equal(tr.model(x0, 0), logits0)  # the shifts of pruned channels leak nowhere

    # task 2 trains the freed channels; old task's kept units (and logits) stay as they were
    kept = {}
    hooks = [
        masks.graph.groups[n]
        .mask_at[-1]
        .register_forward_hook(lambda m, i, o, n=n: kept.__setitem__(n, o.detach().clone()))
        for n in masks.graph.groups
    ]
    xtr, _ = tr.stream[0].train.get(torch.arange(64))
    with torch.no_grad():
        tr.model(xtr, 0)
    ref = {n: o[:, masks.owner[n] == 0].clone() for n, o in kept.items()}
    ref_logits = tr.model(xtr, 0).detach().clone()
    conv_before = {n: _flat(next(w for w in masks.graph.wires if w.out_group == n).module) for n in convs}
    _task(tr, 1)
    tr.model.eval()
    with torch.no_grad():
        logits = tr.model(xtr, 0)
    for h in hooks:
        h.remove()
    for n in convs:  # the freed channels were re-initialised and trained
        free0 = dead[n]
        if free0.any():
            after = _flat(next(w for w in masks.graph.wires if w.out_group == n).module)
            assert not torch.equal(after[free0], conv_before[n][free0])
    for n, o in ref.items():
        now = kept[n][:, masks.owner[n] == 0]
        if method == "clnp":
            assert torch.equal(now, o), n
        else:
            assert (now - o).abs().max().item() <= 1e-4 * (o.abs().max().item() + 1e-6), n
    if method == "clnp":
        assert torch.equal(logits, ref_logits) and tr.acc[1][0] == tr.acc[0][0]
    else:
        assert (logits - ref_logits).abs().max().item() <= 1e-4 * (ref_logits.abs().max().item() + 1e-6)

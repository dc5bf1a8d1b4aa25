"""The projector as a part of every null-space method (``projector: hard | scaled``) and nscl_prune's
ways of putting pruned units' capacity to use (``prune_reclaim``, ``free_projector``): each guarantee
checked on numbers, including the path no projector sees (a re-used unit firing on old inputs)."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY
from nscl.core import nullspace
from nscl.core.optim import NullSpaceAdam
from nscl.experiment import config
from nscl.experiment.trainer import Trainer

pytestmark = pytest.mark.filterwarnings("ignore:split_digits")


def _cfg(**kw):
    return config.resolve(overrides={**TINY, "checkpoint": False, "threads": 1, **kw})


def _run(cfg, tasks=2) -> Trainer:
    tr = Trainer(cfg)
    for t in range(tasks):
        tr.seed_task(t)
        tr.train_task(t)
        tr.end_task(t)
    return tr


# ---- projector: hard | scaled --------------------------------------------------------------------
@pytest.mark.parametrize("method", ["adam_nscl", "nscl_prune", "nscl_lowrank"])
def test_scaled_projector_at_infinite_scale_is_the_hard_one(method):
    """sgp_scale -> inf gives every protected direction importance 1: the same weights as the hard
    projector after two tasks (to float precision), while a small scale gives other weights."""
    kw = dict(method=method, n_tasks=2, nullspace_rule="energy", energy=0.9)
    hard = _run(_cfg(**kw)).model.state_dict()
    inf = _run(_cfg(projector="scaled", sgp_scale=1e12, **kw)).model.state_dict()
    soft = _run(_cfg(projector="scaled", sgp_scale=0.0, **kw)).model.state_dict()
    worst = max((hard[k].float() - inf[k].float()).abs().max().item() for k in hard if hard[k].is_floating_point())
    moved = max((hard[k].float() - soft[k].float()).abs().max().item() for k in hard if hard[k].is_floating_point())
    assert worst < 1e-4, worst
    assert moved > 100 * max(worst, 1e-7), (moved, worst)


def test_scaled_step_changes_old_outputs_by_one_minus_importance():
    """A hand-computed case. Old inputs span e1 (eigenvalue 4, sigma 2) and e2 (eigenvalue 1, sigma 1);
    e3 is null. SGP with alpha = 1: s1 = 2*2/(2+2) = 1, s2 = 2*1/(1+2) = 2/3. One projected Adam step
    of a 2 x 3 layer then changes the output on e1 by 0, on e2 by exactly (1 - 2/3) of the unprojected
    step, and on e3 by the whole step."""
    cov = torch.diag(torch.tensor([4.0, 1.0, 0.0], dtype=torch.float64))
    ns = nullspace.compute(cov, nullspace.NullSpaceRule.of("rel_tol", rel_tol=1e-9))
    assert ns.r == 1
    proj = nullspace.make_projector(ns, "scaled", 1.0, dtype=torch.float64)
    assert torch.allclose(proj.importance.sort().values, torch.tensor([2 / 3, 1.0], dtype=torch.float64))

    def step(projector):
        w = torch.nn.Parameter(torch.zeros(2, 3, dtype=torch.float64))
        opt = NullSpaceAdam([w], lr=0.1)
        if projector is not None:
            opt.set_projector(w, None, projector)
        w.grad = torch.tensor([[1.0, -2.0, 0.5], [0.3, 1.0, -1.0]], dtype=torch.float64)
        opt.step()
        return w.detach()

    raw, scaled = step(None), step(proj)
    eye = torch.eye(3, dtype=torch.float64)
    assert (scaled @ eye[0]).abs().max().item() < 1e-12  # the most important direction: no change
    assert torch.allclose(scaled @ eye[1], raw @ eye[1] / 3, atol=1e-12)
    assert torch.allclose(scaled @ eye[2], raw @ eye[2], atol=1e-12)
    hard = step(nullspace.make_projector(ns, "hard", dtype=torch.float64))
    assert (hard @ eye[1]).abs().max().item() < 1e-12  # the hard projector protects e2 fully


def test_nscl_sgp_is_adam_nscl_scaled_and_old_records_stay_the_same_run():
    from nscl.experiment import records

    cfg = _cfg(method="nscl_sgp", sgp_scale=5.0)
    saved = {k: v for k, v in cfg.items() if k != "projector"}  # recorded before the parameter existed
    assert records.differing(saved, cfg) == set()
    sgp = _run(cfg, tasks=2).model.state_dict()
    ada = _run(_cfg(method="adam_nscl", projector="scaled", sgp_scale=5.0)).model.state_dict()
    assert all(torch.equal(sgp[k], ada[k]) for k in sgp)
    with pytest.raises(config.ConfigError, match="scale_sqrt_r"):
        _cfg(method="adam_nscl", projector="scaled", scale_sqrt_r=True)


# ---- pruned units' capacity ------------------------------------------------------------------------
EXACT = dict(
    method="nscl_prune",
    nullspace_rule="rel_tol",
    rel_tol=1e-10,
    samples_per_task=12,  # rank-deficient covariances: real (exact) null spaces
    hidden=[128, 128],
    lr=0.01,
)


def _logits(tr, s):
    x, _ = tr.stream[s].train.get(torch.arange(min(64, len(tr.stream[s].train))))
    tr.model.eval()
    with torch.no_grad():
        return x, tr.model(x, s).clone()


def _unit_outputs(tr, x):
    outs = {}
    masks = tr.method.masks
    hooks = [
        m.register_forward_hook(lambda mod, i, o, n=n: outs.__setitem__(n, o.detach().clone()))
        for n, g in masks.graph.groups.items()
        for m in g.mask_at[-1:]
    ]
    tr.model.eval()
    with torch.no_grad():
        tr.model.features(x)
    for h in hooks:
        h.remove()
    return outs


def test_reclaim_keeps_every_old_task_within_its_floor_and_reused_units_do_not_reach_old_tasks():
    """Re-pruning with a margin that lets it take every candidate it scores: (1) every old task's val
    accuracy after the release is >= its floor min(now, ref - margin); (2) released units are free,
    dead, and their weights into kept units and their head columns are 0; (3) the path no projector
    sees: re-initialised and trained by the next task, they fire on old inputs, and old tasks' logits
    are still those of the end of the previous task."""
    tr = Trainer(_cfg(prune_reclaim=True, prune_margin=100.0, **EXACT))
    masks = tr.method.masks
    for t in (0, 1):
        tr.seed_task(t)
        tr.train_task(t)
        tr.end_task(t)
    rec = tr.method.records[1]["reclaim"]
    assert sum(rec["reclaimed"].values()) > 0
    assert all(rec["val_after"][s] >= rec["val_floor"][s] - 1e-9 for s in (0, 1))
    cap = tr.method.capacity()
    assert [len(v) for v in cap["reclaimed_units"].values()] == [2] * len(cap["reclaimed_units"])
    freed = {n: torch.tensor([False] * masks.owner[n].numel()) for n in masks.owner}
    for n, o in masks.owner.items():
        freed[n] = (o == masks.owner[n].new_tensor(10**9)) & (tr.method.free_since[n] == 2)
        assert int(freed[n].sum()) == rec["reclaimed"][n]
        assert (masks.alive[n].cpu()[freed[n]] == 0).all()
    for w in masks.graph.wires:
        inter = masks.interference(w)
        if w.in_group is not None and freed[w.in_group].any():
            cols = freed[w.in_group].repeat_interleave(w.in_repeat)
            kept_rows = masks.owner[w.out_group] < 10**9
            assert inter[kept_rows][:, : cols.numel()][:, cols].all()
            assert w.module.weight.detach().view(w.module.weight.shape[0], -1)[kept_rows][:, cols].abs().max() == 0
    last = freed[masks.graph.feature_group].repeat_interleave(masks.graph.feature_repeat)
    for s in (0, 1):
        assert tr.model.heads[s].weight.detach()[:, last].abs().max() == 0
    before = {s: _logits(tr, s) for s in (0, 1)}
    tr.seed_task(2)
    tr.train_task(2)  # released units re-initialised and trained (not yet pruned again)
    fired = False
    for s, (x, logits) in before.items():
        outs = _unit_outputs(tr, x)
        fired |= any(outs[n][:, freed[n]].abs().max().item() > 0 for n in outs if freed[n].any())
        _, now = _logits(tr, s)
        assert (now - logits).abs().max().item() <= 1e-4 * (logits.abs().max().item() + 1e-6), s
    assert fired  # the re-used units do fire on old inputs: only the zeroed weights keep them out


def test_reclaim_with_a_tight_margin_respects_it_and_records_lifetimes():
    tr = _run(_cfg(prune_reclaim=True, prune_margin=1.0, **EXACT), tasks=3)
    for r in tr.method.records[1:]:
        rc = r["reclaim"]
        assert all(rc["val_after"][s] >= rc["val_floor"][s] - 1e-9 for s in rc["val_after"])
        assert all(rc["val_floor"][s] <= rc["val_before"][s] for s in rc["val_before"])
    cap = tr.method.capacity()
    for n, life in cap["free_lifetime"].items():
        kept = int((tr.method.masks.owner[n] < 10**9).sum())
        assert len(life) >= kept and all(v >= 1 for v in life)
    assert cap["free_lifetime"]["backbone.layers.0"]  # task 0 kept units after 1 task free


@pytest.mark.parametrize("kind", ["none", "hard"])
def test_free_projector_keeps_free_units_response_to_old_inputs(kind):
    """free_projector=hard: free units' rows step inside the layer's old-input null space, so their
    pre-activations on old inputs stay those of their re-initialisation (free=none moves them), while
    old tasks' logits are unchanged either way."""
    tr = Trainer(_cfg(free_projector=kind, **EXACT))
    tr.seed_task(0)
    tr.train_task(0)
    tr.end_task(0)
    x, logits = _logits(tr, 0)
    layer = tr.model.backbone.layers[0]
    free = tr.method.masks.owner["backbone.layers.0"] == 10**9
    tr.seed_task(1)
    tr.method.before_task(1)  # re-initialises the free units
    with torch.no_grad():
        pre0 = layer(x.flatten(1))[:, free].clone()
    tr.method.masks.reinit_free = lambda: {}  # train_task calls before_task again: keep these weights
    tr.train_task(1)
    with torch.no_grad():
        pre1 = layer(x.flatten(1))[:, free]
    _, now = _logits(tr, 0)
    assert (now - logits).abs().max().item() <= 1e-4 * (logits.abs().max().item() + 1e-6)
    change = (pre1 - pre0).abs().max().item() / (pre0.abs().max().item() + 1e-6)
    if kind == "hard":
        assert change < 1e-4, change
    else:
        assert change > 1e-2, change


def test_outgoing_norms_read_the_next_layer_and_the_trained_heads_only():
    """A unit's outgoing norm, by hand: its column in the next layer, and for the last layer its columns
    in the heads named (untrained heads of later tasks are left out)."""
    tr = Trainer(_cfg(**EXACT))
    masks = tr.method.masks
    W1 = tr.model.backbone.layers[1].weight.detach().double()
    heads = [tr.model.heads[h].weight.detach().double() for h in range(2)]
    got = masks.outgoing_norms([0, 1])
    assert torch.allclose(got["backbone.layers.0"], W1.pow(2).sum(0).sqrt())
    assert torch.allclose(got["backbone.layers.1"], (heads[0].pow(2).sum(0) + heads[1].pow(2).sum(0)).sqrt())
    assert torch.allclose(masks.outgoing_norms([0])["backbone.layers.1"], heads[0].pow(2).sum(0).sqrt())

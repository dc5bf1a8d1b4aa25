"""``clnp`` (Golkar et al. 2019) and ``nscl_prune`` (CLNP pruning + Adam-NSCL projection).

Both train each task with an L1 penalty on the free units, prune by graceful forgetting after
it, and re-initialise the pruned units as the next task's free capacity (:mod:`nscl.core.pruning`
holds the unit graph, masks and the threshold search; read its docstring first).

``clnp``: units kept by a task are frozen for good (incoming weights, bias, BN affine and running
statistics); interference weights into them stay 0. Old tasks' outputs are bit-identical.

``nscl_prune``: kept units are *not* frozen: their incoming rows keep learning, with every update
projected into the null space of the old tasks' layer-input covariance (the trainer's tracker,
computed after pruning, so pruned units' exact-zero outputs are exact null directions).

The boundary between free and kept units (row ``r`` = consuming unit, column ``j`` = producing
unit, ``o(.)`` = the task that kept a unit, ``FREE`` = none):

* free row ``r``: free, unprojected (re-initialised; it reads kept units -> reuse).
* kept row ``r`` and a column with ``o(j) > o(r)`` (a unit free when ``r`` was kept): **zero and
  masked forever**, as in CLNP. It cannot be left to the projection: at task ``o(r)`` the free unit
  output 0, so ``e_j`` is null for the covariance of that task, but once ``j`` is re-initialised it
  outputs non-zero values on the *old* inputs too, so any weight ``W[r, j] != 0`` would change
  ``r``'s old outputs.
* kept row ``r``, columns ``m = {j: o(j) <= o(r)}`` (and raw inputs, bias): the update ``u[r, m]`` is
  projected by the null space of ``C[m, m]``, the tracker's accumulated covariance restricted to
  those columns (one projector per owner class; for the first layer ``m`` is every column, which
  is exactly Adam-NSCL). Masking *after* projecting with the full ``C`` would not be enough: the
  zeroed part of ``uP`` is not in the null space once the columns of later units carry data.
* BatchNorm of kept channels: frozen (affine + running statistics), like CLNP.
* old heads: frozen (never trained again); their columns of units free at their pruning are 0.

Why old task ``s``'s outputs stay unchanged, by induction over layers: unit ``r`` with
``o(r) <= s`` reads only columns ``j`` with ``o(j) <= o(r) <= s`` (the rest are 0), whose outputs on
task-``s`` inputs are unchanged (induction), so these inputs equal the rows the tracker stored for
task ``s`` on those columns (at that time later units were pruned: 0, and are outside ``m``
anyway); the update of row ``r`` is orthogonal to them, so ``r``'s pre-activation, its frozen BN and
ReLU give the same output. Old heads read only such units. The projector's null-space rule decides
"orthogonal": exact up to float error with ``nullspace_rule=rel_tol`` and a tiny ``rel_tol``,
approximate (as Adam-NSCL) with the default ``a_min`` rule. ``C[m, m]`` includes tasks before
``o(r)`` too (the tracker keeps one sum), which is conservative, never wrong.

Both methods ignore ``bn`` (BN is protected per channel) and always project the final Adam update.

``nscl_prune`` also takes ``projector`` (each owner class's block hard or SGP-scaled, the importance from
that class's restricted covariance: :func:`nscl.core.nullspace.make_projector`) and two ways of putting
pruned units' capacity to use (docs/methods.md): ``prune_reclaim`` (re-pruning, :meth:`_UnitPruning.reclaim`:
kept units no old task needs go back to the free pool, their weights into kept units and heads zeroed) and
``free_projector`` (free rows projected by the layer's whole old-input null space). The capacity record
adds ``free_lifetime`` (tasks each kept unit was free before) and ``reclaimed_units`` (per task).
"""

from __future__ import annotations

import copy

import torch

from ..core import nullspace, pruning
from ..core.optim import NullSpaceAdam
from ..core.params import Param
from .adam_nscl import PROJECTOR, SCALE_SQRT_R, SGP_SCALE
from .base import Method, register

PRUNING_PARAMS = (
    Param(
        "prune_margin",
        1.0,
        "float",
        "pruning: largest held-out (val) accuracy drop, in points, "
        "the pruning threshold may cost the current task (graceful-forgetting margin m)",
        range="[0, inf)",
    ),
    Param("l1", 1e-4, "float", "pruning: L1 sparsity coefficient while training a task (0: off)", range="[0, inf)"),
    Param(
        "l1_target",
        "weights",
        "str",
        "pruning: L1 on the free units' incoming weights (CLNP) or on their activations",
        choices=("weights", "activations"),
    ),
    Param(
        "prune_criterion",
        "magnitude",
        "str",
        "pruning: unit activity = mean post-ReLU output or fraction of positive outputs (held-out data)",
        choices=("magnitude", "fraction_active"),
    ),
    Param(
        "prune_search_steps", 8, "int", "pruning: log-scale bisection steps of the threshold search", range="[1, inf)"
    ),
    Param("prune_theta_min", 1e-4, "float", "pruning: smallest relative activity threshold searched", range="(0, inf)"),
    Param(
        "prune_thresholds",
        "per_layer",
        "str",
        "pruning: one relative activity threshold for all layers "
        "(global) or one per layer, searched layer by layer with the margin shared (per_layer; the only one "
        "that reliably prunes BatchNorm'd conv channels)",
        choices=("global", "per_layer"),
    ),
    Param(
        "prune_finetune_epochs",
        0,
        "int",
        "pruning: epochs of fine-tuning the kept sub-network after pruning (reverted if it breaks the margin)",
        range="[0, inf)",
    ),
)


#: nscl_prune's ways of putting pruned units' capacity to use (docs/methods.md, "Pruned units' capacity")
REUSE_PARAMS = (
    Param(
        "prune_reclaim",
        False,
        "bool",
        "nscl_prune: re-pruning. After each task, units kept by earlier tasks whose removal costs no old task "
        "(0..t) its val accuracy below min(now, at its pruning - prune_margin) return to the free pool",
    ),
    Param(
        "free_projector",
        "none",
        "str",
        "nscl_prune: free units' incoming rows trained unprojected (none, CLNP) or projected by the layer's "
        "whole old-input null space, hard or scaled (they then learn less along old inputs, so fewer of them "
        "become indispensable and more are pruned back)",
        choices=("none", "hard", "scaled"),
    ),
)


def _round(xs, digits=5):
    return [float(f"{x:.{digits}g}") for x in xs]


class _UnitPruning(Method):
    """CLNP-style pruning; ``project_old`` selects projected (True) or frozen (False) kept units."""

    project_old = False

    @classmethod
    def check_params(cls, cfg):
        if cfg["val_fraction"] <= 0:
            raise ValueError(
                f"method {cls.name!r} chooses its pruning threshold on the held-out split: "
                f"parameter 'val_fraction' must be > 0, got {cfg['val_fraction']}"
            )

    def __init__(self, cfg, model, stream, device):
        super().__init__(cfg, model, stream, device)
        self.masks = pruning.UnitMasks(model, device)
        self.finetuning = False
        self.optimizer = None
        self.records: list[dict] = []
        self.units = {
            n: {"size": g.size, "frozen": [], "free": [], "new": []} for n, g in self.masks.graph.groups.items()
        }
        self.activity_log: dict[str, list] = {n: [] for n in self.masks.graph.groups}
        self.projection_log: dict[str, list] = {}
        # per wire and task: share of the task's squared weight change in rows of units free at its start
        self.learning_share: dict[str, list] = {w.name: [] for w in self.masks.graph.wires}
        self._task_start: dict[str, tuple] = {}
        # how long freed units last: the first task each unit could train as free, the number of tasks
        # units stayed free before a task kept them, and the units re-pruning returned per task
        self.free_since = {n: torch.zeros(g.size, dtype=torch.long) for n, g in self.masks.graph.groups.items()}
        self.free_lifetime: dict[str, list] = {n: [] for n in self.masks.graph.groups}
        self.reclaimed: dict[str, list] = {n: [] for n in self.masks.graph.groups}
        self.val_ref: dict[int, float] = {}  # val accuracy of each task right after its pruning

    # ---- hooks ---------------------------------------------------------------------------------
    def before_task(self, t):
        if self.finetuning:
            return
        if t > 0:
            self.masks.reinit_free()
        self._task_start = {
            w.name: (w.module.weight.detach().clone(), self.masks.owner[w.out_group] == pruning.FREE)
            for w in self.masks.graph.wires
        }
        self.masks.prepare_l1()
        self.masks.keep_acts = self.cfg["l1"] > 0 and self.cfg["l1_target"] == "activations"

    def _projections(self, wire, t) -> list:
        """``(rows, cols, Projector)`` per owner class of kept rows (nscl_prune), see module doc."""
        tracker = self.trainer.tracker
        ro = self.masks.owner[wire.out_group]
        co = self.masks.col_owner(wire)
        weight = wire.module.weight
        blocks, log = [], []
        for k in sorted(set(ro[ro < t].tolist())):
            rows = (ro == k).nonzero().squeeze(1)
            cols = (co <= k).nonzero().squeeze(1)
            ns = tracker.null_space(wire.name, cols=cols)
            proj = nullspace.make_projector(
                ns,
                self.cfg["projector"],
                self.cfg["sgp_scale"],
                dtype=weight.dtype,
                device=weight.device,
                scale_sqrt_r=self.cfg["scale_sqrt_r"],
            )
            blocks.append((rows.to(weight.device), cols.to(weight.device), proj))
            log.append({"owner": int(k), "rows": int(rows.numel()), "d": int(cols.numel()), "null": int(ns.r)})
        kind = self.cfg.get("free_projector", "none")
        free = (ro == pruning.FREE).nonzero().squeeze(1)
        if kind != "none" and free.numel():  # free rows: the whole layer's old-input null space
            ns = tracker.spaces[wire.name]
            proj = nullspace.make_projector(ns, kind, self.cfg["sgp_scale"], dtype=weight.dtype, device=weight.device)
            cols = torch.arange(ns.d)
            blocks.append((free.to(weight.device), cols.to(weight.device), proj))
            log.append({"owner": "free", "rows": int(free.numel()), "d": int(ns.d), "null": int(ns.r)})
        if not self.finetuning:
            self.projection_log.setdefault(wire.name, []).append(log)
        return blocks

    def make_optimizer(self, t):
        opt = NullSpaceAdam(
            self.param_groups(t),
            betas=self.cfg["betas"],
            eps=self.cfg["eps"],
            project="update",
            eps_placement=self.cfg["eps_placement"],
        )
        self.grad_masks = []
        for wire in self.masks.graph.wires:
            fixed = self.masks.interference(wire)
            old = self.masks.fixed_rows(wire.out_group, t)
            blocks = []
            if self.project_old:
                free_projected = self.cfg.get("free_projector", "none") != "none"
                if t > 0 and (old.any() or free_projected):
                    blocks = self._projections(wire, t)
            else:
                fixed = fixed | old[:, None]
            keep = (~fixed).to(wire.module.weight)
            update = keep.clone()
            for rows, _, _ in blocks:
                update[rows] = 0.0
            opt.set_projector(wire.module.weight, wire.module.bias, pruning.MaskedUpdate(update, blocks))
            self.grad_masks.append((wire.module, keep))
        self.bn_frozen_stats = []
        for group, bn in self.masks.norms():
            rows = self.masks.fixed_rows(group, t).to(self.device)
            if bn.affine:
                keep = (~rows).to(bn.weight)[:, None].repeat(1, 2)
                opt.set_projector(bn.weight, bn.bias, pruning.MaskedUpdate(keep))
                self.grad_masks.append((bn, keep))
            if bn.track_running_stats and rows.any():
                self.bn_frozen_stats.append((bn, rows, bn.running_mean.clone(), bn.running_var.clone()))
        self.optimizer = opt
        return opt, self.make_scheduler(opt)

    def penalty(self, t):
        if self.finetuning or self.cfg["l1"] <= 0:
            self.masks.clear_activations()
            return None
        pen = self.masks.l1_penalty(self.cfg["l1_target"])
        return None if pen is None else self.cfg["l1"] * pen

    @torch.no_grad()
    def after_backward(self, t):
        for module, keep in self.grad_masks:
            w = module.weight
            d = w[0].numel()
            if w.grad is not None:
                w.grad.view(w.shape[0], -1).mul_(keep[:, :d])
            if module.bias is not None and module.bias.grad is not None:
                module.bias.grad.mul_(keep[:, d])

    @torch.no_grad()
    def after_step(self, t):
        for bn, rows, mean, var in self.bn_frozen_stats:  # running statistics of kept channels
            bn.running_mean[rows] = mean[rows]
            bn.running_var[rows] = var[rows]

    # ---- pruning ----------------------------------------------------------------------------------
    @torch.no_grad()
    def _record_learning_share(self) -> None:
        """How much of the task's learning landed in the units that were free when it started:
        ``||dW[free rows]||^2 / ||dW||^2`` per wire (pruning's capacity at work; 1 when only free
        units learn, as in CLNP)."""
        for w in self.masks.graph.wires:
            start, free = self._task_start[w.name]
            dw = (w.module.weight.detach() - start).reshape(len(start), -1).double().pow(2).sum(1)
            total = dw.sum().item()
            share = dw[free.to(dw.device)].sum().item() / total if total > 0 else None
            self.learning_share[w.name].append(share)

    def after_task(self, t):
        super().after_task(t)
        self._record_learning_share()
        self.masks.keep_acts = False
        self.masks.clear_activations()
        rec = self.prune(t)
        if self.cfg["prune_finetune_epochs"] > 0 and rec["pruned_total"] > 0:
            self.finetune(t, rec)
        self.val_ref[t] = rec["val_acc"] - rec["val_drop"]
        for n, o in self.masks.owner.items():  # units task t kept: how many tasks they were free
            kept = o == t
            self.free_lifetime[n].extend((t - self.free_since[n][kept] + 1).tolist())
        if self.project_old and self.cfg["prune_reclaim"] and t > 0:
            rec["reclaim"] = self.reclaim(t)
        for n in self.reclaimed:
            self.reclaimed[n].append(int(rec.get("reclaim", {}).get("reclaimed", {}).get(n, 0)))
        for n, o in self.masks.owner.items():
            u = self.units[n]
            u["frozen"].append(int((o < pruning.FREE).sum()))
            u["free"].append(int((o == pruning.FREE).sum()))
            u["new"].append(int((o == t).sum()))
        self.records.append(rec)

    def prune(self, t: int) -> dict:
        """Graceful forgetting on task ``t``'s val split; commits the masks; returns the record."""
        tr, cfg, masks = self.trainer, self.cfg, self.masks
        val = [(self.stream[t].val, t)]
        self.model.eval()
        xs = (x for x, _, _ in tr.batches(val, cfg["eval_batch_size"], shuffle=False))
        activity = masks.activity(self.model.features, xs)
        scores = pruning.relative_scores(activity, cfg["prune_criterion"], masks.alive)
        cand = masks.candidates()
        base = tr.accuracy(t, "val")
        alive0 = {n: a.clone() for n, a in masks.alive.items()}
        cache: dict[tuple, float] = {}

        def evaluate(theta):
            ps = pruning.prune_set(scores, cand, theta)
            key = tuple(int(p.sum()) for p in ps.values())  # sets are nested per group: counts identify them
            if key not in cache:
                masks.set_alive({n: alive0[n].cpu() * (~ps[n]).float() for n in ps})
                try:
                    cache[key] = tr.accuracy(t, "val")
                finally:
                    masks.set_alive(alive0)
            return cache[key]

        search = (cfg["prune_margin"], cfg["prune_theta_min"], 1.0, cfg["prune_search_steps"])
        if cfg["prune_thresholds"] == "global":
            res = pruning.search_threshold(evaluate, base, *search)
            thresholds = {n: res["threshold"] for n in scores}
            layers = None
        else:  # per layer, in forward order, over the groups that have candidates
            res = pruning.search_thresholds_per_group(evaluate, [n for n in scores if cand[n].any()], base, *search)
            thresholds = {n: res["thresholds"].get(n) for n in scores}
            layers = {n: {k: v for k, v in r.items() if k != "evaluations"} for n, r in res["layers"].items()}
        pruned = pruning.prune_set(scores, cand, thresholds)
        masks.commit(pruned, t)
        after = tr.accuracy(t, "val")
        for n in scores:
            self.activity_log[n].append(_round(scores[n][cand[n]].tolist()))
        return {
            "task": t,
            "threshold": res.get("threshold"),
            "thresholds": thresholds,
            "layers": layers,
            "criterion": cfg["prune_criterion"],
            "mode": cfg["prune_thresholds"],
            "margin": cfg["prune_margin"],
            "val_acc": base,
            "val_acc_pruned": after,
            "val_drop": base - after,
            "evaluations": res["evaluations"],
            "distinct_evaluations": len(cache),
            "candidates": {n: int(c.sum()) for n, c in cand.items()},
            "pruned": {n: int(p.sum()) for n, p in pruned.items()},
            "pruned_total": int(sum(int(p.sum()) for p in pruned.values())),
        }

    def reclaim(self, t: int) -> dict:
        """Re-pruning after task ``t``: return to the free pool the units kept by tasks before ``t``
        that no old task needs any more (docs/methods.md, "Pruned units' capacity").

        Score of a kept unit = its largest relative activity (:func:`nscl.core.pruning.relative_scores`)
        over the val inputs of the tasks that read it (its owner's task to ``t``), times the norm of its
        outgoing weights (:meth:`nscl.core.pruning.UnitMasks.outgoing_norms`) relative to its layer's
        largest: on a stream whose tasks share their inputs every unit is active on every task, and
        only what reads it tells a needed unit from an idle one. The threshold is the
        largest one (log-scale bisection, as pruning's) whose units, masked, leave every task ``s <= t``
        at a val accuracy of at least ``min(now_s, ref_s - prune_margin)``, ``ref_s`` its val accuracy
        right after its own pruning: re-pruning never costs a task more than the margin in all, and
        nothing where drift already took more. The units are then pruned for good: dead, their owner
        FREE, their weights into kept units and their columns in every head zeroed (they outputted 0
        in the accepted evaluation, so this changes no old output), re-initialised at the next task.
        """
        tr, masks, cfg, model = self.trainer, self.masks, self.cfg, self.model
        model.eval()
        tasks = list(range(t + 1))
        # every old task's val split, loaded once (the search evaluates all of them at every probe)
        val = {
            s: [(x, y) for x, y, _ in tr.batches([(self.stream[s].val, s)], cfg["eval_batch_size"], shuffle=False)]
            for s in tasks
        }
        scores = {n: torch.zeros(g.size, dtype=torch.float64) for n, g in masks.graph.groups.items()}
        for s in tasks:
            rel = pruning.relative_scores(
                masks.activity(model.features, (x for x, _ in val[s])), cfg["prune_criterion"], masks.alive
            )
            for n, sc in rel.items():
                reads = masks.owner[n] <= s  # task s reads units kept up to s
                scores[n] = torch.where(reads, torch.maximum(scores[n], sc), scores[n])
        out_norm = masks.outgoing_norms(tasks)  # what a unit's output weighs downstream
        for n, w in out_norm.items():
            top = w.max().item()
            scores[n] = scores[n] * (w / top if top > 0 else w)
        cand = {n: (o < t) & (masks.alive[n].cpu() > 0) for n, o in masks.owner.items()}

        @torch.no_grad()
        def accuracy(s):  # as Trainer.accuracy(s, "val"), on the batches loaded above
            correct = sum((model(x, s).argmax(1) == y).sum().item() for x, y in val[s])
            return 100.0 * correct / max(sum(len(y) for _, y in val[s]), 1)

        now = {s: accuracy(s) for s in tasks}
        floor = {s: min(now[s], self.val_ref.get(s, now[s]) - cfg["prune_margin"]) for s in tasks}
        alive0 = {n: a.clone() for n, a in masks.alive.items()}
        cache: dict[tuple, float] = {}

        def slack(theta):  # min over tasks of acc - floor (>= 0: every task within its floor)
            ps = pruning.prune_set(scores, cand, theta)
            key = tuple(int(p.sum()) for p in ps.values())
            if key not in cache:
                masks.set_alive({n: alive0[n].cpu() * (~ps[n]).float() for n in ps})
                try:
                    cache[key] = min(accuracy(s) - floor[s] for s in tasks)
                finally:
                    masks.set_alive(alive0)
            return cache[key]

        res = pruning.search_threshold(slack, 0.0, 0.0, cfg["prune_theta_min"], 1.0, cfg["prune_search_steps"])
        out = pruning.prune_set(scores, cand, res["threshold"])
        masks.release(out, heads=tasks)
        for n, p in out.items():
            self.free_since[n][p] = t + 1
        after = {s: accuracy(s) for s in tasks}
        return {
            "threshold": res["threshold"],
            "candidates": {n: int(c.sum()) for n, c in cand.items()},
            "reclaimed": {n: int(p.sum()) for n, p in out.items()},
            "val_before": now,
            "val_floor": floor,
            "val_after": after,
            "evaluations": res["evaluations"],
        }

    def finetune(self, t: int, rec: dict) -> None:
        """A few epochs of the kept sub-network through the trainer's own loop (pruned units dead,
        old units frozen/projected as in training); reverted if the val drop then exceeds the margin."""
        snapshot = copy.deepcopy(self.model.state_dict())
        self.finetuning = True
        try:
            self.trainer.train_task(t, epochs=self.cfg["prune_finetune_epochs"])
        finally:
            self.finetuning = False
        acc = self.trainer.accuracy(t, "val")
        reverted = rec["val_acc"] - acc > self.cfg["prune_margin"] + 1e-9
        if reverted:
            self.model.load_state_dict(snapshot)
            acc = self.trainer.accuracy(t, "val")
        rec.update(val_acc_finetuned=acc, finetune_reverted=reverted, val_drop=rec["val_acc"] - acc)

    # ---- records ------------------------------------------------------------------------------
    def diagnostics(self):
        out = {
            "threshold": [r["threshold"] for r in self.records],
            "thresholds": [r.get("thresholds") for r in self.records],
            "val_drop": [r["val_drop"] for r in self.records],
            "units": self.units,
            "free_fraction": {n: (u["free"][-1] / u["size"] if u["free"] else 1.0) for n, u in self.units.items()},
            "prune": self.records,
            "activity": self.activity_log,
        }
        if self.projection_log:
            out["projection"] = self.projection_log
        if self.optimizer is not None:
            out["optimizer_stats"] = dict(self.optimizer.stats)
        return out

    def capacity(self):
        return {
            "free_units": {n: list(u["free"]) for n, u in self.units.items()},
            "units": {n: u["size"] for n, u in self.units.items()},
            "learning_in_free_units": self.learning_share,
            "free_lifetime": {n: list(v) for n, v in self.free_lifetime.items()},
            "reclaimed_units": {n: list(v) for n, v in self.reclaimed.items()},
        }

    def state_dict(self):
        return {
            **super().state_dict(),
            "masks": self.masks.state_dict(),
            "records": self.records,
            "units": self.units,
            "activity": self.activity_log,
            "projection": self.projection_log,
            "learning_share": self.learning_share,
            "free_since": {n: v.clone() for n, v in self.free_since.items()},
            "free_lifetime": self.free_lifetime,
            "reclaimed": self.reclaimed,
            "val_ref": {str(k): v for k, v in self.val_ref.items()},
        }

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.masks.load_state_dict(state["masks"])
        self.records, self.units = state["records"], state["units"]
        self.activity_log, self.projection_log = state["activity"], state["projection"]
        self.learning_share = state.get("learning_share", self.learning_share)
        for n, v in state.get("free_since", {}).items():
            self.free_since[n].copy_(v)
        self.free_lifetime = state.get("free_lifetime", self.free_lifetime)
        self.reclaimed = state.get("reclaimed", self.reclaimed)
        self.val_ref = {int(k): v for k, v in state.get("val_ref", {}).items()}


@register("clnp")
class CLNP(_UnitPruning):
    """CLNP: L1-sparsified training, graceful-forgetting pruning, kept units frozen, pruned re-initialised."""

    project_old = False
    params = PRUNING_PARAMS


@register("nscl_prune")
class NSCLPrune(_UnitPruning):
    """CLNP pruning whose kept units keep learning inside the old tasks' null space (see module doc)."""

    project_old = True
    null_space = True
    # its optimizer projects per owner block (no bn/lr_projected/project)
    params = PRUNING_PARAMS + (SCALE_SQRT_R, PROJECTOR, SGP_SCALE) + REUSE_PARAMS

    @classmethod
    def check_params(cls, cfg):
        super().check_params(cfg)
        if cfg["projector"] == "scaled" and cfg["scale_sqrt_r"]:
            raise ValueError(
                "method 'nscl_prune': scale_sqrt_r scales the hard projector only; "
                "set scale_sqrt_r: false with projector: scaled"
            )

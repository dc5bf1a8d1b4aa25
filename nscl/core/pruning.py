"""Unit (neuron / channel) pruning for continual learning: the machinery of CLNP and ``nscl_prune``.

CLNP (Golkar, Kagan, Cho 2019): train a task with an L1 penalty that
makes many units inactive, prune the least active units by the largest activity threshold that
costs at most ``prune_margin`` points of held-out accuracy ("graceful forgetting"), keep the rest
for that task, and re-initialise the pruned units as free capacity for the next task.

**Units.** A unit is an MLP neuron or a conv output channel; units of one layer form a
:class:`UnitGroup`. :func:`unit_graph` maps every backbone ``Linear``/``Conv2d`` (a :class:`Wire`)
to the group its rows produce and the group its columns read (``in_repeat`` columns of
``weight.view(out, -1)`` per input unit: ``kh*kw`` for a conv, ``H*W`` at the CNN's conv->linear
flatten). BatchNorm channels belong to the group they normalise.

**ResNet rule.** Channels added by a residual connection must agree across the addition, so the
residual stream of each stage (stem or 1x1 shortcut + every block's ``conv2``, carried by the
identity shortcuts, read through every ``bn1`` and ``bn_last``) is ONE group, pruned jointly;
the inner channels of every block (``conv1`` -> ``bn2`` -> ``conv2``) are a group of their own.

**States.** ``owner[u]`` is the task that kept unit ``u`` (``FREE`` if none). ``alive[u]`` gates the
unit's output: a forward hook multiplies every output point of the group by ``alive`` *after*
BatchNorm (a pruned unit's bias and BN shift are masked too), so a pruned unit outputs exactly 0.
Free units are alive while a task trains; pruned units stay dead from the pruning until the next
task re-initialises them (so the trainer's covariance pass sees exact zeros there).

**Weights** (row = consuming unit ``r``, column = producing unit ``j``; raw inputs and the bias
column have owner -1):

* *interference* entries, ``owner[r] < FREE`` and ``owner[j] > owner[r]`` (a later/free unit into a
  kept unit): set to 0 when ``r`` is kept and fixed for good. Old heads read only their kept
  units the same way (their columns of free units are zeroed at pruning; old heads never train).
* rows of units kept by earlier tasks: frozen (``clnp``) or projected (``nscl_prune``, see
  :mod:`nscl.methods.clnp`); their BN affine parameters and running statistics are frozen.
* rows of free units: free (re-initialised before each new task): reuse of old features
  (kept -> free) and new capacity (free -> free).

An entry's interference status never ends: a unit free when ``r`` was kept can only be kept later.
Masks act on the *final* optimizer update (:class:`MaskedUpdate`, via
:meth:`nscl.core.optim.NullSpaceAdam.set_projector`), after Adam's moments and coupled weight decay,
so a fixed entry's update is exactly 0 and it never moves; gradients are masked too.

**Threshold.** Activity per unit on the task's *val* split (held out from its training data):
mean post-ReLU output (``magnitude``) or fraction of positive outputs (``fraction_active``),
averaged over batch and space, measured where the group's output is gated (after BatchNorm, so a
channel's score reflects its BN scale and shift, not the raw conv weights that BN normalises away),
normalised by the group's most active unit. Candidates (units the task trained as free) with
score < theta are pruned; theta is searched by log-scale bisection (:func:`search_threshold`),
every probe a val evaluation with the masks applied. ``prune_thresholds`` picks how many thetas:

* ``global``: one theta for every group (the rule before per-layer thresholds existed). Relative
  scores are only comparable *within* a group: BN gives every channel roughly unit-variance
  pre-activations, so all channels of a conv layer score close to its top channel (0.6-1 on Split
  Fashion-MNIST) while an MLP layer spreads over [0, 1]. The one theta that keeps the most fragile
  layer within the margin then usually stops below every channel (the small CNN on Split
  Fashion-MNIST: no conv channel pruned), and a function-preserving rescale of a single unit
  (input row times c, output column over c) moves it.
* ``per_layer``: one theta per group, searched group by group in forward order
  (:func:`search_thresholds_per_group`). The k-th of the G groups with candidates may bring the
  total val drop up to ``k/G * prune_margin`` (earlier groups' thetas stay applied), so every
  layer gets its share of the graceful-forgetting margin, budget a layer leaves unused passes to
  the next, and the final drop is within ``prune_margin`` as with one theta.

**L1 under BatchNorm.** ``l1_target=weights`` penalises the free units' incoming weights. A BN'd
unit's output does not depend on the scale of its incoming weights, so the penalty also covers
the BN scale ``gamma`` of free units (network-slimming style): that is the weight that can silence
a BN'd channel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .models import MLP, MultiHead, PreActResNet18, SmallCNN

#: ``owner`` of a unit no task has kept.
FREE = 10**9


@dataclass
class UnitGroup:
    """The units of one layer (or of one ResNet residual stream)."""

    name: str
    size: int
    mask_at: list  # modules whose output (channel dim 1) is multiplied by ``alive``
    act_at: list  # modules whose ReLU'd output (channel dim 1) is the units' activity
    norms: list = field(default_factory=list)  # BatchNorm layers over these units


@dataclass
class Wire:
    """A backbone Linear/Conv: rows produce ``out_group``, columns read ``in_group`` (None: raw input)."""

    name: str
    module: nn.Module
    out_group: str
    in_group: str | None
    in_repeat: int


@dataclass
class UnitGraph:
    groups: dict  # name -> UnitGroup (in forward order)
    wires: list  # [Wire]
    feature_group: str  # the group the heads read
    feature_repeat: int  # head columns per feature unit


def _mlp(mlp: MLP, prefix: str, groups: list, wires: list, prev: str | None, repeat: int) -> tuple:
    for i, layer in enumerate(mlp.layers):
        name = f"{prefix}.layers.{i}"
        groups.append(UnitGroup(name, layer.out_features, [layer], [layer]))
        wires.append(Wire(name, layer, name, prev, repeat))
        prev, repeat = name, 1
    return prev, repeat


def _is_bn(m) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm)


def unit_graph(model: MultiHead) -> UnitGraph:
    """Groups and wiring of the model's backbone (MLP, SmallCNN or PreActResNet18)."""
    bb = model.backbone
    groups: list[UnitGroup] = []
    wires: list[Wire] = []
    if isinstance(bb, MLP):
        last, repeat = _mlp(bb, "backbone", groups, wires, None, 1)
    elif isinstance(bb, SmallCNN):
        prev = None
        for i, (conv, norm) in enumerate(zip(bb.convs, bb.norms)):
            name = f"backbone.convs.{i}"
            groups.append(UnitGroup(name, conv.out_channels, [norm], [norm], [norm] if _is_bn(norm) else []))
            k = conv.kernel_size[0] * conv.kernel_size[1]
            wires.append(Wire(name, conv, name, prev, 1 if prev is None else k))
            prev = name
        flat = bb.mlp.layers[0].in_features if len(bb.mlp.layers) else bb.out_dim
        last, repeat = _mlp(bb.mlp, "backbone.mlp", groups, wires, prev, flat // bb.convs[-1].out_channels)
    elif isinstance(bb, PreActResNet18):
        stages = [bb.layer1, bb.layer2, bb.layer3, bb.layer4]
        streams = [
            UnitGroup(f"backbone.stream{s + 1}", stage[0].conv2.out_channels, [], [], [])
            for s, stage in enumerate(stages)
        ]
        streams[0].mask_at.append(bb.conv1)
        wires.append(Wire("backbone.conv1", bb.conv1, streams[0].name, None, 1))
        inners = []
        for s, stage in enumerate(stages):
            for b, block in enumerate(stage):
                src = streams[s] if (b > 0 or s == 0) else streams[s - 1]  # the stream this block reads
                src.mask_at.append(block.bn1)
                src.act_at.append(block.bn1)
                src.norms.append(block.bn1)
                inner = UnitGroup(
                    f"backbone.layer{s + 1}.{b}.inner", block.conv1.out_channels, [block.bn2], [block.bn2], [block.bn2]
                )
                inners.append((s, inner))
                pre = f"backbone.layer{s + 1}.{b}"
                wires.append(Wire(f"{pre}.conv1", block.conv1, inner.name, src.name, 9))
                wires.append(Wire(f"{pre}.conv2", block.conv2, streams[s].name, inner.name, 9))
                if block.shortcut is not None:
                    wires.append(Wire(f"{pre}.shortcut", block.shortcut, streams[s].name, src.name, 1))
                streams[s].mask_at.append(block)  # the block's output is the stream after the addition
        streams[-1].mask_at.append(bb.bn_last)
        streams[-1].act_at.append(bb.bn_last)
        streams[-1].norms.append(bb.bn_last)
        for s, stream in enumerate(streams):
            groups.append(stream)
            groups.extend(g for si, g in inners if si == s)
        last, repeat = streams[-1].name, 1
    else:
        raise TypeError(f"pruning does not know the backbone {type(bb).__name__}")
    return UnitGraph({g.name: g for g in groups}, wires, last, repeat)


class MaskedUpdate:
    """A :class:`~nscl.core.optim.NullSpaceAdam` "projector" for one layer's ``(out, d)`` update ``u``.

    ``u * mask`` (0 on fixed entries, on projected rows too), then each block
    ``(rows, cols, projector)`` writes ``projector(u[rows][:, cols])`` into ``[rows, cols]``.
    """

    def __init__(self, mask: torch.Tensor, blocks: list | None = None):
        self.mask = mask
        self.d = mask.shape[1]
        self.blocks = blocks or []

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        out = u * self.mask
        for rows, cols, proj in self.blocks:
            out[rows[:, None], cols[None, :]] = proj(u[rows][:, cols])
        return out


class UnitMasks:
    """Per-unit owners and output gates of a model, with the hooks that apply them.

    Everything a pruning method needs: activity statistics, temporary / committed pruning,
    interference zeroing, re-initialisation of free units, entry masks, the L1 penalty.
    """

    def __init__(self, model: MultiHead, device=None):
        self.model = model
        self.graph = unit_graph(model)
        self.device = device or next(model.parameters()).device
        self.owner = {n: torch.full((g.size,), FREE, dtype=torch.long) for n, g in self.graph.groups.items()}
        self.alive = {n: torch.ones(g.size, device=self.device) for n, g in self.graph.groups.items()}
        self._record: dict | None = None  # activity accumulators while measuring
        self._acts: list = []  # (group, activation) while training with l1_target=activations
        self.keep_acts = False
        self._handles = []
        for name, g in self.graph.groups.items():  # mask first, then measure the masked output
            for m in g.mask_at:
                self._handles.append(m.register_forward_hook(self._mask_hook(name)))
        for name, g in self.graph.groups.items():
            for m in g.act_at:
                self._handles.append(m.register_forward_hook(self._act_hook(name)))

    # ---- hooks ------------------------------------------------------------------------------
    def _mask_hook(self, name):
        def hook(module, inputs, out):
            a = self.alive[name]
            return out * a.view(1, -1, *([1] * (out.dim() - 2)))

        return hook

    def _act_hook(self, name):
        def hook(module, inputs, out):
            if self._record is not None:
                a = F.relu(out.detach())
                dims = [0] + list(range(2, a.dim()))
                rec = self._record[name]
                rec["sum"] += a.sum(dims).double()
                rec["pos"] += (a > 0).sum(dims).double()
                rec["n"] += a.numel() // a.shape[1]
            elif self.keep_acts and torch.is_grad_enabled():
                self._acts.append((name, F.relu(out)))

        return hook

    def clear_activations(self) -> None:
        """Forget the activations recorded for the activation-L1 penalty (after each use)."""
        self._acts = []

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # ---- statistics ---------------------------------------------------------------------------
    @torch.no_grad()
    def activity(self, forward: Callable, batches) -> dict[str, dict[str, torch.Tensor]]:
        """``{group: {"magnitude": mean ReLU output, "fraction_active": P(output > 0)}}`` per unit."""
        self._record = {
            n: {
                "sum": torch.zeros(g.size, dtype=torch.float64, device=self.device),
                "pos": torch.zeros(g.size, dtype=torch.float64, device=self.device),
                "n": 0,
            }
            for n, g in self.graph.groups.items()
        }
        try:
            for x in batches:
                forward(x)
            rec = self._record
        finally:
            self._record = None
        return {
            n: {"magnitude": (r["sum"] / max(r["n"], 1)).cpu(), "fraction_active": (r["pos"] / max(r["n"], 1)).cpu()}
            for n, r in rec.items()
        }

    # ---- state -----------------------------------------------------------------------------
    def candidates(self) -> dict[str, torch.Tensor]:
        """Units the current task trained as free (alive, no owner): the ones pruning may remove."""
        return {n: (o == FREE) & (self.alive[n].cpu() > 0) for n, o in self.owner.items()}

    def set_alive(self, alive: dict[str, torch.Tensor]) -> None:
        for n, a in alive.items():
            self.alive[n].copy_(a.to(self.alive[n]))

    def col_owner(self, wire: Wire) -> torch.Tensor:
        """Owner of every column of ``weight.view(out, -1)`` (+ bias column): -1 for raw inputs / bias."""
        m = wire.module
        d = m.weight[0].numel()
        if wire.in_group is None:
            co = torch.full((d,), -1, dtype=torch.long)
        else:
            co = self.owner[wire.in_group].repeat_interleave(wire.in_repeat)
            assert co.numel() == d, (wire.name, co.numel(), d)
        if m.bias is not None:
            co = torch.cat([co, co.new_full((1,), -1)])
        return co

    def interference(self, wire: Wire) -> torch.Tensor:
        """(out, d) bool: entries from a later-kept or free unit into a kept unit (zero for good)."""
        ro = self.owner[wire.out_group]
        co = self.col_owner(wire)
        return (ro[:, None] < FREE) & (co[None, :] > ro[:, None])

    def head_columns_free(self) -> torch.Tensor:
        """Head input columns of currently free feature units."""
        return (self.owner[self.graph.feature_group] == FREE).repeat_interleave(self.graph.feature_repeat)

    @torch.no_grad()
    def commit(self, pruned: dict[str, torch.Tensor], t: int) -> None:
        """Prune ``pruned`` units (dead until re-initialised), keep the other candidates for task ``t``,
        zero the interference weights and task ``t``'s head columns of free units."""
        cand = self.candidates()
        for n in self.owner:
            p = pruned[n] & cand[n]
            self.owner[n][cand[n] & ~p] = t
            self.alive[n][p.to(self.device)] = 0.0
        for w in self.graph.wires:
            self._zero(w.module, self.interference(w))
        head = self.model.heads[t]
        head.weight[:, self.head_columns_free().to(head.weight.device)] = 0.0

    @torch.no_grad()
    def outgoing_norms(self, heads) -> dict[str, torch.Tensor]:
        """Per group, the norm of each unit's outgoing weights: its columns in every wire that reads the
        group and, for the feature group, in the ``heads`` (indices; the trained ones) (float64, CPU)."""
        out = {n: torch.zeros(g.size, dtype=torch.float64) for n, g in self.graph.groups.items()}
        for w in self.graph.wires:
            if w.in_group is None:
                continue
            W = w.module.weight.detach()
            cols = W.reshape(W.shape[0], -1).double().pow(2).sum(0).cpu()
            out[w.in_group] += cols.view(-1, w.in_repeat).sum(1)
        feat = self.graph.feature_group
        for h in heads:
            cols = self.model.heads[h].weight.detach().double().pow(2).sum(0).cpu()
            out[feat] += cols.view(-1, self.graph.feature_repeat).sum(1)
        return {n: v.sqrt() for n, v in out.items()}

    @torch.no_grad()
    def release(self, units: dict[str, torch.Tensor], heads) -> None:
        """Return kept ``units`` to the free pool (re-pruning): dead, owner FREE, their weights into
        kept units (now interference entries) and their columns in the ``heads`` zeroed for good."""
        for n, u in units.items():
            self.owner[n][u] = FREE
            self.alive[n][u.to(self.device)] = 0.0
        for w in self.graph.wires:
            self._zero(w.module, self.interference(w))
        cols = self.head_columns_free()
        for h in heads:
            head = self.model.heads[h]
            head.weight[:, cols.to(head.weight.device)] = 0.0

    @staticmethod
    def _zero(module: nn.Module, entries: torch.Tensor) -> None:
        entries = entries.to(module.weight.device)
        w = module.weight.view(module.weight.shape[0], -1)
        d = w.shape[1]
        w[entries[:, :d]] = 0.0
        if module.bias is not None:
            module.bias[entries[:, d]] = 0.0

    @torch.no_grad()
    def reinit_free(self) -> dict[str, int]:
        """Re-initialise the incoming weights (and BN) of every free unit (PyTorch's default
        ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``) and make them alive; returns free counts."""
        for w in self.graph.wires:
            rows = (self.owner[w.out_group] == FREE).to(w.module.weight.device)
            if not rows.any():
                continue
            weight = w.module.weight
            bound = 1.0 / math.sqrt(weight[0].numel())
            n = int(rows.sum())
            weight[rows] = torch.empty((n, *weight.shape[1:]), device=weight.device).uniform_(-bound, bound)
            if w.module.bias is not None:
                w.module.bias[rows] = torch.empty(n, device=weight.device).uniform_(-bound, bound)
        for n, g in self.graph.groups.items():
            free = (self.owner[n] == FREE).to(self.device)
            for bn in g.norms:
                if bn.affine:
                    bn.weight[free] = 1.0
                    bn.bias[free] = 0.0
                if bn.track_running_stats:
                    bn.running_mean[free] = 0.0
                    bn.running_var[free] = 1.0
            self.alive[n][free] = 1.0
        return {n: int((o == FREE).sum()) for n, o in self.owner.items()}

    def fixed_rows(self, group: str, t: int) -> torch.Tensor:
        """Units kept by tasks before ``t`` (their BN parameters / statistics are frozen)."""
        return self.owner[group] < t

    def norms(self):
        """``(group, bn)`` for every BatchNorm of the backbone."""
        for n, g in self.graph.groups.items():
            for bn in g.norms:
                yield n, bn

    # ---- L1 -----------------------------------------------------------------------------------
    def l1_penalty(self, target: str) -> torch.Tensor | None:
        """Sum of |w| over the free units' incoming weights and BN scales, or mean-over-batch sum
        of their activations (recorded by the hooks in this forward pass)."""
        if target == "weights":
            total = None
            for w in self.graph.wires:
                rows = self._free_rows.get(w.name)
                if rows is None:
                    continue
                term = w.module.weight[rows].abs().sum()
                total = term if total is None else total + term
            for bn, units in self._free_bn:  # a BN'd unit's scale is its gamma (module doc)
                term = bn.weight[units].abs().sum()
                total = term if total is None else total + term
            return total
        total = None
        for name, a in self._acts:
            free = self._free_units[name]
            if not free.any():
                continue
            dims = list(range(2, a.dim()))
            per_unit = a[:, free].mean(dims) if dims else a[:, free]
            term = per_unit.sum(1).mean()
            total = term if total is None else total + term
        self._acts = []
        return total

    def prepare_l1(self) -> None:
        """Cache the free rows / units for :meth:`l1_penalty` (call when a task starts)."""
        self._free_rows = {}
        for w in self.graph.wires:
            rows = self.owner[w.out_group] == FREE
            if rows.any():
                self._free_rows[w.name] = rows.nonzero().squeeze(1).to(w.module.weight.device)
        self._free_units = {n: (o == FREE).to(self.device) for n, o in self.owner.items()}
        self._free_bn = [
            (bn, self._free_units[n].nonzero().squeeze(1))
            for n, bn in self.norms()
            if bn.affine and self._free_units[n].any()
        ]

    # ---- checkpoint ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "owner": {n: o.clone() for n, o in self.owner.items()},
            "alive": {n: a.cpu().clone() for n, a in self.alive.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        for n in self.owner:
            self.owner[n].copy_(state["owner"][n])
            self.alive[n].copy_(state["alive"][n].to(self.device))


def search_threshold(
    evaluate: Callable[[float], float],
    base_acc: float,
    margin: float,
    theta_min: float = 1e-4,
    theta_max: float = 1.0,
    steps: int = 8,
) -> dict:
    """Largest theta (log-scale bisection on [theta_min, theta_max]) whose accuracy
    ``evaluate(theta)`` is at least ``base_acc - margin``.

    Every returned theta was evaluated and satisfied the margin. If even ``theta_min`` fails,
    ``theta = 0`` (prune units with zero activity only) is tried, then ``None`` (prune nothing).
    Returns ``{"threshold", "acc", "evaluations": [[theta, acc], ...]}``.
    """
    trace: list[list[float]] = []

    def ok(theta):
        acc = evaluate(theta)
        trace.append([theta, acc])
        return base_acc - acc <= margin + 1e-9, acc

    good, acc = ok(theta_max)
    if good:
        return {"threshold": theta_max, "acc": acc, "evaluations": trace}
    good, acc = ok(theta_min)
    if not good:
        good, acc = ok(0.0)
        if good:
            return {"threshold": 0.0, "acc": acc, "evaluations": trace}
        return {"threshold": None, "acc": base_acc, "evaluations": trace}
    lo, hi = math.log(theta_min), math.log(theta_max)
    for _ in range(steps):
        mid = (lo + hi) / 2
        good, a = ok(math.exp(mid))
        if good:
            lo, acc = mid, a
        else:
            hi = mid
    return {"threshold": math.exp(lo), "acc": acc, "evaluations": trace}


def search_thresholds_per_group(
    evaluate: Callable[[dict], float],
    groups: list[str],
    base_acc: float,
    margin: float,
    theta_min: float = 1e-4,
    theta_max: float = 1.0,
    steps: int = 8,
) -> dict:
    """One threshold per group, greedily in the order of ``groups`` (graceful forgetting per layer).

    ``evaluate({group: theta or None})`` is the val accuracy with those thresholds applied (a
    group not named, or ``None``, prunes nothing). Group ``k`` (0-based, of ``G = len(groups)``) is
    searched by :func:`search_threshold` with the earlier groups' thresholds applied and the
    cumulative budget ``base_acc - acc <= (k + 1) / G * margin``; so the final drop is within
    ``margin`` and no layer spends more than its share plus what the layers before it left.
    Returns ``{"thresholds", "acc", "layers": {group: {"threshold", "budget", "acc",
    "evaluations"}}, "evaluations"}`` (``acc``: val accuracy with every threshold applied).
    """
    thetas: dict[str, float | None] = {}
    acc, layers, trace = base_acc, {}, []
    for k, g in enumerate(groups):
        budget = margin * (k + 1) / len(groups)
        res = search_threshold(lambda th: evaluate({**thetas, g: th}), base_acc, budget, theta_min, theta_max, steps)
        thetas[g] = res["threshold"]
        if res["threshold"] is not None:
            acc = res["acc"]
        layers[g] = {"threshold": res["threshold"], "budget": budget, "acc": acc, "evaluations": res["evaluations"]}
        trace.extend([g, *e] for e in res["evaluations"])
    return {"thresholds": thetas, "acc": acc, "layers": layers, "evaluations": trace}


def prune_set(
    scores: dict[str, torch.Tensor], candidates: dict[str, torch.Tensor], theta: float | None | dict
) -> dict[str, torch.Tensor]:
    """Candidates whose relative activity is below ``theta`` (``0``: exactly inactive; ``None``: none);
    ``theta`` may be one value for every group or ``{group: value}`` (groups not named: none)."""
    out = {}
    for n, s in scores.items():
        th = theta.get(n) if isinstance(theta, dict) else theta
        out[n] = _below(s, candidates[n], th)
    return out


def _below(s: torch.Tensor, candidates: torch.Tensor, theta: float | None) -> torch.Tensor:
    if theta is None:
        return torch.zeros_like(candidates)
    if theta == 0:
        return candidates & (s <= 0)
    return candidates & (s < theta)


def relative_scores(activity: dict, criterion: str, alive: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Activity divided by the most active alive unit of the group (0 where the group is silent)."""
    out = {}
    for n, rec in activity.items():
        a = rec[criterion].double()
        live = alive[n].cpu() > 0
        top = a[live].max().item() if live.any() else 0.0
        out[n] = a / top if top > 0 else torch.zeros_like(a)
    return out

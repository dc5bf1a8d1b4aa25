"""The method interface: a few hooks around one training loop (Mammoth/FACIL style).

Call order per task ``t`` (see :meth:`nscl.experiment.trainer.Trainer.fit`)::

    before_task(t)
    optimizer, scheduler = make_optimizer(t)
    for epoch:  set_train_mode(t)
        for batch in train_sets(t):
            loss = CE + penalty(t);  zero_grad; backward
            after_backward(t);  optimizer.step();  after_step(t)
        scheduler.step()
    after_task(t)                      # pruning, Fisher, ... (network final for task t after this)
    covariance + null spaces of tracked_layers() on task t   (trainer.end_task)
    evaluate tasks 0..t;  checkpoint

Hooks receive the task index; the :class:`~nscl.experiment.trainer.Trainer` is ``self.trainer``
(its public API: ``batches``, ``accuracy``, ``train_task``, ``tracker``). A method declares the
parameters it reads beyond the common ones in ``params`` (a tuple of
:class:`~nscl.core.params.Param`); :mod:`nscl.experiment.config` collects them into the schema.

The base class is plain Adam fine-tuning with the current task's head only (old heads frozen),
a fresh optimizer and MultiStep scheduler per task.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..core.models import MultiHead, batchnorm_layers, projected_layers
from ..core.params import Param

METHODS: dict[str, type["Method"]] = {}

#: BatchNorm protection of the null-space family (base class, ``protects_bn``)
BN = Param(
    "bn",
    "freeze",
    "str",
    "BatchNorm in later tasks: EWC on affine params (official), "
    "frozen after task 1 (principled default), or unprotected",
    choices=("ewc", "freeze", "none"),
)
EWC_LAMBDA = Param("ewc_lambda", 100.0, "float", "EWC penalty strength (method ewc; and bn=ewc)", range="[0, inf)")


def register(name: str):
    def deco(cls):
        if name in METHODS:
            raise RuntimeError(f"method {name!r} registered twice")
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


class Method:
    name = "base"
    #: protect BatchNorm from task 2 on according to the ``bn`` parameter (null-space family)
    protects_bn = False
    #: trains later tasks inside the old tasks' null space (checked: never at chance on a task)
    null_space = False
    #: parameters this method reads beyond the common ones (data, model, training, null space, run)
    params: tuple[Param, ...] = ()

    def __init__(self, cfg: dict, model: MultiHead, stream, device: torch.device):
        self.cfg, self.model, self.stream, self.device = cfg, model, stream, device
        self.trainer = None  # set by the Trainer before the first hook
        self.bn_params = {
            n: p for n, p in model.named_parameters() if any(n.startswith(b + ".") for b in batchnorm_layers(model))
        }
        self.bn_ewc = (
            FisherPenalty(self.bn_params, cfg["ewc_lambda"])
            if (self.protects_bn and cfg["bn"] == "ewc" and self.bn_params)
            else None
        )

    @classmethod
    def check_params(cls, cfg: dict) -> None:
        """Cross-parameter rules of this method; raise ``ValueError`` with a one-line message."""

    # ---- hooks -----------------------------------------------------------------------------
    def before_task(self, t: int) -> None:
        pass

    def train_sets(self, t: int) -> list[tuple[object, int]]:
        """``[(TaskData, task_index), ...]`` to train on during task ``t``."""
        return [(self.stream[t].train, t)]

    def trained_heads(self, t: int) -> list[int]:
        return [t]

    def backbone_lr(self, t: int) -> float:
        return self.cfg["lr"]

    def bn_frozen(self, t: int) -> bool:
        return self.protects_bn and self.cfg["bn"] == "freeze" and t > 0

    def param_groups(self, t: int) -> list[dict]:
        """Backbone (non-BN) params, BN params, and the heads trained in task ``t``."""
        cfg = self.cfg
        bn_ids = {id(p) for p in self.bn_params.values()}
        backbone = [p for p in self.model.backbone.parameters() if id(p) not in bn_ids and p.requires_grad]
        groups = [dict(params=backbone, lr=self.backbone_lr(t), weight_decay=cfg["weight_decay"], name="backbone")]
        if self.bn_params and not self.bn_frozen(t):
            groups.append(
                dict(
                    params=list(self.bn_params.values()),
                    lr=cfg["bn_lr"] or cfg["lr"],
                    weight_decay=cfg["weight_decay"],
                    name="bn",
                )
            )
        heads = [p for h in self.trained_heads(t) for p in self.model.heads[h].parameters()]
        groups.append(dict(params=heads, lr=cfg["head_lr"] or cfg["lr"], weight_decay=0.0, name="heads"))
        return [g for g in groups if g["params"]]

    def make_optimizer(self, t: int):
        opt = torch.optim.Adam(self.param_groups(t), betas=tuple(self.cfg["betas"]), eps=self.cfg["eps"], foreach=True)
        return opt, self.make_scheduler(opt)

    def make_scheduler(self, opt):
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=self.cfg["milestones"], gamma=self.cfg["gamma"])

    def set_train_mode(self, t: int) -> None:
        self.model.train()
        if self.bn_frozen(t):  # running statistics stay those of task 1
            for m in batchnorm_layers(self.model).values():
                m.eval()

    def penalty(self, t: int) -> torch.Tensor | None:
        return self.bn_ewc.penalty() if self.bn_ewc is not None and t > 0 else None

    def after_backward(self, t: int) -> None:
        pass

    def after_step(self, t: int) -> None:
        pass

    def after_task(self, t: int) -> None:
        if self.bn_ewc is not None:
            self.bn_ewc.update(self.trainer, t)

    def tracked_layers(self) -> dict[str, nn.Module]:
        """Layers whose input covariance / null space the trainer records (and projecting methods use)."""
        return projected_layers(self.model)

    def diagnostics(self) -> dict:
        """JSON-serialisable per-method records for results.json (``method_diagnostics``)."""
        return {}

    def capacity(self) -> dict:
        """Per-layer capacity series of this method, one value per finished task, for the run record's
        ``capacity`` (:func:`nscl.core.metrics.capacity`): ``{"free_units": {layer: [...]}}`` (pruning),
        ``{"active_rank": {layer: [...]}}`` (low rank); empty for methods without such a budget."""
        return {}

    def state_dict(self) -> dict:
        return {"bn_ewc": self.bn_ewc.state_dict() if self.bn_ewc else None}

    def load_state_dict(self, state: dict) -> None:
        if self.bn_ewc is not None and state.get("bn_ewc") is not None:
            self.bn_ewc.load_state_dict(state["bn_ewc"])


class FisherPenalty:
    """EWC (Kirkpatrick et al. 2017): ``lambda * sum_tasks sum_i F_i (theta_i - theta*_i)^2``.

    The diagonal Fisher is estimated after each task on its training data in eval mode, with the
    model's own argmax predictions as targets (as the official Adam-NSCL code does for BN).
    """

    def __init__(self, params: dict[str, nn.Parameter], lam: float):
        self.params, self.lam = params, lam
        self.fishers: list[dict[str, torch.Tensor]] = []
        self.anchors: list[dict[str, torch.Tensor]] = []

    def update(self, trainer, t: int) -> None:
        model = trainer.model
        was_training = model.training
        model.eval()
        fisher = {n: torch.zeros_like(p) for n, p in self.params.items()}
        n_seen = 0
        for x, _, tasks in trainer.batches([(trainer.stream[t].train, t)], shuffle=False):
            model.zero_grad(set_to_none=True)
            logits = model(x, tasks)
            loss = nn.functional.cross_entropy(logits, logits.argmax(1))
            loss.backward()
            for n, p in self.params.items():
                if p.grad is not None:
                    fisher[n] += p.grad.detach() ** 2 * x.shape[0]
            n_seen += x.shape[0]
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        self.fishers.append({n: f / max(n_seen, 1) for n, f in fisher.items()})
        self.anchors.append({n: p.detach().clone() for n, p in self.params.items()})

    def penalty(self) -> torch.Tensor | None:
        if not self.fishers:
            return None
        total = 0.0
        for fisher, anchor in zip(self.fishers, self.anchors):
            for n, p in self.params.items():
                total = total + (fisher[n] * (p - anchor[n]) ** 2).sum()
        return self.lam * total

    def state_dict(self) -> dict:
        return {"fishers": self.fishers, "anchors": self.anchors}

    def load_state_dict(self, state: dict) -> None:
        self.fishers, self.anchors = state["fishers"], state["anchors"]

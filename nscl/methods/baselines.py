"""Reference points: ``finetune`` (lower bound), ``ewc``, ``joint`` (multi-task upper bound)."""

from __future__ import annotations

from .base import EWC_LAMBDA, FisherPenalty, Method, register


@register("finetune")
class Finetune(Method):
    """Plain Adam on each task in turn; old heads frozen. Forgets freely: the lower bound."""


@register("ewc")
class EWC(Method):
    """Elastic Weight Consolidation on every shared (backbone) parameter, ``lambda = ewc_lambda``."""

    params = (EWC_LAMBDA,)

    def __init__(self, cfg, model, stream, device):
        super().__init__(cfg, model, stream, device)
        self.ewc = FisherPenalty(dict(model.backbone.named_parameters()), cfg["ewc_lambda"])

    def penalty(self, t):
        return self.ewc.penalty() if t > 0 else None

    def after_task(self, t):
        self.ewc.update(self.trainer, t)

    def state_dict(self):
        return {"ewc": self.ewc.state_dict()}

    def load_state_dict(self, state):
        self.ewc.load_state_dict(state["ewc"])


@register("joint")
class Joint(Method):
    """Multi-task training on all tasks seen so far (each sample through its own head): upper bound.

    Stores all past data, so it is a reference point, not a continual learner.
    """

    def train_sets(self, t):
        return [(self.stream[i].train, i) for i in range(t + 1)]

    def trained_heads(self, t):
        return list(range(t + 1))

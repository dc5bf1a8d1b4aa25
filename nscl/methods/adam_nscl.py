"""Adam-NSCL (Wang et al., CVPR 2021): Adam steps projected into the null space of old inputs.

From task 2 on, every backbone Linear/Conv layer's Adam step is right-multiplied by ``U2 U2^T``
(:class:`nscl.core.optim.NullSpaceAdam`), where ``U2`` spans the approximate null space of the
accumulated uncentred covariance of that layer's inputs on all previous tasks (kept by the
trainer's :class:`nscl.core.nullspace.NullSpaceTracker`). BatchNorm is protected per the ``bn``
parameter; old heads are frozen.
"""

from __future__ import annotations

from ..core.optim import NullSpaceAdam
from ..core.params import Param
from .base import BN, EWC_LAMBDA, Method, register

#: the official 1/sqrt(r) step scaling, read wherever a projector is built (also by nscl_prune)
SCALE_SQRT_R = Param("scale_sqrt_r", False, "bool", "official 1/sqrt(r) step scaling of the projector")

#: Adam-NSCL's own parameters (the null-space rule itself is common: every run records null spaces)
ADAM_NSCL_PARAMS = (
    BN,
    EWC_LAMBDA,
    Param("lr_projected", None, "float", "backbone lr from task 2 on (Adam-NSCL's svd_lr)", range="(0, inf)"),
    Param(
        "project",
        "update",
        "str",
        "project the final Adam step (official) or the gradient before Adam",
        choices=("update", "grad"),
    ),
    SCALE_SQRT_R,
)


@register("adam_nscl")
class AdamNSCL(Method):
    protects_bn = True
    null_space = True
    params = ADAM_NSCL_PARAMS

    def backbone_lr(self, t):
        if t > 0 and self.cfg["lr_projected"] is not None:
            return self.cfg["lr_projected"]
        return self.cfg["lr"]

    def make_optimizer(self, t):
        opt = NullSpaceAdam(
            self.param_groups(t),
            betas=self.cfg["betas"],
            eps=self.cfg["eps"],
            project=self.cfg["project"],
            eps_placement=self.cfg["eps_placement"],
        )
        if t > 0:  # first task: plain Adam (nothing to protect yet)
            for name, layer in self.tracked_layers().items():
                opt.set_projector(layer.weight, layer.bias, self.projector(name, layer))
        self.optimizer = opt
        return opt, self.make_scheduler(opt)

    def projector(self, name: str, layer):
        """The projector of one layer's steps (Eq. 6: the tracker's null-space projector)."""
        return self.trainer.tracker.projector(name)

    def diagnostics(self):
        opt = getattr(self, "optimizer", None)
        return {"optimizer_stats": dict(opt.stats)} if opt is not None else {}

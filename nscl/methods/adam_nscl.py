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

#: which projection every null-space method applies to a layer's steps (adam_nscl, nscl_prune, nscl_lowrank)
PROJECTOR = Param(
    "projector",
    "hard",
    "str",
    "null-space projection of a layer's steps: hard (Adam-NSCL Eq. 6, U2 U2^T) or scaled "
    "(SGP Eq. 2, I - U1 diag(s) U1^T with importance s from sgp_scale); nscl_sgp = adam_nscl with scaled",
    choices=("hard", "scaled"),
)
SGP_SCALE = Param(
    "sgp_scale",
    10.0,
    "float",
    "projector=scaled (and nscl_sgp): importance scale alpha of SGP Eq. 2, "
    "s = (alpha+1) sigma / (alpha sigma + sigma_max) (official scale_coff 10; large = hard projection)",
    range="[0, inf)",
)

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
    PROJECTOR,
    SGP_SCALE,
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

    @classmethod
    def check_params(cls, cfg):
        if cfg.get("projector") == "scaled" and cfg.get("scale_sqrt_r"):
            raise ValueError(
                f"method {cls.name!r}: scale_sqrt_r scales the hard projector only; "
                "set scale_sqrt_r: false with projector: scaled"
            )

    def projection(self) -> str:
        """``hard`` or ``scaled``: the kind of projector this run builds (the ``projector`` parameter)."""
        return self.cfg["projector"]

    def projector(self, name: str, layer):
        """The projector of one layer's steps: the tracker's null space made hard (Eq. 6) or scaled (SGP)."""
        return self.trainer.tracker.projector(name, kind=self.projection(), sgp_scale=self.cfg["sgp_scale"])

    def diagnostics(self):
        opt = getattr(self, "optimizer", None)
        return {"optimizer_stats": dict(opt.stats)} if opt is not None else {}

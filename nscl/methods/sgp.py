"""SGP-style scaled projection (Saha & Roy, AAAI 2023) with Adam: the published answer to exhaustion.

Adam-NSCL removes every step's component along the protected directions ``U1`` of a layer's old
inputs (the range of its covariance under the null-space rule). As tasks accumulate, that range fills
the input space and new tasks stop learning. SGP keeps the protected basis but removes each
direction's component only in proportion to its importance: the step ``u`` becomes
``u (I - U1 diag(s) U1^T)`` with ``s_i = (alpha + 1) sigma_i / (alpha sigma_i + sigma_max)`` in [0, 1]
(SGP Eq. 2, ``sigma`` the singular values of the layer's input representation, here the square roots
of the accumulated covariance's eigenvalues; :func:`nscl.core.nullspace.sgp_importance`). ``alpha``
(``sgp_scale``; the official code's ``scale_coff``, default 10) sets how fast importance saturates:
large ``alpha`` is Adam-NSCL's hard projection, ``alpha = 0`` scales by ``sigma_i / sigma_max``.

This is ``adam_nscl`` with ``projector: scaled`` (:data:`nscl.methods.adam_nscl.PROJECTOR`; the
projector itself is built by :func:`nscl.core.nullspace.make_projector`), kept as a name of its own.

Differences from the official code: the update projected is Adam's step (as Adam-NSCL, not SGD's
gradient), and the importance is recomputed from the accumulated covariance at every task boundary
instead of being accumulated task by task from per-task representations.
"""

from __future__ import annotations

from .adam_nscl import ADAM_NSCL_PARAMS, AdamNSCL
from .base import register


@register("nscl_sgp")
class ScaledNSCL(AdamNSCL):
    """``adam_nscl`` with ``projector: scaled`` under its own name (the runs and pages recorded with it
    stay the same runs: its parameters are adam_nscl's minus ``projector`` and ``scale_sqrt_r``)."""

    params = tuple(p for p in ADAM_NSCL_PARAMS if p.name not in ("scale_sqrt_r", "projector"))

    def projection(self) -> str:
        return "scaled"

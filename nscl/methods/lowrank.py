"""Rank limitation as a continual learner: ``lowrank`` (regulariser alone) and ``nscl_lowrank``.

Both factorise the backbone (:func:`nscl.core.lowrank.factorize`, ``W = A B^T`` per layer, dense layers
with ``d < lowrank_min_d`` kept), add the nuclear-norm surrogate ``nuclear_lambda/2 (||A||^2 +
||B||^2)`` on the active components, and grow the active rank per task by ``rank_schedule``
(new components start with ``A`` columns at zero, so switching them on changes no output).
With ``truncate_tol > 0`` the singular values of ``W`` below ``truncate_tol * sigma_max`` are
dropped after every task and the factors re-balanced (the budget is then an upper bound).

``lowrank`` trains everything with plain Adam (no projection; BatchNorm not protected, old heads
frozen): it shows what the regulariser and the budget alone do.

``nscl_lowrank`` treats each factorised layer as two linear maps with no non-linearity between
them and projects each factor's Adam step as Adam-NSCL does (:class:`nscl.core.optim.NullSpaceAdam`):

* ``B`` (input ``x``): into the null space of the old inputs' covariance ``C_x`` (d x d);
* ``A`` (input ``z = mask * B^T x``): into the null space of the old bottleneck features'
  covariance ``C_z`` (K x K, rank <= components used so far);

both covariances are the trainer tracker's ordinary input covariances of the ``B`` and ``A``
sub-modules. Why this protects old tasks to all orders: with exact null spaces ``dB^T x_old = 0``
and ``dA z_old = 0`` for every old input, and::

    (A + dA)(B + dB)^T x_old = A B^T x_old + dA B^T x_old + A dB^T x_old + dA dB^T x_old
                             = A B^T x_old + dA z_old    + 0             + 0
                             = A B^T x_old.

The second step uses ``dB^T x_old = 0`` (kills two terms); the third ``dA z_old = 0``, which holds
after any number of steps because ``z_old = B^T x_old`` never changes (every B step is in the null
space), so ``C_z`` computed on old tasks stays valid. New components' ``B`` columns are projected
into ``null(C_x)`` when switched on, so their bottleneck features are exactly zero on old data:
``e_k`` is then in ``null(C_z)`` and ``A``'s column ``k`` is fresh capacity (like a pruned unit, but
with no non-linearity in between). ``tests/test_lowrank.py`` checks all of it numerically.

With an *approximate* null space (the ``a_min`` rule) ``dB^T x_old`` is small, not zero, and a new
component's ``B`` column carries a little old-data energy while ``C_z`` (accumulated when it was
off) calls its direction free. ``refresh_bottleneck: true`` replaces the old ``C_z`` before each task
by ``M B^T C_x B M`` (current ``B`` and mask ``M``; exact, since ``A``'s input rows are ``M B^T`` times
``B``'s), so ``A`` is protected against the features the old data produce *now*. Measured (issue 5,
permuted_fmnist, grow schedule, 3 seeds): BWT unchanged (-2.4 vs -2.3), ACC 4.7 points lower, so it is
off by default. A relative ``a * lambda_min`` cut on the refreshed covariance still admits the
fresh components' small eigenvalues, which may be why it cannot help there.

``projector: scaled`` (``nscl_lowrank``) scales both factors' steps by SGP's importance on their own
inputs (``x`` for ``B``, ``z`` for ``A``) instead of removing them; new components' ``B`` columns still
start in the hard null space of ``C_x``, so their ``A`` columns begin as fresh capacity.
"""

from __future__ import annotations

import torch

from ..core import lowrank as lr
from ..core.params import Param
from .adam_nscl import ADAM_NSCL_PARAMS, AdamNSCL
from .base import Method, register

LOWRANK_PARAMS = (
    Param(
        "rank_max",
        None,
        "int",
        "low-rank: inner width K per factorised layer (default min(out, d), i.e. no hard cap)",
        range="[1, inf)",
    ),
    Param(
        "rank_schedule",
        [1.0],
        "list[float]",
        "low-rank: fraction of K active at task t (entry t, the last entry repeats), e.g. [0.25, 0.5, 0.75, 1.0]",
        range="(0, 1]",
    ),
    Param(
        "nuclear_lambda",
        1e-4,
        "float",
        "low-rank: strength of the nuclear-norm surrogate lambda/2 (||A||^2 + ||B||^2) on active components",
        range="[0, inf)",
    ),
    Param(
        "truncate_tol",
        0.0,
        "float",
        "low-rank: after each task drop singular values of W "
        "below truncate_tol * sigma_max and re-balance the factors (0 = off)",
        range="[0, 1)",
    ),
    Param(
        "lowrank_min_d",
        32,
        "int",
        "low-rank: layers with input dim d below this stay dense (the ResNet-18 stem, d = 27)",
        range="[0, inf)",
    ),
    Param(
        "refresh_bottleneck",
        False,
        "bool",
        "nscl_lowrank: before each task set the old bottleneck "
        "covariance to M B^T C_x B M from the input covariance and the current B (exact: no non-linearity "
        "in between), so components switched on in an approximate null space stay protected. Measured on "
        "permuted_fmnist with a grow schedule: no BWT gain, -4.7 ACC (off by default)",
    ),
    Param(
        "rank_tol",
        1e-3,
        "float",
        "low-rank diagnostics: effective rank = number of singular values of W above rank_tol * sigma_max",
        range="(0, 1)",
    ),
)


@register("lowrank")
class LowRank(Method):
    """Factorised backbone + nuclear-norm surrogate + rank budget; no projection."""

    params = LOWRANK_PARAMS

    def __init__(self, cfg, model, stream, device):
        super().__init__(cfg, model, stream, device)
        self.layers = lr.factorize(model, cfg["rank_max"], cfg["lowrank_min_d"])
        with torch.no_grad():
            for f in self.layers.values():
                r0 = lr.budget(cfg["rank_schedule"], 0, f.K)
                f.A.weight.view(-1, f.K)[:, r0:] = 0  # switched on later, starting from zero
                f.mask[r0:] = 0
        self.records = {
            n: {
                "K": f.K,
                "out": f.A.weight.shape[0],
                "d": f.B.weight[0].numel(),
                "active_rank": [],
                "effective_rank": [],
                "nuclear_norm": [],
                "surrogate": [],
                "singular_values": [],
            }
            for n, f in self.layers.items()
        }

    def new_component_projector(self, name: str, t: int):
        """Projector applied to the ``B`` columns of components switched on at task ``t`` (none here)."""
        return None

    def before_task(self, t):
        super().before_task(t)
        for name, f in self.layers.items():
            f.activate(lr.budget(self.cfg["rank_schedule"], t, f.K), self.new_component_projector(name, t))
        if t > 0 and self.cfg["refresh_bottleneck"]:
            self.refresh_bottleneck()

    @torch.no_grad()
    def refresh_bottleneck(self) -> None:
        """Old bottleneck covariance from the old input covariance: ``S_z = M B^T S_x B M``.

        Exact for the current ``B`` and mask ``M`` because ``A``'s input rows are ``M B^T`` times ``B``'s
        input rows (one row per sample, or per output position of a conv: the same im2col patches).
        With an approximate null space (``a_min``), new components' features on old data are small
        but not zero, and the accumulated ``S_z`` (zero on them) would leave their ``A`` columns free;
        the refreshed one protects them. Skipped for layers whose ``A`` has a bias.
        """
        tracker = self.trainer.tracker
        for name, f in self.layers.items():
            a, b = f"{name}.A", f"{name}.B"
            if f.A.bias is not None or not tracker.has_covariance(b) or not tracker.has_covariance(a):
                continue
            _, B = f.factors()
            for held_out in (True, False):  # the held-out covariance follows the same map; then recompute
                if tracker.has_covariance(b, held_out):
                    S_x = tracker.covariance_sum(b, held_out)
                    Bd = B.to(S_x)
                    tracker.set_covariance(
                        a,
                        Bd.T @ S_x @ Bd,
                        tracker.covariance_count(b, held_out),
                        recompute=not held_out,
                        held_out=held_out,
                    )

    def penalty(self, t):
        pen = super().penalty(t)
        lam = self.cfg["nuclear_lambda"]
        if lam > 0 and self.layers:
            s = lr.surrogate(self.layers, lam)
            pen = s if pen is None else pen + s
        return pen

    def after_task(self, t):
        super().after_task(t)
        tol = self.cfg["truncate_tol"]
        if tol > 0:
            tracker = self.trainer.tracker if self.trainer is not None else None
            for name, f in self.layers.items():
                r, M = f.truncate(tol)
                for held_out in (False, True):  # old bottleneck covariances (train, held-out) follow z -> M z
                    if tracker is None or not tracker.has_covariance(f"{name}.A", held_out):
                        continue
                    S = tracker.covariance_sum(f"{name}.A", held_out)
                    full = torch.zeros(S.shape, dtype=S.dtype, device=S.device)
                    full[:r, : f.K] = M.to(S)
                    if S.shape[0] > f.K:  # bias column of A
                        full[f.K :, f.K :] = torch.eye(S.shape[0] - f.K, dtype=S.dtype, device=S.device)
                    tracker.set_covariance(f"{name}.A", full @ S @ full.T, recompute=False, held_out=held_out)
        for name, f in self.layers.items():
            for k, v in lr.layer_stats(f, self.cfg["rank_tol"]).items():
                self.records[name][k].append(v)

    def capacity(self):
        return {
            "active_rank": {n: list(r["active_rank"]) for n, r in self.records.items()},
            "effective_rank": {n: list(r["effective_rank"]) for n, r in self.records.items()},
        }

    def diagnostics(self):
        out = {
            "lowrank": {n: dict(r) for n, r in self.records.items()},
            "rank_tol": self.cfg["rank_tol"],
            "rank_schedule": self.cfg["rank_schedule"],
            "nuclear_lambda": self.cfg["nuclear_lambda"],
        }
        tracker = self.trainer.tracker if self.trainer is not None else None
        if tracker is not None:
            for n, rec in out["lowrank"].items():
                h = tracker.history.get(f"{n}.A")
                rec["bottleneck_null_dim"] = list(h["dims"]) if h else []
        return out

    def state_dict(self):
        return {**super().state_dict(), "records": self.records}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.records = state["records"]


@register("nscl_lowrank")
class NSCLLowRank(LowRank, AdamNSCL):
    """``lowrank`` + Adam-NSCL projection of both factors (B: input null space, A: bottleneck null space)."""

    params = LOWRANK_PARAMS + ADAM_NSCL_PARAMS

    protects_bn = True

    def new_component_projector(self, name, t):
        return self.trainer.tracker.projector(f"{name}.B") if t > 0 else None

    def diagnostics(self):
        return {**LowRank.diagnostics(self), **AdamNSCL.diagnostics(self)}

"""Null spaces of a covariance: eigendecomposition, selection rules, and projectors.

Given the accumulated covariance ``C`` of a layer's old-task inputs, its eigenvectors with the
smallest eigenvalues span an approximate null space ``U2`` (d x r). Adam-NSCL (Eq. 6) projects
every update of the layer as ``dW <- dW U2 U2^T`` (W stored ``(out, d)``), so ``dW x ~ 0`` for old
inputs ``x``.

Selection rules (:class:`NullSpaceRule`, its ``kind``; one frozen object per rule, whose defaults are
the package's):

* ``a_min`` (paper, Alg. 2): null = eigenvalues ``<= a * lambda_min``. On a rank-deficient covariance
  (fewer rows than d, zero-output units, constant pixels) ``lambda_min`` is floating-point noise and
  the rule collapses to a handful of arbitrary directions (the official code's stage-4 layers keep
  5/4608). ``floor="rank"`` (principled, default) floors ``lambda_min`` at the numerical-rank
  tolerance ``d * eps(float64) * lambda_max`` (as ``numpy.linalg.matrix_rank``), so every numerically
  null direction is in the null space and ``a`` acts relative to that floor. ``floor="none"`` is the
  official behaviour.
* ``energy`` (GPM-style): the largest directions holding a fraction ``energy`` of the total
  eigenvalue mass are protected; the rest is the null space. With ``energy_step > 0`` the
  threshold rises task by task as GPM does on CIFAR-100 (Saha et al. 2021):
  ``energy_t = min(energy + t * energy_step, energy_max)`` after task ``t`` (0-based), since every
  old task is exposed again at every later task (:meth:`NullSpaceRule.at_task`).
* ``leak`` (held-out leakage budget, new here): the largest null space whose share of the
  *held-out* old-task input energy stays within a budget ``beta``::

      r* = max { r : L(r) <= beta },   L(r) = tr(U_r^T C_val U_r) / tr(C_val)
                                            = sum_{i<=r} u_i^T C_val u_i / tr(C_val),

  with ``u_1, u_2, ...`` the eigenvectors of the *training* covariance ``C`` by ascending eigenvalue
  and ``C_val`` the covariance of the old tasks' validation inputs, accumulated the same way.
  ``L(r)`` is Eq. 7's ``R`` measured on data the basis was not fitted to: an isotropic update in
  ``U_r`` changes old outputs by ``E||dW U_r U_r^T x||^2 ~ tr(U_r^T C_val U_r)``. The training
  spectrum's smallest eigenvalues are biased low (with ``n`` rows in ``d`` dimensions the sample
  spectrum spreads, Marchenko-Pastur), so the training energy of the tail underestimates what unseen
  inputs put there; ``C_val`` is independent of ``U``, so ``u_i^T C_val u_i`` is an unbiased estimate
  of each direction's energy. One budget then means the same exposure at every layer, sample size and
  task count. ``L`` is monotone in ``r``, so ``r*`` is a prefix (one cumulative sum). Without held-out
  data it falls back to the training energies (the energy rule with ``energy = 1 - beta``).
* ``rel_tol``: null = eigenvalues ``<= rel_tol * lambda_max``.

The kept-energy ratio ``R = sum_{null} lambda / sum lambda`` (paper Eq. 7) measures how much of the
old inputs' energy the allowed updates may still touch.

Cost at a task boundary. Layers of the same size are decomposed by one batched ``eigh`` call on a
GPU (fewer launches; on CPU one call per matrix, bitwise the separate results). With
``eigen_update="nested"`` the tracker reuses the previous eigenbasis from task 2 on: the new null
space is searched only inside the previous one, by Rayleigh-Ritz (``eigh`` of ``U2^T C U2``, r x r,
instead of d x d), and the full spectrum comes from the cheaper ``eigvalsh``. A Ritz vector's value
is exactly its energy ``v^T C v``, so every kept direction meets the threshold; by eigenvalue
interlacing the nested null space is never larger than the full one (it can be smaller: a direction
of the old range whose relative energy dropped below the threshold stays protected). It pays only
where the previous null space is a small part of d: layers whose previous ``r`` exceeds
:data:`NESTED_MAX_FRACTION` of d get the full decomposition.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

import torch


@dataclass
class NullSpace:
    """Eigen-decomposition of one layer's covariance and the chosen null-space dimension ``r``."""

    eigvals: torch.Tensor  # (d,) |lambda| ascending, float64
    eigvecs: torch.Tensor  # (d, d) columns, float64 (the first r span the null space)
    r: int
    kept: float | None = None  # kept energy when eigvecs are not C's eigenvectors (nested update)

    @property
    def d(self) -> int:
        return self.eigvals.numel()

    @property
    def kept_energy(self) -> float:
        """Paper Eq. 7: fraction of the covariance's trace that lies in the null space."""
        if self.kept is not None:
            return self.kept
        return kept_energy(self.eigvals, self.r)

    def val_kept_energy(self, val_cov: torch.Tensor | None) -> float | None:
        """Held-out Eq. 7: share of ``tr(C_val)`` inside the null space, ``tr(U2^T C_val U2) / tr(C_val)``."""
        if val_cov is None:
            return None
        val_cov = val_cov.to(self.eigvecs)
        total = torch.diagonal(val_cov).sum().item()
        if total <= 0:
            return None
        u2 = self.null_basis
        return max(((val_cov @ u2) * u2).sum().item(), 0.0) / total

    @property
    def null_basis(self) -> torch.Tensor:
        return self.eigvecs[:, : self.r]

    @property
    def range_basis(self) -> torch.Tensor:
        return self.eigvecs[:, self.r :]


def kept_energy(eigvals: torch.Tensor, r: int) -> float:
    """Paper Eq. 7, ``R = sum_{i<=r} lambda_i / sum lambda``: the share of the old inputs' energy in the
    ``r``-dimensional null space of ascending ``eigvals`` (what updates may still disturb)."""
    ev = eigvals.to(torch.float64).clamp_min(0)
    total = ev.sum().item()
    return ev[:r].sum().item() / total if total > 0 else 1.0


def rank_tolerance(eigvals: torch.Tensor) -> float:
    """Numerical-rank tolerance ``d * eps(float64) * lambda_max`` (as ``numpy.linalg.matrix_rank``):
    eigenvalues at or below it are indistinguishable from zero."""
    d = eigvals.numel()
    return d * torch.finfo(torch.float64).eps * max(eigvals.max().item(), 0.0) if d else 0.0


def numerical_rank(eigvals: torch.Tensor) -> int:
    """Number of eigenvalues above :func:`rank_tolerance`."""
    return int((eigvals.to(torch.float64) > rank_tolerance(eigvals)).sum().item())


RULES = ("a_min", "energy", "leak", "rel_tol")
FLOORS = ("rank", "none")


def energy_at(t: int, energy: float, step: float = 0.0, cap: float = 1.0) -> float:
    """GPM's rising threshold after task ``t`` (0-based): ``min(energy + t * step, cap)``."""
    return min(energy + t * step, max(cap, energy))


@dataclass(frozen=True)
class NullSpaceRule(Mapping):
    """One null-space selection rule: its ``kind`` (see the module doc) and the parameters of every kind.

    The defaults are the package's (``nscl.experiment.config``: the energy rule at 0.9). A rule is
    also a read-only mapping of the keyword arguments of :func:`compute` / :func:`null_dim`
    (``rule`` = ``kind``, the parameters as named), so ``compute(C, **rule)`` works.
    """

    kind: str = "energy"
    energy: float = 0.9
    energy_step: float = 0.0  # the energy threshold rises by this much per finished task (:meth:`at_task`)
    energy_max: float = 1.0
    a: float = 10.0
    floor: str = "rank"
    rel_tol: float = 1e-3
    leak: float = 0.02

    def __post_init__(self):
        if self.kind not in RULES:
            raise ValueError(f"unknown null-space rule {self.kind!r}; valid: {', '.join(RULES)}")
        if self.floor not in FLOORS:
            raise ValueError(f"unknown a_min floor {self.floor!r}; valid: {', '.join(FLOORS)}")

    @classmethod
    def of(cls, rule: "NullSpaceRule | str | None" = None, **params) -> "NullSpaceRule":
        """A rule from a rule (``params`` override it) or from a kind name and parameters."""
        if isinstance(rule, NullSpaceRule):
            return rule.with_(**params) if params else rule
        return cls(**({} if rule is None else {"kind": rule}), **params)

    def with_(self, **overrides) -> "NullSpaceRule":
        """A copy with some parameters changed (``rule=`` is accepted for ``kind``)."""
        if "rule" in overrides:
            overrides["kind"] = overrides.pop("rule")
        return replace(self, **overrides)

    def at_task(self, t: int) -> "NullSpaceRule":
        """The rule applied after task ``t`` (0-based): the rising energy threshold resolved
        (:func:`energy_at`), so the result has ``energy_step = 0``."""
        if self.energy_step == 0.0:
            return self
        return replace(
            self, energy=energy_at(max(t, 0), self.energy, self.energy_step, self.energy_max), energy_step=0.0
        )

    def null_dim(self, eigvals: torch.Tensor, val_energy: torch.Tensor | None = None) -> int:
        """Number of eigenvalues (ascending ``eigvals``) this rule puts in the null space.

        ``val_energy`` (``leak`` rule): ``u_i^T C_val u_i`` for each eigenvector, in the same order; its
        sum is ``tr(C_val)``. ``None`` or an all-zero vector falls back to ``eigvals``.
        """
        ev = eigvals.to(torch.float64)
        d = ev.numel()
        if d == 0:
            return 0
        if ev[-1].item() <= 0:  # no data seen: everything is null
            return d
        if self.kind == "energy":
            desc = ev.clamp_min(0).flip(0)
            cum = desc.cumsum(0) / desc.sum()
            protected = int((cum < self.energy - 1e-12).sum().item()) + 1  # smallest k with cum[k-1] >= energy
            return d - min(protected, d)
        if self.kind == "leak":
            q = ev if val_energy is None else val_energy.to(torch.float64)
            if q.numel() != d:
                raise ValueError(f"val_energy has {q.numel()} entries for {d} eigenvalues")
            q = q.clamp_min(0)
            if q.sum().item() <= 0:
                q = ev.clamp_min(0)
            cum = q.cumsum(0) / q.sum()
            return int((cum <= self.leak + 1e-12).sum().item())  # cum is non-decreasing: a prefix
        return int((ev <= self.threshold(ev)).sum().item())  # a_min, rel_tol: an eigenvalue bound

    def threshold(self, eigvals: torch.Tensor) -> float:
        """The eigenvalue bound of :meth:`null_dim`: null directions are those with energy <= this value
        (for ``energy`` and ``leak``, midway between the last null and the first protected eigenvalue of
        the training spectrum)."""
        ev = eigvals.to(torch.float64)
        d = ev.numel()
        if d == 0 or ev[-1].item() <= 0:
            return math.inf
        if self.kind == "a_min":
            lam_min = ev[0].item()
            if self.floor == "rank":
                lam_min = max(lam_min, rank_tolerance(ev))
            return self.a * lam_min
        if self.kind == "rel_tol":
            return self.rel_tol * ev[-1].item()
        r = self.null_dim(ev)
        if r == 0:
            return -math.inf
        return math.inf if r == d else (ev[r - 1].item() + ev[r].item()) / 2

    # ---- the keyword-argument view (``compute(C, **rule)``) ---------------------------------------
    def __getitem__(self, key: str):
        if key == "rule":
            return self.kind
        if key == "kind" or key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(["rule", *(f.name for f in fields(self) if f.name != "kind")])

    def __len__(self) -> int:
        return len(fields(self))


def null_dim(eigvals: torch.Tensor, rule: NullSpaceRule | str | None = None, val_energy=None, **params) -> int:
    """:meth:`NullSpaceRule.null_dim` of the rule ``rule`` (a rule, or a kind with ``params``)."""
    return NullSpaceRule.of(rule, **params).null_dim(eigvals, val_energy)


def compute(
    cov: torch.Tensor,
    rule: NullSpaceRule | str | None = None,
    val_cov: torch.Tensor | None = None,
    **params,
) -> NullSpace:
    """Eigendecompose a covariance (``torch.linalg.eigh`` in float64: ascending order) and select with
    ``rule`` (a :class:`NullSpaceRule`, or a kind with ``params``; default: the package's rule).

    ``val_cov``: the held-out covariance the ``leak`` rule measures against (ignored by the others).
    """
    rule = NullSpaceRule.of(rule, **params)
    ns = compute_many([cov], [rule])[0]
    if rule.kind == "leak" and val_cov is not None:
        val = val_cov.to(ns.eigvecs)
        val_energy = ((val @ ns.eigvecs) * ns.eigvecs).sum(0)  # u_i^T C_val u_i
        ns.r = rule.null_dim(ns.eigvals, val_energy)
    return ns


def eigh(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh`` of symmetric ``(..., d, d)`` float64 matrices, with a robust path.

    A rank-deficient covariance (fewer rows than d: a small task, a wide layer; torchvision's
    ResNet-18 ``layer4`` after 64 images has d = 4608 and rank 64) has thousands of (numerically)
    repeated zero eigenvalues, on which LAPACK's divide-and-conquer ``syevd`` (torch's CPU driver) can
    fail to converge. Where it fails, each matrix is decomposed on the CPU by the fallbacks in turn:
    SciPy's MRRR driver (``evr``), its QR-iteration driver (``ev``, the most robust), then the SVD
    (for a PSD matrix ``C = U S U^T``: the same eigenvectors, eigenvalues ``S``). Results are ascending,
    as ``eigh``'s.
    """
    try:
        return torch.linalg.eigh(cov)
    except torch.linalg.LinAlgError:
        pass
    flat = cov.reshape(-1, *cov.shape[-2:])
    vals, vecs = zip(*(_eigh_fallback(c) for c in flat))
    return (
        torch.stack(vals).reshape(cov.shape[:-1]).to(cov.device),
        torch.stack(vecs).reshape(cov.shape).to(cov.device),
    )


def _eigh_fallback(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One symmetric matrix on the CPU: SciPy ``evr``, then ``ev``, then the SVD (see :func:`eigh`)."""
    c = c.detach().cpu().to(torch.float64)
    try:
        import scipy.linalg

        for driver in ("evr", "ev"):
            try:
                w, v = scipy.linalg.eigh(c.numpy(), driver=driver, check_finite=True)
                return torch.from_numpy(w), torch.from_numpy(v)
            except (scipy.linalg.LinAlgError, ValueError):
                continue
    except ImportError:
        pass
    u, sv, _ = torch.linalg.svd(c)
    return sv.flip(0), u.flip(1)


def compute_many(covs: list[torch.Tensor], rules: list[NullSpaceRule], batched: bool | None = None) -> list[NullSpace]:
    """:func:`compute` (without held-out data) for many covariances, one batched ``eigh`` per size.

    ``batched=None``: batch on a GPU only (fewer launches). On CPU a batched LAPACK call saves
    nothing and its rounding in numerically-null clusters can differ from separate calls, so the
    CPU default keeps one call per matrix (bitwise the results of :func:`compute`).
    """
    out: list[NullSpace | None] = [None] * len(covs)
    by_size: dict[tuple, list[int]] = {}
    for i, c in enumerate(covs):
        batch = c.device.type == "cuda" if batched is None else batched
        by_size.setdefault((c.shape[0], c.device) if batch else (i,), []).append(i)
    for idx in by_size.values():
        cov = torch.stack([covs[i].to(torch.float64) for i in idx])
        cov = (cov + cov.mT) / 2
        eigvals, eigvecs = eigh(cov)
        # A covariance is PSD: negative eigenvalues are rounding noise. Order by |lambda| (= the singular
        # values the official code's SVD returns), so the null space is always a prefix.
        eigvals, order = eigvals.abs().sort(-1)
        eigvecs = eigvecs.gather(2, order[:, None, :].expand_as(eigvecs))
        for j, i in enumerate(idx):
            ev = eigvals[j]
            out[i] = NullSpace(ev, eigvecs[j], rules[i].null_dim(ev))
    return out


def compute_nested(cov: torch.Tensor, previous: NullSpace, rule: NullSpaceRule) -> NullSpace:
    """Null space of ``cov`` inside ``previous``'s null space (Rayleigh-Ritz; see the module doc).

    The rule is applied to the exact spectrum (``eigvalsh``); its threshold (:meth:`NullSpaceRule.threshold`)
    is the bound the Ritz values must meet, so the result equals the full computation whenever the
    full null space lies inside the previous one.
    """
    cov = cov.to(torch.float64)
    cov = (cov + cov.T) / 2
    try:
        exact = torch.linalg.eigvalsh(cov)
    except torch.linalg.LinAlgError:  # the robust path of eigh
        exact = eigh(cov)[0]
    exact = exact.abs().sort().values
    r_full = rule.null_dim(exact)
    u2 = previous.null_basis.to(device=cov.device, dtype=torch.float64)
    if previous.r == 0 or r_full == 0:
        basis = previous.eigvecs.to(device=cov.device, dtype=torch.float64)
        return NullSpace(exact, basis, 0, kept=0.0)
    small = u2.T @ (cov @ u2)
    theta, w = eigh((small + small.T) / 2)
    theta, order = theta.abs().sort()
    w = w[:, order]
    r = int((theta <= rule.threshold(exact)).sum().item())
    basis = torch.cat([u2 @ w, previous.range_basis.to(device=cov.device, dtype=torch.float64)], 1)
    total = exact.clamp_min(0).sum().item()
    kept = theta[:r].clamp_min(0).sum().item() / total if total > 0 else 1.0
    return NullSpace(exact, basis, r, kept=kept)


class Projector:
    """Right-multiplies ``(out, d)`` updates by ``P = U2 U2^T`` (optionally ``/ sqrt(r)``).

    Uses whichever basis is thinner: ``u U2 U2^T`` when ``r <= d - r`` else ``u - (u U1) U1^T`` with
    the range basis ``U1``; both cost ``4 out d min(r, d-r)`` flops, never a dense ``d x d`` product.
    """

    def __init__(self, ns: NullSpace, dtype: torch.dtype = torch.float32, device=None, scale_sqrt_r: bool = False):
        self.d, self.r = ns.d, ns.r
        self.scale = 1.0 / (ns.r**0.5) if (scale_sqrt_r and ns.r > 0) else 1.0
        if ns.r <= ns.d - ns.r:
            self.kind, basis = "null", ns.null_basis
        else:
            self.kind, basis = "range", ns.range_basis
        self.basis = basis.to(device=device, dtype=dtype).contiguous()

    def matrix(self) -> torch.Tensor:
        """Dense ``d x d`` projector (tests and analysis only)."""
        eye = torch.eye(self.d, dtype=self.basis.dtype, device=self.basis.device)
        return self(eye)

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        b = self.basis
        if self.kind == "null":
            out = (u @ b) @ b.T if b.shape[1] else torch.zeros_like(u)
        else:
            out = u - (u @ b) @ b.T if b.shape[1] else u.clone()
        return out * self.scale if self.scale != 1.0 else out


def sgp_importance(eigvals: torch.Tensor, r: int, alpha: float) -> torch.Tensor:
    """SGP's importance of each protected direction (Saha & Roy, AAAI 2023, Eq. 2):
    ``s_i = (alpha + 1) sigma_i / (alpha sigma_i + sigma_max)`` with ``sigma = sqrt(lambda)`` the singular
    values of the layer's input representation, for the ascending ``eigvals[r:]`` (the range). The
    largest direction gets 1; ``alpha -> inf`` gives 1 everywhere (the hard projection), ``alpha = 0``
    gives ``sigma_i / sigma_max``."""
    sigma = eigvals[r:].to(torch.float64).clamp_min(0).sqrt()
    if sigma.numel() == 0 or sigma.max().item() <= 0:
        return torch.ones_like(sigma)
    s = (alpha + 1) * sigma / (alpha * sigma + sigma.max())
    if bool(torch.isfinite(s).all()):
        return s.clamp(0, 1)
    # alpha sigma overflowed to inf (inf / inf = NaN) for a huge alpha, e.g. 1e308: the same, divided by alpha
    s = (1 + 1 / alpha) * sigma / (sigma + sigma.max() / alpha)
    return torch.where(sigma > 0, s, torch.zeros_like(s)).clamp(0, 1)


class ScaledProjector:
    """SGP's scaled projection: right-multiplies ``(out, d)`` updates by ``P = I - U1 diag(s) U1^T``.

    ``U1`` is the range (protected) basis of a :class:`NullSpace`, ``s`` in [0, 1] its importance per
    direction (:func:`sgp_importance`). ``s = 1`` everywhere is the hard projection ``U2 U2^T`` of
    :class:`Projector`; ``s = 0`` leaves updates unchanged.
    """

    def __init__(self, ns: NullSpace, importance: torch.Tensor, dtype: torch.dtype = torch.float32, device=None):
        self.d, self.r = ns.d, ns.r
        if importance.numel() != ns.d - ns.r:
            raise ValueError(f"importance has {importance.numel()} entries for {ns.d - ns.r} protected directions")
        self.basis = ns.range_basis.to(device=device, dtype=dtype).contiguous()
        self.importance = importance.to(device=device, dtype=dtype)

    def matrix(self) -> torch.Tensor:
        """Dense ``d x d`` projector (tests and analysis only)."""
        return self(torch.eye(self.d, dtype=self.basis.dtype, device=self.basis.device))

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        if not self.basis.shape[1]:
            return u.clone()
        return u - ((u @ self.basis) * self.importance) @ self.basis.T


PROJECTORS = ("hard", "scaled")


def make_projector(
    ns: NullSpace,
    kind: str = "hard",
    sgp_scale: float = 10.0,
    dtype: torch.dtype = torch.float32,
    device=None,
    scale_sqrt_r: bool = False,
) -> "Projector | ScaledProjector":
    """The one place a layer's projector is built from its null space ``ns``.

    ``kind="hard"``: Adam-NSCL's ``U2 U2^T`` (Eq. 6; :class:`Projector`, ``scale_sqrt_r`` the official
    ``1/sqrt(r)`` step scaling). ``kind="scaled"``: SGP's ``I - U1 diag(s) U1^T`` with
    ``s = sgp_importance(eigvals, r, sgp_scale)`` (SGP Eq. 2; :class:`ScaledProjector`).
    """
    if kind == "hard":
        return Projector(ns, dtype=dtype, device=device, scale_sqrt_r=scale_sqrt_r)
    if kind == "scaled":
        return ScaledProjector(ns, sgp_importance(ns.eigvals, ns.r, sgp_scale), dtype=dtype, device=device)
    raise ValueError(f"unknown projector {kind!r}; valid: {', '.join(PROJECTORS)}")


#: ``eigen_update="nested"`` decomposes ``U2^T C U2`` only where the previous null space is at most this
#: fraction of d. Its cost, in d x d matrix products, is about 1.75 (eigvalsh) + f + 2 f^2 + 7.6 f^3 for
#: f = r / d against 7.6 for a full ``eigh`` (measured on CPU), so above f ~ 0.75 the full one is cheaper
#: and is used (exact for that layer).
NESTED_MAX_FRACTION = 0.75


class NullSpaceTracker:
    """Per-layer covariance accumulated over tasks, its null space after each task, and the history.

    ``cov`` sums the training inputs of every finished task; ``val_cov`` sums their validation inputs
    the same way (the ``leak`` rule's ``C_val``; for every rule it also gives the held-out kept
    energy). ``history[layer]`` = ``{"d", "dims": [r per task], "kept_energy": [R per task],
    "val_kept_energy": [held-out R, None without validation data], "rank": [...], "lambda_max": [...]}``;
    ``spectra["<layer>/task<t>"]`` = ascending eigenvalues after task t.
    """

    def __init__(
        self,
        layers: dict,
        covariance: str = "per_sample",
        rule: NullSpaceRule | None = None,
        scale_sqrt_r: bool = False,
        patches: int | None = None,
        eigen_update: str = "full",
    ):
        """``rule``: the selection rule of every layer (default: the package's :class:`NullSpaceRule`);
        ``covariance``: ``per_sample`` or
        ``batch_mean`` (:class:`nscl.core.covariance.Covariance`, ``patches`` per sample of a conv);
        ``eigen_update``: ``full`` or ``nested`` (see the module doc)."""
        from .covariance import Covariance, input_dim

        self.layers = layers
        self.base_rule = rule or NullSpaceRule()
        self.scale_sqrt_r = scale_sqrt_r
        self.cov = Covariance(layers, covariance, patches)
        self.val_cov = Covariance(layers, covariance, patches)
        self.eigen_update = eigen_update
        self.spaces: dict[str, NullSpace] = {}
        self.history = {
            n: {"d": input_dim(m), "dims": [], "kept_energy": [], "val_kept_energy": [], "rank": [], "lambda_max": []}
            for n, m in layers.items()
        }
        self.task = -1  # the last task whose inputs are in the covariances
        self.spectra: dict[str, "numpy.ndarray"] = {}  # noqa: F821 (numpy arrays, see recompute)
        self.rules = {n: {} for n in layers}  # per-layer overrides of the selection rule

    def rule(self, name: str, t: int | None = None) -> NullSpaceRule:
        """The rule of one layer after task ``t`` (default: the last one seen): the tracker's rule with
        the layer's overrides (:meth:`set_rule`), the energy threshold at task ``t``."""
        return self.base_rule.with_(**self.rules.get(name, {})).at_task(self.task if t is None else t)

    def val_matrix(self, name: str) -> torch.Tensor | None:
        """Held-out covariance of one layer, or None when no validation inputs were seen."""
        if not self.val_cov.counts.get(name):
            return None
        return self.val_cov.matrix(name)

    def null_space(self, name: str, cols: torch.Tensor | None = None, t: int | None = None) -> NullSpace:
        """The null space of ``name``'s covariance under its rule, restricted to the input columns
        ``cols`` if given (``nscl_prune`` needs one per owner class of kept units)."""
        cov, val = self.cov.matrix(name), self.val_matrix(name)
        if cols is not None:
            cov = cov[cols.to(cov.device)][:, cols.to(cov.device)]
            val = val[cols.to(val.device)][:, cols.to(val.device)] if val is not None else None
        return compute(cov, self.rule(name, t), val_cov=val)

    def set_rule(self, name: str, **overrides) -> None:
        """Override the selection rule of one layer (e.g. a factorised layer's bottleneck); keyword
        arguments as :meth:`NullSpaceRule.with_` takes them."""
        self.rules.setdefault(name, {}).update(overrides)

    def recompute(self, t: int | None = None) -> None:
        if t is not None:
            self.task = t
        names = list(self.layers)
        nested = set()
        if self.eigen_update == "nested" and t is not None and t > 0:  # where it is the cheaper one
            nested = {
                n for n in names if n in self.spaces and self.spaces[n].r <= NESTED_MAX_FRACTION * self.spaces[n].d
            }
        full = [n for n in names if n not in nested]
        if any(self.rule(n).kind == "leak" for n in full):
            done = {n: self.null_space(n) for n in full}  # measured against the held-out covariance
        else:
            done = dict(zip(full, compute_many([self.cov.matrix(n) for n in full], [self.rule(n) for n in full])))
        for n in nested:
            done[n] = compute_nested(self.cov.matrix(n), self.spaces[n], self.rule(n))
        spaces = [done[n] for n in names]
        for name, ns in zip(names, spaces):
            self.spaces[name] = ns
            if t is not None:
                h = self.history[name]
                ev = ns.eigvals
                h["dims"].append(ns.r)
                h["kept_energy"].append(ns.kept_energy)
                h.setdefault("val_kept_energy", []).append(ns.val_kept_energy(self.val_matrix(name)))
                h["rank"].append(numerical_rank(ev))
                h["lambda_max"].append(ev[-1].item())
                self.spectra[f"{name}/task{t}"] = ev.cpu().numpy()

    # ---- covariance access (methods that transform a layer's old covariance) ---------------------
    def has_covariance(self, name: str, held_out: bool = False) -> bool:
        return name in (self.val_cov if held_out else self.cov).sums

    def covariance_sum(self, name: str, held_out: bool = False) -> torch.Tensor:
        """The un-normalised sum of outer products (what tasks add into)."""
        return (self.val_cov if held_out else self.cov).sums[name]

    def covariance_count(self, name: str, held_out: bool = False) -> int:
        return (self.val_cov if held_out else self.cov).counts[name]

    def set_covariance(
        self, name: str, total: torch.Tensor, count: int | None = None, recompute: bool = True, held_out: bool = False
    ) -> None:
        """Replace a layer's accumulated sum (and row count) of the training covariance, or of the
        held-out one with ``held_out``; recompute its null space unless told not to. Not recorded in
        ``history``: the next task boundary records it."""
        cov = self.val_cov if held_out else self.cov
        cov.sums[name] = total
        if count is not None:
            cov.counts[name] = count
        if recompute:
            self.spaces[name] = self.null_space(name)

    def projector(
        self, name: str, dtype=None, device=None, kind: str = "hard", sgp_scale: float = 10.0
    ) -> "Projector | ScaledProjector":
        """The projector of one layer's updates (:func:`make_projector` on its null space)."""
        layer = self.layers[name]
        return make_projector(
            self.spaces[name],
            kind,
            sgp_scale,
            dtype=dtype or layer.weight.dtype,
            device=device or layer.weight.device,
            scale_sqrt_r=self.scale_sqrt_r,
        )

    def state_dict(self) -> dict:
        """Tensors and plain containers only (checkpoints are loaded with ``weights_only=True``)."""
        return {
            "cov": self.cov.state_dict(),
            "val_cov": self.val_cov.state_dict(),
            "history": self.history,
            "spectra": {k: torch.from_numpy(v) for k, v in self.spectra.items()},
            "rules": self.rules,
            "task": self.task,
            "spaces": {n: (ns.eigvals.cpu(), ns.eigvecs.cpu(), ns.r, ns.kept) for n, ns in self.spaces.items()}
            if self.eigen_update == "nested"
            else None,
        }  # nested spaces are path-dependent: keep them

    def load_state_dict(self, state: dict) -> None:
        self.cov.load_state_dict(state["cov"])
        if "val_cov" in state:
            self.val_cov.load_state_dict(state["val_cov"])
        self.history, self.rules = state["history"], state["rules"]
        self.task = state.get("task", max((len(h["dims"]) for h in self.history.values()), default=0) - 1)
        self.spectra = {k: v.numpy() for k, v in state["spectra"].items()}
        if state.get("spaces") is not None:
            device = next(iter(self.layers.values())).weight.device if self.layers else "cpu"
            self.spaces = {
                n: NullSpace(ev.to(device), vec.to(device), r, kept)
                for n, (ev, vec, r, kept) in state["spaces"].items()
            }
        elif self.cov.sums:
            self.recompute(None)

"""Null spaces of a covariance: eigendecomposition, selection rules, and projectors.

Given the accumulated covariance ``C`` of a layer's old-task inputs, its eigenvectors with the
smallest eigenvalues span an approximate null space ``U2`` (d x r). Adam-NSCL (Eq. 6) projects
every update of the layer as ``dW <- dW U2 U2^T`` (W stored ``(out, d)``), so ``dW x ~ 0`` for old
inputs ``x``.

Selection rules (``rule``):

* ``a_min`` (paper, Alg. 2): null = eigenvalues ``<= a * lambda_min``. On a rank-deficient covariance
  (fewer rows than d, zero-output units, constant pixels) ``lambda_min`` is floating-point noise and
  the rule collapses to a handful of arbitrary directions (the official code's stage-4 layers keep
  5/4608). ``floor="rank"`` (principled, default) floors ``lambda_min`` at the numerical-rank
  tolerance ``d * eps(float64) * lambda_max`` (as ``numpy.linalg.matrix_rank``), so every numerically
  null direction is in the null space and ``a`` acts relative to that floor. ``floor="none"`` is the
  official behaviour.
* ``energy`` (GPM-style): the largest directions holding a fraction ``energy`` of the total
  eigenvalue mass are protected; the rest is the null space.
* ``rel_tol``: null = eigenvalues ``<= rel_tol * lambda_max``.

The kept-energy ratio ``R = sum_{null} lambda / sum lambda`` (paper Eq. 7) measures how much of the
old inputs' energy the allowed updates may still touch.

Cost at a task boundary. Layers of the same size are decomposed by one batched ``eigh`` call (on
CPU the per-matrix results are bitwise those of separate calls; on a GPU it saves launches). With
``eigen_update="nested"`` the tracker reuses the previous eigenbasis from task 2 on: the new null
space is searched only inside the previous one, by Rayleigh-Ritz (``eigh`` of ``U2^T C U2``, r x r,
instead of d x d), and the full spectrum comes from the cheaper ``eigvalsh``. A Ritz vector's value
is exactly its energy ``v^T C v``, so every kept direction meets the threshold; by eigenvalue
interlacing the nested null space is never larger than the full one (it can be smaller: a direction
of the old range whose relative energy dropped below the threshold stays protected).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

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
        total = self.eigvals.clamp_min(0).sum().item()
        return self.eigvals[: self.r].clamp_min(0).sum().item() / total if total > 0 else 1.0

    @property
    def null_basis(self) -> torch.Tensor:
        return self.eigvecs[:, : self.r]

    @property
    def range_basis(self) -> torch.Tensor:
        return self.eigvecs[:, self.r:]


def null_dim(eigvals: torch.Tensor, rule: str = "a_min", a: float = 10.0, floor: str = "rank",
             energy: float = 0.99, rel_tol: float = 1e-3) -> int:
    """Number of eigenvalues (ascending ``eigvals``) that the rule puts in the null space."""
    ev = eigvals.to(torch.float64)
    d = ev.numel()
    lam_max = ev[-1].item() if d else 0.0
    if d == 0:
        return 0
    if lam_max <= 0:  # no data seen: everything is null
        return d
    if rule == "a_min":
        lam_min = ev[0].item()
        if floor == "rank":
            lam_min = max(lam_min, d * torch.finfo(torch.float64).eps * lam_max)
        elif floor != "none":
            raise ValueError(f"unknown a_min floor {floor!r}")
        return int((ev <= a * lam_min).sum().item())
    if rule == "energy":
        desc = ev.clamp_min(0).flip(0)
        cum = desc.cumsum(0) / desc.sum()
        protected = int((cum < energy - 1e-12).sum().item()) + 1  # smallest k with cum[k-1] >= energy
        return d - min(protected, d)
    if rule == "rel_tol":
        return int((ev <= rel_tol * lam_max).sum().item())
    raise ValueError(f"unknown null-space rule {rule!r}")


def null_threshold(eigvals: torch.Tensor, rule: str = "a_min", a: float = 10.0, floor: str = "rank",
                   energy: float = 0.99, rel_tol: float = 1e-3) -> float:
    """The eigenvalue bound of :func:`null_dim`: null directions are those with energy <= this value
    (for ``energy``, midway between the last null and the first protected eigenvalue)."""
    ev = eigvals.to(torch.float64)
    d = ev.numel()
    if d == 0 or ev[-1].item() <= 0:
        return math.inf
    lam_max = ev[-1].item()
    if rule == "a_min":
        lam_min = ev[0].item()
        if floor == "rank":
            lam_min = max(lam_min, d * torch.finfo(torch.float64).eps * lam_max)
        return a * lam_min
    if rule == "rel_tol":
        return rel_tol * lam_max
    r = null_dim(ev, rule, a, floor, energy, rel_tol)
    if r == 0:
        return -math.inf
    return math.inf if r == d else (ev[r - 1].item() + ev[r].item()) / 2


def compute(cov: torch.Tensor, **rule) -> NullSpace:
    """Eigendecompose a covariance (``torch.linalg.eigh`` in float64: ascending order) and select."""
    return compute_many([cov], [rule])[0]


def compute_many(covs: list[torch.Tensor], rules: list[dict], batched: bool | None = None) -> list[NullSpace]:
    """:func:`compute` for many covariances, with one batched ``eigh`` per matrix size.

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
        eigvals, eigvecs = torch.linalg.eigh(cov)
        # A covariance is PSD: negative eigenvalues are rounding noise. Order by |lambda| (= the singular
        # values the official code's SVD returns), so the null space is always a prefix.
        eigvals, order = eigvals.abs().sort(-1)
        eigvecs = eigvecs.gather(2, order[:, None, :].expand_as(eigvecs))
        for j, i in enumerate(idx):
            ev = eigvals[j]
            out[i] = NullSpace(ev, eigvecs[j], null_dim(ev, **rules[i]))
    return out


def compute_nested(cov: torch.Tensor, previous: NullSpace, **rule) -> NullSpace:
    """Null space of ``cov`` inside ``previous``'s null space (Rayleigh-Ritz; see the module doc).

    The rule is applied to the exact spectrum (``eigvalsh``); its threshold (:func:`null_threshold`)
    is the bound the Ritz values must meet, so the result equals the full computation whenever the
    full null space lies inside the previous one.
    """
    cov = cov.to(torch.float64)
    cov = (cov + cov.T) / 2
    exact = torch.linalg.eigvalsh(cov).abs().sort().values
    r_full = null_dim(exact, **rule)
    u2 = previous.null_basis.to(device=cov.device, dtype=torch.float64)
    if previous.r == 0 or r_full == 0:
        basis = previous.eigvecs.to(device=cov.device, dtype=torch.float64)
        return NullSpace(exact, basis, 0, kept=0.0)
    small = u2.T @ (cov @ u2)
    theta, w = torch.linalg.eigh((small + small.T) / 2)
    theta, order = theta.abs().sort()
    w = w[:, order]
    r = int((theta <= null_threshold(exact, **rule)).sum().item())
    basis = torch.cat([u2 @ w, previous.range_basis.to(device=cov.device, dtype=torch.float64)], 1)
    total = exact.clamp_min(0).sum().item()
    kept = theta[:r].clamp_min(0).sum().item() / total if total > 0 else 1.0
    return NullSpace(exact, basis, r, kept=kept)


class Projector:
    """Right-multiplies ``(out, d)`` updates by ``P = U2 U2^T`` (optionally ``/ sqrt(r)``).

    Uses whichever basis is thinner: ``u U2 U2^T`` when ``r <= d - r`` else ``u - (u U1) U1^T`` with
    the range basis ``U1``; both cost ``4 out d min(r, d-r)`` flops, never a dense ``d x d`` product.
    """

    def __init__(self, ns: NullSpace, dtype: torch.dtype = torch.float32, device=None,
                 scale_sqrt_r: bool = False):
        self.d, self.r = ns.d, ns.r
        self.scale = 1.0 / (ns.r ** 0.5) if (scale_sqrt_r and ns.r > 0) else 1.0
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


class NullSpaceTracker:
    """Per-layer covariance accumulated over tasks, its null space after each task, and the history.

    ``history[layer]`` = ``{"d", "dims": [r per task], "kept_energy": [R per task], "rank": [...],
    "lambda_max": [...]}``; ``spectra["<layer>/task<t>"]`` = ascending eigenvalues after task t.
    """

    def __init__(self, layers: dict, cfg: dict):
        from .covariance import Covariance, input_dim

        self.layers = layers
        self.cfg = cfg
        self.cov = Covariance(layers, cfg["covariance"], cfg.get("cov_patches"))
        self.spaces: dict[str, NullSpace] = {}
        self.history = {n: {"d": input_dim(m), "dims": [], "kept_energy": [], "rank": [], "lambda_max": []}
                        for n, m in layers.items()}
        self.spectra: dict[str, "np.ndarray"] = {}
        self.rules = {n: {} for n in layers}  # per-layer overrides of the selection rule

    def rule(self, name: str) -> dict:
        c = self.cfg
        base = dict(rule=c["nullspace_rule"], a=c["a"], floor=c["a_min_floor"], energy=c["energy"],
                    rel_tol=c["rel_tol"])
        return {**base, **self.rules.get(name, {})}

    def update(self, forward, batches, t: int) -> None:
        """Add task ``t``'s layer inputs (``forward(x)`` over ``batches``) and recompute the null spaces."""
        self.cov.update(forward, batches)
        self.recompute(t)

    def recompute(self, t: int | None = None) -> None:
        names = list(self.layers)
        nested = self.cfg.get("eigen_update", "full") == "nested" and t is not None and t > 0
        if nested:
            spaces = [compute_nested(self.cov.matrix(n), self.spaces[n], **self.rule(n)) if n in self.spaces
                      else compute(self.cov.matrix(n), **self.rule(n)) for n in names]
        else:
            spaces = compute_many([self.cov.matrix(n) for n in names], [self.rule(n) for n in names])
        for name, ns in zip(names, spaces):
            self.spaces[name] = ns
            if t is not None:
                h = self.history[name]
                ev = ns.eigvals
                tol = ns.d * torch.finfo(torch.float64).eps * max(ev[-1].item(), 0.0)
                h["dims"].append(ns.r)
                h["kept_energy"].append(ns.kept_energy)
                h["rank"].append(int((ev > tol).sum().item()))
                h["lambda_max"].append(ev[-1].item())
                self.spectra[f"{name}/task{t}"] = ev.cpu().numpy()

    def projector(self, name: str, dtype=None, device=None) -> Projector:
        layer = self.layers[name]
        return Projector(self.spaces[name], dtype=dtype or layer.weight.dtype,
                         device=device or layer.weight.device, scale_sqrt_r=self.cfg["scale_sqrt_r"])

    def state_dict(self) -> dict:
        state = {"cov": self.cov.state_dict(), "history": self.history, "spectra": self.spectra,
                 "rules": self.rules}
        if self.cfg.get("eigen_update", "full") == "nested":  # path-dependent: the bases themselves
            state["spaces"] = {n: (ns.eigvals.cpu(), ns.eigvecs.cpu(), ns.r, ns.kept)
                               for n, ns in self.spaces.items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        self.cov.load_state_dict(state["cov"])
        self.history, self.spectra, self.rules = state["history"], state["spectra"], state["rules"]
        if state.get("spaces") is not None:
            device = next(iter(self.layers.values())).weight.device if self.layers else "cpu"
            self.spaces = {n: NullSpace(ev.to(device), vec.to(device), r, kept)
                           for n, (ev, vec, r, kept) in state["spaces"].items()}
        elif self.cov.sums:
            self.recompute(None)

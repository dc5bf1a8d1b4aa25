"""Null-space selection rules on constructed spectra, and the projectors (nscl.core.nullspace)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from nscl.core.nullspace import (
    make_projector,
    NullSpace,
    NullSpaceRule,
    NullSpaceTracker,
    Projector,
    ScaledProjector,
    compute,
    compute_many,
    compute_nested,
    energy_at,
    null_dim,
    sgp_importance,
)


def add_task(tr: NullSpaceTracker, forward, batches, t: int, val_batches=()) -> None:
    """What the trainer does at a task boundary: add task ``t``'s layer inputs, recompute the null spaces."""
    tr.cov.update(forward, batches)
    tr.val_cov.update(forward, val_batches)
    tr.recompute(t)


def random_space(d: int, r: int, seed: int = 0) -> NullSpace:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    eigvals = torch.linspace(0.1, 5.0, d, dtype=torch.float64)
    return NullSpace(eigvals, q, r)


@pytest.mark.parametrize(
    "d,r,kind", [(12, 3, "null"), (12, 6, "null"), (12, 9, "range"), (12, 0, "null"), (12, 12, "range")]
)
def test_projector_symmetric_idempotent_and_equal_to_u2u2t(d, r, kind):
    ns = random_space(d, r)
    proj = Projector(ns, dtype=torch.float64)
    assert proj.kind == kind
    assert proj.basis.shape == (d, min(r, d - r))  # the thin basis, never d x d
    P = proj.matrix()
    u2 = ns.null_basis
    torch.testing.assert_close(P, u2 @ u2.T, rtol=0, atol=1e-12)
    torch.testing.assert_close(P, P.T, rtol=0, atol=1e-12)
    torch.testing.assert_close(P @ P, P, rtol=0, atol=1e-12)
    assert torch.linalg.matrix_rank(P).item() == r
    # applied to an (out, d) update: right-multiplication by P; rows end up orthogonal to the range
    u = torch.randn(5, d, dtype=torch.float64)
    pu = proj(u)
    torch.testing.assert_close(pu, u @ P, rtol=0, atol=1e-12)
    if r < d:
        assert (pu @ ns.range_basis).abs().max().item() < 1e-12


@pytest.mark.parametrize("r", [3, 9])
def test_scale_sqrt_r(r):
    ns = random_space(12, r, seed=1)
    plain = Projector(ns, dtype=torch.float64).matrix()
    scaled = Projector(ns, dtype=torch.float64, scale_sqrt_r=True).matrix()
    torch.testing.assert_close(scaled, plain / r**0.5, rtol=0, atol=1e-12)


def test_projector_dtype_and_thin_form_in_float32():
    ns = random_space(10, 7, seed=2)
    proj = Projector(ns)  # float32 by default: the model's dtype
    assert proj.basis.dtype == torch.float32 and proj.kind == "range"
    u = torch.randn(3, 10)
    torch.testing.assert_close(proj(u), u @ (ns.null_basis @ ns.null_basis.T).float(), rtol=1e-5, atol=1e-5)


# ---- selection rules -------------------------------------------------------------------------
def test_a_min_rule_on_full_rank_spectrum():
    ev = torch.tensor([1.0, 5.0, 10.0, 10.5, 100.0], dtype=torch.float64)
    assert null_dim(ev, "a_min", a=10.0) == 3  # <= 10 * 1 (the official code's <=)
    assert null_dim(ev, "a_min", a=10.0, floor="none") == 3  # no rank deficiency: floors agree
    assert null_dim(ev, "a_min", a=4.9) == 1


def test_energy_and_rel_tol_rules():
    ev = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)  # total 10, from the top: 4, 7, 9, 10
    assert null_dim(ev, "energy", energy=0.7) == 2  # 4+3 = 70% protected, {1, 2} null
    assert null_dim(ev, "energy", energy=0.71) == 1
    assert null_dim(ev, "energy", energy=0.3) == 3
    assert null_dim(ev, "energy", energy=1.0) == 0
    ev2 = torch.tensor([1e-5, 1e-3, 2e-3, 0.5, 1.0], dtype=torch.float64)
    assert null_dim(ev2, "rel_tol", rel_tol=1e-3) == 2
    assert null_dim(ev2, "rel_tol", rel_tol=0.6) == 4
    assert null_dim(torch.zeros(4, dtype=torch.float64), "energy") == 4  # nothing seen: all null


def test_a_min_collapses_on_rank_deficient_covariance_unless_floored():
    """Fewer samples (n=15) than dimensions (d=40): 25 eigenvalues are float noise around 0.

    The raw rule (official, ``floor="none"``) takes ``a * lambda_min`` with ``lambda_min`` that noise, so
    it keeps an arbitrary handful of the 25 exact null directions -- or none at all when the noise
    is negative. The principled floor at the numerical-rank tolerance keeps exactly the 25.
    """
    g = torch.Generator().manual_seed(0)
    x = torch.randn(15, 40, generator=g, dtype=torch.float64)
    ns = compute(x.T @ x / 15, rule="a_min", a=10.0, floor="rank")
    assert ns.r == 25
    assert ns.kept_energy < 1e-13
    raw = null_dim(ns.eigvals, "a_min", a=10.0, floor="none")
    assert raw < 25  # collapsed: most exact null directions are lost
    # constructed spectrum: noise of either sign below 15 real eigenvalues
    noise = torch.tensor([-3e-16, 1e-17, 4e-16, 2e-15, 5e-16], dtype=torch.float64)
    ev = torch.cat([noise, torch.linspace(0.5, 8.0, 15, dtype=torch.float64)]).sort().values
    assert null_dim(ev, "a_min", a=10.0, floor="none") == 0  # negative lambda_min: nothing is null
    assert null_dim(ev, "a_min", a=10.0, floor="rank") == 5
    ev_pos = ev.clone()
    ev_pos[0] = 5e-18
    assert null_dim(ev_pos, "a_min", a=10.0, floor="none") == 2  # arbitrary: depends on the noise
    assert null_dim(ev_pos, "a_min", a=10.0, floor="rank") == 5


def test_compute_eigendecomposition_and_kept_energy():
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    lam = torch.tensor([0.01, 0.02, 0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    ns = compute(q @ torch.diag(lam) @ q.T, rule="a_min", a=2.5, floor="rank")
    torch.testing.assert_close(ns.eigvals, lam)
    assert ns.r == 2
    assert ns.kept_energy == pytest.approx(0.03 / lam.sum().item(), rel=1e-10)
    # null basis spans the eigenvectors of the two smallest eigenvalues
    P = ns.null_basis @ ns.null_basis.T
    torch.testing.assert_close(P, q[:, :2] @ q[:, :2].T, rtol=0, atol=1e-10)


def test_tracker_history_spectra_and_per_layer_rules():
    torch.manual_seed(0)
    lin = nn.Linear(8, 4, bias=False)
    tr = NullSpaceTracker({"l": lin}, "per_sample", rule=NullSpaceRule("a_min", a=10.0, floor="rank"))
    basis = torch.randn(8, 3)
    x1 = torch.randn(50, 3) @ basis.T  # task 1 inputs: a 3-dim subspace of R^8
    add_task(tr, lin, [x1], t=0)
    x2 = torch.randn(50, 2) @ torch.randn(2, 8)
    add_task(tr, lin, [x2], t=1)
    h = tr.history["l"]
    assert h["d"] == 8 and h["dims"] == [5, 3] and h["rank"] == [3, 5]
    assert set(tr.spectra) == {"l/task0", "l/task1"} and tr.spectra["l/task1"].shape == (8,)
    assert tr.projector("l").r == 3
    tr.set_rule("l", rule="rel_tol", rel_tol=2.0)  # everything null
    tr.recompute()
    assert tr.projector("l").r == 8
    assert h["dims"] == [5, 3]  # recompute without a task does not append history


# ---- GPM-style rising threshold and the held-out leakage budget --------------------------------
def test_energy_at_rises_per_task_and_is_capped():
    assert energy_at(0, 0.97, 0.003) == pytest.approx(0.97)
    assert energy_at(5, 0.97, 0.003) == pytest.approx(0.985)
    assert energy_at(50, 0.97, 0.003, cap=0.99) == pytest.approx(0.99)
    assert energy_at(7, 0.9) == 0.9  # no step: the flat energy rule


def test_leak_rule_on_constructed_spectrum_and_held_out_energies():
    ev = torch.tensor([1.0, 2.0, 3.0, 4.0, 90.0], dtype=torch.float64)  # training eigenvalues, total 100
    q = torch.tensor([1.0, 1.0, 2.0, 6.0, 90.0], dtype=torch.float64)  # u_i^T C_val u_i, total 100
    # held-out cumulative shares 0.01, 0.02, 0.04, 0.10, 1.0: the largest prefix within the budget
    assert [null_dim(ev, "leak", leak=b, val_energy=q) for b in (0.0, 0.01, 0.02, 0.05, 0.099, 0.1, 0.5)] == [
        0,
        1,
        2,
        3,
        3,
        4,
        4,
    ]
    # without held-out data the training energies decide (shares 0.01, 0.03, 0.06, 0.10): another answer
    assert null_dim(ev, "leak", leak=0.05) == 2
    assert null_dim(ev, "leak", leak=0.05, val_energy=torch.zeros(5, dtype=torch.float64)) == 2
    with pytest.raises(ValueError, match="val_energy has 4 entries"):
        null_dim(ev, "leak", leak=0.05, val_energy=q[:4])


def rotated(diag: list[float], q: torch.Tensor) -> torch.Tensor:
    return q @ torch.diag(torch.tensor(diag, dtype=torch.float64)) @ q.T


def test_leak_rule_keeps_directions_that_held_out_data_uses():
    """The training covariance has five tiny directions; held-out data of the same tasks puts real
    energy into one of them (the training sample missed it). The energy rule frees all five; the
    leak rule stops before that direction, whatever the budget below its share."""
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    train = rotated([1e-6, 2e-6, 3e-6, 4e-6, 5e-6, 2.0, 5.0, 10.0], q)
    val = rotated([1e-6, 2e-6, 3e-6, 1.0, 5e-6, 2.0, 5.0, 10.0], q)  # the 4th direction: 1/18 of C_val
    assert compute(train, rule="energy", energy=0.98).r == 5
    assert compute(train, val_cov=val, rule="leak", leak=0.02).r == 3
    assert compute(train, val_cov=val, rule="leak", leak=0.06).r == 5  # 1/18 = 0.056 fits
    assert compute(train, val_cov=val, rule="leak", leak=0.2).r == 6  # + 2/18 = 0.167
    assert compute(train, rule="leak", leak=0.02).r == 5  # no held-out data: training energies
    ns = compute(train, val_cov=val, rule="leak", leak=0.02)
    assert ns.val_kept_energy(val) == pytest.approx(6e-6 / 18.000015, rel=1e-6)
    P = ns.null_basis @ ns.null_basis.T
    torch.testing.assert_close(P, q[:, :3] @ q[:, :3].T, rtol=0, atol=1e-8)


def test_tracker_leak_rule_from_train_and_val_batches():
    """Tracker end to end: task inputs live in a 3-dim subspace of R^10 (train and val alike), except
    that the validation inputs also vary along one direction the 40 training rows never reach."""
    torch.manual_seed(0)
    lin = nn.Linear(10, 4, bias=False)
    rule = NullSpaceRule("leak", leak=0.05)
    tr = NullSpaceTracker({"l": lin}, "per_sample", rule=rule)
    basis, _ = torch.linalg.qr(torch.randn(10, 10, dtype=torch.float64))
    basis = basis.float()
    x_train = torch.randn(40, 3) @ basis[:, :3].T
    x_val = torch.randn(400, 3) @ basis[:, :3].T + torch.randn(400, 1) @ basis[:, 3:4].T
    add_task(tr, lin, [x_train], t=0, val_batches=[x_val])
    h = tr.history["l"]
    # 7 exact null directions of the training covariance; the one val direction holds 1/4 of C_val,
    # so with a 5% budget it stays protected (it is one of the 7 equally null ones: the rule must see it)
    assert h["rank"] == [3]
    assert h["dims"][0] < 7
    assert h["val_kept_energy"][0] <= 0.05
    assert tr.projector("l").r == h["dims"][0]
    # the same tracker without held-out data frees all 7
    tr2 = NullSpaceTracker({"l": lin}, "per_sample", rule=rule)
    add_task(tr2, lin, [x_train], t=0)
    assert tr2.history["l"]["dims"] == [7] and tr2.history["l"]["val_kept_energy"] == [None]


def test_tracker_rising_energy_threshold():
    """The same inputs every task (energy shares 0.5, 0.3, 0.12, 0.05, 0.025, 0.005): the protected
    set grows as energy_t = 0.9, 0.95, 0.99 (capped) after tasks 1, 2, 3."""
    lin = nn.Linear(6, 2, bias=False)
    tr = NullSpaceTracker(
        {"l": lin}, "per_sample", rule=NullSpaceRule("energy", energy=0.9, energy_step=0.05, energy_max=0.99)
    )
    x = torch.diag(torch.tensor([0.5, 0.3, 0.12, 0.05, 0.025, 0.005]).sqrt())
    for t in range(4):
        add_task(tr, lin, [x], t=t)
    assert tr.history["l"]["dims"] == [3, 2, 1, 1]
    assert [tr.rule("l", t).energy for t in range(4)] == pytest.approx([0.9, 0.95, 0.99, 0.99])


# ---- batched and nested eigendecompositions ---------------------------------------------------------
def test_compute_many_is_bitwise_compute_per_matrix():
    g = torch.Generator().manual_seed(3)
    covs = []
    for d, n in ((6, 3), (9, 20), (6, 10), (9, 4), (6, 2)):
        x = torch.randn(n, d, generator=g, dtype=torch.float64)
        covs.append(x.T @ x / n)
    rules = [NullSpaceRule("a_min", a=10.0, floor=f) for f in ("rank", "none", "rank", "rank", "none")]
    many = compute_many(covs, rules)  # CPU: one call per matrix
    batched = compute_many(covs, rules, batched=True)  # one eigh per size, as on a GPU
    for c, rule, ns, nb in zip(covs, rules, many, batched):
        one = compute(c, rule)
        assert torch.equal(ns.eigvals, one.eigvals) and torch.equal(ns.eigvecs, one.eigvecs) and ns.r == one.r
        assert nb.r == one.r  # same selection, same null space up to rounding
        torch.testing.assert_close(nb.eigvals, one.eigvals, rtol=0, atol=1e-12)
        torch.testing.assert_close(
            nb.null_basis @ nb.null_basis.T, one.null_basis @ one.null_basis.T, rtol=0, atol=1e-10
        )


def _cov(x):
    return x.T @ x / len(x)


def test_nested_null_space_inside_previous_never_larger_and_exactly_protective():
    g = torch.Generator().manual_seed(4)
    d = 12
    rule = NullSpaceRule("a_min", a=10.0, floor="rank")
    x1 = torch.randn(40, 4, generator=g, dtype=torch.float64) @ torch.randn(4, d, generator=g, dtype=torch.float64)
    prev = compute(_cov(x1), rule)
    assert prev.r == d - 4
    # task 2 adds 3 new directions: the full null space (d - 7) lies inside the previous one -> nested = full
    x2 = torch.randn(40, 3, generator=g, dtype=torch.float64) @ torch.randn(3, d, generator=g, dtype=torch.float64)
    c = (_cov(x1) * 40 + _cov(x2) * 40) / 80
    full, nested = compute(c, rule), compute_nested(c, prev, rule)
    assert nested.r == full.r == d - 7
    torch.testing.assert_close(
        nested.null_basis @ nested.null_basis.T, full.null_basis @ full.null_basis.T, rtol=0, atol=1e-9
    )
    assert nested.kept_energy == pytest.approx(full.kept_energy, abs=1e-12)
    assert torch.equal(nested.eigvals, full.eigvals.abs().sort().values) or torch.allclose(
        nested.eigvals, full.eigvals, rtol=0, atol=1e-12
    )
    # the basis is orthonormal, its null part inside the previous null space, and Projector accepts it
    torch.testing.assert_close(nested.eigvecs.T @ nested.eigvecs, torch.eye(d, dtype=torch.float64), rtol=0, atol=1e-12)
    assert (prev.range_basis.T @ nested.null_basis).abs().max() < 1e-12
    proj = Projector(nested, dtype=torch.float64)
    assert (x1 @ proj.matrix()).abs().max() < 1e-10 and (x2 @ proj.matrix()).abs().max() < 1e-10
    # full-rank data afterwards: lambda_min rises, the full rule re-admits old directions, nested does not
    x3 = torch.randn(200, d, generator=g, dtype=torch.float64) * 0.2
    c3 = (c * 80 + _cov(x3) * 200) / 280
    full3, nested3 = compute(c3, rule), compute_nested(c3, nested, rule)
    assert 0 < nested3.r < full3.r
    energies = torch.diag(nested3.null_basis.T @ c3 @ nested3.null_basis)
    assert energies.max() <= rule.threshold(full3.eigvals) * (1 + 1e-12)  # each kept direction meets it
    assert (nested.range_basis.T @ nested3.null_basis).abs().max() < 1e-12


def test_nested_update_only_where_the_previous_null_space_is_small():
    """The tracker's nested update keeps a layer's null space inside the previous one where r <= 3/4 d,
    and falls back to the full (exact) decomposition where the previous null space is larger."""
    from nscl.core.nullspace import NESTED_MAX_FRACTION

    torch.manual_seed(0)
    small, big = nn.Linear(12, 3, bias=False).double(), nn.Linear(12, 3, bias=False).double()
    rule = NullSpaceRule("a_min", a=10.0, floor="rank")
    nested = NullSpaceTracker({"small": small, "big": big}, rule=rule, eigen_update="nested")
    full = NullSpaceTracker({"small": small, "big": big}, rule=rule)
    g = torch.Generator().manual_seed(1)
    x_small = torch.randn(40, 10, generator=g, dtype=torch.float64) @ torch.randn(
        10, 12, generator=g, dtype=torch.float64
    )
    x_big = torch.randn(40, 2, generator=g, dtype=torch.float64) @ torch.randn(2, 12, generator=g, dtype=torch.float64)
    batches = [(x_small, x_big)]

    def fwd(pair):
        small(pair[0])
        big(pair[1])

    for tr in (nested, full):
        add_task(tr, fwd, batches, t=0)
    assert nested.spaces["small"].r == 2 and nested.spaces["big"].r == 10 > NESTED_MAX_FRACTION * 12
    prev_small = nested.spaces["small"].null_basis.clone()
    y = torch.randn(200, 12, generator=g, dtype=torch.float64) * 0.3  # full-rank second task
    for tr in (nested, full):
        add_task(tr, fwd, [(y, y)], t=1)
    assert nested.spaces["small"].kept is not None and nested.spaces["big"].kept is None  # nested / full path
    assert nested.spaces["big"].r == full.spaces["big"].r
    assert torch.equal(nested.spaces["big"].eigvecs, full.spaces["big"].eigvecs)
    u = nested.spaces["small"].null_basis
    assert nested.spaces["small"].r <= full.spaces["small"].r
    assert (u - prev_small @ (prev_small.T @ u)).abs().max() < 1e-12  # inside the previous null space


# ---- the rule as one object ------------------------------------------------------------------------
def test_rule_defaults_are_the_packages():
    """A rule built without arguments is the one a run at the package defaults uses (so a default
    changed in one place cannot silently differ from the other)."""
    from nscl.experiment import config

    assert config.nullspace_rule(config.defaults()) == NullSpaceRule()
    assert NullSpaceRule().kind == "energy" and NullSpaceRule().energy == 0.9


def test_rule_threshold_agrees_with_null_dim_and_rejects_unknown_kinds():
    ev = torch.tensor([1e-6, 1e-3, 0.02, 0.5, 1.0, 4.0], dtype=torch.float64)
    for rule in (
        NullSpaceRule("a_min", a=30.0),
        NullSpaceRule("rel_tol", rel_tol=0.01),
        NullSpaceRule("energy", energy=0.95),
        NullSpaceRule("energy", energy=0.6),
    ):
        r = rule.null_dim(ev)
        assert r == int((ev <= rule.threshold(ev)).sum()), rule  # exactly the eigenvalues under the bound
        assert null_dim(ev, rule.kind, **{k: v for k, v in rule.items() if k != "rule"}) == r  # keyword form
        assert compute(torch.diag(ev), **rule).r == r  # the mapping view: compute(C, **rule)
    with pytest.raises(ValueError, match="unknown null-space rule 'svd'"):
        NullSpaceRule("svd")
    with pytest.raises(ValueError, match="unknown a_min floor"):
        NullSpaceRule("a_min", floor="zero")


def test_rule_at_task_resolves_the_rising_threshold_only():
    rule = NullSpaceRule(energy=0.9, energy_step=0.05, energy_max=0.99)
    assert [rule.at_task(t).energy for t in range(4)] == pytest.approx([0.9, 0.95, 0.99, 0.99])
    assert rule.at_task(3).energy_step == 0.0 and rule.at_task(3).a == rule.a
    flat = NullSpaceRule("a_min", a=5.0)
    assert flat.at_task(10) == flat
    assert flat.with_(rule="rel_tol") == NullSpaceRule("rel_tol", a=5.0)


# ---- SGP's scaled projection -----------------------------------------------------------------------
@pytest.mark.parametrize("r", [0, 3, 7, 10])
def test_scaled_projector_limits(r):
    """s = 1 on every protected direction is the hard null-space projection; s = 0 leaves the update
    as it is (plain Adam); in between it is I - U1 diag(s) U1^T."""
    ns = random_space(10, r, seed=r)
    u = torch.randn(4, 10, dtype=torch.float64)
    hard = Projector(ns, dtype=torch.float64)
    ones, zeros = torch.ones(10 - r, dtype=torch.float64), torch.zeros(10 - r, dtype=torch.float64)
    torch.testing.assert_close(ScaledProjector(ns, ones, dtype=torch.float64)(u), hard(u), rtol=0, atol=1e-12)
    torch.testing.assert_close(ScaledProjector(ns, zeros, dtype=torch.float64)(u), u, rtol=0, atol=0)
    s = torch.linspace(0, 1, 10 - r, dtype=torch.float64)
    u1 = ns.range_basis
    expected = torch.eye(10, dtype=torch.float64) - u1 @ torch.diag(s) @ u1.T
    torch.testing.assert_close(ScaledProjector(ns, s, dtype=torch.float64).matrix(), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="protected directions"):
        ScaledProjector(ns, torch.ones(11 - r))


def test_sgp_importance_formula_and_limits():
    """Eq. 2 of SGP on sigma = sqrt(lambda): the largest direction gets 1, the others
    (alpha + 1) sigma / (alpha sigma + sigma_max); alpha -> inf gives 1, alpha = 0 gives sigma / sigma_max."""
    ev = 4 * torch.tensor([0.0, 0.01, 0.04, 0.25, 1.0], dtype=torch.float64)  # sigma = 2 x (0, .1, .2, .5, 1)
    s = sgp_importance(ev, 2, alpha=10.0)  # protected: sigma = .2, .5, 1
    torch.testing.assert_close(s, torch.tensor([11 * 0.2 / 3.0, 11 * 0.5 / 6.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(sgp_importance(ev, 2, alpha=0.0), torch.tensor([0.2, 0.5, 1.0], dtype=torch.float64))
    assert (sgp_importance(ev, 1, alpha=1e9) - 1).abs().max() < 1e-6
    assert sgp_importance(ev, 5, alpha=10.0).numel() == 0


@pytest.mark.parametrize("alpha", [1e154, 1e308, 1.7e308])
def test_sgp_importance_of_a_huge_scale_is_the_hard_projection_not_nan(alpha):
    """Issue 27, minor: ``sgp_scale=1e308`` overflowed (inf / inf = NaN), and the NaN loss blamed the learning rate."""
    ev = 100 * torch.tensor([0.0, 0.0, 0.04, 0.25, 1.0], dtype=torch.float64)
    s = sgp_importance(ev, 1, alpha=alpha)  # protected: sigma = 0, 2, 5, 10 (alpha sigma > the largest float)
    torch.testing.assert_close(s, torch.tensor([0.0, 1.0, 1.0, 1.0], dtype=torch.float64))


def test_make_projector_builds_both_kinds():
    """The one builder: ``hard`` is U2 U2^T, ``scaled`` is I - U1 diag(s) U1^T with SGP's importance,
    an unknown kind is refused."""
    ns = random_space(10, 4, seed=1)
    eye = torch.eye(10, dtype=torch.float64)
    hard = make_projector(ns, "hard", dtype=torch.float64)
    torch.testing.assert_close(hard.matrix(), ns.null_basis @ ns.null_basis.T, rtol=0, atol=1e-12)
    s = sgp_importance(ns.eigvals, ns.r, 3.0)
    scaled = make_projector(ns, "scaled", sgp_scale=3.0, dtype=torch.float64)
    u1 = ns.range_basis
    torch.testing.assert_close(scaled.matrix(), eye - u1 @ torch.diag(s) @ u1.T, rtol=0, atol=1e-12)
    assert not torch.allclose(scaled.matrix(), hard.matrix())
    with pytest.raises(ValueError, match="unknown projector 'soft'"):
        make_projector(ns, "soft")

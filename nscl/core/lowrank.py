"""Rank limitation: factorised layers ``W = A B^T``, a nuclear-norm surrogate and a rank budget.

A dense backbone layer ``y = W x`` (W viewed as ``(out, d)``; a conv's ``d = C kh kw`` im2col
patch) is replaced by :class:`Factorized`: ``y = A (m * (B^T x))`` with

* ``B``: ``d -> K`` (an ``nn.Linear``, or a K-channel ``nn.Conv2d`` with the layer's kernel, stride,
  padding and dilation), no bias;
* ``A``: ``K -> out`` (an ``nn.Linear``, or a 1x1 ``nn.Conv2d``), carrying the layer's bias if any;
* ``m``: a 0/1 buffer over the K inner components; only the first ``r`` are active (rank budget).

Identities (Srebro et al. 2005; Burer and Monteiro 2003)::

    ||W||_* = min_{A B^T = W} 1/2 (||A||_F^2 + ||B||_F^2)      (any K >= rank W)

attained at the balanced factors ``A = U S^1/2, B = V S^1/2`` of ``W = U S V^T``. So the weight
decay ``lambda/2 (||A||^2 + ||B||^2)`` on the active components (:func:`surrogate`) is an upper
bound on ``lambda ||W||_*``, equal to it at balanced factors, and needs no SVD per step.

:func:`factorize` swaps the backbone's Linear/Conv2d layers for factorised ones initialised with
the balanced SVD factors of the dense initialisation, so a full-rank factorised layer
(``K = min(out, d)``) computes exactly what the dense layer computed.

Skip rule: layers with input dimension ``d < lowrank_min_d`` (default 32) stay dense. The
ResNet-18 3x3 stem on RGB has ``d = 27`` (the small CNN's first conv on grey images ``d = 9``): its
rank is at most ``d`` anyway, so a factorisation saves nothing and only adds a layer.

Because the two factors have no non-linearity between them, the trainer's covariance tracker sees
``B``'s input (the layer input ``x``) and ``A``'s input (the masked bottleneck features ``B^T x``) as
ordinary layer inputs: both appear under the usual ``null_space`` keys (``<layer>.B``, ``<layer>.A``).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .covariance import input_dim


class Factorized(nn.Module):
    """``y = A(mask * B(x))``: a rank-<=K layer with a 0/1 mask over its K components."""

    def __init__(self, B: nn.Module, A: nn.Module):
        super().__init__()
        self.B, self.A = B, A
        self.K = B.weight.shape[0]
        self.register_buffer("mask", torch.ones(self.K))

    @classmethod
    def from_dense(cls, layer: nn.Module, K: int | None = None) -> "Factorized":
        """Balanced SVD factors of ``layer``'s weight (top-K); exact when ``K >= rank W``."""
        W = layer.weight.detach()
        out, d = W.shape[0], W[0].numel()
        K = min(out, d) if K is None else min(K, out, d)
        dev, dt = W.device, W.dtype
        if isinstance(layer, nn.Linear):
            B = nn.Linear(d, K, bias=False)
            A = nn.Linear(K, out, bias=layer.bias is not None)
        elif isinstance(layer, nn.Conv2d):
            if layer.groups != 1:
                raise NotImplementedError("grouped convolutions are not factorised")
            B = nn.Conv2d(
                layer.in_channels,
                K,
                layer.kernel_size,
                stride=layer.stride,
                padding=layer.padding,
                dilation=layer.dilation,
                bias=False,
            )
            A = nn.Conv2d(K, out, 1, bias=layer.bias is not None)
        else:
            raise TypeError(f"cannot factorise {type(layer).__name__}")
        fac = cls(B, A).to(device=dev, dtype=dt)
        U, S, Vh = torch.linalg.svd(W.reshape(out, d).double(), full_matrices=False)
        root = S[:K].sqrt()
        with torch.no_grad():
            fac.A.weight.copy_((U[:, :K] * root).reshape(fac.A.weight.shape).to(dt))
            fac.B.weight.copy_((Vh[:K].T * root).T.reshape(fac.B.weight.shape).to(dt))
            if layer.bias is not None:
                fac.A.bias.copy_(layer.bias)
        return fac

    @property
    def active(self) -> int:
        return int(self.mask.sum().item())

    def forward(self, x):
        z = self.B(x)
        z = z * (self.mask.view(1, -1, 1, 1) if z.dim() == 4 else self.mask)
        return self.A(z)

    def factors(self, active_only: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A (out, K), B (d, K))`` matrices, inactive columns zeroed when ``active_only``."""
        A = self.A.weight.reshape(self.A.weight.shape[0], self.K)
        B = self.B.weight.reshape(self.K, -1).T
        if active_only:
            A, B = A * self.mask, B * self.mask
        return A, B

    def weight(self) -> torch.Tensor:
        """The effective ``W = A diag(mask) B^T`` as an ``(out, d)`` matrix."""
        A, B = self.factors()
        return A @ B.T

    @torch.no_grad()
    def activate(self, r: int, project=None) -> list[int]:
        """Switch on components up to index ``r`` (never off). Returns the new component indices.

        New components start with a zero ``A`` column, so they add nothing to any output until
        trained. With ``project`` (a :class:`nscl.core.nullspace.Projector` of the old inputs' null space)
        their ``B`` columns are projected into it (and rescaled to their former norm), so their
        bottleneck features are zero on old data: exact null directions for ``A``.
        """
        r = min(r, self.K)
        new = [k for k in range(r) if self.mask[k] == 0]
        if not new:
            return new
        idx = torch.tensor(new, device=self.mask.device)
        Aw = self.A.weight.view(self.A.weight.shape[0], self.K)
        Aw[:, idx] = 0
        Bw = self.B.weight.view(self.K, -1)
        rows = Bw[idx]
        norms = rows.norm(dim=1, keepdim=True)
        if bool((norms == 0).any()):  # freed by truncation: fresh random directions
            ref = Bw[self.mask.bool()].norm(dim=1).mean() if self.active else 1.0 / math.sqrt(Bw.shape[1])
            fresh = torch.randn_like(rows)
            fresh = fresh / fresh.norm(dim=1, keepdim=True) * ref
            rows = torch.where(norms == 0, fresh, rows)
            norms = rows.norm(dim=1, keepdim=True)
        if project is not None:
            rows = project(rows)
            pn = rows.norm(dim=1, keepdim=True)
            rows = torch.where(pn > 0, rows / pn.clamp_min(1e-30) * norms, rows)
        Bw[idx] = rows
        self.mask[idx] = 1.0
        return new

    @torch.no_grad()
    def truncate(self, rel_tol: float) -> tuple[int, torch.Tensor]:
        """Drop singular values of W below ``rel_tol * sigma_max`` and re-balance the factors.

        Afterwards components ``0..r'-1`` hold ``U S^1/2, V S^1/2`` (balanced: the stationary point of
        the surrogate for this W) and the rest are inactive with zero factors. Returns ``r'`` and
        the ``(r', K)`` map ``M`` with ``z_new = M z_old`` on the active bottleneck features, which
        lets a covariance of old bottleneck features follow the change of basis (``M C M^T``).
        """
        A, B = self.factors()
        W = (A @ B.T).double()
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        smax = S[0].item() if S.numel() else 0.0
        r = int((S > rel_tol * smax).sum().item()) if smax > 0 else 0
        r = min(r, self.K)
        root = S[:r].sqrt()
        V = Vh[:r].T
        # V lies in range(B): V = B G, so z_new = S^1/2 V^T x = S^1/2 G^T (B^T x)
        G = torch.linalg.pinv(B.double()) @ V  # (K, r'); zero rows for inactive components
        M = root[:, None] * G.T
        dt = self.A.weight.dtype
        Aw = self.A.weight.view(-1, self.K)
        Bw = self.B.weight.view(self.K, -1)
        Aw.zero_()
        Bw.zero_()
        Aw[:, :r] = (U[:, :r] * root).to(dt)
        Bw[:r] = (V * root).T.to(dt)
        self.mask.zero_()
        self.mask[:r] = 1.0
        return r, M


def factorize(model: nn.Module, K: int | None = None, min_d: int = 32, skip=()) -> dict[str, Factorized]:
    """Replace every Linear/Conv2d in ``model`` (a backbone, or a :class:`MultiHead`'s backbone) by a
    :class:`Factorized` layer initialised from its weights; layers with ``d < min_d`` or whose
    qualified name is in ``skip`` stay dense. Returns the new layers by qualified name."""
    root = getattr(model, "backbone", model)
    prefix = "backbone." if root is not model else ""
    targets = [
        (n, m)
        for n, m in root.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d))
        and input_dim(m) - (m.bias is not None) >= min_d
        and prefix + n not in skip
    ]
    out = {}
    for name, layer in targets:
        parent = root.get_submodule(name.rsplit(".", 1)[0]) if "." in name else root
        fac = Factorized.from_dense(layer, K)
        setattr(parent, name.rsplit(".", 1)[-1], fac)
        out[prefix + name] = fac
    return out


def factorized_layers(model: nn.Module) -> dict[str, Factorized]:
    return {
        f"backbone.{n}": m for n, m in getattr(model, "backbone", model).named_modules() if isinstance(m, Factorized)
    }


def surrogate(layers, lam: float = 1.0) -> torch.Tensor:
    """``lam/2 * sum (||A||_F^2 + ||B||_F^2)`` over the active components of ``layers``."""
    total = 0.0
    for f in layers.values() if isinstance(layers, dict) else layers:
        m = f.mask
        a = (f.A.weight.reshape(-1, f.K) ** 2).sum(0)
        b = (f.B.weight.reshape(f.K, -1) ** 2).sum(1)
        total = total + ((a + b) * m).sum()
    return 0.5 * lam * total


def budget(schedule: list[float], t: int, K: int) -> int:
    """Active components at task ``t``: ``round(schedule[t] * K)`` (last entry repeats), in [1, K]."""
    frac = schedule[min(t, len(schedule) - 1)]
    return max(1, min(K, int(round(frac * K))))


@torch.no_grad()
def layer_stats(f: Factorized, rank_tol: float) -> dict:
    """Active rank, effective rank (sigma > rank_tol * sigma_max), ||W||_*, surrogate, singular values."""
    W = f.weight().double()
    S = torch.linalg.svdvals(W)
    smax = S[0].item() if S.numel() else 0.0
    return {
        "active_rank": f.active,
        "effective_rank": int((S > rank_tol * smax).sum().item()) if smax > 0 else 0,
        "nuclear_norm": S.sum().item(),
        "surrogate": surrogate([f]).item(),
        "singular_values": S.tolist(),
    }

"""``NullSpaceAdam``: Adam whose steps on projected layers are confined to the old tasks' null space.

Faithful to the official optimizer (docs/official_vs_paper.md):

1. ``g <- grad + wd * w`` (coupled L2 decay, before the moments);
2. Adam moments ``m, v`` on the **unprojected** ``g``;
3. ``u = lr * m_hat / (sqrt(v_hat) + eps)`` (``eps_placement="torch"``, as ``torch.optim.Adam``), or the
   official code's older PyTorch form ``u = lr * sqrt(bc2) / bc1 * m / (sqrt(v) + eps)``, which is
   ``lr * m_hat / (sqrt(v_hat) + eps / sqrt(bc2))`` (``eps_placement="official"``);
4. for a projected layer, ``u <- u P`` with ``u`` viewed as ``(out, d)`` (Eq. 6, right-multiplication;
   the bias, if any, is the last column, see :mod:`nscl.core.covariance`);
5. ``w <- w - u``.

``project="grad"`` projects ``g`` before the moments instead. Note that Adam's element-wise
``m / sqrt(v)`` then leaves the null space again, so only ``"update"`` (the default) keeps old
outputs exactly unchanged.

Speed: moments and parameter updates use PyTorch's multi-tensor (``foreach``) kernels. With
``batched`` (default: on a GPU) the layers whose projectors are thin :class:`~nscl.core.nullspace.Projector`
bases of the same kind and the same ``(out, d)`` shape are projected together: their updates are
stacked and multiplied by zero-padded stacked bases with one ``bmm`` pair per group (zero columns
add nothing, so the result is the same product), which saves kernel launches. On CPU the flops are
the same and the stacking copies cost more than the launches save (measured by
``python -m nscl.bench projection``), so there the default is one matmul pair per layer. A shape
that occurs once always keeps the per-layer matmuls. The step makes no host synchronisation (step
counts and bias corrections are Python numbers), so nothing in it waits for the GPU.

``stats["projected_steps"]`` counts projected layer-updates, so a test can prove the projection
happened (the PyTorch-2 ``zero_grad`` pitfall that silently turns the official method off cannot go
unnoticed).
"""

from __future__ import annotations

import math

import torch

from .nullspace import Projector

EPS_PLACEMENTS = ("torch", "official")


class _Bucket:
    """Same-shaped, same-kind thin projectors applied with one ``bmm`` pair on stacked updates."""

    def __init__(self, layers: list, kind: str):
        self.layers = layers  # [(weight, bias, Projector)]
        self.kind = kind
        projs = [p for _, _, p in layers]
        k = max(p.basis.shape[1] for p in projs)
        b0 = projs[0].basis
        basis = b0.new_zeros(len(projs), b0.shape[0], k)
        for i, p in enumerate(projs):
            basis[i, :, : p.basis.shape[1]] = p.basis
        self.basis = basis
        self.basis_t = basis.transpose(1, 2).contiguous()
        scales = [p.scale for p in projs]
        self.scale = (
            None
            if all(s == 1.0 for s in scales)
            else torch.tensor(scales, dtype=b0.dtype, device=b0.device).view(-1, 1, 1)
        )
        self.padded_flops = 4 * len(projs) * layers[0][0].shape[0] * b0.shape[0] * k
        self.flops = sum(4 * w.shape[0] * p.d * p.basis.shape[1] for w, _, p in layers)

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        """``u``: (G, out, d) stacked updates -> projected (G, out, d)."""
        t = torch.bmm(u, self.basis)
        if self.kind == "null":
            out = torch.bmm(t, self.basis_t)
        else:
            out = torch.baddbmm(u, t, self.basis_t, alpha=-1.0)
        return out * self.scale if self.scale is not None else out


def _buckets(layers: list, max_padding: float = 1.25) -> tuple[list, list]:
    """Split ``layers`` into bmm buckets (>= 2 same-shaped thin projectors whose zero-padding costs
    at most ``max_padding`` x their own flops) and the rest (projected one by one)."""
    groups: dict[tuple, list] = {}
    single = []
    for entry in layers:
        w, _, p = entry
        if isinstance(p, Projector) and p.basis.shape[1] > 0:
            key = (p.kind, tuple(w.shape[:1]), p.d, p.basis.dtype, p.basis.device)
            groups.setdefault(key, []).append(entry)
        else:
            single.append(entry)
    buckets = []
    for (kind, *_), members in groups.items():
        members = sorted(members, key=lambda e: e[2].basis.shape[1])
        current: list = []
        for e in members:
            k = e[2].basis.shape[1]
            total = sum(m[2].basis.shape[1] for m in current) + k
            if current and (len(current) + 1) * k > max_padding * total:
                buckets.append(current)
                current = []
            current.append(e)
        buckets.append(current)
    out_buckets = []
    for b in buckets:
        if len(b) >= 2:
            out_buckets.append(_Bucket(b, b[0][2].kind))
        else:
            single.extend(b)
    return out_buckets, single


class NullSpaceAdam(torch.optim.Optimizer):
    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        project: str = "update",
        eps_placement: str = "torch",
        batched: bool | None = None,
    ):
        if project not in ("update", "grad"):
            raise ValueError(f"project must be 'update' or 'grad', got {project!r}")
        if eps_placement not in EPS_PLACEMENTS:
            raise ValueError(f"eps_placement must be one of {', '.join(EPS_PLACEMENTS)}, got {eps_placement!r}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.project = project
        self.eps_placement = eps_placement
        self.batched = batched
        self.layers: list[tuple[torch.Tensor, torch.Tensor | None, Projector]] = []
        self._projected: set[int] = set()
        self._plan = None  # (buckets, single layers), built at the first step after set_projector
        self.stats = {"steps": 0, "projected_steps": 0}

    def set_projector(self, weight: torch.Tensor, bias: torch.Tensor | None, projector: Projector) -> None:
        """Project the joint update ``[dW.view(out, -1), db]`` of one layer with ``projector`` (a layer
        set again gets the new projector: :class:`nscl.core.protect.Protection` renews them per task)."""
        d = weight[0].numel() + (bias is not None)
        if projector.d != d:
            raise ValueError(f"projector has d={projector.d}, layer needs d={d}")
        self.layers = [e for e in self.layers if e[0] is not weight]
        self.layers.append((weight, bias, projector))
        self._projected.update({id(weight)} | ({id(bias)} if bias is not None else set()))
        self._plan = None

    def plan(self) -> tuple[list, list]:
        """``(buckets, single)``: the bmm groups and the layers projected one by one."""
        if self._plan is None:
            bias_free = [e for e in self.layers if e[1] is None]
            batched = self.batched
            if batched is None:  # default: bmm groups on a GPU only
                bias_free, cpu = (
                    [e for e in bias_free if e[0].device.type == "cuda"],
                    [e for e in bias_free if e[0].device.type != "cuda"],
                )
                batched = True
            else:
                cpu = []
            if batched:
                buckets, single = _buckets(bias_free)
            else:
                buckets, single = [], bias_free
            single = single + cpu
            with_bias = [e for e in self.layers if e[1] is not None]
            order = {id(e[0]): i for i, e in enumerate(self.layers)}
            self._plan = (buckets, sorted(single + with_bias, key=lambda e: order[id(e[0])]))
        return self._plan

    @staticmethod
    def _project_one(weight, bias, proj, uw, ub) -> None:
        u = uw.reshape(uw.shape[0], -1)
        if bias is not None:
            u = torch.cat([u, (ub if ub is not None else torch.zeros_like(bias)).reshape(-1, 1)], 1)
        pu = proj(u)
        if bias is not None:
            uw.copy_(pu[:, :-1].reshape(uw.shape))
            if ub is not None:
                ub.copy_(pu[:, -1])
        else:
            uw.copy_(pu.reshape(uw.shape))

    def _project(self, tensors: dict[int, torch.Tensor]) -> None:
        """Project in place the per-parameter tensors (updates or gradients) of every projected layer."""
        buckets, single = self.plan()
        for bucket in buckets:
            targets = [tensors.get(id(w)) for w, _, _ in bucket.layers]
            if any(t is None for t in targets):  # a layer without a gradient: fall back to one by one
                for (w, b, p), uw in zip(bucket.layers, targets):
                    if uw is not None:
                        self._project_one(w, b, p, uw, None)
                        self.stats["projected_steps"] += 1
                continue
            u = torch.stack([t.reshape(t.shape[0], -1) for t in targets])
            pu = bucket(u)
            torch._foreach_copy_(targets, [x.view_as(t) for x, t in zip(pu.unbind(0), targets)])
            self.stats["projected_steps"] += len(targets)
        for weight, bias, proj in single:
            uw = tensors.get(id(weight))
            if uw is None:
                continue
            self._project_one(weight, bias, proj, uw, tensors.get(id(bias)) if bias is not None else None)
            self.stats["projected_steps"] += 1

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.stats["steps"] += 1
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            beta1, beta2 = group["betas"]
            grads = [p.grad for p in params]  # never modified in place: p.grad stays the raw gradient
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            elif self.project == "grad" and self.layers:
                grads = [g.clone() for g in grads]
            if self.project == "grad" and self.layers:
                self._project({id(p): g for p, g in zip(params, grads)})
            exp_avg, exp_avg_sq = [], []
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                exp_avg.append(state["exp_avg"])
                exp_avg_sq.append(state["exp_avg_sq"])
            torch._foreach_lerp_(exp_avg, grads, 1 - beta1)
            torch._foreach_mul_(exp_avg_sq, beta2)
            torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1 - beta2)
            # all params of a group share the step count (fresh optimizer per task)
            step = self.state[params[0]]["step"]
            bc1, bc2 = 1 - beta1**step, 1 - beta2**step
            denom = torch._foreach_sqrt(exp_avg_sq)
            torch._foreach_div_(denom, math.sqrt(bc2))
            # torch: m_hat / (sqrt(v_hat) + eps); official: sqrt(bc2)/bc1 * m / (sqrt(v) + eps)
            torch._foreach_add_(denom, group["eps"] if self.eps_placement == "torch" else group["eps"] / math.sqrt(bc2))
            if self.project == "update" and any(id(p) in self._projected for p in params):
                updates = torch._foreach_div(exp_avg, denom)
                torch._foreach_mul_(updates, group["lr"] / bc1)
                self._project({id(p): u for p, u in zip(params, updates)})
                torch._foreach_sub_(params, updates)
            else:  # nothing to project after the moments: torch Adam's fused form, no update buffers
                torch._foreach_addcdiv_(params, exp_avg, denom, value=-group["lr"] / bc1)
        return loss

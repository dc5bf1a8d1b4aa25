"""``NullSpaceAdam``: Adam whose steps on projected layers are confined to the old tasks' null space.

Faithful to the official optimizer (research/adam_nscl.md 1.6):

1. ``g <- grad + wd * w`` (coupled L2 decay, before the moments);
2. Adam moments ``m, v`` on the **unprojected** ``g``;
3. ``u = lr * m_hat / (sqrt(v_hat) + eps)``;
4. for a projected layer, ``u <- u P`` with ``u`` viewed as ``(out, d)`` (Eq. 6, right-multiplication;
   the bias, if any, is the last column, see :mod:`nscl.core.covariance`);
5. ``w <- w - u``.

``project="grad"`` projects ``g`` before the moments instead. Note that Adam's element-wise
``m / sqrt(v)`` then leaves the null space again, so only ``"update"`` (the default) keeps old
outputs exactly unchanged.

Moments and parameter updates use PyTorch's multi-tensor (``foreach``) kernels; projections are
one pair of thin matmuls per layer. ``stats["projected_steps"]`` counts projected layer-updates,
so a test can prove the projection happened (the PyTorch-2 ``zero_grad`` pitfall that silently
turns the official method off cannot go unnoticed).
"""
from __future__ import annotations

import math

import torch

from .nullspace import Projector


class NullSpaceAdam(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, project: str = "update"):
        if project not in ("update", "grad"):
            raise ValueError(f"project must be 'update' or 'grad', got {project!r}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.project = project
        self.layers: list[tuple[torch.Tensor, torch.Tensor | None, Projector]] = []
        self._projected: set[int] = set()
        self.stats = {"steps": 0, "projected_steps": 0}

    def set_projector(self, weight: torch.Tensor, bias: torch.Tensor | None, projector: Projector) -> None:
        """Project the joint update ``[dW.view(out, -1), db]`` of one layer with ``projector``."""
        d = weight[0].numel() + (bias is not None)
        if projector.d != d:
            raise ValueError(f"projector has d={projector.d}, layer needs d={d}")
        self.layers.append((weight, bias, projector))
        self._projected.update({id(weight)} | ({id(bias)} if bias is not None else set()))

    def _project(self, tensors: dict[int, torch.Tensor]) -> None:
        """Project in place the per-parameter tensors (updates or gradients) of every projected layer."""
        for weight, bias, proj in self.layers:
            uw = tensors.get(id(weight))
            if uw is None:
                continue
            u = uw.reshape(uw.shape[0], -1)
            ub = tensors.get(id(bias)) if bias is not None else None
            if bias is not None:
                u = torch.cat([u, (ub if ub is not None else torch.zeros_like(bias)).reshape(-1, 1)], 1)
            pu = proj(u)
            if bias is not None:
                uw.copy_(pu[:, :-1].reshape(uw.shape))
                if ub is not None:
                    ub.copy_(pu[:, -1])
            else:
                uw.copy_(pu.reshape(uw.shape))
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
            bc1, bc2 = 1 - beta1 ** step, 1 - beta2 ** step
            denom = torch._foreach_sqrt(exp_avg_sq)
            torch._foreach_div_(denom, math.sqrt(bc2))
            torch._foreach_add_(denom, group["eps"])
            if self.project == "update" and any(id(p) in self._projected for p in params):
                updates = torch._foreach_div(exp_avg, denom)
                torch._foreach_mul_(updates, group["lr"] / bc1)
                self._project({id(p): u for p, u in zip(params, updates)})
                torch._foreach_sub_(params, updates)
            else:  # nothing to project after the moments: torch Adam's fused form, no update buffers
                torch._foreach_addcdiv_(params, exp_avg, denom, value=-group["lr"] / bc1)
        return loss

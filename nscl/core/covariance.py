"""Streaming uncentred covariance of each projected layer's input (Adam-NSCL, Eq. 4 / Alg. 2).

For a layer y = W x (W viewed as ``(out, d)``; a conv's input is the im2col patch of its own kernel,
stride, padding and dilation, in the ``(C, kh, kw)`` order of ``weight.view(out, -1)``), the
uncentred covariance of old-task inputs is ``C = (1/n) sum_i x_i x_i^T``. Any update ``dW`` whose
rows lie in the null space of ``C`` leaves ``W x`` unchanged on those inputs.

Tasks sum into one fixed-size ``d x d`` matrix per layer: ``sum`` and ``count`` accumulate in float64
across batches and tasks (weighted by rows, i.e. by samples).

Two variants (``mode``):

* ``per_sample`` (principled, default): every sample (every patch of every sample for convs) adds
  one row.
* ``batch_mean`` (the official code): the batch is averaged first, then unfolded, so one batch
  adds ``L`` rows (one per spatial position) for a conv and one row for a linear layer.

A layer with a bias is treated as ``[W b] [x; 1]``: a constant 1 is appended to every row, so the
bias update is projected together with the weights and the guarantee still holds.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F


def input_dim(module: nn.Module) -> int:
    """Flattened input dimension d of a Linear/Conv2d (+1 for the bias column)."""
    if isinstance(module, nn.Linear):
        d = module.in_features
    elif isinstance(module, nn.Conv2d):
        d = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
    else:
        raise TypeError(f"cannot project {type(module).__name__}")
    return d + (module.bias is not None)


def layer_input_rows(module: nn.Module, x: torch.Tensor, mode: str = "per_sample") -> torch.Tensor:
    """Rows ``x_i`` (n, d) whose outer products make up this batch's contribution to the covariance."""
    if mode not in ("per_sample", "batch_mean"):
        raise ValueError(f"unknown covariance mode {mode!r}")
    if isinstance(module, nn.Conv2d):
        if module.groups != 1 or module.padding_mode != "zeros":
            raise NotImplementedError("only groups=1, zero-padded convolutions are supported")
        if mode == "batch_mean":
            x = x.mean(0, keepdim=True)
        padding = module.padding
        if isinstance(padding, str):
            raise NotImplementedError("string padding ('same'/'valid') is not supported; use ints")
        cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=padding,
                        stride=module.stride)  # (B, d, L)
        rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    elif isinstance(module, nn.Linear):
        rows = x.reshape(-1, x.shape[-1])
        if mode == "batch_mean":
            rows = x.reshape(x.shape[0], -1, x.shape[-1]).mean(0)
    else:
        raise TypeError(f"cannot project {type(module).__name__}")
    if module.bias is not None:
        rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
    return rows


class Covariance:
    """Per-layer running sums ``S = sum x x^T`` (float64) and row counts, filled by forward pre-hooks."""

    def __init__(self, layers: dict[str, nn.Module], mode: str = "per_sample"):
        self.layers = layers
        self.mode = mode
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {name: 0 for name in layers}

    def _hook(self, name: str):
        def hook(module, inputs):
            rows = layer_input_rows(module, inputs[0].detach(), self.mode).to(torch.float64)
            gram = rows.T @ rows
            if name in self.sums:
                self.sums[name] += gram
            else:
                self.sums[name] = gram
            self.counts[name] += rows.shape[0]
        return hook

    @torch.no_grad()
    def update(self, forward: Callable[[torch.Tensor], object], batches: Iterable[torch.Tensor]) -> None:
        """Run ``forward(x)`` on every batch with hooks on all layers, adding their inputs' Gram matrices."""
        handles = [m.register_forward_pre_hook(self._hook(n)) for n, m in self.layers.items()]
        try:
            for x in batches:
                forward(x)
        finally:
            for h in handles:
                h.remove()

    def matrix(self, name: str) -> torch.Tensor:
        """The covariance ``S / n`` of one layer (float64, on the device it was accumulated on)."""
        if name not in self.sums or self.counts[name] == 0:
            d = input_dim(self.layers[name])
            return torch.zeros(d, d, dtype=torch.float64)
        return self.sums[name] / self.counts[name]

    def state_dict(self) -> dict:
        return {"mode": self.mode, "sums": {k: v.cpu() for k, v in self.sums.items()},
                "counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        self.mode = state["mode"]
        device = next(iter(self.layers.values())).weight.device if self.layers else "cpu"
        self.sums = {k: v.to(device) for k, v in state["sums"].items()}
        self.counts = {**self.counts, **state["counts"]}

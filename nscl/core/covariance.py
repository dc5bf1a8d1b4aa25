"""Streaming uncentred covariance of each projected layer's input (Adam-NSCL, Eq. 4 / Alg. 2).

For a layer y = W x (W viewed as ``(out, d)``; a conv's input is the im2col patch of its own kernel,
stride, padding and dilation, in the ``(C, kh, kw)`` order of ``weight.view(out, -1)``; a Conv1d is
a Conv2d of kernel height 1), the
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

Cheaper per-sample estimates (both unbiased for ``C``; the exact pass is the default):

* ``patches=k``: a conv keeps ``k`` of its ``L`` patch positions per sample, drawn uniformly without
  replacement. Every row is kept with probability ``k / L`` and the count grows by ``k`` per sample,
  so ``S / n`` is unbiased for the full per-sample covariance; the Gram cost drops by ``L / k``
  (ResNet-18 on 32x32: L = 1024 / 256 / 64 / 16 in the four stages).
* ``weight=w`` in :meth:`Covariance.update`: rows and counts enter with weight ``w``, e.g.
  ``n_task / n_subset`` when the pass runs on a random subset of a task (``cov_samples``), so
  tasks keep the weight of their full size.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F


def input_dim(module: nn.Module) -> int:
    """Flattened input dimension d of a Linear/Conv1d/Conv2d (+1 for the bias column)."""
    if isinstance(module, nn.Linear):
        d = module.in_features
    elif isinstance(module, (nn.Conv1d, nn.Conv2d)):
        d = module.weight[0].numel()
    else:
        raise TypeError(f"cannot project {type(module).__name__}")
    return d + (module.bias is not None)


def layer_input_rows(
    module: nn.Module,
    x: torch.Tensor,
    mode: str = "per_sample",
    patches: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Rows ``x_i`` (n, d) whose outer products make up this batch's contribution to the covariance.

    ``patches`` (per_sample convs only): keep that many random patch positions of each sample.
    """
    if mode not in ("per_sample", "batch_mean"):
        raise ValueError(f"unknown covariance mode {mode!r}")
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        if module.groups != 1 or module.padding_mode != "zeros":
            raise NotImplementedError("only groups=1, zero-padded convolutions are supported")
        if mode == "batch_mean":
            x = x.mean(0, keepdim=True)
        padding = module.padding
        if isinstance(padding, str):
            raise NotImplementedError("string padding ('same'/'valid') is not supported; use ints")
        kernel, dilation, stride = module.kernel_size, module.dilation, module.stride
        if isinstance(module, nn.Conv1d):  # a 1-d conv is a 2-d conv on a height-1 map
            x = x.unsqueeze(-2)
            kernel, dilation, stride, padding = (1, *kernel), (1, *dilation), (1, *stride), (0, *padding)
        cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # (B, d, L)
        if patches is not None and mode == "per_sample" and patches < cols.shape[2]:
            keys = torch.rand(
                cols.shape[0],
                cols.shape[2],
                generator=generator,
                device=generator.device if generator is not None else "cpu",
            )
            keep = keys.argsort(1)[:, :patches].to(cols.device)  # uniform k-subset per sample
            cols = cols.gather(2, keep[:, None, :].expand(-1, cols.shape[1], -1))
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

    def __init__(self, layers: dict[str, nn.Module], mode: str = "per_sample", patches: int | None = None):
        self.layers = layers
        self.mode = mode
        self.patches = patches
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int | float] = {name: 0 for name in layers}
        self._weight, self._generator = 1.0, None

    def _hook(self, name: str):
        def hook(module, inputs):
            rows = layer_input_rows(module, inputs[0].detach(), self.mode, self.patches, self._generator).to(
                torch.float64
            )
            gram = rows.T @ rows
            if self._weight != 1.0:
                gram *= self._weight
            if name in self.sums:
                self.sums[name] += gram
            else:
                self.sums[name] = gram
            self.counts[name] += rows.shape[0] if self._weight == 1.0 else self._weight * rows.shape[0]

        return hook

    @torch.no_grad()
    def update(
        self,
        forward: Callable[[torch.Tensor], object],
        batches: Iterable[torch.Tensor],
        weight: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        """Run ``forward(x)`` on every batch with hooks on all layers, adding their inputs' Gram matrices.

        ``weight`` multiplies this pass's Gram matrices and row counts; ``generator`` draws the patch
        positions when ``patches`` is set (seed it for a reproducible estimate).
        """
        handles = [m.register_forward_pre_hook(self._hook(n)) for n, m in self.layers.items()]
        self._weight, self._generator = float(weight), generator
        try:
            for x in batches:
                forward(x)
        finally:
            self._weight, self._generator = 1.0, None
            for h in handles:
                h.remove()

    def matrix(self, name: str) -> torch.Tensor:
        """The covariance ``S / n`` of one layer (float64, on the device it was accumulated on)."""
        if name not in self.sums or self.counts[name] == 0:
            d = input_dim(self.layers[name])
            return torch.zeros(d, d, dtype=torch.float64)
        return self.sums[name] / self.counts[name]

    def state_dict(self) -> dict:
        return {
            "mode": self.mode,
            "patches": self.patches,
            "sums": {k: v.cpu() for k, v in self.sums.items()},
            "counts": dict(self.counts),
        }

    def load_state_dict(self, state: dict) -> None:
        self.mode = state["mode"]
        self.patches = state.get("patches")
        device = next(iter(self.layers.values())).weight.device if self.layers else "cpu"
        self.sums = {k: v.to(device) for k, v in state["sums"].items()}
        self.counts = {**self.counts, **state["counts"]}

"""Looking inside a trainer: a layer's input rows on a task, and a task's loss gradient w.r.t. a
layer's weight (the step-by-step demo of notebook 01 checks ``dW x ~ 0`` with them)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.covariance import layer_input_rows


def layer_inputs(trainer, layer: str, task: int, split: str = "train"):
    """Input rows ``(n, d)`` (float64) of one tracked layer on a task's data, in eval mode.

    Rows as the covariance sees them (:func:`nscl.core.covariance.layer_input_rows`, per sample).
    """
    module = trainer.tracker.layers[layer]
    rows = []
    handle = module.register_forward_pre_hook(
        lambda m, inp: rows.append(layer_input_rows(m, inp[0].detach(), "per_sample").double().cpu())
    )
    was = trainer.model.training
    trainer.model.eval()
    try:
        with torch.no_grad():
            data = getattr(trainer.stream[task], split)
            for x, _, _ in trainer.batches([(data, task)], trainer.cfg["eval_batch_size"], shuffle=False):
                trainer.model.features(x)
    finally:
        handle.remove()
        trainer.model.train(was)
    return torch.cat(rows)


def task_gradient(trainer, layer: str, task: int, n: int = 256):
    """Gradient (float64, ``(out, d)``) of the cross-entropy on ``n`` samples of ``task`` w.r.t. a layer's weight."""
    module = trainer.tracker.layers[layer]
    gen = torch.Generator().manual_seed(trainer.cfg["seed"] * 31 + task)
    x, y, t = next(iter(trainer.batches([(trainer.stream[task].train, task)], n, shuffle=True, generator=gen)))
    trainer.model.eval()
    trainer.model.zero_grad(set_to_none=True)
    F.cross_entropy(trainer.model(x, t), y).backward()
    grad = module.weight.grad.detach().reshape(module.weight.shape[0], -1)
    if module.bias is not None:  # the [W b] view of nscl.core.covariance
        grad = torch.cat([grad, module.bias.grad.detach()[:, None]], dim=1)
    grad = grad.double().cpu()
    trainer.model.zero_grad(set_to_none=True)
    return grad

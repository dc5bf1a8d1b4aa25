"""``NullSpacePlugin``: Adam-NSCL / SGP projection inside Avalanche's own strategies (``nscl[avalanche]``).

A thin adapter from Avalanche's plugin hooks to :func:`nscl.protect` (docs/library.md): at the first
``before_training_exp`` the strategy's model is protected and the strategy's own optimizer wrapped
(:meth:`~nscl.core.protect.Protection.wrap`: the weight change of each ``step()`` is projected, so
``torch.optim.Adam`` becomes Adam-NSCL: its update projected, its moments on the raw gradient); at
``after_training_exp`` the experience's inputs (eval transforms) close the task
(:meth:`~nscl.core.protect.Protection.end_task`). Avalanche keeps one optimizer object across
experiences (``make_optimizer`` with ``reset_optimizer_state=False``), so the wrapping persists.
Projecting ``p.grad`` in ``after_backward`` (as GEM does) would not be Adam-NSCL.
"""

from __future__ import annotations

import torch
from avalanche.core import SupervisedPlugin

from ..core.protect import protect


class NullSpacePlugin(SupervisedPlugin):
    """``Naive(model, optimizer, criterion, plugins=[NullSpacePlugin(exclude=["classifier"])])``.

    Keyword arguments are :func:`nscl.protect`'s; ``batch_size`` is the covariance pass's. After
    training, ``plugin.protection`` is the :class:`~nscl.core.protect.Protection` (``report()``)."""

    def __init__(self, batch_size: int = 256, **protect_kwargs):
        super().__init__()
        self.batch_size = batch_size
        self.protect_kwargs = protect_kwargs
        self.protection = None
        self._wrapped: set[int] = set()

    def before_training_exp(self, strategy, *args, **kwargs):
        if self.protection is None:
            self.protection = protect(strategy.model, **self.protect_kwargs)
        if id(strategy.optimizer) not in self._wrapped:  # a new optimizer object: wrap it too
            self.protection.wrap(strategy.optimizer)
            self._wrapped.add(id(strategy.optimizer))

    def after_training_exp(self, strategy, *args, **kwargs):
        data = strategy.experience.dataset.eval()  # eval transforms: the inputs the old task is tested on
        loader = torch.utils.data.DataLoader(data, batch_size=self.batch_size, shuffle=False)
        self.protection.end_task(loader, forward=strategy.model)

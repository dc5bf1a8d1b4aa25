"""Null-space protection of any ``nn.Module`` in any training loop (``nscl.protect``; docs/library.md).

The same core objects as the project's own trainer, for a model and loop the project did not write:
the layers are selected by name (:func:`select_layers`, also the trainer's
:func:`nscl.core.models.projected_layers`), the input covariances and null spaces are a
:class:`~nscl.core.nullspace.NullSpaceTracker`, the projectors come from
:func:`~nscl.core.nullspace.make_projector`, and the steps are projected by
:class:`~nscl.core.optim.NullSpaceAdam` (Adam-NSCL: Adam's update is projected, Eq. 6) or, for any
other ``torch.optim`` optimizer, by :meth:`Protection.wrap`, which projects the weight change each
``step()`` made: ``W <- W_old + (W - W_old) P``. Either way a protected layer's change ``dW`` satisfies
``dW x = 0`` for every old input ``x`` in the null space, so its outputs on old tasks stay fixed up to
the rule's tolerance, provided its inputs do (everything upstream is protected or frozen).

Every layer is checked when :func:`protect` is called, before anything trains: a layer whose
guarantee the covariance cannot give raises a one-line ``ValueError`` naming it and the fix.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn

from .covariance import input_dim
from .nullspace import PROJECTORS, NullSpaceRule, NullSpaceTracker
from .optim import NullSpaceAdam

#: layer types whose weight is projected
PROTECTED_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)
#: layer types refused (not excluded): their parameters would change old outputs unseen, with the fix
REFUSED = (
    (nn.MultiheadAttention, "attention's projections are not called as modules, so nscl cannot see their inputs"),
    (nn.Embedding, "an embedding table is not a layer on an input vector, so no null space protects it"),
    (nn.EmbeddingBag, "an embedding table is not a layer on an input vector, so no null space protects it"),
    (nn.Conv3d, "Conv3d is not supported"),
    (nn.modules.conv._ConvTransposeNd, "transposed convolutions are not supported"),
)
BATCHNORM = ("freeze", "train")


def _excluded(name: str, exclude: Sequence[str]) -> bool:
    return any(name == e or name.startswith(e + ".") for e in exclude)


def select_layers(model: nn.Module, exclude: Sequence[str] = (), layers: Sequence[str] | None = None) -> dict:
    """The protected layers by qualified name, in ``named_modules`` order: the ``layers`` named, or
    every ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` whose name is not (under) an ``exclude`` entry.
    A name in ``layers`` or ``exclude`` that is no module of ``model`` is an error."""
    modules = dict(model.named_modules())
    for kind, names in (("layers", layers or ()), ("exclude", exclude)):
        for n in names:
            if n not in modules:
                raise ValueError(f"{kind}={n!r}: no module of that name in the model; see model.named_modules()")
    if layers is not None:
        for n in layers:
            if not isinstance(modules[n], PROTECTED_TYPES):
                raise ValueError(
                    f"layers={n!r} is a {type(modules[n]).__name__}; only nn.Linear, nn.Conv1d and nn.Conv2d "
                    "can be protected: name those layers instead"
                )
        return {n: modules[n] for n in modules if n in set(layers)}
    return {n: m for n, m in modules.items() if isinstance(m, PROTECTED_TYPES) and not _excluded(n, exclude)}


def check_layers(model: nn.Module, layers: dict, exclude: Sequence[str] = (), whole_model: bool = True) -> None:
    """Refuse, with one line naming the layer and the fix, what would break the guarantee silently:
    grouped/depthwise, non-zero-padded or string-padded convolutions among ``layers``; with
    ``whole_model``, attention, embeddings, Conv3d and transposed convolutions anywhere outside
    ``exclude``; a protected weight shared with another module."""
    for n, m in layers.items():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            if m.groups != 1:
                kind = "depthwise" if m.groups == m.in_channels else f"grouped (groups={m.groups})"
                raise ValueError(
                    f"layer {n!r} is a {kind} convolution, which nscl cannot protect: "
                    f"exclude it (exclude=[{n!r}]) and freeze it, or use groups=1"
                )
            if m.padding_mode != "zeros":
                raise ValueError(
                    f"layer {n!r} pads with {m.padding_mode!r}; only zero padding is supported: "
                    f"use padding_mode='zeros' or exclude it (exclude=[{n!r}])"
                )
            if isinstance(m.padding, str):
                raise ValueError(
                    f"layer {n!r} has padding={m.padding!r}; give the padding as integers "
                    f"(e.g. padding={tuple(k // 2 for k in m.kernel_size)}) or exclude it (exclude=[{n!r}])"
                )
    for n, m in model.named_modules() if whole_model else ():
        if _excluded(n, exclude):
            continue
        for kind, why in REFUSED:
            if isinstance(m, kind):
                raise ValueError(
                    f"layer {n!r} ({type(m).__name__}): {why}; exclude it (exclude=[{n!r}]) and freeze "
                    "its parameters, or protect an explicit list (layers=[...])"
                )
    owners: dict[int, dict[int, str]] = {}  # parameter -> {module: name}; one module may sit at two names
    for mn, m in model.named_modules(remove_duplicate=False):
        for pn, p in m.named_parameters(recurse=False, remove_duplicate=False):
            owners.setdefault(id(p), {}).setdefault(id(m), f"{mn}.{pn}" if mn else pn)
    for n, m in layers.items():
        for p in (m.weight, m.bias):
            if p is not None and len(owners.get(id(p), {})) > 1:
                others = sorted(owners[id(p)].values())
                raise ValueError(
                    f"layer {n!r} shares a parameter with another module ({', '.join(others)}); a shared weight "
                    "sees inputs nscl does not collect: untie it, or exclude every module that uses it"
                )


def _eval_mode(module: nn.Module, inputs) -> None:
    """Forward pre-hook of a frozen BatchNorm: normalise with the running statistics, update nothing."""
    module.training = False


def _inputs(batch):
    """The input of a batch: ``x`` itself, or the first entry of an ``(x, y, ...)`` tuple/list."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


class Protection:
    """What :func:`protect` returns: the protected layers, their null spaces, and the optimizers they
    project. Made of the trainer's own core objects (``tracker``: a
    :class:`~nscl.core.nullspace.NullSpaceTracker`)."""

    def __init__(
        self,
        model: nn.Module,
        layers: dict,
        rule: NullSpaceRule | None = None,
        projector: str = "hard",
        sgp_scale: float = 10.0,
        covariance: str = "per_sample",
        patches: int | None = None,
        batchnorm: str = "freeze",
    ):
        if projector not in PROJECTORS:
            raise ValueError(f"projector={projector!r}; valid: {', '.join(PROJECTORS)}")
        if batchnorm not in BATCHNORM:
            raise ValueError(f"batchnorm={batchnorm!r}; valid: {', '.join(BATCHNORM)}")
        if covariance not in ("per_sample", "batch_mean"):
            raise ValueError(f"covariance={covariance!r}; valid: per_sample, batch_mean")
        self.model, self.layers = model, layers
        self.kind, self.sgp_scale, self.batchnorm = projector, sgp_scale, batchnorm
        self.tracker = NullSpaceTracker(layers, covariance, rule=rule, patches=patches)
        self.tasks = 0  # tasks closed by end_task
        self._optimizers: list = []  # weak references to the NullSpaceAdam optimizers made here
        self._wrapped: list = []  # (weak optimizer, hook handles) of wrapped optimizers
        self._bn_hooks: list = []
        self._current: dict = {}  # the projectors wrapped optimizers apply

    # ---- optimizers ----------------------------------------------------------------------------
    def projectors(self) -> dict:
        """Each protected layer's projector after the last task (empty before the first ``end_task``)."""
        if not self.tasks:
            return {}
        return {n: self.tracker.projector(n, kind=self.kind, sgp_scale=self.sgp_scale) for n in self.layers}

    def _install(self, opt: NullSpaceAdam) -> None:
        for n, p in self.projectors().items():
            m = self.layers[n]
            opt.set_projector(m.weight, m.bias, p)

    def optimizer(self, lr: float = 1e-3, params=None, **kwargs) -> NullSpaceAdam:
        """A :class:`~nscl.core.optim.NullSpaceAdam` (Adam-NSCL) over ``params`` (default: the model's
        trainable parameters); ``kwargs`` as ``torch.optim.Adam`` (betas, eps, weight_decay). Its
        projectors follow every later :meth:`end_task`."""
        params = [p for p in self.model.parameters() if p.requires_grad] if params is None else params
        opt = NullSpaceAdam(params, lr=lr, **kwargs)
        self._install(opt)
        self._optimizers.append(weakref.ref(opt))
        return opt

    def wrap(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Make any ``torch.optim`` optimizer project the weight change of each ``step()`` on the
        protected layers (``W <- W_old + (W - W_old) P``: momentum, weight decay and adaptive scaling
        included, as Adam-NSCL projects Adam's update). Returns the same optimizer."""
        if isinstance(optimizer, NullSpaceAdam):
            raise ValueError("this optimizer projects its own steps already; use it as it is, not wrap()")
        entries = [(m.weight, m.bias, n) for n, m in self.layers.items()]
        saved: dict = {}

        def pre(opt, args, kwargs):
            saved.clear()
            if self.tasks:
                for w, b, _ in entries:
                    saved[id(w)] = (w.detach().clone(), None if b is None else b.detach().clone())

        def post(opt, args, kwargs):
            if not saved:
                return
            projs = self._current
            with torch.no_grad():
                for w, b, n in entries:
                    w0, b0 = saved[id(w)]
                    dw = w - w0
                    db = None if b is None else b - b0
                    NullSpaceAdam._project_one(w, b, projs[n], dw, db)
                    w.copy_(w0 + dw)
                    if b is not None:
                        b.copy_(b0 + db)
            saved.clear()

        handles = (optimizer.register_step_pre_hook(pre), optimizer.register_step_post_hook(post))
        self._wrapped.append((weakref.ref(optimizer), handles))
        return optimizer

    # ---- task boundary -------------------------------------------------------------------------
    @torch.no_grad()
    def end_task(self, inputs: Iterable, forward=None) -> dict:
        """Close a task: add the protected layers' inputs on ``inputs`` (an iterable of ``x`` or
        ``(x, y, ...)`` batches, run through ``forward(x)``, default ``model(x)``, in eval mode) to their
        covariances, recompute the null spaces and projectors, and renew the optimizers' projectors.
        With ``batchnorm="freeze"`` BatchNorm layers are frozen from now on. Returns :meth:`report`."""
        forward = forward or self.model
        device = next(iter(self.layers.values())).weight.device if self.layers else None
        was_training = self.model.training
        self.model.eval()
        try:
            self.tracker.cov.update(forward, (_inputs(b).to(device) for b in inputs))
        finally:
            self.model.train(was_training)
        self.tracker.recompute(self.tasks)
        self.tasks += 1
        self._renew()
        if self.batchnorm == "freeze":
            self.freeze_batchnorm()
        return self.report()

    def _renew(self) -> None:
        self._current = self.projectors()
        self._optimizers = [r for r in self._optimizers if r() is not None]
        for r in self._optimizers:
            self._install(r())

    def freeze_batchnorm(self) -> None:
        """Freeze every BatchNorm layer: no gradient to its affine parameters, and its running statistics
        are used even in ``model.train()`` (a forward pre-hook puts the layer in eval mode)."""
        if self._bn_hooks:
            return
        for m in self.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                for p in m.parameters(recurse=False):
                    p.requires_grad_(False)
                self._bn_hooks.append(m.register_forward_pre_hook(_eval_mode))

    # ---- records -------------------------------------------------------------------------------
    def report(self) -> dict:
        """Per protected layer: ``d`` (input dimension, +1 with a bias), ``null`` (null-space dimension
        after the last task, None before the first) and ``kept_energy`` (paper Eq. 7: the share of the
        old inputs' energy the allowed updates may still touch)."""
        out = {}
        for n in self.layers:
            h = self.tracker.history[n]
            out[n] = {
                "d": h["d"],
                "null": h["dims"][-1] if h["dims"] else None,
                "kept_energy": h["kept_energy"][-1] if h["kept_energy"] else None,
            }
        return out

    def state_dict(self) -> dict:
        """Tensors and plain containers (``torch.save`` / ``torch.load(weights_only=True)``)."""
        return {
            "layers": list(self.layers),
            "tasks": self.tasks,
            "projector": self.kind,
            "sgp_scale": self.sgp_scale,
            "tracker": self.tracker.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore the covariances and null spaces (the optimizers made here get the projectors)."""
        if list(state["layers"]) != list(self.layers):
            raise ValueError("the checkpoint protects other layers; call protect() with the same layers/exclude")
        self.kind, self.sgp_scale = state["projector"], state["sgp_scale"]
        self.tracker.load_state_dict(state["tracker"])
        self.tasks = state["tasks"]
        self._renew()
        if self.tasks and self.batchnorm == "freeze":
            self.freeze_batchnorm()


def protect(
    model: nn.Module,
    exclude: Sequence[str] = (),
    layers: Sequence[str] | None = None,
    rule: NullSpaceRule | str | None = None,
    projector: str = "hard",
    sgp_scale: float = 10.0,
    covariance: str = "per_sample",
    patches: int | None = None,
    batchnorm: str = "freeze",
) -> Protection:
    """Protect ``model``'s layers by null-space projection (Adam-NSCL; docs/library.md).

    ``exclude``: module names whose layers are left alone (e.g. ``["fc"]``, the heads); ``layers``:
    the explicit list instead; ``rule``: a :class:`~nscl.core.nullspace.NullSpaceRule` (or a kind
    name; default the package's rule); ``projector``: ``hard`` (Adam-NSCL) or ``scaled`` (SGP, with
    ``sgp_scale``); ``covariance``: ``per_sample`` or ``batch_mean``, ``patches`` positions per
    sample of a conv; ``batchnorm``: ``freeze`` (after the first task) or ``train``.
    Raises ``ValueError`` (one line naming the layer and the fix) before anything trains.
    """
    if isinstance(exclude, str) or isinstance(layers, str):
        raise ValueError("exclude= and layers= take a list of module names, e.g. exclude=['fc']")
    selected = select_layers(model, exclude, layers)
    if not selected:
        raise ValueError("no layer to protect: the model has no nn.Linear/Conv1d/Conv2d outside exclude=")
    check_layers(model, selected, exclude, whole_model=layers is None)
    for n, m in selected.items():
        input_dim(m)  # every selected layer has a covariance
    rule = rule if isinstance(rule, NullSpaceRule) else NullSpaceRule.of(rule)
    return Protection(model, selected, rule, projector, sgp_scale, covariance, patches, batchnorm)

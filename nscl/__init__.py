"""nscl: continual learning by null-space projection (Adam-NSCL), pruning and rank limitation.

Layers (imports only point down this list; ``tests/test_layers.py`` holds the rule)::

    util        small helpers with no nscl imports (atomic writes, JSON, progress bars)
    core        math: covariance, null spaces, projected Adam, models, pruning, low-rank, metrics
    methods     one small object per continual-learning method, with its parameters
    data        task streams, a dataset registry, one module per dataset
    experiment  config (the schema), the one training loop, run records
    analysis    tables and figures from run records
    apps        command line, notebook facade, notebook suite, sweeps; bench (benchmarks)
"""


def __getattr__(name: str):
    """``nscl.__version__`` (kept in :mod:`nscl.util`) and the library entry point ``nscl.protect``
    (:mod:`nscl.core.protect`), loaded on first use (the root imports nothing at module level)."""
    if name == "__version__":
        from .util import __version__

        return __version__
    if name in ("protect", "Protection", "NullSpaceRule"):  # the library entry point (docs/library.md)
        from .core import nullspace, protect

        return getattr(nullspace if name == "NullSpaceRule" else protect, name)
    raise AttributeError(f"module 'nscl' has no attribute {name!r}")


def run(cfg: dict | None = None, out_dir=None, files=(), **params):
    """Train one configured run and return its results dict (see :mod:`nscl.experiment.trainer`).

    ``nscl.run(method="adam_nscl", benchmark="split_fmnist", epochs=2)`` or
    ``nscl.run(files=["params/base.yaml", "params/ci.yaml"], out_dir="runs/x")``.
    """
    from .experiment import config, trainer

    merged = config.resolve(files, overrides=cfg or {}, **params)
    return trainer.run(merged, out_dir)

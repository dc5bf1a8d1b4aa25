"""nscl: continual learning by null-space projection (Adam-NSCL), pruning and rank limitation."""
__version__ = "0.1.0"


def run(cfg: dict | None = None, out_dir=None, files=(), **params):
    """Train one configured run and return its results dict (see :mod:`nscl.train`).

    ``nscl.run(method="adam_nscl", benchmark="split_fmnist", epochs=2)`` or
    ``nscl.run(files=["params/base.yaml", "params/ci.yaml"], out_dir="runs/x")``.
    """
    from . import config, train

    merged = config.resolve(files, overrides=cfg or {}, **params)
    return train.run(merged, out_dir)

"""Continual-learning methods: small objects with hooks, driven by one loop (:mod:`nscl.experiment.trainer`).

``METHODS`` maps a method name (the ``method`` parameter) to its class. A new method subclasses
:class:`~nscl.methods.base.Method`, overrides the hooks it needs and registers itself with
``@register("name")``; its module is imported below.
"""

from .base import METHODS, Method, register  # noqa: F401
from . import baselines, adam_nscl  # noqa: F401,E402  (registration side effects)
from . import lowrank  # noqa: F401,E402
from . import clnp  # noqa: F401,E402
from . import sgp  # noqa: F401,E402


def null_space_methods() -> tuple[str, ...]:
    """Names of the methods that train later tasks in the old tasks' null space (``Method.null_space``)."""
    return tuple(name for name, cls in METHODS.items() if cls.null_space)

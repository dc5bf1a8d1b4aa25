"""Declaration of one run parameter: name, default, type, help (no validation, no files).

Every layer that reads parameters declares them next to the code that reads them (the data
package its data keys, each method its own keys); :mod:`nscl.experiment.config` collects the
declarations into the one schema and validates runs against it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: the value types a parameter may have
TYPES = ("bool", "int", "float", "str", "list[int]", "list[float]", "list[str]", "dict")


@dataclass(frozen=True)
class Param:
    """One parameter. ``optional`` (None allowed) defaults to ``default is None``."""

    name: str
    default: Any
    type: str
    help: str
    choices: tuple | None = None
    optional: bool | None = None

    def __post_init__(self):
        if self.type not in TYPES:
            raise ValueError(f"parameter {self.name!r}: unknown type {self.type!r}")
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))
        if self.optional is None:
            object.__setattr__(self, "optional", self.default is None)

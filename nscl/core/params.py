"""Declaration of one run parameter: name, default, type, help, allowed choices or range (no files).

Every layer that reads parameters declares them next to the code that reads them (the data
package its data keys, each method its own keys); :mod:`nscl.experiment.config` collects the
declarations into the one schema and validates runs against it. A declaration says which values
make sense (``choices``, or a ``range`` such as ``"[1, inf)"``), so a bad value is refused before
any training, next to where the parameter is defined, instead of failing deep inside a run.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

#: the value types a parameter may have
TYPES = ("bool", "int", "float", "str", "list[int]", "list[float]", "list[str]", "dict")

_NUMBER = r"[-+]?(?:inf|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)"
_RANGE = re.compile(rf"\s*([\[(])\s*({_NUMBER})\s*,\s*({_NUMBER})\s*([\])])\s*")


@dataclass(frozen=True)
class Param:
    """One parameter. ``optional`` (None allowed) defaults to ``default is None``.

    ``range``: the interval a number (or every element of a list) must lie in, written like
    ``"[1, inf)"`` (>= 1), ``"(0, inf)"`` (> 0) or ``"(0, 1]"``; None means any value of the type.
    """

    name: str
    default: Any
    type: str
    help: str
    choices: tuple | None = None
    optional: bool | None = None
    range: str | None = None

    def __post_init__(self):
        if self.type not in TYPES:
            raise ValueError(f"parameter {self.name!r}: unknown type {self.type!r}")
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))
        if self.optional is None:
            object.__setattr__(self, "optional", self.default is None)
        if self.range is not None:
            if self.type not in ("int", "float", "list[int]", "list[float]"):
                raise ValueError(f"parameter {self.name!r}: a range needs a numeric type, not {self.type!r}")
            lo, hi, _, _ = self.bounds()
            if not lo <= hi:
                raise ValueError(f"parameter {self.name!r}: empty range {self.range!r}")
            if self.default is not None and self.range_error(self.default):
                raise ValueError(f"parameter {self.name!r}: default {self.default!r} outside its range {self.range}")

    def bounds(self) -> tuple[float, float, bool, bool]:
        """``(low, high, low included, high included)`` of :attr:`range` (infinite when open-ended)."""
        m = _RANGE.fullmatch(self.range or "")
        if m is None:
            raise ValueError(
                f"parameter {self.name!r}: range must look like '[1, inf)' or '(0, 1]', got {self.range!r}"
            )
        return float(m[2]), float(m[3]), m[1] == "[", m[4] == "]"

    def describe_range(self) -> str:
        """The range in words: ``>= 1``, ``> 0`` or ``in (0, 1]``."""
        lo, hi, lo_in, hi_in = self.bounds()
        m = _RANGE.fullmatch(self.range)
        if math.isinf(hi) and hi > 0:
            return f"{'>=' if lo_in else '>'} {m[2]}"
        if math.isinf(lo) and lo < 0:
            return f"{'<=' if hi_in else '<'} {m[3]}"
        return f"in {m[1]}{m[2]}, {m[3]}{m[4]}"

    def range_error(self, value: Any) -> str | None:
        """None when ``value`` (each element of a list) lies in :attr:`range`, else what it must be.

        Assumes ``value`` already has the declared type (None is always allowed here: whether a
        parameter may be null is ``optional``'s business)."""
        if self.range is None or value is None:
            return None
        lo, hi, lo_in, hi_in = self.bounds()
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            ok = (lo <= v if lo_in else lo < v) and (v <= hi if hi_in else v < hi)
            if not ok:
                return (
                    f"must hold values {self.describe_range()}"
                    if isinstance(value, (list, tuple))
                    else f"must be {self.describe_range()}"
                )
        return None

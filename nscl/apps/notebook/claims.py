"""The notebooks' executable story: every sentence that states a comparison is checked or printed.

* :func:`expect` backs a sentence of the markdown with the numbers: it prints ``holds: <claim>`` or
  raises :class:`ClaimError` naming the claim and the numbers that broke it (one ``error:`` line in
  the notebook, and a failed cell under nbval, papermill and ``make test``). State relations with a
  margin (``bwt_nscl > bwt_ft + 2``), never a near-tie that another machine's round-off could flip.
* :func:`versus` prints a comparison *from* the numbers (``a 98.42 vs b 96.06: +2.36 points``), for a
  line of interpretation whose wording must not depend on which way a near-tie falls.
"""

from __future__ import annotations

from ...util import ReadableError


class ClaimError(ReadableError, AssertionError):
    """A sentence of the notebook no longer holds for the numbers it describes."""


def _show(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def expect(condition: bool, claim: str, **numbers) -> None:
    """Check a claim of the notebook's text: print ``holds: <claim>``, or raise :class:`ClaimError`.

    ``numbers`` (name = value) are shown when the claim fails, so the message says what changed.
    """
    if not condition:
        shown = f" ({', '.join(f'{k} = {_show(v)}' for k, v in numbers.items())})" if numbers else ""
        raise ClaimError(
            f"the notebook says {claim!r}, but the numbers no longer do{shown}. Rewrite that sentence, "
            "or find the change (parameters, defaults, code) that moved the numbers."
        )
    print(f"holds: {claim}")


def versus(name_a: str, a: float, name_b: str, b: float, unit: str = "points", digits: int = 2) -> str:
    """``name_a A vs name_b B: ±(A-B) unit``: a comparison stated by its numbers, whichever way it falls."""
    return f"{name_a} {a:.{digits}f} vs {name_b} {b:.{digits}f}: {a - b:+.{digits}f} {unit}"

"""The notebooks' executable story: every sentence that states a comparison is checked or printed.

* :func:`expect` backs a sentence of the markdown with the numbers: it prints ``holds: <claim>``.
  When the numbers no longer say it, it prints ``does not hold with these parameters: <claim>`` and
  the numbers, and goes on: the text was written for the notebook's own parameters, and a user who
  changes them still gets every figure. Under nbval (``make test``) that changed line fails the
  stored-output check; with ``$NSCL_STRICT_CLAIMS`` set (``make notebooks``, so a broken story is
  never committed) it raises :class:`ClaimError` instead, one ``error:`` line naming the claim.
  State relations with a margin (``bwt_nscl > bwt_ft + 2``), never a near-tie that another
  machine's round-off could flip.
* :func:`versus` prints a comparison *from* the numbers (``a 98.42 vs b 96.06: +2.36 points``), for a
  line of interpretation whose wording must not depend on which way a near-tie falls.
"""

from __future__ import annotations


from ...util import ReadableError, env_flag

STRICT_ENV = "NSCL_STRICT_CLAIMS"  # on (util.env_flag: not empty, 0, false, no, off): a failed claim raises


class ClaimError(ReadableError, AssertionError):
    """A sentence of the notebook no longer holds for the numbers it describes."""


def _show(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def expect(condition: bool, claim: str, **numbers) -> None:
    """Check a claim of the notebook's text: print ``holds: <claim>``, or that it does not hold here
    (:class:`ClaimError` under ``$NSCL_STRICT_CLAIMS``).

    ``numbers`` (name = value) are shown when the claim fails, so the message says what changed.
    """
    if condition:
        print(f"holds: {claim}")
        return
    shown = f" ({', '.join(f'{k} = {_show(v)}' for k, v in numbers.items())})" if numbers else ""
    if env_flag(STRICT_ENV):
        raise ClaimError(
            f"the notebook says {claim!r}, but the numbers no longer do{shown}. Rewrite that sentence, "
            "or find the change (parameters, defaults, code) that moved the numbers."
        )
    print(f"does not hold with these parameters: {claim}{shown}")


def versus(name_a: str, a: float, name_b: str, b: float, unit: str = "points", digits: int = 2) -> str:
    """``name_a A vs name_b B: ±(A-B) unit``: a comparison stated by its numbers, whichever way it falls."""
    return f"{name_a} {a:.{digits}f} vs {name_b} {b:.{digits}f}: {a - b:+.{digits}f} {unit}"

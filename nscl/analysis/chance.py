"""The chance check: a null-space method that ends at chance on a task was starved, not measured.

Every training notebook ends with :func:`check_above_chance`; the notebook suite (``make run``) and
the results page list such runs too (:func:`at_chance` on one run record).
"""

from __future__ import annotations

from typing import Mapping

from ..core.metrics import CHANCE_MARGIN
from ..core.metrics import at_chance as _at_chance
from ..util import ReadableError


def at_chance(res: Mapping, margin: float = CHANCE_MARGIN) -> list[int] | None:
    """Tasks (1-based) on which a run's final accuracy is within ``margin`` points of chance
    (:func:`nscl.core.metrics.at_chance`); ``None`` when the run does not record its tasks' class counts."""
    tasks = (res.get("stream") or {}).get("tasks")
    if not res.get("acc") or not tasks:
        return None
    return _at_chance(res["acc"], [t["n_classes"] for t in tasks], margin)


class ChanceLevelError(ReadableError, RuntimeError):
    """A null-space method ended at chance on some task: its configuration starves it."""


def check_above_chance(results: Mapping[str, Mapping], margin: float = CHANCE_MARGIN) -> str:
    """Raise :class:`ChanceLevelError` if a null-space method's run (``Method.null_space``: adam_nscl,
    nscl_prune, nscl_lowrank) ends within ``margin`` points of chance on any task; else return (and
    print) one line naming the runs checked.

    A null-space method at chance means its null spaces left no room to learn (too few steps, too
    small a network, too strict a rule), not that the method was measured: such a configuration must
    not be shown. Every committed notebook ends with this check, so nbval and ``make run`` fail on it.
    """
    from ..methods import null_space_methods

    names = null_space_methods()
    checked, bad = [], []
    for label, res in results.items():
        if (res.get("params") or {}).get("method") not in names:
            continue
        tasks = at_chance(res, margin)
        if tasks is None:
            continue
        checked.append(label)
        if tasks:
            last = [row for row in res["acc"] if row and row[0] is not None][-1]
            n = [t["n_classes"] for t in res["stream"]["tasks"]]
            bad.append(
                f"{label} on task(s) "
                + ", ".join(f"{j} ({last[j - 1]:.1f}% vs chance {100 / n[j - 1]:.0f}%)" for j in tasks)
            )
    if bad:
        raise ChanceLevelError(
            f"null-space method(s) at chance (within {margin:g} points) on the final row: {'; '.join(bad)}. "
            "The configuration starves them: give them more optimizer steps (epochs, samples_per_task, "
            "batch_size) or a wider network (hidden), or a null-space rule that leaves room to learn."
        )
    line = (
        f"above chance (+{margin:g} points) on every task: {', '.join(checked)}"
        if checked
        else "no null-space method to check"
    )
    print(line)
    return line

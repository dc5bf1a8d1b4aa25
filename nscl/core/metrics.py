"""Continual-learning metrics from the accuracy matrix ``A`` (percent; ``A[i][j]`` = accuracy on task
j after training task i; ``None`` above the diagonal).

* ACC = mean_j A[T-1][j]                               (final average accuracy)
* BWT = mean_{j<T-1} (A[T-1][j] - A[j][j])             (GEM / Adam-NSCL; negative = forgetting)
* plasticity = mean_j A[j][j]                          (accuracy just after learning each task)
* forgetting = mean_{j<T-1} (max_{j<=i<T-1} A[i][j] - A[T-1][j])   (Chaudhry et al., max-based)

All in percent (points), like the papers. With one task, BWT and forgetting are ``None``.

:func:`capacity` adds, per task, how much room each layer has left (null-space fraction r/d, and the
method's own budget: free units, active rank) next to the plasticity ``A[t][t]``.
"""

from __future__ import annotations


def _rows(acc: list[list]) -> list[list]:
    """Rows that are filled (a partial run has fewer rows than tasks)."""
    return [row for row in acc if row and row[0] is not None]


def summary(acc: list[list]) -> dict:
    rows = _rows(acc)
    T = len(rows)
    if T == 0:
        return {"acc": None, "bwt": None, "plasticity": None, "forgetting": None, "tasks_done": 0}
    last = rows[-1][:T]
    diag = [rows[j][j] for j in range(T)]
    out = {"acc": sum(last) / T, "plasticity": sum(diag) / T, "tasks_done": T}
    if T > 1:
        out["bwt"] = sum(last[j] - diag[j] for j in range(T - 1)) / (T - 1)
        out["forgetting"] = sum(max(rows[i][j] for i in range(j, T - 1)) - last[j] for j in range(T - 1)) / (T - 1)
    else:
        out["bwt"] = out["forgetting"] = None
    return out


#: a task counts as "at chance" when its accuracy is at most chance (100 / n_classes) plus this many points
CHANCE_MARGIN = 5.0


def at_chance(acc: list[list], n_classes: list[int], margin: float = CHANCE_MARGIN) -> list[int]:
    """Tasks (1-based) whose accuracy in the last filled row of ``acc`` is within ``margin`` points
    of chance, ``100 / n_classes[j]``: tasks the network never learned or lost completely.

    ``n_classes[j]`` is the number of classes of task j's head (task-incremental: chance is 1/n).
    """
    rows = _rows(acc)
    if not rows:
        return []
    last = rows[-1][: len(rows)]
    if len(n_classes) < len(last):
        raise ValueError(f"n_classes has {len(n_classes)} entries, the accuracy matrix {len(last)} tasks")
    return [j + 1 for j, a in enumerate(last) if a is not None and a <= 100.0 / n_classes[j] + margin]


#: a layer counts as exhausted once its null space holds less than this fraction of its input dims
EXHAUSTION_FRACTION = 0.25


def exhausted_at(null_fraction: list[float], below: float = EXHAUSTION_FRACTION) -> int | None:
    """The task (1-based) after which ``r/d`` first falls below ``below``; None if it never does."""
    return next((t + 1 for t, q in enumerate(null_fraction) if q < below), None)


def capacity(acc: list[list], null_space: dict, method: dict | None = None) -> dict:
    """The capacity record of a run: ``plasticity`` (``A[t][t]`` per finished task), per layer the
    null-space dim ``null_dim``, ``null_fraction`` (r/d) per task and ``exhausted_at``
    (:func:`exhausted_at`), plus the method's own per-layer series (``Method.capacity``)."""
    rows = _rows(acc)
    T = len(rows)
    layers = {}
    for name, h in null_space.items():
        dims = list(h["dims"][:T])
        fraction = [r / h["d"] for r in dims] if h["d"] else []
        layers[name] = {
            "d": h["d"],
            "null_dim": dims,
            "null_fraction": fraction,
            "exhausted_at": exhausted_at(fraction),
        }
    return {
        "plasticity": [rows[t][t] for t in range(T)],
        "exhaustion_fraction": EXHAUSTION_FRACTION,
        "layers": layers,
        **(method or {}),
    }

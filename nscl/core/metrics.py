"""Continual-learning metrics from the accuracy matrix ``A`` (percent; ``A[i][j]`` = accuracy on task
j after training task i; ``None`` above the diagonal).

* ACC = mean_j A[T-1][j]                               (final average accuracy)
* BWT = mean_{j<T-1} (A[T-1][j] - A[j][j])             (GEM / Adam-NSCL; negative = forgetting)
* plasticity = mean_j A[j][j]                          (accuracy just after learning each task)
* forgetting = mean_{j<T-1} (max_{j<=i<T-1} A[i][j] - A[T-1][j])   (Chaudhry et al., max-based)

All in percent (points), like the papers. With one task, BWT and forgetting are ``None``.
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

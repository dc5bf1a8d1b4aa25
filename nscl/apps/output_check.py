"""Stored notebook outputs that hold on every machine, and still catch a broken method.

The committed notebooks keep their outputs, and ``make test`` re-executes them (nbval) and compares.
Numbers that come out of training depend on the numeric path: the CPU's kernels (AVX2, AVX-512,
ATen's ``default``), the BLAS code path and the thread count change the order of floating-point sums,
and a permuted stream amplifies those last-bit differences into tenths of a point of accuracy. The
same machine, thread count and kernels give bit-identical numbers; another path does not.

So a code cell whose output carries training-derived numbers is tagged :data:`TAG`. For such a cell
the text with every number masked must match exactly (labels, rows, wording), and each number must
match its stored value within the tolerance of ``notebooks/output_tolerance.yaml``::

    |fresh - stored| <= atol + rtol * |stored|

That file records the spread it was derived from (every tagged number under several numeric paths,
measured by ``python -m nscl.apps.output_check spread``). Every other cell is compared exactly.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

TAG = "training-numbers"

# a number as the notebooks print it: sign (ASCII or U+2212), digits, decimals, exponent
NUMBER = re.compile(r"(?<![\w.])([-+\u2212]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)(?![\w])")
MASK = "#"


def numbers(text: str) -> list[float]:
    """Every number in ``text``, in order (``−`` is read as a minus sign)."""
    return [float(m.replace("\u2212", "-")) for m in NUMBER.findall(text)]


def mask(text: str) -> str:
    """``text`` with every number replaced by :data:`MASK` and runs of spaces made one (a table pads its
    columns to the longest number): what must match exactly in a tagged cell."""
    return re.sub(r"[ \t]+", " ", NUMBER.sub(MASK, text))


@dataclass(frozen=True)
class Tolerance:
    """``|fresh - stored| <= atol + rtol * |stored|`` for each number of a tagged cell.

    ``wider`` holds ``(pattern, atol, rtol)`` for the numbers on a line that matches ``pattern`` (a regular
    expression): the rows of a baseline whose numbers are chaotic by design (fine-tuning forgets, and what
    it forgets moves with every last bit), measured and justified in the tolerance file.
    """

    atol: float
    rtol: float
    wider: tuple[tuple[str, float, float], ...] = ()

    def limits(self, line: str = "") -> tuple[float, float]:
        """``(atol, rtol)`` for the numbers on ``line``: the first matching ``wider`` entry, else the default."""
        for pattern, atol, rtol in self.wider:
            if re.search(pattern, line):
                return atol, rtol
        return self.atol, self.rtol

    def allows(self, stored: float, fresh: float, line: str = "") -> bool:
        if math.isnan(stored) or math.isnan(fresh):
            return math.isnan(stored) and math.isnan(fresh)
        atol, rtol = self.limits(line)
        return abs(fresh - stored) <= atol + rtol * abs(stored)

    @classmethod
    def load(cls, path: str | Path) -> "Tolerance":
        import yaml

        data = yaml.safe_load(Path(path).read_text())
        try:
            wider = tuple((str(w["lines"]), float(w["atol"]), float(w["rtol"])) for w in (data.get("wider") or ()))
            for pattern, _, _ in wider:
                re.compile(pattern)
            return cls(atol=float(data["atol"]), rtol=float(data["rtol"]), wider=wider)
        except (TypeError, KeyError, AttributeError) as e:
            raise ValueError(
                f"{path}: needs numeric 'atol' and 'rtol' keys, and 'wider' entries with 'lines', 'atol', 'rtol' ({e})"
            ) from None
        except re.error as e:
            raise ValueError(f"{path}: a 'wider' entry's 'lines' is not a regular expression ({e})") from None


def cell_texts(outputs: Iterable[Mapping]) -> list[str]:
    """The comparable text of a cell's outputs: streams and text/plain + text/html of displays (images
    are compared by their presence only: a figure's pixels move with every number in it)."""
    texts = []
    for out in outputs:
        if out.get("output_type") == "stream":
            text = out.get("text", "")
            texts.append("".join(text) if isinstance(text, list) else str(text))  # raw .ipynb JSON: a list
        elif out.get("output_type") in ("display_data", "execute_result"):
            data = out.get("data", {})
            for key in ("text/plain", "text/html"):
                if key in data:
                    v = data[key]
                    texts.append("".join(v) if isinstance(v, list) else str(v))
        elif out.get("output_type") == "error":
            texts.append(f"{out.get('ename')}: {out.get('evalue')}")
    return texts


def same_text(stored: Iterable[str], fresh: Iterable[str]) -> bool:
    """Whether two cells' texts agree once every number is masked (:func:`mask`)."""
    return [mask(s) for s in stored] == [mask(f) for f in fresh]


def rows(text: str) -> list[str]:
    """A text's rows: an HTML table's ``<tr>`` rows (a row's label and its numbers sit on different source
    lines), else its lines."""
    return text.split("</tr>") if "<tr" in text else text.splitlines()


def line_deviations(stored: Iterable[str], fresh: Iterable[str]) -> list[tuple[str, float, float]]:
    """``(stored row, stored, fresh)`` for every number that differs, read row by row (:func:`rows`) from
    texts that agree beyond their numbers (:func:`same_text`)."""
    return [
        (la, s, f)
        for a, b in zip(stored, fresh)
        for la, lb in zip(rows(a), rows(b))
        for s, f in zip(numbers(la), numbers(lb))
        if s != f
    ]


def deviations(stored: Iterable[str], fresh: Iterable[str]) -> list[tuple[float, float]]:
    """``(stored, fresh)`` pairs of every number that differs (:func:`line_deviations` without the lines)."""
    return [(s, f) for _, s, f in line_deviations(stored, fresh)]


def compare_numbers(stored: Iterable[str], fresh: Iterable[str], tol: Tolerance) -> list[str]:
    """Problems between two tagged cells' texts; empty when the masked texts are equal and every number
    is within ``tol`` (the tolerance of its line)."""
    stored, fresh = list(stored), list(fresh)
    if not same_text(stored, fresh):
        return ["the text differs beyond its numbers"]
    problems = []
    for line, s, f in line_deviations(stored, fresh):
        if not tol.allows(s, f, line):
            atol, rtol = tol.limits(line)
            problems.append(f"{f:g} against {s:g} stored (allowed ±{atol + rtol * abs(s):.3g})")
    return problems


def tagged(cell: Mapping) -> bool:
    return TAG in cell.get("metadata", {}).get("tags", [])


def notebook_spread(stored_nb: str | Path, fresh_nb: str | Path) -> list[dict]:
    """Per code cell of two executions of one notebook: tagged or not, whether the texts agree exactly,
    whether they agree once numbers are masked, and the largest absolute / relative number change."""
    a, b = (json.loads(Path(p).read_text()) for p in (stored_nb, fresh_nb))
    code_a = [c for c in a["cells"] if c["cell_type"] == "code"]
    code_b = [c for c in b["cells"] if c["cell_type"] == "code"]
    rows = []
    for i, (ca, cb) in enumerate(zip(code_a, code_b)):
        ta, tb = cell_texts(ca.get("outputs", [])), cell_texts(cb.get("outputs", []))
        masked_equal = same_text(ta, tb)
        devs = deviations(ta, tb) if masked_equal else []
        rows.append(
            {
                "code_cell": i,
                "tagged": tagged(ca),
                "exact": ta == tb,
                "masked_equal": masked_equal,
                "n_numbers": sum(len(numbers(t)) for t in ta),
                "n_changed": len(devs),
                "max_abs": max((abs(f - s) for s, f in devs), default=0.0),
                "max_rel": max((abs(f - s) / max(abs(s), 1e-12) for s, f in devs), default=0.0),
                "changes": [[s, f] for s, f in devs[:40]],
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    """``python -m nscl.apps.output_check spread STORED_DIR FRESH_DIR [-o out.json]``: per notebook and
    code cell, how far a fresh execution's numbers moved from the stored ones."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m nscl.apps.output_check")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("spread", help="compare executed notebooks in FRESH_DIR with those in STORED_DIR")
    sp.add_argument("stored")
    sp.add_argument("fresh")
    sp.add_argument("-o", "--out")
    args = ap.parse_args(argv)
    report = {}
    for nb in sorted(Path(args.stored).glob("[0-9][0-9]_*.ipynb")):
        fresh = Path(args.fresh) / nb.name
        if fresh.exists():
            report[nb.stem] = notebook_spread(nb, fresh)
    for stem, rows in report.items():
        for r in rows:
            if not r["exact"]:
                print(
                    f"{stem} code cell {r['code_cell']}: tagged={r['tagged']} masked_equal={r['masked_equal']} "
                    f"changed {r['n_changed']}/{r['n_numbers']} max_abs={r['max_abs']:.4g} max_rel={r['max_rel']:.3g}"
                )
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

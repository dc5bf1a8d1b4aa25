"""``pytest --nbval notebooks/`` checks the committed outputs (``make test`` runs it twice: on the machine's
default numeric path and on ``OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=default``).

- Cells tagged ``training-numbers`` hold numbers that come out of training. Their text with every
  number masked must match exactly; each number must match its stored value within the tolerance of
  ``output_tolerance.yaml`` (:mod:`nscl.apps.output_check`). Every other cell is compared exactly.
- Run like ``make test`` even when called by hand: no progress bars (``NSCL_QUIET``) and the notebooks'
  runs in one fresh temporary folder (``NSCL_OUTPUT_ROOT``; 04 reads the runs 00-03 wrote there),
  unless the caller set them. ``make test`` keeps that folder: the notebook tests read its records.
- ``NSCL_OUTPUT_LOG=path.jsonl``: one line per tagged cell with every number that moved (the measured
  spread behind the tolerance; ``python -m nscl.apps.output_check``).
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from nscl.apps import output_check

os.environ.setdefault("NSCL_QUIET", "1")
_OWN_ROOT = None
if not os.environ.get("NSCL_OUTPUT_ROOT"):
    _OWN_ROOT = os.environ["NSCL_OUTPUT_ROOT"] = tempfile.mkdtemp(prefix="nscl-nbval-")
TOLERANCE_FILE = Path(__file__).with_name("output_tolerance.yaml")


def pytest_unconfigure(config):
    if _OWN_ROOT:
        shutil.rmtree(_OWN_ROOT, ignore_errors=True)


def _tolerant_compare(item, tolerance: output_check.Tolerance, log: str | None):
    """nbval's comparison for one tagged cell: its own exact compare on number-masked text (structure,
    labels, wording), then each number within ``tolerance``."""
    exact_compare, exact_sanitize = item.compare_outputs, item.sanitize

    def compare(test, ref, skip_compare=None):
        item.sanitize = lambda s: output_check.mask(exact_sanitize(s))
        try:
            if not exact_compare(test, ref, skip_compare):
                return False
        finally:
            item.sanitize = exact_sanitize
        stored, fresh = output_check.cell_texts(ref), output_check.cell_texts(test)
        if log:
            with open(log, "a") as f:
                moved = output_check.deviations(stored, fresh)  # the masked texts agree: compared above
                f.write(json.dumps({"cell": item.name, "numbers": len(moved), "moved": moved}) + "\n")
        problems = output_check.compare_numbers(stored, fresh, tolerance)
        if problems:
            item.comparison_traceback = [
                f"{len(problems)} number(s) of this `{output_check.TAG}` cell outside the tolerance of "
                f"{TOLERANCE_FILE.name} (|fresh - stored| <= {tolerance.atol:g} + {tolerance.rtol:g}*|stored|):",
                *problems[:20],
            ]
            return False
        return True

    return compare


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    tolerance = None
    for item in items:
        cell = getattr(item, "cell", None)
        if cell is None or not output_check.tagged(cell):
            continue
        tolerance = tolerance or output_check.Tolerance.load(TOLERANCE_FILE)
        item.compare_outputs = _tolerant_compare(item, tolerance, os.environ.get("NSCL_OUTPUT_LOG"))

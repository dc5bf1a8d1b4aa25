"""The stored-output check (``nscl.apps.output_check``, used by ``notebooks/conftest.py`` under nbval):
numbers of ``training-numbers`` cells within the measured tolerance, everything else exact, and a broken
method still fails it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nscl.apps import output_check as oc

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
TOL = oc.Tolerance.load(NOTEBOOKS / "output_tolerance.yaml")


def test_numbers_and_mask_read_tables_as_printed():
    text = "permuted_fmnist/adam_nscl 75.65   0.09 −1.5e-3 layers.1 r=754"
    assert oc.numbers(text) == [75.65, 0.09, -1.5e-3, 754.0]
    assert oc.mask(text) == oc.mask("permuted_fmnist/adam_nscl 75.3 -0.24 2e-3 layers.1 r=760")
    assert oc.mask("a 1 b") != oc.mask("a 1 c")  # words still count


def test_tolerance_allows_the_measured_spread_and_not_a_broken_method():
    stored = ["permuted_fmnist/adam_nscl 75.65 0.09\npermuted_fmnist/finetune 64.13 -11.98"]
    # the largest changes measured across numeric paths are allowed ...
    moved = ["permuted_fmnist/adam_nscl 75.38 -0.24\npermuted_fmnist/finetune 64.80 -11.40"]
    assert oc.compare_numbers(stored, moved, TOL) == []
    # ... projection off: adam_nscl forgets like fine-tuning
    broken = ["permuted_fmnist/adam_nscl 66.10 -10.20\npermuted_fmnist/finetune 64.13 -11.98"]
    problems = oc.compare_numbers(stored, broken, TOL)
    assert len(problems) == 2 and "66.1 against 75.65" in problems[0]
    # a changed word is never within tolerance
    assert oc.compare_numbers(["adam_nscl 1.0"], ["finetune 1.0"], TOL) == ["the text differs beyond its numbers"]


def test_fine_tuning_rows_get_the_wider_measured_tolerance_and_nothing_else_does():
    """Fine-tuning's forgetting is chaotic (an Intel MKL path moved its BWT by 2.2 points); a null-space
    method's row keeps the tight default, in plain text and in an HTML table's row alike."""
    stored = ["permuted_fmnist/adam_nscl 75.71 0.08\npermuted_fmnist/finetune 64.13 -11.98"]
    moved = ["permuted_fmnist/adam_nscl 75.38 -0.24\npermuted_fmnist/finetune 65.99 -9.83"]
    assert oc.compare_numbers(stored, moved, TOL) == []
    drifted = ["permuted_fmnist/adam_nscl 72.71 0.08\npermuted_fmnist/finetune 64.13 -11.98"]
    assert len(oc.compare_numbers(stored, drifted, TOL)) == 1  # 3 points on adam_nscl's row: caught
    html = "<table><tr><th>{}</th>\n<td>{}</td>\n</tr><tr><th>{}</th>\n<td>{}</td>\n</tr></table>"
    stored_html = [html.format("permuted_fmnist/finetune", "-11.98", "permuted_fmnist/adam_nscl", "0.08")]
    assert (
        oc.compare_numbers(
            stored_html, [html.format("permuted_fmnist/finetune", "-9.83", "permuted_fmnist/adam_nscl", "0.08")], TOL
        )
        == []
    )
    assert (
        oc.compare_numbers(
            stored_html, [html.format("permuted_fmnist/finetune", "-11.98", "permuted_fmnist/adam_nscl", "-2.92")], TOL
        )
        != []
    )
    # the wider tolerance still fails a fine-tuning row that moved far beyond the measured spread
    assert oc.compare_numbers(
        stored, ["permuted_fmnist/adam_nscl 75.71 0.08\npermuted_fmnist/finetune 44.13 -11.98"], TOL
    )


def test_nbval_markers_are_in_the_form_nbval_reads():
    """nbval honours a marker only on a comment line that is exactly ``# NBVAL_...``: a marker followed by
    prose is silently ignored, and the cell is compared exactly (01's round-off table failed on Intel)."""
    markers = {"NBVAL_IGNORE_OUTPUT", "NBVAL_CHECK_OUTPUT", "NBVAL_RAISES_EXCEPTION", "NBVAL_SKIP"}
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] != "code":
                continue
            for line in "".join(cell["source"]).splitlines():
                if line.strip().startswith("#") and "NBVAL_" in line:
                    assert line.strip().lstrip("#").strip() in markers, f"{path.name}: {line.strip()!r}"


def test_tolerance_file_names_its_evidence():
    text = (NOTEBOOKS / "output_tolerance.yaml").read_text()
    assert "OMP_NUM_THREADS=1" in text and "ATEN_CPU_CAPABILITY" in text  # the paths it was measured on
    assert 0 < TOL.atol <= 2 and 0 <= TOL.rtol <= 0.05  # loose enough to hide a method: a failure here


def test_every_notebook_tags_its_training_numbers():
    """A notebook that trains shows its numbers in tagged cells; parameter and set-up cells stay exact."""
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        tags = [c.get("metadata", {}).get("tags", []) for c in cells if c["cell_type"] == "code"]
        assert any(oc.TAG in t for t in tags), f"{path.name} has no `{oc.TAG}` cell"
        assert not any(oc.TAG in t and "parameters" in t for t in tags), path.name


@pytest.mark.slow
def test_quickstart_with_the_projection_switched_off_fails_the_check(tmp_path, monkeypatch):
    """The tolerance hides no broken method: notebook 00 executed with NullSpaceAdam's projection
    switched off (one cell prepended) is compared with the committed outputs as nbval does."""
    import nbformat
    from nbclient import NotebookClient

    committed = nbformat.read(NOTEBOOKS / "00_quickstart.ipynb", as_version=4)
    broken = nbformat.read(NOTEBOOKS / "00_quickstart.ipynb", as_version=4)
    off = "from nscl.core.optim import NullSpaceAdam\nNullSpaceAdam._project = lambda self, tensors: None"
    broken.cells.insert(0, nbformat.v4.new_code_cell(off))
    monkeypatch.setenv("NSCL_OUTPUT_ROOT", str(tmp_path))
    monkeypatch.setenv("NSCL_QUIET", "1")
    NotebookClient(
        broken,
        kernel_name="python3",
        timeout=1800,
        startup_timeout=600,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    ).execute()
    failing = []
    for stored, fresh in zip(committed.cells, broken.cells[1:]):
        if stored.cell_type == "code" and oc.tagged(stored):
            problems = oc.compare_numbers(oc.cell_texts(stored.outputs), oc.cell_texts(fresh.outputs), TOL)
            if problems:
                failing.append("".join(stored.source))
    assert any("metrics_table" in src for src in failing), failing
    assert os.environ["NSCL_OUTPUT_ROOT"] == str(tmp_path)

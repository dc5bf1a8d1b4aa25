"""The notebook suite: every notebooks/NN_*.ipynb through papermill on params/base.yaml + ci.yaml.

One module-scoped run of the suite runner (``nscl.report.run_suite``, what ``make run`` uses) executes
every notebook into a temporary folder (per-notebook extras: ``params/ci_<stem>.yaml`` if present);
the tests assert on what the notebooks recorded. The committed outputs themselves are checked by
``pytest --nbval`` (second step of ``make test``).
"""
from __future__ import annotations

import json
from pathlib import Path

import papermill as pm
import pytest

from nscl import config, report, runs
from nscl import notebook as nb
from nscl.methods import null_space_methods

ROOT = Path(__file__).resolve().parents[1]
CI = [ROOT / "params" / "base.yaml", ROOT / "params" / "ci.yaml"]
NOTEBOOKS = report.notebooks(ROOT / "notebooks")


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    entries = report.run_suite(out, CI, overrides={"threads": 1}, progress=False, hook="ci_{stem}.yaml",
                               folder=ROOT / "notebooks")
    return out, {e["notebook"]: e for e in entries}


def record(suite, stem: str) -> dict:
    out, entries = suite
    if stem not in entries:
        pytest.fail(f"notebook {stem} is missing from notebooks/")
    assert entries[stem]["status"] == "complete", entries[stem]["error"]
    return nb.load_results(out / stem)


def test_suite_found_the_notebooks():
    stems = [p.stem for p in NOTEBOOKS]
    assert {"00_quickstart", "01_adam_nscl", "04_null_space_analysis"} <= set(stems)
    assert stems == sorted(stems)


@pytest.mark.parametrize("stem", [p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_leaves_results_beside_it(suite, stem):
    out, _ = suite
    rec = record(suite, stem)
    assert (out / stem / f"{stem}.ipynb").exists()
    assert (out / stem / runs.RESULTS).exists()  # beside the output notebook
    assert rec["schema"] == nb.NOTEBOOK_RESULTS_SCHEMA
    assert rec["params"]["samples_per_task"] == 1000 and rec["params"]["device"] == "cpu"  # ci.yaml reached it
    assert rec["figures"], "every notebook saves at least one figure"
    for f in rec["figures"]:
        png = out / stem / f
        assert png.suffix == ".png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for label, m in rec["methods"].items():
        assert m["status"] in ("complete", None), label
        if m.get("acc") is not None:  # a run's accuracy matrix: T rows, nothing above the diagonal
            T = m["metrics"]["tasks_done"]
            assert len(m["acc"]) == T and all(v is None for i, row in enumerate(m["acc"]) for v in row[i + 1:])
        if m.get("run_dir") is not None:
            run = runs.load(out / stem / m["run_dir"])
            assert run["metrics"] == m["metrics"]
    executed = json.loads((out / stem / f"{stem}.ipynb").read_text())
    assert executed["metadata"]["papermill"]["parameters"]["samples_per_task"] == 1000


def test_quickstart_adam_nscl_forgets_less_than_finetuning_on_both_streams(suite):
    rec = record(suite, "00_quickstart")
    assert set(rec["methods"]) == {f"{b}/{m}" for b in ("split_fmnist", "permuted_fmnist")
                                   for m in ("finetune", "adam_nscl")}
    for bench, T in (("split_fmnist", 5), ("permuted_fmnist", 10)):
        ft, ns = rec["methods"][f"{bench}/finetune"], rec["methods"][f"{bench}/adam_nscl"]
        assert ft["metrics"]["tasks_done"] == ns["metrics"]["tasks_done"] == T
        assert ns["metrics"]["bwt"] > ft["metrics"]["bwt"]
        assert ns["metrics"]["bwt"] >= -1.0  # projection: old tasks keep their accuracy (to within a point)
        assert ft["metrics"]["forgetting"] > ns["metrics"]["forgetting"]
        # both ran on the same stream: identical first-task accuracy before any interference
        assert ft["acc"][0][0] == ns["acc"][0][0]
        assert ns["at_chance"] == [] and ns["method"] == "adam_nscl"
    # forgetting is real on the permuted stream: fine-tuning loses more there than on split
    assert (rec["methods"]["permuted_fmnist/finetune"]["metrics"]["bwt"]
            < rec["methods"]["split_fmnist/finetune"]["metrics"]["bwt"])


def test_no_notebook_shows_a_null_space_method_at_chance(suite):
    out, entries = suite
    recs = report.suite_records(out)
    assert report.chance_failures(recs) == []
    checked = {stem: [label for label, m in rec["methods"].items() if m.get("method") in null_space_methods()]
               for stem, rec in recs.items()}
    for stem in ("00_quickstart", "01_adam_nscl", "02_pruning", "03_low_rank", "05_compare_methods"):
        assert checked[stem], f"{stem} records no null-space run"
        for label in checked[stem]:
            assert recs[stem]["methods"][label]["at_chance"] == [], (stem, label)
    assert "no null-space method at chance on any task: passed**" in (out / "summary.md").read_text()


def test_a_starved_notebook_fails_with_the_chance_check(tmp_path):
    """The same quickstart, starved (one tiny epoch, a strict rule): the last cell stops it, naming the run."""
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(ROOT / "notebooks" / "00_quickstart.ipynb"), str(tmp_path / "out.ipynb"),
                            parameters={"benchmarks": ["split_fmnist"], "samples_per_task": 100, "epochs": 1,
                                        "batch_size": 64, "hidden": [16, 16], "nullspace_rule": "a_min",
                                        "a": 1.0, "threads": 1, "output_dir": str(tmp_path)},
                            kernel_name="python3", progress_bar=False, cwd=str(ROOT / "notebooks"))
    assert err.value.ename == "ChanceLevelError"
    assert "split_fmnist/adam_nscl on task(s)" in err.value.evalue
    assert nb.load_results(tmp_path)["methods"]["split_fmnist/adam_nscl"]["at_chance"]  # recorded before failing


def test_adam_nscl_notebook_invariance_and_null_space_vs_a(suite):
    rec = record(suite, "01_adam_nscl")
    x = rec["extra"]
    assert x["change_projected"] < 1e-6 < 1e-2 < x["change_unprojected"]
    assert 0 < x["update_norm_kept"] <= 1
    a_values = rec["params"]["a_values"]
    r_rank = [x["null_dim_vs_a"][f"a_min, floor=rank a={a:g}"] for a in a_values]
    r_none = [x["null_dim_vs_a"][f"a_min, floor=none a={a:g}"] for a in a_values]
    R_rank = [x["kept_energy_vs_a"][f"a_min, floor=rank a={a:g}"] for a in a_values]
    assert r_rank == sorted(r_rank) and r_none == sorted(r_none)  # a larger a never shrinks the null space
    assert R_rank == sorted(R_rank)  # ... and never protects more energy
    assert all(n <= r for n, r in zip(r_none, r_rank))  # the rank floor only adds directions
    ft, ns = rec["methods"]["finetune"]["metrics"], rec["methods"]["adam_nscl"]["metrics"]
    assert ns["bwt"] > ft["bwt"]
    dims = rec["methods"]["adam_nscl"]["null_space"]
    for layer, h in dims.items():
        assert len(h["dims"]) == ns["tasks_done"] and all(0 <= r <= h["d"] for r in h["dims"]), layer


def test_analysis_notebook_reads_the_suite_runs_without_training(suite):
    out, _ = suite
    rec = record(suite, "04_null_space_analysis")
    assert not (out / "04_null_space_analysis" / "runs").exists()  # nothing retrained
    expected = {f"{stem}/{m}" for stem in ("00_quickstart/split_fmnist", "00_quickstart/permuted_fmnist",
                                           "01_adam_nscl") for m in ("finetune", "adam_nscl")}
    assert expected <= set(rec["methods"])
    summary = {row["run"]: row for row in rec["extra"]["null_space_summary"]}
    assert expected <= set(summary)
    for label in expected:
        assert 0 <= summary[label]["mean null fraction"] <= 1
        assert summary[label]["plasticity"] == pytest.approx(rec["methods"][label]["metrics"]["plasticity"], abs=0.01)


def test_summary_lists_every_notebook(suite):
    out, entries = suite
    text = (out / "summary.md").read_text()
    for stem in entries:
        assert f"[{stem}]({stem}/{stem}.ipynb) | complete" in text
    ns = nb.load_results(out / "00_quickstart")["methods"]["permuted_fmnist/adam_nscl"]["metrics"]
    assert f"| 00_quickstart | permuted_fmnist/adam_nscl | {ns['acc']:.2f} | {ns['bwt']:+.2f} |" in text


def test_misspelled_parameter_fails_naming_the_key(tmp_path):
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(ROOT / "notebooks" / "00_quickstart.ipynb"), str(tmp_path / "out.ipynb"),
                            parameters={"smaples_per_task": 100, "output_dir": str(tmp_path)},
                            kernel_name="python3", progress_bar=False, cwd=str(ROOT / "notebooks"))
    assert err.value.ename == "ConfigError"
    assert "'smaples_per_task'" in err.value.evalue and "samples_per_task" in err.value.evalue
    assert not (tmp_path / "runs").exists()  # failed before any training


# ---- nscl.notebook.parameters without a kernel --------------------------------------------------
def test_parameters_validates_the_namespace(tmp_path, monkeypatch):
    import os

    monkeypatch.delenv("NSCL_OUTPUT_ROOT", raising=False)
    ns = {"samples_per_task": 50, "hidden": [8], "methods": ["finetune"], "output_dir": "results/x",
          "os": os, "Path": Path, "f": lambda: 1, "In": [], "Out": {}, "_i1": "", "get_ipython": print}
    cfg = nb.parameters(ns, extras=["methods", "output_dir"])
    assert cfg["samples_per_task"] == 50 and cfg["hidden"] == [8] and cfg["methods"] == ["finetune"]
    assert cfg["epochs"] == config.PARAMS["epochs"].default  # the rest resolved
    assert Path(cfg["output_dir"]) == ROOT / "results" / "x" or Path(cfg["output_dir"]).is_absolute()
    assert set(cfg.config) == set(config.PARAMS) and cfg.extras == {"methods": ["finetune"],
                                                                     "output_dir": cfg["output_dir"]}
    with pytest.raises(config.ConfigError, match="'hiddden'.*hidden"):
        nb.parameters({"hiddden": [8]}, extras=["methods"])
    with pytest.raises(config.ConfigError, match="hidden"):
        nb.parameters({"hidden": "wide"})  # wrong type
    # papermill --inject-paths: results go beside the output notebook
    cfg = nb.parameters({"output_dir": "x", "PAPERMILL_OUTPUT_PATH": str(tmp_path / "o" / "nb.ipynb"),
                         "PAPERMILL_INPUT_PATH": "in.ipynb"}, extras=["output_dir"])
    assert cfg["output_dir"] == str((tmp_path / "o").resolve())
    # a re-run of the cell in a live kernel ignores variables created by later cells
    ns2 = {"epochs": 1}
    nb.parameters(ns2)
    ns2.update(results={"a": 1}, acc=3.5)
    assert nb.parameters(ns2)["epochs"] == 1


def test_run_labels_and_find_runs_skip_notebook_records(tmp_path):
    for d in ("a/runs/finetune", "b/runs/finetune"):
        runs.write_json(tmp_path / d / runs.RESULTS, {"schema": runs.SCHEMA, "params": {}})
    runs.write_json(tmp_path / "a" / runs.RESULTS, {"schema": nb.NOTEBOOK_RESULTS_SCHEMA})
    found = nb.find_runs([str(tmp_path / "*")])
    assert [p.parent.parent.name for p in found] == ["a", "b"]
    assert nb.run_labels(found) == ["a/finetune", "b/finetune"]


def test_run_methods_reuses_identical_runs_and_replaces_stale_ones(tmp_path, tiny_cfg):
    cfg = tiny_cfg(hidden=[16])
    first = nb.run_methods(cfg, ["finetune", "adam_nscl"], tmp_path)
    assert [p.name for p in sorted((tmp_path / "runs").iterdir())] == ["adam_nscl", "finetune"]
    again = nb.run_methods(cfg, ["finetune"], tmp_path)  # read back, not retrained
    assert again["finetune"]["_dir"] and again["finetune"]["acc"] == first["finetune"]["acc"]
    assert first["finetune"]["acc"][0][0] == first["adam_nscl"]["acc"][0][0]  # same stream, same init
    with pytest.raises(config.ConfigError, match="other parameters"):
        nb.run_methods({**cfg, "epochs": 2}, ["finetune"], tmp_path, replace=False)
    assert nb.run_methods({**cfg, "epochs": 2}, ["finetune"], tmp_path)["finetune"]["params"]["epochs"] == 2
    path = nb.save_results(tmp_path, first, cfg=cfg)
    rec = nb.load_results(path)
    assert rec["methods"]["adam_nscl"]["run_dir"] == "runs/adam_nscl"
    assert rec["methods"]["adam_nscl"]["metrics"] == first["adam_nscl"]["metrics"]

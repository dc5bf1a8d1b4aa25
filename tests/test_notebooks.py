"""The notebook suite: what the committed notebooks record when executed with their own defaults.

Each notebook executes once per ``make test``: nbval re-executes the committed notebooks (checking
their stored outputs, see ``notebooks/conftest.py``) with ``NSCL_OUTPUT_ROOT`` set to a kept folder,
and ``make test`` then runs these tests with ``NSCL_NBVAL_ROOT`` pointing at it, so they assert on the
records of that very execution. Without ``NSCL_NBVAL_ROOT`` (``pytest -m slow`` by hand) the fixture
executes the committed notebooks itself (about a minute). ``make run``'s own path (papermill with
parameter files, ``summary.md``) is held by :func:`test_make_run_suite_writes_summary_and_chance_check`.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import papermill as pm
import pytest

from nscl.analysis import tables
from nscl.apps import notebook as nb
from nscl.apps import suite as suite_app  # (`suite` is the module-scoped fixture below)
from nscl.experiment import config, records
from nscl.methods import null_space_methods

ROOT = Path(__file__).resolve().parents[1]
CI = [ROOT / "params" / "base.yaml", ROOT / "params" / "ci.yaml"]
NOTEBOOKS = suite_app.notebooks(ROOT / "notebooks")


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """``(output root, {stem: committed parameter defaults})`` of one execution of every notebook."""
    root = os.environ.get("NSCL_NBVAL_ROOT")
    if root:
        root = Path(root)
        missing = [p.stem for p in NOTEBOOKS if not (root / "results" / "notebooks" / p.stem).is_dir()]
        assert not missing, f"NSCL_NBVAL_ROOT={root} holds no records of {missing}: did nbval run there?"
    else:
        root = tmp_path_factory.mktemp("notebooks")
        suite_app.regenerate_all(ROOT / "notebooks", into=root / "executed", output_root=root)
    return root, {p.stem: pm.inspect_notebook(str(p)) for p in NOTEBOOKS}


def record(suite, stem: str) -> dict:
    root, _ = suite
    return nb.load_results(root / "results" / "notebooks" / stem)


def test_suite_found_the_notebooks():
    stems = [p.stem for p in NOTEBOOKS]
    assert {"00_quickstart", "01_adam_nscl", "04_null_space_analysis"} <= set(stems)
    assert stems == sorted(stems)


@pytest.mark.slow
@pytest.mark.parametrize("stem", [p.stem for p in NOTEBOOKS])
@pytest.mark.slow
def test_notebook_runs_and_leaves_results_beside_it(suite, stem):
    root, declared = suite
    out = root / "results" / "notebooks" / stem
    rec = record(suite, stem)
    assert rec["schema"] == nb.NOTEBOOK_RESULTS_SCHEMA
    for key in ("samples_per_task", "epochs"):  # the committed defaults reached the run
        if key in declared[stem] and key in rec["params"]:
            assert rec["params"][key] == ast.literal_eval(declared[stem][key]["default"]), key
    assert rec["figures"], "every notebook saves at least one figure"
    for f in rec["figures"]:
        png = out / f
        assert png.suffix == ".png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for label, m in rec["methods"].items():
        assert m["status"] in ("complete", None), label
        if m.get("acc") is not None:  # a run's accuracy matrix: T rows, nothing above the diagonal
            T = m["metrics"]["tasks_done"]
            assert len(m["acc"]) == T and all(v is None for i, row in enumerate(m["acc"]) for v in row[i + 1 :])
        if m.get("run_dir") is not None:
            run = records.load(out / m["run_dir"])
            assert run["metrics"] == m["metrics"]


@pytest.mark.slow
def test_make_run_suite_writes_summary_and_chance_check(tmp_path, capfd):
    """``make run``'s path on two notebooks at the ci.yaml size: papermill with layered parameter files,
    the analysis notebook pointed at the runs before it, summary.md with every method and the chance
    check; the kernels run encrypted (no "without encryption" warning reaches the user)."""
    entries = suite_app.run_suite(
        tmp_path, CI, overrides={"threads": 1}, progress=False, only=["00", "04"], folder=ROOT / "notebooks"
    )
    assert [e["status"] for e in entries] == ["complete", "complete"], [e["error"] for e in entries]
    executed = json.loads((tmp_path / "00_quickstart" / "00_quickstart.ipynb").read_text())
    assert executed["metadata"]["papermill"]["parameters"]["samples_per_task"] == 1000  # ci.yaml reached it
    text = (tmp_path / "summary.md").read_text()
    for e in entries:
        assert f"[{e['notebook']}]({e['notebook']}/{e['notebook']}.ipynb) | complete" in text
        # CPU time of the notebook's kernel (trained runs): at least a second, and shown in the summary
        assert e["cpu_seconds"] >= 1.0 and f"| {e['cpu_seconds']:.0f} |" in text, e
    ns = nb.load_results(tmp_path / "00_quickstart")["methods"]["permuted_fmnist/adam_nscl"]["metrics"]
    assert f"| 00_quickstart | permuted_fmnist/adam_nscl | {ns['acc']:.2f} | {ns['bwt']:+.2f} |" in text
    assert "no null-space method at chance on any task: passed**" in text
    assert "without encryption" not in capfd.readouterr().err
    analysed = nb.load_results(tmp_path / "04_null_space_analysis")["methods"]  # one run per stream and method
    assert {f"{b}/{m}" for b in ("split_fmnist", "permuted_fmnist") for m in ("finetune", "adam_nscl")} <= set(analysed)


@pytest.mark.slow
def test_quickstart_adam_nscl_forgets_less_than_finetuning_on_both_streams(suite):
    rec = record(suite, "00_quickstart")
    assert set(rec["methods"]) == {
        f"{b}/{m}" for b in ("split_fmnist", "permuted_fmnist") for m in ("finetune", "adam_nscl")
    }
    for bench, T in (("split_fmnist", 5), ("permuted_fmnist", 10)):
        ft, ns = rec["methods"][f"{bench}/finetune"], rec["methods"][f"{bench}/adam_nscl"]
        assert ft["metrics"]["tasks_done"] == ns["metrics"]["tasks_done"] == T
        assert ns["metrics"]["bwt"] > ft["metrics"]["bwt"]
        assert ns["metrics"]["bwt"] >= -1.0  # projection: old tasks keep their accuracy (to within a point)
        assert ft["metrics"]["forgetting"] > ns["metrics"]["forgetting"]
        # both ran on the same stream: identical first-task accuracy before any interference
        assert ft["acc"][0][0] == ns["acc"][0][0]
        assert ns["at_chance"] == [] and ns["method"] == "adam_nscl"
    # forgetting is real on the permuted stream too: fine-tuning loses points of old tasks there
    assert rec["methods"]["permuted_fmnist/finetune"]["metrics"]["bwt"] < -2.0


@pytest.mark.slow
def test_your_model_protected_loop_keeps_old_tasks_and_finetuning_forgets(suite):
    """Notebook 07: nscl.protect on a user CNN in a plain loop, against the same loop unprotected."""
    rec = record(suite, "07_your_model")
    ft, ns = rec["methods"]["finetune"], rec["methods"]["adam_nscl"]
    assert ft["metrics"]["tasks_done"] == ns["metrics"]["tasks_done"] == rec["params"]["n_tasks"] == 3
    assert ft["acc"][0][0] == ns["acc"][0][0]  # same init and data order; no projection before end_task
    assert ns["metrics"]["bwt"] >= -1.0  # the old tasks keep their accuracy to within a point
    assert ft["metrics"]["bwt"] < ns["metrics"]["bwt"] - 2  # the unprotected loop forgets
    report = rec["extra"]["report"]  # cl.report() after the last task: the heads are excluded
    assert set(report) == set(ns["null_space"]) == {"conv1", "conv2", "fc"}
    for layer, r in report.items():
        assert 0 < r["null"] < r["d"] and 0 <= r["kept_energy"] <= 0.1, layer  # energy rule 0.9
        assert ns["null_space"][layer]["dims"][-1] == r["null"] and len(ns["null_space"][layer]["dims"]) == 3


@pytest.mark.slow
def test_no_notebook_shows_a_null_space_method_at_chance(suite):
    recs = {p.stem: record(suite, p.stem) for p in NOTEBOOKS}
    assert suite_app.chance_failures(recs) == []
    checked = {
        stem: [label for label, m in rec["methods"].items() if m.get("method") in null_space_methods()]
        for stem, rec in recs.items()
    }
    for stem in ("00_quickstart", "01_adam_nscl", "02_pruning", "03_low_rank", "05_compare_methods", "07_your_model"):
        assert checked[stem], f"{stem} records no null-space run"
        for label in checked[stem]:
            assert recs[stem]["methods"][label]["at_chance"] == [], (stem, label)


@pytest.mark.slow
def test_a_starved_notebook_fails_with_the_chance_check(tmp_path):
    """The same quickstart, starved (one tiny epoch, a strict rule): the last cell stops it, naming the run."""
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(
            str(ROOT / "notebooks" / "00_quickstart.ipynb"),
            str(tmp_path / "out.ipynb"),
            parameters={
                "benchmarks": ["split_fmnist"],
                "samples_per_task": 100,
                "epochs": 1,
                "batch_size": 64,
                "hidden": [16, 16],
                "nullspace_rule": "a_min",
                "a": 1.0,
                "threads": 1,
                "output_dir": str(tmp_path),
            },
            kernel_name="python3",
            progress_bar=False,
            cwd=str(ROOT / "notebooks"),
        )
    assert err.value.ename == "ChanceLevelError"
    assert "split_fmnist/adam_nscl on task(s)" in err.value.evalue
    assert nb.load_results(tmp_path)["methods"]["split_fmnist/adam_nscl"]["at_chance"]  # recorded before failing


@pytest.mark.slow
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


@pytest.mark.slow
def test_capacity_notebook_answers_its_question_at_its_defaults(suite):
    """06 at its committed defaults (issue 27): on Permuted the first layer's null space runs out at
    energy 0.99 for every projecting method, at the same task (pruning and rank limitation act on
    units, not on a layer's input), and neither gains 2 ACC points; on Partition pruning gains >= 2."""
    root, declared = suite
    rec = record(suite, "06_capacity")
    out = root / "results" / "notebooks" / "06_capacity"
    strict = ("adam_nscl", "nscl_sgp", "nscl_prune", "nscl_lowrank")
    labels = {f"{b}/{m} energy=0.99" for b in ("permuted_fmnist", "partition_fmnist") for m in strict}
    assert labels <= set(rec["methods"]), sorted(rec["methods"])
    runs = {label: records.load(out / rec["methods"][label]["run_dir"]) for label in labels}

    def first_layer_out(label):
        layers = runs[label]["capacity"]["layers"]
        return (layers.get("backbone.layers.0") or layers["backbone.layers.0.B"])["exhausted_at"]

    def acc(label):
        return runs[label]["metrics"]["acc"]

    permuted = {m: first_layer_out(f"permuted_fmnist/{m} energy=0.99") for m in strict}
    assert None not in permuted.values() and len(set(permuted.values())) == 1, permuted
    assert max(permuted.values()) < int(ast.literal_eval(declared["06_capacity"]["n_tasks"]["default"]))
    for m in ("nscl_prune", "nscl_lowrank"):
        assert acc(f"permuted_fmnist/{m} energy=0.99") < acc("permuted_fmnist/adam_nscl energy=0.99") + 2
    assert acc("partition_fmnist/nscl_prune energy=0.99") >= acc("partition_fmnist/adam_nscl energy=0.99") + 2


@pytest.mark.slow
def test_analysis_notebook_reads_the_suite_runs_without_training(suite):
    root, _ = suite
    rec = record(suite, "04_null_space_analysis")
    assert not (root / "results" / "notebooks" / "04_null_space_analysis" / "runs").exists()  # nothing retrained
    expected = {
        f"{stem}/{m}"
        for stem in ("00_quickstart/split_fmnist", "00_quickstart/permuted_fmnist", "01_adam_nscl")
        for m in ("finetune", "adam_nscl")
    }
    assert expected <= set(rec["methods"])
    summary = {row["run"]: row for row in rec["extra"]["null_space_summary"]}
    assert expected <= set(summary)
    for label in expected:
        assert 0 <= summary[label]["mean null fraction"] <= 1
        assert summary[label]["plasticity"] == pytest.approx(rec["methods"][label]["metrics"]["plasticity"], abs=0.01)


@pytest.mark.slow
def test_misspelled_parameter_fails_naming_the_key(tmp_path):
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(
            str(ROOT / "notebooks" / "00_quickstart.ipynb"),
            str(tmp_path / "out.ipynb"),
            parameters={"smaples_per_task": 100, "output_dir": str(tmp_path)},
            kernel_name="python3",
            progress_bar=False,
            cwd=str(ROOT / "notebooks"),
        )
    assert err.value.ename == "ConfigError"
    assert "'smaples_per_task'" in err.value.evalue and "samples_per_task" in err.value.evalue
    assert not (tmp_path / "runs").exists()  # failed before any training


# ---- nscl.apps.notebook.parameters without a kernel ---------------------------------------------
def test_parameters_validates_the_namespace(tmp_path, monkeypatch):
    import os

    monkeypatch.delenv("NSCL_OUTPUT_ROOT", raising=False)
    ns = {
        "samples_per_task": 50,
        "hidden": [8],
        "methods": ["finetune"],
        "output_dir": "results/x",
        "os": os,
        "Path": Path,
        "f": lambda: 1,
        "In": [],
        "Out": {},
        "_i1": "",
        "get_ipython": print,
    }
    cfg = nb.parameters(ns, extras=["methods", "output_dir"])
    assert cfg["samples_per_task"] == 50 and cfg["hidden"] == [8] and cfg["methods"] == ["finetune"]
    assert cfg["epochs"] == config.PARAMS["epochs"].default  # the rest resolved
    assert Path(cfg["output_dir"]) == ROOT / "results" / "x" or Path(cfg["output_dir"]).is_absolute()
    assert set(cfg.config) == set(config.PARAMS) and cfg.extras == {
        "methods": ["finetune"],
        "output_dir": cfg["output_dir"],
    }
    with pytest.raises(config.ConfigError, match="'hiddden'.*hidden"):
        nb.parameters({"hiddden": [8]}, extras=["methods"])
    with pytest.raises(config.ConfigError, match="hidden"):
        nb.parameters({"hidden": "wide"})  # wrong type
    # papermill --inject-paths: results go beside the output notebook
    cfg = nb.parameters(
        {
            "output_dir": "x",
            "PAPERMILL_OUTPUT_PATH": str(tmp_path / "o" / "nb.ipynb"),
            "PAPERMILL_INPUT_PATH": "in.ipynb",
        },
        extras=["output_dir"],
    )
    assert cfg["output_dir"] == str((tmp_path / "o").resolve())
    # a re-run of the cell in a live kernel ignores variables created by later cells
    ns2 = {"epochs": 1}
    nb.parameters(ns2)
    ns2.update(results={"a": 1}, acc=3.5)
    assert nb.parameters(ns2)["epochs"] == 1


def test_run_labels_and_find_runs_skip_notebook_records(tmp_path):
    for d in ("a/runs/finetune", "b/runs/finetune"):
        records.write_json(tmp_path / d / records.RESULTS, {"schema": records.SCHEMA, "params": {}})
    records.write_json(tmp_path / "a" / records.RESULTS, {"schema": nb.NOTEBOOK_RESULTS_SCHEMA})
    found = nb.find_runs([str(tmp_path / "*")])
    assert [p.parent.parent.name for p in found] == ["a", "b"]
    assert tables.run_labels(found) == ["a/finetune", "b/finetune"]


def test_run_methods_reuses_identical_runs_and_never_deletes_other_ones(tmp_path, tiny_cfg):
    cfg = tiny_cfg(hidden=[16])
    first = nb.run_methods(cfg, ["finetune", "adam_nscl"], tmp_path)
    assert [p.name for p in sorted((tmp_path / "runs").iterdir())] == ["adam_nscl", "finetune"]
    again = nb.run_methods(cfg, ["finetune"], tmp_path)  # read back, not retrained
    assert again["finetune"]["_dir"] and again["finetune"]["acc"] == first["finetune"]["acc"]
    assert first["finetune"]["acc"][0][0] == first["adam_nscl"]["acc"][0][0]  # same stream, same init
    # a re-run with other parameters into the same output_dir is refused as on the command line
    # (the differing parameter and the fix named); the earlier run stays as it was
    run_dir = tmp_path / "runs" / "finetune"
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    with pytest.raises(
        config.ConfigError,
        match=r"complete run with other parameters \(epochs: 1 there, 2 now"
        r".*another output directory.*or delete",
    ):
        nb.run_methods({**cfg, "epochs": 2}, ["finetune"], tmp_path)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["adam_nscl", "finetune"]
    assert nb.run_methods({**cfg, "epochs": 2}, ["finetune"], tmp_path / "other")["finetune"]["params"]["epochs"] == 2
    path = nb.save_results(tmp_path, first, cfg=cfg)
    rec = nb.load_results(path)
    assert rec["methods"]["adam_nscl"]["run_dir"] == "runs/adam_nscl"
    assert rec["methods"]["adam_nscl"]["metrics"] == first["adam_nscl"]["metrics"]


# ---- live kernels: which names parameters() checks ------------------------------------------------
VALIDATE = "from nscl.apps import notebook as nb\ncfg = nb.parameters(globals(), extras=['methods'])"
LATER = "results = nb.run_methods(cfg, cfg['methods'])\nacc = results['finetune']['metrics']['acc']"


def test_assigned_names_recognises_a_cell_of_plain_assignments():
    assert (
        nb.assigned_names(
            "# comment\nepochs = 2\nhidden: list = [64, 64]\nlr = 1e-3 / 2\na, b = 1, None\nname = f'x'\n"
        )
        is None
    )  # an f-string is code
    assert nb.assigned_names(
        "epochs = 2\nhidden: list = [64] * 2\nlr = -1e-3 / 2\na, b = 1, None\nd = {'x': [1.0, 'y']}\nlr2 = lr\n"
    ) == {"epochs", "hidden", "lr", "a", "b", "d", "lr2"}
    for code in (
        "import os\nepochs = 2",
        "epochs = int('2')",
        "x = cfg['epochs']",
        "x = np.pi",
        "print(1)",
        "results = nb.run_methods(cfg)",
        "epochs += 1",
        "",
        "   \n# only a comment",
        "for a in []: pass",
        "x = [i for i in range(3)]",
        "epochs = (",
    ):
        assert nb.assigned_names(code) is None, code


def test_parameters_in_a_live_kernel_checks_the_cell_that_just_ran():
    ns = {"In": ["", "epochs = 2\nmethods = ['finetune']", VALIDATE], "epochs": 2, "methods": ["finetune"]}
    assert nb.parameters(ns, extras=["methods"])["epochs"] == 2
    # later cells ran: their variables are no parameters on the next run
    ns["In"] += [LATER]
    ns.update(results={"finetune": {}}, acc=3.5)
    ns["In"] += ["epochs = 2\nmethods = ['finetune']", VALIDATE]
    assert nb.parameters(ns, extras=["methods"])["epochs"] == 2
    # the user edits epochs = 2 into epoch = 3 and runs all again: caught without a restart
    ns["In"] += [LATER, "epoch = 3\nmethods = ['finetune']", VALIDATE]
    ns["epoch"] = 3
    with pytest.raises(config.ConfigError, match=r"unknown notebook parameter 'epoch'.*Did you mean epochs"):
        nb.parameters(ns, extras=["methods"])
    # fixed: the stale 'epoch' left in the namespace is not a parameter of the cell any more
    ns["In"] += ["epochs = 3\nmethods = ['finetune']", VALIDATE]
    ns["epochs"] = 3
    assert nb.parameters(ns, extras=["methods"])["epochs"] == 3
    # only the validation cell re-run after a later cell: the parameters checked last time
    ns["In"] += [LATER, VALIDATE]
    assert nb.parameters(ns, extras=["methods"])["epochs"] == 3
    # a scratch cell between the parameters cell and the validation: the parameters cell is still found
    ns["In"] += ["epochs = 4", "x = 1\nprint(x)", VALIDATE]
    ns.update(epochs=4, x=1)
    assert nb.parameters(ns, extras=["methods"])["epochs"] == 4


def test_parameters_papermill_injected_cell_and_fresh_kernel():
    own = "epochs = 1\nmethods = ['finetune']  # extra"
    ns = {
        "In": ["", own, "# Parameters\nsmaples_per_task = 100\n", VALIDATE],
        "epochs": 1,
        "methods": ["finetune"],
        "smaples_per_task": 100,
    }
    with pytest.raises(config.ConfigError, match="'smaples_per_task'.*samples_per_task"):
        nb.parameters(ns, extras=["methods"])
    ns = {"In": ["", own, "# Parameters\nepochs = 2\n", VALIDATE], "epochs": 2, "methods": ["finetune"]}
    cfg = nb.parameters(ns, extras=["methods"])
    assert cfg["epochs"] == 2 and cfg["methods"] == ["finetune"]
    # a misspelling in the notebook's own cell is found behind papermill's injected one too
    ns = {"In": ["", "epoch = 1", "# Parameters\nepochs = 2\n", VALIDATE], "epochs": 2, "epoch": 1}
    with pytest.raises(config.ConfigError, match="'epoch'"):
        nb.parameters(ns)


def run_in_kernel(cells: list[str], folder: Path):
    """A notebook of ``cells`` executed in one live kernel in ``folder``, every cell run as JupyterLab's
    Run All does (errors kept as outputs)."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(
        notebook,
        kernel_name="python3",
        allow_errors=True,
        timeout=1800,
        startup_timeout=600,
        resources={"metadata": {"path": str(folder)}},
    ).execute()
    return notebook


@pytest.mark.slow
def test_parameters_catch_a_misspelling_in_a_live_kernel(tmp_path):
    """The real thing: one kernel, cells executed in order as JupyterLab's "Run All" does."""
    cells = [
        "epochs = 2\nhidden = [8]",
        "from nscl.apps import notebook as nb\ncfg = nb.parameters(globals())\nprint('epochs', cfg['epochs'])",
        "results = {'a': 1}\nacc = sum([1, 2])\nfig_count = len(results)",
        "epoch = 3\nhidden = [8]",
        "cfg = nb.parameters(globals())\nprint('epochs', cfg['epochs'])",
        "epochs = 3\nhidden = [8]",
        "cfg = nb.parameters(globals())\nprint('epochs', cfg['epochs'])",
    ]
    notebook = run_in_kernel(cells, tmp_path)
    out = [c.outputs for c in notebook.cells]
    assert out[1][0]["text"] == "epochs 2\n"
    assert out[4][0]["output_type"] == "error" and out[4][0]["ename"] == "ConfigError"
    assert "unknown notebook parameter 'epoch'" in out[4][0]["evalue"]
    assert out[6][0]["text"] == "epochs 3\n"  # fixed; the stale 'epoch' is no parameter any more


# ---- paths of notebook parameters, runs to analyse, tables -----------------------------------------
def test_runs_and_output_dir_resolve_from_the_same_root(tmp_path, monkeypatch):
    monkeypatch.delenv("NSCL_OUTPUT_ROOT", raising=False)
    monkeypatch.chdir(ROOT / "notebooks")  # the kernel's working directory in JupyterLab
    cfg = nb.parameters(
        {"runs": ["results/notebooks", "/abs/x"], "output_dir": "results/y", "sweep_dir": "s"},
        extras=["runs", "output_dir", "sweep_dir"],
    )
    assert cfg["runs"] == [str(ROOT / "results" / "notebooks"), "/abs/x"]
    assert cfg["output_dir"] == str(ROOT / "results" / "y") and cfg["sweep_dir"] == str(ROOT / "s")
    monkeypatch.setenv("NSCL_OUTPUT_ROOT", str(tmp_path))
    cfg = nb.parameters({"runs": "results/notebooks/0[0-3]_*"}, extras=["runs"])
    assert cfg["runs"] == str(tmp_path / "results" / "notebooks" / "0[0-3]_*")


def test_require_runs_fails_naming_the_key_and_the_root(tmp_path, monkeypatch):
    monkeypatch.setenv("NSCL_OUTPUT_ROOT", str(tmp_path))
    import re

    with pytest.raises(
        config.ConfigError,
        match=r"'runs' matches no run directory.*nothing_here.*resolved from " + re.escape(str(tmp_path)),
    ):
        nb.require_runs([str(tmp_path / "nothing_here")])
    records.write_json(
        tmp_path / "00_x" / "runs" / "finetune" / records.RESULTS,
        {"schema": records.SCHEMA, "status": "complete", "params": {}},
    )
    cfg = nb.parameters({"runs": ["0[0-3]_*"]}, extras=["runs"])
    assert nb.require_runs(cfg["runs"]) == [(tmp_path / "00_x" / "runs" / "finetune").resolve()]


def test_metric_tables_show_the_same_decimals_everywhere():
    res = {
        "finetune": {"metrics": {"acc": 78.123, "bwt": -11.5, "plasticity": 80.0, "forgetting": 11.5}},
        "adam_nscl": {"metrics": {"acc": 60.5, "bwt": -4.1234, "plasticity": None, "forgetting": 0.0}},
    }
    table = tables.metrics_table(res)
    text, html = repr(table), table._repr_html_()
    for shown in ("78.12", "-11.50", "80.00", "11.50", "60.50", "-4.12", "0.00", "NaN"):
        assert shown in text and f"<td>{shown}</td>" in html, shown
    assert "-11.5 " not in text and "<td>-11.5</td>" not in html and "<td>0.0</td>" not in html
    assert table.loc["finetune", "BWT"] == -11.5 and table.loc["adam_nscl", "BWT"] == -4.12  # still numbers
    table["free"] = [3, 4]  # notebooks add columns; the formatting stays
    assert "-11.50" in repr(table)
    import pickle

    assert "-11.50" in repr(pickle.loads(pickle.dumps(table)))


def test_regenerate_runs_the_notebooks_an_analysis_reads():
    plan = suite_app.regenerate_plan(ROOT / "notebooks", ["04"])
    stems = [(p.stem[:2], write) for p, write in plan]
    assert stems == [("00", False), ("01", False), ("02", False), ("03", False), ("04", True)]
    assert [(p.stem[:2], w) for p, w in suite_app.regenerate_plan(ROOT / "notebooks", ["00", "05"])] == [
        ("00", True),
        ("05", True),
    ]


def test_committed_notebooks_declare_the_project_kernel():
    import nbformat

    for path in NOTEBOOKS:
        meta = nbformat.read(path, as_version=4).metadata
        assert meta["kernelspec"] == {"name": "nscl", "display_name": "Python (nscl)", "language": "python"}, path


def test_papermill_reads_every_parameter_of_every_notebook():
    """papermill's own parser (``papermill --help-notebook``, the parameter listing) sees every
    assignment of each parameters cell; a line it cannot parse (e.g. ``=`` inside a comment) is
    dropped from the listing with a warning on every run."""
    import ast

    import nbformat
    from papermill.translators import PythonTranslator

    for path in NOTEBOOKS:
        nbk = nbformat.read(path, as_version=4)
        cell = next(c for c in nbk.cells if "parameters" in c.metadata.get("tags", []))
        assigned = [n.targets[0].id for n in ast.parse(cell.source).body if isinstance(n, ast.Assign)]
        assert [p.name for p in PythonTranslator.inspect(cell)] == assigned, path.name


# ---- the executable story: claims checked, errors as one line, runs on the available cores ----------
def test_expect_prints_a_held_claim_and_names_a_broken_one(capsys, monkeypatch):
    monkeypatch.delenv("NSCL_STRICT_CLAIMS", raising=False)
    nb.expect(2.0 > 1.0, "two beats one")
    assert capsys.readouterr().out == "holds: two beats one\n"
    nb.expect(False, "BWT is about zero", bwt=-3.2)  # other parameters: said, not raised
    assert capsys.readouterr().out == "does not hold with these parameters: BWT is about zero (bwt = -3.2)\n"
    monkeypatch.setenv("NSCL_STRICT_CLAIMS", "1")  # make notebooks: a broken story is never committed
    with pytest.raises(nb.ClaimError, match=r"the notebook says 'BWT is about zero'.*bwt = -3\.2"):
        nb.expect(False, "BWT is about zero", bwt=-3.2)
    assert isinstance(nb.ClaimError("x"), AssertionError)


def test_user_errors_render_as_one_error_line_in_a_kernel(tmp_path):
    """IPython shows a parameter error as `error: <message>` (no traceback, no list of every key)."""
    cells = ["epoch = 3\nhidden = [8]", "from nscl.apps import notebook as nb\ncfg = nb.parameters(globals())"]
    notebook = run_in_kernel(cells, tmp_path)
    err = notebook.cells[1].outputs[0]
    assert err["output_type"] == "error" and err["ename"] == "ConfigError"
    assert len(err["traceback"]) == 1 and err["traceback"][0].startswith("error: unknown notebook parameter 'epoch'.")
    assert "Did you mean epochs?" in err["traceback"][0] and "nullspace_rule" not in err["traceback"][0]


@pytest.mark.parametrize(
    "stem, parameters, claim",
    [  # the default rule switched to the paper's: the exact null space is then the run's rule
        ("01_adam_nscl", {"nullspace_rule": "a_min"}, "the run's rule keeps much more of the update"),
        # the projection all but deleted (energy ~ 0 protects nothing): Adam-NSCL forgets like fine-tuning
        ("00_quickstart", {"energy": 1e-6, "benchmarks": ["permuted_fmnist"]}, "Adam-NSCL's columns stay close"),
    ],
)
def test_a_story_the_numbers_no_longer_tell_fails_naming_the_claim(tmp_path, monkeypatch, stem, parameters, claim):
    monkeypatch.setenv("NSCL_STRICT_CLAIMS", "1")  # as under make notebooks (nbval fails on the changed line)
    small = {"samples_per_task": 300, "test_samples_per_task": 200, "epochs": 1, "hidden": [32, 32], "quiet": True}
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(
            str(ROOT / "notebooks" / f"{stem}.ipynb"),
            str(tmp_path / "out.ipynb"),
            parameters={**small, **parameters, "output_dir": str(tmp_path)},
            kernel_name="python3",
            progress_bar=False,
            cwd=str(ROOT / "notebooks"),
        )
    assert err.value.ename == "ClaimError" and claim in err.value.evalue


def test_run_grid_on_several_workers_gives_the_numbers_of_one_after_the_other(tmp_path, tiny_cfg):
    cfg = tiny_cfg(n_tasks=3)
    runs = {m: {"method": m} for m in ("finetune", "adam_nscl", "nscl_lowrank")}
    together = nb.run_grid(cfg, runs, tmp_path / "together", workers=2)
    alone = nb.run_grid({**cfg, "threads": 1}, runs, tmp_path / "alone", workers=1)
    for label in runs:
        assert together[label]["acc"] == alone[label]["acc"], label
        assert together[label]["null_space"] == alone[label]["null_space"], label


def test_one_run_per_method_keeps_the_longest_first_run_of_each_method_and_stream():
    def res(bench, method, tasks):
        return {"params": {"benchmark": bench, "method": method}, "metrics": {"tasks_done": tasks}}

    runs = {
        "00/split/adam_nscl": res("split_fmnist", "adam_nscl", 5),
        "01/adam_nscl": res("split_fmnist", "adam_nscl", 5),  # the same run again: dropped
        "02/adam_nscl": res("split_fmnist", "adam_nscl", 3),
        "00/permuted/adam_nscl": res("permuted_fmnist", "adam_nscl", 10),
        "03/nscl_lowrank a": res("split_fmnist", "nscl_lowrank", 3),
        "03/nscl_lowrank b": res("split_fmnist", "nscl_lowrank", 5),  # more tasks: replaces a
    }
    assert list(tables.one_run_per_method(runs)) == ["00/split/adam_nscl", "00/permuted/adam_nscl", "03/nscl_lowrank b"]


@pytest.mark.parametrize("value", ["0", "false", "No", "off", ""])
def test_strict_claims_set_to_a_false_value_is_off(value, capsys, monkeypatch):
    """Issue 27, minor: ``NSCL_STRICT_CLAIMS=0`` turned strict mode on (any non-empty value did)."""
    monkeypatch.setenv("NSCL_STRICT_CLAIMS", value)
    nb.expect(False, "BWT is about zero", bwt=-3.2)
    assert capsys.readouterr().out.startswith("does not hold with these parameters: BWT is about zero")
    monkeypatch.setenv("NSCL_STRICT_CLAIMS", "yes")
    with pytest.raises(nb.ClaimError):
        nb.expect(False, "BWT is about zero", bwt=-3.2)


def test_make_notebooks_executes_on_the_stored_numeric_path(monkeypatch):
    """`make notebooks` stores outputs on ATen's AVX2 kernels where the CPU has them (the path that
    notebooks/output_tolerance.yaml is measured around); a path the user chose is left alone."""
    import re

    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    suite_app.stored_path()
    assert os.environ["ATEN_CPU_CAPABILITY"] == "default"
    monkeypatch.delenv("ATEN_CPU_CAPABILITY")
    suite_app.stored_path()
    has_avx2 = bool(re.search(r"^flags\s*:.*\bavx2\b", Path("/proc/cpuinfo").read_text(), re.M))
    assert os.environ.get("ATEN_CPU_CAPABILITY") == ("avx2" if has_avx2 else None)

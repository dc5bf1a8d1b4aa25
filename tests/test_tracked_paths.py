"""Documented files exist: every path under params/, notebooks/ or docs/ that the README, docs/ or the
Makefile names is tracked by git (an ignore rule once hid params/sweeps/ from every clone), and the
sweep recipes there expand to valid runs."""

from __future__ import annotations

import fnmatch
import re
import subprocess
from pathlib import Path

import pytest

from nscl.apps import sweep
from nscl.experiment import config

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = ("README.md", "Makefile", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")))
# a path that starts a word (not the tail of results/notebooks/...), with <placeholders> and globs
PATH = re.compile(r"(?<![\w/.$<>-])((?:params|notebooks|docs)/[\w.*<>/-]*)")


def tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        pytest.skip("not a git checkout (an unpacked source archive): nothing is tracked")
    return out.stdout.split()


def named_paths() -> dict[str, str]:
    """``{pattern: document}``: paths as glob patterns (``<name>`` -> ``*``, a folder -> ``folder/*``)."""
    found = {}
    for doc in DOCUMENTS:
        for m in PATH.finditer((ROOT / doc).read_text()):
            p = m.group(1).rstrip(".")
            p = re.sub(r"<[^>]*>", "*", p).replace("NN_", "[0-9][0-9]_")  # placeholders: <name>, NN
            found[p + "*" if p.endswith("/") else p] = doc
    return found


def test_every_path_the_readme_and_makefile_name_is_tracked():
    files = tracked()
    named = named_paths()
    # what the parse must see (guards the regex itself)
    assert {
        "params/sweeps/compare_fmnist.yaml",
        "params/sweeps/gpu_cifar100_10.yaml",
        "params/sweeps/gpu_*.yaml",
        "notebooks/05_compare_methods.ipynb",
        "params/base.yaml",
        "params/suite_*.yaml",
        "notebooks/[0-9][0-9]_*.ipynb",
    } <= set(named)
    missing = sorted(f"{p} (named in {doc})" for p, doc in named.items() if not fnmatch.filter(files, p))
    assert not missing, "named but not tracked by git: " + ", ".join(missing)


def test_sweeps_folder_is_not_ignored():
    out = subprocess.run(["git", "check-ignore", "-q", "params/sweeps/compare_fmnist.yaml"], cwd=ROOT)
    assert out.returncode == 1  # 1: not ignored (0 would mean an ignore rule matches)
    assert subprocess.run(["git", "check-ignore", "-q", "sweeps/x.yaml"], cwd=ROOT).returncode == 0


def test_sweep_recipes_expand_to_valid_runs():
    recipes = {p.stem: p for p in (ROOT / "params" / "sweeps").glob("*.yaml")}
    assert {"compare_fmnist", "gpu_cifar100_10", "gpu_cifar100_20", "gpu_tinyimagenet_25"} <= set(recipes)
    for name, path in recipes.items():
        sw = sweep.load(path)
        specs = sweep.expand(sw)  # every run validated by the config
        assert sw["name"] == name and specs
    compare = sweep.expand(sweep.load(recipes["compare_fmnist"]))
    assert len(compare) == 8 * 2 * 3
    by_bench = {
        b: [s["cfg"] for s in compare if s["cfg"]["benchmark"] == b] for b in ("split_fmnist", "permuted_fmnist")
    }
    suite = config.read_mapping(ROOT / "params" / "suite.yaml")  # make compare is the size of make run
    for cfgs in by_bench.values():
        assert {(c["samples_per_task"], c["epochs"], c["device"], c["threads"]) for c in cfgs} == {
            (suite["samples_per_task"], suite["epochs"], "cpu", 1)
        }
    assert sweep.load(recipes["compare_fmnist"])["executor"]["kind"] == "local"
    for name in ("gpu_cifar100_10", "gpu_cifar100_20", "gpu_tinyimagenet_25"):
        sw = sweep.load(recipes[name])
        assert sw["executor"]["kind"] == "slurm" and sw["executor"]["slurm"]["gpus_per_node"] == 1
        cfgs = [s["cfg"] for s in sweep.expand(sw)]
        assert {c["method"] for c in cfgs} == {"finetune", "adam_nscl"} and {c["seed"] for c in cfgs} == {0, 1, 2}
        assert all(c["model"] == "resnet18" and c["epochs"] == 80 and c["device"] == "cuda" for c in cfgs)

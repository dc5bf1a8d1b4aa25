"""environment.yml (conda users) and pyproject.toml (the one dependency list) agree, and both agree
with the torch pins of the Makefile."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def load():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return env, project


def makefile_pins() -> dict[str, str]:
    """``torch==X torchvision==Y`` as installed by ``make venv``."""
    text = (ROOT / "Makefile").read_text()
    return {canonicalize_name(n): v for n, v in re.findall(r"\b(torch|torchvision)==([\w.+]+)", text)}


def test_conda_forge_python_and_pip_only():
    env, project = load()
    assert "conda-forge" in env["channels"] and "defaults" not in env["channels"]
    deps = env["dependencies"]
    conda = [d for d in deps if isinstance(d, str)]
    names = {re.split(r"[=<>! ]", d, maxsplit=1)[0] for d in conda}
    assert names == {"python", "pip"}, f"conda packages beyond python/pip duplicate pyproject: {names}"
    python = next(d for d in conda if d.startswith("python"))
    version = python.split("=", 1)[1].strip("=") if "=" in python else None
    assert version, "environment.yml should pin a python version"
    assert SpecifierSet(project["requires-python"]).contains(version + ".0" if version.count(".") == 1 else version)


def declared_requirements(project) -> dict[str, Requirement]:
    """pyproject's dependencies and dev extras by canonical name."""
    reqs = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    return {canonicalize_name(Requirement(r).name): Requirement(r) for r in reqs}


def pip_lines(env) -> list[str]:
    return next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)


def test_pip_section_ends_with_editable_dev_install_and_pins_agree():
    env, project = load()
    pip = pip_lines(env)
    assert pip[-1].replace(" ", "") == "-e.[dev]"
    declared = declared_requirements(project)
    assert "dev" in project["optional-dependencies"]
    pins = makefile_pins()
    assert set(pins) == {"torch", "torchvision"}
    for line in pip[:-1]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        # every other pip line is a dependency pyproject declares, with a version pyproject allows
        assert name in declared, f"environment.yml installs {name}, which pyproject.toml does not declare"
        if not any(spec.operator == "==" for spec in req.specifier):
            assert req.specifier == declared[name].specifier, (
                f"{name}: environment.yml {req.specifier}, pyproject.toml {declared[name].specifier}"
            )
        for spec in req.specifier:
            if spec.operator == "==":
                assert declared[name].specifier.contains(spec.version), (name, spec.version)
                if name in pins:
                    assert spec.version == pins[name], f"{name}: environment.yml {spec.version}, Makefile {pins[name]}"


def test_pyproject_declares_what_the_package_imports():
    _, project = load()
    declared = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    for needed in ("torch", "torchvision", "numpy", "pyyaml", "tqdm", "pandas", "scikit-learn"):
        assert needed in declared, needed
    dev = {canonicalize_name(Requirement(r).name) for r in project["optional-dependencies"]["dev"]}
    assert "pytest" in dev


def test_lab_packages_are_declared_in_both_files():
    """JupyterLab's widget progress bars (ipywidgets) and the browser test's driver (playwright, dev)
    are in pyproject.toml and listed in environment.yml with the same version range."""
    env, project = load()
    runtime = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    dev = {canonicalize_name(Requirement(r).name) for r in project["optional-dependencies"]["dev"]}
    assert "ipywidgets" in runtime and "playwright" in dev
    listed = {canonicalize_name(Requirement(line).name): Requirement(line) for line in pip_lines(env)[:-1]}
    declared = declared_requirements(project)
    for name in ("ipywidgets", "playwright"):
        assert name in listed, f"environment.yml does not list {name}"
        assert listed[name].specifier == declared[name].specifier, name


def test_gpu_check_with_a_python_without_torch_says_torch_is_missing(tmp_path):
    """Issue 27, minor: ``make gpu-check PY=python3`` on a Python without torch said "NO GPU PRESENT"."""
    import os
    import subprocess
    import sys

    no_torch = tmp_path / "python-without-torch"
    no_torch.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')  # -S: no site-packages, so no torch
    no_torch.chmod(0o755)
    env = {**os.environ, "PY": str(no_torch), "GPU_CHECK_OUT": str(tmp_path / "out")}
    r = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "NO GPU PRESENT" not in r.stderr
    assert r.stderr.startswith(f"gpu-check: {no_torch} cannot import torch")
    assert not (tmp_path / "out").exists()  # nothing was run

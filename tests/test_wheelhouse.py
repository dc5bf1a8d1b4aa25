"""The wheelhouse list (scripts/gpu_wheelhouse.txt) against pyproject.toml and the GPU node's packages.

A dependency added to pyproject.toml that the node lacks and the wheelhouse does not carry would stop
``make gpu-check`` on a node without internet: every dependency must be on the node, in the wheelhouse,
or declared not needed by the check. A wheel of something the node has would shadow the node's own build
on PYTHONPATH (torch above all), and a wheel nothing needs is dead weight in the 64 MiB the device takes.
"""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("wheelhouse", ROOT / "scripts" / "wheelhouse.py")
wheelhouse = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wheelhouse)


def pyproject_names() -> list[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [wheelhouse.requirement_name(d) for d in deps]


def lock_lines() -> dict[str, str]:
    """{name: the comment after its pin}."""
    out = {}
    for line in wheelhouse.LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            pin, _, why = line.partition("#")
            out[wheelhouse.canonical(pin.split("==")[0].strip())] = why.strip()
    return out


def test_every_dependency_is_on_the_node_in_the_wheelhouse_or_not_needed():
    assert wheelhouse.pyproject_dependencies() == pyproject_names()  # the script reads pyproject.toml right
    node = wheelhouse.node_packages()
    _, pins = wheelhouse.read_lock()
    for name in pyproject_names() + list(wheelhouse.CHECK_TOOLS):
        places = [name in node, name in pins, name in wheelhouse.NOT_FOR_CHECK]
        assert sum(places) == 1, (
            f"{name}: on the node {places[0]}, in the wheelhouse {places[1]}, not needed {places[2]}; "
            "update scripts/gpu_node_packages.txt or run `python scripts/wheelhouse.py lock`"
        )
    assert {"torch", "torchvision", "numpy", "pandas", "scikit-learn", "pytest"} <= set(node)
    assert {"papermill", "ipykernel"} <= set(pins)


def test_wheelhouse_holds_no_node_package_and_nothing_unneeded():
    node = wheelhouse.node_packages()
    python_version, pins = wheelhouse.read_lock()
    assert re.fullmatch(r"3\.\d+", python_version)
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", v) for v in pins.values()), pins  # every wheel pinned
    assert not set(pins) & set(node), set(pins) & set(node)
    roots = set(wheelhouse.roots())
    for name, why in lock_lines().items():
        if name in roots:
            assert why == "pyproject.toml", (name, why)
        else:
            parents = why.removeprefix("via ").split(", ")
            assert why.startswith("via ") and set(parents) <= set(pins), (name, why)
    assert set(lock_lines()) == set(pins)

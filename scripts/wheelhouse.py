"""The wheelhouse: the wheels a GPU node without internet lacks for ``make gpu-check``.

    python scripts/wheelhouse.py lock      [--python-version 3.12]  # resolve: rewrite scripts/gpu_wheelhouse.txt
    python scripts/wheelhouse.py download  [--dest wheelhouse] [--fmnist DIR]         # make wheelhouse
    python scripts/wheelhouse.py node      [--python-version 3.12]  # the node's packages the check uses

``lock`` resolves (pip, needs the package index) the dependencies of pyproject.toml that the check
needs -- all but :data:`NOT_FOR_CHECK` -- with everything they need in turn, for CPython
``--python-version`` on manylinux x86-64, and keeps those the node does not have
(scripts/gpu_node_packages.txt). ``download`` (``make wheelhouse``) fetches exactly the pinned wheels of
scripts/gpu_wheelhouse.txt into ``--dest`` and checks, from each wheel's own metadata, that every
requirement is in the wheelhouse or on the node; ``--fmnist DIR`` also copies the Fashion-MNIST IDX
files (about 30 MB) into ``DEST/fashion-mnist``. On the node, scripts/gpu_check.sh installs the folder with
``pip install --no-index --no-deps --target`` and puts that on PYTHONPATH.

Standard library and pip only: it runs on any login node with a Python and pip.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODE_LIST = ROOT / "scripts" / "gpu_node_packages.txt"
LOCK = ROOT / "scripts" / "gpu_wheelhouse.txt"
PYPROJECT = ROOT / "pyproject.toml"

#: Dependencies of pyproject.toml that make gpu-check never imports, so the wheelhouse leaves them out.
NOT_FOR_CHECK = {
    "jupyterlab": "the interactive lab (make lab), not the check",
    "ipywidgets": "widget progress bars; under papermill tqdm.auto falls back to text bars",
    "submitit": "sweeps on SLURM (nscl sweep), not the check",
}
#: torch and torchvision: a node's own CUDA build, never a wheel of ours.
TORCH = ("torch", "torchvision")
#: What the check runs that is not a runtime dependency: pytest (a dev extra).
CHECK_TOOLS = ("pytest",)
#: Linux x86-64 wheel tags up to glibc 2.28 (pip matches each tag exactly): what the node (glibc 2.39) and
#: clusters as old as RHEL 8 accept.
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(28, 4, -1)] + [
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
]


def canonical(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(spec: str) -> str:
    return canonical(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec).group(1))


def pyproject_dependencies() -> list[str]:
    """The names in ``[project] dependencies`` (read without tomllib, which Python 3.10 lacks)."""
    block = re.search(r"^dependencies\s*=\s*\[(.*?)^\]", PYPROJECT.read_text(), re.S | re.M).group(1)
    return [requirement_name(s) for s in re.findall(r'"([^"]+)"', block)]


def node_packages() -> dict[str, str | None]:
    """scripts/gpu_node_packages.txt as {canonical name: pinned version or None}."""
    out = {}
    for line in NODE_LIST.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[canonical(name)] = version or None
    return out


def roots() -> list[str]:
    """What the wheelhouse must provide directly: the check's dependencies that the node lacks."""
    node = node_packages()
    return [n for n in pyproject_dependencies() + list(CHECK_TOOLS) if n not in node and n not in NOT_FOR_CHECK]


def read_lock() -> tuple[str, dict[str, str]]:
    """scripts/gpu_wheelhouse.txt as (its Python major.minor, {canonical name: version})."""
    text = LOCK.read_text()
    python_version = re.search(r"^# python-version: (\S+)$", text, re.M).group(1)
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonical(name)] = version
    return python_version, pins


def _marker_tools():
    try:
        from packaging.requirements import Requirement
    except ImportError:  # a bare Python: pip carries its own copy
        from pip._vendor.packaging.requirements import Requirement
    return Requirement


def requirement_names(requires_dist: list[str], python_version: str) -> set[str]:
    """Names a distribution needs on Linux x86-64 CPython ``python_version``, no extras."""
    Requirement = _marker_tools()
    env = {
        "python_version": python_version,
        "python_full_version": python_version + ".0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "",
    }
    names = set()
    for spec in requires_dist:
        req = Requirement(spec)
        if req.marker is None or req.marker.evaluate(env):
            names.add(canonical(req.name))
    return names


def _pip_target_args(python_version: str) -> list[str]:
    args = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp"]
    for p in PLATFORMS:
        args += ["--platform", p]
    return args


def resolve(requirements: list[str], python_version: str) -> dict[str, dict]:
    """pip's resolution of ``requirements`` for the node's platform (metadata only): {name: metadata}."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed"]
        cmd += ["--report", str(report), "--target", str(Path(tmp) / "t"), *_pip_target_args(python_version)]
        subprocess.run(cmd + requirements, check=True)
        items = json.loads(report.read_text())["install"]
    return {canonical(i["metadata"]["name"]): i["metadata"] for i in items}


def node_subset(python_version: str) -> None:
    """Print the node's packages that the check uses beside torch, pinned where the node's version is
    known: what scripts/simulate_gpu_node.sh installs to stand in for the node (torch it installs itself)."""
    node = node_packages()
    wanted = [n for n in pyproject_dependencies() + list(CHECK_TOOLS) if n not in NOT_FOR_CHECK and n not in TORCH]
    pinned = [f"{n}=={node[n]}" if node.get(n) else n for n in wanted if n in node] + [
        n for n in wanted if n not in node
    ]
    for name in sorted(set(resolve(pinned, python_version)) & set(node)):
        print(f"{name}=={node[name]}" if node[name] else name)


def lock(python_version: str) -> None:
    """Resolve the roots with pip (metadata only) and write the pinned list minus the node's packages."""
    wanted = roots()
    node = node_packages()
    meta = resolve(wanted, python_version)
    # reachable from the roots through packages the node lacks (a node package brings its own needs)
    keep, todo = {}, list(wanted)
    while todo:
        name = todo.pop()
        if name not in keep and name not in node:
            keep[name] = meta[name]
            todo += requirement_names(meta[name].get("requires_dist", []), python_version)
    via: dict[str, list[str]] = {n: [] for n in keep}
    for parent, m in keep.items():
        for child in requirement_names(m.get("requires_dist", []), python_version) & set(keep):
            via[child].append(parent)
    lines = [
        "# Generated by `python scripts/wheelhouse.py lock` -- the wheels make wheelhouse downloads: what",
        "# make gpu-check needs (pyproject.toml's dependencies but "
        + ", ".join(NOT_FOR_CHECK)
        + "; and pytest) and, in turn,",
        "# everything they need, minus scripts/gpu_node_packages.txt; for manylinux x86-64 and",
        f"# python-version: {python_version}",
    ]
    for name in sorted(keep):
        why = "pyproject.toml" if name in wanted else "via " + ", ".join(sorted(via[name]))
        lines.append(f"{name}=={keep[name]['version']}  # {why}")
    LOCK.write_text("\n".join(lines) + "\n")
    print(f"wrote {LOCK.relative_to(ROOT)}: {len(keep)} wheels ({len(meta) - len(keep)} more are on the node)")


def wheel_metadata(path: Path) -> tuple[str, list[str]]:
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(name).decode()
    fields = text.split("\n\n", 1)[0].splitlines()
    project = next(line.split(":", 1)[1].strip() for line in fields if line.startswith("Name:"))
    return canonical(project), [line.split(":", 1)[1].strip() for line in fields if line.startswith("Requires-Dist:")]


def download(dest: Path, fmnist: Path | None) -> int:
    """Fetch the locked wheels (no dependency resolution) for the lock's Python and check the set is closed."""
    python_version, pins = read_lock()
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):  # exactly the lock: one version of each, nothing left from before
        old.unlink()
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(dest)]
    cmd += _pip_target_args(python_version) + [f"{n}=={v}" for n, v in sorted(pins.items())]
    subprocess.run(cmd, check=True)
    node = node_packages()
    have, missing = set(), []
    wheels = sorted(dest.glob("*.whl"))
    for w in wheels:
        name, requires = wheel_metadata(w)
        have.add(name)
        missing += [
            f"{name} needs {r}" for r in sorted(requirement_names(requires, python_version) - set(pins) - set(node))
        ]
    if have != set(pins) or missing:
        print(
            f"wheelhouse: not closed: {'; '.join(missing) or 'wheels differ from the lock'}. "
            "Run `python scripts/wheelhouse.py lock`, then make wheelhouse again.",
            file=sys.stderr,
        )
        return 1
    if fmnist is not None:
        files = sorted(fmnist.glob("*-ubyte*"))
        if not files:
            print(f"wheelhouse: no Fashion-MNIST IDX files in {fmnist}", file=sys.stderr)
            return 1
        (dest / "fashion-mnist").mkdir(exist_ok=True)
        for f in files:
            shutil.copy2(f, dest / "fashion-mnist" / f.name)
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    print(f"wheelhouse: {len(wheels)} wheels{' + Fashion-MNIST' if fmnist else ''} in {dest}, {size / 2**20:.1f} MiB")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["lock", "download", "node"])
    ap.add_argument("--python-version", default="3.12", help="lock: the node's Python, major.minor (default 3.12)")
    ap.add_argument("--dest", type=Path, default=ROOT / "wheelhouse")
    ap.add_argument("--fmnist", type=Path, default=None, help="a folder with the Fashion-MNIST IDX files to pack")
    args = ap.parse_args(argv)
    if args.action == "lock":
        lock(args.python_version)
        return 0
    if args.action == "node":
        node_subset(args.python_version)
        return 0
    return download(args.dest, args.fmnist)


if __name__ == "__main__":
    raise SystemExit(main())

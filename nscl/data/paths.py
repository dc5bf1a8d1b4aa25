"""Where dataset files are looked for.

An explicit root is the only place searched: ``data_root`` if given, else the roots in
``$NSCL_DATA_ROOT`` (``os.pathsep`` separated). A root that lacks the files is an error (it is a
typo or a half-copied folder, and a silent fall-back would train on other data than intended).
Only when neither is set are :data:`SYSTEM_DATA_ROOTS` and then the nscl cache folder searched.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: System-wide data roots, searched only when neither ``data_root`` nor ``$NSCL_DATA_ROOT`` is set
#: (the Debian package ``dataset-fashion-mnist`` installs ``/usr/share/datasets/fashion-mnist``).
#: A plain module-level list so tests can monkeypatch it (``nscl.data.paths.SYSTEM_DATA_ROOTS``).
SYSTEM_DATA_ROOTS: list[str] = ["/usr/share/datasets"]


def cache_dir() -> Path:
    """nscl cache folder: ``$NSCL_CACHE_DIR``, else ``$XDG_CACHE_HOME/nscl``, else ``~/.cache/nscl``."""
    env = os.environ.get("NSCL_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "nscl"
    return Path.home() / ".cache" / "nscl"


@dataclass(frozen=True)
class Roots:
    """The roots to search, and who chose them (``origin`` names it in error messages)."""

    paths: tuple[Path, ...]
    origin: str  # "data_root", "NSCL_DATA_ROOT" or "" (the default search)

    @property
    def explicit(self) -> bool:
        return bool(self.origin)


def search_roots(data_root: str | os.PathLike | None) -> Roots:
    """``data_root`` alone if given; else the ``$NSCL_DATA_ROOT`` roots; else the system roots
    followed by the cache folder."""
    if data_root is not None:
        return Roots((Path(data_root).expanduser(),), "data_root")
    env = [Path(p).expanduser() for p in os.environ.get("NSCL_DATA_ROOT", "").split(os.pathsep) if p]
    if env:
        return Roots(tuple(_unique(env)), "NSCL_DATA_ROOT")
    return Roots(tuple(_unique([Path(p) for p in SYSTEM_DATA_ROOTS] + [cache_dir()])), "")


def _unique(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p not in out:
            out.append(p)
    return out


def file_stamp(paths: Sequence[Path]) -> tuple:
    """(path, mtime_ns, size) for each file: a cache key that changes when the files change."""
    out = []
    for p in paths:
        st = p.stat()
        out.append((str(p), st.st_mtime_ns, st.st_size))
    return tuple(out)

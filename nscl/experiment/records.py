"""Run records: one self-describing ``results.json`` (+ ``spectra.npz``) per run, written atomically.

A run directory holds::

    params.yaml     fully resolved parameters
    results.json    status, params, stream info, accuracy matrix, metrics, null-space records,
                    method diagnostics, timings, environment (versions, git commit, device, seed)
    spectra.npz     eigenvalues of every tracked layer's covariance after every task
    checkpoint.pt   state after the last finished task (resume); removed when the run completes
    error.txt       the traceback of a failed run (``status: failed``); removed when it is rerun
    .lock           held (``flock``) by the process writing the run; removed when it is done

:func:`load` reads a run back, :func:`find_runs` finds run directories, :func:`differing` is the
one "same run?" rule and :func:`check_same_run` / :func:`reusable` apply it to a run directory;
:func:`lock` keeps a second writer out. :mod:`nscl.analysis.tables` turns many runs into pandas
tables.

Checkpoints hold tensors and plain containers only and are read with ``torch.load(weights_only=True)``:
nothing in a run directory is ever executed, whoever put it there.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import platform
import socket
import stat
import subprocess
import time
import warnings
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
import yaml

from ..util import UnreadableFile, atomic_write, jsonable, open_regular, read_text
from .config import ConfigError

SCHEMA = "nscl.results/1"
RESULTS, PARAMS, SPECTRA, CHECKPOINT = "results.json", "params.yaml", "spectra.npz", "checkpoint.pt"
ERROR, LOCK = "error.txt", ".lock"


class RunDirError(ConfigError):
    """A run directory cannot be used as asked: another process holds it, it holds a run with other
    parameters, or its checkpoint is not plain data. The message names the folder and the fix."""


def write_json(path, obj) -> None:
    atomic_write(path, json.dumps(jsonable(obj), indent=1, allow_nan=False) + "\n")


def write_params(run_dir, cfg: dict) -> None:
    atomic_write(Path(run_dir) / PARAMS, yaml.safe_dump(cfg, sort_keys=True))


def write_spectra(run_dir, spectra: dict) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in spectra.items()})
    atomic_write(Path(run_dir) / SPECTRA, buf.getvalue())


_PLAIN = (str, int, float, bool, type(None), torch.Tensor)


def _check_plain(obj, where: str = "state") -> None:
    """Raise TypeError naming the first value that is not a tensor, a number, a string, None or a
    dict / list / tuple of those: only such a checkpoint loads with ``weights_only=True``."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"checkpoint key {where}[{k!r}] is a {type(k).__name__}; use str or int keys")
            _check_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
    elif not isinstance(obj, _PLAIN):
        raise TypeError(
            f"checkpoint value {where} is a {type(obj).__module__}.{type(obj).__name__}; a state_dict "
            f"must hold tensors and plain containers only (convert numpy arrays with torch.from_numpy)"
        )


def save_checkpoint(run_dir, state: dict) -> None:
    """Write ``checkpoint.pt`` atomically; ``state`` must be plain data (see :func:`_check_plain`)."""
    _check_plain(state)
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(Path(run_dir) / CHECKPOINT, buf.getvalue())


def load_checkpoint(run_dir) -> dict | None:
    """Read ``checkpoint.pt`` with ``weights_only=True``: tensors and plain containers, never code.

    A file that holds anything else (a pickle that would import or call something) is refused
    before any of it runs, with :class:`RunDirError` naming the file.
    """
    path = Path(run_dir) / CHECKPOINT
    if not os.path.lexists(path):
        return None
    try:
        with open_regular(path, limit=None) as f:
            state = torch.load(f, map_location="cpu", weights_only=True)
    except UnreadableFile as e:
        raise RunDirError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - whatever torch makes of a foreign file: one line naming it
        import re

        found = re.search(r"GLOBAL (\S+)", str(e))
        if found is None:
            detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise RunDirError(
                f"{path} is not a readable nscl checkpoint (empty, truncated or another kind of file: "
                f"{type(e).__name__}: {detail}); delete it to start the run from its first task, or use another "
                f"output directory"
            ) from None
        raise RunDirError(
            f"{path} is not a plain nscl checkpoint (tensors and containers only) and was not loaded: reading "
            f"it would run code (it names {found.group(1)}). nscl never writes such a file; delete it if you do not "
            f"know where it came from, or use another output directory"
        ) from None
    if not isinstance(state, dict) or not {"task", "params", "model", "method", "tracker", "acc"} <= set(state):
        raise RunDirError(
            f"{path} is not an nscl checkpoint (not a mapping of task, params, model, method, tracker, acc); "
            f"delete it to start the run from its first task, or use another output directory"
        )
    return state


def git_info() -> dict:
    """Commit of the nscl source tree (and whether it had uncommitted changes), if it is a checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"commit": commit, "dirty": dirty if commit else None}


def env_info(device: torch.device | str, seed: int) -> dict:
    import torchvision

    from ..util import __version__

    device = torch.device(device)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {
        "nscl": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "device": str(device),
        "device_name": dev_name,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "seed": seed,
        "git": git_info(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }


class NotARunRecord(ValueError):
    """A ``results.json`` that is not a run record: not JSON (truncated), not a mapping (``[]``,
    ``null``), or of another schema (``schema``). The message names the file."""

    def __init__(self, message: str, schema=None):
        super().__init__(message)
        self.schema = schema


def load(run_dir: str | os.PathLike) -> dict:
    """Read ``results.json`` of a run (a directory, or the file itself); :class:`NotARunRecord`
    when the file is not a run record."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / RESULTS
    if not os.path.lexists(path):
        raise FileNotFoundError(f"no {RESULTS} at {path}: is this a run directory (python -m nscl run -o DIR)?")
    try:  # a regular file of bounded size only: a FIFO or /dev/zero planted there is refused (OSError)
        res = json.loads(read_text(path))
    except (ValueError, UnicodeDecodeError) as e:  # truncated or not text
        raise NotARunRecord(f"{path} is not a run record (not valid JSON: {e})") from None
    if not isinstance(res, dict) or res.get("schema") != SCHEMA:
        what = f"schema {res.get('schema')!r}" if isinstance(res, dict) else f"a JSON {type(res).__name__}"
        raise NotARunRecord(
            f"{path} is not a run record ({what}, not {SCHEMA!r})", res.get("schema") if isinstance(res, dict) else None
        )
    res["_dir"] = str(path.parent)
    return res


def skipped(path, error: Exception) -> None:
    """The one warning every reader of run folders gives for a ``results.json`` it leaves out."""
    warnings.warn(f"skipped {path}: {error}", stacklevel=3)


def load_spectra(run_dir) -> dict[str, np.ndarray]:
    path = Path(run_dir) / SPECTRA
    if not os.path.lexists(path):
        return {}
    try:
        f = open_regular(path, limit=None)
    except UnreadableFile as e:  # a FIFO / device planted there: no spectra, said once
        skipped(path, e)
        return {}
    with f, np.load(f) as z:
        return {k: z[k] for k in z.files}


def _scan(paths) -> dict[Path, dict]:
    """``{resolved run directory: its record}`` at or below ``paths`` (see :func:`find_runs`)."""
    import glob

    if paths is None:
        return {}
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    expanded: list[str] = []
    for p in map(str, paths):
        expanded.extend(sorted(glob.glob(os.path.expanduser(p), recursive=True)) if glob.has_magic(p) else [p])
    candidates = []
    for p in map(Path, expanded):
        if p.is_dir():  # every entry named results.json: a link loop or a FIFO too (warned below, not dropped)
            found = [Path(root) for root, dirs, files in os.walk(p) if RESULTS in files or RESULTS in dirs]
            candidates.extend(sorted(found))
        elif p.name == RESULTS and os.path.lexists(p):
            candidates.append(p.parent)
    out: dict[Path, dict] = {}
    bad: set[Path] = set()
    for d in map(Path.resolve, candidates):
        if d in out or d in bad:
            continue
        try:
            out[d] = load(d)
        except (OSError, NotARunRecord) as e:  # never a crash, never a silent drop
            if not str(getattr(e, "schema", None)).startswith("nscl."):  # nscl's other records (notebooks')
                skipped(d / RESULTS, e)
            bad.add(d)
    return out


def find_runs(paths: Iterable[str | os.PathLike] | str | os.PathLike | None) -> list[Path]:
    """Run directories (``results.json`` of schema ``nscl.results``) at or below ``paths``.

    ``paths`` are folders, ``results.json`` files or glob patterns. Every ``results.json`` below a
    folder is looked at (a notebook-level record does not hide its ``runs/``) and only run records
    are kept; nscl's other records (a notebook's) are passed over and any other ``results.json``
    (``[]``, ``null``, truncated, a foreign schema) is left out with one warning naming it. Each directory once, resolved, in sorted order per path.
    """
    return list(_scan(paths))


def load_runs(paths: Iterable[str | os.PathLike] | str | os.PathLike | None) -> list[dict]:
    """The run records of :func:`find_runs` (each read once, the same warnings), in its order."""
    return list(_scan(paths).values())


#: parameters that never change what a run computes (a run made with other values is the same run)
RUN_INVARIANT = ("quiet", "device", "threads", "checkpoint", "nan_check_every")
#: left out when grouping runs over seeds: the invariant ones, the seed, and where the data came from
NON_SEMANTIC = ("seed", *RUN_INVARIANT, "data_root", "download")


def differing(saved: dict, cfg: dict) -> set[str]:
    """The one "same run?" rule: the parameters in which a saved run differs from ``cfg``.

    Keys the saved run predates count at their defaults; :data:`RUN_INVARIANT` parameters never
    make two runs different. The CLI, notebooks, sweeps and resume all ask this function (through
    :func:`check_same_run` and :func:`reusable`).
    """
    from .config import defaults

    saved = {**defaults(), **saved}
    return {k for k in cfg if k not in RUN_INVARIANT and saved.get(k) != cfg[k]}


def _saved(run_dir: Path) -> tuple[dict | None, dict | None, Path | None]:
    """``(results or None, saved params or None, the file they came from)`` of the run a folder holds."""
    if os.path.lexists(run_dir / RESULTS):
        try:
            res = load(run_dir)
        except OSError:
            res = None  # unreadable: params.yaml (written first) still says which run this is
        except NotARunRecord as e:
            if not _readable_json(run_dir / RESULTS):
                res = None  # truncated (killed mid-write by something else): params.yaml says which run
            else:
                raise RunDirError(f"{e}; use another output directory for this run") from None
        if res is not None:
            return res, res.get("params") or {}, run_dir / RESULTS
    if os.path.lexists(run_dir / PARAMS):
        try:
            params = yaml.safe_load(read_text(run_dir / PARAMS)) or {}
        except (OSError, ValueError, yaml.YAMLError):
            params = None
        if isinstance(params, dict):
            return None, params, run_dir / PARAMS
    return None, None, None


def _readable_json(path: Path) -> bool:
    try:
        json.loads(read_text(path))
    except (OSError, ValueError):
        return False
    return True


def _describe(saved: dict, cfg: dict, keys: set[str]) -> str:
    from .config import defaults

    saved = {**defaults(), **saved}
    return ", ".join(f"{k}: {saved.get(k)!r} there, {cfg[k]!r} now" for k in sorted(keys))


def check_same_run(run_dir: str | os.PathLike, cfg: dict) -> dict | None:
    """Apply the "same run?" rule (:func:`differing`) to a run directory before writing into it.

    Returns the results of a complete run with the same parameters (reuse them: nothing is
    retrained); ``None`` when the folder holds no run, or an unfinished / failed one with the same
    parameters (resume or restart it); raises :class:`RunDirError` naming the differing parameters
    when it holds a run (of any status) with other parameters. Nothing is ever deleted.
    """
    run_dir = Path(run_dir)
    res, saved, source = _saved(run_dir)
    if saved is None:
        return None
    diff = differing(saved, cfg)
    if diff:
        status = res.get("status") if res is not None else None
        what = {
            "complete": "a complete run",
            "failed": "a failed run",
            "running": "an unfinished run",
            "stopped": "a stopped run",
        }.get(status, "a started run")
        raise RunDirError(
            f"{run_dir} holds {what} with other parameters ({_describe(saved, cfg, diff)}; from {source.name}); "
            f"use another output directory (-o, or output_dir in a notebook), or delete {run_dir} to retrain"
        )
    return res if res is not None and res.get("status") == "complete" else None


def reusable(run_dir: str | os.PathLike, cfg: dict) -> dict | None:
    """The results of a complete run with the same parameters in ``run_dir``, else None (never raises)."""
    try:
        return check_same_run(run_dir, cfg)
    except RunDirError:
        return None


# ---- one writer per run directory ----------------------------------------------------------------
_HELD: dict[str, tuple[int, int, int]] = {}  # lock path -> (pid, fd, depth) of locks this process holds


def _holder(path: Path) -> str:
    try:  # never follows a link, never blocks on a FIFO, reads at most 4 kB
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            info = json.loads(os.read(fd, 4096) or b"{}")
        finally:
            os.close(fd)
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or not info:
        return "another process"
    started = info.get("started")
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"pid {info.get('pid')} on host {info.get('host')}, since {since}"


@contextlib.contextmanager
def lock(run_dir: str | os.PathLike, name: str = LOCK) -> Iterator[Path]:
    """Hold ``<run_dir>/.lock`` (an exclusive ``flock``) while a run reads and writes its folder.

    A second process asking for the same folder gets :class:`RunDirError` at once, naming the
    holder (pid, host, start time, which the file records). The kernel drops the lock when its
    holder exits, even by ``kill -9``, so a stale ``.lock`` file never blocks. Re-entrant within a
    process. ``name`` picks another lock file in the folder (a sweep holds ``.sweep.lock`` around a run
    whose notebook kernel, another process, takes ``.lock``). On a filesystem without locks a
    warning says that concurrent writers go undetected. The file is removed on release. A link,
    FIFO or someone else's file planted under the lock's name is refused (:func:`_open_lock`).
    """
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(
            f"cannot create the run directory {run_dir} ({e.strerror}); use another output directory"
        ) from None
    path = run_dir / name
    key = str(run_dir.resolve() / name)
    held = _HELD.get(key)
    if held is not None and held[0] == os.getpid():
        _HELD[key] = (held[0], held[1], held[2] + 1)
        try:
            yield path
        finally:
            pid, fd, depth = _HELD[key]
            _HELD[key] = (pid, fd, depth - 1)
        return
    fd = _acquire(path, run_dir)
    if fd is None:  # no locks on this filesystem (warned)
        yield path
        return
    try:
        _HELD[key] = (os.getpid(), fd, 1)
        yield path
    finally:
        _HELD.pop(key, None)
        try:  # only our own file: a moved folder's path may now hold someone else's lock
            if os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False)):
                os.unlink(path)
        except OSError:
            pass
        os.close(fd)


def held(run_dir: str | os.PathLike, name: str = LOCK) -> bool | None:
    """Whether a process (on any host sharing the folder) holds the lock ``name`` of ``run_dir``
    now: the truth about a run's liveness where its pid cannot be checked. Changes nothing (a
    shared ``flock`` taken and dropped at once); None where the filesystem has no locks."""
    import fcntl

    try:
        fd = os.open(Path(run_dir) / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return False  # a holder removes it on release
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)  # closing drops the shared lock
    return False


def _not_a_lock(path: Path, why: str) -> RunDirError:
    return RunDirError(
        f"{path} is {why}, not a lock file nscl wrote; nscl never writes through it. Remove it if you do not "
        f"know where it came from (someone may have planted it), or use another output directory"
    )


def _open_lock(path: Path, run_dir: Path) -> tuple[int, bool]:
    """``(fd, created)``: a new lock file we create (``O_EXCL``), else the existing one, read-only.

    Neither follows a symbolic link (``O_NOFOLLOW``) and nothing is ever truncated or written into
    a file this process did not create: a link or a FIFO planted as ``.lock`` is refused, a hard
    link (another name of someone's file) too.
    """
    flags = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | flags, 0o666), True
    except FileExistsError:
        pass
    except PermissionError as e:
        raise RunDirError(f"cannot write in {run_dir} ({e.strerror}); use another output directory") from None
    except OSError as e:
        if e.errno == errno.EROFS:
            raise RunDirError(
                f"cannot write in {run_dir} (read-only file system); use another output directory"
            ) from None
        raise
    try:
        fd = os.open(path, os.O_RDONLY | flags)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _not_a_lock(path, "a symbolic link") from None
        if e.errno == errno.ENOENT:  # released meanwhile: try again
            return -1, False
        raise RunDirError(f"cannot open {path} ({e.strerror}); use another output directory") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise _not_a_lock(path, "not a plain file" if not stat.S_ISREG(st.st_mode) else "a hard link to another file")
    return fd, False


def _acquire(path: Path, run_dir: Path) -> int | None:
    """An fd holding an exclusive flock on ``path`` (None where the filesystem has no locks).

    The lock file is always one this process created (and wrote its pid, host and start time
    into): a stale one left by a killed holder is locked (which proves nobody holds it), removed,
    and created anew.
    """
    import fcntl

    while True:
        fd, created = _open_lock(path, run_dir)
        if fd < 0:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirError(
                f"{run_dir} is in use by another run ({_holder(path)}); wait until it ends, "
                f"or use another output directory"
            ) from None
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            warnings.warn(
                f"cannot lock {path} ({e.strerror}): a second run writing into {run_dir} at the "
                f"same time would not be detected",
                stacklevel=4,
            )
            if created:
                os.unlink(path)
            return None
        try:  # the file we locked may have been removed by a holder that just released it: retry
            same = os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
        except FileNotFoundError:
            same = False
        if same and created:
            os.write(
                fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}).encode()
            )
            return fd
        if same:  # a stale lock file of a holder that was killed: nobody holds it, replace it by ours
            try:
                os.unlink(path)
            except OSError as e:
                os.close(fd)
                raise RunDirError(
                    f"cannot replace the stale {path} ({e.strerror}); use another output directory"
                ) from None
        os.close(fd)

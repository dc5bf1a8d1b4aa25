"""Small helpers every layer may use (they import nothing from nscl): the package version, atomic
file writes, JSON-safe conversion, progress bars, errors that read as one line in a notebook.

Atomic writes go through a temporary file in the target's folder and ``os.replace``, so a reader
never sees a half-written file, even after a crash or ``kill -9``. Files get the permissions the
process umask allows (like ``open``), so collaborators on shared storage can read results.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

#: the package version (``nscl.__version__``; run records store it). Here, in the bottom layer, so that
#: no module has to import the package root for it.
__version__ = "0.1.0"

#: temporary files of :func:`atomic_write` older than this (seconds) belong to a crashed writer
STALE_TEMP_S = 3600.0


def _read_umask() -> int:
    """The process umask, read once at import: from ``/proc/self/status`` (Linux), which changes
    nothing; elsewhere by setting and restoring it, once, before any writer thread exists. Never
    while threads write files: a thread would see a umask of 0 in between."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: the umask the process started with (a process that changes its umask later keeps this one for
#: nscl's files)
UMASK = _read_umask()


def _remove_stale_temps(folder: Path, name: str) -> None:
    """Delete ``.<name>.*.tmp`` files a crashed writer left behind (older than STALE_TEMP_S)."""
    now = time.time()
    for tmp in folder.glob(f".{name}.*.tmp"):
        try:
            if now - tmp.stat().st_mtime > STALE_TEMP_S:
                tmp.unlink()
        except OSError:
            pass


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` to ``path`` via a temporary file + ``os.replace``: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path.parent, path.name)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~UMASK)  # mkstemp creates 0600; results are meant to be shared
        with os.fdopen(fd, mode) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # disk full: say which file could not be written
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


#: a record (results.json, sweep.json, params.yaml, job.json, ...) larger than this is not read
MAX_RECORD_BYTES = 256 << 20


class UnreadableFile(OSError):
    """A file a reader will not open: a FIFO, a device, a socket, a symbolic-link loop, or a regular
    file over the reader's size bound. Its message names the file and what it is."""

    def __str__(self) -> str:
        return f"{self.filename} is {self.strerror}, not a file nscl wrote; remove it or use another folder"


def open_regular(path: str | os.PathLike, limit: int | None = MAX_RECORD_BYTES):
    """Open ``path`` for binary reading only if it is a regular file (links followed) of at most
    ``limit`` bytes (None: any size), else :class:`UnreadableFile`: every reader of a run or sweep
    folder goes through here, so a FIFO planted there never blocks it (the open does not wait for a
    writer) and ``/dev/zero`` never fills the memory."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnreadableFile(errno.ELOOP, "a symbolic link loop", str(path)) from None
        raise
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(st.st_mode):
            kind = (
                "a FIFO"
                if stat.S_ISFIFO(st.st_mode)
                else "a device"
                if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "a socket"
                if stat.S_ISSOCK(st.st_mode)
                else "not a regular file"
            )
            raise UnreadableFile(errno.EINVAL, kind, str(path))
        if limit is not None and st.st_size > limit:
            raise UnreadableFile(errno.EFBIG, f"larger than {limit >> 20} MiB ({st.st_size} bytes)", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike, limit: int = MAX_RECORD_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (:func:`open_regular`)."""
    with open_regular(path, limit) as f:
        data = f.read(limit + 1)
    if len(data) > limit:  # grew since it was checked
        raise UnreadableFile(errno.EFBIG, f"larger than {limit >> 20} MiB", str(path))
    return data


def read_text(path: str | os.PathLike, limit: int = MAX_RECORD_BYTES, errors: str = "strict") -> str:
    """:func:`read_regular` decoded as UTF-8 (``UnicodeDecodeError`` unless ``errors`` says otherwise)."""
    return read_regular(path, limit).decode("utf-8", errors=errors)


def jsonable(obj: Any) -> Any:
    """Plain JSON types from numpy / torch values and containers; non-finite floats become None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy arrays / scalars, tensors
        return jsonable(obj.tolist())
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    return obj


def env_flag(name: str) -> bool:
    """Whether the switch ``$name`` is on: set to anything but empty, ``0``, ``false``, ``no`` or ``off``
    (any case), so that ``NAME=0`` means off, as a reader expects."""
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def progress(iterable: Iterable, quiet: bool = False, **kw):
    """A text tqdm bar unless ``quiet``: on stderr in a terminal, on stdout in a Jupyter kernel.

    In a notebook the bar is plain text, not a widget: a widget's state is not saved with the
    notebook, so a reopened notebook would show "model not found" where the bar was; text survives.
    ``$NSCL_QUIET`` (on: :func:`env_flag`) turns bars off whatever ``quiet`` says: ``make test`` and
    ``make notebooks`` set it so that the notebooks' stored outputs hold no progress bars.
    """
    if quiet or env_flag("NSCL_QUIET"):
        return iterable
    import sys

    from tqdm.std import tqdm

    if _in_kernel():  # a notebook: stdout (stderr renders as an alarm), few redraws
        kw = {"file": sys.stdout, "mininterval": 1.0, "ncols": 100, **kw}
    return tqdm(iterable, **kw)


def _in_kernel() -> bool:
    """Whether this process is a running Jupyter kernel (not merely one that imported ipykernel)."""
    import sys

    if "IPython" not in sys.modules:
        return False
    from IPython import get_ipython

    return getattr(get_ipython(), "kernel", None) is not None


class ReadableError(Exception):
    """An error that is the user's to fix (a parameter, a claim the numbers no longer hold): IPython
    shows ``error: <message>`` instead of a traceback, like the command line's ``error:`` lines."""

    def _render_traceback_(self) -> list[str]:
        return [f"error: {self}"]

"""The errors the data package raises for data on disk: each message is one line that names the
path and the fix, so the command line prints it as ``error: ...`` without a traceback."""

from __future__ import annotations

import os
from collections.abc import Sequence


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(text).split())


class DataError(Exception):
    """Data on disk are missing or unreadable. ``str(error)`` is one actionable line."""

    def __init__(self, message: str):
        super().__init__(one_line(message))

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DataNotFoundError(DataError, FileNotFoundError):
    """A dataset is not where it was looked for; ``searched`` lists every folder looked at."""

    def __init__(self, message: str, searched: Sequence[str | os.PathLike] = ()):
        super().__init__(message)
        self.searched = [str(p) for p in searched]


class CorruptDataError(DataError, ValueError):
    """A dataset file exists but cannot be read: truncated, damaged or not in the expected format."""

    DEFAULT_FIX = "replace it with an intact copy of the dataset"

    def __init__(self, path: str | os.PathLike, reason: str, fix: str | None = None):
        self.path = str(path)
        self.reason = one_line(reason)
        self.fix = fix or self.DEFAULT_FIX
        super().__init__(f"{self.path}: {self.reason}; fix: {self.fix}")

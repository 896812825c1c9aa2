"""Errors of the simulated kernel: each carries the errno the real kernel returns."""

from __future__ import annotations

import errno as _errno
import os


class KsmError(Exception):
    """A kernel call failed the way the real one fails: ``errno`` plus a one-line reason.

    The FUSE adapter turns it into ``FUSEError(errno)``; the CLI prints ``str(err)``.
    """

    def __init__(self, errno: int, message: str = "") -> None:
        super().__init__(errno, message)
        self.errno = errno
        self.message = message or os.strerror(errno)

    def __str__(self) -> str:
        name = _errno.errorcode.get(self.errno, str(self.errno))
        return f"{self.message} ({name})"

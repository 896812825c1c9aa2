"""The one error type of kfs: the kernel's KsmError(errno, message)."""

from __future__ import annotations

import errno

try:
    from ksmfs.kernel import KsmError
except ImportError:  # pragma: no cover - only until ksmfs.kernel lands

    class KsmError(Exception):  # type: ignore[no-redef]
        """Stand-in with the contract's shape: KsmError(errno, message)."""

        def __init__(self, errno: int, message: str = ""):
            super().__init__(errno, message)
            self.errno = errno
            self.message = message

        def __str__(self) -> str:
            return self.message


def einval(message: str) -> KsmError:
    """A one-line EINVAL, the errno the kernel gives to every unparsable write."""
    return KsmError(errno.EINVAL, message)


__all__ = ["KsmError", "einval"]

"""The one error type of kfs: the kernel's KsmError(errno, message)."""

from __future__ import annotations

import errno

from ksmfs.kernel import KsmError


def einval(message: str) -> KsmError:
    """A one-line EINVAL, the errno the kernel gives to every unparsable write."""
    return KsmError(errno.EINVAL, message)


__all__ = ["KsmError", "einval"]

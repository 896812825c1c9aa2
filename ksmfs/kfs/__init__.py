"""kfs: the render/parse layer -- the ONE table of files of a ksmfs mount.

``Tree(kernel)`` resolves paths and derived inode numbers to :class:`Node` objects whose
:class:`FileSpec` row says mode, size, owner and how to show/store the file.  This package
imports ``ksmfs.kernel`` only: never trio or pyfuse3 (tests/kfs checks it).
"""

from __future__ import annotations

from ksmfs.kfs.tracefs import TraceReader, read_stream
from ksmfs.kfs.tree import (
    DIR_MODE,
    PID_BASE,
    PID_DIR_MODE,
    ROOT_INODE,
    FileSpec,
    Node,
    Tree,
)

__all__ = [
    "DIR_MODE",
    "PID_BASE",
    "PID_DIR_MODE",
    "ROOT_INODE",
    "FileSpec",
    "Node",
    "TraceReader",
    "Tree",
    "read_stream",
]

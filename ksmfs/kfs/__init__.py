"""kfs: the render/parse layer -- the ONE table of files of a ksmfs mount.

``table.rows()`` is every file and directory of a mount, one row each; ``Tree(kernel)``
resolves paths and derived inode numbers to :class:`Node` objects whose :class:`FileSpec`
says mode, size, owner and how to show/store the file.  Modules: ``spec`` (the row
type), ``table`` (the rows), ``tree`` (lookup and inodes), and one module per kind of
file (``sysfs``, ``procfs``, ``smaps``, ``tracefs``, ``control``).  This package
imports ``ksmfs.kernel`` only: never trio or pyfuse3 (tests/kfs checks it).
"""

from __future__ import annotations

from ksmfs.kfs.spec import DIR_MODE, PID_DIR_MODE, ROOT, Caller, FileSpec, RenderContext
from ksmfs.kfs.tracefs import TraceReader, read_stream
from ksmfs.kfs.tree import PID_BASE, ROOT_INODE, Node, Tree

__all__ = [
    "DIR_MODE",
    "PID_BASE",
    "PID_DIR_MODE",
    "ROOT",
    "ROOT_INODE",
    "Caller",
    "FileSpec",
    "Node",
    "RenderContext",
    "TraceReader",
    "Tree",
    "read_stream",
]

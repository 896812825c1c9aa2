"""fuse: the pyfuse3 adapter, derived entirely from the kfs table.

:class:`KsmfsOperations` turns FUSE requests into ``Tree`` lookups and ``FileSpec``
show/store calls.  It holds per-open state only (content snapshots, trace_pipe cursors);
which files exist, their modes and their contents all come from :mod:`ksmfs.kfs`.
"""

from __future__ import annotations

from ksmfs.fuse.ops import KsmfsOperations as KsmfsOperations

__all__ = ["KsmfsOperations"]

"""The mount: the trio server (``server.py``: ``serve()``, the ksmd pacer, the scenario
timeline) and the mount tooling (``mount.py``: ``ksmfs mount/umount``, mountinfo, pid and
log files).  The names other packages use are re-exported here."""

from __future__ import annotations

from ksmfs.runtime.mount import (
    MountEntry,
    check_mountpoint,
    cmd_mount,
    cmd_umount,
    find_mount,
    log_file,
    pid_file,
    read_server_pid,
)
from ksmfs.runtime.server import (
    KsmdPacer,
    MountConfig,
    Server,
    Simulation,
    Timeline,
    build_simulation,
    fuse_options,
    serve,
)

__all__ = [
    "KsmdPacer",
    "MountConfig",
    "MountEntry",
    "Server",
    "Simulation",
    "Timeline",
    "build_simulation",
    "check_mountpoint",
    "cmd_mount",
    "cmd_umount",
    "find_mount",
    "fuse_options",
    "log_file",
    "pid_file",
    "read_server_pid",
    "serve",
]

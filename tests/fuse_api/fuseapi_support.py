"""Stand-ins for pyfuse3's request objects (their attributes are read-only)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Ctx:
    uid: int = 0
    gid: int = 0
    pid: int = 1
    umask: int = 0o022


@dataclass
class Fields:
    update_atime: bool = False
    update_mtime: bool = False
    update_ctime: bool = False
    update_mode: bool = False
    update_uid: bool = False
    update_gid: bool = False
    update_size: bool = False


class FakeClock:
    """Wall clock for timestamps that the tests move by hand."""

    def __init__(self, ns: int = 1_700_000_000 * 10**9) -> None:
        self.ns = ns

    def __call__(self) -> int:
        return self.ns

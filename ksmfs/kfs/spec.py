"""The shape of one row of the kfs table, and the mount state rows may read.

This module imports nothing of kfs, so every table module (sysfs, procfs, tracefs,
control) and the tree that assembles them import it without a cycle.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from ksmfs.kernel import Kernel

__all__ = [
    "DIR_MODE",
    "PID_DIR_MODE",
    "ROOT",
    "Caller",
    "FileSpec",
    "PtraceCheck",
    "RenderContext",
    "ShowFn",
    "StepsFn",
    "StoreFn",
    "TruncateFn",
]

DIR_MODE = 0o755  # drwxr-xr-x: kernfs directories
PID_DIR_MODE = 0o555  # dr-xr-xr-x, as /proc/<pid> on Linux

# show(kernel, pid) -> the whole content; pid is the task of a /proc/<pid> row, else None.
ShowFn = Callable[["Kernel", "int | None"], bytes]
# store(kernel, pid, data) -> bytes consumed, or raises KsmError(errno, message).
StoreFn = Callable[["Kernel", "int | None", bytes], int]
TruncateFn = Callable[["Kernel", "int | None"], None]
# show in pieces: a generator that yields where other work may run (the FUSE adapter
# serves requests and ksmd slices there) and returns the content, or None when the
# state it read changed under it so that it must start again.
StepsFn = Callable[["Kernel", "int | None"], Generator[None, None, "bytes | None"]]

# When a /proc/<pid> file applies ptrace_may_access(task, PTRACE_MODE_READ_FSCREDS), as
# fs/proc/base.c and task_mmu.c do and the live 6.18 kernel shows as another user:
# "open" -- proc_mem_open()/mm_access() at open: maps, smaps, smaps_rollup, environ;
# "read" -- in the show function, so open succeeds and read(2) fails: io
# (do_io_accounting()).  Both give EACCES.  None: the mode bits only (ksm_stat and
# ksm_merging_pages are 0400 but check nothing more [LIVE]).
PtraceCheck = Literal["open", "read"] | None


@dataclass(frozen=True)
class FileSpec:
    """One row of the table: a regular file of the mount.

    ``show(kernel, pid)`` returns a full content snapshot (the adapter snapshots on open
    and serves every offset from it, like seq_file).  ``store(kernel, pid, data)`` is one
    write(2): it returns the number of bytes consumed or raises ``KsmError(errno, msg)``.
    ``pid`` is the task for files under ``proc/<pid>/``, else None.

    ``truncate`` (optional) is what an O_TRUNC open / ftruncate(0) does; None means
    "accepted and ignored" (sysfs, spec §1.1).  The only file with an action is tracefs
    ``trace``, where truncation clears the ring buffer.

    ``stream`` files (trace_pipe) are read with :func:`ksmfs.kfs.tracefs.read_stream`
    instead of ``show``: reads consume records, and block while there is nothing new.

    ``ptrace`` says when the kernel checks ptrace access mode read (see PtraceCheck);
    ``show_unpermitted`` is what a reader failing that check sees of a file everyone may
    read but hides some fields from strangers (do_task_stat's ``permitted``).

    ``show_steps`` (optional) is ``show`` rendered in pieces of bounded cost, for files
    whose one-piece render would keep other readers waiting (smaps of a 4M-page VMA);
    the adapter uses it instead of ``show`` and it gives the same bytes.
    """

    name: str
    mode: int
    size: int
    show: ShowFn | None
    store: StoreFn | None
    owner: Literal["root", "task"] = "root"
    stream: bool = False
    truncate: TruncateFn | None = None
    ptrace: PtraceCheck = None
    show_unpermitted: ShowFn | None = None
    show_steps: StepsFn | None = None


@dataclass(frozen=True)
class Caller:
    """Who asks: the file-system uid/gid of the process behind a request (FUSE's)."""

    uid: int = 0
    gid: int = 0
    pid: int = 0


ROOT = Caller()


@dataclass
class RenderContext:
    """What one mount knows that the simulated kernel does not.

    ``btime``: the epoch second of boot printed in /proc/stat (the kernel package has no
    wall clock); None until first asked, then the wall time minus the uptime.
    ``last``: the result of the last successful control command (ksmfs/last).
    """

    btime: int | None = None
    last: str = ""

    def boot_time(self, k: Kernel) -> int:
        if self.btime is None:
            self.btime = int(time.time() - k.now / 1000)
        return self.btime

"""The ONE table of files of a ksmfs mount: every directory and file is one :class:`Row`.

:func:`rows` is the whole namespace in listing order.  Paths under ``proc/<pid>/`` are
written with the :data:`PID` placeholder (and :data:`TID` for ``task/<tid>/``): the same
rows exist for every task.  The tree (kfs/tree.py), the FUSE adapter, the permission
checks and the tests are all derived from this list; to add a file, add a row here and
its show/store functions in the module of its kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ksmfs.kfs import control, procfs, sysfs, tracefs
from ksmfs.kfs.spec import DIR_MODE, FileSpec, RenderContext

if TYPE_CHECKING:
    from ksmfs.kernel.versions import KernelProfile

__all__ = ["PID", "TID", "Row", "rows"]

PID = "<pid>"  # stands for the pid of every task
TID = "<tid>"  # stands for every thread of that task (a simulated task has one: tid = pid)

SYSFS_KSM = ("sys", "kernel", "mm", "ksm")
TRACING = ("sys", "kernel", "tracing")


@dataclass(frozen=True)
class Row:
    """A directory (``spec`` None, permission bits ``mode``) or a file (``spec``)."""

    path: tuple[str, ...]
    spec: FileSpec | None = None
    mode: int = DIR_MODE

    @property
    def is_dir(self) -> bool:
        return self.spec is None


def _dir(*path: str, mode: int = DIR_MODE) -> Row:
    return Row(path, None, mode)


def _files(directory: tuple[str, ...], specs: list[FileSpec]) -> list[Row]:
    return [Row((*directory, spec.name), spec, spec.mode) for spec in specs]


def _tracing(version: KernelProfile) -> list[Row]:
    out = [_dir(*TRACING, mode=0o555)]
    seen: set[tuple[str, ...]] = {TRACING}
    for sub, specs in tracefs.tree_specs(version):
        for i in range(1, len(sub) + 1):  # events, events/ksm, events/ksm/<event>
            if (*TRACING, *sub[:i]) not in seen:
                seen.add((*TRACING, *sub[:i]))
                out.append(_dir(*TRACING, *sub[:i]))
        out += _files((*TRACING, *sub), specs)
    return out


def rows(version: KernelProfile, ctx: RenderContext) -> list[Row]:
    """Every directory and file of a mount of ``version``, parents before children.

    Directory modes are those of the live 6.18 machine (``stat -c %a``).
    """
    return [
        _dir(),
        _dir("proc", mode=0o555),
        _dir("sys", mode=0o555),
        _dir("sys", "kernel"),
        _dir("sys", "kernel", "mm"),
        _dir(*SYSFS_KSM),
        *_files(SYSFS_KSM, sysfs.file_specs(version)),
        *_tracing(version),
        *_files(("proc",), procfs.global_specs(version, ctx)),
        _dir("ksmfs"),
        *_files(("ksmfs",), control.file_specs(version, ctx)),
        _dir("proc", "sys", mode=0o555),
        _dir("proc", "sys", "kernel", mode=0o555),
        *_files(("proc", "sys", "kernel"), procfs.sysctl_kernel_specs(version)),
        # /proc/<pid>: the same rows for every task (tgid_base_stuff), and task/<tid>
        # for its one thread (tid_base_stuff: the same files, without task/)
        _dir("proc", PID, mode=0o555),
        _dir("proc", PID, "task", mode=0o555),
        _dir("proc", PID, "fd", mode=0o500),  # dr-x------; no simulated task has files
        *_files(("proc", PID), procfs.pid_specs(version)),
        _dir("proc", PID, "task", TID, mode=0o555),
        _dir("proc", PID, "task", TID, "fd", mode=0o500),
        *_files(("proc", PID, "task", TID), procfs.pid_specs(version)),
    ]

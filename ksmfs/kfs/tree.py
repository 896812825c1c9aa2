"""The mount's namespace, built from the rows of kfs/table.py.

Inode numbers are *derived*, never allocated, so the adapter keeps no inode table:

* ``ROOT_INODE`` (1) is the mount root;
* every static path (directories and files outside ``/proc/<pid>``) gets a fixed number
  ``1, 2, 3, ...`` in table order (stable for a given kernel version);
* ``/proc/<pid>`` is ``PID_BASE + (pid << 8)`` and the n-th row under it (files and
  subdirectories, in table order) ``PID_BASE + (pid << 8) + n + 1`` (n < 255), so a
  lookup after the task has exited simply fails (ENOENT), like the real /proc.
"""

from __future__ import annotations

import errno
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ksmfs.kernel import KsmError
from ksmfs.kfs import table
from ksmfs.kfs.procfs import ptrace_may_access
from ksmfs.kfs.spec import (
    DIR_MODE,
    PID_DIR_MODE,
    ROOT,
    Caller,
    FileSpec,
    RenderContext,
    ShowFn,
    StepsFn,
)
from ksmfs.kfs.table import PID, TID

if TYPE_CHECKING:
    from ksmfs.kernel import Kernel

__all__ = [
    "DIR_MODE",
    "PID_BASE",
    "PID_DIR_MODE",
    "ROOT_INODE",
    "Node",
    "Tree",
]

ROOT_INODE = 1
PID_BASE = 1 << 32
PID_SHIFT = 8


@dataclass(frozen=True)
class Node:
    """A resolved path: a directory (spec None) or a file (spec set)."""

    path: tuple[str, ...]
    is_dir: bool
    spec: FileSpec | None
    pid: int | None
    inode: int
    mode: int = field(default=DIR_MODE)  # permission bits (dirs: from the row; files: spec)

    @property
    def name(self) -> str:
        return self.path[-1] if self.path else ""


def _parse_pid(name: str) -> int | None:
    # /proc accepts only canonical decimal pids ("01" is ENOENT).
    if not name.isdigit() or (len(name) > 1 and name[0] == "0") or not name.isascii():
        return None
    return int(name)


class Tree:
    """The mount's namespace for one kernel.  Cheap to build; holds no per-open state.

    ``ctx`` is the mount's :class:`RenderContext` (boot time, last control result): the
    rows that need it were built around it.
    """

    def __init__(self, kernel: Kernel, *, btime: int | None = None):
        """``btime``: the epoch second of boot for /proc/stat (default: the wall time
        when it is first rendered, minus the uptime; tests pin it)."""
        self.kernel = kernel
        self.ctx = RenderContext(btime=btime)
        self.rows = table.rows(kernel.version, self.ctx)
        # Static part: path -> Node in table order; directory path -> ordered child names.
        self._static: dict[tuple[str, ...], Node] = {}
        self._children: dict[tuple[str, ...], list[str]] = {}
        self._by_inode: dict[int, Node] = {}
        # Per-pid part: paths relative to proc/<pid> (with TID), in table order.
        self._pid_rows: list[table.Row] = []
        self._pid_children: dict[tuple[str, ...], list[str]] = {}
        for row in self.rows:
            if row.path[:2] == ("proc", PID):
                self._add_pid_row(row)
            else:
                self._add_static(row)
        self._pid_index = {row.path[2:]: i for i, row in enumerate(self._pid_rows)}
        if len(self._pid_rows) >= (1 << PID_SHIFT) - 1:
            raise ValueError("too many /proc/<pid> rows for the inode scheme")

    # -- building -----------------------------------------------------------------------
    def _add_static(self, row: table.Row) -> None:
        if row.path in self._static:
            raise ValueError(f"duplicate row /{'/'.join(row.path)}")
        if row.path:
            if row.path[:-1] not in self._children:
                raise ValueError(f"row /{'/'.join(row.path)} comes before its directory")
            self._children[row.path[:-1]].append(row.path[-1])
        node = Node(row.path, row.is_dir, row.spec, None, ROOT_INODE + len(self._static), row.mode)
        self._static[row.path] = node
        self._by_inode[node.inode] = node
        if row.is_dir:
            self._children[row.path] = []

    def _add_pid_row(self, row: table.Row) -> None:
        rel = row.path[2:]
        if not rel:
            if row.mode != PID_DIR_MODE:
                raise ValueError("proc/<pid> must be dr-xr-xr-x")
            self._pid_children[()] = []
            return
        if rel[:-1] not in self._pid_children:
            raise ValueError(f"row /{'/'.join(row.path)} comes before its directory")
        self._pid_children[rel[:-1]].append(rel[-1])
        if row.is_dir:
            self._pid_children[rel] = []
        self._pid_rows.append(row)

    # -- per-pid nodes ------------------------------------------------------------------
    @staticmethod
    def pid_dir_inode(pid: int) -> int:
        return PID_BASE + (pid << PID_SHIFT)

    @staticmethod
    def _concrete(pid: int, rel: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(str(pid) if part == TID else part for part in rel)

    @staticmethod
    def _template(pid: int, rel: tuple[str, ...]) -> tuple[str, ...] | None:
        # task/<tid>: a simulated task has one thread, whose tid is the pid.
        if len(rel) >= 2 and rel[0] == "task":
            if rel[1] != str(pid):
                return None
            return ("task", TID, *rel[2:])
        return rel

    def _pid_node(self, pid: int, index: int) -> Node | None:
        if pid not in self.kernel.tasks:
            return None
        if index < 0:
            return Node(("proc", str(pid)), True, None, pid, self.pid_dir_inode(pid), PID_DIR_MODE)
        if index >= len(self._pid_rows):
            return None
        row = self._pid_rows[index]
        path = ("proc", str(pid), *self._concrete(pid, row.path[2:]))
        return Node(path, row.is_dir, row.spec, pid, self.pid_dir_inode(pid) + index + 1, row.mode)

    def _pid_lookup(self, path: tuple[str, ...]) -> Node | None:
        pid = _parse_pid(path[1])
        if pid is None:
            return None
        if len(path) == 2:
            return self._pid_node(pid, -1)
        rel = self._template(pid, path[2:])
        index = None if rel is None else self._pid_index.get(rel)
        return None if index is None else self._pid_node(pid, index)

    # -- the API the adapter uses -------------------------------------------------------
    def lookup(self, path: tuple[str, ...]) -> Node | None:
        """Resolve a path (components, no slashes); None means ENOENT."""
        node = self._static.get(path)
        if node is not None:
            return node
        if len(path) >= 2 and path[0] == "proc":
            return self._pid_lookup(path)
        return None

    def listdir(self, path: tuple[str, ...]) -> list[str]:
        """Names in a directory, in a stable order (static rows first, then pids)."""
        names = self._children.get(path)
        if names is not None:
            out = list(names)
            if path == ("proc",):
                out += [str(pid) for pid in sorted(self.kernel.tasks)]
            return out
        node = self.lookup(path) if len(path) >= 2 and path[0] == "proc" else None
        if node is None or not node.is_dir or node.pid is None:
            return []
        rel = self._template(node.pid, path[2:])
        return [self._concrete(node.pid, (n,))[0] for n in self._pid_children.get(rel or (), [])]

    def node_by_inode(self, inode: int) -> Node | None:
        node = self._by_inode.get(inode)
        if node is not None:
            return node
        if inode >= PID_BASE:
            rel = inode - PID_BASE
            pid, index = rel >> PID_SHIFT, (rel & ((1 << PID_SHIFT) - 1)) - 1
            return self._pid_node(pid, index)
        return None

    def child(self, parent_inode: int, name: str) -> Node | None:
        parent = self.node_by_inode(parent_inode)
        if parent is None or not parent.is_dir:
            return None
        if name == ".":
            return parent
        if name == "..":
            return self.lookup(parent.path[:-1]) if parent.path else parent
        return self.lookup((*parent.path, name))

    def check_open(self, node: Node, caller: Caller = ROOT) -> None:
        """A read-open of ``node`` by ``caller``: EACCES where the kernel's open checks
        ptrace access (proc_mem_open).  The mode bits are the VFS's business (FUSE
        default_permissions), not checked here."""
        spec = node.spec
        if (
            spec is not None
            and spec.ptrace == "open"
            and node.pid is not None
            and not ptrace_may_access(self.kernel, node.pid, caller)
        ):
            raise KsmError(errno.EACCES, f"/{'/'.join(node.path)}: ptrace access denied")

    def render(self, node: Node, caller: Caller = ROOT) -> bytes:
        """The content ``caller`` reads from file ``node`` (after :meth:`check_open`)."""
        spec = node.spec
        if spec is None or spec.show is None:
            raise KsmError(errno.EACCES, f"/{'/'.join(node.path)} cannot be read")
        if (
            node.pid is not None
            and (spec.ptrace == "read" or spec.show_unpermitted)
            and not ptrace_may_access(self.kernel, node.pid, caller)
        ):
            if spec.show_unpermitted is not None:
                return spec.show_unpermitted(self.kernel, node.pid)
            raise KsmError(errno.EACCES, f"/{'/'.join(node.path)}: ptrace access denied")
        return spec.show(self.kernel, node.pid)

    def render_steps(self, node: Node, caller: Caller = ROOT) -> Generator[None, None, bytes] | None:
        """:meth:`render` in pieces where the row has ``show_steps`` (None: it has not):
        the generator yields between pieces and returns the content.  A piecewise
        render that finds its state changed starts again (at most
        ``smaps.MAX_RESTARTS`` times, then ``show`` renders in one piece)."""
        spec = node.spec
        if spec is None or spec.show_steps is None or spec.show is None:
            return None
        if node.pid is not None and (spec.ptrace == "read" or spec.show_unpermitted):
            return None  # the permission rules of render(): one piece
        return self._steps(spec.show_steps, spec.show, node.pid)

    def _steps(self, steps: StepsFn, show: ShowFn, pid: int | None) -> Generator[None, None, bytes]:
        from ksmfs.kfs.smaps import MAX_RESTARTS

        for _ in range(MAX_RESTARTS):
            out = yield from steps(self.kernel, pid)
            if out is not None:
                return out
        return show(self.kernel, pid)

    def owner(self, node: Node) -> tuple[int, int]:
        """(uid, gid) for stat: root, or the task's for /proc/<pid> and task-owned rows."""
        if node.pid is not None and (node.is_dir or (node.spec and node.spec.owner == "task")):
            task = self.kernel.tasks.get(node.pid)
            if task is not None:
                return int(task.uid), int(task.gid)
        return 0, 0

    def iter_files(self, pids: bool = True) -> list[Node]:
        """Every file node (static ones, then each task's), for tests and tools."""
        out = [n for n in self._static.values() if not n.is_dir]
        if pids:
            for pid in sorted(self.kernel.tasks):
                for i in range(len(self._pid_rows)):
                    n = self._pid_node(pid, i)
                    if n is not None and not n.is_dir:
                        out.append(n)
        return out

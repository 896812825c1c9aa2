"""The ONE table of files of a ksmfs mount, and the tree built from it.

Every file of the mount (sysfs KSM knobs, /proc, tracefs, the ksmfs control directory) is
one :class:`FileSpec` row.  The FUSE adapter, the permission checks and the tests are all
derived from these rows; nothing else in the project knows which files exist.

Inode numbers are *derived*, never allocated, so the adapter keeps no inode table:

* ``ROOT_INODE`` (1) is the mount root;
* every static path (directories and files outside ``/proc/<pid>``) gets a fixed number
  ``2, 3, ...`` in table order (stable for a given kernel version);
* ``/proc/<pid>`` is ``PID_BASE + (pid << 8)`` and its n-th file
  ``PID_BASE + (pid << 8) + n + 1`` (n < 255), so a lookup after the task has exited
  simply fails (ENOENT), like the real /proc.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from ksmfs.kernel import Kernel

__all__ = [
    "DIR_MODE",
    "PID_BASE",
    "PID_DIR_MODE",
    "ROOT_INODE",
    "FileSpec",
    "Node",
    "Tree",
]

ROOT_INODE = 1
PID_BASE = 1 << 32
PID_SHIFT = 8
DIR_MODE = 0o755
PID_DIR_MODE = 0o555  # dr-xr-xr-x, as /proc/<pid> on Linux
# Directories whose mode is not 0755 on the live 6.18 machine (stat -c %a).
STATIC_DIR_MODES: dict[tuple[str, ...], int] = {
    ("proc",): 0o555,
    ("sys",): 0o555,
    ("sys", "kernel", "tracing"): 0o555,
}

ShowFn = Callable[["Kernel", "int | None"], bytes]
StoreFn = Callable[["Kernel", "int | None", bytes], int]
TruncateFn = Callable[["Kernel", "int | None"], None]


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
    """

    name: str
    mode: int
    size: int
    show: ShowFn | None
    store: StoreFn | None
    owner: Literal["root", "task"] = "root"
    stream: bool = False
    truncate: TruncateFn | None = None


@dataclass(frozen=True)
class Node:
    """A resolved path: a directory (spec None) or a file (spec set)."""

    path: tuple[str, ...]
    is_dir: bool
    spec: FileSpec | None
    pid: int | None
    inode: int
    mode: int = field(default=DIR_MODE)  # permission bits (dirs: 0o755/0o555; files: spec)

    @property
    def name(self) -> str:
        return self.path[-1] if self.path else ""


def _file_node(path: tuple[str, ...], spec: FileSpec, pid: int | None, inode: int) -> Node:
    return Node(path, False, spec, pid, inode, spec.mode)


class Tree:
    """The mount's namespace for one kernel.  Cheap to build; holds no per-open state."""

    def __init__(self, kernel: Kernel, *, btime: int | None = None):
        """``btime``: the epoch second of boot for /proc/stat (default: the wall time
        when the kernel is first rendered, minus its uptime; tests pin it)."""
        # Imported here so that the table modules can import FileSpec from this module.
        from ksmfs.kfs import control, procfs, sysfs, tracefs

        self.kernel = kernel
        if btime is not None:
            procfs.set_btime(kernel, btime)
        version = kernel.version
        # Static part: path -> Node, in table order; dir path -> ordered child names.
        self._static: dict[tuple[str, ...], Node] = {}
        self._children: dict[tuple[str, ...], list[str]] = {}
        self._by_inode: dict[int, Node] = {}
        self._next_inode = ROOT_INODE
        self._add_dir(())
        for d in (("proc",), ("sys",), ("sys", "kernel"), ("sys", "kernel", "mm")):
            self._add_dir(d)
        self._add_files(("sys", "kernel", "mm", "ksm"), sysfs.file_specs(version))
        self._add_dir(("sys", "kernel", "tracing"))
        for sub, specs in tracefs.tree_specs(version):
            self._add_files(("sys", "kernel", "tracing", *sub), specs)
        self._add_files(("proc",), procfs.global_specs(version))
        self._add_files(("ksmfs",), control.file_specs(version))
        # Per-pid part: the same rows for every task.
        self.pid_specs: tuple[FileSpec, ...] = tuple(procfs.pid_specs(version))
        if len(self.pid_specs) >= (1 << PID_SHIFT) - 1:
            raise ValueError("too many /proc/<pid> files for the inode scheme")
        self._pid_index = {s.name: i for i, s in enumerate(self.pid_specs)}

    # -- building -----------------------------------------------------------------------
    def _add_dir(self, path: tuple[str, ...]) -> None:
        if path in self._static:
            return
        if path:
            self._add_dir(path[:-1])
            self._children[path[:-1]].append(path[-1])
        node = Node(path, True, None, None, self._next_inode, STATIC_DIR_MODES.get(path, DIR_MODE))
        self._next_inode += 1
        self._static[path] = node
        self._by_inode[node.inode] = node
        self._children[path] = []

    def _add_files(self, dirpath: tuple[str, ...], specs: list[FileSpec]) -> None:
        self._add_dir(dirpath)
        for spec in specs:
            path = (*dirpath, spec.name)
            node = _file_node(path, spec, None, self._next_inode)
            self._next_inode += 1
            self._static[path] = node
            self._by_inode[node.inode] = node
            self._children[dirpath].append(spec.name)

    # -- per-pid nodes ------------------------------------------------------------------
    @staticmethod
    def pid_dir_inode(pid: int) -> int:
        return PID_BASE + (pid << PID_SHIFT)

    def _pid_dir(self, pid: int) -> Node | None:
        if pid not in self.kernel.tasks:
            return None
        return Node(("proc", str(pid)), True, None, pid, self.pid_dir_inode(pid), PID_DIR_MODE)

    def _pid_file(self, pid: int, index: int) -> Node | None:
        if pid not in self.kernel.tasks or not 0 <= index < len(self.pid_specs):
            return None
        spec = self.pid_specs[index]
        return _file_node(
            ("proc", str(pid), spec.name), spec, pid, self.pid_dir_inode(pid) + index + 1
        )

    @staticmethod
    def _parse_pid(name: str) -> int | None:
        # /proc accepts only canonical decimal pids ("01" is ENOENT).
        if not name.isdigit() or (len(name) > 1 and name[0] == "0") or not name.isascii():
            return None
        return int(name)

    # -- the API the adapter uses -------------------------------------------------------
    def lookup(self, path: tuple[str, ...]) -> Node | None:
        """Resolve a path (components, no slashes); None means ENOENT."""
        node = self._static.get(path)
        if node is not None:
            return node
        if len(path) in (2, 3) and path[0] == "proc":
            pid = self._parse_pid(path[1])
            if pid is None:
                return None
            if len(path) == 2:
                return self._pid_dir(pid)
            index = self._pid_index.get(path[2])
            return None if index is None else self._pid_file(pid, index)
        return None

    def listdir(self, path: tuple[str, ...]) -> list[str]:
        """Names in a directory, in a stable order (static rows first, then pids)."""
        names = self._children.get(path)
        if names is not None:
            out = list(names)
            if path == ("proc",):
                out += [str(pid) for pid in sorted(self.kernel.tasks)]
            return out
        if len(path) == 2 and path[0] == "proc" and self.lookup(path) is not None:
            return [s.name for s in self.pid_specs]
        return []

    def node_by_inode(self, inode: int) -> Node | None:
        node = self._by_inode.get(inode)
        if node is not None:
            return node
        if inode >= PID_BASE:
            rel = inode - PID_BASE
            pid, index = rel >> PID_SHIFT, (rel & ((1 << PID_SHIFT) - 1)) - 1
            return self._pid_dir(pid) if index < 0 else self._pid_file(pid, index)
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
                out += [n for i in range(len(self.pid_specs)) if (n := self._pid_file(pid, i))]
        return out

"""The pyfuse3 ``Operations`` of a ksmfs mount, generated from the kfs :class:`Tree`.

Lookup, attributes, permissions, reads and writes all come from the ``Node``/``FileSpec``
rows of kfs/table.py; the only names known here are the top directories ``proc`` (procfs
rules for chmod and new names, PROCFS_TOP) and ``ksmfs`` (a refused command is logged as
a warning).  The rules this adapter applies to *every* file are written down once, each
with its reason (fuse-notes.md, spec §1.1):

* **Reads** -- ``open`` renders ``show()`` once and every READ slices that snapshot, like
  sysfs' one page per open file and LXCFS' per-fd buffer.  ``FileInfo(direct_io=True,
  keep_cache=False)``: without direct_io a file reporting ``st_size`` 0 (procfs) reads
  as empty and a counter that keeps its length stays stale forever (notes §1.4).
* **Writes** -- each WRITE is one whole ``store()`` call, the offset is ignored and only
  the first 4096 bytes reach the parser; the store's return value (bytes consumed) is
  what write(2) returns, as in kernfs_fop_write_iter.  An empty write returns 0 without
  calling store.
* **Permissions** -- the mount uses ``default_permissions``, so the kernel checks
  ``st_mode``/``st_uid`` for everyone but root.  Root bypasses those bits, so ``open``
  itself refuses a write-open of a file without a store (and a read-open of a file
  without show) with EACCES, as kernfs_fop_open does.  /proc/PID rows with a ptrace
  check (FileSpec.ptrace) get the caller's uid/gid from the request: EACCES at open
  (smaps, maps, environ) or at every read (io), as the kernel does.
* **Namespace changes** -- refused with the errno the live 6.18 kernel gives
  (verified on /sys/kernel/mm/ksm and /proc/1): kernfs (sysfs, and our own ``ksmfs/``
  and root directories) has no create/mkdir/... methods, so the VFS answers EACCES for
  a new regular file (vfs_create) and EPERM for everything else; procfs directories
  fail the lookup of any new name, so creating anything there is ENOENT, while unlink
  and rmdir of an existing entry are EPERM.
* **Errors** -- one wrapper on every handler: ``KsmError`` becomes ``FUSEError(errno)``,
  anything else is logged with its traceback and becomes EIO.  An exception other than
  FUSEError escaping a pyfuse3 handler would end the whole file system (notes §1.3).
* **Timestamps** -- every node carries the mount time; an O_TRUNC open or a setattr
  sets mtime/ctime to now, a plain write does not (spec §1.1, kernfs_iop_setattr).
  truncate(2) is accepted and ignored on every file (root may even truncate a 0444
  counter on the live kernel); chmod/chown stick on kernfs files and are EPERM on procfs.
* **Streams** (trace_pipe) -- a READ consumes records and waits, in trio, until ksmd
  emits some (``kernel_changed()`` wakes it); O_NONBLOCK gives EAGAIN; poll(2) reports
  readiness and is notified later.  ``close_streams()`` ends waiting reads with EOF at
  unmount.
* **Consistency** -- handlers render synchronously, so one file is one kernel state;
  several files are one state when the ``user.ksmfs.generation`` xattr did not move
  while they were read (see GENERATION_XATTR).  The exception is a row with
  ``show_steps`` (smaps, smaps_rollup): rendered in pieces with checkpoints between
  them, so other readers and ksmd's slices run while a 4M-page VMA is summed up; each
  VMA block is the walk of one VMA layout, its pages summed as ksmd left them when
  their range was reached, as the kernel's smap_gather_stats() (kfs/smaps.py).
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import select
import stat
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pyfuse3
import trio

from ksmfs.kernel.errors import KsmError
from ksmfs.kfs import ROOT, ROOT_INODE, Caller, Node, TraceReader, Tree, read_stream
from ksmfs.linux import WRITE_MAX

log = logging.getLogger(__name__)

__all__ = ["GENERATION_XATTR", "WRITE_MAX", "KsmfsOperations"]


# Top-level directory whose files follow procfs rules rather than kernfs rules
# (chmod/chown -> EPERM, creating a name -> ENOENT).  Everything else (sys/, ksmfs/, the
# root) behaves like kernfs.
PROCFS_TOP = "proc"

# Attribute and entry cache lifetime (seconds).  The kernel then skips LOOKUP/GETATTR
# for repeated opens of the same path, which is most of the cost of a sysfs-style
# open-read-close.  Nothing in a node's attributes changes behind the kernel's back:
# O_TRUNC opens and setattr replies refresh the cache, and an exited pid's dentry is
# dropped with invalidate_entry_async (see kernel_changed).
ATTR_TIMEOUT = 1.0

DEFAULT_POLLMASK = select.POLLIN | select.POLLOUT | select.POLLRDNORM | select.POLLWRNORM

# trace_pipe readers wait for kernel_changed(); this is only a safety net for records
# written by something that does not call it.
STREAM_POLL_SECONDS = 0.2

# `getfattr -n user.ksmfs.generation MOUNT` (on any node): a number that changes
# whenever the simulated kernel does (a ksmd batch, a store, a scenario step).  Equal
# values before and after reading several files prove the files come from one kernel
# state -- the seqlock pattern; a real kernel offers nothing like it, so it is an xattr
# that no listing shows rather than a file.
GENERATION_XATTR = b"user.ksmfs.generation"

StoreHook = Callable[[Node, bytes], None]
InvalidateHook = Callable[[int, str], None]

_F = TypeVar("_F", bound=Callable[..., Awaitable[Any]])

# How long the caller of a request is likely to take to send its next one, in seconds
# (``KsmfsOperations.follow_up``): the runtime's pacer waits that long for it before it
# runs the next ksmd slice, so that open-read-close is one burst and not one slice per
# round trip.  After a LOOKUP, OPEN, GETATTR, ... the caller has more to ask; after a READ
# with data, a RELEASE (close) or another READ (cat reads to EOF) comes at once.  After
# RELEASE, a READ at EOF or a WRITE nobody waits for a reply: the caller's next request
# will be the start of a new burst.
FOLLOW_UP_SECONDS = 0.0003
NO_FOLLOW_UP = frozenset({"release", "releasedir", "flush", "fsync", "fsyncdir", "write"})


def _handler(fn: _F) -> _F:
    """Wrap a request handler so that only ``FUSEError`` ever leaves it.

    ``KsmError`` carries the kernel's errno (EINVAL, EBUSY, ERANGE, ...).  Any other
    exception is a bug in ksmfs: log it with its traceback and answer EIO, so the caller
    gets an error and the mount stays up (pyfuse3 would otherwise end main()).
    """
    follow_up = 0.0 if fn.__name__ in NO_FOLLOW_UP else FOLLOW_UP_SECONDS
    is_read = fn.__name__ == "read"

    @functools.wraps(fn)
    async def wrapper(self: KsmfsOperations, *args: Any) -> Any:
        self.requests += 1  # the runtime's pacer lets a burst of requests finish
        self.follow_up = follow_up
        try:
            result = await fn(self, *args)
            if is_read and not result:
                self.follow_up = 0.0  # EOF: the caller closes, and close waits for nothing
            return result
        except pyfuse3.FUSEError:
            raise
        except KsmError as e:
            raise pyfuse3.FUSEError(e.errno) from None
        except Exception:
            log.exception("internal error in %s%r; answering EIO", fn.__name__, args)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


def _err(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


def _comm_of(pid: int) -> str:
    """The comm of a (real) calling process; "<...>" when it is gone, as the trace output
    prints a task whose comm was not saved (trace_find_cmdline)."""
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().rstrip(b"\n").decode("utf-8", "replace") or "<...>"
    except OSError:
        return "<...>"


@dataclass
class _FileHandle:
    """One open file: the content snapshot for readers, or a trace_pipe cursor."""

    node: Node
    readable: bool
    writable: bool
    data: bytes = b""
    reader: TraceReader | None = None
    pending: bytes = b""  # rendered trace records the last READ had no room for
    nonblock: bool = False
    poll_handle: Any = None  # pyfuse3.PollHandle of a poll(2) waiting for records
    read_errno: int = 0  # a show that refused this reader: every READ fails with it
    opener: int = 0  # pid of the process that opened the file (FUSE request context)


@dataclass
class _DirHandle:
    """One open directory: its listing, taken when a READDIR starts at offset 0.

    ``next_id`` is the index in this listing plus one, so a listing that is read in
    several READDIR calls never skips or repeats an entry, even when tasks come and go
    in between (the listing is refreshed only by a new pass from offset 0).
    """

    node: Node
    entries: list[str] = field(default_factory=list)


@dataclass
class _AttrOverride:
    """Attributes changed by setattr (chmod/chown/touch/truncate) on one inode."""

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None
    ctime_ns: int | None = None


class KsmfsOperations(pyfuse3.Operations):
    """FUSE request handlers for one simulated kernel, derived from ``tree``.

    ``on_store(node, data)`` runs after every successful store (the runtime uses it to
    let ksmd look at the wake-ups the store recorded in the kernel); ``before_store()``
    is awaited before every store (the runtime waits for a running ksmd batch, as a
    store waits for ksm_thread_mutex).  ``invalidate_entry(parent_inode, name)`` drops a cached
    dentry of the kernel; the runtime passes ``pyfuse3.invalidate_entry_async`` so an
    exited pid vanishes from ``/proc`` at once.  ``clock_ns`` is the wall clock used for
    timestamps (a parameter so tests can fix it).
    """

    supports_dot_lookup = True
    enable_writeback_cache = False  # would merge or delay stores (notes §1.5)

    def __init__(
        self,
        tree: Tree,
        *,
        on_store: StoreHook | None = None,
        before_store: Callable[[], Awaitable[None]] | None = None,
        invalidate_entry: InvalidateHook | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        super().__init__()
        if ROOT_INODE != pyfuse3.ROOT_INODE:  # the two tables must agree on the root
            raise ValueError("kfs ROOT_INODE differs from pyfuse3.ROOT_INODE")
        self.tree = tree
        self.kernel = tree.kernel
        self._on_store = on_store
        self._before_store = before_store
        self._invalidate_entry = invalidate_entry
        self._clock_ns = clock_ns
        self.mount_time_ns = clock_ns()
        self._files: dict[int, _FileHandle] = {}
        self._dirs: dict[int, _DirHandle] = {}
        self._next_fh = itertools.count(1)
        self._attrs: dict[int, _AttrOverride] = {}
        self._changed = trio.Event()
        self._closing = False
        # Bumped by every kernel_changed(): readers that need several files from one
        # kernel state read it before and after (a seqlock), see GENERATION_XATTR.
        self.generation = 0
        self.requests = 0  # requests handled (any kind)
        self.follow_up = 0.0  # how long the last request's caller may take to send more
        self._pids: set[int] = set(self.kernel.tasks)
        proc = tree.lookup((PROCFS_TOP,))
        self._proc_inode = proc.inode if proc is not None else None

    # -- notifications from the runtime ------------------------------------------------
    def kernel_changed(self) -> None:
        """The kernel state moved (a ksmd batch, a store, a scenario step).

        Wakes trace_pipe readers, and drops the kernel's cached dentries of tasks that
        have exited, so ``stat proc/PID`` fails at once as on Linux.
        """
        self.generation += 1
        event, self._changed = self._changed, trio.Event()
        event.set()
        for h in self._files.values():
            if h.poll_handle is not None and self._stream_ready(h):
                h.poll_handle.notify()
                h.poll_handle = None
        tasks = self.kernel.tasks
        if len(tasks) == len(self._pids) and all(p in tasks for p in self._pids):
            return
        gone = self._pids.difference(tasks)
        self._pids = set(tasks)
        if self._invalidate_entry is not None and self._proc_inode is not None:
            for pid in gone:
                self._invalidate_entry(self._proc_inode, str(pid))

    def close_streams(self) -> None:
        """Unmount is coming: blocked trace_pipe reads return EOF so main() can finish."""
        self._closing = True
        self.kernel_changed()

    @property
    def open_streams(self) -> int:
        """Open trace_pipe files (the runtime lets them close before unmounting)."""
        return sum(1 for h in self._files.values() if h.reader is not None)

    @property
    def open_handles(self) -> int:
        """Open files and directories (tests check that RELEASE drops them)."""
        return len(self._files) + len(self._dirs)

    # -- attributes -------------------------------------------------------------------
    def _node(self, inode: int) -> Node:
        node = self.tree.node_by_inode(inode)
        if node is None:  # e.g. /proc/<pid> of a task that has exited
            raise _err(errno.ENOENT)
        return node

    def _mode(self, node: Node) -> int:
        o = self._attrs.get(node.inode)
        return o.mode if o is not None and o.mode is not None else node.mode

    def attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        """``stat`` of a node: mode and size from its row, owner from the tree."""
        e = pyfuse3.EntryAttributes()
        e.st_ino = node.inode
        e.generation = 0
        e.entry_timeout = ATTR_TIMEOUT
        e.attr_timeout = ATTR_TIMEOUT
        if node.is_dir and node.pid is not None and node.name.isdigit():
            # proc/PID and task/TID: procfs revalidates these dentries on every walk
            # (pid_revalidate), so a task that exits is gone for the next stat at once.
            # The invalidation sent on exit (kernel_changed) runs in pyfuse3's helper
            # thread and may arrive after the reply to the write that ended the task.
            e.entry_timeout = 0
        if node.is_dir:
            e.st_mode = stat.S_IFDIR | self._mode(node)
            e.st_nlink = 2
            e.st_size = 0
        else:
            assert node.spec is not None
            e.st_mode = stat.S_IFREG | self._mode(node)
            e.st_nlink = 1
            # 4096 for sysfs attributes, 0 for procfs files, as the real kernel reports;
            # direct_io makes reads independent of it (notes §1.4).
            e.st_size = node.spec.size
        uid, gid = self.tree.owner(node)
        e.st_blksize = 4096
        e.st_blocks = 0
        t = self.mount_time_ns
        o = self._attrs.get(node.inode)
        if o is not None:
            uid = o.uid if o.uid is not None else uid
            gid = o.gid if o.gid is not None else gid
            e.st_atime_ns = o.atime_ns if o.atime_ns is not None else t
            e.st_mtime_ns = o.mtime_ns if o.mtime_ns is not None else t
            e.st_ctime_ns = o.ctime_ns if o.ctime_ns is not None else t
        else:
            e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = t
        e.st_uid = uid
        e.st_gid = gid
        return e

    def _touch(self, node: Node) -> None:
        """mtime = ctime = now: what kernfs_iop_setattr does for O_TRUNC and truncate."""
        now = self._clock_ns()
        o = self._attrs.setdefault(node.inode, _AttrOverride())
        o.mtime_ns = o.ctime_ns = now

    @staticmethod
    def _is_procfs(node: Node) -> bool:
        return bool(node.path) and node.path[0] == PROCFS_TOP

    # -- namespace --------------------------------------------------------------------
    @_handler
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        node = self.tree.child(parent_inode, os.fsdecode(name))
        if node is None:
            # Not cached as a negative entry: a pid may appear at any moment.
            raise _err(errno.ENOENT)
        return self.attributes(node)

    async def forget(self, inode_list: Any) -> None:
        # Inode numbers are derived from the table (kfs.tree), so there is nothing to
        # free.  forget() must never raise, not even FUSEError (notes §1.3).
        return None

    @_handler
    async def getattr(
        self, inode: int, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        return self.attributes(self._node(inode))

    @_handler
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext | None = None,
    ) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        # proc_setattr: ATTR_MODE -> EPERM; /proc/<pid> refuses chown too [verified on
        # 6.18].  kernfs_iop_setattr keeps the new mode and owner.
        if self._is_procfs(node) and (
            fields.update_mode or fields.update_uid or fields.update_gid
        ):
            raise _err(errno.EPERM)
        o = self._attrs.setdefault(node.inode, _AttrOverride())
        if fields.update_mode:
            o.mode = stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            o.uid = attr.st_uid
        if fields.update_gid:
            o.gid = attr.st_gid
        if fields.update_size:
            if node.is_dir:
                raise _err(errno.EISDIR)
            # truncate/ftruncate is accepted and changes no value (spec §1.1), also on a
            # 0444 attribute when root asks: the live kernel let root truncate
            # pages_shared, and for others the kernel's DAC check refuses it before we
            # are asked.  Only a row with a truncate action (tracefs `trace`) acts.
            assert node.spec is not None
            if node.spec.truncate is not None and attr.st_size == 0:
                node.spec.truncate(self.kernel, node.pid)
            self._touch(node)
        if fields.update_atime:
            o.atime_ns = attr.st_atime_ns
        if fields.update_mtime:
            o.mtime_ns = attr.st_mtime_ns
        if fields.update_ctime:
            o.ctime_ns = attr.st_ctime_ns
        elif fields.update_mode or fields.update_uid or fields.update_gid:
            o.ctime_ns = self._clock_ns()
        return self.attributes(node)

    async def _refuse_new_name(self, parent_inode: int, name: bytes, *, regular: bool) -> None:
        """mkdir/create/mknod/symlink/link of a new name: the errno of the live kernel."""
        parent = self._node(parent_inode)
        if not parent.is_dir:
            raise _err(errno.ENOTDIR)
        if self.tree.child(parent_inode, os.fsdecode(name)) is not None:
            raise _err(errno.EEXIST)
        if self._is_procfs(parent):
            raise _err(errno.ENOENT)  # procfs lookups fail for unknown names
        # No ->create in kernfs: vfs_create answers EACCES; no ->mkdir/->mknod/
        # ->symlink/->link: EPERM.
        raise _err(errno.EACCES if regular else errno.EPERM)

    async def _refuse_remove(self, parent_inode: int, name: bytes, *, want_dir: bool) -> None:
        node = self.tree.child(parent_inode, os.fsdecode(name))
        if node is None:
            raise _err(errno.ENOENT)
        if want_dir and not node.is_dir:
            raise _err(errno.ENOTDIR)
        if not want_dir and node.is_dir:
            raise _err(errno.EISDIR)
        raise _err(errno.EPERM)

    @_handler
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any = None) -> Any:
        await self._refuse_new_name(parent_inode, name, regular=False)

    @_handler
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any = None
    ) -> Any:
        await self._refuse_new_name(parent_inode, name, regular=stat.S_ISREG(mode))

    @_handler
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any = None
    ) -> Any:
        await self._refuse_new_name(parent_inode, name, regular=True)

    @_handler
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any = None) -> Any:
        await self._refuse_new_name(parent_inode, name, regular=False)

    @_handler
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any = None
    ) -> Any:
        self._node(inode)
        await self._refuse_new_name(new_parent_inode, new_name, regular=False)

    @_handler
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any = None) -> None:
        await self._refuse_remove(parent_inode, name, want_dir=False)

    @_handler
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any = None) -> None:
        await self._refuse_remove(parent_inode, name, want_dir=True)

    @_handler
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: Any = None,
    ) -> None:
        if self.tree.child(parent_inode_old, os.fsdecode(name_old)) is None:
            raise _err(errno.ENOENT)
        new_parent = self._node(parent_inode_new)
        target = self.tree.child(parent_inode_new, os.fsdecode(name_new))
        if target is None and self._is_procfs(new_parent):
            raise _err(errno.ENOENT)  # the lookup of the new name fails first on procfs
        raise _err(errno.EPERM)  # kernfs_iop_rename without a rename op

    @_handler
    async def readlink(self, inode: int, ctx: Any = None) -> bytes:
        self._node(inode)
        raise _err(errno.EINVAL)  # there are no symlinks

    # -- directories ------------------------------------------------------------------
    @_handler
    async def opendir(self, inode: int, ctx: Any = None) -> int:
        node = self._node(inode)
        if not node.is_dir:
            raise _err(errno.ENOTDIR)
        fh = next(self._next_fh)
        self._dirs[fh] = _DirHandle(node)
        return fh

    @_handler
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        h = self._dirs.get(fh)
        if h is None:
            raise _err(errno.EBADF)
        if start_id == 0:
            # "." and ".." first, as sysfs and procfs list them (`ls -a`).
            h.entries = [".", "..", *self.tree.listdir(h.node.path)]
        for index in range(start_id, len(h.entries)):
            name = h.entries[index]
            if index < 2:
                node = self.tree.child(h.node.inode, name)
            else:
                node = self.tree.lookup((*h.node.path, name))
            if node is None:  # a task exited since the listing was taken: skip it
                continue
            attrs = self.attributes(node)
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attrs, index + 1):
                break

    @_handler
    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    @_handler
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None

    # -- files ------------------------------------------------------------------------
    @_handler
    async def open(self, inode: int, flags: int, ctx: Any = None) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if node.is_dir:
            raise _err(errno.EISDIR)
        spec = node.spec
        assert spec is not None
        accmode = flags & os.O_ACCMODE
        readable = accmode in (os.O_RDONLY, os.O_RDWR)
        writable = accmode in (os.O_WRONLY, os.O_RDWR)
        mode = self._mode(node)
        # kernfs_fop_open: a write-open needs a store method and a write bit, a read-open
        # a show method and a read bit -- checked for root too, which the kernel's
        # default_permissions check lets through (notes §1.5, spec §1.1).
        if writable and (spec.store is None or not mode & 0o222):
            raise _err(errno.EACCES)
        if readable and ((spec.show is None and not spec.stream) or not mode & 0o444):
            raise _err(errno.EACCES)
        caller = Caller(ctx.uid, ctx.gid, ctx.pid) if ctx is not None else ROOT
        if readable:
            self.tree.check_open(node, caller)  # proc_mem_open's ptrace check: EACCES
        if flags & os.O_TRUNC:
            # `echo 2 > run` arrives as OPEN(O_WRONLY|O_TRUNC) and no SETATTR (atomic
            # O_TRUNC): accepted, the value stays, mtime/ctime move (spec §1.1).
            if spec.truncate is not None:
                spec.truncate(self.kernel, node.pid)
            self._touch(node)
        h = _FileHandle(node, readable, writable, opener=int(getattr(ctx, "pid", 0) or 0))
        if spec.stream:
            h.reader = TraceReader()
            h.nonblock = bool(flags & os.O_NONBLOCK)
        elif readable:
            # One rendering per open, served at every offset: a later READ never sees
            # newer, longer content than the first one (seq_file, LXCFS).
            try:
                steps = self.tree.render_steps(node, caller)
                if steps is None:
                    h.data = bytes(self.tree.render(node, caller) or b"")
                else:
                    h.data = bytes(await self._render_in_pieces(steps))
            except KsmError as e:
                if spec.ptrace != "read":
                    raise
                h.read_errno = e.errno  # do_io_accounting: open succeeds, read(2) fails
        fh = next(self._next_fh)
        self._files[fh] = h
        # direct_io: every READ reaches us (no page cache, st_size ignored); trace_pipe
        # is a stream (no offsets), like the kernel's stream_open.
        return pyfuse3.FileInfo(
            fh=fh, direct_io=True, keep_cache=False, nonseekable=bool(spec.stream)
        )

    @staticmethod
    async def _render_in_pieces(steps: Generator[None, None, bytes]) -> bytes:
        """Drive a render in pieces (``Tree.render_steps``, smaps of a 4M-page VMA): a
        trio checkpoint after each piece lets other requests and ksmd's slices run, as
        the kernel's page walk lets ksmd run between page tables (kfs/smaps.py says
        what the result then is)."""
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            await trio.lowlevel.checkpoint()

    def _handle(self, fh: int) -> _FileHandle:
        h = self._files.get(fh)
        if h is None:
            raise _err(errno.EBADF)
        return h

    @_handler
    async def read(self, fh: int, off: int, size: int) -> bytes:
        h = self._handle(fh)
        if not h.readable:
            raise _err(errno.EBADF)
        if h.read_errno:
            raise _err(h.read_errno)
        if h.reader is None:
            # Honour the offset and answer b"" at or past the end: with direct_io the
            # kernel keeps asking until it gets 0 bytes (python-fuse #64).
            return h.data[off : off + size]
        return await self._read_stream(h, size)

    async def _read_stream(self, h: _FileHandle, size: int) -> bytes:
        """trace_pipe: consume records; block (in trio) until there are some."""
        assert h.reader is not None
        while True:
            if not h.pending:
                # Whole lines up to `size` are consumed; one longer line is kept here
                # and handed out over several READs.
                h.pending = read_stream(self.kernel, h.reader, max_bytes=size)
            if h.pending:
                out, h.pending = h.pending[:size], h.pending[size:]
                return out
            if self._closing:
                return b""
            if h.nonblock:
                raise _err(errno.EAGAIN)
            with trio.move_on_after(STREAM_POLL_SECONDS):
                await self._changed.wait()

    def _stream_ready(self, h: _FileHandle) -> bool:
        assert h.reader is not None
        records = self.kernel.trace.records
        return bool(
            h.pending or self._closing or (records and records[-1].seq > h.reader.last_seq)
        )

    @_handler
    async def poll(self, inode: int, fh: int, poll_handle: Any, ctx: Any = None) -> int:
        h = self._handle(fh)
        if h.reader is None:
            # Attribute files are always ready, like kernfs_generic_poll's
            # DEFAULT_POLLMASK (KSM never calls sysfs_notify, so no POLLPRI wake-ups).
            return DEFAULT_POLLMASK
        if self._stream_ready(h):
            return select.POLLIN | select.POLLRDNORM
        # trace_pipe without records: remember the kernel's handle and notify it from
        # kernel_changed() when ksmd emits some (tracing_poll_pipe).
        if poll_handle is not None:
            h.poll_handle = poll_handle
        return 0

    @_handler
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self._handle(fh)
        if not h.writable:
            raise _err(errno.EBADF)
        node = h.node
        spec = node.spec
        assert spec is not None and spec.store is not None
        if not buf:
            return 0  # kernfs: an empty write returns 0 and never reaches store()
        data = bytes(buf[:WRITE_MAX])
        if self._before_store is not None:
            await self._before_store()  # the runtime waits for ksmd's batch (its mutex)
        try:
            # A store runs in the writer's context (`echo 2 > run` unmerges as that
            # process: its trace lines show its comm-pid, not ksmd's).  WRITE requests
            # carry no context in pyfuse3, so the opener stands for the writer.
            with self.kernel.trace.running(h.opener, _comm_of(h.opener)):
                n = spec.store(self.kernel, node.pid, data)
        except KsmError as e:
            if node.path and node.path[0] == "ksmfs":
                # A refused control command is worth a line in the server log: the
                # writer only sees the errno.
                log.warning("%s: %s", "/".join(node.path), e)
            else:
                log.debug("%s: %s", "/".join(node.path), e)
            raise
        finally:
            # A failed store may still have changed state (run=2 stopping half-way).
            self.kernel_changed()
        if self._on_store is not None:
            self._on_store(node, data)
        return len(data) if n is None else int(n)

    @_handler
    async def flush(self, fh: int) -> None:
        # Deliberately ENOSYS: the kernel then stops sending FLUSH for this connection
        # (fuse_flush sets fc->no_flush), saving one round trip on every close().
        raise _err(errno.ENOSYS)

    @_handler
    async def release(self, fh: int) -> None:
        self._files.pop(fh, None)

    @_handler
    async def fsync(self, fh: int, datasync: bool) -> None:
        return None

    # -- misc -------------------------------------------------------------------------
    @_handler
    async def statfs(self, ctx: Any = None) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = s.f_bfree = s.f_bavail = 0
        s.f_files = s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    @_handler
    async def access(self, inode: int, mode: int, ctx: Any = None) -> bool:
        # Only asked without default_permissions, which ksmfs always sets.
        self._node(inode)
        return True

    # Extended attributes, as on sysfs [verified on 6.18]: none are listed and none can
    # be set.  The one exception is GENERATION_XATTR, which only ksmfs-aware readers ask
    # for by name.
    @_handler
    async def getxattr(self, inode: int, name: bytes, ctx: Any = None) -> bytes:
        self._node(inode)
        if name == GENERATION_XATTR:
            return b"%d" % self.generation
        raise _err(pyfuse3.ENOATTR)

    @_handler
    async def listxattr(self, inode: int, ctx: Any = None) -> list[bytes]:
        self._node(inode)
        return []

    @_handler
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any = None) -> None:
        self._node(inode)
        raise _err(errno.ENOTSUP)

    @_handler
    async def removexattr(self, inode: int, name: bytes, ctx: Any = None) -> None:
        self._node(inode)
        raise _err(errno.ENOTSUP)

"""The FUSE Operations called directly (no mount): every rule of the adapter, generated
from the kfs table, with the errnos of the live 6.18 kernel."""

from __future__ import annotations

import errno
import logging
import os
import select
import stat

import numpy as np
import pyfuse3
import pytest
import trio
import trio.testing
from fuseapi_support import Ctx, Fields

from ksmfs.fuse.ops import WRITE_MAX, KsmfsOperations
from ksmfs.kernel import KsmError
from ksmfs.kfs import ROOT_INODE, FileSpec, Node
from ksmfs.linux import SUPPORTED_VERSIONS

KSM = ("sys", "kernel", "mm", "ksm")


# -- helpers ---------------------------------------------------------------------------
async def walk(ops: KsmfsOperations, path: tuple[str, ...]) -> pyfuse3.EntryAttributes:
    """LOOKUP component by component from the root, as the kernel does."""
    attrs = await ops.getattr(ROOT_INODE, Ctx())
    for name in path:
        attrs = await ops.lookup(attrs.st_ino, name.encode(), Ctx())
    return attrs


async def ino(ops: KsmfsOperations, *path: str) -> int:
    return (await walk(ops, path)).st_ino


async def read_all(ops: KsmfsOperations, inode: int, chunk: int = 4096) -> bytes:
    fi = await ops.open(inode, os.O_RDONLY, Ctx())
    try:
        out, off = b"", 0
        while True:
            part = await ops.read(fi.fh, off, chunk)
            if not part:
                return out
            out += part
            off += len(part)
    finally:
        await ops.release(fi.fh)


async def write_once(ops: KsmfsOperations, inode: int, data: bytes, flags: int = 0) -> int:
    fi = await ops.open(inode, os.O_WRONLY | flags, Ctx())
    try:
        return await ops.write(fi.fh, 0, data)
    finally:
        await ops.release(fi.fh)


async def errno_of(coro) -> int | None:
    try:
        await coro
    except pyfuse3.FUSEError as e:
        return e.errno
    return None


class Listing:
    """Collects readdir_reply() calls; ``room`` limits how many one READDIR accepts."""

    def __init__(self, room: int = 10**9) -> None:
        self.room = room
        self.entries: list[tuple[str, int, int]] = []  # (name, st_ino, next_id)

    def reply(self, token, name: bytes, attrs, next_id: int) -> bool:
        if token.room == 0:
            return False
        token.room -= 1
        self.entries.append((os.fsdecode(name), attrs.st_ino, next_id))
        return True


class Token:
    def __init__(self, room: int) -> None:
        self.room = room


@pytest.fixture
def listing(monkeypatch) -> Listing:
    lst = Listing()
    # pyfuse3.readdir_reply needs a kernel request; record the calls instead (s3ql t3).
    monkeypatch.setattr(pyfuse3, "readdir_reply", lst.reply)
    return lst


async def list_dir(ops, inode: int, listing: Listing, room: int = 10**9) -> list[str]:
    fh = await ops.opendir(inode, Ctx())
    try:
        listing.entries.clear()
        start = 0
        while True:
            before = len(listing.entries)
            await ops.readdir(fh, start, Token(room))
            if len(listing.entries) == before:
                return [e[0] for e in listing.entries]
            start = listing.entries[-1][2]
    finally:
        await ops.releasedir(fh)


# -- attributes and lookup -------------------------------------------------------------
async def test_every_file_of_the_table_resolves_with_its_rows_attributes(ops, kernel):
    """LOOKUP of every file of the table gives its inode, mode, size and owner."""
    kernel.spawn("worker", uid=1000)
    nodes = ops.tree.iter_files()
    assert nodes
    for node in nodes:
        attrs = await walk(ops, node.path)
        assert attrs.st_ino == node.inode
        assert attrs.st_mode == stat.S_IFREG | node.spec.mode, node.path
        assert attrs.st_size == node.spec.size, node.path
        assert (attrs.st_uid, attrs.st_gid) == ops.tree.owner(node)
        assert attrs.st_mtime_ns == ops.mount_time_ns
        again = await ops.getattr(node.inode, Ctx())
        assert (again.st_ino, again.st_mode) == (attrs.st_ino, attrs.st_mode)


async def test_sysfs_attributes_look_like_the_real_ones(ops):
    """/sys/kernel/mm/ksm: 0644 knobs, 0444 counters, st_size 4096, root-owned."""
    run = await walk(ops, (*KSM, "run"))
    shared = await walk(ops, (*KSM, "pages_shared"))
    assert stat.filemode(run.st_mode) == "-rw-r--r--"
    assert stat.filemode(shared.st_mode) == "-r--r--r--"
    assert run.st_size == shared.st_size == 4096
    assert (run.st_uid, run.st_gid) == (0, 0)
    d = await walk(ops, KSM)
    assert stat.filemode(d.st_mode) == "drwxr-xr-x"


async def test_unknown_names_and_dot_entries(ops):
    """Unknown names are ENOENT; '.' and '..' resolve to the directory and its parent."""
    ksm = await ino(ops, *KSM)
    mm = await ino(ops, *KSM[:-1])
    assert await errno_of(ops.lookup(ksm, b"no_such_file", Ctx())) == errno.ENOENT
    assert (await ops.lookup(ksm, b".", Ctx())).st_ino == ksm
    assert (await ops.lookup(ksm, b"..", Ctx())).st_ino == mm
    assert await errno_of(ops.getattr(987654321, Ctx())) == errno.ENOENT


async def test_proc_pid_files_belong_to_the_task_and_vanish_on_exit(ops, kernel, invalidated):
    """/proc/PID is owned by the task's uid; after exit it is ENOENT and its cached
    dentry is invalidated."""
    pid = kernel.spawn("worker", uid=1000)
    ops.kernel_changed()
    d = await walk(ops, ("proc", str(pid)))
    assert stat.filemode(d.st_mode) == "dr-xr-xr-x"
    assert d.st_uid == 1000
    stat_file = await walk(ops, ("proc", str(pid), "ksm_stat"))
    assert stat.filemode(stat_file.st_mode) == "-r--------"
    assert stat_file.st_uid == 1000 and stat_file.st_size == 0
    kernel.exit(pid)
    ops.kernel_changed()
    proc = await ino(ops, "proc")
    assert (proc, str(pid)) in invalidated
    assert await errno_of(ops.getattr(d.st_ino, Ctx())) == errno.ENOENT
    assert await errno_of(ops.lookup(proc, str(pid).encode(), Ctx())) == errno.ENOENT
    assert await errno_of(ops.open(stat_file.st_ino, os.O_RDONLY, Ctx())) == errno.ENOENT


# -- readdir ---------------------------------------------------------------------------
async def test_readdir_lists_every_directory_of_the_tree(ops, kernel, listing):
    """READDIR of each directory returns the table's names in the table's order."""
    kernel.spawn("worker")
    dirs = {n.path[:i] for n in ops.tree.iter_files() for i in range(len(n.path))}
    for path in sorted(dirs):
        names = await list_dir(ops, await ino(ops, *path), listing)
        assert names == [".", "..", *ops.tree.listdir(path)], path
        dot, dotdot = listing.entries[0][1], listing.entries[1][1]
        assert dot == await ino(ops, *path)
        assert dotdot == await ino(ops, *path[:-1])


async def test_readdir_resumes_without_skips_or_repeats_while_tasks_come_and_go(
    ops, kernel, listing
):
    """A listing read 3 entries at a time neither skips nor repeats an entry when tasks
    are spawned and exit between two READDIRs (next_id is stable)."""
    pids = [kernel.spawn(f"t{i}") for i in range(12)]
    proc = await ino(ops, "proc")
    fh = await ops.opendir(proc, Ctx())
    expected = [".", "..", *ops.tree.listdir(("proc",))]
    seen: list[str] = []
    start, rounds = 0, 0
    while True:
        listing.entries.clear()
        await ops.readdir(fh, start, Token(3))
        if not listing.entries:
            break
        seen += [e[0] for e in listing.entries]
        start = listing.entries[-1][2]
        rounds += 1
        if rounds == 2:
            kernel.spawn("late")  # appears after the listing began: not in this pass
            kernel.exit(pids[-1])  # vanished before its turn: skipped, not an error
    await ops.releasedir(fh)
    assert len(seen) == len(set(seen))
    assert seen == [n for n in expected if n != str(pids[-1])]


# -- reads -----------------------------------------------------------------------------
async def test_every_readable_file_reads_its_show_output(ops, kernel):
    """Reading any readable file gives exactly show(kernel, pid), in any chunk size."""
    kernel.spawn("worker")
    for node in ops.tree.iter_files():
        spec = node.spec
        if spec.show is None or spec.stream or not spec.mode & 0o444:
            continue
        want = spec.show(kernel, node.pid)
        assert await read_all(ops, node.inode) == want, node.path
        assert await read_all(ops, node.inode, chunk=3) == want, node.path


async def test_open_snapshots_content_and_reads_honour_the_offset(ops, kernel):
    """An open file keeps the content of its open; offsets slice it; EOF is b''."""
    inode = await ino(ops, *KSM, "pages_to_scan")
    fi = await ops.open(inode, os.O_RDONLY, Ctx())
    assert fi.direct_io and not fi.keep_cache
    assert await write_once(ops, inode, b"250\n") == 4
    assert await ops.read(fi.fh, 0, 4096) == b"100\n"  # the snapshot of the open
    assert await ops.read(fi.fh, 1, 2) == b"00"
    assert await ops.read(fi.fh, 4, 4096) == b""
    assert await ops.read(fi.fh, 10_000, 4096) == b""
    await ops.release(fi.fh)
    assert await read_all(ops, inode) == b"250\n"
    assert ops.open_handles == 0


async def test_each_request_says_whether_its_caller_has_more_to_ask(ops):
    """``follow_up`` (how long the pacer waits for the caller's next request before the
    next ksmd slice): some after LOOKUP, OPEN and a READ with data, none after a READ at
    EOF, a WRITE or a RELEASE, whose callers wait for nothing more."""
    inode = await ino(ops, *KSM, "pages_to_scan")
    assert ops.follow_up > 0  # the LOOKUPs of the walk
    fi = await ops.open(inode, os.O_RDONLY, Ctx())
    assert ops.follow_up > 0
    assert await ops.read(fi.fh, 0, 4096) == b"100\n"
    assert ops.follow_up > 0  # cat reads again, or the caller closes
    assert await ops.read(fi.fh, 4, 4096) == b""
    assert ops.follow_up == 0
    await ops.getattr(inode, Ctx())
    assert ops.follow_up > 0
    await ops.release(fi.fh)
    assert ops.follow_up == 0
    assert await write_once(ops, inode, b"250\n") == 4
    assert ops.follow_up == 0


async def test_write_only_and_read_only_opens_are_checked_even_for_root(ops):
    """A write-open of a file without store, or a read-open of one without show, is
    EACCES for root too (kernfs_fop_open)."""
    checked = 0
    for node in ops.tree.iter_files():
        spec = node.spec
        if spec.store is None:
            for flags in (os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_TRUNC):
                assert await errno_of(ops.open(node.inode, flags, Ctx())) == errno.EACCES
            checked += 1
        if spec.show is None and not spec.stream:
            assert await errno_of(ops.open(node.inode, os.O_RDONLY, Ctx())) == errno.EACCES
    assert checked > 10
    assert ops.open_handles == 0


# -- writes ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "data", "code"),
    [
        ("run", b"abc\n", errno.EINVAL),
        ("run", b"3\n", errno.EINVAL),
        ("run", b"\n", errno.EINVAL),
        ("run", b"-1", errno.EINVAL),
        ("pages_to_scan", b" 5", errno.EINVAL),
        ("pages_to_scan", b"4294967296", errno.EINVAL),
        ("max_page_sharing", b"2147483648", errno.ERANGE),
        ("max_page_sharing", b"1", errno.EINVAL),
        ("merge_across_nodes", b"18446744073709551616", errno.ERANGE),
        ("use_zero_pages", b"x", errno.EINVAL),
        ("advisor_mode", b"NONE", errno.EINVAL),
    ],
)
async def test_invalid_writes_fail_with_the_kernels_errno_and_change_nothing(
    ops, kernel, name, data, code
):
    """A refused store becomes the kernel's errno; the value stays."""
    inode = await ino(ops, *KSM, name)
    before = await read_all(ops, inode)
    assert await errno_of(write_once(ops, inode, data)) == code
    assert await read_all(ops, inode) == before


async def test_write_returns_what_the_store_consumed(ops, kernel):
    """Each WRITE is one store: empty -> 0, NUL ends the value, 4096-byte cut."""
    inode = await ino(ops, *KSM, "pages_to_scan")
    assert await write_once(ops, inode, b"") == 0
    assert await write_once(ops, inode, b"100\x00zz") == 6
    assert kernel.ksm.pages_to_scan == 100
    assert await write_once(ops, inode, b"0" * 4095 + b"123") == WRITE_MAX
    assert kernel.ksm.pages_to_scan == 1
    assert await write_once(ops, inode, b"0" * 5000) == WRITE_MAX
    assert kernel.ksm.pages_to_scan == 0


async def test_the_offset_of_a_write_is_ignored(ops, kernel):
    """Two writes on one fd are two whole stores (kernfs ignores the position)."""
    inode = await ino(ops, *KSM, "sleep_millisecs")
    fi = await ops.open(inode, os.O_WRONLY, Ctx())
    assert await ops.write(fi.fh, 0, b"30") == 2
    assert await ops.write(fi.fh, 2, b"40") == 2
    await ops.release(fi.fh)
    assert kernel.ksm.sleep_millisecs == 40


async def test_successful_stores_are_reported_to_the_runtime(ops, stores):
    """on_store sees each successful store (the runtime wakes ksmd with it)."""
    inode = await ino(ops, *KSM, "run")
    await write_once(ops, inode, b"1\n")
    await errno_of(write_once(ops, inode, b"9\n"))
    assert stores == [((*KSM, "run"), b"1\n")]


async def test_run_2_unmerges_before_the_write_returns(ops, kernel):
    """`echo 2 > run` is synchronous: when write() returns, nothing is shared."""
    image = np.arange(1, 33, dtype=np.uint64)  # the same contents in every process
    for i in range(3):
        pid = kernel.spawn(f"vm{i}")
        addr = kernel.mmap(pid, 32)
        kernel.write(pid, addr, image)
        kernel.madvise(pid, addr, 32, 12)
    run = await ino(ops, *KSM, "run")
    await write_once(ops, run, b"1\n")
    for _ in range(20):
        kernel.ksm_do_scan(1000)
    assert kernel.ksm.pages_sharing > 0
    assert await write_once(ops, run, b"2\n", os.O_TRUNC) == 2
    assert kernel.ksm.pages_shared == kernel.ksm.pages_sharing == 0
    assert await read_all(ops, await ino(ops, *KSM, "pages_sharing")) == b"0\n"


async def test_a_store_runs_in_the_writers_context(ops, kernel):
    """run_store()'s unmerge is traced as the process that wrote run (FUSE context pid of
    the open; its comm read from /proc), not as ksmd."""
    image = np.arange(1, 9, dtype=np.uint64)
    for i in range(2):
        pid = kernel.spawn(f"vm{i}")
        addr = kernel.mmap(pid, 8)
        kernel.write(pid, addr, image)
        kernel.madvise(pid, addr, 8, 12)
    kernel.trace.enabled = {"ksm_remove_ksm_page", "ksm_start_scan"}
    run = await ino(ops, *KSM, "run")
    await write_once(ops, run, b"1\n")
    for _ in range(3):
        kernel.ksm_do_scan(1000)
    assert {r.comm for r in kernel.trace.records} == {"ksmd"}
    kernel.trace.clear()
    fi = await ops.open(run, os.O_WRONLY, Ctx(pid=os.getpid()))
    try:
        await ops.write(fi.fh, 0, b"2\n")
    finally:
        await ops.release(fi.fh)
    with open("/proc/self/comm") as f:
        me = f.read().strip()
    assert len(kernel.trace.records) == 8
    assert {(r.pid, r.comm) for r in kernel.trace.records} == {(os.getpid(), me)}
    assert kernel.trace.current is None


async def test_control_file_errors_are_logged_once(ops, caplog):
    """A refused control command fails with its errno and leaves one warning line."""
    control = await ino(ops, "ksmfs", "control")
    assert await errno_of(write_once(ops, control, b"frobnicate 1\n")) == errno.EINVAL
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "frobnicate" in warnings[0].getMessage()


# -- truncate, setattr, timestamps -----------------------------------------------------
async def test_o_trunc_open_moves_mtime_but_a_plain_write_does_not(ops, kernel, clock):
    """O_TRUNC (shell `>`) sets mtime/ctime to now and keeps the value; write() alone
    leaves the times (spec §1.1)."""
    inode = await ino(ops, *KSM, "pages_to_scan")
    clock.ns += 5 * 10**9
    await write_once(ops, inode, b"300\n")
    assert (await ops.getattr(inode, Ctx())).st_mtime_ns == ops.mount_time_ns
    clock.ns += 5 * 10**9
    fi = await ops.open(inode, os.O_WRONLY | os.O_TRUNC, Ctx())
    await ops.release(fi.fh)
    attrs = await ops.getattr(inode, Ctx())
    assert attrs.st_mtime_ns == attrs.st_ctime_ns == clock.ns
    assert kernel.ksm.pages_to_scan == 300


async def test_truncate_is_accepted_and_ignored(ops, kernel, clock):
    """setattr(size=0) changes no value, on a knob and -- for root, as on the live
    kernel -- on a read-only counter; it moves mtime."""
    for name in ("run", "pages_shared"):
        inode = await ino(ops, *KSM, name)
        before = await read_all(ops, inode)
        clock.ns += 10**9
        attr = pyfuse3.EntryAttributes()
        attr.st_size = 0
        out = await ops.setattr(inode, attr, Fields(update_size=True), None, Ctx())
        assert out.st_size == 4096 and out.st_mtime_ns == clock.ns
        assert await read_all(ops, inode) == before


async def test_chmod_is_kept_on_sysfs_and_refused_on_procfs(ops, kernel):
    """kernfs keeps a new mode (and then enforces it in open); procfs says EPERM."""
    inode = await ino(ops, *KSM, "run")
    attr = pyfuse3.EntryAttributes()
    attr.st_mode = stat.S_IFREG | 0o444
    out = await ops.setattr(inode, attr, Fields(update_mode=True), None, Ctx())
    assert stat.S_IMODE(out.st_mode) == 0o444
    assert await errno_of(ops.open(inode, os.O_WRONLY, Ctx())) == errno.EACCES
    pid = kernel.spawn("worker")
    stat_ino = await ino(ops, "proc", str(pid), "ksm_stat")
    code = await errno_of(ops.setattr(stat_ino, attr, Fields(update_mode=True), None, Ctx()))
    assert code == errno.EPERM


# -- namespace changes -----------------------------------------------------------------
KERNFS, PROCFS = "kernfs", "procfs"


@pytest.mark.parametrize(
    ("where", "op", "code"),
    [
        (KERNFS, "mkdir", errno.EPERM),
        (KERNFS, "create", errno.EACCES),
        (KERNFS, "mknod_reg", errno.EACCES),
        (KERNFS, "mknod_fifo", errno.EPERM),
        (KERNFS, "symlink", errno.EPERM),
        (KERNFS, "link", errno.EPERM),
        (KERNFS, "unlink", errno.EPERM),
        (KERNFS, "unlink_missing", errno.ENOENT),
        (KERNFS, "rmdir", errno.EPERM),
        (KERNFS, "rename", errno.EPERM),
        (KERNFS, "rename_missing", errno.ENOENT),
        (PROCFS, "mkdir", errno.ENOENT),
        (PROCFS, "create", errno.ENOENT),
        (PROCFS, "symlink", errno.ENOENT),
        (PROCFS, "link", errno.ENOENT),
        (PROCFS, "unlink", errno.EPERM),
        (PROCFS, "rmdir", errno.EPERM),
        (PROCFS, "rename", errno.ENOENT),
    ],
)
async def test_namespace_changes_fail_like_on_the_live_kernel(ops, kernel, where, op, code):
    """mkdir, create, rm, ... give the errno measured on /sys/kernel/mm/ksm and /proc/1."""
    pid = kernel.spawn("worker")
    if where == KERNFS:
        parent = await ino(ops, *KSM)
        existing, existing_dir = b"run", (await ino(ops, *KSM[:-1]), b"ksm")
    else:
        parent = await ino(ops, "proc", str(pid))
        existing, existing_dir = b"ksm_stat", (await ino(ops, "proc"), str(pid).encode())
    file_ino = (await ops.lookup(parent, existing, Ctx())).st_ino
    calls = {
        "mkdir": lambda: ops.mkdir(parent, b"new", 0o755, Ctx()),
        "create": lambda: ops.create(parent, b"new", 0o644, os.O_WRONLY, Ctx()),
        "mknod_reg": lambda: ops.mknod(parent, b"new", stat.S_IFREG | 0o644, 0, Ctx()),
        "mknod_fifo": lambda: ops.mknod(parent, b"new", stat.S_IFIFO | 0o644, 0, Ctx()),
        "symlink": lambda: ops.symlink(parent, b"new", b"run", Ctx()),
        "link": lambda: ops.link(file_ino, parent, b"new", Ctx()),
        "unlink": lambda: ops.unlink(parent, existing, Ctx()),
        "unlink_missing": lambda: ops.unlink(parent, b"missing", Ctx()),
        "rmdir": lambda: ops.rmdir(existing_dir[0], existing_dir[1], Ctx()),
        "rename": lambda: ops.rename(parent, existing, parent, b"new", 0, Ctx()),
        "rename_missing": lambda: ops.rename(parent, b"missing", parent, b"new", 0, Ctx()),
    }
    assert await errno_of(calls[op]()) == code
    assert ops.tree.lookup(("proc", str(pid))) is not None


# -- error wrapper ---------------------------------------------------------------------
async def test_a_bug_in_a_show_function_is_eio_and_logged_not_a_crash(ops, caplog, monkeypatch):
    """Any exception other than KsmError becomes EIO plus a logged traceback."""

    def broken(kernel, pid):
        raise ValueError("boom")

    real = ops.tree.node_by_inode
    spec = FileSpec("broken", 0o444, 4096, broken, None)
    node = Node(("sys", "broken"), False, spec, None, 424242, 0o444)
    monkeypatch.setattr(ops.tree, "node_by_inode", lambda i: node if i == 424242 else real(i))
    assert await errno_of(ops.open(424242, os.O_RDONLY, Ctx())) == errno.EIO
    assert any("boom" in (r.exc_text or str(r.exc_info)) for r in caplog.records)
    caplog.clear()  # the error line is the expected outcome here
    assert (await ops.getattr(ROOT_INODE, Ctx())).st_ino == ROOT_INODE


async def test_a_kernel_error_keeps_its_errno(ops, monkeypatch):
    """KsmError(errno) from show() reaches the caller as that errno, with no log line."""

    def busy(kernel, pid):
        raise KsmError(errno.EBUSY, "busy")

    spec = FileSpec("busy", 0o444, 4096, busy, None)
    node = Node(("sys", "busy"), False, spec, None, 434343, 0o444)
    real = ops.tree.node_by_inode
    monkeypatch.setattr(ops.tree, "node_by_inode", lambda i: node if i == 434343 else real(i))
    assert await errno_of(ops.open(434343, os.O_RDONLY, Ctx())) == errno.EBUSY


async def test_housekeeping_handlers_never_fail(ops):
    """forget() never raises; flush is ENOSYS on purpose (the kernel stops sending it);
    statfs and xattrs answer like sysfs."""
    await ops.forget([(ROOT_INODE, 1), (99999999, 3)])
    inode = await ino(ops, *KSM, "run")
    fi = await ops.open(inode, os.O_RDONLY, Ctx())
    assert await errno_of(ops.flush(fi.fh)) == errno.ENOSYS
    await ops.release(fi.fh)
    assert (await ops.statfs(Ctx())).f_namemax == 255
    assert await ops.listxattr(inode, Ctx()) == []
    assert await errno_of(ops.getxattr(inode, b"user.x", Ctx())) == pyfuse3.ENOATTR
    assert await errno_of(ops.setxattr(inode, b"user.x", b"1", Ctx())) == errno.ENOTSUP
    assert await errno_of(ops.read(12345, 0, 10)) == errno.EBADF


# -- trace_pipe ------------------------------------------------------------------------
async def enable_ksm_events(ops) -> None:
    enable = await ino(ops, "sys", "kernel", "tracing", "events", "ksm", "enable")
    await write_once(ops, enable, b"1\n")


def merging_kernel(kernel) -> None:
    image = np.arange(1, 17, dtype=np.uint64)
    for i in range(2):
        pid = kernel.spawn(f"vm{i}")
        addr = kernel.mmap(pid, 16)
        kernel.write(pid, addr, image)
        kernel.madvise(pid, addr, 16, 12)


async def test_trace_pipe_read_waits_for_records(ops, kernel):
    """A trace_pipe READ blocks until ksmd emits records, then returns them."""
    merging_kernel(kernel)
    await enable_ksm_events(ops)
    pipe = await ino(ops, "sys", "kernel", "tracing", "trace_pipe")
    fi = await ops.open(pipe, os.O_RDONLY, Ctx())
    assert fi.nonseekable
    got: list[bytes] = []

    async def reader() -> None:
        got.append(await ops.read(fi.fh, 0, 65536))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []  # nothing recorded yet: the read is waiting
        run = await ino(ops, *KSM, "run")
        await write_once(ops, run, b"1\n")
        kernel.ksm_do_scan(100)
        ops.kernel_changed()
    assert b"ksm_start_scan" in got[0]
    await ops.release(fi.fh)


async def test_trace_pipe_nonblocking_and_unmount(ops, kernel):
    """O_NONBLOCK on an empty pipe is EAGAIN; close_streams() ends a blocked read."""
    pipe = await ino(ops, "sys", "kernel", "tracing", "trace_pipe")
    fi = await ops.open(pipe, os.O_RDONLY | os.O_NONBLOCK, Ctx())
    assert await errno_of(ops.read(fi.fh, 0, 4096)) == errno.EAGAIN
    await ops.release(fi.fh)
    fi = await ops.open(pipe, os.O_RDONLY, Ctx())
    got: list[bytes] = []

    async def reader() -> None:
        got.append(await ops.read(fi.fh, 0, 4096))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        ops.close_streams()
    assert got == [b""]


async def test_generation_xattr_changes_with_the_kernel(ops, kernel):
    """user.ksmfs.generation moves on every kernel change and on nothing else."""
    root = ROOT_INODE
    g0 = int(await ops.getxattr(root, b"user.ksmfs.generation", Ctx()))
    await read_all(ops, await ino(ops, *KSM, "pages_shared"))
    assert int(await ops.getxattr(root, b"user.ksmfs.generation", Ctx())) == g0
    await write_once(ops, await ino(ops, *KSM, "sleep_millisecs"), b"30\n")
    g1 = int(await ops.getxattr(root, b"user.ksmfs.generation", Ctx()))
    assert g1 > g0
    ops.kernel_changed()
    assert int(await ops.getxattr(root, b"user.ksmfs.generation", Ctx())) > g1
    assert b"user.ksmfs.generation" not in await ops.listxattr(root, Ctx())


class PollHandle:
    def __init__(self) -> None:
        self.notified = 0

    def notify(self) -> None:
        self.notified += 1


async def test_poll_on_trace_pipe_waits_for_records(ops, kernel):
    """poll(2): attribute files are always ready; trace_pipe is ready once records
    exist, and a stored poll handle is notified when ksmd emits them."""
    pages = await ino(ops, *KSM, "pages_shared")
    fi = await ops.open(pages, os.O_RDONLY, Ctx())
    assert await ops.poll(pages, fi.fh, None, Ctx()) & select.POLLIN
    await ops.release(fi.fh)
    merging_kernel(kernel)
    await enable_ksm_events(ops)
    pipe = await ino(ops, "sys", "kernel", "tracing", "trace_pipe")
    fi = await ops.open(pipe, os.O_RDONLY, Ctx())
    handle = PollHandle()
    assert await ops.poll(pipe, fi.fh, handle, Ctx()) == 0
    ops.kernel_changed()
    assert handle.notified == 0  # nothing recorded yet
    await write_once(ops, await ino(ops, *KSM, "run"), b"1\n")
    kernel.ksm_do_scan(100)
    ops.kernel_changed()
    assert handle.notified == 1
    assert await ops.poll(pipe, fi.fh, None, Ctx()) & select.POLLIN
    assert b"ksm_" in await ops.read(fi.fh, 0, 65536)
    await ops.release(fi.fh)


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
async def test_every_kernel_version_is_served_from_its_own_table(version, listing):
    """Each version's tree (5.15 has no ksm_stat, 6.8 adds the advisor files ...) is
    listed, resolved and read through the same adapter code."""
    from ksmfs.kernel import Kernel
    from ksmfs.kfs import Tree

    kernel = Kernel(version=version)
    kernel.spawn("worker")
    ops = KsmfsOperations(Tree(kernel))
    names = await list_dir(ops, await ino(ops, *KSM), listing)
    assert names[2:] == list(kernel.version.sysfs_files)
    for node in ops.tree.iter_files():
        assert (await walk(ops, node.path)).st_ino == node.inode
        if node.spec.show is not None and not node.spec.stream:
            assert await read_all(ops, node.inode) == node.spec.show(kernel, node.pid)


async def test_ptrace_checks_refuse_at_open_or_at_read_as_the_kernel_does(ops, kernel):
    """smaps refuses another user at OPEN (proc_mem_open); io opens and refuses every
    READ (do_io_accounting); the owner and root read both; ksm_stat has no ptrace check."""
    pid = kernel.spawn("t", uid=1000, gid=1000)
    stranger, owner = Ctx(uid=1000, gid=7), Ctx(uid=1000, gid=1000)
    smaps, io = await ino(ops, "proc", str(pid), "smaps"), await ino(ops, "proc", str(pid), "io")
    assert await errno_of(ops.open(smaps, os.O_RDONLY, stranger)) == errno.EACCES
    fi = await ops.open(io, os.O_RDONLY, stranger)
    assert await errno_of(ops.read(fi.fh, 0, 4096)) == errno.EACCES
    assert await errno_of(ops.read(fi.fh, 0, 4096)) == errno.EACCES
    await ops.release(fi.fh)
    for who in (owner, Ctx()):
        for inode in (smaps, io):
            fi = await ops.open(inode, os.O_RDONLY, who)
            assert await ops.read(fi.fh, 0, 4096) or inode == smaps
            await ops.release(fi.fh)
    ksm_stat = await ino(ops, "proc", str(pid), "ksm_stat")
    fi = await ops.open(ksm_stat, os.O_RDONLY, stranger)
    assert b"ksm_rmap_items" in await ops.read(fi.fh, 0, 4096)
    await ops.release(fi.fh)
    assert ops.open_handles == 0

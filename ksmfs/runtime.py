"""Mount lifecycle: ``serve()`` (trio), ksmd pacing, signals, and ``ksmfs mount/umount``.

``serve(config)`` is the whole life of one mount, in one nursery (notes §1.2, s3ql's
mount.py, hypercorn's ``worker_serve``)::

    pyfuse3.init(ops, mountpoint, options)      # the mount is visible from here on
    nursery: pyfuse3.main()  |  ksmd pacer  |  SIGINT/SIGTERM watcher
    # main() has returned (terminate() or an external unmount) ...
    pyfuse3.close(unmount=True)                  # ... and only then: earlier segfaults

pyfuse3 keeps module-global state, so there is one ``serve()`` per process.

``cmd_mount(args)`` checks everything it can before mounting (one line and exit code 2
per problem), then either serves in the foreground or forks a server and waits on a pipe
until the mount is ready.  The server's pid goes to a runtime file so that
``cmd_umount(args)`` can wait for it to exit after ``fusermount3 -u``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import faulthandler
import hashlib
import logging
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from ksmfs.fuse.ops import KsmfsOperations
    from ksmfs.kernel import Kernel
    from ksmfs.kernel.ksm import ScanBatch
    from ksmfs.kfs import Node

log = logging.getLogger(__name__)

__all__ = [
    "MountConfig",
    "Server",
    "Simulation",
    "Timeline",
    "build_simulation",
    "cmd_mount",
    "cmd_umount",
    "find_mount",
    "fuse_options",
    "serve",
]

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2

KSM_DIR = ("sys", "kernel", "mm", "ksm")
RUN_PATH = (*KSM_DIR, "run")

# ksmd never sleeps less than this much wall time between batches: at a high --speed the
# pacer runs batches back to back instead, with a trio checkpoint between them so that
# FUSE requests never wait longer than one batch (notes §1.8).
MIN_WALL_SLEEP = 0.0005

# At unmount, how long trace_pipe readers that just got EOF may take to close the file.
STREAM_GRACE_SECONDS = 1.0


@dataclass(frozen=True)
class MountConfig:
    """Everything ``serve()`` needs; ``from_args`` maps the CLI's namespace onto it."""

    mountpoint: str
    kernel_version: str = "6.18"
    scenario: str | None = None
    speed: float = 1.0
    allow_other: bool = False
    debug: bool = False
    handle_signals: bool = True

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> MountConfig:
        return cls(
            mountpoint=os.path.realpath(args.mountpoint),
            kernel_version=getattr(args, "kernel", None) or "6.18",
            scenario=getattr(args, "scenario", None),
            speed=float(getattr(args, "speed", 1.0)),
            allow_other=bool(getattr(args, "allow_other", False)),
            debug=bool(getattr(args, "debug", False)),
        )


def fuse_options(config: MountConfig) -> set[str]:
    """The FUSE mount options (notes §1.7): each one is accepted by pyfuse3's low-level
    session; direct_io and the cache timeouts are per reply, never options."""
    options = {
        "fsname=ksmfs",
        "subtype=ksmfs",  # /proc/mounts shows fuse.ksmfs
        # The kernel checks st_mode/st_uid for non-root callers, like on sysfs/procfs.
        "default_permissions",
        # fusermount3 unmounts when the server dies, even by SIGKILL: no stale mounts.
        "auto_unmount",
    }
    if config.allow_other:
        options.add("allow_other")
    return options


# -- building the kernel ----------------------------------------------------------------
class Timeline:
    """Plays a scenario's ``[[step]]`` timeline on a mounted kernel: the steps of
    ``after_full_scans = K`` run right after the K-th full scan that ksmd completes, by
    the schedule ``ksmfs run`` follows (``ksmfs.scenario.driver.steps_due``: none from
    ``max_full_scans`` on), through the same sim backend.

    While ksmd does not run (run 0 or 2, pages_to_scan 0, or no mm registered) further
    full scans are *virtual*, as in the scenario contract: the pacer counts one every
    ``sleep_millisecs`` of simulated time (:meth:`virtual_scan` while ksmd is idle; a
    batch of pages_to_scan 0 in :meth:`after_batch`), so a timeline that stops ksmd and
    starts it again plays on.  A run=2 store resets the kernel's ``full_scans``, so
    completed scans are counted here.  ``on_full_scan(k)``, when set, is called for each
    completed full scan before its steps run (the moment of snapshot k).
    """

    def __init__(self, backend: Any, scenario: Any) -> None:
        self.backend = backend
        self.kernel: Kernel = backend.kernel
        self.scenario = scenario
        self.completed = 0
        self.on_full_scan: Callable[[int], None] | None = None
        self._seen = self.kernel.ksm.full_scans

    def pending(self) -> bool:
        """Steps are left for a later full scan (before the scenario's max_full_scans)."""
        from ksmfs.scenario.driver import steps_pending

        return steps_pending(self.scenario, self.completed)

    def virtual_scan(self) -> None:
        """One full scan while ksmd does not run: its steps happen now."""
        self._complete()

    def _complete(self) -> None:
        from ksmfs.scenario.driver import steps_due

        self.completed += 1
        k = self.completed
        if self.on_full_scan is not None:
            self.on_full_scan(k)
        for step in steps_due(self.scenario, k):
            try:
                self.backend.step(step)
            except Exception as e:  # e.g. its process was ended through ksmfs/control
                log.warning("scenario step after full scan %d (%s) skipped: %s", k, step.kind, e)

    def after_batch(self) -> None:
        ksm = self.kernel.ksm
        full_scans = ksm.full_scans
        if full_scans < self._seen:  # run = 2 reset the counter
            self._seen = full_scans
        if full_scans == self._seen and ksm.would_scan() and ksm.pages_to_scan == 0:
            # ksmd ran a batch of 0 pages: with pages_to_scan 0 a pass never ends, and the
            # contract counts a virtual full scan each time ksmd wakes instead
            self._complete()
            return
        while self._seen < full_scans:
            self._seen += 1
            self._complete()


@dataclass
class Simulation:
    """A kernel ready to mount, and the scenario timeline to play on it (if any)."""

    kernel: Kernel
    timeline: Timeline | None = None
    label: str = ""


def build_simulation(config: MountConfig) -> Simulation:
    """The scenario of ``--scenario`` (a TOML file or a built-in name), or the built-in
    ``demo``: its processes are filled, its knobs set, then run = 1 (ksmd starts with
    the mount).  Raises ``KsmError`` (unknown kernel version) or ``ScenarioError``."""
    from ksmfs.kernel.versions import get_profile
    from ksmfs.scenario import load_scenario
    from ksmfs.scenario.sim import SimBackend

    get_profile(config.kernel_version)  # KsmError(EINVAL) before any scenario work
    name = config.scenario if config.scenario is not None else "demo"
    scenario = load_scenario(name)
    backend = SimBackend(scenario, config.kernel_version)
    backend.start()
    backend.start_ksmd()  # the contract's "full scan 0" moment
    return Simulation(backend.kernel, Timeline(backend, scenario), f"scenario {scenario.name}")


# -- ksmd pacing ------------------------------------------------------------------------
class KsmdPacer:
    """Runs ksmd's batches at the pace ksmd would, ``speed`` times faster.

    The simulated clock follows wall time times ``speed`` (``kernel.advance``), so time
    also passes while ksmd is idle or asleep.  After a batch ksmd sleeps
    ``sleep_millisecs``; when it would not run (run = 0, no mm) it waits to be woken.
    Who wakes it is the kernel's business (``Ksm.take_wakeups``: run_store and the
    first __ksm_enter wake the idle wait, sleep_millisecs_store ends a timed sleep if
    the value changed; run = 1 does not cut a timed sleep short, docs/NOTES.md); the
    pacer only sleeps and asks.

    A batch runs in slices of a few milliseconds of wall time (``Ksm.scan_slice``, at
    ksm_do_scan()'s cond_resched() points) and FUSE requests are served between slices,
    so no reader waits for a whole batch.  Stores wait for the batch to end
    (``wait_batch``), as they wait for ksm_thread_mutex in mm/ksm.c; the clock does not
    move inside a batch.
    """

    SLICE_TARGET_S = 0.001  # wall time of one slice the pacer aims at
    MIN_SLICE_PAGES = 64
    MAX_SLICE_PAGES = 16384  # a cheap pass must not grow slices that the next pass finds slow
    BURST_GAP_S = 0.0002  # between slices: wait this long for a reader's next request
    BURST_MAX_S = 0.005  # ... but never longer than this in all

    def __init__(self, kernel: Kernel, speed: float = 1.0) -> None:
        if not speed > 0 or math.isinf(speed):
            raise ValueError("speed must be a positive finite number")
        self.kernel = kernel
        self.speed = speed
        self.ops: KsmfsOperations | None = None
        self.on_batch: Callable[[], None] | None = None
        self.timeline: Timeline | None = None  # for virtual full scans while ksmd is idle
        self._wake = trio.Event()
        self._advanced_ms = 0.0
        self.batches = 0
        self.slices = 0
        self.slice_pages = 4096  # adapted to SLICE_TARGET_S as slices run
        self.in_batch = False
        self._batch_done = trio.Event()

    def on_store(self, node: Node, data: bytes) -> None:
        """``KsmfsOperations`` calls this after every successful store: ksmd looks at
        the wake-ups the store recorded in the kernel."""
        self._wake.set()

    async def wait_batch(self) -> None:
        """Return once no batch is running (a store's mutex_lock(&ksm_thread_mutex))."""
        while self.in_batch:
            await self._batch_done.wait()

    def _sync_clock(self, t0: float) -> None:
        # Simulated ms that should have passed since run() started; the kernel clock
        # keeps nanoseconds, so fractions of a ms are carried, never lost to rounding.
        target_ms = (trio.current_time() - t0) * 1000.0 * self.speed
        delta = target_ms - self._advanced_ms
        if delta > 0:
            self.kernel.advance(delta)
            self._advanced_ms = target_ms

    async def _run_batch(self, batch: ScanBatch) -> None:
        k = self.kernel
        self.in_batch = True
        try:
            while True:
                t = time.perf_counter()
                done = k.ksm.scan_slice(batch, self.slice_pages)
                dt = time.perf_counter() - t
                self.slices += 1
                if dt > 2 * self.SLICE_TARGET_S:
                    self.slice_pages = max(self.MIN_SLICE_PAGES, self.slice_pages // 2)
                elif dt < self.SLICE_TARGET_S / 2:
                    self.slice_pages = min(self.MAX_SLICE_PAGES, self.slice_pages * 2)
                if done:
                    return
                if self.ops is not None:
                    self.ops.kernel_changed()  # readers see the counters of this moment
                await self._serve_requests()  # cond_resched()
        finally:
            self.in_batch = False
            event, self._batch_done = self._batch_done, trio.Event()
            event.set()

    async def _serve_requests(self) -> None:
        """Between two slices: let pending FUSE requests run, and while requests keep
        coming (an open, then its read, then the next file), wait for the next one a
        little before going on, so that one open-read-close does not wait for a slice
        per round trip."""
        ops = self.ops
        before = ops.requests if ops is not None else 0
        await trio.lowlevel.checkpoint()
        if ops is None or ops.requests == before:
            return  # nobody is reading: on with ksmd at once
        # checkpoints, not trio.sleep(): a timer would wait a whole epoll millisecond
        now = time.perf_counter()
        deadline = now + self.BURST_MAX_S
        quiet_until = now + self.BURST_GAP_S
        seen = ops.requests
        while now < deadline and now < quiet_until:
            await trio.lowlevel.checkpoint()
            now = time.perf_counter()
            if ops.requests != seen:
                seen = ops.requests
                quiet_until = now + self.BURST_GAP_S

    async def run(self) -> None:
        k = self.kernel
        t0 = trio.current_time()
        self._advanced_ms = 0.0
        next_due: int | None = k.now  # ksmd looks at its list right away
        # The sleep_millisecs the current sleep started with (ksm_iter_wait's condition)
        basis = k.ksm.sleep_millisecs
        while True:
            self._sync_clock(t0)
            if next_due is not None and k.now >= next_due:
                batch = k.ksmd_begin()
                if batch is not None:
                    await self._run_batch(batch)
                # wake-ups while ksmd was not waiting are lost (wake_up on an empty queue)
                k.ksm.take_wakeups()
                self.batches += 1
                if self.on_batch is not None:
                    self.on_batch()  # scenario steps due after a completed full scan
                if self.ops is not None:
                    self.ops.kernel_changed()
                basis = k.ksm.sleep_millisecs
                next_due = None if batch is None else k.now + int(basis)
                await trio.lowlevel.checkpoint()
                continue
            idle_timeline = next_due is None and self.timeline is not None and self.timeline.pending()
            if idle_timeline:
                # a virtual full scan every sleep_millisecs while ksmd does not run
                timeout = max(k.ksm.sleep_millisecs / 1000.0 / self.speed, MIN_WALL_SLEEP)
            elif next_due is None:
                timeout = math.inf
            else:
                timeout = max((next_due - k.now) / 1000.0 / self.speed, MIN_WALL_SLEEP)
            with trio.move_on_after(timeout):
                await self._wake.wait()
            if idle_timeline and not self._wake.is_set() and self.timeline is not None:
                self._sync_clock(t0)
                self.timeline.virtual_scan()
                if self.ops is not None:
                    self.ops.kernel_changed()
                next_due = k.now  # a step may have set run = 1: ksmd looks again
                continue
            if self._wake.is_set():
                self._wake = trio.Event()
                thread_wakeups, iter_wakeups = k.ksm.take_wakeups()
                if next_due is None and thread_wakeups:
                    next_due = k.now  # ksm_thread_wait: ksmd re-checks ksmd_should_run()
                elif next_due is not None and iter_wakeups and k.ksm.sleep_millisecs != basis:
                    next_due = k.now  # ksm_iter_wait with a new sleep_millisecs


# -- serve ------------------------------------------------------------------------------
@dataclass
class Server:
    """A running mount, handed to ``task_status.started()`` by :func:`serve`."""

    mountpoint: str
    kernel: Kernel
    ops: KsmfsOperations
    ksmd: KsmdPacer
    nursery: trio.Nursery | None = None
    stopping: bool = field(default=False)

    def stop(self) -> None:
        """Ask the mount to end (idempotent; returns at once, see :meth:`shutdown`)."""
        if self.stopping:
            return
        self.stopping = True
        if self.nursery is not None:
            self.nursery.start_soon(self.shutdown, name="shutdown")
        else:
            self._terminate()

    async def shutdown(self, grace: float = STREAM_GRACE_SECONDS) -> None:
        """End blocked trace_pipe reads with EOF, give their readers a moment to close
        the file, then end ``main()``.  A request that arrives after ``terminate()``
        is never answered: the close(2) of a `cat trace_pipe` would fail with
        ECONNABORTED instead of ending cleanly."""
        self.stopping = True
        self.ops.close_streams()
        with trio.move_on_after(grace):
            while self.ops.open_streams:  # noqa: ASYNC110 - released by RELEASE requests
                await trio.sleep(0.01)
        self._terminate()

    @staticmethod
    def _terminate() -> None:
        import pyfuse3

        pyfuse3.terminate()


async def _watch_signals(server: Server, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    # pyfuse3 handles no signals (s3ql #227): SIGINT and SIGTERM both unmount cleanly.
    # The receiver replaces SIG_IGN too, which matters for a daemon started with `&`
    # from a script (SIGINT ignored, notes §1.2).
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            log.info("%s: unmounting %s", signal.Signals(signum).name, server.mountpoint)
            server.stop()


async def _run_ksmd(pacer: KsmdPacer) -> None:
    try:
        await pacer.run()
    except Exception:
        # A kernel bug must not take the mount down: the files stay readable.
        log.exception("ksmd stopped after an internal error; the mount keeps serving")


def _invalidate_entry(parent_inode: int, name: str) -> None:
    import pyfuse3

    pyfuse3.invalidate_entry_async(parent_inode, os.fsencode(name), ignore_enoent=True)


async def serve(
    config: MountConfig,
    *,
    sim: Simulation | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Mount ``sim`` (default: :func:`build_simulation`) at ``config.mountpoint`` and
    serve it until SIGINT/SIGTERM, ``Server.stop()`` or an external unmount.

    ``task_status.started(server)`` runs once the mount is visible and its tasks run.
    """
    import pyfuse3

    from ksmfs.fuse.ops import KsmfsOperations
    from ksmfs.kfs import Tree

    if sim is None:
        sim = build_simulation(config)
    kernel = sim.kernel
    pacer = KsmdPacer(kernel, config.speed)
    if sim.timeline is not None:
        pacer.on_batch = sim.timeline.after_batch
        pacer.timeline = sim.timeline
    ops = KsmfsOperations(
        Tree(kernel), on_store=pacer.on_store, before_store=pacer.wait_batch,
        invalidate_entry=_invalidate_entry
    )
    pacer.ops = ops
    options = fuse_options(config)
    log.info("mounting at %s with options %s", config.mountpoint, ",".join(sorted(options)))
    pyfuse3.init(ops, config.mountpoint, options)
    server = Server(config.mountpoint, kernel, ops, pacer)
    try:
        async with trio.open_nursery() as nursery:

            async def fuse_main() -> None:
                try:
                    await pyfuse3.main()
                finally:
                    # main() is over (terminate() or unmounted from outside): stop the
                    # other tasks so that close() runs after main() and never during it.
                    nursery.cancel_scope.cancel()

            server.nursery = nursery
            if config.handle_signals:
                await nursery.start(_watch_signals, server)
            nursery.start_soon(fuse_main, name="pyfuse3.main")
            nursery.start_soon(_run_ksmd, pacer, name="ksmd")
            task_status.started(server)
    finally:
        pyfuse3.close(unmount=True)
        log.info("unmounted %s", config.mountpoint)


# -- mount table, runtime files ----------------------------------------------------------
def _unescape_mountinfo(field_: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo (fs/proc_namespace.c).
    out, i = [], 0
    while i < len(field_):
        code = field_[i + 1 : i + 4]
        if field_[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field_[i])
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    fstype: str
    source: str


def find_mount(path: str) -> MountEntry | None:
    """The last mount at ``path`` in /proc/self/mountinfo.

    ``os.path.ismount`` is not enough: it says False for a stale FUSE mount, which
    /proc/mounts still lists (notes §1.2).
    """
    path = os.path.abspath(path)
    found = None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields = left.split()
                rest = right.split()
                if len(fields) >= 5 and _unescape_mountinfo(fields[4]) == path:
                    fstype = rest[0] if rest else ""
                    found = MountEntry(path, fstype, rest[1] if len(rest) > 1 else "")
    except OSError:
        return None
    return found


def runtime_dir() -> Path:
    """Where pid and log files live: /run/ksmfs for root, else a per-user directory."""
    if os.geteuid() == 0:
        base = Path("/run/ksmfs")
    elif os.environ.get("XDG_RUNTIME_DIR"):
        base = Path(os.environ["XDG_RUNTIME_DIR"]) / "ksmfs"
    else:
        base = Path(f"/tmp/ksmfs-{os.geteuid()}")
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    return base


def _key(mountpoint: str) -> str:
    # No realpath() here: it would lstat the mountpoint, and the server must never make
    # a syscall on its own mount from the trio thread (it would wait for itself).
    # Callers pass the path resolved before mounting (MountConfig.from_args).
    return hashlib.sha256(os.path.abspath(mountpoint).encode()).hexdigest()[:16]


def pid_file(mountpoint: str) -> Path:
    return runtime_dir() / f"{_key(mountpoint)}.pid"


def log_file(mountpoint: str) -> Path:
    return runtime_dir() / f"{_key(mountpoint)}.log"


def read_server_pid(mountpoint: str) -> int | None:
    """The pid of the live server of ``mountpoint``, or None (no file, or it died)."""
    try:
        text = pid_file(mountpoint).read_text().split()
        pid = int(text[0])
    except (OSError, ValueError, IndexError):
        return None
    if not _alive(pid) or not _is_ksmfs(pid):
        # The server died without cleaning up (kill -9), and the pid may even belong to
        # another program by now: forget the file.
        pid_file(mountpoint).unlink(missing_ok=True)
        return None
    return pid


def _is_ksmfs(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"ksmfs" in f.read()
    except OSError:
        return False


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (killed, not yet reaped by its parent) is dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _write_pid_file(mountpoint: str) -> Path:
    path = pid_file(mountpoint)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{os.getpid()}\n{mountpoint}\n")
    tmp.replace(path)
    return path


def _remove_pid_file(path: Path) -> None:
    try:
        if int(path.read_text().split()[0]) == os.getpid():
            path.unlink()
    except (OSError, ValueError, IndexError):
        pass


def _fusermount() -> str | None:
    return shutil.which("fusermount3") or shutil.which("fusermount")


def clear_stale_mount(mountpoint: str) -> str | None:
    """Lazily unmount a dead FUSE mount at ``mountpoint``; returns an error line or None."""
    tool = _fusermount()
    if tool is None:
        return "fusermount3 is not installed, cannot clear it"
    r = subprocess.run([tool, "-u", "-z", mountpoint], capture_output=True, text=True)
    if r.returncode != 0 or find_mount(mountpoint) is not None:
        reason = (r.stderr.strip().splitlines() or ["still mounted"])[-1]
        return f"could not clear it ({reason}); try: fusermount3 -u -z {mountpoint}"
    return None


# -- ksmfs mount ------------------------------------------------------------------------
def _say(msg: str) -> None:
    print(f"ksmfs mount: {msg}", file=sys.stderr)


def check_mountpoint(mountpoint: str) -> str | None:
    """Everything that would make the mount fail, as one line (or None)."""
    entry = find_mount(mountpoint)
    if entry is not None and entry.fstype.startswith("fuse"):
        try:
            os.stat(mountpoint)
        except OSError as e:
            if e.errno != errno.ENOTCONN:
                return f"{mountpoint}: {e.strerror}"
            log.info("%s: clearing a stale FUSE mount", mountpoint)
            problem = clear_stale_mount(mountpoint)
            if problem is not None:
                return (
                    f"{mountpoint}: stale FUSE mount (transport endpoint not connected): "
                    f"{problem}"
                )
        else:
            if entry.fstype == "fuse.ksmfs":
                pid = read_server_pid(mountpoint)
                who = f" (server pid {pid})" if pid else ""
                return (
                    f"{mountpoint}: already mounted by ksmfs{who}; "
                    f"run `ksmfs umount {mountpoint}` first"
                )
    if not os.path.exists(mountpoint):
        return f"{mountpoint}: no such directory"
    if not os.path.isdir(mountpoint):
        return f"{mountpoint}: not a directory"
    try:
        if os.listdir(mountpoint):
            return f"{mountpoint}: directory is not empty"
    except OSError as e:
        return f"{mountpoint}: {e.strerror}"
    return None


def ksmfs_command() -> str:
    """How a shell reaches this ksmfs: ``ksmfs`` when that name on PATH is this
    installation (or none is known), else the full path of the venv's script."""
    here = Path(sys.executable).parent / "ksmfs"
    found = shutil.which("ksmfs")
    if not here.exists() or (found and os.path.realpath(found) == os.path.realpath(here)):
        return "ksmfs"
    return shlex.quote(str(here))


def try_text(mountpoint: str) -> str:
    """What to try on a fresh mount: printed by `ksmfs mount` and scripts/setup-demo.sh.
    Lines to paste into a shell (the variables keep them short)."""
    q = shlex.quote
    plain = q(mountpoint) == mountpoint
    m, k = ("$M", "$K") if plain else ('"$M"', '"$K"')  # a path with spaces stays one word
    cmd = ksmfs_command()
    rows = [
        (f"M={q(mountpoint)}; K={m}/sys/kernel/mm/ksm", ""),
        (f"cat {k}/pages_shared {k}/pages_sharing", "the main counters"),
        (f"grep . {k}/*", "every counter and knob"),
        (f"grep . {m}/proc/*/ksm_stat", "per-process KSM state"),
        (f"echo 2 > {k}/run", "unmerge all (0 stops ksmd, 1 restarts it)"),
        (f"cat {m}/ksmfs/README", "control files: start processes, write pages"),
        (f"{cmd} top {m}", "live view (q quits)"),
        (f"{cmd} scenarios", "built-in workloads (ksmfs run NAME)"),
    ]
    width = max(len(c) for c, _ in rows)
    lines = ["try:", *(f"  {c:<{width}}  # {why}".rstrip(" #") for c, why in rows)]
    lines.append(f"unmount: {cmd} umount {q(mountpoint)}")
    return "\n".join(lines)


def _banner(config: MountConfig, sim: Simulation, pid: int, log: Path | None) -> str:
    kernel = sim.kernel
    what = f"processes ({sim.label})"
    speed = f", speed x{config.speed:g}" if config.speed != 1.0 else ""
    head = (
        f"ksmfs: simulated Linux {config.kernel_version} with {len(kernel.tasks)} "
        f"{what}{speed} mounted at {config.mountpoint} (server pid {pid})"
    )
    lines = [head]
    if log is not None:
        lines.append(f"log: {log} (refused control commands and errors are written there)")
    return "\n".join([*lines, try_text(config.mountpoint)])


# fusermount3's words when a container lacks what FUSE needs (seen with podman: without
# CAP_SYS_ADMIN "mount failed: Operation not permitted", without the device "fuse:
# device not found").
def _mount_hint(reason: str) -> str:
    if "Operation not permitted" in reason or "Permission denied" in reason:
        if os.geteuid() == 0:
            return ("; in a container, FUSE needs the capability: run it with "
                    "--cap-add SYS_ADMIN --device /dev/fuse")
    if "device not found" in reason or "No such device" in reason:
        return "; in a container, pass the device: --device /dev/fuse --cap-add SYS_ADMIN"
    return ""


def _one_line(e: BaseException) -> str:
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    text = " ".join(str(e).split())
    return text or type(e).__name__


def _serve_until_done(
    config: MountConfig, sim: Simulation, ready: Callable[[Server], None]
) -> None:
    """trio.run(serve): ``ready(server)`` once mounted.  Errors propagate."""

    async def main() -> None:
        async with trio.open_nursery() as nursery:

            async def serve_sim(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
                await serve(config, sim=sim, task_status=task_status)

            ready(await nursery.start(serve_sim))

    trio.run(main)


def _missing(path: str) -> bool:
    """True only for ENOENT (a stale FUSE mount gives ENOTCONN: it exists)."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return True
    except OSError:
        pass
    return False


def cmd_mount(args: argparse.Namespace) -> int:
    """``ksmfs mount``: check, build the kernel, then serve (foreground) or fork."""
    config = MountConfig.from_args(args)
    if _missing(config.mountpoint):
        # A new user types `ksmfs mount /tmp/ksm` and expects it to work, as mkdir would.
        try:
            os.makedirs(config.mountpoint)
        except OSError as e:
            _say(f"{config.mountpoint}: no such directory, and it cannot be created "
                 f"({e.strerror})")
            return EXIT_USAGE
        _say(f"created {config.mountpoint}")
    problem = check_mountpoint(config.mountpoint)
    if problem is not None:
        _say(problem)
        return EXIT_USAGE
    if not config.speed > 0 or math.isinf(config.speed):
        _say(f"--speed must be a positive number, not {config.speed:g}")
        return EXIT_USAGE
    if not os.path.exists("/dev/fuse"):
        _say("/dev/fuse is missing (no FUSE support here; in a container pass --device /dev/fuse)")
        return EXIT_FAIL
    try:
        import pyfuse3  # noqa: F401 - only checking that it is installed
    except ImportError as e:
        _say(f"needs pyfuse3 ({e})")
        return EXIT_FAIL
    try:
        sim = build_simulation(config)
    except Exception as e:  # KsmError (version), ScenarioError (file), OSError
        from ksmfs.kernel import KsmError

        if isinstance(e, KsmError):
            _say(e.message)
        else:
            _say(_one_line(e))
        return EXIT_USAGE
    if getattr(args, "foreground", False):
        return _mount_foreground(config, sim)
    return _mount_daemon(config, sim)


def _mount_foreground(config: MountConfig, sim: Simulation) -> int:
    faulthandler.enable()
    pidf: list[Path] = []

    def ready(server: Server) -> None:
        pidf.append(_write_pid_file(config.mountpoint))
        banner = _banner(config, sim, os.getpid(), None)
        print(banner.replace("unmount: ", "unmount: Ctrl-C, or "), flush=True)

    try:
        _serve_until_done(config, sim, ready)
    except Exception as e:
        reason = _one_line(e)
        hint = ""
        if "fuse_session_mount" in reason:
            # libfuse printed its reason on this stderr just above, out of our reach.
            hint = ("; if it says Operation not permitted or device not found and this runs "
                    "in a container: --cap-add SYS_ADMIN --device /dev/fuse")
        _say(f"{config.mountpoint}: {reason}{hint}")
        return EXIT_FAIL
    finally:
        for p in pidf:
            _remove_pid_file(p)
    return EXIT_OK


def _mount_daemon(config: MountConfig, sim: Simulation) -> int:
    logpath = log_file(config.mountpoint)
    sys.stdout.flush()
    sys.stderr.flush()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the server
        os.close(r)
        code = EXIT_FAIL
        try:
            code = _daemon_child(config, sim, w, logpath)
        except BaseException:  # the forked child must reach os._exit, whatever happens
            logging.getLogger(__name__).exception("server failed")
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        message = pipe.read().decode(errors="replace").strip()
    if message.startswith("ready"):
        print(_banner(config, sim, pid, logpath), flush=True)
        return EXIT_OK
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)  # reap the failed server
    if message.startswith("error "):
        reason = message[len("error ") :]
        _say(reason + _mount_hint(reason))
    else:
        _say(f"the server exited before the mount was ready; see {logpath}")
    return EXIT_FAIL


def _daemon_child(config: MountConfig, sim: Simulation, ready_fd: int, logpath: Path) -> int:
    """The forked server: detach, log to a file, serve; tell the parent through ready_fd."""
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    logfd = os.open(logpath, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(logfd, 1)
    os.dup2(logfd, 2)
    os.close(devnull)
    os.close(logfd)
    os.chdir("/")
    faulthandler.enable()
    faulthandler.register(signal.SIGUSR1)  # stack dump of a hung server into the log
    logging.getLogger().handlers[:] = []
    logging.basicConfig(
        level=logging.DEBUG if config.debug else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    pidf: list[Path] = []
    pipe = os.fdopen(ready_fd, "wb")

    def ready(server: Server) -> None:
        pidf.append(_write_pid_file(config.mountpoint))
        log.info("serving %s (pid %d)", config.mountpoint, os.getpid())
        pipe.write(b"ready\n")
        pipe.close()

    try:
        _serve_until_done(config, sim, ready)
    except Exception as e:
        sys.stderr.flush()
        reason = _libfuse_reason(logpath) or _one_line(e)
        log.exception("mount failed")
        if not pipe.closed:
            pipe.write(f"error {config.mountpoint}: {reason} (log: {logpath})\n".encode())
            pipe.close()
        return EXIT_FAIL
    finally:
        for p in pidf:
            _remove_pid_file(p)
        if not pipe.closed:
            pipe.close()
    _drop_quiet_log(logpath)
    return EXIT_OK


def _libfuse_reason(logpath: Path) -> str | None:
    """libfuse and fusermount3 explain a failed mount on stderr (our log), while
    pyfuse3 only raises "fuse_session_mount failed": use their last line."""
    try:
        lines = logpath.read_text(errors="replace").splitlines()
    except OSError:
        return None
    said = [line.strip() for line in lines if line.startswith(("fuse:", "fusermount3:"))]
    return said[-1] if said else None


def _drop_quiet_log(logpath: Path) -> None:
    """After a clean exit, remove the log if it only holds routine INFO/DEBUG lines;
    keep it when something (a warning, a refused scenario step, libfuse) spoke up."""
    sys.stderr.flush()
    try:
        lines = logpath.read_text(errors="replace").splitlines()
    except OSError:
        return
    if all(" INFO: " in line or " DEBUG: " in line for line in lines):
        logpath.unlink(missing_ok=True)


# -- ksmfs umount -----------------------------------------------------------------------
def cmd_umount(args: argparse.Namespace, *, timeout: float = 10.0) -> int:
    """``ksmfs umount``: ``fusermount3 -u``, then wait until the server has exited."""
    mountpoint = os.path.realpath(args.mountpoint)

    def say(msg: str) -> None:
        print(f"ksmfs umount: {msg}", file=sys.stderr)

    pid = read_server_pid(mountpoint)
    entry = find_mount(mountpoint)
    if entry is None:
        if pid is not None:
            # Mount gone but server alive (someone ran umount -l): stop it.
            os.kill(pid, signal.SIGTERM)
            return EXIT_OK if _wait_gone(pid, timeout) else EXIT_FAIL
        pid_file(mountpoint).unlink(missing_ok=True)
        say(f"{mountpoint}: not mounted")
        return EXIT_USAGE
    if not entry.fstype.startswith("fuse"):
        say(f"{mountpoint}: not a ksmfs mount ({entry.fstype})")
        return EXIT_USAGE
    tool = _fusermount()
    if tool is None:
        say("fusermount3 is not installed")
        return EXIT_FAIL
    r = subprocess.run([tool, "-u", mountpoint], capture_output=True, text=True)
    if r.returncode != 0:
        reason = (r.stderr.strip().splitlines() or ["failed"])[-1]
        say(f"{reason} (busy? close the files, or force it with: fusermount3 -u -z {mountpoint})")
        return EXIT_FAIL
    if pid is not None and not _wait_gone(pid, timeout):
        say(f"the server (pid {pid}) did not exit within {timeout:g} s; sending SIGTERM")
        os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, 5.0):
            return EXIT_FAIL
    return EXIT_OK


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            # Reap it if it is our child (tests), else just probe it.
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        if not _alive(pid):
            return True
        time.sleep(0.02)
    return False

"""The trio server of one mount: ``serve()``, the ksmd pacer and the scenario timeline.

``serve(config)`` is the whole life of one mount, in one nursery (notes §1.2, s3ql's
mount.py, hypercorn's ``worker_serve``)::

    pyfuse3.init(ops, mountpoint, options)      # the mount is visible from here on
    nursery: pyfuse3.main()  |  ksmd pacer  |  SIGINT/SIGTERM watcher
    # main() has returned (terminate() or an external unmount) ...
    pyfuse3.close(unmount=True)                  # ... and only then: earlier segfaults

pyfuse3 keeps module-global state, so there is one ``serve()`` per process.  The kernel it
serves comes from :func:`build_simulation` (a scenario's processes, its :class:`Timeline`).
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from ksmfs.linux import DEFAULT_VERSION

if TYPE_CHECKING:
    from ksmfs.fuse.ops import KsmfsOperations
    from ksmfs.kernel import Kernel
    from ksmfs.kernel.ksm import ScanBatch
    from ksmfs.kfs import Node

log = logging.getLogger(__name__)

__all__ = [
    "KsmdPacer",
    "MountConfig",
    "Server",
    "Simulation",
    "Timeline",
    "build_simulation",
    "fuse_options",
    "serve",
]

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
    kernel_version: str = DEFAULT_VERSION
    scenario: str | None = None
    speed: float = 1.0
    allow_other: bool = False
    debug: bool = False
    handle_signals: bool = True
    capture: str | None = None  # ksmfs capture file: its processes instead of a scenario
    assume: str = "as-is"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> MountConfig:
        return cls(
            mountpoint=os.path.realpath(args.mountpoint),
            kernel_version=getattr(args, "kernel", None) or DEFAULT_VERSION,
            scenario=getattr(args, "scenario", None),
            speed=float(getattr(args, "speed", 1.0)),
            allow_other=bool(getattr(args, "allow_other", False)),
            debug=bool(getattr(args, "debug", False)),
            capture=getattr(args, "capture", None),
            assume=getattr(args, "assume", None) or "as-is",
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
    if config.capture is not None:
        from ksmfs.capture.build import kernel_for_mount

        if config.scenario is not None:
            raise ValueError("--capture and --scenario exclude each other")
        kernel, label = kernel_for_mount(config.capture, config.assume, config.kernel_version)
        return Simulation(kernel, None, label)
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

    A batch runs in slices of about a millisecond of CPU time (``Ksm.scan_slice``, at
    ksm_do_scan()'s cond_resched() points) and FUSE requests are served between slices,
    so no reader waits for a whole batch.  Stores wait for the batch to end
    (``wait_batch``), as they wait for ksm_thread_mutex in mm/ksm.c; the clock does not
    move inside a batch.

    A slice's size is chosen from the time per page of the slice before (it bounds the
    slice's time, not its pages): it may at most double from one slice to the next, and
    a pass starts again from FIRST_SLICE_PAGES, since the first batches of a merging
    pass cost a hundred times more per page than the pass before them.
    """

    SLICE_TARGET_S = 0.001  # CPU time (thread_time) of one slice the pacer aims at
    MIN_SLICE_PAGES = 32
    FIRST_SLICE_PAGES = 256  # the first slice of a pass
    MAX_SLICE_PAGES = 16384  # a cheap pass must not grow slices that the next pass finds slow
    BURST_MAX_S = 0.005  # between slices: serve a burst of requests this long at most

    def __init__(self, kernel: Kernel, speed: float = 1.0, fuse_fd: int | None = None) -> None:
        if not speed > 0 or math.isinf(speed):
            raise ValueError("speed must be a positive finite number")
        self.kernel = kernel
        self.speed = speed
        self.ops: KsmfsOperations | None = None
        # /dev/fuse of the mount: between slices the pacer looks whether a request is
        # waiting there, and waits (in select, not spinning) for a caller's next request
        self.fuse_fd = fuse_fd
        self.on_batch: Callable[[], None] | None = None
        self.timeline: Timeline | None = None  # for virtual full scans while ksmd is idle
        self._wake = trio.Event()
        self._advanced_ms = 0.0
        self.batches = 0
        self.slices = 0
        self.slice_pages = self.FIRST_SLICE_PAGES  # adapted to SLICE_TARGET_S as slices run
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

    def next_slice_pages(self, pages: int, seconds: float) -> int:
        """The size of the next slice after one of ``pages`` pages took ``seconds`` of
        CPU time.  A slice within 0.8 to 1.5 times SLICE_TARGET_S keeps its size: each
        slice has a fixed cost (~0.3 ms in the 16M-page merging pass, measured), and a
        size that follows every wobble (the slice after a burst of FUSE requests runs on
        cold caches) makes more, smaller slices.  A slower one shrinks to what fits at
        its time per page (the fixed cost included), a faster one grows to that, at most
        twofold per slice.  The band starts at 0.8, not lower: after one slow slice (a
        window sent page by page) the next are cut to a few dozen pages, and where the
        fixed cost alone is over half the target (0.5-0.6 ms late in the 16M merging
        pass, measured) such slices never grew again: 32-page slices to the pass's end,
        eight times its CPU time."""
        target = self.SLICE_TARGET_S
        if pages <= 0:
            return self.slice_pages
        fit = int(target * pages / max(seconds, 1e-9))
        if seconds > 1.5 * target:
            new = fit
        elif seconds < 0.8 * target and pages >= self.slice_pages:
            new = min(fit, 2 * self.slice_pages)
        else:
            new = self.slice_pages  # on target, or cut short by the batch's end
        return max(self.MIN_SLICE_PAGES, min(new, self.MAX_SLICE_PAGES))

    async def _run_batch(self, batch: ScanBatch) -> None:
        k = self.kernel
        self.in_batch = True
        try:
            while True:
                before = batch.done
                # CPU time: a slice the scheduler preempted is no reason to shrink the next
                t = time.thread_time()
                done = k.ksm.scan_slice(batch, self.slice_pages)
                dt = time.thread_time() - t
                self.slices += 1
                self.slice_pages = self.next_slice_pages(batch.done - before, dt)
                if done:
                    if batch.pass_ended:
                        self.slice_pages = self.FIRST_SLICE_PAGES
                    return
                if self.ops is not None:
                    self.ops.kernel_changed()  # readers see the counters of this moment
                await self._serve_requests()  # cond_resched()
        finally:
            self.in_batch = False
            event, self._batch_done = self._batch_done, trio.Event()
            event.set()

    def _fuse_pending(self, timeout: float = 0.0) -> bool:
        """A request waits in /dev/fuse (within ``timeout`` seconds: select(2) blocks
        the trio thread that long at most, which is what ksmd's slice would do)."""
        assert self.fuse_fd is not None
        try:
            return bool(select.select([self.fuse_fd], [], [], timeout)[0])
        except (OSError, ValueError):  # the mount is going away
            self.fuse_fd = None
            return False

    async def _serve_requests(self) -> None:
        """Between two slices: let the FUSE requests that wait run, and while a burst
        goes on (a LOOKUP, then the OPEN, then the READ ...), wait for the caller's next
        request as long as ``ops.follow_up`` says, so that one open-read-close does not
        wait for a slice per round trip.  Without the /dev/fuse fd (tests), checkpoints
        stand in for select()."""
        ops = self.ops
        before = ops.requests if ops is not None else 0
        await trio.lowlevel.checkpoint()
        if ops is None:
            return
        now = time.perf_counter()
        deadline = now + self.BURST_MAX_S
        seen = before
        quiet_until = now
        while now < deadline:
            if self.fuse_fd is not None and self._fuse_pending():
                # a request is queued: a checkpoint lets pyfuse3's worker read it (trio
                # may run this task first in a batch, so one checkpoint is not enough)
                await trio.lowlevel.checkpoint()
            elif ops.requests != seen:
                seen = ops.requests
                quiet_until = now + ops.follow_up
            elif now >= quiet_until:
                return  # nobody reading, or the caller's burst is over: on with ksmd
            elif self.fuse_fd is None or trio.lowlevel.current_statistics().tasks_runnable:
                # other tasks (a smaps render between pieces) run while we wait; a trio
                # timer would wait a whole epoll millisecond
                await trio.lowlevel.checkpoint()
            elif not self._fuse_pending(min(quiet_until, deadline) - now):
                return
            now = time.perf_counter()

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
            while self.ops.open_streams:
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


def _fd_targets() -> dict[int, str]:
    """Every open fd of this process and what it points to (``/proc/self/fd``)."""
    out: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass  # the fd listdir() itself used, closed by now
    return out


def _fuse_fd() -> int | None:
    """The fd of /dev/fuse that pyfuse3.init() opened (None if not exactly one)."""
    fuse = [fd for fd, t in _fd_targets().items() if t == "/dev/fuse"]
    return fuse[0] if len(fuse) == 1 else None


def _socket_fds() -> set[str]:
    """The sockets open now, by inode (``socket:[N]``): an fd number may be reused."""
    return {t for t in _fd_targets().values() if t.startswith("socket:")}


def _commfd_below_fuse(reserved: int, sockets_before: set[str], *, expected: bool) -> None:
    """Give the auto_unmount socket to fusermount3 a lower fd number than /dev/fuse.

    With ``auto_unmount`` libfuse keeps its end of a socketpair open for the life of
    the process and never touches it again (lib/mount.c ``fuse_mount_fusermount``, the
    same from 3.14 to 3.18), so its number may change.  fusermount3 waits for EOF on
    the other end, then unmounts only if open(mountpoint) fails with ENOTCONN
    (util/fusermount.c ``should_auto_unmount``, fuse3 3.14).  When the server dies the
    kernel closes its fds in ascending order (``close_files``) but releases them in the
    reverse order (each final ``fput`` queues a task_work; ``task_work_run`` runs the
    last queued first).  libfuse's socket has a higher number than /dev/fuse, so it
    was released first: fusermount3 woke, and when it reached open() before the dying
    server had released /dev/fuse, its request was queued on the still-connected mount
    and then ended by ``fuse_abort_conn`` with ECONNABORTED; fusermount3 exited without
    unmounting (7 stale mounts in 40 `kill -9` on a busy 2-CPU machine).  Below
    /dev/fuse the socket is released after it: the connection is gone
    (``fc->connected == 0``) before fusermount3 wakes, open() fails with ENOTCONN and
    fusermount3 unmounts."""
    try:
        targets = _fd_targets()
        fuse = [fd for fd, t in targets.items() if t == "/dev/fuse"]
        comm = [fd for fd, t in targets.items()
                if t.startswith("socket:") and t not in sockets_before]
        if len(fuse) == 1 and len(comm) == 1 and reserved < fuse[0]:
            os.dup2(comm[0], reserved, inheritable=False)
            os.close(comm[0])
            log.debug("fusermount3 socket moved from fd %d to %d (/dev/fuse: fd %d)",
                      comm[0], reserved, fuse[0])
            return
    except OSError as e:
        targets = {-1: str(e)}
    os.close(reserved)
    if expected:
        log.warning("fusermount3 socket not moved below /dev/fuse (fds %s): after a kill -9 "
                    "the mount may stay behind (ksmfs umount clears it)", targets)


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
    # What the build made lives as long as the mount: out of the collector's sight, so
    # that a full collection (15-40 ms for the 16M-page scenario's ~30 000 objects,
    # measured) never stalls the readers.
    gc.collect()
    gc.freeze()
    options = fuse_options(config)
    log.info("mounting at %s with options %s", config.mountpoint, ",".join(sorted(options)))
    # An fd number taken before the mount, so it is lower than the /dev/fuse fd that
    # pyfuse3.init() opens: the fusermount3 socket moves there (see _commfd_below_fuse).
    reserved = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    sockets = _socket_fds()
    try:
        pyfuse3.init(ops, config.mountpoint, options)
    except BaseException:
        os.close(reserved)
        raise
    _commfd_below_fuse(reserved, sockets, expected="auto_unmount" in options)
    pacer.fuse_fd = _fuse_fd()
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

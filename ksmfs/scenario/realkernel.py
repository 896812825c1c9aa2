"""Control of the machine's real KSM (/sys/kernel/mm/ksm) for the real scenario backend.

Four parts, used by ``real.py``:

* :class:`KsmSysfs` -- read and write the knobs (a refused write raises :class:`KnobError`
  with the kernel's errno), save every writable knob and put them back in a safe order.
* :func:`check_can_drive` -- the refusals (not root, no KSM, not writable, somebody else's
  KSM pages) as one clear line each (:class:`RealBackendError`, exit status 2).
* :class:`Pacer` -- runs ksmd one batch at a time so that every snapshot is taken between
  two batches at the end of a full scan (see the class docstring for the mechanism and
  docs/NOTES.md for what was measured on the live 6.18 kernel).
* :class:`Worker` -- one C process (worker/ksmworker.c) per scenario process, compiled on
  first use, driven over a line protocol on its stdin/stdout.

Plus the readers of /proc/PID/ksm_stat and of the ``KSM:`` line of /proc/PID/smaps.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ksmfs.linux import KNOB_STORE_ORDER, PAGE_SIZE

KSM_DIR = Path("/sys/kernel/mm/ksm")


# Pacing values (see Pacer).  pages_to_scan is an unsigned int (kstrtouint): UINT_MAX makes
# one batch always reach the end of the pass, where ksm_do_scan returns.  The sleep values
# are about 11.6 days: the timed sleep never expires during a run.  Three of them, used in
# turn: ksmd rechecks "sleep_ms != ksm_thread_sleep_millisecs" when it wakes, so going back
# to the value it sleeps on cancels a wake-up (measured: V -> V' -> V gives no batch); with
# three, a repeated trigger differs both from the value ksmd read and from the previous one.
PACE_PAGES_TO_SCAN = 4294967295
PACE_SLEEP_MILLISECS = (1_000_000_000, 1_000_000_001, 1_000_000_002)

# Writable files, in the order KsmSysfs.restore() puts them back (why: ksmfs.linux).
RESTORE_ORDER = KNOB_STORE_ORDER

LOCK_PATH = Path("/tmp/ksmfs-realkernel.lock")
# The knobs saved by the run in progress; left behind only by a run that was SIGKILLed.
STATE_PATH = Path("/tmp/ksmfs-realkernel.saved.json")


class RealBackendError(Exception):
    """The real backend cannot or must not run; ``str(e)`` is the one line to print."""

    exit_code = 2


class KnobError(OSError):
    """A write to /sys/kernel/mm/ksm/NAME that the kernel refused (errno as returned)."""

    def __init__(self, err: int, name: str, value: str) -> None:
        super().__init__(err, os.strerror(err))
        self.name = name
        self.value = value

    def __str__(self) -> str:
        return (
            f"/sys/kernel/mm/ksm/{self.name}: writing {self.value!r} failed: "
            f"{errno.errorcode.get(self.errno or 0, '?')} ({self.strerror})"
        )


def token_page_bytes(token: int) -> bytes:
    """The 4096 bytes that stand for content ``token`` (the worker writes the same).

    Token 0 is the all-zero page; any other token is its 8 big-endian bytes repeated 512
    times, so that comparing pages with memcmp orders them like their tokens and distinct
    tokens never give equal pages.
    """
    token = int(token)
    if token == 0:
        return bytes(PAGE_SIZE)
    return token.to_bytes(8, "big") * (PAGE_SIZE // 8)


# --------------------------------------------------------------------------- sysfs


class KsmSysfs:
    """The files of /sys/kernel/mm/ksm, read and written one ``read``/``write`` call each."""

    def __init__(self, root: Path = KSM_DIR) -> None:
        self.root = root
        self.saved: dict[str, str] = {}
        self.state_path: Path | None = None

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir())

    def writable(self) -> list[str]:
        # kernfs gives 0644 to __ATTR_RW files and 0444 to __ATTR_RO ones (spec §1.1)
        return [n for n in self.names() if os.stat(self.root / n).st_mode & 0o200]

    def read(self, name: str) -> str:
        return (self.root / name).read_text().strip()

    def read_int(self, name: str) -> int:
        return int(self.read(name))

    def write(self, name: str, value: int | str) -> None:
        """One write(2) of ``value`` plus a newline; KnobError with the kernel's errno."""
        text = str(int(value)) if isinstance(value, bool) else str(value)
        try:
            fd = os.open(self.root / name, os.O_WRONLY)
        except OSError as e:
            raise KnobError(e.errno or errno.EIO, name, text) from None
        try:
            os.write(fd, f"{text}\n".encode())
        except OSError as e:
            raise KnobError(e.errno or errno.EIO, name, text) from None
        finally:
            os.close(fd)

    def numeric(self) -> dict[str, int]:
        """Every readable numeric file as an int (advisor_mode is the one that is not)."""
        out: dict[str, int] = {}
        for n in self.names():
            text = self.read(n)
            try:
                out[n] = int(text)
            except ValueError:
                continue
        return out

    def advisor_mode(self) -> str:
        """``none`` or ``scan-time`` (the bracketed word of ``[none] scan-time``)."""
        text = self.read("advisor_mode") if (self.root / "advisor_mode").exists() else "[none]"
        m = re.search(r"\[([^\]]+)\]", text)
        return m.group(1) if m else "none"

    def save(self, state_path: Path | None = None) -> None:
        """Remember every writable knob (advisor_mode as its selected word).

        With ``state_path`` the values also go to that file until restore() has put them
        back, so that a run killed with SIGKILL can be repaired by the next one
        (:func:`recover_stale_state`)."""
        self.saved = {}
        for n in self.writable():
            self.saved[n] = self.advisor_mode() if n == "advisor_mode" else self.read(n)
        self.state_path = state_path
        if state_path is not None:
            tmp = state_path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"pid": os.getpid(), "saved": self.saved}))
            os.replace(tmp, state_path)

    def wait_pages_shared_zero(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while self.read_int("pages_shared") != 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def restore(self, warn: Callable[[str], None]) -> None:
        """Unmerge everything and put every saved knob back.

        Order (CONTRIBUTING.md): run=2 (synchronous unmerge, mm/ksm.c run_store), wait until
        pages_shared is 0, run=0, then the saved values with advisor_mode first and
        max_page_sharing / merge_across_nodes only while pages_shared == 0, run last.
        Signals are blocked meanwhile: a pending signal aborts run=2 with EINTR.
        """
        if not self.saved:
            return
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            for name, value in (("run", 2),):
                self._try_write(name, value, warn)
            if not self.wait_pages_shared_zero():
                warn("restore: pages_shared did not reach 0 after run=2")
            self._try_write("run", 0, warn)
            names = [n for n in RESTORE_ORDER if n in self.saved]
            names += sorted(n for n in self.saved if n not in names and n != "run")
            for name in names:
                want = self.saved[name]
                if name == "advisor_mode" and want != "none":
                    continue  # scan-time is put back last: it overrides pages_to_scan
                current = self.advisor_mode() if name == "advisor_mode" else self.read(name)
                if current == want:
                    continue
                if name in ("max_page_sharing", "merge_across_nodes") and self.read_int(
                    "pages_shared"
                ):
                    warn(f"restore: {name} left at {current}: pages are still shared")
                    continue
                self._try_write(name, want, warn)
            if self.saved.get("advisor_mode", "none") != "none":
                self._try_write("advisor_mode", self.saved["advisor_mode"], warn)
            if "run" in self.saved and self.read("run") != self.saved["run"]:
                self._try_write("run", self.saved["run"], warn)
            if self.state_path is not None:
                self.state_path.unlink(missing_ok=True)
                self.state_path = None
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def _try_write(self, name: str, value: int | str, warn: Callable[[str], None]) -> None:
        try:
            self.write(name, value)
        except KnobError as e:
            warn(f"restore: {e}")


# --------------------------------------------------------------------------- refusals


def foreign_ksm_users(exclude: Iterable[int] = ()) -> list[tuple[int, int]]:
    """(pid, ksm_rmap_items) of every process, other than ``exclude``, with rmap items."""
    skip = set(exclude)
    found: list[tuple[int, int]] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        try:
            with open(f"/proc/{entry.name}/ksm_stat") as f:
                first = f.readline().split()
        except OSError:
            continue
        if len(first) == 2 and first[0] == "ksm_rmap_items" and int(first[1]) > 0:
            found.append((int(entry.name), int(first[1])))
    return found


def check_can_drive(sysfs: KsmSysfs) -> None:
    """Raise RealBackendError (one line) unless this process may drive the real KSM now."""
    check_access(sysfs)
    check_no_foreign_pages(sysfs)


def check_access(sysfs: KsmSysfs) -> None:
    """RealBackendError unless /sys/kernel/mm/ksm exists and we are root and can write."""
    if not sysfs.root.is_dir():
        raise RealBackendError(
            f"{sysfs.root} does not exist (kernel built without CONFIG_KSM?)"
        )
    if os.geteuid() != 0:
        raise RealBackendError(
            f"needs root to write {sysfs.root} (euid {os.geteuid()})"
        )
    # a write of the current value of a knob without side effects proves writability
    # (a read-only sysfs mount in a container refuses it with EROFS)
    probe = "stable_node_chains_prune_millisecs"
    try:
        sysfs.write(probe, sysfs.read(probe))
    except (KnobError, OSError) as e:
        raise RealBackendError(f"{sysfs.root} is not writable: {e}") from None


def check_no_foreign_pages(sysfs: KsmSysfs) -> None:
    """RealBackendError if KSM already holds pages or rmap items of other processes:
    they would be counted with ours (and we would unmerge them at the end)."""
    counts = {n: sysfs.read_int(n) for n in ("pages_shared", "pages_sharing", "ksm_zero_pages")}
    if any(counts.values()):
        detail = ", ".join(f"{k} {v}" for k, v in counts.items())
        raise RealBackendError(
            f"other processes already use KSM ({detail}); "
            "refusing to mix their pages into the counts"
        )
    users = foreign_ksm_users(exclude=(os.getpid(),))
    if users:
        detail = ", ".join(f"pid {p} ({n} rmap items)" for p, n in users[:5])
        raise RealBackendError(
            f"other processes already use KSM: {detail}; "
            "refusing to mix their pages into the counts"
        )


def recover_stale_state(sysfs: KsmSysfs, warn: Callable[[str], None],
                        state_path: Path = STATE_PATH) -> bool:
    """Finish the restore of a run that died without it (SIGKILL, power of the OOM
    killer): its workers are gone, but the pacing knobs are still set and, with run=0,
    the counts of the dead workers' pages remain until run=2.  Call with the lock held."""
    try:
        data = json.loads(state_path.read_text())
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        state_path.unlink(missing_ok=True)
        return False
    warn(f"a real run (pid {data.get('pid')}) ended without restoring /sys/kernel/mm/ksm; "
         "restoring the values it had saved")
    sysfs.saved = {str(k): str(v) for k, v in data.get("saved", {}).items()}
    sysfs.state_path = state_path
    sysfs.restore(warn)
    return True


@contextmanager
def exclusive_lock() -> Iterator[None]:
    """One real-kernel run at a time on this machine (flock on LOCK_PATH)."""
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RealBackendError(
                f"another run drives the real KSM ({LOCK_PATH} is locked)"
            ) from None
        yield
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- ksmd


def find_ksmd() -> int:
    """The pid of the ksmd kernel thread (parent kthreadd, pid 2)."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if stat.split(" ", 2)[1] == "(ksmd)":
            return int(name)
    raise RealBackendError("no ksmd kernel thread found")


@dataclass(frozen=True)
class KsmdState:
    state: str  # /proc/PID/stat state letter
    nvcsw: int  # voluntary_ctxt_switches: +1 every time ksmd goes to sleep
    top: str  # first frame of /proc/PID/stack ("" when unreadable)


class Ksmd:
    """Observes the ksmd thread: its state letter, its sleeps, its kernel stack."""

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid if pid is not None else find_ksmd()
        self.has_stack = self._read_stack() is not None

    def _read_stack(self) -> str | None:
        try:
            with open(f"/proc/{self.pid}/stack") as f:
                first = f.readline()
        except OSError:
            return None
        return first.split("]", 1)[-1].strip()

    def state(self) -> KsmdState:
        with open(f"/proc/{self.pid}/stat") as f:
            letter = f.read().rsplit(")", 1)[1].split()[0]
        nvcsw = 0
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches:"):
                    nvcsw = int(line.split()[1])
                    break
        return KsmdState(letter, nvcsw, (self._read_stack() or "") if self.has_stack else "")

    def asleep_in_loop(self, st: KsmdState) -> bool:
        """ksmd sleeps in ksm_scan_thread's own wait (timed or untimed), not inside a batch.

        Within ksm_do_scan ksmd can only block uninterruptibly (mutexes, rwsems, page
        locks, lru_add_drain_all: state D); the only interruptible sleeps are the two
        waits of ksm_scan_thread, whose frame is then the top of /proc/PID/stack.
        """
        if st.state != "S":
            return False
        return not self.has_stack or st.top.startswith("ksm_scan_thread+")


@dataclass(frozen=True)
class BatchResult:
    full_scans_before: int
    full_scans_after: int
    pages_scanned_delta: int
    seconds: float
    retriggers: int

    @property
    def pass_ended(self) -> bool:
        return self.full_scans_after != self.full_scans_before

    @property
    def ran(self) -> bool:
        return self.pass_ended or self.pages_scanned_delta > 0


class Pacer:
    """Runs ksmd exactly one batch at a time.

    Between batches the real ``run`` is 0 and ksmd sleeps in one of the two waits of
    mm/ksm.c ksm_scan_thread: the timed one (``sleep_millisecs``, here ~11 days; it ends
    early only when the value of sleep_millisecs changes) or the untimed one (woken by a
    write of run=1 or by the first mm registering; it rechecks ksmd_should_run()).  A
    trigger writes a *different* sleep_millisecs (wakes the timed wait) and then run=1
    (wakes the untimed wait): in every interleaving ksmd runs exactly one batch and then
    goes back to the timed wait.  With pages_to_scan = UINT_MAX that batch is exactly one
    full pass: ksm_do_scan returns as soon as scan_get_next_rmap_item ends a pass.

    The batch is over when ksmd is asleep in its loop again *and* has gone to sleep at
    least once since the trigger (voluntary_ctxt_switches grew).  Then run goes back to 0,
    so that nothing a step does between two passes (a process registering, which wakes
    ksmd when the mm list was empty) can start a batch.  The run=0 write also takes
    ksm_thread_mutex, a barrier behind the batch.
    """

    def __init__(self, sysfs: KsmSysfs, ksmd: Ksmd, *, pass_batches: bool = True) -> None:
        self.sysfs = sysfs
        self.ksmd = ksmd
        self.pass_batches = pass_batches
        self._sleep_index = 0
        self.batches = 0
        self.retriggers = 0

    @property
    def sleep_value(self) -> int:
        return PACE_SLEEP_MILLISECS[self._sleep_index]

    def install(self) -> None:
        """Pacing values (run must already be 0)."""
        self.sysfs.write("sleep_millisecs", self.sleep_value)
        if self.pass_batches and self.sysfs.advisor_mode() == "none":
            self.sysfs.write("pages_to_scan", PACE_PAGES_TO_SCAN)

    def _flip_sleep(self) -> None:
        self._sleep_index = (self._sleep_index + 1) % len(PACE_SLEEP_MILLISECS)
        self.sysfs.write("sleep_millisecs", self.sleep_value)

    def one_batch(self, *, stuck_seconds: float = 5.0) -> BatchResult:
        """Let ksmd run one batch; returns when it sleeps again (run is 0 again)."""
        fs0 = self.sysfs.read_int("full_scans")
        ps0 = self.sysfs.read_int("pages_scanned")
        st0 = self.ksmd.state()
        t0 = time.monotonic()
        self._flip_sleep()
        self.sysfs.write("run", 1)
        retriggers = 0
        idle_since: float | None = None
        while True:
            st = self.ksmd.state()
            if st.nvcsw > st0.nvcsw and self.ksmd.asleep_in_loop(st):
                break
            if st.nvcsw == st0.nvcsw and self.ksmd.asleep_in_loop(st):
                # ksmd has not slept since the trigger: not woken yet, or (if a previous
                # batch had not yet read sleep_millisecs) sleeping on our new value. Give
                # it time, then trigger again; a second trigger is harmless either way.
                now = time.monotonic()
                if idle_since is None:
                    idle_since = now
                elif now - idle_since > stuck_seconds:
                    self._flip_sleep()
                    retriggers += 1
                    idle_since = None
            else:
                idle_since = None
            time.sleep(0.0005)
        self.sysfs.write("run", 0)
        self.batches += 1
        self.retriggers += retriggers
        return BatchResult(
            fs0,
            self.sysfs.read_int("full_scans"),
            self.sysfs.read_int("pages_scanned") - ps0,
            time.monotonic() - t0,
            retriggers,
        )

    def full_scan(self) -> tuple[bool, list[BatchResult]]:
        """Batches until full_scans moves. (True, batches) for a real pass; (False, …)
        when ksmd had nothing to do (no mm registered, or pages_to_scan 0): virtual."""
        batches: list[BatchResult] = []
        while True:
            b = self.one_batch()
            batches.append(b)
            if b.pass_ended:
                return True, batches
            if not b.ran:
                return False, batches


# --------------------------------------------------------------------------- /proc readers


def read_ksm_stat(pid: int) -> dict[str, int | str]:
    """/proc/PID/ksm_stat: numbers as ints, the yes/no lines as strings (colon dropped)."""
    out: dict[str, int | str] = {}
    with open(f"/proc/{pid}/ksm_stat") as f:
        for line in f:
            key, _, value = line.partition(" ")
            key = key.rstrip(":")
            value = value.strip()
            out[key] = int(value) if re.fullmatch(r"-?\d+", value) else value
    return out


_SMAPS_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) ")


def read_smaps_ksm_kb(pid: int) -> dict[int, int]:
    """VMA start address -> the ``KSM:`` line of its /proc/PID/smaps block, in kB."""
    out: dict[int, int] = {}
    start: int | None = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = _SMAPS_HEADER.match(line)
            if m:
                start = int(m.group(1), 16)
            elif line.startswith("KSM:") and start is not None:
                out[start] = int(line.split()[1])
    return out


# --------------------------------------------------------------------------- worker

WORKER_SOURCE = Path(__file__).with_name("worker") / "ksmworker.c"
WORKER_CFLAGS = ("-O2", "-Wall", "-static")


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ksmfs"


def build_worker(source: Path = WORKER_SOURCE) -> Path:
    """Compile the worker with gcc -O2 into a cache dir, once per source version."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RealBackendError(
            "gcc not found; it compiles the worker "
            f"{source.name} at run time (apt-get install gcc)"
        )
    src = source.read_bytes()
    digest = hashlib.sha256(src + " ".join(WORKER_CFLAGS).encode()).hexdigest()[:16]
    for cache in (_cache_dir(), Path(f"/tmp/ksmfs-worker-{os.getuid()}")):
        exe = cache / f"ksmworker-{digest}"
        if exe.exists():
            return exe
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        tmp = cache / f".ksmworker-{digest}.{os.getpid()}"
        for flags in (WORKER_CFLAGS, tuple(f for f in WORKER_CFLAGS if f != "-static")):
            r = subprocess.run(
                [gcc, *flags, "-o", str(tmp), str(source)], capture_output=True, text=True
            )
            if r.returncode == 0:
                os.replace(tmp, exe)
                return exe
        first = (r.stderr.strip().splitlines() or ["?"])[0]
        raise RealBackendError(f"gcc could not build {source.name}: {first}")
    raise RealBackendError("no writable cache directory for the worker")


class WorkerError(Exception):
    """A worker command failed; ``errno`` is the errno the worker's syscall returned."""

    def __init__(self, err: int, what: str) -> None:
        super().__init__(f"{what}: {os.strerror(err)}")
        self.errno = err


def _open_fifo_writer(path: Path, timeout: float) -> int:
    """Open a FIFO for writing once its reader is there (ENXIO until then), or fail."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            if e.errno != errno.ENXIO or time.monotonic() > deadline:
                raise WorkerError(e.errno or errno.EIO, f"forked worker: open {path.name}") from None
        time.sleep(0.001)


class Worker:
    """One scenario process: a ksmworker driven over a line protocol.

    ``Worker(exe, reserve_pages, name)`` starts a new worker (its stdin/stdout are pipes);
    :meth:`fork` makes a worker out of a fork(2) of this one, talking over two FIFOs."""

    def __init__(self, exe: Path, reserve_pages: int, name: str = "") -> None:
        self.name = name
        # own session: a terminal's SIGINT reaches only us, and we tear the workers down
        self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [str(exe), str(reserve_pages)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            start_new_session=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.pid = self.proc.pid
        self._in = self.proc.stdin.fileno()
        self._out = self.proc.stdout
        self._pidfd: int | None = None
        self.vmas: list[tuple[int, int]] = []  # (start address, pages)
        ready = self._readline()
        if ready != "ready":
            self.kill()
            raise WorkerError(errno.EIO, f"worker start: {ready!r}")

    @classmethod
    def _forked(cls, name: str, pid: int, in_fd: int, out_fd: int,
                vmas: list[tuple[int, int]]) -> Worker:
        w = cls.__new__(cls)
        w.name = name
        w.proc = None
        w.pid = pid
        w._in = in_fd
        w._out = os.fdopen(out_fd, "rb", buffering=0)
        w._pidfd = os.pidfd_open(pid)
        w.vmas = list(vmas)
        return w

    def _readline(self) -> str:
        line = self._out.readline()
        if not line:
            raise WorkerError(errno.EPIPE, f"worker {self.name or self.pid} exited")
        return line.decode().strip()

    def _cmd(self, line: str, payload: bytes = b"") -> str:
        data = line.encode() + b"\n" + payload
        view = memoryview(data)
        while view:
            n = os.write(self._in, view)
            view = view[n:]
        reply = self._readline()
        if reply.startswith("err "):
            _, code, what = reply.split(" ", 2)
            raise WorkerError(int(code), what)
        if not reply.startswith("ok"):
            raise WorkerError(errno.EPROTO, f"worker reply {reply!r}")
        return reply[3:]

    def map(self, pages: int, shared: bool) -> int:
        """mmap a new VMA (after a guard page); returns its start address."""
        addr = int(self._cmd(f"map {pages} {int(shared)}"), 16)
        self.vmas.append((addr, pages))
        return addr

    def fill(self, index: int, first: int, tokens: np.ndarray) -> None:
        """Write pages first… of VMA ``index`` with the contents of ``tokens``."""
        data = np.ascontiguousarray(tokens, dtype="<u8").tobytes()
        self._cmd(f"fill {index} {first} {len(tokens)}", data)

    def madvise(self, index: int, advice: int, first: int = 0, count: int | None = None) -> None:
        """madvise pages ``first … first+count-1`` of VMA ``index`` (default: all)."""
        if count is None:
            count = self.vmas[index][1] - first
        self._cmd(f"madvise {index} {advice} {first} {count}")

    def munmap(self, index: int, first: int, count: int) -> None:
        self._cmd(f"munmap {index} {first} {count}")

    def merge_any(self, enable: bool, cleanup: bool = True) -> int:
        """prctl(PR_SET_MEMORY_MERGE); with cleanup, returns how many own VMAs were made
        unmergeable again."""
        return int(self._cmd(f"merge_any {int(enable)} {int(cleanup)}") or 0)

    def fork(self, name: str = "") -> Worker:
        """fork(2) this worker; the child is a worker of its own (same VMA indices).

        The child talks over two FIFOs in a private directory, opened so that nobody
        waits: our read end first (non-blocking), then the child opens its write end and
        its read end, and our blocking open of the write end returns once it has."""
        tmp = Path(tempfile.mkdtemp(prefix="ksmworker-"))
        try:
            to_child, from_child = tmp / "in", tmp / "out"
            os.mkfifo(to_child, 0o600)
            os.mkfifo(from_child, 0o600)
            out_fd = os.open(from_child, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                pid = int(self._cmd(f"fork {to_child} {from_child}"))
                in_fd = _open_fifo_writer(to_child, timeout=10.0)
            except BaseException:
                os.close(out_fd)
                raise
            os.set_blocking(out_fd, True)
            os.set_blocking(in_fd, True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        child = Worker._forked(name, pid, in_fd, out_fd, self.vmas)
        ready = child._readline()
        if ready != "ready":
            child.kill()
            raise WorkerError(errno.EIO, f"forked worker start: {ready!r}")
        return child

    def _wait_gone(self, timeout: float) -> bool:
        """A forked worker has exited (its mm is gone: exit_mm runs before the pidfd
        becomes readable in do_exit)."""
        assert self._pidfd is not None
        r, _, _ = select.select([self._pidfd], [], [], timeout)
        return bool(r)

    def exit(self) -> None:
        """Exit and wait: when this returns the mm is gone (__ksm_exit has run)."""
        try:
            os.write(self._in, b"exit\n")
        except OSError:
            pass
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.kill()
        elif not self._wait_gone(5):
            self.kill()
        self._close()

    def kill(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        elif self._pidfd is not None:
            try:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._wait_gone(5)
        self._close()

    def _close(self) -> None:
        if self.proc is not None:
            for f in (self.proc.stdin, self.proc.stdout):
                if f is not None:
                    try:
                        f.close()
                    except OSError:
                        pass
            return
        for close in (functools.partial(os.close, self._in), self._out.close):
            try:
                close()
            except OSError:
                pass
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        self._in = -1

    def ksm_stat(self) -> dict[str, int | str]:
        return read_ksm_stat(self.pid)

    def smaps_ksm_kb(self) -> dict[int, int]:
        return read_smaps_ksm_kb(self.pid)

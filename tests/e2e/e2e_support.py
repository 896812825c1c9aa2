"""Helpers for real-mount tests: start `python -m ksmfs mount` in a subprocess, unmount
in a finally, and prove that no mount and no server process is left behind."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ksmfs.runtime import find_mount, log_file, read_server_pid

REAL_KSM = Path("/sys/kernel/mm/ksm")
FUSERMOUNT = shutil.which("fusermount3")
FUSE_MISSING = (
    "/dev/fuse is missing"
    if not os.path.exists("/dev/fuse")
    else "fusermount3 is missing"
    if FUSERMOUNT is None
    else None
)



@functools.cache
def real_ksm_unusable() -> str | None:
    """Why this process cannot write the real /sys/kernel/mm/ksm (None: it can).

    A write of a knob's current value proves it, as the real backend's own check does
    (ksmfs.scenario.realkernel.check_access): a read-only /sys, as in a container, refuses
    it with EROFS while the directory is there and readable. Called by tests only, never
    at import: the probe is a write to the machine's global KSM.
    """
    from ksmfs.scenario.realkernel import KsmSysfs, RealBackendError, check_access

    try:
        check_access(KsmSysfs())
    except RealBackendError as e:
        return f"real KSM not writable here: {e}"
    return None


def need_writable_real_ksm() -> None:
    """Skip the calling test, with the reason, unless the real KSM is writable."""
    reason = real_ksm_unusable()
    if reason:
        pytest.skip(reason)


# Every real-mount test: the `fuse` marker, and a skip where FUSE cannot work.
fuse_test = [
    pytest.mark.fuse,
    pytest.mark.skipif(FUSE_MISSING is not None, reason=FUSE_MISSING or ""),
]

# A scenario whose kernel is in the default state once `run` is written 0: one process
# with one non-mergeable page registers nothing with ksmd, so every counter stays 0.
IDLE_SCENARIO = """\
name = "idle"
description = "one process, nothing mergeable"
max_full_scans = 1

[[process]]
name = "idle"
  [[process.vma]]
  name = "heap"
  pages = 1
"""


def ksmfs(*args: str) -> list[str]:
    return [sys.executable, "-m", "ksmfs", *args]


def fuse_mounts_under(root: Path) -> list[str]:
    """FUSE mount points below ``root`` in /proc/self/mountinfo (stale ones too)."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split(" - ")[0].split()
            fstype = line.split(" - ")[1].split()[0]
            if fstype.startswith("fuse") and fields[4].startswith(str(root)):
                out.append(fields[4])
    return out


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"
    except OSError:
        return False


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def force_cleanup(mountpoint: Path, pid: int | None) -> None:
    """Last resort of a teardown: lazy unmount and SIGKILL."""
    if find_mount(str(mountpoint)) is not None and FUSERMOUNT:
        subprocess.run([FUSERMOUNT, "-u", "-z", str(mountpoint)], capture_output=True)
    if pid is not None and pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid), 5)


@dataclass
class Mount:
    path: Path
    pid: int
    banner: str = ""

    @property
    def ksm(self) -> Path:
        return self.path / "sys" / "kernel" / "mm" / "ksm"

    def read(self, rel: str) -> str:
        return (self.path / rel).read_text()

    def ksm_value(self, name: str) -> int:
        return int((self.ksm / name).read_text())

    def control(self, *lines: str) -> str:
        """Write commands to ksmfs/control; return ksmfs/last."""
        fd = os.open(self.path / "ksmfs" / "control", os.O_WRONLY)
        try:
            os.write(fd, ("\n".join(lines) + "\n").encode())
        finally:
            os.close(fd)
        return self.read("ksmfs/last").strip()

    def write_ksm(self, name: str, value: str) -> None:
        fd = os.open(self.ksm / name, os.O_WRONLY)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)


@contextlib.contextmanager
def public_dir(prefix: str = "ksmfs-e2e-") -> Iterator[Path]:
    """A directory under /tmp that other users can traverse (pytest's tmp dirs are 0700);
    a mount left at its ``mnt`` is unmounted and the directory removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        if find_mount(str(d / "mnt")) is not None and FUSERMOUNT:
            subprocess.run([FUSERMOUNT, "-u", "-z", str(d / "mnt")])
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def mounted(
    mountpoint: Path, *args: str, timeout: float = 60, clear_stale: bool = True
) -> Iterator[Mount]:
    """`ksmfs mount MOUNTPOINT ARGS` (daemon mode); `ksmfs umount` in the finally, then
    assert that neither the mount nor the server is left."""
    if clear_stale:
        for stale in fuse_mounts_under(mountpoint):
            subprocess.run([FUSERMOUNT or "fusermount3", "-u", "-z", stale], capture_output=True)
    if find_mount(str(mountpoint)) is None:
        mountpoint.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(ksmfs("mount", str(mountpoint), *args), capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"mount failed ({r.returncode}): {r.stderr}"
    pid = read_server_pid(str(mountpoint))
    assert pid is not None, "no server pid file after a successful mount"
    try:
        yield Mount(mountpoint, pid, r.stdout)
    finally:
        u = subprocess.run(ksmfs("umount", str(mountpoint)), capture_output=True, text=True,
                           timeout=60)
        gone = wait_until(lambda: not pid_alive(pid), 10)
        leftover = find_mount(str(mountpoint))
        force_cleanup(mountpoint, pid)
        assert u.returncode == 0, f"umount failed: {u.stderr}"
        assert leftover is None, f"mount left behind at {mountpoint}"
        assert gone, f"server {pid} still running after umount"
        # The adapter turns bugs into EIO plus a logged traceback: none may appear.
        logpath = log_file(os.path.realpath(mountpoint))
        if logpath.exists():  # a clean server removes a log with nothing but INFO lines
            log = logpath.read_text()
            logpath.unlink()
            assert " ERROR" not in log and "Traceback" not in log, log[-3000:]


def run(cmd: list[str] | str, **kw) -> subprocess.CompletedProcess:
    """A command with captured text output (a string runs through bash -c)."""
    if isinstance(cmd, str):
        cmd = ["bash", "-c", cmd]
    kw.setdefault("timeout", 60)
    return subprocess.run(cmd, capture_output=True, text=True, **kw)

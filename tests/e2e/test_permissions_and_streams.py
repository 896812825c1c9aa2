"""allow_other with the kernel's permission model (checked as user nobody, next to the
real /sys and /proc), trace_pipe streaming, and an unmount while a reader is blocked."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from e2e_support import (
    FUSERMOUNT,
    REAL_KSM,
    fuse_test,
    ksmfs,
    mounted,
    need_writable_real_ksm,
    run,
    wait_until,
)
from e2e_support import public_dir as e2e_public_dir

from ksmfs.runtime import find_mount

pytestmark = [*fuse_test, pytest.mark.timeout(120)]

NOBODY = 65534
SETPRIV = shutil.which("setpriv")


def as_nobody(cmd: str):
    return run([SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                "bash", "-c", cmd])


@pytest.fixture
def public_dir():
    """A directory other users can traverse (pytest's tmp dirs are 0700)."""
    with e2e_public_dir() as d:
        yield d


@pytest.mark.skipif(SETPRIV is None or os.geteuid() != 0, reason="needs root and setpriv")
def test_allow_other_applies_the_kernels_permission_model(public_dir):
    """Other users read the 0444 counters, cannot write 0644 knobs, and read only their
    own 0400 /proc/PID/ksm_stat -- exactly what they get from the real kernel."""
    with mounted(public_dir / "mnt", "--allow-other") as m:
        mine = m.control(f"spawn nobodys uid={NOBODY} pages=4").split()[1]
        other = m.control("spawn someone uid=1000 pages=4").split()[1]
        root_pid = m.control("spawn rootish pages=4").split()[1]
        ok = as_nobody(f"cat {m.ksm}/pages_sharing {m.path}/proc/{mine}/ksm_stat")
        assert ok.returncode == 0, ok.stderr
        assert "ksm_merging_pages" in ok.stdout
        for cmd in (f"echo 1 > {m.ksm}/run", f"cat {m.path}/proc/{other}/ksm_stat",
                    f"cat {m.path}/proc/{root_pid}/ksm_stat", f"touch {m.ksm}/new"):
            r = as_nobody(cmd)
            assert r.returncode != 0 and "Permission denied" in r.stderr, (cmd, r)


@pytest.mark.realkernel
@pytest.mark.skipif(SETPRIV is None or os.geteuid() != 0, reason="needs root and setpriv")
def test_the_real_kernel_gives_nobody_the_same_answers():
    """What the test above expects from the mount is what the real kernel answers user
    nobody: the counters are readable, a knob write and root's ksm_stat are refused."""
    need_writable_real_ksm()  # on a read-only /sys the write gives EROFS instead
    assert as_nobody(f"cat {REAL_KSM}/pages_sharing").returncode == 0
    assert "Permission denied" in as_nobody(f"echo 1 > {REAL_KSM}/run").stderr
    if Path("/proc/1/ksm_stat").exists():
        assert "Permission denied" in as_nobody("cat /proc/1/ksm_stat").stderr


@pytest.mark.skipif(SETPRIV is None or os.geteuid() != 0, reason="needs root and setpriv")
def test_without_allow_other_other_users_see_nothing(public_dir):
    """Without --allow-other only the mounting user may enter the mount (FUSE)."""
    with mounted(public_dir / "mnt") as m:
        r = as_nobody(f"ls {m.path}")
        assert r.returncode != 0 and "Permission denied" in r.stderr


def test_trace_pipe_streams_events_as_ksmd_emits_them(tmp_path):
    """`cat trace_pipe` blocks, then prints ksm events as ksmd runs."""
    with mounted(tmp_path / "mnt", "--speed", "5") as m:
        tracing = m.path / "sys/kernel/tracing"
        (tracing / "events/ksm/enable").write_text("1\n")
        cat = subprocess.Popen(["cat", str(tracing / "trace_pipe")], stdout=subprocess.PIPE,
                               text=True)
        try:
            ready, _, _ = select.select([cat.stdout], [], [], 20)
            assert ready, "no trace line within 20 s"
            line = cat.stdout.readline()
            assert "ksmd-" in line and ": ksm_" in line, line
        finally:
            cat.kill()
            cat.wait()


def test_sigterm_ends_a_blocked_trace_pipe_read_and_unmounts(tmp_path):
    """A reader blocked in trace_pipe gets EOF on SIGTERM; the server still unmounts."""
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    server = subprocess.Popen(ksmfs("mount", str(mountpoint), "--foreground"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    cat = None
    try:
        assert wait_until(lambda: (mountpoint / "sys").exists(), 30)
        # Tracing stays off (no event enabled): the read blocks for good.
        cat = subprocess.Popen(["cat", str(mountpoint / "sys/kernel/tracing/trace_pipe")],
                               stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        assert cat.poll() is None, "trace_pipe did not block"
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=20)
        assert server.returncode == 0, err
        assert cat.wait(timeout=10) == 0  # EOF, not an error
        assert find_mount(str(mountpoint)) is None
    finally:
        for p in (cat, server):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        if find_mount(str(mountpoint)) is not None:
            subprocess.run([FUSERMOUNT, "-u", "-z", str(mountpoint)])


@pytest.mark.skipif(SETPRIV is None or os.geteuid() != 0, reason="needs root and setpriv")
def test_a_server_that_cannot_mount_is_reported_by_the_parent(public_dir):
    """The forked server's failure (here: nobody may not open /dev/fuse) comes back
    through the pipe as one line naming libfuse's reason; exit 1, nothing mounted."""
    if os.stat("/dev/fuse").st_mode & 0o006:
        pytest.skip("/dev/fuse is open to everyone here")
    # The checkout (or its venv) may be where nobody cannot read, e.g. below a 0700 /root.
    probe = as_nobody(f"{sys.executable} -c 'import ksmfs.runtime'")
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"user nobody cannot run ksmfs from this checkout ({last})")
    mnt, rundir = public_dir / "mnt", public_dir / "run"
    for d in (mnt, rundir):
        d.mkdir()
        os.chown(d, NOBODY, NOBODY)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(rundir)}
    r = subprocess.run([SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                        *ksmfs("mount", str(mnt))], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "/dev/fuse" in r.stderr, r.stderr
    assert find_mount(str(mnt)) is None


def test_select_on_trace_pipe_waits_for_events(tmp_path):
    """select(2) on trace_pipe: not readable while tracing is off, readable once ksmd
    emits events (FUSE poll, notified by the adapter)."""
    with mounted(tmp_path / "mnt", "--speed", "5") as m:
        tracing = m.path / "sys/kernel/tracing"
        fd = os.open(tracing / "trace_pipe", os.O_RDONLY)
        try:
            ready, _, _ = select.select([fd], [], [], 0.5)
            assert ready == []
            (tracing / "events/ksm/enable").write_text("1\n")
            ready, _, _ = select.select([fd], [], [], 20)
            assert ready == [fd]
            assert b": ksm_" in os.read(fd, 65536)
        finally:
            os.close(fd)
            (tracing / "events/ksm/enable").write_text("0\n")

"""The /proc readers of ksmfs capture, on this test process and a child of it."""

from __future__ import annotations

import os
import subprocess
import sys

from ksmfs.capture import procfs
from ksmfs.kernel.mm import VM_GROWSDOWN, VM_READ, VM_WRITE


def test_smaps_of_this_process() -> None:
    vmas = procfs.read_smaps(os.getpid())
    assert vmas == sorted(vmas, key=lambda v: v.start)
    (stack,) = [v for v in vmas if v.name == "[stack]"]
    assert stack.flags & VM_GROWSDOWN and stack.flags & (VM_READ | VM_WRITE) == VM_READ | VM_WRITE
    assert stack.ksm_compatible and stack.rss_kb > 0
    for v in vmas:
        if v.name == "[vvar]" or v.name == "[vdso]":
            assert not v.ksm_compatible  # VM_DONTEXPAND (VmFlags "de")
    assert procfs.read_proc(os.getpid()).comm  # type: ignore[union-attr]


def test_stat_with_a_comm_full_of_parens_and_kernel_threads() -> None:
    code = ("import ctypes, sys; ctypes.CDLL(None).prctl(15, b'a) b (c', 0, 0, 0); "
            "print('ok', flush=True); sys.stdin.read()")
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE)
    try:
        assert p.stdout is not None and p.stdout.readline() == b"ok\n"
        comm, flags, start = procfs.read_stat(p.pid)
        assert comm == "a) b (c" and not flags & procfs.PF_KTHREAD and start > 0
    finally:
        p.kill()
        p.wait()
    kthreads = [pid for pid in procfs.list_pids() if os.path.exists(f"/proc/{pid}/stat")
                and _is_kthread(pid)]
    if os.path.exists("/proc/2/stat"):  # kthreadd, where the pid namespace shows it
        assert 2 in kthreads and procfs.read_proc(2) is None


def _is_kthread(pid: int) -> bool:
    try:
        return procfs.is_kernel_thread(pid)
    except OSError:
        return False

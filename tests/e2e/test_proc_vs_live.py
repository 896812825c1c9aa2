"""The rest of /proc next to the live one: /proc/PID/{limits,io,environ,fd,task}, loadavg
and sys/kernel/pid_max have the live kernel's names, modes and formats (read with real
cat and Python I/O; expectations are taken from the live files, never written down), and
psutil reading a whole /proc keeps every simulated process."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from e2e_support import fuse_test, mounted, run
from ksm_cases import attempt

pytestmark = [*fuse_test, pytest.mark.timeout(180)]

LIVE_PROC = Path("/proc")


@pytest.fixture(scope="module")
def mount(tmp_path_factory):
    root = tmp_path_factory.mktemp("procvslive")
    with mounted(root / "mnt") as m:
        yield m


@pytest.fixture(scope="module")
def sim_pid(mount) -> int:
    return int(mount.control("spawn tester pages=16 fill=unique mergeable").split()[1])


@pytest.fixture(scope="module")
def live_pid():
    """A live single-threaded process, as a simulated task is."""
    proc = subprocess.Popen(["sleep", "600"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def kind_and_mode(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode)


def shape(text: str) -> str:
    """A file's text with every number replaced by N: what a format leaves fixed."""
    return re.sub(r"\d+", "N", text)


def cat(path: Path) -> str:
    r = run(["cat", str(path)])
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("sub", ["", "task/{pid}"])
def test_every_per_process_entry_exists_live_with_the_same_kind_and_mode(
    mount, sim_pid, live_pid, sub
):
    """Each name in /proc/PID (and task/TID) of the mount is a name of the live
    /proc/PID, of the same file type and permission bits."""
    ours = mount.path / "proc" / str(sim_pid) / sub.format(pid=sim_pid)
    live = LIVE_PROC / str(live_pid) / sub.format(pid=live_pid)
    names = os.listdir(ours)
    assert {"limits", "io", "environ", "fd", "status", "stat", "smaps"} <= set(names)
    assert ("task" in names) == (sub == "")
    for name in names:
        assert (live / name).exists(), f"{name} is not in the live {live}"
        assert kind_and_mode(ours / name) == kind_and_mode(live / name), name
    assert kind_and_mode(ours) == kind_and_mode(live)


def test_task_lists_the_one_thread_whose_files_are_the_processes(mount, sim_pid, live_pid):
    """task/ of a single-threaded process holds its pid; task/TID/stat equals stat."""
    assert os.listdir(LIVE_PROC / str(live_pid) / "task") == [str(live_pid)]
    assert os.listdir(mount.path / "proc" / str(sim_pid) / "task") == [str(sim_pid)]
    base = mount.path / "proc" / str(sim_pid)
    for name in ("stat", "status", "statm", "smaps", "limits", "io"):
        assert cat(base / "task" / str(sim_pid) / name) == cat(base / name), name
    assert not (base / "task" / str(sim_pid + 1000)).exists()


def test_fd_is_an_empty_owner_only_directory(mount, sim_pid, live_pid):
    """fd/ is dr-x------ like the live one; a simulated task has no open files."""
    ours = mount.path / "proc" / str(sim_pid) / "fd"
    assert kind_and_mode(ours) == kind_and_mode(LIVE_PROC / str(live_pid) / "fd")
    assert os.listdir(ours) == []


def test_limits_has_the_live_layout(mount, sim_pid, live_pid):
    """Header, row labels, units and column positions are the live file's; every value
    is a number or "unlimited"."""
    live = (LIVE_PROC / str(live_pid) / "limits").read_text().splitlines()
    ours = cat(mount.path / "proc" / str(sim_pid) / "limits").splitlines()
    assert ours[0] == live[0]
    assert len(ours) == len(live)
    cols = [m.start() for m in re.finditer(r"(?<=  )\S", live[0])]  # Soft, Hard, Units
    assert len(cols) == 3
    for a, b in zip(ours[1:], live[1:], strict=True):
        assert a[: cols[0]] == b[: cols[0]]  # the label
        assert a[cols[2] :] == b[cols[2] :]  # the unit (and the trailing padding)
        assert len(a) == len(b) or a[cols[0] :].split() != b[cols[0] :].split()
        for value in (a[cols[0] : cols[1]], a[cols[1] : cols[2]]):
            assert re.fullmatch(r"(unlimited|\d+) *", value), a


def test_limits_nproc_is_half_of_max_threads(mount, sim_pid):
    """fork_init(): RLIMIT_NPROC = max_threads / 2, max_threads = RAM / (8 * 16 KiB);
    the same figure as SigQ's limit in status."""
    limits = cat(mount.path / "proc" / str(sim_pid) / "limits")
    nproc = int(re.search(r"^Max processes +(\d+)", limits, re.M)[1])
    mem_kb = int(re.search(r"^MemTotal: +(\d+) kB", cat(mount.path / "proc/meminfo"), re.M)[1])
    assert nproc == mem_kb * 1024 // (8 * 16384) // 2
    status = cat(mount.path / "proc" / str(sim_pid) / "status")
    assert re.search(r"^SigQ:\t0/(\d+)$", status, re.M)[1] == str(nproc)


def test_io_has_the_live_fields(mount, sim_pid):
    """io: the live file's field names in its order, "name: N" each (read as the owner)."""
    live = Path("/proc/self/io").read_text()
    ours = cat(mount.path / "proc" / str(sim_pid) / "io")
    assert shape(ours) == shape(live)
    assert [ln.split(":")[0] for ln in ours.splitlines()] == [
        ln.split(":")[0] for ln in live.splitlines()
    ]


def test_environ_is_readable_and_empty(mount, sim_pid):
    assert cat(mount.path / "proc" / str(sim_pid) / "environ") == ""


@pytest.mark.parametrize("rel", ["loadavg", "sys", "sys/kernel", "sys/kernel/pid_max"])
def test_global_entries_have_the_live_kind_mode_and_shape(mount, rel):
    ours, live = mount.path / "proc" / rel, LIVE_PROC / rel
    assert kind_and_mode(ours) == kind_and_mode(live)
    assert stat.S_ISDIR(os.stat(ours).st_mode) or shape(cat(ours)) == shape(live.read_text())


def test_loadavg_counts_the_tasks_and_the_last_pid(mount, sim_pid):
    fields = cat(mount.path / "proc/loadavg").split()
    pids = [int(n) for n in os.listdir(mount.path / "proc") if n.isdigit()]
    running, threads = fields[3].split("/")
    assert int(threads) == len(pids) and int(running) >= 1
    assert int(fields[4]) >= max(pids)


# Writes the live pid_max refuses.  Each is first checked to fail on the mount: a write
# the mount accepts is never sent to the machine's pid_max.
PID_MAX_BAD = ["abc", "1", "300", "99999999", "  ", "-5", "400x", "08", "0x", "\n"]


def _write(path: Path, data: str) -> str:
    """One open+write(2): "OK n" or the errno name (ksm_cases.attempt)."""
    return attempt(path, data.encode())


@pytest.mark.parametrize("data", PID_MAX_BAD)
def test_pid_max_refuses_what_the_live_kernel_refuses(mount, data):
    ours = _write(mount.path / "proc/sys/kernel/pid_max", data)
    assert ours == "EINVAL", f"the mount accepted {data!r}"
    if os.geteuid() != 0 or not os.access("/proc/sys/kernel/pid_max", os.W_OK):
        pytest.skip("the live pid_max is not writable here")
    assert _write(LIVE_PROC / "sys/kernel/pid_max", data) == ours


def test_pid_max_store(mount):
    """A new pid_max is shown; the next pid is still the one after the last."""
    path = mount.path / "proc/sys/kernel/pid_max"
    before = cat(path)
    last = int(cat(mount.path / "proc/loadavg").split()[4])
    assert _write(path, " 0x200 \n") == "OK 8"  # C base 0, blanks around
    try:
        assert cat(path) == "512\n"
        pid = int(mount.control("spawn a").split()[1])
        assert pid == last + 1
        mount.control(f"exit {pid}")
    finally:
        _write(path, before)
    assert cat(path) == before


# Every psutil attribute read from PROCFS_PATH.  psutil gets nice, ionice and cpu_affinity
# from system calls on the pid (getpriority, ioprio_get, sched_getaffinity), which the
# host's kernel answers: a simulated pid has no host process, so they are left out.
PSUTIL_SCAN = textwrap.dedent(
    """
    import json, sys
    import psutil
    psutil.PROCFS_PATH = sys.argv[1]
    syscalls = {"nice", "ionice", "cpu_affinity"}
    attrs = sorted(psutil._as_dict_attrnames - syscalls)
    seen = {p.pid: p.info for p in psutil.process_iter(attrs=attrs, ad_value="DENIED")}
    print(json.dumps({"pids": psutil.pids(), "attrs": attrs,
                      "seen": {str(k): v for k, v in seen.items()}}, default=str))
    """
)


def test_psutil_process_iter_with_every_attribute_keeps_every_process(mount, sim_pid):
    mount.control("spawn other uid=1000 pages=4", "spawn third pages=2")
    r = run([sys.executable, "-c", PSUTIL_SCAN, str(mount.path / "proc")])
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["attrs"]) > 20
    assert sorted(int(p) for p in out["seen"]) == sorted(out["pids"])
    assert sim_pid in out["pids"]
    for pid, info in out["seen"].items():
        denied = sorted(a for a, v in info.items() if v == "DENIED")
        assert denied == [], (pid, denied)  # root reads every file
        assert info["num_threads"] == 1 and info["num_fds"] == 0
        assert info["io_counters"] is not None and len(info["threads"]) == 1

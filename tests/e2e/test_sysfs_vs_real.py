"""The mount's /sys/kernel/mm/ksm next to the machine's real one: the same files, modes,
sizes, defaults, errnos and shell messages.

Only writes that FAIL on the real kernel (or empty writes, which store nothing) are sent
to the real /sys/kernel/mm/ksm; see ksm_cases.py.
"""

from __future__ import annotations

import os
import stat
import time

import pytest
from e2e_support import (
    IDLE_SCENARIO,
    REAL_KSM,
    fuse_test,
    mounted,
    need_writable_real_ksm,
    run,
    wait_until,
)
from ksm_cases import DEFAULTS, INVALID_WRITES, attempt, expected

from ksmfs.kernel.versions import WRITABLE_SYSFS

pytestmark = [*fuse_test, pytest.mark.timeout(120)]

# Reading the real files is enough for the modes and defaults; the errno comparisons
# need a writable /sys (in a container /sys is read-only and every write gives EROFS).
needs_real = pytest.mark.skipif(
    not REAL_KSM.is_dir(), reason="this machine has no /sys/kernel/mm/ksm (CONFIG_KSM off?)"
)


@pytest.fixture(params=["mount", pytest.param("real", marks=pytest.mark.realkernel)])
def bases(request, idle):
    """The ksm directories a test checks: the mount's; with "real", also the real one
    (the test then compares the two), skipped unless the real KSM is writable."""
    if request.param == "mount":
        return [idle.ksm]
    need_writable_real_ksm()
    return [idle.ksm, REAL_KSM]


@pytest.fixture(scope="module")
def idle(tmp_path_factory):
    """A mount whose kernel is in the boot state: the idle scenario, then run = 0."""
    root = tmp_path_factory.mktemp("idle")
    toml = root / "idle.toml"
    toml.write_text(IDLE_SCENARIO)
    with mounted(root / "mnt", "--scenario", str(toml)) as m:
        m.write_ksm("run", "0\n")
        yield m


def real_in_use() -> str | None:
    """Why the real KSM is not in its boot state (another session may be using it)."""
    values = {n: (REAL_KSM / n).read_text().strip() for n in ("run", "full_scans",
                                                               "pages_scanned")}
    if values != {"run": "0", "full_scans": "0", "pages_scanned": "0"}:
        return f"the real KSM has been used since boot ({values})"
    return None


@pytest.mark.realkernel
@needs_real
def test_same_files_modes_and_sizes_as_the_real_kernel(idle):
    """File list, modes, sizes and owners equal /sys/kernel/mm/ksm of this 6.18 box."""
    real = sorted(os.listdir(REAL_KSM))
    mine = sorted(os.listdir(idle.ksm))
    assert mine == real
    for name in real:
        a, b = os.stat(idle.ksm / name), os.stat(REAL_KSM / name)
        assert stat.filemode(a.st_mode) == stat.filemode(b.st_mode), name
        assert (a.st_size, a.st_uid, a.st_gid) == (b.st_size, b.st_uid, b.st_gid), name
    d1, d2 = os.stat(idle.ksm), os.stat(REAL_KSM)
    assert stat.filemode(d1.st_mode) == stat.filemode(d2.st_mode)


def test_default_contents(idle):
    """Every file holds the boot default of 6.18 (spec §1.4)..."""
    for name, value in DEFAULTS.items():
        assert idle.read(f"sys/kernel/mm/ksm/{name}") == value + "\n", name


@pytest.mark.realkernel
@needs_real
def test_default_contents_equal_the_real_kernels(idle):
    """... and the real kernel's files: the knobs whenever the real ksmd is stopped
    (run = 0: whoever used it restored them), the counters only if nobody has used the
    real KSM since boot (they never go back to 0)."""
    if (REAL_KSM / "run").read_text() != "0\n":
        pytest.skip("the real KSM is running (someone else is using it): its knobs may not be the defaults")
    names = sorted(os.listdir(REAL_KSM))
    knobs = [n for n in names if os.stat(REAL_KSM / n).st_mode & stat.S_IWUSR]
    compared = knobs if real_in_use() else names
    for name in compared:
        assert idle.read(f"sys/kernel/mm/ksm/{name}") == (REAL_KSM / name).read_text(), name
    assert set(knobs) == WRITABLE_SYSFS & set(names)


@pytest.mark.parametrize(("name", "data", "code"), INVALID_WRITES,
                         ids=[f"{n}={d[:12]!r}" for n, d, _ in INVALID_WRITES])
def test_invalid_write_gives_the_kernels_errno_on_the_mount(idle, name, data, code):
    """An invalid write fails on the mount with the errno the real kernel gives (the
    table of ksm_cases.py, itself checked against the real kernel below) and changes
    nothing."""
    before = idle.read(f"sys/kernel/mm/ksm/{name}")
    assert attempt(idle.ksm / name, data) == expected(code)
    assert idle.read(f"sys/kernel/mm/ksm/{name}") == before


@pytest.mark.realkernel
def test_invalid_writes_give_the_same_errnos_on_the_real_kernel():
    """Every invalid write of ksm_cases.py fails on the real /sys/kernel/mm/ksm with the
    errno the table gives (the writes fail, so the real kernel is left unchanged)."""
    need_writable_real_ksm()
    wrong = []
    for name, data, code in INVALID_WRITES:
        assert code != 0 or data == b""  # never a valid value on the real kernel
        got = attempt(REAL_KSM / name, data)
        if got != expected(code):
            wrong.append(f"{name}={data!r}: real kernel {got}, table {expected(code)}")
    assert not wrong, "\n".join(wrong)


def test_read_only_files_refuse_write_opens_like_the_real_kernel(bases):
    """O_WRONLY/O_RDWR on a 0444 counter: EACCES for root, on both."""
    for name in ("pages_shared", "full_scans", "general_profit"):
        for flags in (os.O_WRONLY, os.O_RDWR):
            for base in bases:
                with pytest.raises(PermissionError):
                    os.open(base / name, flags)


def test_shell_messages_match_the_real_kernel(idle, bases):
    """`echo abc > run` in bash: "write error: Invalid argument", exit 1; `echo 5 >
    pages_shared`: "Permission denied" -- word for word as on the real /sys."""
    cases = [("run", "abc", 1), ("pages_shared", "5", 1), ("max_page_sharing", "2147483648", 1)]
    for name, value, rc in cases:
        mine = run(f"echo {value} > {idle.ksm}/{name}")
        assert mine.returncode == rc, mine
        assert "Traceback" not in mine.stderr
        if REAL_KSM in bases:
            real = run(f"echo {value} > {REAL_KSM}/{name}")
            assert real.returncode == rc
            mine_text = mine.stderr.replace(str(idle.ksm), "K")
            assert mine_text == real.stderr.replace(str(REAL_KSM), "K")
    r = run(f"echo abc > {idle.ksm}/run")
    assert r.stderr.strip().endswith("echo: write error: Invalid argument")


def test_ls_and_stat_show_the_same_as_the_real_kernel(idle, bases):
    """`ls -l` and `stat` print the same modes, owners and sizes as on /sys."""
    fmt = "%n %A %U %G %s %F"
    mine = run(["stat", "-c", fmt, *sorted(str(p) for p in idle.ksm.iterdir())])
    assert mine.returncode == 0
    lines = mine.stdout.replace(str(idle.ksm) + "/", "").splitlines()
    assert all(" root root 4096 regular file" in line for line in lines)
    if REAL_KSM in bases:
        real = run(["stat", "-c", fmt, *sorted(str(p) for p in REAL_KSM.iterdir())])
        assert lines == real.stdout.replace(str(REAL_KSM) + "/", "").splitlines()
    ls = run(["ls", "-l", str(idle.ksm)])
    assert ls.returncode == 0 and "-rw-r--r-- 1 root root 4096" in ls.stdout
    assert "-r--r--r-- 1 root root 4096" in ls.stdout


def test_reads_honour_offsets_like_sysfs(idle):
    """pread at an offset gives the rest; past the end gives b""; `dd bs=1` equals cat."""
    path = idle.ksm / "max_page_sharing"
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(fd, 100, 0) == b"256\n"
        assert os.pread(fd, 100, 1) == b"56\n"
        assert os.pread(fd, 100, 4) == b""
        assert os.pread(fd, 100, 9000) == b""
    finally:
        os.close(fd)
    dd = run(f"dd if={path} bs=1 status=none")
    assert dd.stdout == "256\n"


def test_o_trunc_moves_mtime_even_when_the_write_fails(idle, bases):
    """A shell `>` (O_TRUNC open) sets mtime even if the write then fails; a plain
    write(2) does not touch it -- on the mount as on the real kernel [spec §1.1]."""
    for base in bases:
        path = base / "pages_to_scan"
        m0 = os.stat(path).st_mtime_ns
        time.sleep(0.02)
        assert attempt(path, b"abc") == "EINVAL"
        assert os.stat(path).st_mtime_ns == m0, base
        run(f"echo abc > {path}")
        assert os.stat(path).st_mtime_ns > m0, base


def test_namespace_changes_fail_like_on_the_real_kernel(idle, bases):
    """mkdir, touch, rm, mv, ln in the ksm directory: the real kernel's errnos."""
    cmds = ["mkdir D/new", "touch D/new", "rm -f D/run", "mv D/run D/run2", "ln -s run D/l",
            "ln D/run D/l", "rmdir D"]
    results = []
    for base in bases:
        out = []
        for c in cmds:
            r = run(c.replace("D", str(base)))
            assert r.returncode != 0, c
            out.append(r.stderr.replace(str(base), "D").strip())
        results.append(out)
    assert all("Operation not permitted" in line or "Permission denied" in line
               for line in results[0])
    if len(results) == 2:
        assert results[0] == results[1]


def test_echo_2_unmerges_before_the_write_returns(tmp_path):
    """`echo 2 > run` returns after everything is unmerged: a `cat` right after sees 0."""
    # The idle scenario, not the demo: the demo's timeline ends a process, which could
    # vanish between the shell's glob of proc/* and grep.
    toml = tmp_path / "idle.toml"
    toml.write_text(IDLE_SCENARIO)
    with mounted(tmp_path / "mnt", "--scenario", str(toml), "--speed", "5") as m:
        for i in range(3):
            m.control(f"spawn vm{i} pages=256 fill=cycle:256 mergeable")
        assert wait_until(lambda: m.ksm_value("pages_sharing") >= 500, 30)
        r = run(f"echo 2 > {m.ksm}/run && cat {m.ksm}/pages_shared {m.ksm}/pages_sharing "
                f"{m.ksm}/run && {{ grep -h merging {m.path}/proc/*/ksm_stat 2>/dev/null; true; }}")
        # (the demo timeline's qemu-vm-3 may exit between the glob and the open)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[:3] == ["0", "0", "2"]
        assert all(line == "ksm_merging_pages 0" for line in lines[3:])


def test_truncate_and_touch_are_accepted_and_change_no_value(idle, bases):
    """truncate(2) and utimes succeed on knobs and, for root, on read-only counters too
    (kernfs ignores the size); `truncate -s0` (which opens the file for writing) is
    refused on a 0444 counter.  Values never change -- on the mount as on /sys."""
    for base in bases:
        for name in ("run", "pages_shared"):
            path = base / name
            before = path.read_text()
            os.truncate(path, 0)
            os.utime(path)
            r = run(f"truncate -s0 {path}")
            if name == "run":
                assert r.returncode == 0, r.stderr
            else:
                assert r.returncode == 1 and "Permission denied" in r.stderr
            if base == idle.ksm:  # (the real counters may move: others use real KSM)
                assert path.read_text() == before

"""`ksmfs top`: frames from a tree of files, the live view in a terminal, and the real /.

`ksmfs top` only reads files, so a plain directory tree with the layout of /sys/kernel/mm/ksm
and /proc is a legitimate stand-in for a mount here; the test on `/` reads the real kernel.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from ksmfs.cli import main
from ksmfs.top import KSM_ATTR_ORDER, ProcKsm, Sample, parse_ksm_stat, render

# /sys/kernel/mm/ksm of a freshly booted 6.18 machine (spec §1.4), with some sharing.
KSM_618 = {
    "advisor_max_cpu": "70",
    "advisor_max_pages_to_scan": "30000",
    "advisor_min_pages_to_scan": "500",
    "advisor_mode": "[none] scan-time",
    "advisor_target_scan_time": "200",
    "full_scans": "3",
    "general_profit": "98713600",
    "ksm_zero_pages": "0",
    "max_page_sharing": "256",
    "merge_across_nodes": "1",
    "pages_scanned": "76800",
    "pages_shared": "100",
    "pages_sharing": "24500",
    "pages_skipped": "0",
    "pages_to_scan": "100",
    "pages_unshared": "1000",
    "pages_volatile": "0",
    "run": "1",
    "sleep_millisecs": "20",
    "smart_scan": "1",
    "stable_node_chains": "0",
    "stable_node_chains_prune_millisecs": "2000",
    "stable_node_dups": "0",
    "use_zero_pages": "0",
}


def ksm_stat_618(rmap: int, zero: int, merging: int, merge_any: str, mergeable: str) -> str:
    """A /proc/PID/ksm_stat as 6.14+ prints it (fs/proc/base.c proc_pid_ksm_stat)."""
    profit = (merging + zero) * 4096 - rmap * 64
    return (
        f"ksm_rmap_items {rmap}\nksm_zero_pages {zero}\nksm_merging_pages {merging}\n"
        f"ksm_process_profit {profit}\nksm_merge_any: {merge_any}\nksm_mergeable: {mergeable}\n"
    )


def write_tree(root: Path, ksm: dict[str, str], procs: dict[int, tuple[str, str]]) -> Path:
    """Lay out ROOT/sys/kernel/mm/ksm/* and ROOT/proc/PID/{comm,ksm_stat}."""
    ksm_dir = root / "sys/kernel/mm/ksm"
    ksm_dir.mkdir(parents=True, exist_ok=True)
    for name, value in ksm.items():
        (ksm_dir / name).write_text(value + "\n")
    for pid, (comm, stat) in procs.items():
        d = root / "proc" / str(pid)
        d.mkdir(parents=True, exist_ok=True)
        (d / "comm").write_text(comm + "\n")
        (d / "ksm_stat").write_text(stat)
    return root


def set_counter(root: Path, name: str, value: int) -> None:
    """Replace a counter file atomically, so top never reads a half-written file."""
    path = root / "sys/kernel/mm/ksm" / name
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{value}\n")
    tmp.rename(path)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Two VMs sharing memory, an idle shell, and a kernel thread (empty ksm_stat)."""
    return write_tree(
        tmp_path / "root",
        KSM_618,
        {
            1: ("init", ksm_stat_618(0, 0, 0, "no", "no")),
            2: ("kthreadd", ""),
            4100: ("qemu-vm-0", ksm_stat_618(25600, 0, 12000, "no", "yes")),
            4200: ("qemu-vm-1", ksm_stat_618(25600, 0, 12600, "no", "yes")),
            4300: ("merge-any-app", ksm_stat_618(10, 0, 0, "yes", "yes")),
        },
    )


def frame_rows(text: str) -> dict[str, list[str]]:
    """Counter and process rows of a frame, keyed by their first column."""
    return {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}


def test_once_shows_every_file_and_processes(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--once prints each ksm file's value and the active processes by ksm_merging_pages."""
    assert main(["top", str(tree), "--once", "--interval", "0"]) == 0
    out = capsys.readouterr().out
    for name, value in KSM_618.items():
        if name == "advisor_mode":
            assert "advisor_mode=[none] scan-time" in out
        elif name in ("run", "pages_to_scan", "sleep_millisecs", "max_page_sharing"):
            assert f"{name}={value}" in out
    rows = frame_rows(out)
    assert rows["pages_sharing"][1:] == ["24,500", "-"]  # one read: no rate yet
    assert rows["general_profit"][1] == "98,713,600"
    assert "pages_sharing x 4096 = 95.7 MiB" in out  # 24500 * 4096 / 2**20
    assert "general_profit = 94.1 MiB" in out
    pids = [line.split()[0] for line in out.splitlines() if re.match(r"\s+\d+\s", line)]
    assert pids == ["4200", "4100", "4300"]  # merging 12600 > 12000 > 0; idle init hidden
    assert rows["4200"][:6] == ["4200", "qemu-vm-1", "12,600", "25,600", "0", "47.7"]
    assert rows["4300"][-2:] == ["yes", "yes"]
    assert "1 processes with no KSM state hidden" in out  # init; kthreadd has no mm


def test_once_all_lists_idle_processes(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--all also lists processes without KSM state, but never tasks without an mm."""
    assert main(["top", str(tree), "--once", "--all", "--interval", "0"]) == 0
    rows = frame_rows(capsys.readouterr().out)
    assert rows["1"][1] == "init"
    assert "2" not in rows


def test_once_with_interval_reads_twice_for_rates(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--once with an interval reads twice: unchanged counters have a rate of zero."""
    assert main(["top", str(tree), "--once", "--interval", "0.05"]) == 0
    rows = frame_rows(capsys.readouterr().out)
    assert rows["pages_sharing"][1:] == ["24,500", "+0.0"]


def test_rates_are_per_second() -> None:
    """A counter's rate is its change divided by the seconds between the two reads."""
    prev = Sample(10.0, {"pages_scanned": 1000, "full_scans": 7, "general_profit": -64})
    cur = Sample(12.0, {"pages_scanned": 1500, "full_scans": 3, "general_profit": 4032})
    rows = frame_rows("\n".join(render("/x", prev, cur)))
    assert rows["pages_scanned"][1:] == ["1,500", "+250.0"]
    assert rows["full_scans"][1:] == ["3", "-2.0"]  # run=2 resets full_scans
    assert rows["general_profit"][1:] == ["4,032", "+2,048.0"]


def test_parse_ksm_stat_all_layouts() -> None:
    """ksm_stat lines of 6.1 (one line) and 6.14+ (yes/no lines with a colon) both parse."""
    assert parse_ksm_stat("ksm_rmap_items 5\n") == {"ksm_rmap_items": 5}
    stat = parse_ksm_stat(ksm_stat_618(64, 1, 10, "yes", "no"))
    assert stat == {
        "ksm_rmap_items": 64,
        "ksm_zero_pages": 1,
        "ksm_merging_pages": 10,
        "ksm_process_profit": 45056 - 4096,
        "ksm_merge_any": "yes",
        "ksm_mergeable": "no",
    }


def test_kernel_61_reads_ksm_merging_pages_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On 6.1-6.3 ksm_stat has only ksm_rmap_items; ksm_merging_pages has its own file."""
    ksm = {k: v for k, v in KSM_618.items() if k in KSM_ATTR_ORDER[:17]}
    root = write_tree(tmp_path, ksm, {77: ("guest", "ksm_rmap_items 300\n")})
    (root / "proc/77/ksm_merging_pages").write_text("250\n")
    assert main(["top", str(root), "--once", "--interval", "0"]) == 0
    out = capsys.readouterr().out
    assert frame_rows(out)["77"] == ["77", "guest", "250", "300", "-", "-", "-", "-"]
    assert "general_profit" not in out


def test_kernel_515_has_no_ksm_stat(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before 6.1 no process has ksm_stat: the frame says so instead of an empty table."""
    root = write_tree(tmp_path, {"run": "0", "pages_sharing": "0"}, {})
    (root / "proc/1").mkdir(parents=True)
    (root / "proc/1/comm").write_text("init\n")
    assert main(["top", str(root), "--once", "--interval", "0"]) == 0
    assert "no /proc/PID/ksm_stat in this kernel" in capsys.readouterr().out


def test_not_a_tree_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A directory without sys/kernel/mm/ksm: one line naming it, exit 2."""
    assert main(["top", str(tmp_path), "--once"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path}/sys/kernel/mm/ksm" in err


def test_negative_interval_is_refused(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--interval below zero is a usage error."""
    assert main(["top", str(tree), "--interval", "-1"]) == 2
    assert "--interval" in capsys.readouterr().err


def test_real_root_once() -> None:
    """On `/` the frame lists every file of the real /sys/kernel/mm/ksm and this process."""
    ksm_dir = Path("/sys/kernel/mm/ksm")
    if not ksm_dir.is_dir():
        pytest.skip("this kernel has no /sys/kernel/mm/ksm")
    out = subprocess.run(
        [sys.executable, "-m", "ksmfs", "top", "/", "--once", "--all", "--interval", "0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in os.listdir(ksm_dir):
        assert re.search(rf"(^|\s){name}(=|\s)", out, re.M), name
    if Path("/proc/self/ksm_stat").exists():
        rows = frame_rows(out)
        # The `ksmfs top` process itself has an mm, so --all lists it (comm "python...").
        assert any(r[1].startswith("python") for r in rows.values() if r[0].isdigit())


# --- the live view in a pseudo-terminal -----------------------------------------------------

ANSI = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>78]|[\r\x0e\x0f]")


class PtyTop:
    """`ksmfs top` running in a pseudo-terminal that is its controlling terminal."""

    def __init__(self, root: Path, rows: int = 40, cols: int = 120) -> None:
        env = {**os.environ, "TERM": "xterm", "LINES": str(rows), "COLUMNS": str(cols)}
        argv = [sys.executable, "-m", "ksmfs", "top", str(root), "--interval", "0.1"]
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # child: the pty is stdin/stdout/stderr and the controlling tty
            try:
                os.execve(sys.executable, argv, env)
            finally:
                os._exit(127)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.raw = b""
        self.status: int | None = None

    def text(self) -> str:
        return ANSI.sub(b"", self.raw).decode(errors="replace")

    def read_until(self, predicate, deadline_s: float = 30.0) -> bool:
        """Read output until predicate(text) holds; False if the program ended or stalled."""
        deadline = time.monotonic() + deadline_s
        while not predicate(self.text()):
            if time.monotonic() > deadline:
                return False
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:  # EIO: the child closed the terminal
                    return predicate(self.text())
                if not chunk:
                    return predicate(self.text())
                self.raw += chunk
        return True

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def wait(self, deadline_s: float = 30.0) -> int:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            self.read_until(lambda _t: False, 0.2)  # keep draining the terminal
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = status
                return os.waitstatus_to_exitcode(status)
        raise AssertionError(f"ksmfs top did not exit; screen:\n{self.text()[-2000:]}")

    def lflag(self) -> int:
        return termios.tcgetattr(self.fd)[3]

    def close(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        os.close(self.fd)


@pytest.fixture
def pty_top(tree: Path):
    top = PtyTop(tree)
    yield top
    top.close()


def test_live_view_updates_and_q_quits(tree: Path, pty_top: PtyTop) -> None:
    """The live view shows the counters, shows a changed counter, and `q` exits 0."""
    assert pty_top.read_until(lambda t: "pages_sharing" in t and "qemu-vm-1" in t), pty_top.text()
    cooked = pty_top.lflag()
    assert not cooked & termios.ICANON  # curses put the terminal in cbreak mode
    # Right-aligned "24,500" and "98,765,432" differ in every cell, so curses writes the
    # new value as one run of characters whatever it optimises.
    set_counter(tree, "pages_sharing", 98765432)
    assert pty_top.read_until(lambda t: "98,765,432" in t), pty_top.text()[-3000:]
    set_counter(tree, "full_scans", 4)
    pty_top.send(b"q")
    assert pty_top.wait() == 0
    lflag = pty_top.lflag()
    assert lflag & termios.ICANON and lflag & termios.ECHO  # terminal restored
    assert b"\x1b[?1049l" in pty_top.raw  # left the alternate screen (xterm rmcup)


def test_live_view_ctrl_c(pty_top: PtyTop) -> None:
    """Ctrl-C leaves the live view quietly with exit 130 and the terminal restored."""
    assert pty_top.read_until(lambda t: "pages_sharing" in t), pty_top.text()
    pty_top.send(b"\x03")
    assert pty_top.wait() == 130
    assert "Traceback" not in pty_top.text()
    assert pty_top.lflag() & termios.ECHO


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_live_view_screen_in_tmux(tree: Path, tmp_path: Path) -> None:
    """In tmux, the screen holds the counter table and the process table, and follows changes."""
    sock = f"ksmfs-top-test-{os.getpid()}"
    conf = tmp_path / "tmux.conf"
    # Keep the pane after the program exits, to look at the restored screen.
    conf.write_text("set -g remain-on-exit on\n")
    tmux = ["tmux", "-L", sock, "-f", str(conf)]
    rc_file = tmp_path / "rc"
    # tmux 3.3a does not keep the exit status of a pane that dies after a while: write it.
    cmd = f"{sys.executable} -m ksmfs top {tree} --interval 0.1; echo $? > {rc_file}"
    env = {**os.environ, "TERM": "xterm"}
    subprocess.run(
        [*tmux, "new-session", "-d", "-x", "110", "-y", "40", cmd], check=True, env=env
    )
    try:

        def screen() -> str:
            return subprocess.run(
                [*tmux, "capture-pane", "-p"], capture_output=True, text=True
            ).stdout

        def wait_for(pattern: str) -> str:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                text = screen()
                if re.search(pattern, text, re.M):
                    return text
                time.sleep(0.1)
            raise AssertionError(f"{pattern!r} never appeared; screen:\n{screen()}")

        # Wait for the whole first frame: the counters and the last process row (the
        # tables are drawn one after the other; a busy machine may show one alone).
        first = wait_for(r"^pages_sharing\s+24,500\s[\s\S]*^\s+\d+\s+merge-any-app")
        lines = first.splitlines()
        assert lines[0].startswith(f"ksmfs top  {tree}")
        procs = [line.split()[1] for line in lines if re.match(r"\s+\d+\s", line)]
        assert procs == ["qemu-vm-1", "qemu-vm-0", "merge-any-app"]

        set_counter(tree, "pages_sharing", 30000)
        set_counter(tree, "general_profit", 122880000)
        after = wait_for(r"^pages_sharing\s+30,000\s")
        assert "general_profit = 117.2 MiB" in after

        subprocess.run([*tmux, "send-keys", "q"], check=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (rc_file.exists() and rc_file.read_text()):
            time.sleep(0.1)
        assert rc_file.read_text().strip() == "0", screen()
        # curses.endwin left the alternate screen: the shell's screen is back, not the table.
        assert "COUNTER" not in screen()
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)


def test_procksm_active() -> None:
    """A process counts as active with rmap_items, merging or zero pages, or a yes flag."""
    assert not ProcKsm(1, "a", parse_ksm_stat(ksm_stat_618(0, 0, 0, "no", "no"))).active
    assert ProcKsm(1, "a", parse_ksm_stat(ksm_stat_618(0, 0, 0, "no", "yes"))).active
    assert ProcKsm(1, "a", {"ksm_rmap_items": 3}).active


@pytest.mark.fuse
def test_once_on_a_ksmfs_mount(tmp_path: Path) -> None:
    """On a real ksmfs mount, --once shows the mount's knobs and its simulated processes."""
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        pytest.skip("needs /dev/fuse and fusermount3")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    ksmfs = [sys.executable, "-m", "ksmfs"]
    subprocess.run([*ksmfs, "mount", str(mnt)], check=True, capture_output=True, timeout=60)
    try:
        out = subprocess.run(
            [*ksmfs, "top", str(mnt), "--once", "--interval", "0"],
            check=True, capture_output=True, text=True, timeout=60,
        ).stdout
        ksm_dir = mnt / "sys/kernel/mm/ksm"
        for knob in ("pages_to_scan", "sleep_millisecs", "max_page_sharing"):
            assert f"{knob}={(ksm_dir / knob).read_text().strip()}" in out
        rows = frame_rows(out)
        for name in os.listdir(ksm_dir):
            assert re.search(rf"(^|\s){name}(=|\s)", out, re.M), name
        comms = {
            (d / "comm").read_text().strip()
            for d in (mnt / "proc").iterdir()
            if d.name.isdigit() and "ksm_mergeable: yes" in (d / "ksm_stat").read_text()
        }
        shown = {r[1] for r in rows.values() if r[0].isdigit()}
        assert comms and comms <= shown
    finally:
        subprocess.run([*ksmfs, "umount", str(mnt)], capture_output=True, timeout=60)
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)

"""`ksmfs run`, `ksmfs diff` and `ksmfs scenarios` through ksmfs.cli.main."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import types
from pathlib import Path

import pytest

from ksmfs.cli import main

BAD = """\
max_full_scans = 2
[[process]]
name = "a"
[[process.vma]]
name = "r"
pages = 2
fill = [{from = "pool:missing", pages = 2}]
"""


def test_scenarios_lists_builtins(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scenarios"]) == 0
    out = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in out]
    assert "demo" in names and "kvm-guests" in names
    assert all(len(line.split(None, 1)) == 2 for line in out)


def test_run_writes_json_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.jsonl"
    assert main(["run", "kvm-guests", "--json", str(out)]) == 0
    snaps = [json.loads(line) for line in out.read_text().splitlines()]
    assert [s["full_scans"] for s in snaps] == list(range(7))
    cap = capsys.readouterr()
    assert cap.out == ""  # stdout is not a terminal: no table
    assert cap.err == f"wrote 7 snapshots (one per line) to {out}\n"  # and no progress


def test_run_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "small-batches"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 7 and json.loads(lines[-1])["full_scans"] == 6


def test_run_json_without_a_file_goes_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    """`--json` alone: JSON lines on stdout, nothing said about a file."""
    assert main(["run", "small-batches", "--json"]) == 0
    cap = capsys.readouterr()
    assert [json.loads(line)["full_scans"] for line in cap.out.splitlines()] == list(range(7))
    assert cap.err == ""


def test_run_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--plot draws the run and says where."""
    png = tmp_path / "x.png"
    assert main(["run", "kvm-guests", "--json", str(tmp_path / "o.jsonl"), "--plot",
                 str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {png}\n" in capsys.readouterr().err


def test_run_kernel_picks_the_simulated_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--kernel 5.15 simulates a kernel without ksm_stat or general_profit; an unknown
    version is one line naming it, exit 2."""
    assert main(["run", "small-batches", "--kernel", "5.15"]) == 0
    last = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert "general_profit" not in last["ksm"]
    assert "ksm_rmap_items" not in next(iter(last["processes"].values()))
    assert main(["run", "small-batches", "--kernel", "4.0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ksmfs run: ") and "4.0" in err and err.count("\n") == 1


def test_run_on_a_terminal_prints_a_table(tmp_path: Path) -> None:
    """stdout on a terminal: a table, one row per full scan with the main counters and
    the timeline's steps in the row of the full scan they follow; no JSON."""
    text = _on_a_terminal(["run", "run2-and-back"], stdout=True)
    assert "{" not in text
    rows = {}
    for line in text.splitlines():
        cells = line.split()
        if cells and cells[0].isdigit():
            rows[int(cells[0])] = cells
    assert sorted(rows) == list(range(10))
    snaps = [json.loads(line) for line in subprocess.run(
        [sys.executable, "-m", "ksmfs", "run", "run2-and-back"], capture_output=True,
        text=True, check=True).stdout.splitlines()]
    for k, cells in rows.items():
        ksm = snaps[k]["ksm"]
        assert cells[1:5] == [f"{ksm[n]:,}" for n in ("pages_shared", "pages_sharing",
                                                     "pages_unshared", "pages_volatile")]
    assert rows[3][-1] == "run=2" and rows[5][-1] == "run=1"


def test_refused_real_backend_writes_nothing(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Where the real KSM cannot be driven, `run --backend real` and `diff` say why in
    one line, exit 2, and create no --json file."""
    from ksmfs.scenario.cli import real_kernel_problem

    ksm = Path("/sys/kernel/mm/ksm")
    if ksm.is_dir() and os.geteuid() == 0 and not os.statvfs(ksm).f_flag & os.ST_RDONLY:
        # (not probed with a write here: that is for the realkernel tier)
        pytest.skip("root and a writable /sys/kernel/mm/ksm: the real backend may run here")
    problem = real_kernel_problem()
    assert problem is not None
    out = tmp_path / "real.jsonl"
    assert main(["run", "small-batches", "--backend", "real", "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"ksmfs run: cannot use the real kernel: {problem}\n"
    assert not out.exists()
    assert main(["diff", "small-batches"]) == 2
    cap = capsys.readouterr()
    assert cap.err == f"ksmfs diff: cannot use the real kernel: {problem}\n" and cap.out == ""


def test_bad_scenario_is_one_line_exit_2(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(BAD)
    for argv in (["run", str(p)], ["diff", str(p)], ["run", "no-such-scenario"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert main(["run", str(p)]) == 2
    err = capsys.readouterr().err
    assert f"{p}:7: process[0].vma[0].fill[0].from: unknown pool 'missing'" in err


def _fake_real(monkeypatch: pytest.MonkeyPatch, tweak: object = None) -> None:
    """Stand in for the real backend: the sim run, optionally altered, so that the printing
    of differences is tested on demand (the real kernel cannot be made to differ;
    tests/real/test_differential.py compares with it under the realkernel marker)."""
    from ksmfs.scenario.sim import run_sim

    def run_real(scenario, on_snapshot, progress=None):
        snaps = run_sim(scenario, lambda s: None)
        if callable(tweak):
            tweak(snaps)
        for s in snaps:
            on_snapshot(s)
        return snaps

    # The stand-in is available wherever the test runs (the real kernel is not touched).
    monkeypatch.setattr("ksmfs.scenario.cli.real_kernel_problem", lambda: None)
    mod = types.ModuleType("ksmfs.scenario.real")
    mod.run_real = run_real  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ksmfs.scenario.real", mod)


def test_diff_identical_exits_0(monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    _fake_real(monkeypatch)
    assert main(["diff", "small-batches"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [out[-1]] and out[-1].startswith("small-batches: identical: compared ")


def test_diff_prints_each_difference(monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    def tweak(snaps: list[dict]) -> None:
        snaps[2]["ksm"]["pages_shared"] += 1
        snaps[3]["processes"]["batch-1"]["smaps_ksm_kb"]["ram"] = 0

    _fake_real(monkeypatch, tweak)
    assert main(["diff", "small-batches"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("full_scans=2 ksm.pages_shared sim=")
    assert out[1].startswith("full_scans=3 processes.batch-1.smaps_ksm_kb.ram sim=")
    assert out[1].endswith(" real=0")
    assert "2 differences" in out[2]


def _on_a_terminal(argv: list[str], stdout: bool = False) -> str:
    """Run `ksmfs ARGV` with stderr (and stdout, if asked) on a terminal; what it showed."""
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "100", "TERM": "xterm"}
    # Read the terminal while the command runs: a full pty buffer would block its writes.
    proc = subprocess.Popen(
        [sys.executable, "-m", "ksmfs", *argv],
        stderr=slave, stdout=slave if stdout else subprocess.DEVNULL, env=env,
    )
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the last holder of the terminal's other side is gone
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    proc.wait(timeout=120)
    assert proc.returncode == 0
    return shown.decode()


def test_progress_shows_on_a_terminal(tmp_path: Path) -> None:
    """With stderr on a terminal and --json FILE, `ksmfs run` shows one progress line per
    full scan (rewritten in place); the JSON lines go to the file."""
    out = tmp_path / "run.jsonl"
    text = _on_a_terminal(["run", "kvm-guests", "--json", str(out)])
    assert "full scan 0/6" in text and "full scan 6/6" in text
    assert "\r" in text  # one line rewritten, not a scroll of lines
    assert len(out.read_text().splitlines()) == 7


def test_step_labels_name_every_v2_action() -> None:
    """The table's and the plots' step labels: one short phrase per action, v2 included;
    none after the last full scan."""
    from ksmfs.scenario.cli import steps_by_scan
    from ksmfs.scenario.loader import load_scenario

    scenario = load_scenario(Path(__file__).with_name("v2-steps.toml"))
    assert steps_by_scan(scenario) == {
        2: ["munmap a-0 r 2+3", "madvise a-1 r 6+2 unmergeable"],
        3: ["fork a-1 child"],
        4: ["munmap child other 0+3"],
        5: ["pages_to_scan=0"],
        6: ["write child r 0+8 unique"],
        7: ["pages_to_scan=1000"],
    }
    labels = steps_by_scan(load_scenario("prefork-web-server"))
    assert labels[1][0] == "fork master worker-0" and labels[5] == [
        "exit worker-3", "fork master worker-8"]

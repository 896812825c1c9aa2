"""`ksmfs run`, `ksmfs diff` and `ksmfs scenarios` through ksmfs.cli.main."""

from __future__ import annotations

import json
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
    assert cap.out == "" and cap.err == ""  # stderr is not a TTY: no progress


def test_run_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "small-batches"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 7 and json.loads(lines[-1])["full_scans"] == 6


def test_run_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "x.png"
    assert main(["run", "kvm-guests", "--json", str(tmp_path / "o.jsonl"), "--plot",
                 str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
    """Stand in for the real backend (it drives the machine's KSM, which only one helper
    may touch): the sim run, optionally altered, so that the diff printing is tested."""
    from ksmfs.scenario.sim import run_sim

    def run_real(scenario, on_snapshot, progress=None):  # noqa: ANN001, ANN202
        snaps = run_sim(scenario, lambda s: None)
        if callable(tweak):
            tweak(snaps)
        for s in snaps:
            on_snapshot(s)
        return snaps

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


def test_progress_shows_on_a_terminal(tmp_path: Path) -> None:
    """With stderr on a terminal, `ksmfs run` shows one progress line per full scan
    (rewritten in place); the JSON lines still go to the file."""
    import os
    import pty
    import subprocess
    import sys

    out = tmp_path / "run.jsonl"
    master, slave = pty.openpty()
    proc = subprocess.run(
        [sys.executable, "-m", "ksmfs", "run", "kvm-guests", "--json", str(out)],
        stderr=slave, stdout=subprocess.PIPE, timeout=120,
    )
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    assert proc.returncode == 0
    text = shown.decode()
    assert "full scan 0/6" in text and "full scan 6/6" in text
    assert "\r" in text  # one line rewritten, not a scroll of lines
    assert len(out.read_text().splitlines()) == 7

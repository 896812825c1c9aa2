"""`ksmfs estimate --capture FILE`: the report, --json in the snapshot format, --plot,
and the progress bar (only on a terminal)."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import pytest

from ksmfs.capture.cli import Bar
from ksmfs.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from test_capture_build import make_capture


def test_estimate_a_capture_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.kcap"
    make_capture(merge_any=False).save(path)
    js, png = tmp_path / "e.jsonl", tmp_path / "e.png"
    assert main(["estimate", "--capture", str(path), "--set", "max_page_sharing=2",
                 "--json", str(js), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    snaps = [json.loads(line) for line in js.read_text().splitlines()]
    last = snaps[-1]["ksm"]
    assert last["max_page_sharing"] == 2 and last["stable_node_chains"] > 0
    # the report prints the last snapshot's counters and the processes by captured pid
    for name in ("pages_shared", "pages_sharing", "pages_unshared", "ksm_zero_pages"):
        assert f"{name} {last[name]:>10d}".replace(" ", "") in out.replace(" ", "")
    assert f"converged after {snaps[-1]['full_scans'] - 1} full scans" in out
    assert set(snaps[-1]["processes"]) == {"4000", "4001", "4002"}
    assert "4000 p0" in " ".join(out.split())
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


def test_progress_bar_only_on_a_terminal() -> None:
    plain = io.StringIO()
    bar = Bar("capture:", plain)
    bar(1 << 29, 1 << 30, 1, 2)
    bar.done()
    assert plain.getvalue() == ""
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as tty:
        bar = Bar("capture:", tty)
        bar(1 << 29, 1 << 30, 1, 2)
        bar.done()
    text = os.read(master, 4096).decode()
    os.close(master)
    assert "capture: [###############...............] 0.50/1.00 GiB, 1/2 processes" in text

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


def _damaged(path: Path, tmp_path: Path) -> dict[str, Path]:
    """Capture files a user may hand to --capture by mistake, each wrong in one way."""
    import zipfile

    src = zipfile.ZipFile(path)
    header = json.loads(src.read("capture.json"))

    def rewrite(name: str, capture_json: str) -> Path:
        out = tmp_path / name
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            for member in src.namelist():
                z.writestr(member, capture_json if member == "capture.json" else src.read(member))
        return out

    whole = path.read_bytes()
    cut = tmp_path / "cut.kcap"
    cut.write_bytes(whole[: len(whole) // 2])
    procs = [dict(p, vmas=[dict(v, vmflags=5) for v in p["vmas"]]) for p in header["processes"]]
    return {
        "version 2": rewrite("v2.kcap", json.dumps(dict(header, version=2))),
        "pages of 65536 bytes": rewrite("64k.kcap", json.dumps(dict(header, page_size=65536))),
        "not a ksmfs capture": rewrite("list.kcap", "[1, 2]"),
        "vmflags": rewrite("vmflags.kcap", json.dumps(dict(header, processes=procs))),
        "processes": rewrite("procs.kcap", json.dumps(dict(header, processes="x"))),
        "not a readable capture file": cut,
    }


@pytest.mark.parametrize("why", ["version 2", "pages of 65536 bytes", "not a ksmfs capture",
                                 "vmflags", "processes", "not a readable capture file"])
def test_a_bad_capture_file_is_one_line_and_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], why: str) -> None:
    """A capture file wrong in one way is refused in one line naming the file and why."""
    path = tmp_path / "c.kcap"
    make_capture(merge_any=False).save(path)
    bad = _damaged(path, tmp_path)[why]
    assert main(["estimate", "--capture", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"ksmfs estimate: {bad}: ") and why in err


@pytest.mark.parametrize(("args", "why"), [
    (["--set", "pages_to_scan=abc"], "pages_to_scan=abc: refused by the kernel: "),
    (["--set", "pages_to_scan"], "--set wants KNOB=VALUE"),
    (["--set", "run=1"], "--set run: not a writable KSM knob"),
    (["--json", "/nonexistent-dir/e.jsonl"], "cannot write /nonexistent-dir/e.jsonl"),
    (["--plot", "/nonexistent-dir/e.png"], "cannot write /nonexistent-dir/e.png"),
])
def test_bad_options_are_one_line_and_exit_2_before_any_output(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], why: str) -> None:
    """A bad --set or an unwritable --json/--plot is refused before any report is printed."""
    path = tmp_path / "c.kcap"
    make_capture(merge_any=False).save(path)
    assert main(["estimate", "--capture", str(path), *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("ksmfs estimate: ") and why in err


def test_capture_output_checked_before_the_capture(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`ksmfs capture -o` a directory or a path in a missing one: one line, exit 2, and no
    process is looked at (so no root needed to hear it)."""
    for out, why in ((tmp_path, "it is a directory"), (tmp_path / "no" / "c.kcap", "no directory")):
        assert main(["capture", str(os.getpid()), "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"ksmfs capture: cannot write {out}: {why}") and err.count("\n") == 1

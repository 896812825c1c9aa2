"""``ksmfs capture`` on real processes (root: pagemap pfns and /proc/kpageflags).

Nothing here writes to the real KSM: the processes only hold memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ksmfs.capture.format import KIND_ANON, KIND_FILE, PF_VOLATILE, Capture, load
from ksmfs.capture.take import capture
from ksmfs.cli import main

WORKER = Path(__file__).parent.parent / "real" / "estimate" / "worker.py"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="capture needs root")


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, dict[str, int]]]:
    f = tmp_path / "data.bin"
    f.write_bytes(os.urandom(16 * 4096))
    p = subprocess.Popen([sys.executable, str(WORKER), "--same", "64", "--zero", "32", "--unique",
                          "16", "--volatile", "4", "--file", str(f), "--cow", "4"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line.startswith(b"ready ")
        yield p, f, json.loads(line[6:])
    finally:
        p.kill()
        p.wait()


def pages_at(cap: Capture, addr: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """kind, content, pflags of the n pages from addr (every one must have a record)."""
    for proc in cap.processes:
        for v in proc.vmas:
            if v.start <= addr < v.end:
                offs = cap.offset[v.first : v.first + v.count]
                want = np.arange(n, dtype=np.uint64) + np.uint64((addr - v.start) // 4096)
                idx = v.first + np.searchsorted(offs, want)
                assert np.array_equal(cap.offset[idx], want)
                return cap.kind[idx], cap.content[idx], cap.pflags[idx]
    raise AssertionError(f"no VMA at {addr:#x}")


def test_capture_sees_kinds_equality_and_volatile_pages(
    worker: tuple[subprocess.Popen[bytes], Path, dict[str, int]]
) -> None:
    p, _f, at = worker
    cap = capture([p.pid], watch=0.5)
    k, same, _ = pages_at(cap, at["same"], 64)
    assert (k == KIND_ANON).all() and len(set(same.tolist())) == 64 and 0 not in same
    k, c, _ = pages_at(cap, at["zero"], 32)
    assert (k == KIND_ANON).all() and (c == 0).all()
    k, c, _ = pages_at(cap, at["unique"], 16)
    assert len(set(c.tolist()) | set(same.tolist())) == 16 + 64
    k, c, fl = pages_at(cap, at["volatile"], 4)
    assert ((fl & PF_VOLATILE) != 0).all()
    assert not (pages_at(cap, at["same"], 64)[2] & PF_VOLATILE).any()
    # the private file mapping: 4 COW'd anonymous pages holding the first --same contents
    k, c, _ = pages_at(cap, at["file"], 16)
    assert k[:4].tolist() == [KIND_ANON] * 4 and (k[4:] == KIND_FILE).all()
    assert c[:4].tolist() == same[:4].tolist()
    assert any(v.name == "[stack]" and v.count for v in cap.processes[0].vmas)


def test_file_holds_no_content_and_reports_skipped(
    worker: tuple[subprocess.Popen[bytes], Path, dict[str, int]], tmp_path: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    p, f, _ = worker
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    out = tmp_path / "c.kcap"
    assert main(["capture", str(p.pid), str(gone.pid), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"skipped process {gone.pid}: not running" in err and len(err.splitlines()) == 1
    cap = load(out)
    assert [q.pid for q in cap.processes] == [p.pid] and cap.skipped == [f"{gone.pid}: not running"]
    # the contents: 8-byte pieces of the file's pages (held by the worker's COW'd pages and
    # its page cache) and of random --same data never appear in the capture file
    import zipfile

    raw = b"".join(zipfile.ZipFile(out).read(n) for n in zipfile.ZipFile(out).namelist())
    data = f.read_bytes()
    import random

    same = random.Random(1).randbytes(64 * 4096)
    for blob in (data, same):
        for off in range(0, len(blob), 4096 * 7):
            assert blob[off + 100 : off + 116] not in raw
    header = json.loads(zipfile.ZipFile(out).read("capture.json"))
    assert header["format"] == "ksmfs-capture" and header["version"] == 1
    assert np.unique(cap.content[cap.kind == KIND_ANON]).shape[0] - 1 == int(cap.content.max())


def test_estimate_of_live_processes_and_usage_errors(
    worker: tuple[subprocess.Popen[bytes], Path, dict[str, int]], tmp_path: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    p, _, _ = worker
    js = tmp_path / "e.jsonl"
    assert main(["estimate", str(p.pid), "--assume", "merge-any", "--json", str(js),
                 "--set", "pages_to_scan=1000"]) == 0
    out = capsys.readouterr().out
    assert "pages_sharing" in out and "converged after" in out and "pages_to_scan=1000" in out
    snaps = [json.loads(line) for line in js.read_text().splitlines()]
    assert snaps[0]["full_scans"] == 0 and snaps[-1]["full_scans"] == len(snaps) - 1
    last = snaps[-1]
    # the worker's 32 zero pages alone give 31 pages_sharing (use_zero_pages 0) or 32 zero
    assert last["ksm"]["pages_sharing"] + last["ksm"]["ksm_zero_pages"] >= 31
    assert list(last["processes"]) == [str(p.pid)]
    assert set(last["processes"][str(p.pid)]) >= {"ksm_merging_pages", "ksm_process_profit",
                                                 "smaps_ksm_kb"}
    for argv, why in (
        (["estimate"], "PID ... or --all"),
        (["estimate", "1", "--all"], "not both"),
        (["estimate", "--capture", str(tmp_path / "nope")], "no such file"),
        (["estimate", "--capture", "x", "--set", "pages_shared=3"], "not a writable KSM knob"),
        (["estimate", "--capture", "x", "--set", "oops"], "KNOB=VALUE"),
        (["capture", "-o", str(tmp_path / "x")], "PID ... or --all"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert why in err and len(err.splitlines()) == 1, err

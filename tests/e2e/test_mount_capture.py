"""`ksmfs mount --capture FILE`: the captured processes, with their pids, under a real
mount; ksmd merges them and cat/grep see it."""

from __future__ import annotations

import sys
from pathlib import Path

from e2e_support import mounted, run, wait_until

sys.path.insert(0, str(Path(__file__).parent.parent / "capture"))
from test_capture_build import make_capture

from ksmfs.capture.build import build
from ksmfs.capture.estimate import run as run_estimate
from ksmfs.capture.format import load


def test_mount_a_capture(mountpoint: Path, tmp_path: Path) -> None:
    cap = make_capture(merge_any=True)
    cap.knobs = {"pages_to_scan": 1000, "sleep_millisecs": 10, "max_page_sharing": 256}
    path = tmp_path / "c.kcap"
    cap.save(path)
    want = run_estimate(build(load(path), "as-is")).final["ksm"]
    with mounted(mountpoint, "--capture", str(path)) as m:
        assert m.ksm_value("run") == 1 and m.ksm_value("pages_to_scan") == 1000
        # the mount's ksmd reaches what ksmfs estimate predicts for the same file
        assert wait_until(lambda: m.ksm_value("pages_sharing") == want["pages_sharing"], 20)
        assert m.ksm_value("pages_shared") == want["pages_shared"] > 0
        for p in cap.processes:
            r = run(f"cat {mountpoint}/proc/{p.pid}/ksm_stat")
            assert r.returncode == 0 and "ksm_merge_any: yes" in r.stdout, r.stdout
            comm = run(f"cat {mountpoint}/proc/{p.pid}/comm").stdout.strip()
            assert comm == p.comm
        smaps = run(f"grep -A30 '^7fff00000000' {mountpoint}/proc/4000/smaps").stdout
        assert "[stack]" in smaps and " mg" not in smaps.split("VmFlags:")[1].splitlines()[0]


def test_mount_refuses_a_bad_capture(mountpoint: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.kcap"
    bad.write_text("not a capture")
    r = run([sys.executable, "-m", "ksmfs", "mount", str(mountpoint), "--capture", str(bad)])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "not a readable capture file" in r.stderr

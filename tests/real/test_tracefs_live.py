"""The mount's tracefs files next to the live ones, byte for byte: names and modes of
events/ksm, what filter, trigger and enable files show, what writes tools make do to them
(errno and the text shown afterwards), and the `trace` header once the live ring buffer
has overflowed."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest

from ksmfs.kfs.tracefs import NR_CPUS, TRACE_HEADER
from ksmfs.linux import MADV_MERGEABLE

from .conftest import PacedKsm
from .trace_support import (
    event_dirs,
    ksmfs_mount,
    live_tracefs,
    reset_events,
    write_file,
)

# (file under events/ksm, bytes written): filters and triggers as tools (trace-cmd, perf,
# shell one-liners) write them, valid and invalid; files are compared after each write.
WRITES: list[tuple[str, bytes]] = [
    ("ksm_start_scan/filter", b"seq > 5\n"),
    ("ksm_start_scan/filter", b"seq>5 && rmap_entries < 100"),
    ("ksm_start_scan/filter", b"0\n"),
    ("ksm_start_scan/filter", b"seq > \n"),
    ("ksm_start_scan/filter", b"nosuch == 1\n"),
    ("ksm_start_scan/filter", b"seq == abc\n"),
    ("ksm_start_scan/filter", b"seq = 5\n"),
    ("ksm_start_scan/filter", b"(seq > 1\n"),
    ("ksm_start_scan/filter", b"seq > 1)\n"),
    ("ksm_start_scan/filter", b"seq > 5\nseq < 3\n"),
    ("ksm_start_scan/filter", b"  \n"),
    ("ksm_start_scan/filter", b"common_pid == 1 || (seq == 2)\n"),
    ("ksm_start_scan/filter", b"!(seq == 1) && seq & 1\n"),
    ("ksm_start_scan/filter", b"comm == \"ksmd\"\n"),
    ("ksm_start_scan/filter", b"comm ~ \"ks*\"\n"),
    ("ksm_start_scan/filter", b"comm > 1\n"),
    ("ksm_start_scan/filter", b"seq == \"x\"\n"),
    ("ksm_remove_ksm_page/filter", b"pfn == -1\n"),
    ("ksm_remove_ksm_page/filter", b"pfn >= 0x10\n"),
    ("ksm_merge_one_page/filter", b"pfn > 10 && err != 0\n"),
    ("ksm_enter/filter", b"mm == 0\n"),
    ("filter", b"seq > 1\n"),
    ("filter", b"pfn > 1\n"),
    ("filter", b"nosuch > 1\n"),
    ("filter", b"0\n"),
    ("ksm_start_scan/trigger", b"traceoff\n"),
    ("ksm_start_scan/trigger", b"traceon:3\n"),
    ("ksm_start_scan/trigger", b"stacktrace:5\n"),
    ("ksm_start_scan/trigger", b"enable_event:ksm:ksm_stop_scan\n"),
    ("ksm_start_scan/trigger", b"bogus\n"),
    ("ksm_start_scan/trigger", b"traceoff:xx\n"),
    ("ksm_start_scan/trigger", b"0\n"),
    ("ksm_start_scan/trigger", b"\n"),
    ("ksm_start_scan/trigger", b"!traceoff\n"),
    ("ksm_start_scan/trigger", b"traceon:3 if seq > 2\n"),
    ("ksm_start_scan/trigger", b"enable_event:ksm:nosuch\n"),
    ("ksm_stop_scan/trigger", b"disable_event:ksm:ksm_enter:2 if seq > 1\n"),
    ("ksm_stop_scan/trigger", b"traceoff if nosuch > 1\n"),
    ("ksm_start_scan/trigger", b"!traceon\n"),
    ("ksm_start_scan/trigger", b"!stacktrace\n"),
    ("ksm_start_scan/trigger", b"!enable_event:ksm:ksm_stop_scan\n"),
    ("ksm_stop_scan/trigger", b"!disable_event:ksm:ksm_enter\n"),
]


def _files(events: Path) -> dict[str, bytes]:
    """Every filter, trigger and enable file of events/ksm and its contents."""
    out = {}
    for rel in ("enable", "filter"):
        out[rel] = (events / rel).read_bytes()
    for ev in event_dirs(events):
        for name in ("enable", "filter", "trigger"):
            out[f"{ev}/{name}"] = (events / ev / name).read_bytes()
    return out


@pytest.mark.realkernel
@pytest.mark.fuse
def test_filter_and_trigger_files_match_the_live_tracefs(tmp_path: Path) -> None:
    with live_tracefs() as live_root, ksmfs_mount(tmp_path) as mnt:
        live = live_root / "events" / "ksm"
        ours = mnt / "sys" / "kernel" / "tracing" / "events" / "ksm"
        try:
            reset_events(live)
            reset_events(ours)
            for rel in ("", *event_dirs(live)):
                names = sorted(os.listdir(live / rel))
                assert sorted(os.listdir(ours / rel)) == names, rel
                for name in names:
                    a, b = os.stat(live / rel / name), os.stat(ours / rel / name)
                    assert stat.S_IMODE(b.st_mode) == stat.S_IMODE(a.st_mode), f"{rel}/{name}"
            assert _files(ours) == _files(live)
            for rel, data in WRITES:
                got = (write_file(ours / rel, data), _files(ours))
                want = (write_file(live / rel, data), _files(live))
                assert got[0] == want[0], f"write {data!r} to {rel}"
                for name, text in want[1].items():
                    assert got[1][name] == text, f"after {data!r} to {rel}: {name}"
        finally:
            reset_events(live)


@pytest.mark.realkernel
def test_trace_header_after_the_live_ring_overflowed(paced: PacedKsm) -> None:
    """With buffer_size_kb 4 the live ring drops most of 2000 merge lines: entries-written
    counts them all (in the ring + overrun); a consuming read lowers both numbers, and
    truncation resets them.  The mount prints the header from the same template."""
    with live_tracefs() as live:
        # "1410", or "7 (expanded: 1408)" before the first use: put back the size in use
        size = (live / "buffer_size_kb").read_text()
        m0 = re.search(r"expanded: (\d+)", size)
        old = m0[1] if m0 else size.split()[0]
        try:
            (live / "buffer_size_kb").write_text("4\n")
            os.close(os.open(live / "trace", os.O_WRONLY | os.O_TRUNC))
            w = paced.worker(2010)
            w.map(2000, False)
            w.fill(0, 0, (np.arange(2000, dtype=np.uint64) % np.uint64(500)) + np.uint64(1))
            w.madvise(0, MADV_MERGEABLE)
            paced.pacer.full_scan()
            paced.pacer.full_scan()
            text = (live / "trace").read_text()
            m = re.search(r"entries-in-buffer/entries-written: (\d+)/(\d+)   #P:(\d+)", text)
            assert m, text[:400]
            entries, written, ncpu = (int(x) for x in m.groups())
            lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
            assert entries == len(lines) and written >= 2000 > entries
            header = TRACE_HEADER.format(entries=entries, written=written, ncpu=ncpu)
            assert text.startswith(header)
            assert ncpu == NR_CPUS or ncpu == os.cpu_count()
            fd = os.open(live / "trace_pipe", os.O_RDONLY | os.O_NONBLOCK)
            try:
                taken = os.read(fd, 1000).count(b"\n")
            finally:
                os.close(fd)
            m2 = re.search(r"entries-written: (\d+)/(\d+)", (live / "trace").read_text())
            assert m2 and (int(m2[1]), int(m2[2])) == (entries - taken, written - taken)
            os.close(os.open(live / "trace", os.O_WRONLY | os.O_TRUNC))
            assert "entries-written: 0/0   #P:" in (live / "trace").read_text()
        finally:
            (live / "buffer_size_kb").write_text(f"{old}\n")

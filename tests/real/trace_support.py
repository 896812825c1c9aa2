"""Machinery of the trace differential: the same workload on the real kernel (workers, the
paced ksmd, the live tracefs) and on a ksmfs mount (ksmfs/control, the mount's sysfs and
tracefs), and a canonical form of trace lines in which the two sides can be compared.

Pointers and pfns differ between the sides.  A line's canonical form therefore names
processes instead of mm pointers (an mm is the process whose context emitted its
ksm_enter), KSM pages by a label given at the first merge line that names their pfn
(removals take the oldest label still live for that pfn, remove_ksm_page retires it), and
drops rmap_item pointers after checking that every one a removal names was named, with
the same mm, by an earlier merge line of the same side.  The context is "ksmd", "writer"
(the test process: store-driven work) or the name of the scenario process.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from e2e.e2e_support import IDLE_SCENARIO  # one process, nothing mergeable

from ksmfs.linux import MADV_MERGEABLE, MADV_UNMERGEABLE
from ksmfs.scenario.realkernel import (
    PACE_PAGES_TO_SCAN,
    PACE_SLEEP_MILLISECS,
    Ksmd,
    KsmSysfs,
    Pacer,
    Worker,
)

TRACEFS = Path("/sys/kernel/tracing")

LINE = re.compile(
    r"^\s*(?P<comm>.*)-(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+(?P<flags>\S+)\s+"
    r"(?P<ts>\d+\.\d+):\s+(?P<event>\w+):\s+(?P<text>.*)$"
)
TEXT = {
    "ksm_start_scan": re.compile(r"seq (?P<seq>-?\d+) rmap size (?P<rmap>-?\d+)$"),
    "ksm_stop_scan": re.compile(r"seq (?P<seq>-?\d+) rmap size (?P<rmap>-?\d+)$"),
    "ksm_enter": re.compile(r"mm (?P<mm>[0-9a-f]{16})$"),
    "ksm_exit": re.compile(r"mm (?P<mm>[0-9a-f]{16})$"),
    "ksm_merge_one_page": re.compile(
        r"ksm pfn (?P<pfn>\d+) rmap_item (?P<item>[0-9a-f]{16}) mm (?P<mm>[0-9a-f]{16}) "
        r"error (?P<err>-?\d+)$"
    ),
    "ksm_merge_with_ksm_page": re.compile(
        r"(?P<ksm>ksm )?pfn (?P<pfn>\d+) rmap_item (?P<item>[0-9a-f]{16}) "
        r"mm (?P<mm>[0-9a-f]{16}) error (?P<err>-?\d+)$"
    ),
    "ksm_remove_ksm_page": re.compile(r"pfn (?P<pfn>\d+)$"),
    "ksm_remove_rmap_item": re.compile(
        r"pfn (?P<pfn>\d+) rmap_item (?P<item>[0-9a-f]{16}) mm (?P<mm>[0-9a-f]{16})$"
    ),
}


def parse_trace(text: str) -> list[tuple[str, int, str, dict[str, str]]]:
    """(comm, pid, event, fields) of every record line of a `trace` file."""
    out = []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = LINE.match(line)
        assert m, f"unparsable trace line: {line!r}"
        t = TEXT[m["event"]].match(m["text"])
        assert t, f"unparsable {m['event']} text: {m['text']!r}"
        out.append((m["comm"], int(m["pid"]), m["event"], t.groupdict()))
    return out


@dataclass
class Canon:
    """The canonical form of one side's lines (state kept across the whole scenario)."""

    contexts: dict[int, str]  # pid -> "ksmd" / "writer" / process name
    mm_names: dict[str, str] = field(default_factory=dict)
    labels: dict[str, list[str]] = field(default_factory=dict)  # pfn -> live labels
    next_label: int = 0
    merged_items: set[tuple[str, str]] = field(default_factory=set)
    zero_pfns: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)

    def _label(self, pfn: str, new: bool) -> str:
        live = self.labels.setdefault(pfn, [])
        if new or not live:
            self.next_label += 1
            live.append(f"K{self.next_label}")
            return live[-1]
        return live[-1]

    def _removed(self, pfn: str, event: str) -> str:
        live = self.labels.get(pfn)
        if not live:
            self.problems.append(f"{event} names pfn {pfn}, which no earlier merge named")
            return "K?"
        return live[0]

    def line(self, comm: str, pid: int, event: str, f: dict[str, str]) -> tuple:
        ctx = self.contexts.get(pid, f"?{comm}-{pid}")
        mm = f.get("mm")
        mm_name = self.mm_names.get(mm, f"?mm{mm}") if mm is not None else None
        if event == "ksm_enter":
            self.mm_names[f["mm"]] = ctx
            return (ctx, event, ctx)
        if event == "ksm_exit":
            return (ctx, event, mm_name)
        if event in ("ksm_start_scan", "ksm_stop_scan"):
            return (ctx, event, int(f["seq"]), int(f["rmap"]))
        if event == "ksm_merge_one_page":
            self.zero_pfns.add(f["pfn"])
            self.merged_items.add((f["item"], f["mm"]))
            return (ctx, event, mm_name, int(f["err"]))
        if event == "ksm_merge_with_ksm_page":
            self.merged_items.add((f["item"], f["mm"]))
            # the NULL-ksm_page line of a pair merge names the page that becomes a KSM page
            label = self._label(f["pfn"], new=not f["ksm"])
            return (ctx, event, bool(f["ksm"]), label, mm_name, int(f["err"]))
        if event == "ksm_remove_rmap_item":
            if (f["item"], f["mm"]) not in self.merged_items:
                self.problems.append(
                    f"ksm_remove_rmap_item names rmap_item {f['item']} (mm {mm_name}), "
                    "which no earlier merge named"
                )
            return (ctx, event, self._removed(f["pfn"], event), mm_name)
        if event == "ksm_remove_ksm_page":
            label = self._removed(f["pfn"], event)
            if self.labels.get(f["pfn"]):
                self.labels[f["pfn"]].pop(0)
            return (ctx, event, label)
        raise AssertionError(f"unexpected event {event}")


# -- the two sides -------------------------------------------------------------------------
def tokens(source: str, count: int, unique_base: list[int]) -> np.ndarray:
    """Contents as ksmfs/control names them: zero, value:K, cycle:K, unique."""
    if source == "zero":
        return np.zeros(count, dtype=np.uint64)
    if source == "unique":
        start = unique_base[0]
        unique_base[0] += count
        return (np.arange(start, start + count, dtype=np.uint64)) | np.uint64(1 << 63)
    kind, _, arg = source.partition(":")
    if kind == "value":
        return np.full(count, int(arg), dtype=np.uint64)
    assert kind == "cycle"
    return (np.arange(count, dtype=np.uint64) % np.uint64(int(arg))) + np.uint64(1)


class RealSide:
    """The machine's kernel: one worker per process, ksmd paced one pass per full scan,
    the live tracefs (events enabled by the caller)."""

    name = "real"

    def __init__(self, sysfs: KsmSysfs, exe: Path, tracefs: Path) -> None:
        self.sysfs = sysfs
        self.exe = exe
        self.tracefs = tracefs
        self.ksmd = Ksmd()
        self.pacer = Pacer(sysfs, self.ksmd)
        self.workers: dict[str, Worker] = {}
        self.unique = [1]
        self.comm = exe.name[:15]
        self.canon = Canon({self.ksmd.pid: "ksmd", os.getpid(): "writer"})

    def start(self) -> None:
        self.sysfs.write("run", 0)
        self.pacer.install()

    def spawn(self, name: str, pages: int, source: str, merge_any: bool = False) -> None:
        w = Worker(self.exe, pages + 4, name)
        self.workers[name] = w
        self.canon.contexts[w.pid] = name
        if merge_any:
            w.merge_any(True)
        w.map(pages, False)
        w.fill(0, 0, tokens(source, pages, self.unique))
        if not merge_any:
            w.madvise(0, MADV_MERGEABLE)

    def write(self, name: str, first: int, count: int, source: str) -> None:
        self.workers[name].fill(0, first, tokens(source, count, self.unique))

    def unmergeable(self, name: str) -> None:
        self.workers[name].madvise(0, MADV_UNMERGEABLE)

    def merge_any_off(self, name: str) -> None:
        self.workers[name].merge_any(False)

    def exit(self, name: str) -> None:
        self.workers.pop(name).exit()

    def knob(self, knob: str, value: int) -> None:
        self.sysfs.write(knob, value)

    def tracefs_write(self, rel: str, text: str) -> None:
        outcome = write_file(self.tracefs / rel, text.encode())
        assert outcome.startswith("ok"), f"{rel}: writing {text!r}: {outcome}"

    def full_scan(self) -> None:
        ran, _ = self.pacer.full_scan()
        assert ran, "the real ksmd had nothing to scan (a scenario must keep an mm registered)"

    def take(self) -> list[tuple]:
        text = (self.tracefs / "trace").read_text()
        fd = os.open(self.tracefs / "trace", os.O_WRONLY | os.O_TRUNC)
        os.close(fd)
        return [self.canon.line(*r) for r in parse_trace(text)]

    def close(self) -> None:
        for w in self.workers.values():
            w.kill()
        self.workers.clear()


class MountSide:
    """A ksmfs mount: processes through ksmfs/control, knobs and tracefs of the mount,
    ksmd paced the same way (pages_to_scan UINT_MAX, a long sleep, run 0 between scans)."""

    name = "mount"

    def __init__(self, mnt: Path, comm: str) -> None:
        self.mnt = mnt
        self.ksm = mnt / "sys" / "kernel" / "mm" / "ksm"
        self.tracefs = mnt / "sys" / "kernel" / "tracing"
        self.comm = comm
        self.pids: dict[str, int] = {}
        self.canon = Canon({os.getpid(): "writer"})
        self._trigger = 0

    def _write(self, path: Path, text: str) -> None:
        outcome = write_file(path, text.encode())
        assert outcome.startswith("ok"), f"{path}: writing {text!r}: {outcome}"

    def control(self, line: str) -> str:
        self._write(self.mnt / "ksmfs" / "control", line + "\n")
        return (self.mnt / "ksmfs" / "last").read_text().strip()

    def start(self) -> None:
        self.knob("run", 0)
        self.knob("pages_to_scan", PACE_PAGES_TO_SCAN)
        self.knob("sleep_millisecs", PACE_SLEEP_MILLISECS[0])

    def spawn(self, name: str, pages: int, source: str, merge_any: bool = False) -> None:
        flags = "merge_any" if merge_any else "mergeable"
        last = self.control(f"spawn {self.comm} pages={pages} fill={source} {flags}")
        pid = int(last.split()[1])
        self.pids[name] = pid
        self.canon.contexts[pid] = name

    def write(self, name: str, first: int, count: int, source: str) -> None:
        self.control(f"write {self.pids[name]} 0 {first} {count} {source}")

    def unmergeable(self, name: str) -> None:
        self.control(f"madvise {self.pids[name]} 0 unmergeable")

    def merge_any_off(self, name: str) -> None:
        self.control(f"merge_any {self.pids[name]} 0")

    def exit(self, name: str) -> None:
        self.control(f"exit {self.pids.pop(name)}")

    def knob(self, knob: str, value: int) -> None:
        self._write(self.ksm / knob, f"{value}\n")

    def tracefs_write(self, rel: str, text: str) -> None:
        outcome = write_file(self.tracefs / rel, text.encode())
        assert outcome.startswith("ok"), f"{rel}: writing {text!r}: {outcome}"

    def full_scan(self, timeout: float = 60.0) -> None:
        before = (self.ksm / "full_scans").read_text()
        # The trigger of the real pacer (realkernel.Pacer): run=1 wakes only the untimed
        # wait (run_store), so a new sleep_millisecs first ends ksmd's timed sleep
        # (sleep_millisecs_store); three values, so that it differs from the last two.
        self._trigger = (self._trigger + 1) % len(PACE_SLEEP_MILLISECS)
        self.knob("sleep_millisecs", PACE_SLEEP_MILLISECS[self._trigger])
        self.knob("run", 1)
        deadline = time.monotonic() + timeout
        while (self.ksm / "full_scans").read_text() == before:
            assert time.monotonic() < deadline, "the mount's ksmd did not end a pass"
            time.sleep(0.005)
        self.knob("run", 0)

    def take(self) -> list[tuple]:
        text = (self.tracefs / "trace").read_text()
        fd = os.open(self.tracefs / "trace", os.O_WRONLY | os.O_TRUNC)
        os.close(fd)
        recs = parse_trace(text)
        for comm, pid, _, _ in recs:
            if comm == "ksmd":
                self.canon.contexts.setdefault(pid, "ksmd")
        return [self.canon.line(*r) for r in recs]

    def close(self) -> None:
        pass


# -- mounts --------------------------------------------------------------------------------
def write_file(path: Path, data: bytes) -> str:
    """One open (O_WRONLY, no O_TRUNC: trigger files append) and one write; the outcome
    as "ok N" or the errno's name."""
    fd = os.open(path, os.O_WRONLY)
    try:
        return f"ok {os.write(fd, data)}"
    except OSError as e:
        return errno.errorcode[e.errno or 0]
    finally:
        os.close(fd)


def event_dirs(events: Path) -> list[str]:
    return sorted(p.name for p in events.iterdir() if p.is_dir())


def reset_events(events: Path) -> None:
    """Filters off, triggers removed (as "!" lines), events off."""
    write_file(events / "filter", b"0\n")
    for ev in event_dirs(events):
        write_file(events / ev / "filter", b"0\n")
        for line in (events / ev / "trigger").read_text().splitlines():
            if line.startswith("#") or not line:
                continue
            name = re.sub(r":(unlimited|count=\d+)( if .*)?$", "", line)
            write_file(events / ev / "trigger", f"!{name}\n".encode())
    write_file(events / "enable", b"0\n")


@contextlib.contextmanager
def live_tracefs() -> Iterator[Path]:
    """The machine's tracefs with every ksm event on and an empty buffer; afterwards the
    events are off, the buffer empty, and tracefs unmounted again if it was not mounted."""
    if os.geteuid() != 0:
        pytest.skip("tracefs needs root")
    mounted_here = False
    if not os.path.ismount(TRACEFS):
        r = subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount tracefs: {r.stderr.strip()}")
        mounted_here = True
    enable = TRACEFS / "events" / "ksm" / "enable"
    try:
        if not enable.exists():
            pytest.skip("this kernel has no events/ksm")
        if not os.access(enable, os.W_OK):
            pytest.skip("tracefs is not writable")
        if (TRACEFS / "tracing_on").read_text().strip() != "1":
            pytest.skip("tracing is switched off on this machine (tracing_on 0)")
        enable.write_text("1\n")
        os.close(os.open(TRACEFS / "trace", os.O_WRONLY | os.O_TRUNC))
        yield TRACEFS
    finally:
        with contextlib.suppress(OSError):
            reset_events(TRACEFS / "events" / "ksm")
            (TRACEFS / "tracing_on").write_text("1\n")
            os.close(os.open(TRACEFS / "trace", os.O_WRONLY | os.O_TRUNC))
        if mounted_here:
            subprocess.run(["umount", str(TRACEFS)], capture_output=True)


def _ksmfs(*args: str) -> list[str]:
    return [sys.executable, "-m", "ksmfs", *args]


@contextlib.contextmanager
def ksmfs_mount(tmp: Path) -> Iterator[Path]:
    """A ksmfs mount (daemon) of a kernel with one idle process, tracing events on;
    unmounted (lazily if need be) in the finally."""
    fusermount = shutil.which("fusermount3")
    if not os.path.exists("/dev/fuse") or fusermount is None:
        pytest.skip("FUSE is not usable here (/dev/fuse or fusermount3 missing)")
    mnt = tmp / "mnt"
    mnt.mkdir()
    scenario = tmp / "idle.toml"
    scenario.write_text(IDLE_SCENARIO)
    r = subprocess.run(_ksmfs("mount", str(mnt), "--scenario", str(scenario)),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"ksmfs mount failed: {r.stderr}"
    try:
        (mnt / "sys/kernel/tracing/events/ksm/enable").write_text("1\n")
        yield mnt
    finally:
        subprocess.run(_ksmfs("umount", str(mnt)), capture_output=True, text=True, timeout=60)
        with open("/proc/mounts") as f:
            if any(line.split()[1] == str(mnt) for line in f):
                subprocess.run([fusermount, "-u", "-z", str(mnt)], capture_output=True)


def counts(lines: list[tuple]) -> Counter:
    """(context, event) -> lines, the per-scan count the report shows."""
    return Counter((line[0], line[1]) for line in lines)

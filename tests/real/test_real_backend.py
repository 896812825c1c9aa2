"""The real backend on the machine's kernel: spec timelines, pacing, restore, refusals.

Each test drives /sys/kernel/mm/ksm (marker ``realkernel``), is skipped when that is not
possible, and is small: a handful of pages, well under a second of ksmd work.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from ksmfs.linux import MADV_MERGEABLE
from ksmfs.scenario.contents import page_bytes
from ksmfs.scenario.loader import load_scenario
from ksmfs.scenario.real import run_real
from ksmfs.scenario.realkernel import (
    PAGE_SIZE,
    STATE_PATH,
    KsmSysfs,
    RealBackendError,
    Worker,
    build_worker,
    token_page_bytes,
)

from .conftest import PacedKsm

HERE = Path(__file__).parent
RMAP_ITEM_SIZE = 64  # sizeof(struct ksm_rmap_item) on 64-bit (spec §1.3)

realkernel = pytest.mark.realkernel


def smart_scan_processed(visits: int) -> list[bool]:
    """Whether visit 0, 1, … of a page that never merges is processed (not skipped), as
    mm/ksm.c should_skip_rmap_item decides with smart_scan = 1 (spec §3.4)."""
    age, remaining, out = 0, 0, []
    for _ in range(visits):
        a = age
        age = min(age + 1, 255)
        if a < 3:
            out.append(True)
        elif remaining == 0:
            remaining = 1 if a <= 3 else 2 if a <= 5 else 4 if a <= 8 else 8
            out.append(True)
        else:
            remaining -= 1
            out.append(False)
    return out


def _write_scenario(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.toml"
    path.write_text(textwrap.dedent(text))
    return path


@realkernel
def test_worked_timeline_3_9(real_ksm: KsmSysfs) -> None:
    """The §3.9 timeline (A: X, Y; B: X', Z rewritten every pass) gives the counters the
    spec derives, snapshot by snapshot, on the real kernel."""
    scenario = load_scenario(HERE / "timeline-3-9.toml")
    snaps = run_real(scenario, lambda s: None)
    n = scenario.max_full_scans
    assert [s["full_scans"] for s in snaps] == list(range(n + 1))

    # Workload: 4 pages.  X and X' are identical: first visit records the checksum, second
    # visit (pass 2) merges them into one KSM page (shared 1, sharing 1) and KSM pages are
    # never skipped.  Y and Z never merge: smart_scan processes or skips them alike (same
    # age); a processed Y goes into the unstable tree (unshared) from pass 2 on, a skipped
    # one is volatile; Z is rewritten after every pass, so it is always volatile.
    processed = smart_scan_processed(n)
    rmap_items, scanned, skipped = 4, 0, 0
    for p in range(1, n + 1):
        proc = processed[p - 1]  # Y's and Z's visit index in pass p is p - 1
        merged = p >= 2
        shared = sharing = int(merged)
        unshared = int(merged and proc)
        scanned += 2 + (2 if proc else 0)
        skipped += 0 if proc else 2
        ksm = snaps[p]["ksm"]
        assert ksm["full_scans"] == p
        assert ksm["run"] == 1
        assert ksm["pages_shared"] == shared, p
        assert ksm["pages_sharing"] == sharing, p
        assert ksm["pages_unshared"] == unshared, p
        assert ksm["pages_volatile"] == rmap_items - shared - sharing - unshared, p
        assert ksm["pages_scanned"] == scanned, p
        assert ksm["pages_skipped"] == skipped, p
        assert ksm["general_profit"] == sharing * PAGE_SIZE - rmap_items * RMAP_ITEM_SIZE
        for name in ("A", "B"):
            st = snaps[p]["processes"][name]
            assert st["ksm_rmap_items"] == 2
            assert st["ksm_merging_pages"] == int(merged)
            assert st["ksm_process_profit"] == int(merged) * PAGE_SIZE - 2 * RMAP_ITEM_SIZE
            assert st["ksm_merge_any"] == "no" and st["ksm_mergeable"] == "yes"
            assert st["smaps_ksm_kb"] == {"mem": 4 * int(merged)}
    # the figures the spec states for pass 2 (§3.9)
    assert snaps[2]["ksm"]["general_profit"] == 3840
    assert snaps[2]["processes"]["A"]["ksm_process_profit"] == 3968
    # snapshot 0: before run=1; pages_scanned/pages_skipped count from here
    s0 = snaps[0]
    assert s0["ksm"]["run"] == 0 and s0["ksm"]["pages_scanned"] == 0
    assert s0["ksm"]["pages_to_scan"] == int(real_ksm.saved["pages_to_scan"])
    assert s0["ksm"]["sleep_millisecs"] == int(real_ksm.saved["sleep_millisecs"])
    assert s0["processes"]["A"]["ksm_rmap_items"] == 0


@realkernel
def test_kernel_batches_give_the_same_counters(real_ksm: KsmSysfs, tmp_path: Path) -> None:
    """Spec §8.14: ksmd really batching at a small pages_to_scan gives, snapshot for
    snapshot, the counters of one-batch passes."""
    path = _write_scenario(tmp_path, """
        name = "batches"
        max_full_scans = 6
        [ksm]
        pages_to_scan = 7
        [[process]]
        name = "p"
        count = 2
          [[process.vma]]
          name = "ram"
          pages = 20
          mergeable = true
          fill = [{ from = "value:3", pages = 8 }, { from = "unique", pages = 8 },
                  { from = "zero", pages = 4 }]
        [[step]]
        after_full_scans = 3
        sysfs = { pages_to_scan = 40 }
        """)
    scenario = load_scenario(path)
    one, real = [], []
    a = run_real(scenario, lambda s: None, batches_out=one)
    b = run_real(scenario, lambda s: None, kernel_batches=True, batches_out=real)
    assert a == b
    assert one == [1] * 6
    # 40 present pages: ceil(40/7) = 6 batches a pass.  With exactly 40 the pass ends in a
    # second, empty batch (§8.14) -- unless smart_scan skips pages, which do not use budget.
    assert real[:3] == [math.ceil(40 / 7)] * 3
    assert all(n in (1, 2) for n in real[3:]) and 2 in real[3:]
    assert [s["ksm"]["pages_to_scan"] for s in a] == [7, 7, 7, 7, 40, 40, 40]


@realkernel
def test_virtual_full_scans(real_ksm: KsmSysfs, tmp_path: Path) -> None:
    """Full scans with no mm registered, and with run = 2, are virtual: snapshots and
    steps go on while the kernel's full_scans does not move."""
    path = _write_scenario(tmp_path, """
        name = "virtual"
        max_full_scans = 8
        [[process]]
        name = "late"
          [[process.vma]]
          name = "ram"
          pages = 4
          fill = [{ from = "value:1", pages = 4 }]
        [[step]]
        after_full_scans = 2
        madvise = { process = "late", vma = "ram", advice = "mergeable" }
        [[step]]
        after_full_scans = 5
        sysfs = { run = 2 }
        [[step]]
        after_full_scans = 6
        sysfs = { run = 1 }
        """)
    batches: list[int] = []
    snaps = run_real(load_scenario(path), lambda s: None, batches_out=batches)
    assert [s["ksm"]["full_scans"] for s in snaps] == [0, 0, 0, 1, 2, 3, 0, 1, 2]
    assert batches == [0, 0, 1, 1, 1, 0, 1, 1]
    assert [s["ksm"]["run"] for s in snaps] == [0, 1, 1, 1, 1, 1, 2, 1, 1]
    # 4 identical pages merge in the second pass after registering: 1 shared, 3 sharing
    assert snaps[4]["ksm"]["pages_shared"] == 1 and snaps[4]["ksm"]["pages_sharing"] == 3
    assert snaps[6]["ksm"]["pages_shared"] == 0  # run = 2 unmerged synchronously
    assert snaps[8]["ksm"]["pages_sharing"] == 3


@realkernel
def test_knobs_restored_after_a_run(real_ksm: KsmSysfs, tmp_path: Path) -> None:
    """After a run that changes many knobs, every writable knob reads its saved value,
    pages_shared is 0 and no worker is left."""
    path = _write_scenario(tmp_path, """
        name = "knobs"
        max_full_scans = 3
        [ksm]
        pages_to_scan = 37
        sleep_millisecs = 10
        smart_scan = 0
        use_zero_pages = 1
        max_page_sharing = 3
        stable_node_chains_prune_millisecs = 500
        advisor_max_cpu = 50
        [[process]]
        name = "p"
          [[process.vma]]
          name = "ram"
          pages = 8
          mergeable = true
          fill = [{ from = "value:1", pages = 8 }]
        [[step]]
        after_full_scans = 2
        sysfs = { advisor_target_scan_time = 99, merge_across_nodes = 1 }
        """)
    pids: list[int] = []

    def grab(snap: dict) -> None:
        if not pids:
            pids.extend(_worker_pids())

    snaps = run_real(load_scenario(path), grab)
    assert snaps[2]["ksm"]["pages_to_scan"] == 37 and snaps[2]["ksm"]["smart_scan"] == 0
    assert snaps[2]["ksm"]["pages_shared"] == 3  # 8 copies, max_page_sharing 3: 3 dups
    now = KsmSysfs()
    now.save()
    assert now.saved == real_ksm.saved
    assert now.read_int("pages_shared") == 0
    assert pids and not set(pids) & set(_worker_pids())


@realkernel
def test_knobs_restored_after_an_error(real_ksm: KsmSysfs) -> None:
    """An exception in the middle of a run still unmerges and restores every knob."""

    def boom(snap: dict) -> None:
        if snap["full_scans"] == 2:
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        run_real(load_scenario(HERE / "timeline-3-9.toml"), boom)
    now = KsmSysfs()
    now.save()
    assert now.saved == real_ksm.saved and now.read_int("pages_shared") == 0
    assert not _worker_pids()


@realkernel
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_knobs_restored_after_a_signal(real_ksm: KsmSysfs, sig: int) -> None:
    """SIGINT or SIGTERM in the middle of a run: knobs restored, workers gone."""
    code = textwrap.dedent(f"""
        import sys, time
        from ksmfs.scenario.loader import load_scenario
        from ksmfs.scenario.real import run_real
        def slow(snap):
            print(snap["full_scans"], flush=True)
            time.sleep(0.2)
        run_real(load_scenario({str(HERE / 'timeline-3-9.toml')!r}), slow)
        """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "0"
    assert proc.stdout.readline().strip() == "1"  # ksmd is paced, knobs are changed
    assert KsmSysfs().read("sleep_millisecs") != real_ksm.saved["sleep_millisecs"]
    proc.send_signal(sig)
    proc.wait(timeout=10)
    assert proc.returncode != 0
    now = KsmSysfs()
    now.save()
    assert now.saved == real_ksm.saved and now.read_int("pages_shared") == 0
    assert not _worker_pids()


@realkernel
def test_next_run_repairs_a_killed_run(real_ksm: KsmSysfs, capfd: pytest.CaptureFixture[str]
                                       ) -> None:
    """A run killed with SIGKILL cannot restore anything: its workers exit (stdin EOF)
    but the pacing knobs and, with run=0, the dead pages' counts remain.  The next run
    restores the values the killed run had saved, then runs normally."""
    code = textwrap.dedent(f"""
        import time
        from ksmfs.scenario.loader import load_scenario
        from ksmfs.scenario.real import run_real
        def slow(snap):
            print(snap["full_scans"], flush=True)
            if snap["full_scans"] == 3:
                time.sleep(30)
        run_real(load_scenario({str(HERE / 'timeline-3-9.toml')!r}), slow)
        """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    while proc.stdout.readline().strip() != "3":
        pass
    proc.kill()
    proc.wait(timeout=10)
    deadline = time.monotonic() + 5
    while _worker_pids() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _worker_pids()
    assert STATE_PATH.exists()
    assert real_ksm.read_int("pages_shared") == 1  # stale: its mappers are gone
    assert real_ksm.read("sleep_millisecs") != real_ksm.saved["sleep_millisecs"]
    capfd.readouterr()
    snaps = run_real(load_scenario(HERE / "timeline-3-9.toml"), lambda s: None)
    assert "ended without restoring /sys/kernel/mm/ksm" in capfd.readouterr().err
    assert snaps[2]["ksm"]["pages_shared"] == 1 and snaps[2]["ksm"]["full_scans"] == 2
    assert not STATE_PATH.exists()
    now = KsmSysfs()
    now.save()
    assert now.saved == real_ksm.saved and now.read_int("pages_shared") == 0


@realkernel
def test_refuses_when_other_processes_use_ksm(paced: PacedKsm) -> None:
    """A process outside the run with rmap items, then with merged pages: refused."""
    w = paced.worker()
    w.map(2, False)
    w.fill(0, 0, np.array([7, 7], dtype=np.uint64))
    w.madvise(0, MADV_MERGEABLE)
    scenario = load_scenario(HERE / "timeline-3-9.toml")
    assert paced.pacer.full_scan()[0]  # pass 1: rmap items, nothing merged yet
    assert paced.sysfs.read_int("pages_shared") == 0
    with pytest.raises(RealBackendError, match=rf"other processes already use KSM.*{w.pid}"):
        run_real(scenario, lambda s: None)
    assert paced.pacer.full_scan()[0]  # pass 2: merged
    assert paced.sysfs.read_int("pages_shared") == 1
    with pytest.raises(RealBackendError, match=r"pages_shared 1, pages_sharing 1"):
        run_real(scenario, lambda s: None)


@realkernel
def test_worker_own_memory_stays_out_of_the_counts(paced: PacedKsm) -> None:
    """merge_any marks the worker's own stack/data/bss/heap mergeable; the worker undoes
    that, so a merge_any worker without scenario VMAs has no rmap items."""
    raw, clean = paced.worker(), paced.worker()
    assert raw.merge_any(True, cleanup=False) == 0
    assert clean.merge_any(True, cleanup=True) > 0
    paced.pacer.full_scan()
    assert raw.ksm_stat()["ksm_rmap_items"] > 0  # measured: 14 pages (static binary)
    assert clean.ksm_stat()["ksm_rmap_items"] == 0
    assert clean.ksm_stat()["ksm_merge_any"] == "yes"


def test_worker_writes_token_pages() -> None:
    """The worker materialises each token exactly as token_page_bytes (and the contents
    module's page_bytes) describe; token 0 is a present all-zero page."""
    try:
        exe = build_worker()
    except RealBackendError as e:
        pytest.skip(f"cannot build the C worker: {e}")
    w = Worker(exe, 16)
    try:
        tokens = np.array([0, 1, 0x0102030405060708, (1 << 63) | 5], dtype=np.uint64)
        addr = w.map(len(tokens), False)
        w.fill(0, 0, tokens)
        with open(f"/proc/{w.pid}/mem", "rb") as mem:
            mem.seek(addr)
            data = mem.read(len(tokens) * PAGE_SIZE)
        for i, t in enumerate(tokens):
            page = data[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]
            assert page == token_page_bytes(int(t))
            if t:
                assert page == page_bytes(t)
        assert token_page_bytes(0) == bytes(PAGE_SIZE)
        assert token_page_bytes(1) < token_page_bytes(2) < token_page_bytes(1 << 63)
        with open(f"/proc/{w.pid}/smaps") as f:
            text = f.read()
        assert "Rss:                  16 kB" in text.split(f"{addr:x}-", 1)[1][:400]
    finally:
        w.exit()


def test_refuses_without_root() -> None:
    """Not root: one clear line, before anything is written."""
    if not Path("/sys/kernel/mm/ksm").is_dir():
        pytest.skip("no /sys/kernel/mm/ksm here: the refusal names that before root")
    scenario = load_scenario(HERE / "timeline-3-9.toml")
    if os.geteuid() != 0:
        with pytest.raises(RealBackendError, match="needs root"):
            run_real(scenario, lambda s: None)
        return
    os.seteuid(65534)  # the real uid stays 0, so this can be undone
    try:
        with pytest.raises(RealBackendError, match=r"^needs root to write /sys/kernel/mm/ksm"):
            run_real(scenario, lambda s: None)
    finally:
        os.seteuid(0)


def _worker_pids() -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                exe = os.readlink(f"/proc/{entry.name}/exe")
            except OSError:
                continue
            if os.path.basename(exe).startswith("ksmworker-"):
                out.append(int(entry.name))
    return out

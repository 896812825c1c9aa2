"""``ksmfs estimate`` against the real ksmd on the same processes.

Real processes (workers whose memory is known, and programs not written here: Python
running stdlib code, node, java) start with merge_any set before exec while the real
``run`` is 0. They are captured and estimated; then the real ksmd merges the same
processes one full scan at a time (Pacer) and, after every full scan, pages_shared,
pages_sharing, pages_unshared, ksm_zero_pages and every process's ksm_merging_pages are
compared with the estimate's snapshot of the same full scan. A naive count of duplicate
anonymous pages (what estimators do today) is the baseline the estimate must not lose to.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ksmfs.capture.build import build
from ksmfs.capture.estimate import run
from ksmfs.capture.format import KIND_ANON, Capture
from ksmfs.capture.take import capture
from ksmfs.scenario.realkernel import read_ksm_stat

from .conftest import PacedKsm

pytestmark = pytest.mark.realkernel

HERE = Path(__file__).parent / "estimate"
LAUNCHER = HERE / "merge_any_exec.py"
WORKER = HERE / "worker.py"
COUNTERS = ("pages_shared", "pages_sharing", "pages_unshared", "ksm_zero_pages")
FULL_SCANS = 8
KNOBS = ("max_page_sharing", "use_zero_pages", "smart_scan", "merge_across_nodes",
         "stable_node_chains_prune_millisecs")


class Procs:
    """Processes started with merge_any; all killed at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *cmd: str | Path, ready: bool = False) -> subprocess.Popen[bytes]:
        p = subprocess.Popen([sys.executable, str(LAUNCHER), *map(str, cmd)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
        self.procs.append(p)
        if ready:
            assert p.stdout is not None
            line = p.stdout.readline()
            assert line.startswith(b"ready "), f"{cmd}: {line!r}"
        return p

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def kill(self) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


@pytest.fixture
def procs() -> Iterator[Procs]:
    ps = Procs()
    try:
        yield ps
    finally:
        ps.kill()


def foreign_mergeable(ours: set[int]) -> list[int]:
    """Processes other than ours that ksmd would scan (registered with KSM)."""
    out = []
    for e in os.scandir("/proc"):
        if not e.name.isdigit() or int(e.name) in ours:
            continue
        try:
            text = Path(f"/proc/{e.name}/ksm_stat").read_text()
        except OSError:
            continue
        if "ksm_mergeable: yes" in text:
            out.append(int(e.name))
    return out


def naive(cap: Capture, use_zero_pages: int) -> dict[str, int]:
    """Duplicate anonymous pages of anonymous VMAs, counted once: pages_shared = contents
    held more than once, pages_sharing = the other copies (zero pages apart when
    use_zero_pages). It ignores max_page_sharing, VmFlags and private file mappings."""
    sel = np.zeros(cap.npages, dtype=bool)
    for p in cap.processes:
        for v in p.vmas:
            if not (v.name or "").startswith("/"):
                sel[v.first : v.first + v.count] = True
    c = cap.content[sel & (cap.kind == KIND_ANON)].astype(np.int64)
    zero = int(np.count_nonzero(c == 0)) if use_zero_pages else 0
    if use_zero_pages:
        c = c[c != 0]
    cnt = np.bincount(c) if c.shape[0] else np.zeros(0, dtype=np.int64)
    return {"pages_shared": int(np.count_nonzero(cnt > 1)),
            "pages_sharing": int(np.sum(cnt[cnt > 1] - 1)),
            "ksm_zero_pages": zero}


def real_snapshot(paced: PacedKsm, pids: list[int]) -> dict[str, object]:
    ksm = {c: paced.sysfs.read_int(c) for c in COUNTERS}
    merging = {str(p): int(read_ksm_stat(p).get("ksm_merging_pages", 0)) for p in pids}
    return {"ksm": ksm, "merging": merging}


def estimate_and_real(paced: PacedKsm, procs: Procs, use_zero_pages: int, watch: float
                      ) -> tuple[list[dict], list[dict], dict[str, int], Capture]:
    pids = procs.pids
    others = foreign_mergeable(set(pids))
    if others:
        pytest.skip(f"other processes are registered with KSM: {others[:5]}")
    paced.sysfs.write("use_zero_pages", use_zero_pages)
    cap = capture(pids, watch)
    assert [p.pid for p in cap.processes] and not cap.skipped, cap.skipped
    assert all(p.merge_any for p in cap.processes)
    knobs = {n: paced.sysfs.read_int(n) for n in KNOBS}
    built = build(cap, "as-is", knobs)
    est = run(built, max_full_scans=FULL_SCANS, stable_for=FULL_SCANS + 1)
    sim = [{"ksm": {c: s["ksm"][c] for c in COUNTERS},
            "merging": {p: e["ksm_merging_pages"] for p, e in s["processes"].items()}}
           for s in est.snapshots]
    real = [real_snapshot(paced, pids)]
    for _ in range(FULL_SCANS):
        ran, _batches = paced.pacer.full_scan()
        assert ran
        real.append(real_snapshot(paced, pids))
    return sim, real, naive(cap, use_zero_pages), cap


def table(sim: list[dict], real: list[dict], nv: dict[str, int]) -> str:
    rows = ["scan " + " ".join(f"{c:>29}" for c in COUNTERS)]
    for n, (s, r) in enumerate(zip(sim, real, strict=False)):
        rows.append(f"{n:>4} " + " ".join(f"{s['ksm'][c]:>9} est {r['ksm'][c]:>9} real   "
                                         for c in COUNTERS))
    rows.append("naive " + " ".join(f"{c}={v}" for c, v in nv.items()))
    for n, (s, r) in enumerate(zip(sim, real, strict=False)):
        diff = {p: (s["merging"].get(p), r["merging"][p]) for p in r["merging"]
                if s["merging"].get(p) != r["merging"][p]}
        if diff:
            rows.append(f"full scan {n}: ksm_merging_pages (est, real) differ: {diff}")
    return "\n".join(rows)


def start_static(procs: Procs, tmp_path: Path, thp: int = 0) -> None:
    f = tmp_path / "data.bin"
    f.write_bytes(os.urandom(256 * 4096))
    for _ in range(3):
        procs.start(sys.executable, WORKER, "--same", 3000, "--zero", 400, "--unique", 500,
                    "--thp", thp, "--file", f, "--cow", 64, ready=True)
    # programs not written here, several running the same code
    for _ in range(3):
        procs.start(sys.executable, "-c",
                    "import json, decimal, email.parser, http.client, sys; sys.stdin.read()")
    if shutil.which("node"):
        for _ in range(3):
            procs.start("node", "-e", "process.stdin.resume()")
    time.sleep(3)  # interpreters settle (start-up allocations, JIT)


@pytest.mark.parametrize("use_zero_pages", [0, 1])
def test_estimate_equals_real_ksmd_on_unchanging_processes(
    paced: PacedKsm, procs: Procs, tmp_path: Path, use_zero_pages: int
) -> None:
    start_static(procs, tmp_path)
    sim, real, nv, _ = estimate_and_real(paced, procs, use_zero_pages, watch=2.0)
    print("\n" + table(sim, real, nv))
    assert real[-1]["ksm"]["pages_sharing"] > 3000  # the test merges something real
    for n, (s, r) in enumerate(zip(sim, real, strict=False)):
        assert s["ksm"] == r["ksm"], f"full scan {n}:\n{table(sim, real, nv)}"
        assert s["merging"] == r["merging"], f"full scan {n}: ksm_merging_pages"
    for c in ("pages_shared", "pages_sharing"):
        assert abs(sim[-1]["ksm"][c] - real[-1]["ksm"][c]) <= abs(nv[c] - real[-1]["ksm"][c])
    if use_zero_pages == 0:
        # captured again now that the real ksmd has merged them: KSM pages are taken with
        # their content and merged from scratch, to the same end
        again = run(build(capture(procs.pids), "as-is",
                          {n: paced.sysfs.read_int(n) for n in KNOBS}))
        assert again.final["ksm"]["pages_shared"] == real[-1]["ksm"]["pages_shared"]
        assert again.final["ksm"]["pages_sharing"] == real[-1]["ksm"]["pages_sharing"]
        assert {p: e["ksm_merging_pages"] for p, e in again.final["processes"].items()} == \
            real[-1]["merging"]


def test_estimate_equals_real_ksmd_on_thp_backed_memory(
    paced: PacedKsm, procs: Procs, tmp_path: Path
) -> None:
    """THP-backed memory: the real ksmd splits a huge page when it merges a page of it, and
    when the two pages it pairs lie in the same huge page the merge fails in that pass
    (cmp_and_merge_page(): split_huge_page() fails under ksmd's two references; the page is
    split afterwards and merged a pass later). The model has compound pages: equal after
    every full scan."""
    start_static(procs, tmp_path, thp=4)
    sim, real, nv, cap = estimate_and_real(paced, procs, 0, watch=2.0)
    print("\n" + table(sim, real, nv))
    huge = int(np.count_nonzero(cap.pflags & 1)) // 512
    assert huge >= 3
    for n, (s, r) in enumerate(zip(sim, real, strict=False)):
        assert s["ksm"] == r["ksm"], f"full scan {n}:\n{table(sim, real, nv)}"
        assert s["merging"] == r["merging"], f"full scan {n}: ksm_merging_pages"
    for c in ("pages_shared", "pages_sharing"):
        assert abs(sim[-1]["ksm"][c] - real[-1]["ksm"][c]) <= abs(nv[c] - real[-1]["ksm"][c])


def test_estimate_within_half_a_percent_with_changing_pages(
    paced: PacedKsm, procs: Procs, tmp_path: Path
) -> None:
    for _ in range(3):
        procs.start(sys.executable, WORKER, "--same", 2000, "--zero", 300, "--unique", 300,
                    "--volatile", 40, ready=True)
    if shutil.which("java"):
        for _ in range(2):  # an idle JVM rewrites ~10 pages a second (spec §9)
            procs.start("java", "-Xmx64m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                        tmp_path.joinpath("Idle.java").as_posix()
                        if tmp_path.joinpath("Idle.java").write_text(
                            "class Idle { public static void main(String[] a) throws Exception"
                            " { System.in.read(); } }") else "")
        time.sleep(6)
    else:
        time.sleep(2)
    sim, real, nv, cap = estimate_and_real(paced, procs, 0, watch=3.0)
    print("\n" + table(sim, real, nv))
    n_vol = int(np.count_nonzero(cap.pflags & 4))
    assert n_vol >= 3 * 40  # --watch saw the rewritten pages
    for n, (s, r) in enumerate(zip(sim, real, strict=False)):
        total = sum(r["ksm"][c] for c in COUNTERS)
        for c in COUNTERS:
            assert abs(s["ksm"][c] - r["ksm"][c]) <= 0.005 * total, (
                f"full scan {n} {c}:\n{table(sim, real, nv)}")
        off = sum(abs(s["merging"][p] - r["merging"][p]) for p in r["merging"])
        assert off <= 0.005 * sum(r["merging"].values()), f"full scan {n}: ksm_merging_pages"
    for c in ("pages_shared", "pages_sharing"):
        assert abs(sim[-1]["ksm"][c] - real[-1]["ksm"][c]) <= abs(nv[c] - real[-1]["ksm"][c])

"""Run the simulated ksmd on a capture until its counters stop changing.

The simulated ksmd runs one batch per full scan: snapshots taken between full scans do
not depend on how a pass is cut into batches (spec §8.14, confirmed on the live kernel,
docs/NOTES.md "Batching"), and it is what makes a million pages converge in about a
second. The wall time ksmd would need is computed from the knobs instead: a pass of S
scanned pages takes ceil(S / pages_to_scan) batches, each followed by sleep_millisecs,
plus the CPU time of the pages. Volatile pages are rewritten after every full scan.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ksmfs.kernel import knobs as sysfs
from ksmfs.kernel.ksm import KSMD_NS_PER_PAGE
from ksmfs.linux import PAGE_SIZE
from ksmfs.scenario.sim import ksm_file_values

from .build import Built

MiB = 1 << 20
FAST_PAGES_TO_SCAN = 1 << 30
MERGE_COUNTERS = ("pages_shared", "pages_sharing", "ksm_zero_pages")

Snapshot = dict[str, Any]


@dataclass
class Result:
    snapshots: list[Snapshot] = field(default_factory=list)
    converged: bool = False
    converged_at: int = 0  # full scans after which nothing changed any more
    seconds: list[float] = field(default_factory=list)  # ksmd wall time at each full scan
    cpu_seconds: list[float] = field(default_factory=list)

    @property
    def final(self) -> Snapshot:
        return self.snapshots[self.converged_at] if self.converged else self.snapshots[-1]


def snapshot(built: Built, n: int, pages_to_scan: int) -> Snapshot:
    """The scenario-format snapshot: every numeric KSM file, and per process that KSM
    knows (keyed by its captured pid) its ksm_stat and the smaps ``KSM:`` kB per VMA
    (VMAs named ``START NAME``; only those with KSM pages)."""
    k = built.kernel
    ksm = ksm_file_values(k)
    ksm["pages_to_scan"] = pages_to_scan  # the machine's, not the one the fast loop uses
    procs: dict[str, Any] = {}
    for sp in built.processes:
        if not sp.registered:
            continue
        stat = k.ksm_stat(sp.pid)
        if stat is None:
            continue
        entry: dict[str, Any] = {f: (v if isinstance(v, str) else int(v)) for f, v in stat.items()}
        kb: dict[str, int] = {}
        for v, c in k.smaps(sp.pid):
            if c.ksm:
                label = f"{v.start:x} {v.name}" if v.name else f"{v.start:x}"
                kb[label] = kb.get(label, 0) + (int(c.ksm) >> 10)
        entry["smaps_ksm_kb"] = kb
        procs[str(sp.captured.pid)] = entry
    return {"full_scans": n, "ksm": ksm, "processes": procs}


def _key(s: Snapshot) -> tuple[Any, ...]:
    return (tuple(s["ksm"].get(c, 0) for c in MERGE_COUNTERS),
            tuple(sorted((p, e.get("ksm_merging_pages", 0)) for p, e in s["processes"].items())))


def run(
    built: Built,
    on_snapshot: Callable[[Snapshot], None] = lambda s: None,
    max_full_scans: int = 100,
    stable_for: int = 1,
    progress: Callable[[int], None] | None = None,
) -> Result:
    """Full scans until the merge counters and every process's ksm_merging_pages have not
    changed for ``stable_for`` full scans (or ``max_full_scans``). The first full scan
    never counts: it only records checksums (a page merges on its second visit at the
    earliest), and a page whose merge waits on another's (a frame still shared after
    fork, found in the stable tree a pass later) changes a counter in the next scan."""
    k = built.kernel
    pts = int(k.ksm.pages_to_scan)
    sleep_ms = int(k.ksm.sleep_millisecs)
    exact = k.ksm.advisor_mode != "none"
    if not exact:
        sysfs.store(k, "pages_to_scan", f"{FAST_PAGES_TO_SCAN}\n".encode())
    res = Result()
    s0 = snapshot(built, 0, pts)
    res.snapshots.append(s0)
    res.seconds.append(0.0)
    res.cpu_seconds.append(0.0)
    on_snapshot(s0)
    sysfs.store(k, "run", b"1\n")
    wall = cpu = 0.0
    same = 0
    for n in range(1, max_full_scans + 1):
        if not k.ksm.would_scan():
            break  # nothing registered: nothing will ever merge
        start = k.ksm.full_scans
        scanned0 = k.ksm.pages_scanned
        batches = 0
        while k.ksm.full_scans == start:
            before = k.ksm.pages_scanned
            k.ksm_do_scan(int(k.ksm.pages_to_scan))
            batches += 1
            if exact:
                k.advance(k.ksm.sleep_millisecs)
            elif k.ksm.pages_scanned == before and k.ksm.full_scans == start:
                raise RuntimeError("ksmd made no progress in a batch")
        scanned = k.ksm.pages_scanned - scanned0
        if not exact:
            batches = max(1, math.ceil(scanned / pts)) if pts else 1
            k.advance(batches * sleep_ms)
        cpu += scanned * KSMD_NS_PER_PAGE / 1e9
        wall += batches * sleep_ms / 1000 + scanned * KSMD_NS_PER_PAGE / 1e9
        for pid, addrs in built.volatile.items():
            k.write_pages(pid, addrs, k.unique_tokens(addrs.shape[0]))
        s = snapshot(built, n, pts)
        res.snapshots.append(s)
        res.seconds.append(wall)
        res.cpu_seconds.append(cpu)
        on_snapshot(s)
        if progress is not None:
            progress(n)
        # scan 1 only records checksums, so scan 2 is never "the same" as it: pages that
        # merge nowhere become pages_unshared there (a result of 1 would report them volatile)
        if n >= 3 and _key(s) == _key(res.snapshots[-2]):
            same += 1
        else:
            same = 0
            res.converged_at = n
        if same >= stable_for:
            res.converged = True
            break
    if not res.converged and not k.ksm.would_scan():
        res.converged = True
    return res


def top_processes(built: Built, snap: Snapshot, n: int = 10) -> list[dict[str, Any]]:
    rows = []
    comm = {str(sp.captured.pid): sp.captured.comm for sp in built.processes}
    for pid, e in snap["processes"].items():
        rows.append({
            "pid": int(pid), "comm": comm.get(pid, "?"),
            "ksm_merging_pages": e.get("ksm_merging_pages", 0),
            "ksm_zero_pages": e.get("ksm_zero_pages", 0),
            "ksm_process_profit": e.get("ksm_process_profit", 0),
            "smaps_ksm_kb": sum(e.get("smaps_ksm_kb", {}).values()),
        })
    rows.sort(key=lambda r: (-(r["ksm_merging_pages"] + r["ksm_zero_pages"]), r["pid"]))
    return rows[:n]


def _dur(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def report(built: Built, res: Result, assume: str, header: str) -> str:
    """The short report of ``ksmfs estimate``."""
    snap = res.final
    c = snap["ksm"]
    n = res.converged_at if res.converged else len(res.snapshots) - 1
    pts, sleep_ms = c.get("pages_to_scan", 0), c.get("sleep_millisecs", 0)
    saved = (c.get("pages_sharing", 0) + c.get("ksm_zero_pages", 0)) * PAGE_SIZE
    nreg = sum(1 for sp in built.processes if sp.registered)
    lines = [
        header,
        f"assume {assume}: {nreg} of {len(built.processes)} processes would be scanned; "
        f"knobs pages_to_scan={pts} sleep_millisecs={sleep_ms} "
        f"max_page_sharing={c.get('max_page_sharing')} use_zero_pages={c.get('use_zero_pages')} "
        f"smart_scan={c.get('smart_scan')}",
    ]
    if res.converged:
        lines.append(f"converged after {n} full scans: about {_dur(res.seconds[n])} of ksmd at "
                     f"these knobs ({_dur(res.cpu_seconds[n])} of it CPU)")
    else:
        lines.append(f"not converged after {n} full scans ({_dur(res.seconds[n])} at these knobs)")
    lines += [
        f"  saved            {saved / MiB:10.1f} MiB",
        f"  general_profit   {c.get('general_profit', 0) / MiB:10.1f} MiB",
        f"  pages_shared     {c.get('pages_shared', 0):10d}",
        f"  pages_sharing    {c.get('pages_sharing', 0):10d}",
        f"  pages_unshared   {c.get('pages_unshared', 0):10d}",
        f"  pages_volatile   {c.get('pages_volatile', 0):10d}   ({built.nvolatile} pages seen changing)",
        f"  ksm_zero_pages   {c.get('ksm_zero_pages', 0):10d}",
    ]
    rows = [r for r in top_processes(built, snap) if r["ksm_merging_pages"] or r["ksm_zero_pages"]]
    if rows:
        lines.append("processes that gain most:")
        lines.append(f"  {'PID':>8} {'COMM':<16} {'merging_pages':>13} {'zero_pages':>10} "
                     f"{'profit MiB':>10} {'smaps KSM kB':>12}")
        for r in rows:
            lines.append(f"  {r['pid']:>8} {r['comm'][:16]:<16} {r['ksm_merging_pages']:>13} "
                         f"{r['ksm_zero_pages']:>10} {r['ksm_process_profit'] / MiB:>10.1f} "
                         f"{r['smaps_ksm_kb']:>12}")
    return "\n".join(lines)

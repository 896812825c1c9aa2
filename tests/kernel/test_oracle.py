"""The vector path of ksmd against its page-by-page reference (``Kernel(exact=True)``).

Both kernels get the same random operations; after every one their sysfs counters, every
process's ksm_stat, every VMA's smaps and the trace records must be equal. The exact
kernel runs cmp_and_merge_page() one page at a time in visit order with real rbtree walks,
as mm/ksm.c does; every shortcut of the fast path must be invisible.
"""

from __future__ import annotations

import os
from dataclasses import astuple

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ksmfs.kernel import MADV_MERGEABLE, MADV_UNMERGEABLE, Kernel, KsmError, knobs
from ksmfs.kernel.kernel import INSTALL_ANON
from ksmfs.kernel.mm import HPAGE_PMD_NR
from ksmfs.kernel.trace import KSM_EVENTS

# KSMFS_ORACLE_EXAMPLES=5000 runs it longer locally; CI keeps it to seconds
EXAMPLES = int(os.environ.get("KSMFS_ORACLE_EXAMPLES", "60"))

P = st.integers(0, 7)  # which process (modulo the live ones)
V = st.integers(0, 3)  # which VMA of it
content = st.sampled_from(["pool", "pool", "pool", "zero", "unique", "same"])

op = st.one_of(
    st.tuples(st.just("spawn"), st.integers(1, 48)),
    st.tuples(st.just("mmap"), P, st.integers(1, 48), st.booleans()),
    st.tuples(st.just("write"), P, V, st.integers(0, 47), st.integers(1, 48), content, st.integers(0, 9)),
    st.tuples(st.just("madvise"), P, V, st.integers(0, 47), st.integers(1, 48), st.booleans()),
    st.tuples(st.just("fork"), P),
    st.tuples(st.just("thp"), P, st.integers(0, 9)),
    st.tuples(st.just("munmap"), P, V, st.integers(0, 47), st.integers(1, 48)),
    st.tuples(st.just("exit"), P),
    st.tuples(st.just("merge_any"), P, st.booleans()),
    st.tuples(st.just("swap"), P, V, st.integers(0, 47), st.integers(1, 8), st.booleans()),
    st.tuples(st.just("knob"), st.sampled_from([
        ("max_page_sharing", b"2"), ("max_page_sharing", b"3"), ("max_page_sharing", b"5"),
        ("max_page_sharing", b"256"), ("use_zero_pages", b"1"), ("use_zero_pages", b"0"),
        ("smart_scan", b"0"), ("smart_scan", b"1"), ("run", b"0"), ("run", b"1"),
        ("run", b"1"), ("run", b"2"), ("stable_node_chains_prune_millisecs", b"0"),
        ("stable_node_chains_prune_millisecs", b"5"), ("merge_across_nodes", b"0"),
        ("merge_across_nodes", b"1"),
    ])),
    st.tuples(st.just("advance"), st.integers(1, 10)),
)
scan = st.tuples(st.just("scan"), st.sampled_from([1, 2, 3, 7, 16, 50, 100, 333, 1000, 5000]))
# ksmd batches are half of all operations: merges, chains and COWs interleave
step = st.tuples(st.booleans(), scan, op).map(lambda t: t[1] if t[0] else t[2])
setup = st.tuples(
    st.sampled_from([b"2", b"3", b"4", b"256"]),  # max_page_sharing
    st.booleans(),  # use_zero_pages
    st.booleans(),  # smart_scan
    st.integers(2, 5),  # processes spawned first
    st.sampled_from([1, 1, 2]),  # NUMA nodes
)


class Driver:
    """Applies one operation to a kernel; the result (or errno) is compared too."""

    def __init__(self, exact: bool, nr_nodes: int) -> None:
        self.k = Kernel(exact=exact, nr_nodes=nr_nodes)
        self.k.trace.enabled = {e for e in KSM_EVENTS if e in self.k.version.trace_events}
        knobs.store(self.k, "run", b"1")

    def _pid(self, i: int) -> int | None:
        pids = sorted(p for p, t in self.k.tasks.items() if t.mm is not None)
        return pids[i % len(pids)] if pids else None

    def _vma(self, pid: int, i: int) -> tuple[int, int] | None:
        vmas = self.k.tasks[pid].mm.vmas  # type: ignore[union-attr]
        if not vmas:
            return None
        v = vmas[i % len(vmas)]
        return v.start, v.npages

    def apply(self, o: tuple) -> object:
        k = self.k
        try:
            return self._apply(k, o)
        except KsmError as e:
            return ("errno", e.errno)

    def _apply(self, k: Kernel, o: tuple) -> object:
        kind = o[0]
        if kind == "spawn":
            pid = k.spawn("guest")
            addr = k.mmap(pid, o[1])
            k.write(pid, addr, (np.arange(o[1], dtype=np.uint64) % 5) + 1)
            k.madvise(pid, addr, o[1], MADV_MERGEABLE)
            return pid
        if kind == "scan":
            return k.ksm_do_scan(o[1])
        if kind == "advance":
            k.advance(o[1])
            return None
        if kind == "knob":
            return knobs.store(k, o[1][0], o[1][1])
        pid = self._pid(o[1])
        if pid is None:
            return None
        if kind == "mmap":
            return k.mmap(pid, o[2], shared=o[3] and o[2] % 7 == 0)
        if kind == "thp":
            # THP-backed memory: two huge pages' worth (one whole 2 MiB-aligned run at
            # least), a pool of contents repeating inside each (seed < 6) or contents met
            # only in other huge pages (seed >= 6), some zero pages
            n, seed = 2 * HPAGE_PMD_NR, o[2]
            addr = k.mmap(pid, n)
            i = np.arange(n, dtype=np.uint64)
            if seed < 6:
                tok = (i * np.uint64(seed + 1)) % np.uint64(3 + 40 * seed) + np.uint64(1)
            else:
                tok = (i + np.uint64(seed)) % np.uint64(n) + np.uint64(1)
            tok[:: 7 + seed] = 0
            k.install_pages(pid, addr, np.full(n, INSTALL_ANON, dtype=np.uint8), tok,
                            thp=np.ones(n, dtype=bool))
            k.madvise(pid, addr, n, MADV_MERGEABLE)
            return len(k.mem.compounds)
        if kind == "fork":
            if len(k.tasks) >= 10:
                return None
            return k.fork(pid)
        if kind == "exit":
            if len(k.tasks) <= 1:
                return None
            k.exit(pid)
            return None
        if kind == "merge_any":
            return k.prctl(pid, 67, int(o[2]))
        r = self._vma(pid, o[2])
        if r is None:
            return None
        start, npages = r
        lo = o[3] % npages
        n = min(o[4], npages - lo)
        addr = start + lo * 4096
        if kind == "write":
            what, seed = o[5], o[6]
            if what == "pool":
                # a pool of 4 to 40 contents: few give chains, many a deeper rbtree
                tok = (np.arange(n, dtype=np.uint64) * np.uint64(seed + 1) + np.uint64(seed)) % np.uint64(
                    4 + 4 * seed) + np.uint64(1)
            elif what == "zero":
                tok = np.zeros(n, dtype=np.uint64)
            elif what == "same":
                tok = np.full(n, seed % 3 + 1, dtype=np.uint64)
            else:
                tok = k.unique_tokens(n)
            k.write(pid, addr, tok)
        elif kind == "madvise":
            k.madvise(pid, addr, n, MADV_MERGEABLE if o[5] else MADV_UNMERGEABLE)
        elif kind == "munmap":
            k.munmap(pid, addr, n)
        elif kind == "swap":
            return k.swap_out(pid, addr, n) if o[5] else k.swap_in(pid, addr, n)
        return None


def snapshot(k: Kernel) -> dict:
    out: dict = {"stats": k.ksm.stats(), "now": k.now, "vmstat": k.vmstat()}
    for pid in sorted(k.tasks):
        out[f"ksm_stat {pid}"] = k.ksm_stat(pid)
        out[f"smaps {pid}"] = [(v.start, v.npages, v.flags, astuple(c)) for v, c in k.smaps(pid)]
    out["trace"] = [(r.ts_ns, r.pid, r.comm, r.event, sorted(r.fields.items())) for r in k.trace.records]
    return out


def first_difference(a: dict, b: dict) -> str:
    for key in a.keys() | b.keys():
        if a.get(key) != b.get(key):
            if key == "trace":
                ta, tb = a["trace"], b["trace"]
                for i, (x, y) in enumerate(zip(ta, tb, strict=False)):
                    if x != y:
                        return f"trace record {i}: exact {x} vector {y}"
                return f"trace lengths: exact {len(ta)} vector {len(tb)}"
            return f"{key}: exact {a.get(key)} vector {b.get(key)}"
    return ""


def run_both(setup: tuple, ops: list[tuple]) -> None:
    mps, zero, smart, nprocs, nr_nodes = setup
    exact, vector = Driver(True, nr_nodes), Driver(False, nr_nodes)
    first = [("knob", ("max_page_sharing", mps)),
             ("knob", ("use_zero_pages", b"1" if zero else b"0")),
             ("knob", ("smart_scan", b"1" if smart else b"0"))]
    first += [("spawn", 16 + 8 * i) for i in range(nprocs)]
    for i, o in enumerate(first + ops):
        ra, rb = exact.apply(o), vector.apply(o)
        assert ra == rb, f"op {i} {o}: exact returned {ra}, vector {rb}"
        diff = first_difference(snapshot(exact.k), snapshot(vector.k))
        assert not diff, f"after op {i} {o}: {diff}"


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(setup, st.lists(step, min_size=20, max_size=80))
def test_vector_path_equals_page_by_page(setup: tuple, ops: list[tuple]) -> None:
    run_both(setup, ops)

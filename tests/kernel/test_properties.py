"""Property tests on random workloads: invariants of KSM that must hold at every point."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ksmfs.kernel import MADV_MERGEABLE, MADV_UNMERGEABLE, Kernel, knobs

# a small alphabet so that contents collide often; 0 is the zero page
TOKENS = st.integers(min_value=0, max_value=5)

ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, 7), st.integers(0, 15), st.lists(TOKENS, min_size=1, max_size=6)),
        st.tuples(st.just("madvise"), st.integers(0, 7), st.booleans()),
        st.tuples(st.just("scan"), st.integers(1, 40)),
        st.tuples(st.just("fork"), st.integers(0, 7)),
        st.tuples(st.just("exit"), st.integers(0, 7)),
        st.tuples(st.just("run"), st.sampled_from([0, 1, 1, 2])),
        st.tuples(st.just("knob"), st.sampled_from(["use_zero_pages", "smart_scan"]), st.booleans()),
        st.tuples(st.just("mps"), st.sampled_from([2, 3, 256])),
        st.tuples(st.just("merge_any"), st.integers(0, 7), st.booleans()),
        st.tuples(st.just("swap"), st.integers(0, 7), st.integers(0, 15), st.booleans()),
    ),
    min_size=1,
    max_size=60,
)


class Shadow:
    """What each process must read back: the last content it wrote (or inherited)."""

    def __init__(self) -> None:
        self.k = Kernel()
        knobs.store(self.k, "run", b"1")
        self.procs: dict[int, tuple[int, np.ndarray]] = {}
        for i in range(3):
            self.spawn(i)

    def spawn(self, i: int) -> None:
        pid = self.k.spawn(f"p{i}")
        addr = self.k.mmap(pid, 16)
        content = np.array([(i + j) % 4 for j in range(16)], dtype=np.uint64)
        self.k.write(pid, addr, content)
        self.k.madvise(pid, addr, 16, MADV_MERGEABLE)
        self.procs[pid] = (addr, content)

    def pick(self, i: int) -> int | None:
        pids = sorted(self.procs)
        return pids[i % len(pids)] if pids else None

    def check(self) -> None:
        k = self.k
        s = k.ksm.stats()
        # (pages_volatile is clamped at 0 by its property: the line after the loop checks
        # the difference it is computed from)
        for name in ("pages_shared", "pages_sharing", "pages_unshared",
                     "ksm_zero_pages", "stable_node_chains", "stable_node_dups", "pages_scanned",
                     "pages_skipped", "full_scans"):
            assert s[name] >= 0, name
        assert k.ksm.ksm_rmap_items - k.ksm.pages_shared - k.ksm.pages_sharing - k.ksm.pages_unshared >= 0
        mms = list(k.mms.values())
        assert sum(m.ksm_merging_pages for m in mms) == s["pages_shared"] + s["pages_sharing"]
        assert sum(m.ksm_rmap_items for m in mms) == k.ksm.ksm_rmap_items
        assert sum(m.ksm_zero_pages for m in mms if not m.exiting) == s["ksm_zero_pages"]
        for m in mms:
            assert m.ksm_merging_pages >= 0 and m.ksm_rmap_items >= 0 and m.ksm_zero_pages >= 0
        for pid, (addr, content) in self.procs.items():
            assert list(k.read(pid, addr, 16)) == list(content), f"pid {pid} reads changed content"
        # every frame's mapcount is the number of PTEs that map it; free frames map nowhere
        mem = k.mem
        ptes = [mem.pte.a[v.base : v.base + v.npages] for m in mms for v in m.vmas]
        mapped = np.concatenate(ptes) if ptes else np.zeros(0, np.int32)
        mapped = mapped[mapped >= 0]
        count = np.bincount(mapped, minlength=mem.fmap.n)[: mem.fmap.n]
        assert (count == mem.fmap.a[: mem.fmap.n]).all(), "mapcount differs from the page tables"
        assert not (mem.fnode.a[mapped] == -4).any(), "a mapped frame is on the free list"


def apply_op(sh: Shadow, op: tuple) -> None:
    """One operation of ``ops`` on the shadowed kernel (also used by test_smaps_pieces)."""
    k = sh.k
    kind = op[0]
    if kind == "write":
        pid = sh.pick(op[1])
        if pid is None:
            return
        addr, content = sh.procs[pid]
        first = op[2]
        vals = np.array(op[3][: 16 - first], dtype=np.uint64)
        k.write(pid, addr + first * 4096, vals)
        content[first : first + vals.shape[0]] = vals
    elif kind == "madvise":
        pid = sh.pick(op[1])
        if pid is not None:
            addr, _ = sh.procs[pid]
            k.madvise(pid, addr, 16, MADV_MERGEABLE if op[2] else MADV_UNMERGEABLE)
    elif kind == "scan":
        k.ksm_do_scan(op[1])
    elif kind == "fork":
        pid = sh.pick(op[1])
        if pid is not None and len(sh.procs) < 8:
            child = k.fork(pid)
            addr, content = sh.procs[pid]
            sh.procs[child] = (addr, content.copy())
    elif kind == "exit":
        pid = sh.pick(op[1])
        if pid is not None and len(sh.procs) > 1:
            k.exit(pid)
            del sh.procs[pid]
    elif kind == "run":
        knobs.store(k, "run", str(op[1]).encode())
    elif kind == "knob":
        knobs.store(k, op[1], b"1" if op[2] else b"0")
    elif kind == "mps":
        try:
            knobs.store(k, "max_page_sharing", str(op[1]).encode())
        except Exception as e:  # EBUSY while pages are shared is the kernel's answer
            assert getattr(e, "errno", None) == 16
    elif kind == "merge_any":
        pid = sh.pick(op[1])
        if pid is not None:
            k.prctl(pid, 67, int(op[2]))
    elif kind == "swap":
        pid = sh.pick(op[1])
        if pid is not None:
            addr, _ = sh.procs[pid]
            if op[3]:
                k.swap_out(pid, addr + op[2] * 4096, 1)
            else:
                k.swap_in(pid, addr, 16)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_invariants_hold_on_random_workloads(seq: list[tuple]) -> None:
    """Counters never go negative, Σ ksm_merging_pages = shared + sharing, and merging,
    COW, fork, swap and run=2 never change what any process reads."""
    sh = Shadow()
    k = sh.k
    for op in seq:
        apply_op(sh, op)
        sh.check()
    # run = 2: everything unmerged, every page reads what its process last wrote
    knobs.store(k, "run", b"2")
    sh.check()
    s = k.ksm.stats()
    assert (s["pages_shared"], s["pages_sharing"], s["pages_unshared"], s["ksm_zero_pages"]) == (0, 0, 0, 0)
    assert s["full_scans"] == 0
    # unmerge breaks KSM pages in mergeable VMAs; a fork-shared page that became a KSM page
    # stays mapped where the other mapper's VMA is not mergeable (remove_stable_node: busy)
    still_ksm = 0
    for pid in sh.procs:
        for vma, sm in k.smaps(pid):
            if vma.mergeable:
                assert sm.ksm == 0
            still_ksm += sm.ksm
    if not still_ksm:
        assert (s["stable_node_chains"], s["stable_node_dups"]) == (0, 0)


@settings(max_examples=60, deadline=None)
@given(st.lists(TOKENS, min_size=2, max_size=40), st.integers(1, 50))
def test_write_after_merge_gives_writer_its_own_copy(contents: list[int], batch: int) -> None:
    """After merging, a write changes only the writer's page; the others keep theirs."""
    k = Kernel()
    pids = []
    for i in range(2):
        pid = k.spawn(f"p{i}")
        addr = k.mmap(pid, len(contents))
        k.write(pid, addr, contents)
        k.madvise(pid, addr, len(contents), MADV_MERGEABLE)
        pids.append((pid, addr))
    knobs.store(k, "run", b"1")
    while k.ksm.full_scans < 3:
        k.ksm_do_scan(batch)
    (p0, a0), (p1, a1) = pids
    assert k.ksm.pages_shared + k.ksm.pages_sharing > 0
    k.write(p0, a0, [999])
    assert int(k.read(p0, a0, 1)[0]) == 999
    assert list(k.read(p1, a1, len(contents))) == contents
    assert list(k.read(p0, a0 + 4096, len(contents) - 1)) == contents[1:]

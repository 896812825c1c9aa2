"""ksmd: Kernel Samepage Merging as mm/ksm.c does it, over numpy page arrays.

The part of the model that reads next to mm/ksm.c. The scan (ksm_do_scan(), in batches
and slices) walks the mm_slot list, each mm's VMAs in address order and each VMA's
present anonymous pages, like ``scan_get_next_rmap_item()``; ``cmp_and_merge_page()``
applies the checksum rule, the zero-page path, the stable tree (stable_tree_search(),
stable_tree_insert(), max_page_sharing chains and their dups: stable_node_dup()) and
the unstable tree. Also run=2 (unmerge_and_remove_all_rmap_items(),
remove_all_stable_nodes()), the knobs' side effects (set_*) and the scan advisor.
Counters change where the kernel changes them.

The project's own shortcuts live beside it, as mixins of ``Ksm`` whose methods keep the
names this module calls:
- ksm_nodes.py: the stable nodes and chains as arrays (struct ksm_stable_node);
- ksm_bulk.py: the vector path of cmp_and_merge_page() for a batch window, with its
  plans; it runs only when no search can have a side effect (else, and always with
  ``exact``, every page goes through _cmp_and_merge_one() in visit order);
- stabletree.py: each NUMA node's stable tree, a dict keyed by content token kept in
  step with a hash index (vector lookups) and the kernel's rbtree (whose shape decides
  which nodes a search passes and may prune);
- ksm_defs.py: the rmap_item flag bits and calc_checksum().
The unstable tree is a hash map token -> rmap_item per NUMA node (a TokenMap of
kernel/_rbtree.c: a batch looks up or inserts thousands of tokens in one call): the
memcmp-ordered rbtree finds the same match, and only the matching item's page decides an
abort (_unstable_tree_search_insert()).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ._rbtree import TokenMap
from .errors import KsmError
from .ksm_bulk import BulkMerge
from .ksm_defs import (
    HAS_ITEM,
    SEQ_ODD,
    STABLE,
    UNSTABLE,
    ZERO_CHECKSUM,
    calc_checksum,
    calc_checksum1,
)
from .mm import (
    FRAME_ANON,
    FRAME_FILE,
    FRAME_SHMEM,
    MM,
    PAGE_SIZE,
    PTE_KSM_ZERO,
    PhysMem,
    Segment,
)
from .stabletree import StableTree
from .trace import TraceBuffer
from .versions import KernelProfile

KSM_RUN_STOP = 0
KSM_RUN_MERGE = 1
KSM_RUN_UNMERGE = 2

RMAP_ITEM_SIZE = 64  # sizeof(struct ksm_rmap_item) on 64-bit
KSMD_PID = 47  # what the live machine's ksmd had; only shown in trace lines
KSMD_NS_PER_PAGE = 450  # simulated CPU cost of one page: ~2.2 M pages/s, the live ksmd rate

def skip_age(age: np.ndarray) -> np.ndarray:
    """skip_age(): how many visits to skip after a processed visit at this age."""
    return np.where(age <= 3, 1, np.where(age <= 5, 2, np.where(age <= 8, 4, 8))).astype(np.uint8)


@dataclass
class ScanBatch:
    """One ksm_do_scan() call in progress (Ksm.begin_batch / Ksm.scan_slice)."""

    npages: int
    done: int = 0
    pass_ended: bool = False
    finished: bool = False


@dataclass
class AdvisorCtx:
    start_scan_ns: int = 0
    scan_time: int = 0
    change: int = 0
    cpu_time: int = 0


class Ksm(BulkMerge):  # BulkMerge(StableNodes): the shortcuts (ksm_bulk.py, ksm_nodes.py)
    """The KSM state of one simulated kernel: sysfs knobs, counters, mm list, trees."""

    def __init__(
        self,
        mem: PhysMem,
        trace: TraceBuffer,
        clock_ns: Callable[[], int],
        advance_ns: Callable[[int], None],
        mm_by_gpid: Callable[[np.ndarray], np.ndarray],
        mms: dict[int, MM],
        profile: KernelProfile,
        exact: bool = False,
    ) -> None:
        self.mem = mem
        # exact: every visited page goes through cmp_and_merge_page() one at a time, in
        # visit order, with real rbtree walks (the reference the vector path is tested
        # against, tests/kernel/test_oracle.py)
        self.exact = exact
        self.trace = trace
        self._clock_ns = clock_ns
        self._advance_ns = advance_ns
        self._mm_by_gpid = mm_by_gpid
        self._mms = mms
        self.profile = profile
        # knobs (defaults of a freshly booted 6.18, spec §1.4)
        self.run = KSM_RUN_STOP
        self.pages_to_scan = 100
        self.sleep_millisecs = 20
        self.merge_across_nodes = 1
        self.use_zero_pages = 0
        self.max_page_sharing = 256
        self.stable_node_chains_prune_millisecs = 2000
        self.smart_scan = 1 if profile.has_smart_scan else 0
        self.advisor_mode = "none"
        self.advisor_max_cpu = 70
        self.advisor_min_pages_to_scan = 500
        self.advisor_max_pages_to_scan = 30000
        self.advisor_target_scan_time = 200
        # counters
        self.pages_scanned = 0
        self.pages_shared = 0
        self.pages_sharing = 0
        self.pages_unshared = 0
        self.pages_skipped = 0
        self.ksm_zero_pages = 0
        self.stable_node_chains = 0
        self.stable_node_dups = 0
        self.ksm_rmap_items = 0
        self.seqnr = 0
        self.cow_ksm = 0
        self.ksm_swpin_copy = 0
        # mm_slot list and the scan cursor (ksm_scan)
        self.mm_list: list[MM] = []
        self.cursor = -1  # index in mm_list; -1 is ksm_mm_head
        self.scan_addr = 0
        self.scan_seen_mergeable = False
        self._init_nodes()  # node and chain arrays (ksm_nodes.py)
        # trees: token -> node id (>= 0) or chain (-(cid + 1)); unstable: token -> gpid
        self.stable_tree: list[StableTree] = [StableTree()]
        self.unstable_tree: list[TokenMap] = [TokenMap()]
        self.demoted_unique: set[int] = set()
        self._pending_dead: list[int] = []
        self.chk_exc: dict[int, int] = {}  # gpid -> oldchecksum of stable items (rare)
        self._stale_nodes: set[int] = set()  # nodes whose KSM page is gone, still in a tree
        # stable_node->kpfn of those nodes: node_kfn reads -1 once the page is freed, but
        # the kernel's trace_ksm_remove_*() still print the pfn the node was made for
        self._stale_kpfn: dict[int, int] = {}
        self._pos = 0  # visit position in the current batch (orders deferred rbtree inserts)
        self._scan_mm: MM | None = None  # the mm whose VMA _scan_vma() is in
        self._due_chains = np.zeros(0, dtype=np.int64)
        self.advisor = AdvisorCtx()
        self.ksmd_cpu_ns = 0
        # not a kernel counter: pages the vector path (exact=False) sent page by page,
        # where a search could have a side effect (diagnostics; tests/kernel/test_slices.py)
        self.pages_in_order = 0
        self._thread_wakeups = 0
        self._iter_wakeups = 0
        # trace records of vector merges: (visit position, order, event, fields)
        self._trace_queue: list[tuple[int, int, str, dict[str, object]]] = []

    # ------------------------------------------------------------------ derived counters
    @property
    def full_scans(self) -> int:
        return self.seqnr

    @property
    def pages_volatile(self) -> int:
        v = self.ksm_rmap_items - self.pages_shared - self.pages_sharing - self.pages_unshared
        return max(v, 0)

    @property
    def general_profit(self) -> int:
        zero = self.ksm_zero_pages if self.profile.profit_counts_zero_pages else 0
        return (self.pages_sharing + zero) * PAGE_SIZE - self.ksm_rmap_items * RMAP_ITEM_SIZE

    def stats(self) -> dict[str, int]:
        """Every numeric file of /sys/kernel/mm/ksm, by name."""
        return {
            "run": self.run,
            "pages_to_scan": self.pages_to_scan,
            "sleep_millisecs": self.sleep_millisecs,
            "pages_scanned": self.pages_scanned,
            "pages_shared": self.pages_shared,
            "pages_sharing": self.pages_sharing,
            "pages_unshared": self.pages_unshared,
            "pages_volatile": self.pages_volatile,
            "pages_skipped": self.pages_skipped,
            "ksm_zero_pages": self.ksm_zero_pages,
            "full_scans": self.full_scans,
            "merge_across_nodes": self.merge_across_nodes,
            "max_page_sharing": self.max_page_sharing,
            "stable_node_chains": self.stable_node_chains,
            "stable_node_dups": self.stable_node_dups,
            "stable_node_chains_prune_millisecs": self.stable_node_chains_prune_millisecs,
            "use_zero_pages": self.use_zero_pages,
            "general_profit": self.general_profit,
            "smart_scan": self.smart_scan,
            "advisor_max_cpu": self.advisor_max_cpu,
            "advisor_min_pages_to_scan": self.advisor_min_pages_to_scan,
            "advisor_max_pages_to_scan": self.advisor_max_pages_to_scan,
            "advisor_target_scan_time": self.advisor_target_scan_time,
        }

    def would_scan(self) -> bool:
        """ksmd_should_run(): (run & MERGE) and the mm list is not empty."""
        return bool(self.run & KSM_RUN_MERGE) and bool(self.mm_list)

    # ------------------------------------------------------------------ tracing helpers
    def _emit(
        self, event: str, pid: int | None = None, comm: str = "ksmd", **fields: object
    ) -> None:
        """Record an event in ``pid``'s context; by default in the context the kernel runs
        in now: the writer of a store (trace.current, e.g. run_store's unmerge) or ksmd."""
        if self.trace.want(event):
            if pid is None:
                pid, comm = self.trace.current or (KSMD_PID, "ksmd")
            self.trace.emit(self._clock_ns(), pid, comm, event, **fields)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ mm list
    def ksm_enter(self, mm: MM, pid: int, comm: str) -> None:
        """__ksm_enter(): register an mm just behind the scan cursor (or at the tail while
        run=2, or between passes), set MMF_VM_MERGEABLE, wake ksmd if it is the first."""
        if mm.registered:
            return
        if not self.mm_list:
            self.wake_ksm_thread()  # needs_wakeup: the list was empty
        if self.run & KSM_RUN_UNMERGE or self.cursor < 0:
            self.mm_list.append(mm)
        else:
            self.mm_list.insert(self.cursor, mm)
            self.cursor += 1
        mm.registered = True
        self._emit("ksm_enter", pid=pid, comm=comm, mm=mm.id)

    def ksm_exit(self, mm: MM, pid: int, comm: str) -> None:
        """__ksm_exit(): free the slot now if it holds no rmap_items, otherwise move it just
        after the cursor so that ksmd frees its items next (spec §8.10)."""
        if mm.registered and (self.cursor < 0 or self.mm_list[self.cursor] is not mm):
            i = self.mm_list.index(mm)
            if not mm.ksm_rmap_items:
                del self.mm_list[i]
                if i < self.cursor:
                    self.cursor -= 1
                mm.registered = False
                mm.merge_any = False
            else:
                del self.mm_list[i]
                if i < self.cursor:
                    self.cursor -= 1
                self.mm_list.insert(self.cursor + 1 if self.cursor >= 0 else 0, mm)
        self._emit("ksm_exit", pid=pid, comm=comm, mm=mm.id)

    # ------------------------------------------------------------------ ksmd
    def ksm_do_scan(self, scan_npages: int) -> int:
        """ksm_do_scan(): one batch of up to ``scan_npages`` pages; a batch always stops at
        the end of a full scan. Returns the number of pages handled."""
        batch = self.begin_batch(scan_npages)
        while not self.scan_slice(batch, scan_npages):
            pass
        return batch.done

    def begin_batch(self, scan_npages: int) -> ScanBatch:
        """Start one ksm_do_scan() batch, to be run by scan_slice() calls."""
        # ksm_scan_thread() only calls ksm_do_scan() when ksmd_should_run()
        return ScanBatch(scan_npages, finished=scan_npages <= 0 or not self.would_scan())

    def scan_slice(self, batch: ScanBatch, max_pages: int) -> bool:
        """Run up to ``max_pages`` more pages of ``batch``; True once the batch is over.

        A slice boundary is one of ksm_do_scan()'s cond_resched() points: whoever runs
        between two slices sees the counters as they are at that page. The batch's end
        (freeing removed stable nodes, its CPU time on the clock) happens once, after the
        last slice, so any split of a batch leaves the state of the unsplit batch (while
        the caller changes nothing between slices that needs ksm_thread_mutex: knob
        stores wait for the batch, as they wait for the mutex in mm/ksm.c)."""
        if batch.finished:
            return True
        limit = min(batch.npages - batch.done, max(1, max_pages))
        got_total = 0
        while got_total < limit:
            got, pass_ended = self._scan_get_next(limit - got_total)
            got_total += got
            if pass_ended:
                batch.pass_ended = True
                break
        batch.done += got_total
        self.pages_scanned += got_total  # ksm_pages_scanned++ per page
        if batch.pass_ended or batch.done >= batch.npages:
            self._reap_dead_nodes()
            cost = batch.done * KSMD_NS_PER_PAGE
            self.ksmd_cpu_ns += cost
            self._advance_ns(cost)
            batch.finished = True
        return batch.finished

    # -- ksmd's wait queues: stores and __ksm_enter() wake ksmd where mm/ksm.c calls
    #    wake_up_interruptible(); whoever paces ksmd takes the wake-ups from here
    def wake_ksm_thread(self) -> None:
        """wake_up_interruptible(&ksm_thread_wait): ends ksmd's idle wait (when
        ksmd_should_run()), never a timed sleep between batches."""
        self._thread_wakeups += 1

    def wake_ksm_iter(self) -> None:
        """wake_up_interruptible(&ksm_iter_wait): ends ksmd's timed sleep if
        sleep_millisecs now differs from the value that sleep started with."""
        self._iter_wakeups += 1

    def take_wakeups(self) -> tuple[int, int]:
        """(ksm_thread_wait wake-ups, ksm_iter_wait wake-ups) since the last call."""
        w = (self._thread_wakeups, self._iter_wakeups)
        self._thread_wakeups = self._iter_wakeups = 0
        return w

    def _scan_get_next(self, budget: int) -> tuple[int, bool]:
        """Advance the scan by up to ``budget`` processed pages inside one mm; returns how
        many were processed and whether the pass ended (or nothing is registered)."""
        if self.cursor < 0:
            if not self.mm_list:
                return 0, True
            self._advisor_start_scan()
            self._emit("ksm_start_scan", seq=self.seqnr, rmap_entries=self.ksm_rmap_items)
            for t in self.unstable_tree:
                t.clear()
            self.cursor = 0
            self.scan_addr = 0
            self.scan_seen_mergeable = False
        mm = self.mm_list[self.cursor]
        processed = 0
        if mm.exiting:
            # ksm_test_exit(): no_vmas: address 0, rmap_list from its head, so that
            # remove_trailing_rmap_items() frees every item of the mm
            self.scan_addr = 0
        for seg in mm.segments():
            if seg.end <= self.scan_addr:
                continue
            off = max(0, (self.scan_addr - seg.start) // PAGE_SIZE)
            vma = seg.vma
            if vma is not None and vma.mergeable and not mm.exiting:
                self.scan_seen_mergeable = True
                n, new_off = self._scan_vma(mm, seg, off, budget - processed)
                processed += n
                if new_off < seg.npages:
                    self.scan_addr = seg.start + new_off * PAGE_SIZE
                    return processed, False
            else:
                self._free_items_range(seg.base + off, seg.base + seg.npages)
            self.scan_addr = seg.end
            if processed >= budget:
                # the kernel would find the next page first; stopping here is equivalent
                # because the next batch resumes at this address
                return processed, False
        # the mm is done: remove_trailing_rmap_items() happened as we swept its segments
        mm.dead = [s for s in mm.dead if self._segment_has_items(s)]
        if mm.exiting or not self.scan_seen_mergeable:
            # no VM_MERGEABLE vma: drop the slot (MMF_VM_MERGEABLE cleared; 6.18 keeps
            # MMF_VM_MERGE_ANY so ksm_vma_flags() can register the mm again)
            del self.mm_list[self.cursor]
            mm.registered = False
            if mm.exiting or not self.profile.keeps_merge_any_on_drop:
                mm.merge_any = False
        else:
            self.cursor += 1
        self.scan_addr = 0
        self.scan_seen_mergeable = False
        if self.cursor >= len(self.mm_list):
            self.cursor = -1
            self._advisor_stop_scan()
            self._emit("ksm_stop_scan", seq=self.seqnr, rmap_entries=self.ksm_rmap_items)
            self.seqnr += 1
            return processed, True
        return processed, False

    def _segment_has_items(self, seg: Segment) -> bool:
        f = self.mem.iflags.a[seg.base : seg.base + seg.npages]
        return bool(np.any(f & HAS_ITEM))

    def _scan_vma(self, mm: MM, seg: Segment, off: int, budget: int) -> tuple[int, int]:
        """Visit present anon pages of one mergeable VMA from page ``off``: returns (pages
        processed, page index to resume at)."""
        self._scan_mm = mm
        try:
            return self._scan_vma_windows(mm, seg, off, budget)
        finally:
            self._scan_mm = None

    def _scan_vma_windows(self, mm: MM, seg: Segment, off: int, budget: int) -> tuple[int, int]:
        mem = self.mem
        npages = seg.npages
        processed = 0
        grow = 1  # windows grow while they yield few pages (smart_scan skips, holes)
        while off < npages and processed < budget:
            want = budget - processed
            end = min(npages, off + max(2 * want, 256) * grow)
            before = processed
            g0 = seg.base + off
            g1 = seg.base + end
            pte = mem.pte.a[g0:g1]
            present = pte >= 0
            if present.all():
                # no hole: only as many pages as the batch can take are looked at
                cut = self._window_cut(g0, g1, want)
                if cut < g1 - g0:
                    g1, end = g0 + cut, off + cut
                    pte, present = pte[:cut], present[:cut]
                kinds = mem.fnode.a[pte]
            else:
                kinds = mem.fnode.a[np.maximum(pte, 0)]
            # follow_page(): only normal anonymous pages (KSM pages are anon)
            visit = present & (kinds >= FRAME_ANON)
            if visit.all():
                n, stop = self._scan_dense(mm, g0, g1, kinds, want)
                processed += n
                off += stop
                if 4 * n < stop:
                    grow = min(grow * 4, 1 << 12)
                continue
            idx = np.flatnonzero(visit)
            g = g0 + idx
            fl = mem.iflags.a[g]
            is_ksm = kinds[idx] >= 0
            if self.smart_scan:
                a8 = mem.ags.a[g]
                has = (fl & HAS_ITEM) != 0
                skip = has & ~is_ksm & ((a8 & 0xF) >= 3) & ((a8 >> 4) != 0)
            else:
                skip = np.zeros(idx.shape[0], dtype=bool)
            proc = ~skip
            cum = np.cumsum(proc)
            if cum.shape[0] and cum[-1] >= want:
                k = int(np.searchsorted(cum, want))
                stop = int(idx[k]) + 1
                idx, g, fl, is_ksm, skip, proc = (
                    idx[: k + 1], g[: k + 1], fl[: k + 1], is_ksm[: k + 1], skip[: k + 1],
                    proc[: k + 1],
                )
            else:
                stop = end - off
            # get_next_rmap_item(): items of addresses we passed without a page are freed
            swept = np.zeros(stop, dtype=bool)
            swept[idx[idx < stop]] = True
            gone = g0 + np.flatnonzero(~swept & ((mem.iflags.a[g0 : g0 + stop] & HAS_ITEM) != 0))
            self._alloc_rmap_items(mm, g[(fl & HAS_ITEM) == 0])
            if self.smart_scan:
                # should_skip_rmap_item(): age counts visits of non-KSM pages, saturating
                gk = g[~is_ksm]
                a8 = mem.ags.a[gk]
                a = a8 & 0xF
                s = a8 >> 4
                sk = skip[~is_ksm]
                reset = (a >= 3) & (s == 0)
                s = np.where(reset, skip_age(a), s)
                s = np.where(sk, s - 1, s).astype(np.uint8)
                a = np.where(a < 15, a + 1, a).astype(np.uint8)
                mem.ags.a[gk] = a | (s << 4)
                self.pages_skipped += int(np.count_nonzero(skip))
            if gone.shape[0]:
                # the freed items leave their trees where the scan passes them, among the
                # visited pages (get_next_rmap_item -> remove_rmap_item_from_tree)
                ga = np.concatenate((g, gone))
                order = np.argsort(ga)  # (distinct pages)
                ga = ga[order]
                rm = np.concatenate((skip, np.ones(gone.shape[0], dtype=bool)))[order]
                pte = mem.pte.a[ga]
                fa = np.maximum(pte, 0)
                ka = np.where(rm, FRAME_ANON, mem.fnode.a[fa]).astype(mem.fnode.a.dtype)
                self._cmp_and_merge_pages(ga, fa, ka, skip=rm)
                self._free_items(gone)
            elif skip.any():
                # the skipped items leave their trees at their places in the visit order
                # (should_skip_rmap_item -> remove_rmap_item_from_tree)
                self._cmp_and_merge_pages(g, skip=skip)
            else:
                self._cmp_and_merge_pages(g)
            processed += int(np.count_nonzero(proc))
            off += stop
            if 4 * (processed - before) < stop:
                grow = min(grow * 4, 1 << 12)
        return processed, off

    def _window_cut(self, g0: int, g1: int, want: int) -> int:
        """Pages from g0 that hold ``want`` pages smart_scan cannot skip (present pages
        assumed): the window need not reach further. A page counts as skippable when its
        item's age and skip count say so (should_skip_rmap_item(), a KSM page aside), so
        the cut may include a few more pages than needed, never fewer."""
        n = g1 - g0
        if want >= n:
            return n
        if not self.smart_scan:
            return want
        fl = self.mem.iflags.a[g0:g1]
        a8 = self.mem.ags.a[g0:g1]
        lo, cut = 0, want
        while cut < n:
            f, a = fl[lo:cut], a8[lo:cut]
            extra = int(np.count_nonzero(((f & HAS_ITEM) != 0) & ((a & 0xF) >= 3) & ((a >> 4) != 0)))
            if not extra:
                break
            lo, cut = cut, min(n, cut + extra)
        return cut

    def _alloc_rmap_items(self, mm: MM, g: np.ndarray, contiguous: bool = False) -> None:
        """get_next_rmap_item() for first-seen pages: a zeroed item (age 0, oldchecksum 0);
        ksm_rmap_items++ globally and for the mm. ``contiguous``: g is one range."""
        if not g.shape[0]:
            return
        mem = self.mem
        sel = slice(int(g[0]), int(g[-1]) + 1) if contiguous else g
        mem.iflags.a[sel] = HAS_ITEM
        mem.ags.a[sel] = 0
        mem.ival.a[sel] = 0
        self.ksm_rmap_items += g.shape[0]
        mm.ksm_rmap_items += g.shape[0]

    def _scan_dense(self, mm: MM, g0: int, g1: int, kinds: np.ndarray, want: int) -> tuple[int, int]:
        """_scan_vma() for a window whose pages are all present and anonymous (the common
        case): the same steps on slices instead of gathers. Returns (processed, swept)."""
        mem = self.mem
        fl = mem.iflags.a[g0:g1]
        is_ksm = kinds >= 0
        nskip = 0
        if self.smart_scan:
            a8 = mem.ags.a[g0:g1]
            skip = ((fl & HAS_ITEM) != 0) & ~is_ksm & ((a8 & 0xF) >= 3) & ((a8 >> 4) != 0)
            if skip.any():
                cum = np.cumsum(~skip, dtype=np.int32)
                stop = int(np.searchsorted(cum, want)) + 1 if cum[-1] >= want else g1 - g0
                skip = skip[:stop]
                nskip = int(np.count_nonzero(skip))
            else:
                stop = min(g1 - g0, want)
                skip = skip[:stop]
        else:
            stop = min(g1 - g0, want)
        g1 = g0 + stop
        fl = fl[:stop]
        is_ksm = is_ksm[:stop]
        newm = (fl & HAS_ITEM) == 0
        if newm.all():
            self._alloc_rmap_items(mm, np.arange(g0, g1, dtype=np.int64), contiguous=True)
        elif newm.any():
            self._alloc_rmap_items(mm, g0 + np.flatnonzero(newm))
        if self.smart_scan:
            # should_skip_rmap_item(): age counts visits of non-KSM pages, saturating
            a8 = mem.ags.a[g0:g1]
            old = a8 & 0xF
            sk = a8 >> 4
            nk = ~is_ksm
            reset = nk & (old >= 3) & (sk == 0)
            if reset.any():
                sk[reset] = skip_age(old[reset])
            if nskip:
                sk[skip] -= 1
            a8[:] = (old + (nk & (old < 15))) | (sk << 4)
            if nskip:
                self.pages_skipped += nskip
                self._cmp_and_merge_pages(
                    np.arange(g0, g1, dtype=np.int64), mem.pte.a[g0:g1], kinds[:stop],
                    contiguous=True, skip=skip,
                )
                return stop - nskip, stop
        self._cmp_and_merge_pages(
            np.arange(g0, g1, dtype=np.int64), mem.pte.a[g0:g1], kinds[:stop], contiguous=True
        )
        return stop, stop

    # ------------------------------------------------------------------ cmp_and_merge_page
    def _cmp_and_merge_pages(
        self,
        g: np.ndarray,
        f: np.ndarray | None = None,
        kind: np.ndarray | None = None,
        contiguous: bool = False,
        skip: np.ndarray | None = None,
    ) -> None:
        """cmp_and_merge_page() for a run of visited pages (visit order). ``f``/``kind``
        (frames and their folio_stable_node() kind) may be passed in when the caller has
        them; ``contiguous`` says g is one range, so item fields are read as slices.
        ``skip`` marks the pages smart_scan skips: their items only leave their trees
        (remove_rmap_item_from_tree()), at their places in the visit order."""
        if not g.shape[0]:
            return
        mem = self.mem
        if f is None:
            f = mem.pte.a[g]
        if kind is None:
            kind = mem.fnode.a[f]
        ksm = kind >= 0
        if contiguous:
            g0, g1 = int(g[0]), int(g[-1]) + 1
            fl = mem.iflags.a[g0:g1].copy()
            ival = mem.ival.a[g0:g1]
        else:
            fl = mem.iflags.a[g]
            ival = mem.ival.a[g]
        # (a skipped page is never a KSM page, so never attached)
        # (ival as int32: a node id reads the same; a checksum >= 2**31 turns negative and
        # cannot equal a KSM page's node, kind >= 0)
        attached = ksm & ((fl & STABLE) != 0) & (ival.view(np.int32) == kind)
        if attached.any():
            # an item already attached to its KSM page: nothing to do (the usual case)
            if attached.all():
                return
            rest = ~attached
            g, f, kind, ksm, fl = g[rest], f[rest], kind[rest], ksm[rest], fl[rest]
            if skip is not None:
                skip = skip[rest]
        if self.exact or self._tree_has_special() or self._detaches_from_chain(g, fl, ksm):
            # searches have side effects now: every page in visit order, walks included
            if not self.exact:
                self.pages_in_order += g.shape[0]
            sk = skip.tolist() if skip is not None else None
            for i, gi in enumerate(g.tolist()):
                self._pos = i
                if sk is not None and sk[i]:
                    self._remove_one(gi)
                else:
                    self._cmp_and_merge_one(gi, bool(ksm[i]))
            return
        for tree in self.stable_tree:
            tree.defer = []
        try:
            self._cmp_and_merge_bulk(g, f, kind, ksm, fl, skip)
        finally:
            for tree in self.stable_tree:
                tree.flush()

    def _cmp_and_merge_one(self, g: int, forked: bool) -> None:
        mem = self.mem
        f = int(mem.pte.a[g])
        token = int(mem.ftoken.a[f])
        nid = self._nid(f)
        if forked:
            node = int(mem.fnode.a[f])
            bypass = not self._candidate(node)
            # stable_tree_search() returns the forked KSM page itself
            self._remove_one(g)
            self._emit_merge_with_ksm(g, node, err=0)
            self._stable_tree_append(g, node, bypass)
            return
        self._remove_one(g)
        chk = calc_checksum1(token)
        if int(mem.ival.a[g]) != chk:
            mem.ival.a[g] = chk
            return
        if self.use_zero_pages and chk == ZERO_CHECKSUM and token == 0:
            self._merge_with_zero_page(np.array([g], dtype=np.int64))
            return
        found = self._stable_tree_search(token, nid)
        if found is not None:
            kfn = int(self.node_kfn.a[found])
            self._replace_page(g, kfn)
            self._emit_merge_with_ksm(g, found, err=0)
            self._stable_tree_append(g, found, False)
            return
        t = self._unstable_tree_search_insert(g, f, token, nid)
        if t is None:
            return
        comp = mem.compound_of(f)
        if comp >= 0 and comp == mem.compound_of(int(mem.pte.a[t])):
            # both pages in one compound page: try_to_merge_one_page()'s split_huge_page()
            # fails (ksmd holds a reference through each page), so try_to_merge_two_pages()
            # fails; cmp_and_merge_page() then splits it and merges nothing this pass (this
            # item is in no tree, the tree item stays)
            self._emit("ksm_merge_with_ksm_page", ksm_page=None, pfn=f, rmap_item=g,
                       mm=self._mmid(g), err=-errno.EFAULT)
            mem.split_compounds(np.array([f], dtype=np.int32))
            return
        # try_to_merge_two_pages(): this page becomes the KSM page, the tree page joins it
        # (try_to_merge_one_page() splits a huge page before merging a page of it)
        mem.split_compounds(np.array([f], dtype=np.int32))
        self._emit("ksm_merge_with_ksm_page", ksm_page=None, pfn=f, rmap_item=g, mm=self._mmid(g), err=0)
        self._remove_one(t)
        self._replace_page(t, f)
        self._emit("ksm_merge_with_ksm_page", ksm_page=f, pfn=f, rmap_item=t, mm=self._mmid(t), err=0)
        node = self._stable_tree_insert(f, token, nid)
        self._stable_tree_append(t, node, False)
        self._stable_tree_append(g, node, False)

    def _emit_merge_with_ksm(self, g: int, node: int, err: int) -> None:
        if self.trace.want("ksm_merge_with_ksm_page"):
            kfn = int(self.node_kfn.a[node])
            self._emit("ksm_merge_with_ksm_page", ksm_page=kfn, pfn=kfn, rmap_item=g, mm=self._mmid(g), err=err)

    def _mmid(self, g: int) -> int:
        return int(self._mm_by_gpid(np.array([g]))[0])

    def _nid(self, frame: int) -> int:
        return 0 if self.merge_across_nodes or self.mem.fnid is None else int(self.mem.fnid.a[frame])

    def _replace_page(self, g: int, kfn: int) -> None:
        """replace_page(): point the PTE at the KSM page, drop the old page."""
        mem = self.mem
        old = int(mem.pte.a[g])
        # try_to_merge_one_page(): a page of a huge page is merged after split_huge_page()
        mem.split_compounds(np.array([old], dtype=np.int32))
        mem.pte.a[g] = kfn
        mem.map_add(kfn)
        self.put_frames(np.array([old], dtype=np.int32))

    def _merge_with_zero_page(self, g: np.ndarray, pos: np.ndarray | None = None) -> None:
        """try_to_merge_with_zero_page(): map the shared zero page, dirty-tagged as KSM's."""
        mem = self.mem
        old = mem.pte.a[g].copy()
        mem.split_compounds(old)  # try_to_merge_one_page() splits a huge page first
        mem.pte.a[g] = PTE_KSM_ZERO
        self.put_frames(old)
        self.ksm_zero_pages += g.shape[0]
        mmids = self._mm_by_gpid(g)
        for mmid, cnt in zip(*np.unique(mmids, return_counts=True), strict=False):
            self._mms[int(mmid)].ksm_zero_pages += int(cnt)
        if self.trace.want("ksm_merge_one_page"):
            if pos is None:
                for gi, mi in zip(g.tolist(), mmids.tolist(), strict=False):
                    self._emit("ksm_merge_one_page", pfn=0, rmap_item=gi, mm=mi, err=0)
            else:  # a vector merge: written at the pages' places (_flush_trace)
                self._trace_queue += [
                    (p, 0, "ksm_merge_one_page", {"pfn": 0, "rmap_item": gi, "mm": mi, "err": 0})
                    for p, gi, mi in zip(pos.tolist(), g.tolist(), mmids.tolist(), strict=False)
                ]

    # ------------------------------------------------------------------ frames
    def put_frames(self, frames: np.ndarray, distinct: bool = False) -> None:
        """Drop one mapping of each frame; a frame with no mapping left is freed, and a
        freed KSM page leaves its stable node stale (ksm_get_folio() will fail).
        ``distinct``: no frame is given twice (no grouping needed)."""
        mem = self.mem
        if not frames.shape[0]:
            return
        if frames.shape[0] == 1:
            fr = int(frames[0])
            if mem.fmap.a[fr] > 1:
                mem.fmap.a[fr] -= 1
                return
            mem.fmap.a[fr] = 0
            uniq = frames
        elif distinct:
            uniq = mem.map_put(frames, 1)
        else:
            uniq, cnt = np.unique(frames, return_counts=True)
            uniq = mem.map_put(uniq, cnt)
        if not uniq.shape[0]:
            return
        nodes = mem.fnode.a[uniq]
        ks = nodes[nodes >= 0]
        if ks.shape[0]:
            self._stale_kpfn.update(zip(ks.tolist(), self.node_kfn.a[ks].tolist(), strict=False))
            self.node_kfn.a[ks] = -1
            self._stale_nodes.update(ks.tolist())
        mem.free_frames(uniq.astype(np.int32))

    # ------------------------------------------------------------------ rmap_item removal
    def _oldchecksum(self, g: np.ndarray, fl: np.ndarray) -> np.ndarray:
        """rmap_item->oldchecksum of items (a stable item keeps it implicitly)."""
        v: np.ndarray = self.mem.ival.a[g].copy()
        st = (fl & STABLE) != 0
        if st.any():
            v[st] = calc_checksum(self.node_token.a[v[st].astype(np.int64)])
            if self.chk_exc:
                for i in np.flatnonzero(st).tolist():
                    e = self.chk_exc.get(int(g[i]))
                    if e is not None:
                        v[i] = e
        return v

    def _remove_one(self, g: int) -> None:
        self._remove_from_tree(np.array([g], dtype=np.int64))

    def _remove_from_tree(self, g: np.ndarray) -> None:
        """remove_rmap_item_from_tree() for many items: a stable item leaves its node
        (sharing-- or shared-- for the last one), a stale node is removed whole, an
        unstable item stops counting in pages_unshared."""
        if not g.shape[0]:
            return
        mem = self.mem
        fl = mem.iflags.a[g]
        st = g[(fl & STABLE) != 0]
        if st.shape[0]:
            nodes = mem.ival.a[st].astype(np.int64)
            # detached at the end: a stale node's removal below still finds these items
            # on its hlist (ival == node), as ksm_get_folio() does before hlist_del()
            detach = (st, nodes)
            alive = self.node_alive.a[nodes]
            # items of a node removed earlier in this batch: their share of that removal
            gone = st[~alive]
            if gone.shape[0]:
                self._dec_merging(gone)
            st, nodes = st[alive], nodes[alive]
            stale = self.node_kfn.a[nodes] < 0
            if stale.any():
                # ksm_get_folio() finds the page gone at the first item of each node, in
                # the order the items are removed
                sn = nodes[stale]
                _, first = np.unique(sn, return_index=True)
                order = sn[np.sort(first)].tolist()
                hlists = self._hlists(order)
                for n in order:
                    self._remove_node_from_stable_tree(n, hlists.get(n))
                self._dec_merging(st[stale])
                st, nodes = st[~stale], nodes[~stale]
            if st.shape[0]:
                uniq, cnt = np.unique(nodes, return_counts=True)
                left = self.node_len.a[uniq] - cnt
                self.node_len.a[uniq] = left
                emptied = int(np.count_nonzero(left == 0))
                self.pages_shared -= emptied
                self.pages_sharing -= int(cnt.sum()) - emptied
                self._dec_merging(st)
            self._detach_ival(*detach)
        if np.any(fl & UNSTABLE):
            self.pages_unshared -= int(np.count_nonzero(fl & UNSTABLE))
        mem.iflags.a[g] = fl & ~np.uint8(STABLE | UNSTABLE | SEQ_ODD)

    def _dec_merging(self, g: np.ndarray) -> None:
        if not g.shape[0]:
            return
        for mm, cnt in self._per_mm(g):
            mm.ksm_merging_pages -= cnt

    def _per_mm(self, g: np.ndarray) -> list[tuple[MM, int]]:
        """(mm, how many of the pages ``g`` it maps) for every mm mapping one of them."""
        mmids = self._mm_by_gpid(g)
        lo = int(mmids.min())
        if int(mmids.max()) - lo < 1 << 16:
            # a bincount: no sort of a window's worth of ids
            cnt = np.bincount(mmids - lo)
            ids = np.flatnonzero(cnt)
            return [(self._mms[i + lo], c) for i, c in zip(ids.tolist(), cnt[ids].tolist(), strict=True)]
        u, c = np.unique(mmids, return_counts=True)
        return [(self._mms[i], n) for i, n in zip(u.tolist(), c.tolist(), strict=True)]

    def _free_items_range(self, g0: int, g1: int) -> None:
        if g1 <= g0:
            return
        fl = self.mem.iflags.a[g0:g1]
        gi = g0 + np.flatnonzero(fl & HAS_ITEM)
        if gi.shape[0]:
            self._free_items(gi)

    def _free_items(self, g: np.ndarray) -> None:
        """Free rmap_items (get_next_rmap_item / remove_trailing_rmap_items)."""
        self._remove_from_tree(g)
        mem = self.mem
        mem.iflags.a[g] = 0
        mem.ags.a[g] = 0
        mem.ival.a[g] = 0
        if self.chk_exc:
            for gi in g.tolist():
                self.chk_exc.pop(gi, None)
        self.ksm_rmap_items -= g.shape[0]
        for mm, cnt in self._per_mm(g):
            mm.ksm_rmap_items -= cnt

    def _reap_dead_nodes(self) -> None:
        """Finish remove_node_from_stable_tree() for nodes removed in this batch: their
        remaining items lose the STABLE flag and their mm's ksm_merging_pages."""
        if not self._pending_dead:
            return
        mem = self.mem
        dead = np.zeros(self.node_alive.n, dtype=bool)
        dead[self._pending_dead] = True
        self._pending_dead.clear()
        n = mem.iflags.n
        stable = (mem.iflags.a[:n] & STABLE) != 0
        cand = np.flatnonzero(stable)
        nodes = mem.ival.a[cand].astype(np.int64)
        hit = cand[dead[nodes]]
        if hit.shape[0]:
            self._dec_merging(hit)
            mem.iflags.a[hit] &= ~np.uint8(STABLE)
            self._detach_ival(hit, mem.ival.a[hit].astype(np.int64))
        self._free_nodes.extend(np.flatnonzero(dead).tolist())

    # ------------------------------------------------------------------ stable nodes
    def _candidate(self, n: int, offset: int = 0) -> bool:
        """__is_page_sharing_candidate()"""
        ln = int(self.node_len.a[n])
        return ln > 0 and ln + offset < self.max_page_sharing

    def _remove_node_from_stable_tree(self, n: int, hlist: list[int] | None = None) -> None:
        """remove_node_from_stable_tree(): every item attached counts down now; their flags
        are cleared at the end of the batch (_reap_dead_nodes).  Traced like the kernel:
        ksm_remove_rmap_item(kpfn, item, mm) for every item of the hlist but the last (the
        oldest: pages_shared, the others pages_sharing), head first, then
        ksm_remove_ksm_page(kpfn).  ``hlist``: the node's items if the caller has them."""
        ln = int(self.node_len.a[n])
        if ln > 0:
            self.pages_shared -= 1
            self.pages_sharing -= ln - 1
            self._pending_dead.append(n)
        kpfn = self._stale_kpfn.pop(n, None)
        if kpfn is None:
            kpfn = int(self.node_kfn.a[n])
        if self.trace.want("ksm_remove_rmap_item") and ln > 1:
            items = hlist if hlist is not None else self._hlists([n]).get(n, [])
            named = items[:-1]
            if named:
                mms = self._mm_by_gpid(np.asarray(named, dtype=np.int64)).tolist()
                for gi, mi in zip(named, mms, strict=False):
                    self._emit("ksm_remove_rmap_item", pfn=kpfn, rmap_item=gi, mm=mi)
        self._emit("ksm_remove_ksm_page", pfn=kpfn)
        kfn = int(self.node_kfn.a[n])
        if kfn >= 0 and self.mem.fnode.a[kfn] == n:
            self.mem.fnode.a[kfn] = FRAME_ANON  # set_page_stable_node(page, NULL)
        c = int(self.node_chain.a[n])
        if c >= 0:
            self._chain_remove_dup(c, n)
        else:
            tree = self.stable_tree[int(self.node_nid.a[n]) if len(self.stable_tree) > 1 else 0]
            tok = int(self.node_token.a[n])
            if tree.get(tok) == n:
                del tree[tok]
        self.node_alive.a[n] = False
        self.node_len.a[n] = 0
        self._stale_nodes.discard(n)
        if ln == 0:
            self._free_nodes.append(n)

    def _free_chain(self, cid: int) -> None:
        """free_stable_node_chain(): rb_erase() of the chain, chains--."""
        ch = self._chain_drop(cid)
        tree = self.stable_tree[ch.nid]
        if tree.get(ch.token) == -(cid + 1):
            del tree[ch.token]

    def _stable_node_dup(self, cid: int, prune: bool) -> int | None:
        """stable_node_dup(): pick a dup of a chain, dropping stale ones; collapse a chain
        of one dup (6.18 does this without waiting for the prune timer, spec §8.9)."""
        ch = self.chains[cid]
        now = self._clock_ns()
        if prune and now >= self.chain_prune.a[cid] + self.stable_node_chains_prune_millisecs * 1_000_000:
            self._set_prune_time(cid, now)
        else:
            prune = False
        found: int | None = None
        found_len = 0
        for d in list(ch.dups):
            if self._stale(d):
                self._remove_node_from_stable_tree(d)
                continue
            if found is None or (
                self._candidate(d)
                and (not self._candidate(found) or int(self.node_len.a[d]) > found_len)
            ):
                found = d
                found_len = int(self.node_len.a[d])
                # without a prune the walk stops at the first dup that can take a page
                if not prune and self._candidate(found):
                    break
        if found is None:
            self._free_chain(cid)
            return None
        if len(ch.dups) == 1:
            # rb_replace_node(chain -> dup): the chain collapses into a plain node
            self._chain_drop(cid)
            self.stable_tree[ch.nid][ch.token] = found
            self.node_chain.a[found] = -1
            self.stable_node_dups -= 1
        elif ch.dups[0] != found and self._candidate(found, 1):
            ch.dups.remove(found)
            ch.dups.insert(0, found)
            self.chain_head.a[cid] = found
        return found

    def _walk(self, token: int, nid: int, prune: bool) -> None:
        """The rbtree walk of stable_tree_search() (prune) or stable_tree_insert() down to
        ``token``'s place: every node passed is looked at as the kernel does — a stale
        KSM page removes its node, a chain is pruned / collapsed / freed by
        stable_node_dup() — and the walk restarts from the root after a removal."""
        tree = self.stable_tree[nid]
        rb = tree.rb
        cur = rb.root
        while cur is not None and cur != token:
            e = tree[cur]
            if e >= 0:
                if self._stale(e):
                    self._remove_node_from_stable_tree(e)
                    cur = rb.root
                    continue
            elif self._stable_node_dup(-e - 1, prune) is None:
                cur = rb.root  # the chain was empty and has been freed
                continue
            cur = rb.step(cur, token)

    def _stable_tree_search(self, token: int, nid: int) -> int | None:
        """stable_tree_search() for a page that is not a KSM page: a node that can take one
        more mapping, or None (no such content, or every KSM page of it is full)."""
        tree = self.stable_tree[nid]
        while True:
            self._walk(token, nid, prune=True)
            e = tree.get(token)
            if e is None:
                return None
            if e >= 0:
                if self._stale(e):
                    self._remove_node_from_stable_tree(e)
                    continue
                return e if self._candidate(e) else None
            dup = self._stable_node_dup(-e - 1, prune=True)
            if dup is None:
                continue
            return dup if self._candidate(dup) else None

    def _stable_tree_insert(self, kfn: int, token: int, nid: int) -> int:
        """stable_tree_insert(): a new KSM page; if the content is already in the tree (its
        KSM pages being full) the node becomes, or joins, a chain of dups."""
        tree = self.stable_tree[nid]
        while True:
            self._walk(token, nid, prune=False)
            e = tree.get(token)
            if e is None:
                n = self._new_node(token, kfn, nid)
                tree.add(token, n, self._pos)
                break
            if e >= 0:
                if self._stale(e):
                    self._remove_node_from_stable_tree(e)
                    continue
                cid = self._chain_new(token, nid, e)
            else:
                cid = -e - 1
                if self._stable_node_dup(cid, prune=False) is None:
                    continue
                if tree.get(token) != e:  # collapsed: chain again around the survivor
                    continue
            n = self._new_node(token, kfn, nid)
            self._chain_add_dup(cid, n)
            break
        self.mem.fnode.a[kfn] = n
        return n

    def _stable_tree_append(self, g: int, n: int, bypass: bool) -> None:
        """stable_tree_append(): attach the item; the first item makes the page shared."""
        had = int(self.node_len.a[n])
        self.node_len.a[n] = had + 1
        mem = self.mem
        mem.iflags.a[g] = (mem.iflags.a[g] & ~np.uint8(UNSTABLE | SEQ_ODD)) | STABLE
        self._attach_ival(np.array([g], dtype=np.int64), np.array([n], dtype=np.int64))
        if self.trace.want("ksm_remove_rmap_item"):
            self._note_appends(np.array([g], dtype=np.int64))
        if had:
            self.pages_sharing += 1
        else:
            self.pages_shared += 1
        self._mms[self._mmid(g)].ksm_merging_pages += 1

    # ------------------------------------------------------------------ unstable tree
    def _unstable_tree_search_insert(self, g: int, f: int, token: int, nid: int) -> int | None:
        """unstable_tree_search_insert(): the item of an identical page seen earlier in this
        pass, or insert this one (pages_unshared++) and return None."""
        tree = self.unstable_tree[nid]
        t = tree.get(token)
        mem = self.mem
        if t is not None:
            tf = int(mem.iflags.a[t])
            valid_item = (tf & UNSTABLE) and bool(tf & SEQ_ODD) == bool(self.seqnr & 1)
            if valid_item:
                page = self._get_mergeable_page(t)
                if page is None:
                    return None  # the tree page went away: abort, insert nothing
                if page == f:
                    return None  # the same physical page (shared since fork)
                if int(mem.ftoken.a[page]) == token:
                    return t
        tree[token] = g
        mem.iflags.a[g] = (mem.iflags.a[g] & ~np.uint8(SEQ_ODD)) | UNSTABLE | (
            SEQ_ODD if self.seqnr & 1 else 0
        )
        self.pages_unshared += 1
        return None

    def _get_mergeable_page(self, g: int) -> int | None:
        """get_mergeable_page(): the anon page still mapped at an item's address in a
        mergeable VMA, or None."""
        mmid = self._mmid(g)
        mm = self._mms.get(mmid)
        if mm is None or mm.exiting:
            return None
        for v in mm.vmas:
            if v.base <= g < v.base + v.npages:
                if not v.mergeable:
                    return None
                fr = int(self.mem.pte.a[g])
                if fr < 0:
                    return None
                kind = int(self.mem.fnode.a[fr])
                if kind in (FRAME_FILE, FRAME_SHMEM):
                    return None
                return fr
        return None

    # ------------------------------------------------------------------ run = 2
    def unmerge_and_remove_all_rmap_items(
        self, unmerge_vma: Callable[[MM, object], None]
    ) -> None:
        """unmerge_and_remove_all_rmap_items(): break every KSM page of every registered
        mm, free all rmap_items, drop all stable nodes, and reset full_scans."""
        for mm in list(self.mm_list):
            if not mm.exiting:
                for vma in mm.vmas:
                    if vma.mergeable:
                        unmerge_vma(mm, vma)
            for seg in mm.segments():
                self._free_items_range(seg.base, seg.base + seg.npages)
            mm.dead = []
            if mm.exiting:
                self.mm_list.remove(mm)
                mm.registered = False
                mm.merge_any = False
        self.cursor = -1
        self.scan_addr = 0
        self._reap_dead_nodes()
        self.remove_all_stable_nodes()
        self._reap_dead_nodes()
        self.seqnr = 0

    def remove_all_stable_nodes(self) -> bool:
        """remove_all_stable_nodes(): True if some KSM page is still mapped (busy)."""
        busy = False
        hlists: dict[int, list[int]] | None = None
        for tree in self.stable_tree:
            # in content order, the same however the nodes were made (mm/ksm.c takes the
            # rbtree's root again and again; docs/NOTES.md)
            for e in [tree[t] for t in sorted(tree)]:
                members = [e] if e >= 0 else list(self.chains[-e - 1].dups)
                for n in members:
                    kfn = int(self.node_kfn.a[n])
                    if kfn >= 0 and int(self.mem.fmap.a[kfn]) > 0:
                        busy = True
                        continue
                    if hlists is None:  # one pass over the items for every node
                        hlists = self._hlists(self._all_nodes())
                    self._remove_node_from_stable_tree(n, hlists.get(n, []))
                if e < 0 and -e - 1 in self.chains and not self.chains[-e - 1].dups:
                    self._free_chain(-e - 1)
        return busy

    # ------------------------------------------------------------------ knob side effects
    def set_run(self, value: int, unmerge_vma: Callable[[MM, object], None]) -> None:
        """run_store() after parsing: 2 unmerges synchronously; any value with
        KSM_RUN_MERGE wakes ksm_thread_wait (changed or not)."""
        if value != self.run:
            self.run = value
            if value & KSM_RUN_UNMERGE:
                self.unmerge_and_remove_all_rmap_items(unmerge_vma)
        if value & KSM_RUN_MERGE:
            self.wake_ksm_thread()

    def _drop_stable_tree_or_ebusy(self) -> None:
        """max_page_sharing_store() / merge_across_nodes_store(): a real change needs no
        shared page and every stable node removable (remove_all_stable_nodes())."""
        busy = bool(self.pages_shared) or self.remove_all_stable_nodes()
        self._reap_dead_nodes()
        if busy:
            raise KsmError(errno.EBUSY, "KSM pages are shared (write 2 to run first)")

    def set_max_page_sharing(self, value: int) -> None:
        if value != self.max_page_sharing:
            self._drop_stable_tree_or_ebusy()
            self.max_page_sharing = value

    def set_merge_across_nodes(self, value: int) -> None:
        if value == self.merge_across_nodes:
            return
        self._drop_stable_tree_or_ebusy()
        self.merge_across_nodes = value
        trees = 1 if value else max(1, self.mem.nr_nodes)
        self.stable_tree = [StableTree() for _ in range(trees)]
        self.unstable_tree = [TokenMap() for _ in range(trees)]

    def set_sleep_millisecs(self, value: int) -> None:
        # sleep_millisecs_store(): wake_up_interruptible(&ksm_iter_wait) after every store;
        # the sleeping ksmd only wakes up if the value differs from its sleep's
        self.sleep_millisecs = value
        self.wake_ksm_iter()

    def set_pages_to_scan(self, value: int) -> None:
        if self.advisor_mode == "scan-time":
            raise KsmError(errno.EINVAL, "pages_to_scan is set by the scan-time advisor")
        self.pages_to_scan = value

    def set_advisor_mode(self, mode: str) -> None:
        if mode == self.advisor_mode:
            return
        self.advisor_mode = mode
        if mode == "none":
            self.pages_to_scan = 100  # DEFAULT_PAGES_TO_SCAN, not the earlier user value
        else:
            self.advisor = AdvisorCtx()
            self.pages_to_scan = self.advisor_min_pages_to_scan & 0xFFFFFFFF

    # ------------------------------------------------------------------ advisor
    def _advisor_start_scan(self) -> None:
        if self.advisor_mode == "scan-time":
            self.advisor.start_scan_ns = self._clock_ns()

    def _advisor_stop_scan(self) -> None:
        """scan_time_advisor(): the literal integer arithmetic of mm/ksm.c (spec §3.14)."""
        if self.advisor_mode != "scan-time":
            return
        ctx = self.advisor
        scan_time_s = ((self._clock_ns() - ctx.start_scan_ns) // 1_000_000) // 1000 or 1
        cpu = self.ksmd_cpu_ns
        diff_ms = (cpu - ctx.cpu_time) // 1_000_000
        cpu_percent = diff_ms * 100 // (scan_time_s * 1000) or 1
        last = ctx.scan_time or scan_time_s
        factor = self.advisor_target_scan_time * 100 // scan_time_s or 1
        change = scan_time_s * 100 // last or 1
        change = (70 * ctx.change + 30 * change) // 100
        pages = self.pages_to_scan * 100 // factor
        pages = pages * change // 100
        ppc = self.pages_to_scan // cpu_percent or 1
        pages = min(pages, ppc * self.advisor_max_cpu)
        pages = max(pages, ppc * 10)
        pages = min(pages, self.advisor_max_pages_to_scan)
        ctx.change, ctx.scan_time, ctx.cpu_time = change, scan_time_s, cpu
        self.pages_to_scan = pages & 0xFFFFFFFF
        self._emit("ksm_advisor", scan_time=scan_time_s, pages_to_scan=pages, cpu_percent=cpu_percent)

"""ksmd: Kernel Samepage Merging as mm/ksm.c does it, over numpy page arrays.

The scan walks the mm_slot list, each mm's VMAs in address order and each VMA's present
anonymous pages, exactly like ``scan_get_next_rmap_item``; ``cmp_and_merge_page`` then
applies the checksum rule, the zero-page path, the stable tree (with max_page_sharing
chains and dups) and the unstable tree. Counters change where the kernel changes them.

Speed: a batch is classified with vector operations. Pages whose outcome needs no tree
(already-attached KSM pages, changed checksums, zero-page merges, and contents that no
other frame can hold) are handled in bulk; only pages whose content may match another
page go through the per-page path, in visit order, which is where ordering matters.
The trees are dicts keyed by content token (one per NUMA node when merge_across_nodes=0):
an rbtree ordered by memcmp finds the same matches; what it does differently (pruning
stale nodes that merely lie on a search path) changes no end-of-pass counter in the
workloads we compare, and is noted in docs/NOTES.md.
"""

from __future__ import annotations

import errno
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .errors import KsmError
from .mm import (
    FRAME_ANON,
    FRAME_FILE,
    FRAME_SHMEM,
    MM,
    PAGE_SIZE,
    PTE_KSM_ZERO,
    GrowArray,
    PhysMem,
    Segment,
    UNIQUE_BIT,
)
from .stabletree import StableTree
from .tokenindex import MISSING, UNKNOWN
from .trace import TraceBuffer
from .versions import KernelProfile

# rmap_item flag bits kept in PhysMem.iflags (the kernel keeps them in rmap_item->address)
HAS_ITEM = 0x1
STABLE = 0x2  # STABLE_FLAG
UNSTABLE = 0x4  # UNSTABLE_FLAG
SEQ_ODD = 0x8  # low bit of ksm_scan.seqnr when the item entered the unstable tree

KSM_RUN_STOP = 0
KSM_RUN_MERGE = 1
KSM_RUN_UNMERGE = 2

RMAP_ITEM_SIZE = 64  # sizeof(struct ksm_rmap_item) on 64-bit
KSMD_PID = 47  # what the live machine's ksmd had; only shown in trace lines
KSMD_NS_PER_PAGE = 450  # simulated CPU cost of one page: ~2.2 M pages/s, the live ksmd rate

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
# (u32) xxhash64 of a 4096-byte zero page, seed 0 (spec §3.5): zero_checksum.
ZERO_CHECKSUM = 0x32D8BBDB


def calc_checksum(tokens: np.ndarray) -> np.ndarray:
    """calc_checksum(): a 32-bit hash of the content. Never 0 for a non-zero page, so a
    fresh item (oldchecksum 0) always waits one visit, as a real xxhash practically does."""
    x = tokens.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= _M1
        x ^= x >> np.uint64(27)
        x *= _M2
        x ^= x >> np.uint64(31)
    c = (x & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    c[c == 0] = 1
    c[c == ZERO_CHECKSUM] = ZERO_CHECKSUM + 1
    c[tokens == 0] = ZERO_CHECKSUM
    return c


def calc_checksum1(token: int) -> int:
    """calc_checksum() of one page, in plain integers (same values as the vector form)."""
    if token == 0:
        return ZERO_CHECKSUM
    x = token
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    c = (x ^ (x >> 31)) & 0xFFFFFFFF
    if c == 0:
        return 1
    if c == ZERO_CHECKSUM:
        return ZERO_CHECKSUM + 1
    return c


def skip_age(age: np.ndarray) -> np.ndarray:
    """skip_age(): how many visits to skip after a processed visit at this age."""
    return np.where(age <= 3, 1, np.where(age <= 5, 2, np.where(age <= 8, 4, 8))).astype(np.uint8)


@dataclass
class Chain:
    """A stable_node chain: one content that needs several KSM pages (max_page_sharing)."""

    token: int
    nid: int
    dups: list[int] = field(default_factory=list)  # hlist order, head first
    # (its chain_prune_time lives in Ksm.chain_prune, indexed by chain id)


@dataclass
class ScanBatch:
    """One ksm_do_scan() call in progress (Ksm.begin_batch / Ksm.scan_slice)."""

    npages: int
    done: int = 0
    pass_ended: bool = False
    finished: bool = False


@dataclass
class NewNodesPlan:
    """Contents of a batch not yet in the stable tree, each fitting in one KSM page.
    ``pos``: visit positions of their pages, grouped by content (visit order inside a
    group); ``sizes``: pages per content; ``tree_items``: the unstable tree's item of this
    pass for the content, or -1."""

    pos: np.ndarray
    sizes: np.ndarray
    tokens: np.ndarray
    tree_items: np.ndarray


@dataclass
class AdvisorCtx:
    start_scan_ns: int = 0
    scan_time: int = 0
    change: int = 0
    cpu_time: int = 0


class Ksm:
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
        # stable nodes (struct ksm_stable_node), struct of arrays
        self.node_token = GrowArray(np.uint64)
        self.node_kfn = GrowArray(np.int32, -1)  # -1: the KSM page is gone (stale)
        self.node_len = GrowArray(np.int32)  # rmap_hlist_len
        self.node_chain = GrowArray(np.int32, -1)  # chain id of a dup
        self.node_alive = GrowArray(np.bool_)
        self.node_nid = GrowArray(np.uint8)
        self._free_nodes: list[int] = []
        self.chains: dict[int, Chain] = {}
        self._next_chain = 0
        # trees: token -> node id (>= 0) or chain (-(cid + 1)); unstable: token -> gpid
        self.stable_tree: list[StableTree] = [StableTree()]
        self.unstable_tree: list[dict[int, int]] = [{}]
        self.demoted_unique: set[int] = set()
        self._pending_dead: list[int] = []
        self.chk_exc: dict[int, int] = {}  # gpid -> oldchecksum of stable items (rare)
        self._stale_nodes: set[int] = set()  # nodes whose KSM page is gone, still in a tree
        # stable_node->kpfn of those nodes: node_kfn reads -1 once the page is freed, but
        # the kernel's trace_ksm_remove_*() still print the pfn the node was made for
        self._stale_kpfn: dict[int, int] = {}
        # stable_tree_append() adds an item at the head of the node's hlist; the order is
        # only needed by the ksm_remove_rmap_item lines of remove_node_from_stable_tree(),
        # so an append counter per item is kept only while that event is traced
        self._hlist_seq = np.zeros(0, dtype=np.int64)
        self._hlist_next = 0
        self._pos = 0  # visit position in the current batch (orders deferred rbtree inserts)
        self._due_chains = np.zeros(0, dtype=np.int64)
        self.chain_live = GrowArray(np.bool_)
        self.chain_head = GrowArray(np.int64, -1)
        self.chain_prune = GrowArray(np.int64)
        self.chain_ivl_lo = GrowArray(np.uint64)  # rbtree interval of the chain's key
        self.chain_ivl_hi = GrowArray(np.uint64)
        self.chain_ivl_flags = GrowArray(np.uint8)  # 1: has a low bound, 2: a high one
        self.chain_ivl_ver = GrowArray(np.int64, -1)  # rb version it was computed at
        self.advisor = AdvisorCtx()
        self.ksmd_cpu_ns = 0
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
                order = np.argsort(ga, kind="stable")
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

    def _alloc_rmap_items(self, mm: MM, g: np.ndarray) -> None:
        """get_next_rmap_item() for first-seen pages: a zeroed item (age 0, oldchecksum 0);
        ksm_rmap_items++ globally and for the mm."""
        if not g.shape[0]:
            return
        mem = self.mem
        mem.iflags.a[g] = HAS_ITEM
        mem.ags.a[g] = 0
        mem.ival.a[g] = 0
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
                cum = np.cumsum(~skip)
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
        if newm.any():
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
        attached = ksm & ((fl & STABLE) != 0) & (ival == kind.astype(np.uint32))
        if attached.any():
            # an item already attached to its KSM page: nothing to do (the usual case)
            rest = ~attached
            if not rest.any():
                return
            g, f, kind, ksm, fl = g[rest], f[rest], kind[rest], ksm[rest], fl[rest]
            if skip is not None:
                skip = skip[rest]
        if self.exact or self._tree_has_special() or self._detaches_from_chain(g, fl, ksm):
            # searches have side effects now: every page in visit order, walks included
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

    def _cmp_and_merge_bulk(
        self, g: np.ndarray, f: np.ndarray, kind: np.ndarray, ksm: np.ndarray, fl: np.ndarray,
        skip: np.ndarray | None = None,
    ) -> None:
        """The vector path of _cmp_and_merge_pages() (no search has side effects). No page
        here is attached to its KSM page, so a KSM page is one inherited through fork."""
        mem = self.mem
        forked = ksm
        plain = ~ksm if skip is None else ~ksm & ~skip
        tok = mem.ftoken.a[f]
        chk = calc_checksum(tok[plain])
        gp = g[plain]
        stable_cand = chk == self._oldchecksum(gp, fl[plain])
        # classify before touching any tree: which contents could meet another page?
        cand_tok = tok[plain][stable_cand]
        fp = f[plain][stable_cand]
        unique = ((cand_tok & UNIQUE_BIT) != 0) & (mem.fmap.a[fp] == 1)
        if self.demoted_unique:
            unique &= ~np.isin(cand_tok, np.fromiter(self.demoted_unique, np.uint64))
        zero = (cand_tok == 0) & bool(self.use_zero_pages)
        if self._due_chains.shape[0]:
            self._prune_passed_chains(cand_tok[~zero])
        slow_c = ~unique & ~zero
        pos_plain = np.flatnonzero(plain)
        pos_c = pos_plain[stable_cand][slow_c]
        tok_c = cand_tok[slow_c]
        in_play = set(tok_c.tolist())
        forced = set(tok[forked].tolist())
        in_order = np.zeros(g.shape[0], dtype=bool)
        in_order[forked] = True
        if in_play:
            # an item still attached to a node whose content is in play must leave it at its
            # place in the visit order: the node's fill level decides later merges
            st_plain = (fl[plain] & STABLE) != 0
            if st_plain.any():
                nodes = mem.ival.a[gp[st_plain]].astype(np.int64)
                ntok = self.node_token.a[nodes].tolist()
                hit = np.fromiter((int(t) in in_play for t in ntok), bool, len(ntok))
                in_order[pos_plain[st_plain][hit]] = True
                forced.update(int(t) for t, h in zip(ntok, hit.tolist()) if h)
        if skip is not None:
            # a skipped item attached to a node whose content is in play leaves it at its
            # place (the node's fill level decides the searches around it); the others
            # leave now, which no search of this window can tell apart
            spos = np.flatnonzero(skip)
            late = np.zeros(spos.shape[0], dtype=bool)
            sst = (fl[spos] & STABLE) != 0
            if (in_play or forced) and sst.any():
                ntok = self.node_token.a[mem.ival.a[g[spos[sst]]].astype(np.int64)].tolist()
                hit = np.fromiter((int(t) in in_play or int(t) in forced for t in ntok), bool, len(ntok))
                late[np.flatnonzero(sst)[hit]] = True
                forced.update(int(t) for t, h in zip(ntok, hit.tolist()) if h)
            in_order[spos[late]] = True
            self._remove_from_tree(g[spos[~late]])
        plans, app_pos, app_nodes, app_group_nodes, slow_groups, new_plan = self._classify_groups(
            g, f, pos_c, tok_c, forced
        )
        for grp in slow_groups:
            in_order[grp] = True
        # bulk: remove from trees, checksum rule, zero pages, never-matching contents
        bulk = plain & ~in_order
        gb = g[bulk]
        self._remove_from_tree(gb)
        # the checksum rule, with the checksums and their comparison from above (leaving
        # the tree restores exactly the oldchecksum that _oldchecksum() reported)
        chk_all = np.zeros(g.shape[0], dtype=np.uint32)
        chk_all[plain] = chk
        same = np.zeros(g.shape[0], dtype=bool)
        same[pos_plain[stable_cand]] = True
        changed = ~same[bulk]
        mem.ival.a[gb[changed]] = chk_all[bulk][changed]
        in_fast = np.zeros(g.shape[0], dtype=bool)
        in_fast[app_pos] = True
        for plan in plans:
            in_fast[plan[1]] = True
        if new_plan is not None:
            in_fast[new_plan.pos] = True
        keep = ~changed & ~in_fast[bulk]
        gbk = gb[keep]
        tbk = tok[bulk][keep]
        if gbk.shape[0]:
            z = (tbk == 0) & bool(self.use_zero_pages)
            if z.any():
                self._merge_with_zero_page(gbk[z], np.flatnonzero(bulk)[keep][z])
            rest = gbk[~z]
            if rest.shape[0]:
                # unstable_tree_search_insert() that cannot find a match: insert
                self._insert_unstable_bulk(rest)
        if plans or app_pos.shape[0] or new_plan is not None:
            self._merge_groups(g, plans, app_pos, app_nodes, app_group_nodes, new_plan)
        # in order: everything whose outcome depends on other pages of the same content;
        # the trace records of the vector merges are written at their pages' places
        for i in np.flatnonzero(in_order).tolist():
            self._pos = i
            self._flush_trace(i)
            if skip is not None and skip[i]:
                self._remove_one(int(g[i]))
            else:
                self._cmp_and_merge_one(int(g[i]), bool(forked[i]))
        self._flush_trace(None)

    def _flush_trace(self, before: int | None) -> None:
        """Write the queued records of vector merges at visit positions < ``before``
        (all of them for None), in visit order."""
        q = self._trace_queue
        if not q:
            return
        q.sort(key=lambda e: (e[0], e[1]))
        k = len(q) if before is None else next((j for j, e in enumerate(q) if e[0] >= before), len(q))
        for _, _, event, fields in q[:k]:
            self._emit(event, **fields)
        del q[:k]

    def _classify_groups(
        self, g: np.ndarray, f: np.ndarray, pos_c: np.ndarray, tok_c: np.ndarray, forced: set[int]
    ) -> tuple[list[tuple], np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
        """Split the batch's candidate pages by content. A content whose outcome follows
        from a closed form gets a plan: "append" (a node with room takes every page) or
        "blocks" (fill the node, then blocks of max_page_sharing pages each making a KSM
        page). Everything else (due chain prunes, stale nodes, fork-shared pages, aborted
        tree walks) goes to the page-by-page path. Returns (block plans, append positions,
        their nodes, append group sizes and nodes as one array pair, slow positions)."""
        plans: list[tuple] = []
        slow: list[np.ndarray] = []
        empty = np.zeros(0, dtype=np.int64)
        new_plan: NewNodesPlan | None = None
        if not pos_c.shape[0]:
            return plans, empty, empty, empty, slow, new_plan
        mem = self.mem
        order = np.argsort(tok_c, kind="stable")
        ts = tok_c[order]
        ps = pos_c[order]
        brk = np.flatnonzero(ts[1:] != ts[:-1]) + 1
        starts_a = np.concatenate(([0], brk))
        sizes_a = np.diff(np.concatenate((starts_a, [ts.shape[0]])))
        ok_a = np.minimum.reduceat((mem.fmap.a[f[ps]] == 1).astype(np.int8), starts_a) > 0
        nid_a = None
        if not self.merge_across_nodes:
            nids = mem.nid_of(f[ps])
            lo = np.minimum.reduceat(nids, starts_a)
            ok_a &= lo == np.maximum.reduceat(nids, starts_a)
            nid_a = lo.tolist()
        mps = self.max_page_sharing
        seq_odd = bool(self.seqnr & 1)
        now = self._clock_ns()
        prune_ns = self.stable_node_chains_prune_millisecs * 1_000_000
        node_kfn = self.node_kfn.a
        node_len = self.node_len.a
        uniq = ts[starts_a]
        gnode = np.full(starts_a.shape[0], -1, dtype=np.int64)
        if nid_a is None:
            # the usual case, decided for all contents at once: a plain node with room
            # for the whole group (no prune, chain or stale page involved)
            vals = self.stable_tree[0].lookup(uniq)
            plain = vals >= 0
            target = np.where(plain, vals, 0)
            # a chain whose only dup with room is its head (no stale or single dup):
            # every search picks the head, as for a plain node (see the loop below)
            chained = (vals < 0) & (vals > UNKNOWN)
            if chained.any():
                cids = np.where(chained, -vals - 1, 0)
                ok_chain = self._chains_with_head_only(mps)
                chained &= ok_chain[cids]
                target = np.where(chained, self.chain_head.a[cids], target)
            ln = node_len[target]
            room = np.where(ln < mps, mps - ln, 0)
            app_group = ok_a & (plain | chained) & (node_kfn[target] >= 0) & (ln > 0) & (sizes_a <= room)
            if forced:
                app_group &= ~np.isin(uniq, np.fromiter(forced, np.uint64, len(forced)))
            gnode[app_group] = target[app_group]
            if chained.any():
                # the first search of such a group prunes a due chain: only the time moves
                due_c = cids[app_group & chained]
                due_c = due_c[now >= self.chain_prune.a[due_c] + prune_ns]
                self.chain_prune.a[due_c] = now
            rest_a = np.flatnonzero(~app_group)
            new_plan, rest_a = self._classify_new(
                rest_a, vals, uniq, sizes_a, ok_a, forced, mps, seq_odd, ps, starts_a
            )
            rest = rest_a.tolist()
        else:
            app_group = np.zeros(starts_a.shape[0], dtype=bool)
            rest = list(range(starts_a.shape[0]))
        starts = starts_a.tolist()
        sizes = sizes_a.tolist()
        oks = ok_a.tolist()
        stable_trees = self.stable_tree
        unstable_trees = self.unstable_tree
        uniq_l = uniq.tolist()
        for i in rest:
            t = uniq_l[i]
            k = sizes[i]
            if t in forced or not oks[i]:
                slow.append(ps[starts[i] : starts[i] + k])
                continue
            nid = 0 if nid_a is None else nid_a[i]
            e = stable_trees[nid].get(t)
            room = 0
            cid = -1
            if e is not None and e < 0:
                # a chain: without a prune due and with no stale dup, stable_node_dup()
                # returns the head dup; when it is full a new dup is made at the head
                cid = -e - 1
                ch = self.chains[cid]
                dl = ch.dups
                dla = np.fromiter(dl, np.int64, len(dl))
                lens = node_len[dla]
                cand = (lens > 0) & (lens < mps)
                # closed form only when at most the head dup can take pages: then every
                # search (pruning or not) picks the head, and a new dup is made when it
                # is full; a dup with room further down the list takes the exact path
                if len(dl) < 2 or (node_kfn[dla] < 0).any() or (lens <= 0).any() or cand[1:].any():
                    slow.append(ps[starts[i] : starts[i] + k])
                    continue
                if now >= self.chain_prune.a[cid] + prune_ns:
                    self._set_prune_time(cid, now)  # the first search prunes (no other effect)
                e = dl[0]
            if e is not None:
                ln = int(node_len[e])
                if node_kfn[e] < 0 or ln == 0:
                    slow.append(ps[starts[i] : starts[i] + k])  # a stale node: exact path
                    continue
                room = mps - ln if ln < mps else 0
                if k <= room:
                    app_group[i] = True
                    gnode[i] = e
                    continue
            tree_item = -1
            tr = unstable_trees[nid].get(t)
            if tr is not None:
                tf = int(mem.iflags.a[tr])
                if (tf & UNSTABLE) and bool(tf & SEQ_ODD) == seq_odd:
                    page = self._get_mergeable_page(tr)
                    if page is None or int(mem.ftoken.a[page]) != t or int(mem.fmap.a[page]) != 1 or e is not None:
                        slow.append(ps[starts[i] : starts[i] + k])  # aborted walks: exact path
                        continue
                    tree_item = tr
            # append what fits, then blocks of max_page_sharing pages: in each block the
            # first page waits in the unstable tree, the second pairs with it and becomes a
            # new KSM page (a new dup once one exists), the rest append (spec §3.6)
            plans.append(("blocks", ps[starts[i] : starts[i] + k], e if e is not None else -1, t, room, tree_item, cid))
        sel = np.repeat(app_group, sizes_a)
        app_pos = ps[sel]
        app_nodes = np.repeat(gnode[app_group], sizes_a[app_group])
        return plans, app_pos, app_nodes, (gnode[app_group], sizes_a[app_group]), slow, new_plan

    def _classify_new(
        self, rest: np.ndarray, vals: np.ndarray, uniq: np.ndarray, sizes: np.ndarray,
        ok: np.ndarray, forced: set[int], mps: int, seq_odd: bool, ps: np.ndarray,
        starts: np.ndarray,
    ) -> tuple[NewNodesPlan | None, np.ndarray]:
        """Contents not in the stable tree whose group fits in one KSM page: a lone page
        goes to the unstable tree, or the group (with the unstable tree's page of this
        pass, when there is one) makes one new KSM page. The same closed form as a
        "blocks" plan of one block, decided for all contents at once. Returns the plan
        and the groups left for the per-content loop."""
        cand = rest[(vals[rest] == MISSING) & ok[rest]]
        if forced and cand.shape[0]:
            cand = cand[~np.isin(uniq[cand], np.fromiter(forced, np.uint64, len(forced)))]
        if not cand.shape[0]:
            return None, rest
        mem = self.mem
        ut = self.unstable_tree[0]
        tr = np.fromiter((ut.get(t, -1) for t in uniq[cand].tolist()), np.int64, cand.shape[0])
        trs = np.maximum(tr, 0)
        trf = mem.iflags.a[trs]
        valid = (tr >= 0) & ((trf & UNSTABLE) != 0) & (((trf & SEQ_ODD) != 0) == seq_odd)
        page = self._mergeable_pages(trs)
        fine = (page >= 0) & (mem.ftoken.a[np.maximum(page, 0)] == uniq[cand])
        fine &= mem.fmap.a[np.maximum(page, 0)] == 1
        k = sizes[cand]
        # a valid tree item whose walk would abort stays with the exact path
        simple = np.where(valid, fine & (k + 1 <= mps), k <= mps)
        sel = cand[simple]
        if not sel.shape[0]:
            return None, rest
        keep = np.ones(vals.shape[0], dtype=bool)
        keep[sel] = False
        tree_item = np.where(valid, tr, -1)[simple]
        k = k[simple]
        idx = np.repeat(starts[sel], k) + (np.arange(int(k.sum())) - np.repeat(np.cumsum(k) - k, k))
        plan = NewNodesPlan(pos=ps[idx], sizes=k, tokens=uniq[sel], tree_items=tree_item)
        return plan, rest[keep[rest]]

    def _mergeable_pages(self, g: np.ndarray) -> np.ndarray:
        """get_mergeable_page() of many items: the frame, or -1."""
        bases = []
        ends = []
        for mm in self._mms.values():
            if mm.exiting:
                continue
            for v in mm.vmas:
                if v.mergeable:
                    bases.append(v.base)
                    ends.append(v.base + v.npages)
        out = np.full(g.shape[0], -1, dtype=np.int64)
        if not bases:
            return out
        order = np.argsort(bases)
        b = np.asarray(bases, dtype=np.int64)[order]
        e = np.asarray(ends, dtype=np.int64)[order]
        r = np.searchsorted(b, g, side="right") - 1
        inside = (r >= 0) & (g < e[np.maximum(r, 0)])
        fr = self.mem.pte.a[g].astype(np.int64)
        kind = self.mem.fnode.a[np.maximum(fr, 0)]
        okp = inside & (fr >= 0) & (kind != FRAME_FILE) & (kind != FRAME_SHMEM)
        out[okp] = fr[okp]
        return out

    def _merge_groups(
        self,
        g: np.ndarray,
        plans: list[tuple],
        app_pos: np.ndarray,
        app_nodes: np.ndarray,
        app_groups: tuple[np.ndarray, np.ndarray],
        new_plan: NewNodesPlan | None = None,
    ) -> None:
        """Carry out the plans of _classify_groups() with vector operations; the counter
        changes are those of the page-by-page path, summed."""
        mem = self.mem
        att_g: list[np.ndarray] = []  # items appended to a node
        att_n: list[np.ndarray] = []
        repl_g: list[np.ndarray] = []  # PTEs pointed at a KSM page
        repl_k: list[np.ndarray] = []
        seq_flag = SEQ_ODD if self.seqnr & 1 else 0
        shared = sharing = unshared = 0
        tracing = self.trace.want("ksm_merge_with_ksm_page")
        events: list[tuple[int, int, int, int | None, int]] = []  # (pos, order, item, ksm_page, pfn)
        hl_on = self.trace.want("ksm_remove_rmap_item")
        hl: list[np.ndarray] = []  # stable_tree_append() order: rows (pos, order, item)
        if app_pos.shape[0]:
            # one content per node: the groups' nodes are distinct, so += is exact
            gn, gs = app_groups
            self.node_len.a[gn] += gs.astype(np.int32)
            mem.fmap.a[self.node_kfn.a[gn]] += gs.astype(np.int32)
            ga = g[app_pos]
            sharing += ga.shape[0]
            if tracing:
                kfns = self.node_kfn.a[app_nodes].tolist()
                events += [(p, 0, gi, kf, kf) for p, gi, kf in zip(app_pos.tolist(), ga.tolist(), kfns)]
            if hl_on:
                hl.append(np.stack((app_pos, np.zeros_like(app_pos), ga)))
            att_g.append(ga)
            att_n.append(app_nodes.astype(np.int32))
            old = mem.pte.a[ga].copy()
            mem.pte.a[ga] = self.node_kfn.a[app_nodes]
            self.put_frames(old.astype(np.int32))
        if new_plan is not None:
            sh, sg, un = self._merge_new_nodes(
                g, new_plan, att_g, att_n, repl_g, repl_k, events, tracing, hl if hl_on else None
            )
            shared += sh
            sharing += sg
            unshared += un
        for _plan, pos, ref, t, *plan_extra in plans:
            gg = g[pos]
            node, room, tree_item, cid = ref, plan_extra[0], plan_extra[1], plan_extra[2]
            if node >= 0 and room:
                kfn = int(self.node_kfn.a[node])
                head = gg[:room]
                self.node_len.a[node] += head.shape[0]
                sharing += head.shape[0]
                if tracing:
                    events += [(p, 0, gi, kfn, kfn) for p, gi in zip(pos[:room].tolist(), head.tolist())]
                if hl_on:
                    hl.append(np.stack((pos[:room], np.zeros(head.shape[0], np.int64), head)))
                att_g.append(head)
                att_n.append(np.full(head.shape[0], node, np.int32))
                repl_g.append(head)
                repl_k.append(np.full(head.shape[0], kfn, np.int32))
                mem.fmap.a[kfn] += head.shape[0]
                gg = gg[room:]
            seqv = gg.astype(np.int64)
            bpos = pos[room:] if node >= 0 and room else pos  # visit positions of seqv
            if tree_item >= 0:
                seqv = np.concatenate((np.array([tree_item], dtype=np.int64), seqv))
                bpos = np.concatenate(([-1], bpos))
                unshared -= 1  # the tree item was counted when it entered the tree
            nid = self._nid(int(mem.pte.a[int(seqv[0])]))
            tree = self.stable_tree[nid]
            prior = node
            for c0 in range(0, seqv.shape[0], self.max_page_sharing):
                blk = seqv[c0 : c0 + self.max_page_sharing]
                if blk.shape[0] == 1:
                    gi = int(blk[0])
                    self.unstable_tree[nid][t] = gi
                    mem.iflags.a[gi] = (int(mem.iflags.a[gi]) & ~(SEQ_ODD | STABLE)) | UNSTABLE | seq_flag
                    unshared += 1
                    break
                kfn = int(mem.pte.a[int(blk[1])])
                n = self._new_node(t, kfn, nid)
                mem.fnode.a[kfn] = n
                if prior < 0:
                    tree.add(t, n, int(bpos[c0 + 1]))
                else:
                    if cid < 0:
                        cid = self._chain_new(t, nid, prior)
                    self._chain_add_dup(cid, n)
                prior = n
                self.node_len.a[n] = blk.shape[0]
                if tracing:
                    # try_to_merge_two_pages(): the current page becomes the KSM page
                    # (ksm_page NULL), then the tree page joins it; the rest append
                    bp = bpos[c0 : c0 + blk.shape[0]].tolist()
                    events.append((bp[1], 0, int(blk[1]), None, kfn))
                    events.append((bp[1], 1, int(blk[0]), kfn, kfn))
                    events += [(p, 0, int(gi), kfn, kfn) for p, gi in zip(bp[2:], blk[2:].tolist())]
                if hl_on:
                    # the tree item is appended first, then the current page, then the rest
                    bpa = np.asarray(bpos[c0 : c0 + blk.shape[0]], dtype=np.int64)
                    bpa[0] = bpa[1]
                    order = np.zeros(blk.shape[0], np.int64)
                    order[1] = 1
                    hl.append(np.stack((bpa, order, blk.astype(np.int64))))
                shared += 1
                sharing += blk.shape[0] - 1
                att_g.append(blk)
                att_n.append(np.full(blk.shape[0], n, np.int32))
                others = np.delete(blk, 1)
                repl_g.append(others)
                repl_k.append(np.full(others.shape[0], kfn, np.int32))
                mem.fmap.a[kfn] += others.shape[0]
        self.pages_shared += shared
        self.pages_sharing += sharing
        self.pages_unshared += unshared
        if repl_g:
            rg = np.concatenate(repl_g)
            rk = np.concatenate(repl_k)
            old = mem.pte.a[rg].copy()
            mem.pte.a[rg] = rk
            self.put_frames(old.astype(np.int32))
        if att_g:
            ag = np.concatenate(att_g)
            an = np.concatenate(att_n)
            mem.iflags.a[ag] = (mem.iflags.a[ag] & ~np.uint8(UNSTABLE | SEQ_ODD)) | STABLE
            self._attach_ival(ag, an)
            mmids = self._mm_by_gpid(ag)
            for mmid, cnt in zip(*np.unique(mmids, return_counts=True)):
                self._mms[int(mmid)].ksm_merging_pages += int(cnt)
        if hl:
            rows = np.concatenate(hl, axis=1)
            self._note_appends(rows[2][np.lexsort((rows[1], rows[0]))])
        if events:
            # written by _flush_trace() at their places among the page-by-page merges
            self._trace_queue += [
                (pos, order, "ksm_merge_with_ksm_page",
                 {"ksm_page": kpage, "pfn": pfn, "rmap_item": gi, "mm": self._mmid(gi), "err": 0})
                for pos, order, gi, kpage, pfn in events
            ]

    def _merge_new_nodes(
        self, g: np.ndarray, plan: NewNodesPlan, att_g: list[np.ndarray], att_n: list[np.ndarray],
        repl_g: list[np.ndarray], repl_k: list[np.ndarray], events: list, tracing: bool,
        hl: list[np.ndarray] | None = None,
    ) -> tuple[int, int, int]:
        """A NewNodesPlan: per content, the sequence [unstable tree item] + the batch's
        pages; one page alone is inserted in the unstable tree, otherwise the second of
        the sequence becomes the KSM page (try_to_merge_two_pages) and the others join it
        (stable_tree_append). Returns (shared, sharing, unshared) changes."""
        mem = self.mem
        k = plan.sizes
        has = plan.tree_items >= 0
        first = np.cumsum(k) - k  # index of each group's first page in plan.pos
        gp = g[plan.pos]
        seq_flag = SEQ_ODD if self.seqnr & 1 else 0
        # lone pages: unstable_tree_search_insert() inserts them
        lone = ~has & (k == 1)
        unshared = 0
        if lone.any():
            gl = gp[first[lone]]
            self.unstable_tree[0].update(zip(plan.tokens[lone].tolist(), gl.tolist()))
            mem.iflags.a[gl] = (mem.iflags.a[gl] & ~np.uint8(SEQ_ODD | STABLE)) | UNSTABLE | seq_flag
            unshared += gl.shape[0]
        mk = ~lone
        if not mk.any():
            return 0, 0, unshared
        pages = np.repeat(mk, k)
        gp, pos = gp[pages], plan.pos[pages]
        k, has, toks, items = k[mk], has[mk], plan.tokens[mk], plan.tree_items[mk]
        first = np.cumsum(k) - k
        length = k + has  # pages in the new KSM page
        # the KSM page is the page of the second of the sequence: the group's first page
        # when a tree item leads, else its second
        kidx = first + np.where(has, 0, 1)
        kg = gp[kidx]
        kfn = mem.pte.a[kg].astype(np.int64)
        nodes = self._new_nodes(toks, kfn, length)
        mem.fnode.a[kfn] = nodes
        kpos = pos[kidx]
        tree = self.stable_tree[0]
        tree.add_many(toks, nodes, kpos)
        # members: every page of the groups, plus the tree items
        node_of_page = np.repeat(nodes, k)
        kfn_of_page = np.repeat(kfn, k)
        is_k = np.zeros(gp.shape[0], dtype=bool)
        is_k[kidx] = True
        others = np.concatenate((gp[~is_k], items[has]))
        others_k = np.concatenate((kfn_of_page[~is_k], kfn[has]))
        att_g += [gp, items[has]]
        att_n += [node_of_page.astype(np.int32), nodes[has].astype(np.int32)]
        repl_g.append(others)
        repl_k.append(others_k.astype(np.int32))
        np.add.at(mem.fmap.a, kfn, (length - 1).astype(np.int32))
        if hl is not None:
            # stable_tree_append() order: the sequence's first item, then the KSM page's,
            # both at the KSM page's place, then the others at theirs
            pr = pos.astype(np.int64, copy=True)
            orr = np.zeros(gp.shape[0], dtype=np.int64)
            orr[kidx] = 1
            pr[first[~has]] = kpos[~has]
            hl.append(np.stack((pr, orr, gp.astype(np.int64))))
            if has.any():
                hl.append(np.stack((kpos[has].astype(np.int64), np.zeros(int(has.sum()), np.int64),
                                    items[has].astype(np.int64))))
        if tracing:
            # try_to_merge_two_pages(): the current page becomes the KSM page (ksm_page
            # NULL), then the tree page joins it; the rest append, each at its place
            kl = kfn.tolist()
            for j, (kp, kgi, kf) in enumerate(zip(kpos.tolist(), kg.tolist(), kl)):
                events.append((kp, 0, kgi, None, kf))
                if has[j]:
                    events.append((kp, 1, int(items[j]), kf, kf))
                else:
                    events.append((kp, 1, int(gp[first[j]]), kf, kf))
            rest = ~is_k
            if not has.all():
                rest[first[~has]] = False
            kf_all = np.repeat(kfn, k)
            events += [(p, 0, gi, kf, kf) for p, gi, kf in
                       zip(pos[rest].tolist(), gp[rest].tolist(), kf_all[rest].tolist())]
        shared = nodes.shape[0]
        sharing = int((length - 1).sum())
        return shared, sharing, unshared - int(np.count_nonzero(has))

    def _new_nodes(self, tokens: np.ndarray, kfns: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """_new_node() for many plain nodes of NUMA node 0, in order."""
        m = tokens.shape[0]
        take = min(m, len(self._free_nodes))
        ids = np.empty(m, dtype=np.int64)
        if take:
            ids[:take] = self._free_nodes[::-1][:take]
            del self._free_nodes[-take:]
        if m > take:
            start = self.node_token.extend(m - take)
            for arr in (self.node_kfn, self.node_len, self.node_chain, self.node_alive, self.node_nid):
                arr.extend(m - take)
            ids[take:] = np.arange(start, start + m - take)
        self.node_token.a[ids] = tokens
        self.node_kfn.a[ids] = kfns
        self.node_len.a[ids] = lengths
        self.node_chain.a[ids] = -1
        self.node_alive.a[ids] = True
        self.node_nid.a[ids] = 0
        return ids

    def _insert_unstable_bulk(self, g: np.ndarray) -> None:
        mem = self.mem
        mem.iflags.a[g] = (mem.iflags.a[g] & ~np.uint8(UNSTABLE | SEQ_ODD | STABLE)) | (
            UNSTABLE | (SEQ_ODD if self.seqnr & 1 else 0)
        )
        self.pages_unshared += g.shape[0]

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
        node = self._stable_tree_search(token, nid)
        if node is not None:
            kfn = int(self.node_kfn.a[node])
            self._replace_page(g, kfn)
            self._emit_merge_with_ksm(g, node, err=0)
            self._stable_tree_append(g, node, False)
            return
        t = self._unstable_tree_search_insert(g, f, token, nid)
        if t is None:
            return
        # try_to_merge_two_pages(): this page becomes the KSM page, the tree page joins it
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
        mem.pte.a[g] = kfn
        mem.fmap.a[kfn] += 1
        self.put_frames(np.array([old], dtype=np.int32))

    def _merge_with_zero_page(self, g: np.ndarray, pos: np.ndarray | None = None) -> None:
        """try_to_merge_with_zero_page(): map the shared zero page, dirty-tagged as KSM's."""
        mem = self.mem
        old = mem.pte.a[g].copy()
        mem.pte.a[g] = PTE_KSM_ZERO
        self.put_frames(old)
        self.ksm_zero_pages += g.shape[0]
        mmids = self._mm_by_gpid(g)
        for mmid, cnt in zip(*np.unique(mmids, return_counts=True)):
            self._mms[int(mmid)].ksm_zero_pages += int(cnt)
        if self.trace.want("ksm_merge_one_page"):
            if pos is None:
                for gi, mi in zip(g.tolist(), mmids.tolist()):
                    self._emit("ksm_merge_one_page", pfn=0, rmap_item=gi, mm=mi, err=0)
            else:  # a vector merge: written at the pages' places (_flush_trace)
                self._trace_queue += [
                    (p, 0, "ksm_merge_one_page", {"pfn": 0, "rmap_item": gi, "mm": mi, "err": 0})
                    for p, gi, mi in zip(pos.tolist(), g.tolist(), mmids.tolist())
                ]

    # ------------------------------------------------------------------ frames
    def put_frames(self, frames: np.ndarray) -> None:
        """Drop one mapping of each frame; a frame with no mapping left is freed, and a
        freed KSM page leaves its stable node stale (ksm_get_folio() will fail)."""
        mem = self.mem
        if not frames.shape[0]:
            return
        if frames.shape[0] == 1:
            fr = int(frames[0])
            mem.fmap.a[fr] -= 1
            if mem.fmap.a[fr] > 0:
                return
            uniq = frames
        else:
            uniq, cnt = np.unique(frames, return_counts=True)
            mem.fmap.a[uniq] -= cnt.astype(np.int32)
            uniq = uniq[mem.fmap.a[uniq] <= 0]
        if not uniq.shape[0]:
            return
        nodes = mem.fnode.a[uniq]
        ks = nodes[nodes >= 0]
        if ks.shape[0]:
            self._stale_kpfn.update(zip(ks.tolist(), self.node_kfn.a[ks].tolist()))
            self.node_kfn.a[ks] = -1
            self._stale_nodes.update(ks.tolist())
        mem.free_frames(uniq.astype(np.int32))

    # ------------------------------------------------------------------ rmap_item removal
    def _oldchecksum(self, g: np.ndarray, fl: np.ndarray) -> np.ndarray:
        """rmap_item->oldchecksum of items (a stable item keeps it implicitly)."""
        v = self.mem.ival.a[g].copy()
        st = (fl & STABLE) != 0
        if st.any():
            v[st] = calc_checksum(self.node_token.a[v[st].astype(np.int64)])
            if self.chk_exc:
                for i in np.flatnonzero(st).tolist():
                    e = self.chk_exc.get(int(g[i]))
                    if e is not None:
                        v[i] = e
        return v

    def _attach_ival(self, g: np.ndarray, nodes: np.ndarray) -> None:
        """Store the node in place of the checksum; a checksum that is not the node's
        content's (a forked page attached without a checksum round) is kept aside."""
        ival = self.mem.ival.a
        if g.shape[0] == 1:
            gi, n = int(g[0]), int(nodes[0])
            c = int(ival[gi])
            if c != calc_checksum1(int(self.node_token.a[n])):
                self.chk_exc[gi] = c
            ival[gi] = n
            return
        cur = ival[g]
        odd = cur != calc_checksum(self.node_token.a[nodes])
        if odd.any():
            for gi, c in zip(g[odd].tolist(), cur[odd].tolist()):
                self.chk_exc[gi] = c
        ival[g] = nodes

    def _detach_ival(self, g: np.ndarray, nodes: np.ndarray) -> None:
        """The item leaves its node: its checksum comes back."""
        if g.shape[0] == 1:
            self.mem.ival.a[int(g[0])] = calc_checksum1(int(self.node_token.a[int(nodes[0])]))
        else:
            self.mem.ival.a[g] = calc_checksum(self.node_token.a[nodes])
        if self.chk_exc:
            for gi in g.tolist():
                c = self.chk_exc.pop(gi, None)
                if c is not None:
                    self.mem.ival.a[gi] = c

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
        mmids = self._mm_by_gpid(g)
        for mmid, cnt in zip(*np.unique(mmids, return_counts=True)):
            self._mms[int(mmid)].ksm_merging_pages -= int(cnt)

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
        mmids = self._mm_by_gpid(g)
        for mmid, cnt in zip(*np.unique(mmids, return_counts=True)):
            self._mms[int(mmid)].ksm_rmap_items -= int(cnt)

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
    def _new_node(self, token: int, kfn: int, nid: int) -> int:
        if self._free_nodes:
            n = self._free_nodes.pop()
        else:
            n = self.node_token.extend(1)
            for arr in (self.node_kfn, self.node_len, self.node_chain, self.node_alive, self.node_nid):
                arr.extend(1)
        self.node_token.a[n] = token
        self.node_kfn.a[n] = kfn
        self.node_len.a[n] = 0
        self.node_chain.a[n] = -1
        self.node_alive.a[n] = True
        self.node_nid.a[n] = nid
        return n

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
                for gi, mi in zip(named, mms):
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

    def _note_appends(self, g: np.ndarray) -> None:
        """stable_tree_append() of items ``g``, in this order (only while traced)."""
        n = self.mem.iflags.n
        if self._hlist_seq.shape[0] < n:
            grown = np.zeros(max(n, 2 * self._hlist_seq.shape[0]), dtype=np.int64)
            grown[: self._hlist_seq.shape[0]] = self._hlist_seq
            self._hlist_seq = grown
        self._hlist_seq[g] = self._hlist_next + 1 + np.arange(g.shape[0], dtype=np.int64)
        self._hlist_next += g.shape[0]

    def _hlists(self, nodes: list[int]) -> dict[int, list[int]]:
        """The items on each node's hlist, head (newest append) first; items appended
        while the event was not traced count as older, in address order."""
        if not self.trace.want("ksm_remove_rmap_item") or not nodes:
            return {}
        mem = self.mem
        n = mem.iflags.n
        cand = np.flatnonzero((mem.iflags.a[:n] & STABLE) != 0)
        cn = mem.ival.a[cand].astype(np.int64)
        hit = np.isin(cn, np.asarray(nodes, dtype=np.int64))
        items, owner = cand[hit], cn[hit]
        seq = np.zeros(items.shape[0], dtype=np.int64)
        known = items < self._hlist_seq.shape[0]
        seq[known] = self._hlist_seq[items[known]]
        order = np.lexsort((-items, -seq, owner))
        out: dict[int, list[int]] = {}
        for node, gi in zip(owner[order].tolist(), items[order].tolist()):
            out.setdefault(node, []).append(gi)
        return out

    def _stale(self, n: int) -> bool:
        return int(self.node_kfn.a[n]) < 0

    def _free_chain(self, cid: int) -> None:
        """free_stable_node_chain(): rb_erase() of the chain, chains--."""
        ch = self._chain_drop(cid)
        tree = self.stable_tree[ch.nid]
        if tree.get(ch.token) == -(cid + 1):
            del tree[ch.token]

    # -- chain bookkeeping: Chain objects hold the dup lists; numpy mirrors of whether a
    #    chain is live, its head dup and its prune time let a batch check every chain at
    #    once (_tree_has_special)
    def _chain_new(self, token: int, nid: int, first: int) -> int:
        """alloc_stable_node_chain(): the chain takes the node's place in the tree and the
        node becomes its first dup (chains++, dups++); prune time = now."""
        cid = self._next_chain
        self._next_chain += 1
        for arr in (self.chain_live, self.chain_head, self.chain_prune, self.chain_ivl_lo,
                    self.chain_ivl_hi, self.chain_ivl_flags, self.chain_ivl_ver):
            arr.extend(1)
        self.chain_ivl_ver.a[cid] = -1
        self.chains[cid] = Chain(token, nid, [first])
        self.chain_live.a[cid] = True
        self.chain_head.a[cid] = first
        self.chain_prune.a[cid] = self._clock_ns()
        self.node_chain.a[first] = cid
        self.stable_tree[nid][token] = -(cid + 1)
        self.stable_node_chains += 1
        self.stable_node_dups += 1
        return cid

    def _chain_add_dup(self, cid: int, n: int) -> None:
        """stable_node_chain_add_dup(): at the head of the hlist, dups++."""
        self.chains[cid].dups.insert(0, n)
        self.chain_head.a[cid] = n
        self.node_chain.a[n] = cid
        self.stable_node_dups += 1

    def _chain_remove_dup(self, cid: int, n: int) -> None:
        """__stable_node_dup_del(): dups--."""
        dl = self.chains[cid].dups
        dl.remove(n)
        self.chain_head.a[cid] = dl[0] if dl else -1
        self.stable_node_dups -= 1

    def _chain_drop(self, cid: int) -> Chain:
        ch = self.chains.pop(cid)
        self.chain_live.a[cid] = False
        self.stable_node_chains -= 1
        return ch

    def _set_prune_time(self, cid: int, t: int) -> None:
        self.chain_prune.a[cid] = t

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
            cur = rb.left[cur] if token < cur else rb.right[cur]

    def _detaches_from_chain(self, g: np.ndarray, fl: np.ndarray, ksm: np.ndarray) -> bool:
        """Will a page of this batch leave a chain's dup (a COW noticed lazily)? Then a
        dup may gain room in the middle of the batch, and later searches passing the
        chain would act on it: the batch must run in visit order."""
        if not self.chains:
            return False
        st = ~ksm & ((fl & STABLE) != 0)
        if not st.any():
            return False
        nodes = self.mem.ival.a[g[st]].astype(np.int64)
        return bool((self.node_chain.a[nodes] >= 0).any())

    def _dups(self) -> tuple[np.ndarray, np.ndarray]:
        """Every live dup and its chain id: from the chains' lists when dups are few
        (a batch may be cut in many windows: no pass over every node then)."""
        if self.stable_node_dups * 8 < self.node_alive.n:
            lists = [ch.dups for ch in self.chains.values()]
            ids = np.fromiter(itertools.chain.from_iterable(lists), np.int64, sum(map(len, lists)))
        else:
            n = self.node_alive.n
            ids = np.flatnonzero(self.node_alive.a[:n] & (self.node_chain.a[:n] >= 0))
        return ids, self.node_chain.a[ids].astype(np.int64)

    def _chains_with_head_only(self, mps: int) -> np.ndarray:
        """Per chain id: live, at least two dups, none stale, and no dup but the head
        with room for a page (then every search, pruning or not, picks the head)."""
        ids, chain = self._dups()
        nc = self.chain_live.n
        ndups = np.bincount(chain, minlength=nc)[:nc]
        lens = self.node_len.a[ids]
        bad = self.node_kfn.a[ids] < 0
        nonhead = self.chain_head.a[chain] != ids
        bad |= nonhead & (lens > 0) & (lens < mps)
        bad |= lens <= 0
        nbad = np.bincount(chain[bad], minlength=nc)[:nc]
        return self.chain_live.a[:nc] & (ndups >= 2) & (nbad == 0)

    def _tree_has_special(self) -> bool:
        """Is there a node whose visit by a search has a side effect (a stale KSM page, a
        chain of one dup or none, a chain whose dup with room for two more pages is not its
        head — a search would move it there)? Without one, searches can be skipped. Chains
        due for a prune (which then changes nothing but the prune time) are collected in
        ``self._due_chains`` for the caller. Checked for all chains at once."""
        self._due_chains = np.zeros(0, dtype=np.int64)
        if self._stale_nodes:
            return True
        if not self.chains:
            return False
        ids, chain = self._dups()
        nc = self.chain_live.n
        live = self.chain_live.a[:nc]
        ndups = np.bincount(chain, minlength=nc)[:nc]
        if (live & (ndups < 2)).any():
            return True
        lens = self.node_len.a[ids]
        room2 = (lens > 0) & (lens + 1 < self.max_page_sharing)
        if room2.any() and (self.chain_head.a[chain[room2]] != ids[room2]).any():
            return True
        prune_ns = self.stable_node_chains_prune_millisecs * 1_000_000
        due = live & (self._clock_ns() >= self.chain_prune.a[:nc] + prune_ns)
        if due.any():
            # a pruning stable_node_dup() takes the fullest dup with room, the others the
            # first: with two dups with room, which search prunes first decides
            cand = (lens > 0) & (lens < self.max_page_sharing)
            if (due & (np.bincount(chain[cand], minlength=nc)[:nc] >= 2)).any():
                return True
        self._due_chains = np.flatnonzero(due)
        return False

    def _prune_passed_chains(self, keys: np.ndarray) -> None:
        """A due chain (whose prune changes nothing but the prune time) is pruned if some
        search of this batch walks through it: a search key inside its rbtree interval
        (intervals are kept per chain until the tree's shape changes)."""
        if not keys.shape[0]:
            return
        cids = self._due_chains
        ver = self.chain_ivl_ver.a
        if len(self.stable_tree) == 1:
            stale = cids[ver[cids] != self.stable_tree[0].rb.version].tolist()
        else:
            stale = [c for c in cids.tolist()
                     if ver[c] != self.stable_tree[self.chains[c].nid].rb.version]
        for c in stale:
            ch = self.chains[c]
            tree = self.stable_tree[ch.nid]
            lo, hi = tree.interval(ch.token)
            self.chain_ivl_lo.a[c] = max(lo, 0)
            self.chain_ivl_hi.a[c] = min(hi, (1 << 64) - 1)
            self.chain_ivl_flags.a[c] = (lo >= 0) | ((hi < (1 << 64)) << 1)
            ver[c] = tree.rb.version
        skeys = np.sort(keys)
        flags = self.chain_ivl_flags.a[cids]
        left = np.where(flags & 1, np.searchsorted(skeys, self.chain_ivl_lo.a[cids], "right"), 0)
        right = np.where(flags & 2, np.searchsorted(skeys, self.chain_ivl_hi.a[cids], "left"), skeys.shape[0])
        hit = cids[right > left]
        if hit.shape[0]:
            now = self._clock_ns()
            self.chain_prune.a[hit] = now

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
    def _all_nodes(self) -> list[int]:
        return np.flatnonzero(self.node_alive.a[: self.node_alive.n]).tolist()

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
        self.unstable_tree = [{} for _ in range(trees)]

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

"""Tasks, address spaces and physical memory, as numpy struct-of-arrays.

Every mapped virtual page has a *global page id* (gpid): each mmap reserves a contiguous
gpid range that is never reused, so per-page state (the PTE, the rmap_item fields) lives in
flat arrays that a ksmd batch can slice without a Python loop. Physical pages are *frames*
with a content token, a mapcount and a stable-node link (folio_stable_node()).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

import numpy as np

from ksmfs.linux import PAGE_SIZE as PAGE_SIZE

from .errors import KsmError

PAGE_SHIFT = 12
HPAGE_PMD_NR = 512  # base pages of a transparent huge page (2 MiB on x86-64)

# VM_* flags (include/linux/mm.h, 64-bit); VM_MERGEABLE is bit 31.
VM_READ = 0x1
VM_WRITE = 0x2
VM_EXEC = 0x4
VM_SHARED = 0x8
VM_MAYREAD = 0x10
VM_MAYWRITE = 0x20
VM_MAYEXEC = 0x40
VM_MAYSHARE = 0x80
VM_GROWSDOWN = 0x100
VM_PFNMAP = 0x400
VM_LOCKED = 0x2000
VM_IO = 0x4000
VM_DONTEXPAND = 0x40000
VM_ACCOUNT = 0x100000
VM_HUGETLB = 0x400000
VM_MIXEDMAP = 0x10000000
VM_MERGEABLE = 0x80000000

# ksm_compatible() / vma_ksm_compatible(): any of these makes a VMA unmergeable.
VM_KSM_INCOMPATIBLE = (
    VM_SHARED | VM_MAYSHARE | VM_PFNMAP | VM_IO | VM_DONTEXPAND | VM_HUGETLB | VM_MIXEDMAP
)

# PTE encodings (int32): >= 0 is a frame number.
PTE_NONE = -1  # never faulted (reads would map the shared zero page: not anon, not scanned)
PTE_KSM_ZERO = -2  # KSM-placed zero page (use_zero_pages)
PTE_SWAP0 = -3  # swap slot s is stored as PTE_SWAP0 - s
# frame numbers live in the int32 PTEs (and stable nodes' kpfn): 2^31 - 1 frames at most,
# 8 TiB of simulated memory
FRAME_MAX = (1 << 31) - 1

MAPCOUNT16_MAX = (1 << 16) - 1
MAPCOUNT_MAX = (1 << 31) - 1  # page_mapcount() is an atomic_t

# frame kinds kept in frame_node when the frame is not a KSM page
FRAME_ANON = -1
FRAME_FILE = -2  # page-cache page of a private file mapping: present but not anon
FRAME_SHMEM = -3  # MAP_SHARED anonymous memory
FRAME_FREE = -4

UNIQUE_BIT = np.uint64(1 << 63)


class GrowArray:
    """A numpy array that doubles its capacity; untouched capacity costs no RSS because
    numpy's zeroed allocations are lazily committed by the OS."""

    __slots__ = ("a", "fill", "n")

    def __init__(self, dtype: type | np.dtype, fill: int = 0, capacity: int = 1024) -> None:
        self.fill = fill
        self.a = self._new(np.dtype(dtype), capacity)
        self.n = 0

    def _new(self, dtype: np.dtype, cap: int) -> np.ndarray:
        # zeros, even for another fill value: slots get their fill in extend(), so the
        # capacity not yet used stays uncommitted (np.full would touch every page of it)
        return np.zeros(cap, dtype=dtype)

    def reserve(self, total: int) -> None:
        if total > self.a.shape[0]:
            cap = max(total, self.a.shape[0] * 2)
            new = self._new(self.a.dtype, cap)
            new[: self.n] = self.a[: self.n]
            self.a = new

    def extend(self, count: int, init: bool = True) -> int:
        """Append ``count`` fill-valued slots (``init=False``: the caller sets them all at
        once, so the fill need not be written first); returns the first new index."""
        start = self.n
        self.reserve(start + count)
        self.n = start + count
        if self.fill and init:
            self.a[start : start + count] = self.fill
        return start


class PhysMem:
    """Frames (physical pages) and the per-gpid page table / rmap_item arrays."""

    def __init__(self, nr_nodes: int = 1) -> None:
        self.nr_nodes = nr_nodes
        # per frame
        self.ftoken = GrowArray(np.uint64)  # content token (0: the zero page)
        # mapcount: 16 bits while every count fits (2 bytes a frame less), widened to 32
        # bits by ensure_mapcount() before a change would pass MAPCOUNT16_MAX; change it
        # only through map_add() / map_put()
        self.fmap = GrowArray(np.uint16)
        self.fnode = GrowArray(np.int32, FRAME_FREE)  # stable node id, or a FRAME_* kind
        # NUMA node of each frame; not kept at all on a single-node machine
        self.fnid = GrowArray(np.uint8) if nr_nodes > 1 else None
        # compound page (transparent huge page) of each frame, -1 for a base page; the
        # frames of each compound by id (only ksmd's merges split them: split_huge_page()).
        # Kept only from the first compound page on (4 bytes a frame that a machine
        # without THPs never needs): read it through compound_of() / in_compound().
        self.fcomp: GrowArray | None = None
        self.compounds: dict[int, np.ndarray] = {}
        self._next_compound = 0
        self._free_hint = 0
        # per gpid: page table and rmap_item
        self.pte = GrowArray(np.int32, PTE_NONE)  # frame, or a PTE_* value
        # rmap_item flags (ksm_defs.HAS_ITEM, STABLE, UNSTABLE, SEQ_ODD: rmap_item->address's)
        self.iflags = GrowArray(np.uint8)
        # smart scan: age (visits, saturating at 15 — only ages up to 9 matter to
        # skip_age()) in the low nibble, remaining_skips (at most 8) in the high one
        self.ags = GrowArray(np.uint8)
        # oldchecksum, or, while the item is STABLE, its stable node (rmap_item->head);
        # a stable item's checksum is that of its node's content (Ksm.chk_exc otherwise)
        self.ival = GrowArray(np.uint32)
        # swap slots
        self.swap_token = GrowArray(np.uint64)
        self.swap_count = GrowArray(np.int32)
        self._swap_free: list[int] = []
        self.nr_free_frames = 0

    # -- gpid ranges ----------------------------------------------------------------------
    def reserve_gpids(self, count: int) -> int:
        base = self.pte.extend(count)
        for arr in (self.iflags, self.ags, self.ival):
            arr.extend(count)
        return base

    def reserve(self, pages: int) -> None:
        """Pre-size for a workload of ``pages`` pages (benchmarks, big scenarios)."""
        for arr in (self.pte, self.iflags, self.ags, self.ival):
            arr.reserve(arr.n + pages)
        frame_arrays: tuple[GrowArray | None, ...] = (
            self.ftoken, self.fmap, self.fnode, self.fnid, self.fcomp)
        for farr in frame_arrays:
            if farr is not None:
                farr.reserve(farr.n + pages)

    # -- frames ---------------------------------------------------------------------------
    def nid_of(self, frames: np.ndarray) -> np.ndarray:
        if self.fnid is None:
            return np.zeros(frames.shape[0], dtype=np.uint8)
        nids: np.ndarray = self.fnid.a[frames]
        return nids

    def _take_free(self, n: int) -> np.ndarray:
        """Up to n free frames, found by scanning fnode from a moving hint. Keeping no free
        list costs nothing per freed frame (RSS budget); the hint makes the search
        amortised linear, wrapping once when the end is reached."""
        out: list[np.ndarray] = []
        got = 0
        total = self.fnode.n
        hint = min(self._free_hint, total)
        for lo, hi in ((hint, total), (0, hint)):  # each frame is looked at once
            pos = lo
            while got < n and pos < hi:
                end = min(hi, pos + max(4 * (n - got), 65536))
                idx = np.flatnonzero(self.fnode.a[pos:end] == FRAME_FREE)[: n - got]
                if idx.shape[0]:
                    out.append((idx + pos).astype(np.int32))
                    got += idx.shape[0]
                    if got >= n:
                        end = pos + int(idx[-1]) + 1
                pos = end
            self._free_hint = pos
            if got >= n:
                break
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int32)

    def _extend_frames(self, count: int, init: bool = True) -> None:
        """``count`` new frames at the end: free, mapcount 0, base pages (``init=False``:
        token, mapcount, kind and node are left for the caller to set)."""
        if self.ftoken.n + count > FRAME_MAX:
            raise KsmError(errno.ENOMEM, f"out of frames: {self.ftoken.n} + {count} frames "
                                         f"exceed the simulation's limit of {FRAME_MAX}")
        for arr in (self.ftoken, self.fmap, self.fnode, self.fnid):
            if arr is not None:
                arr.extend(count, init)
        if self.fcomp is not None:
            self.fcomp.extend(count)

    def alloc_frames(self, tokens: np.ndarray, kind: int = FRAME_ANON, nid: int = 0) -> np.ndarray:
        """Allocate one frame per token (mapcount 1); returns the frame numbers."""
        n = int(tokens.shape[0])
        if not self.nr_free_frames:
            # the usual case while memory is filled: new frames at the end, set by slices
            start = self.ftoken.n
            self._extend_frames(n, init=False)
            sl = slice(start, start + n)
            self.ftoken.a[sl] = tokens
            self.fmap.a[sl] = 1
            self.fnode.a[sl] = kind
            if self.fnid is not None:
                self.fnid.a[sl] = nid
            return np.arange(start, start + n, dtype=np.int32)
        reuse = self._take_free(n)
        take = reuse.shape[0]
        self.nr_free_frames -= take
        frames = np.empty(n, dtype=np.int32)
        frames[:take] = reuse
        if n > take:
            start = self.ftoken.n
            self._extend_frames(n - take)
            frames[take:] = np.arange(start, start + n - take, dtype=np.int32)
        self.ftoken.a[frames] = tokens
        self.fmap.a[frames] = 1
        self.fnode.a[frames] = kind
        if self.fcomp is not None:
            self.fcomp.a[frames] = -1
        if self.fnid is not None:
            self.fnid.a[frames] = nid
        return frames

    def ensure_mapcount(self, top: int) -> None:
        """Make fmap able to hold a mapcount of ``top``: widen it from 16 to 32 bits once a
        count would pass MAPCOUNT16_MAX (a KSM page shared by more than 65535 PTEs: a large
        max_page_sharing, or many forks)."""
        if top <= MAPCOUNT16_MAX or self.fmap.a.dtype == np.int32:
            if top > MAPCOUNT_MAX:
                raise KsmError(errno.EOVERFLOW, f"a mapcount of {top} is more than the "
                                                f"kernel's atomic_t holds ({MAPCOUNT_MAX})")
            return
        self.fmap.a = self.fmap.a.astype(np.int32)
        self.ensure_mapcount(top)

    def map_add(self, frames: np.ndarray | int, counts: np.ndarray | int = 1) -> None:
        """Add ``counts`` mappings to ``frames`` (repeated frames add up, as np.add.at)."""
        fr = np.atleast_1d(np.asarray(frames))
        if not fr.shape[0]:
            return
        c = np.asarray(counts, dtype=np.int64)
        if self.fmap.a.dtype != np.int32:
            cur = int(self.fmap.a[fr].max())
            if cur + (int(c.sum()) if c.ndim else int(c) * fr.shape[0]) > MAPCOUNT16_MAX:
                # that bound is loose for many distinct frames: the exact new maximum
                u, inv = np.unique(fr, return_inverse=True)
                tot = np.zeros(u.shape[0], dtype=np.int64)
                np.add.at(tot, inv, np.broadcast_to(c, fr.shape))
                self.ensure_mapcount(int((self.fmap.a[u].astype(np.int64) + tot).max()))
        a = self.fmap.a
        if fr.shape[0] == 1:
            a[fr[0]] += int(c.sum()) if c.ndim else int(c)
        else:
            np.add.at(a, fr, c.astype(a.dtype))

    def map_put(self, frames: np.ndarray, counts: np.ndarray | int) -> np.ndarray:
        """Drop ``counts`` mappings of distinct ``frames``; returns those left with none."""
        a = self.fmap.a
        left = a[frames].astype(np.int64) - counts
        a[frames] = np.maximum(left, 0)
        gone: np.ndarray = frames[left <= 0]
        return gone

    def make_compound(self, frames: np.ndarray) -> int:
        """Make anonymous frames (HPAGE_PMD_NR of them) one compound page; its id."""
        cid = self._next_compound
        self._next_compound += 1
        fr = np.asarray(frames, dtype=np.int32).copy()
        if self.fcomp is None:
            self.fcomp = GrowArray(np.int32, -1, self.ftoken.a.shape[0])
            self.fcomp.extend(self.ftoken.n)
        self.fcomp.a[fr] = cid
        self.compounds[cid] = fr
        return cid

    def split_compounds(self, frames: np.ndarray) -> None:
        """split_huge_page() of the compound pages holding any of ``frames``: all their
        frames become base pages."""
        if not self.compounds or self.fcomp is None:
            return
        fcomp = self.fcomp.a
        cids = fcomp[frames]
        for cid in np.unique(cids[cids >= 0]).tolist():
            fr = self.compounds.pop(int(cid))
            fcomp[fr[fcomp[fr] == cid]] = -1

    def compound_of(self, frame: int) -> int:
        """The compound page id of a frame, -1 for a base page."""
        return -1 if self.fcomp is None else int(self.fcomp.a[frame])

    def in_compound(self, frames: np.ndarray) -> np.ndarray:
        """Per frame: is it a page of a compound (transparent huge) page?"""
        if self.fcomp is None:
            return np.zeros(frames.shape[0], dtype=bool)
        in_comp: np.ndarray = self.fcomp.a[frames] >= 0
        return in_comp

    def free_frames(self, frames: np.ndarray) -> None:
        n = int(frames.shape[0])
        if not n:
            return
        self.fnode.a[frames] = FRAME_FREE
        self.fmap.a[frames] = 0
        # a freed subpage leaves its compound (the rest stays one large folio)
        if self.fcomp is not None:
            self.fcomp.a[frames] = -1
        self.nr_free_frames += n

    # -- swap -----------------------------------------------------------------------------
    def alloc_swap(self, token: int, count: int) -> int:
        if self._swap_free:
            s = self._swap_free.pop()
        else:
            s = self.swap_token.extend(1)
            self.swap_count.extend(1)
        self.swap_token.a[s] = token
        self.swap_count.a[s] = count
        return s

    def put_swap(self, slots: np.ndarray) -> None:
        for s in slots.tolist():
            self.swap_count.a[s] -= 1
            if self.swap_count.a[s] == 0:
                self._swap_free.append(s)

    @property
    def nr_swap_used(self) -> int:
        return self.swap_token.n - len(self._swap_free)


@dataclass(eq=False)
class Vma:
    """A vm_area_struct: [start, end) with flags; its pages are gpids base … base+npages-1."""

    start: int
    npages: int
    flags: int
    base: int  # gpid of the first page
    name: str | None = None
    pgoff: int = 0
    dev: tuple[int, int] = (0, 0)
    inode: int = 0
    kind: int = FRAME_ANON  # what a fault maps here: anon, file page cache, or shmem

    @property
    def end(self) -> int:
        return self.start + self.npages * PAGE_SIZE

    @property
    def mergeable(self) -> bool:
        return bool(self.flags & VM_MERGEABLE)

    @property
    def ksm_compatible(self) -> bool:
        return not (self.flags & VM_KSM_INCOMPATIBLE) and self.kind != FRAME_SHMEM



@dataclass(eq=False)
class Segment:
    """An address range of an mm whose rmap_items ksmd may still have to free: a live VMA,
    or what is left of an unmapped one (its gpids keep the items until ksmd passes)."""

    start: int
    npages: int
    base: int
    vma: Vma | None  # None once unmapped

    @property
    def end(self) -> int:
        return self.start + self.npages * PAGE_SIZE


@dataclass(eq=False)
class MM:
    """An mm_struct with the KSM fields of 6.18 (ksm_merging_pages, ksm_rmap_items,
    ksm_zero_pages, MMF_VM_MERGEABLE, MMF_VM_MERGE_ANY)."""

    id: int
    owner_pid: int
    vmas: list[Vma] = field(default_factory=list)
    dead: list[Segment] = field(default_factory=list)
    ksm_rmap_items: int = 0
    ksm_zero_pages: int = 0
    ksm_merging_pages: int = 0
    merge_any: bool = False  # MMF_VM_MERGE_ANY
    registered: bool = False  # MMF_VM_MERGEABLE: on ksmd's mm_slot list
    exiting: bool = False
    next_addr: int = 0x7F0000000000
    profit_counts_zero: bool = True

    @property
    def mergeable(self) -> bool:
        return any(v.mergeable for v in self.vmas)

    @property
    def ksm_process_profit(self) -> int:
        zero = self.ksm_zero_pages if self.profit_counts_zero else 0
        return (self.ksm_merging_pages + zero) * PAGE_SIZE - self.ksm_rmap_items * 64

    def segments(self) -> list[Segment]:
        """Every range that may hold rmap_items, in address order (the rmap_list order)."""
        segs = [Segment(v.start, v.npages, v.base, v) for v in self.vmas] + self.dead
        segs.sort(key=lambda s: s.start)
        return segs



@dataclass(eq=False)
class Task:
    pid: int
    comm: str
    uid: int = 0
    gid: int = 0
    ppid: int = 1
    cmdline: list[str] = field(default_factory=list)
    start_time: int = 0  # ms since boot
    state: str = "S"
    mm: MM | None = None

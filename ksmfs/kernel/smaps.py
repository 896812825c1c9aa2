"""smaps accounting (fs/proc/task_mmu.c smaps_account / smaps_pte_entry), per VMA."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from .mm import FRAME_FILE, FRAME_SHMEM, PAGE_SIZE, PTE_SWAP0, VM_LOCKED, PhysMem, Vma

PSS_SHIFT = 12


@dataclass
class SmapsCounts:
    """struct mem_size_stats: bytes, except the pss* fields which are bytes << PSS_SHIFT."""

    size: int = 0
    rss: int = 0
    pss: int = 0
    pss_dirty: int = 0
    pss_anon: int = 0
    pss_file: int = 0
    pss_shmem: int = 0
    shared_clean: int = 0
    shared_dirty: int = 0
    private_clean: int = 0
    private_dirty: int = 0
    referenced: int = 0
    anonymous: int = 0
    ksm: int = 0
    lazyfree: int = 0
    anon_huge: int = 0
    shmem_pmd: int = 0
    file_pmd: int = 0
    shared_hugetlb: int = 0
    private_hugetlb: int = 0
    swap: int = 0
    swap_pss: int = 0
    locked: int = 0

    def __add__(self, other: SmapsCounts) -> SmapsCounts:
        return SmapsCounts(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})


# Pages of one piece of a render in pieces (kfs.smaps): a whole number of page tables
# (PTRS_PER_PTE = 512), the unit smaps_pte_range() holds the PTE lock for, so ksmd
# merging between two pieces is what it may do between two page tables of the walk.
PTRS_PER_PTE = 512
SMAPS_RANGE_PAGES = 32 * PTRS_PER_PTE


# Pages summed at a time by a whole-VMA sum: numpy's temporaries of a 4M-page VMA in one
# piece are some 100 MiB and miss the caches; in ranges of this size they stay small.
SUM_RANGE_PAGES = 1 << 17

_UNIT = PAGE_SIZE << PSS_SHIFT  # what one page adds to a pss field at mapcount 1


def vma_smaps(mem: PhysMem, vma: Vma) -> SmapsCounts:
    """What show_smap() prints for one VMA: every present PTE is one 4 KiB page; KSM pages
    are anonymous and dirty; KSM-placed zero pages count nowhere (not normal pages)."""
    m = SmapsCounts(size=vma.npages * PAGE_SIZE)
    for lo in range(0, vma.npages, SUM_RANGE_PAGES):
        m = m + vma_smaps_range(mem, vma, lo, min(vma.npages, lo + SUM_RANGE_PAGES))
    return m


def vma_ksm_pages(mem: PhysMem, vma: Vma) -> int:
    """The pages smaps counts as ``KSM:`` in one VMA (``vma_smaps(...).ksm // PAGE_SIZE``
    without the other sums): present PTEs whose page is a KSM page."""
    fnode = mem.fnode.a
    total = 0
    for lo in range(0, vma.npages, SUM_RANGE_PAGES):
        pte = mem.pte.a[vma.base + lo : vma.base + min(vma.npages, lo + SUM_RANGE_PAGES)]
        # mode="clip" reads some frame for a PTE that maps none; the mask drops it
        total += int(np.count_nonzero((fnode.take(pte, mode="clip") >= 0) & (pte >= 0)))
    return total


def _pss_shared(mc: np.ndarray) -> int:
    """Sum of (PAGE_SIZE << PSS_SHIFT) // mapcount over pages of mapcounts ``mc`` (>= 2),
    one integer division per distinct mapcount, as exact as the kernel's per page."""
    if not mc.shape[0]:
        return 0
    top = int(mc.max())
    if top <= 1 << 16:
        count = np.bincount(mc, minlength=top + 1)
        vals = np.flatnonzero(count)
        count = count[vals]
    else:  # mapcounts in the millions (a huge max_page_sharing): no table that long
        vals, count = np.unique(mc, return_counts=True)
    return int((count.astype(np.int64) * (_UNIT // vals.astype(np.int64))).sum())


def vma_smaps_range(mem: PhysMem, vma: Vma, lo: int, hi: int) -> SmapsCounts:
    """The sums of smaps_pte_entry() over pages ``lo`` .. ``hi - 1`` of ``vma`` (size 0).

    Every field is a sum over pages (PSS: each page adds (PAGE_SIZE << PSS_SHIFT) //
    mapcount; Locked adds a locked VMA's PSS), so the sums of any split of a VMA into
    ranges add up (``+``) to the sums of the whole walk, as smap_gather_stats() adds up
    page tables into one mem_size_stats."""
    if not 0 <= lo <= hi <= vma.npages:
        raise ValueError(f"page range {lo}..{hi} is outside a VMA of {vma.npages} pages")
    pte = mem.pte.a[vma.base + lo : vma.base + hi]
    m = SmapsCounts()
    present = pte >= 0
    n = int(np.count_nonzero(present))
    if n:
        # gathers without compacting first (mode="clip" reads some frame where the PTE maps
        # none; every count below is masked by ``present``)
        kind = mem.fnode.a.take(pte, mode="clip")
        mc = mem.fmap.a.take(pte, mode="clip")
        shared = present & (mc > 1)  # mapcount 0 of a mapped page (never) counts as 1
        file_ = present & (kind == FRAME_FILE)
        shmem = present & (kind == FRAME_SHMEM)
        # per class (anon incl. KSM, clean page cache of a file, shmem): pages mapped once
        # (private) and more than once (shared), and the PSS sum
        classes = []
        if file_.any() or shmem.any():
            for sel in (present & ~file_ & ~shmem, file_, shmem):
                sh = sel & shared
                classes.append((int(np.count_nonzero(sel)), int(np.count_nonzero(sh)), mc[sh]))
        else:
            classes = [(n, int(np.count_nonzero(shared)), mc[shared]), (0, 0, mc[:0]), (0, 0, mc[:0])]
        pss_c = []
        cnt_priv = []
        cnt_shared = []
        for total, nsh, mcs in classes:
            cnt_priv.append(total - nsh)
            cnt_shared.append(nsh)
            pss_c.append((total - nsh) * _UNIT + _pss_shared(mcs))
        m.rss = n * PAGE_SIZE
        m.referenced = m.rss
        m.pss = sum(pss_c)
        m.pss_dirty = pss_c[0] + pss_c[2]  # written pages; page cache of a private file is clean
        m.pss_anon = pss_c[0]
        m.pss_file = pss_c[1]
        m.pss_shmem = pss_c[2]
        m.shared_dirty = (cnt_shared[0] + cnt_shared[2]) * PAGE_SIZE
        m.shared_clean = cnt_shared[1] * PAGE_SIZE
        m.private_dirty = (cnt_priv[0] + cnt_priv[2]) * PAGE_SIZE
        m.private_clean = cnt_priv[1] * PAGE_SIZE
        m.anonymous = (cnt_priv[0] + cnt_shared[0]) * PAGE_SIZE
        m.ksm = int(np.count_nonzero(present & (kind >= 0))) * PAGE_SIZE
        if vma.flags & VM_LOCKED:
            m.locked = m.pss
    swapped = pte <= PTE_SWAP0
    if swapped.any():
        slots = PTE_SWAP0 - pte[swapped]
        cnt = np.maximum(mem.swap_count.a[slots], 1).astype(np.int64)
        m.swap = int(slots.shape[0]) * PAGE_SIZE
        m.swap_pss = int((_UNIT // cnt).sum())
    return m

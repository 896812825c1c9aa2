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


def vma_smaps(mem: PhysMem, vma: Vma) -> SmapsCounts:
    """What show_smap() prints for one VMA: every present PTE is one 4 KiB page; KSM pages
    are anonymous and dirty; KSM-placed zero pages count nowhere (not normal pages)."""
    m = vma_smaps_range(mem, vma, 0, vma.npages)
    m.size = vma.npages * PAGE_SIZE
    return m


def vma_smaps_range(mem: PhysMem, vma: Vma, lo: int, hi: int) -> SmapsCounts:
    """The sums of smaps_pte_entry() over pages ``lo`` .. ``hi - 1`` of ``vma`` (size 0).

    Every field is a sum over pages (PSS: each page adds (PAGE_SIZE << PSS_SHIFT) //
    mapcount; Locked adds a locked VMA's PSS), so the sums of any split of a VMA into
    ranges add up (``+``) to the sums of the whole walk, as smap_gather_stats() adds up
    page tables into one mem_size_stats."""
    if not 0 <= lo <= hi <= vma.npages:
        raise ValueError(f"page range {lo}..{hi} is outside a VMA of {vma.npages} pages")
    sl = slice(vma.base + lo, vma.base + hi)
    pte = mem.pte.a[sl]
    m = SmapsCounts()
    present = pte >= 0
    fr = pte[present]
    if fr.shape[0]:
        # one pass of gathers, then pages counted per (class, mapcount): the PSS sums are
        # then exact integer sums of count * (PAGE_SIZE << PSS_SHIFT) // mapcount
        kind = mem.fnode.a[fr]
        mc = np.maximum(mem.fmap.a[fr], 1)
        top = int(mc.max()) + 1
        # class: 0 anon (incl. KSM), 1 file (clean page cache), 2 shmem
        cls = (kind == FRAME_FILE).astype(np.int64)
        cls[kind == FRAME_SHMEM] = 2
        per = np.bincount(cls * top + mc, minlength=3 * top).reshape(3, top)
        unit = (PAGE_SIZE << PSS_SHIFT) // np.maximum(np.arange(top, dtype=np.int64), 1)
        pss_c = [int((per[i] * unit).sum()) for i in range(3)]  # anon, file, shmem
        one = per[:, 1]  # pages mapped once: private
        cnt_priv = [int(one[i]) for i in range(3)]
        cnt_shared = [int(per[i, 2:].sum()) for i in range(3)]
        n = fr.shape[0]
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
        m.ksm = int(np.count_nonzero(kind >= 0)) * PAGE_SIZE
        if vma.flags & VM_LOCKED:
            m.locked = m.pss
    swapped = pte <= PTE_SWAP0
    if swapped.any():
        slots = PTE_SWAP0 - pte[swapped]
        cnt = np.maximum(mem.swap_count.a[slots], 1).astype(np.int64)
        m.swap = int(slots.shape[0]) * PAGE_SIZE
        m.swap_pss = int(((PAGE_SIZE << PSS_SHIFT) // cnt).sum())
    return m

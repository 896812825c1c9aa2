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


def vma_smaps(mem: PhysMem, vma: Vma) -> SmapsCounts:
    """What show_smap() prints for one VMA: every present PTE is one 4 KiB page; KSM pages
    are anonymous and dirty; KSM-placed zero pages count nowhere (not normal pages)."""
    sl = slice(vma.base, vma.base + vma.npages)
    pte = mem.pte.a[sl]
    m = SmapsCounts(size=vma.npages * PAGE_SIZE)
    present = pte >= 0
    fr = pte[present]
    if fr.shape[0]:
        kind = mem.fnode.a[fr]
        mc = np.maximum(mem.fmap.a[fr], 1).astype(np.int64)
        pss = (PAGE_SIZE << PSS_SHIFT) // mc
        anon = (kind != FRAME_FILE) & (kind != FRAME_SHMEM)
        dirty = kind != FRAME_FILE  # written pages; page cache of a private file is clean
        shared = mc >= 2
        n = fr.shape[0]
        m.rss = n * PAGE_SIZE
        m.referenced = m.rss
        m.pss = int(pss.sum())
        m.pss_dirty = int(pss[dirty].sum())
        m.pss_anon = int(pss[anon].sum())
        m.pss_file = int(pss[kind == FRAME_FILE].sum())
        m.pss_shmem = int(pss[kind == FRAME_SHMEM].sum())
        m.shared_dirty = int(np.count_nonzero(shared & dirty)) * PAGE_SIZE
        m.shared_clean = int(np.count_nonzero(shared & ~dirty)) * PAGE_SIZE
        m.private_dirty = int(np.count_nonzero(~shared & dirty)) * PAGE_SIZE
        m.private_clean = int(np.count_nonzero(~shared & ~dirty)) * PAGE_SIZE
        m.anonymous = int(np.count_nonzero(anon)) * PAGE_SIZE
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

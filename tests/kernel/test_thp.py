"""Transparent huge pages as ksmd meets them (mm/ksm.c): a merge splits the huge page of the
page first (try_to_merge_one_page()), and two pages of one huge page fail to merge once
(split_huge_page() fails under ksmd's two references; cmp_and_merge_page() splits it and
merges nothing that pass). The vector path must agree with the page-by-page one."""

from __future__ import annotations

import numpy as np
import pytest

from ksmfs.kernel import MADV_MERGEABLE, Kernel, knobs
from ksmfs.kernel.kernel import INSTALL_ANON
from ksmfs.kernel.mm import HPAGE_PMD_NR

HUGE_ADDR = 0x7F0000000000  # 2 MiB aligned
COUNTERS = ("pages_shared", "pages_sharing", "pages_unshared")


def thp(k: Kernel, pid: int, tokens: np.ndarray) -> int:
    n = tokens.shape[0]
    addr = k.mmap(pid, n, addr=HUGE_ADDR)
    k.install_pages(pid, addr, np.full(n, INSTALL_ANON, dtype=np.uint8), tokens,
                    thp=np.ones(n, dtype=bool))
    k.madvise(pid, addr, n, MADV_MERGEABLE)
    return addr


def full_scan(k: Kernel) -> None:
    done = k.ksm.full_scans
    while k.ksm.full_scans == done:
        k.ksm_do_scan(100)


def counters(k: Kernel) -> tuple[int, ...]:
    s = k.ksm.stats()
    return tuple(s[c] for c in COUNTERS)


@pytest.mark.parametrize("exact", [True, False])
def test_two_pages_of_one_huge_page_merge_a_pass_late(exact: bool) -> None:
    k = Kernel(exact=exact)
    knobs.store(k, "run", b"1")
    half = HPAGE_PMD_NR // 2
    # one huge page holding every content twice (pages i and i + half)
    thp(k, k.spawn("a"), np.arange(HPAGE_PMD_NR, dtype=np.uint64) % np.uint64(half) + np.uint64(1))
    assert len(k.mem.compounds) == 1
    seen = []
    for _ in range(3):
        full_scan(k)
        seen.append(counters(k))
    # pass 1 only records checksums; in pass 2 page `half` meets page 0 in the same huge
    # page: no merge, the huge page is split, page 0 stays in the unstable tree; the other
    # half - 1 pairs merge; in pass 3 page `half` meets page 0 again, now a base page
    assert seen == [(0, 0, 0), (half - 1, half - 1, 1), (half, half, 0)]
    assert not k.mem.compounds


@pytest.mark.parametrize("exact", [True, False])
def test_a_merged_huge_page_is_split(exact: bool) -> None:
    """A huge page whose page merged with another process's page is split, so two of its
    pages written alike later merge at once (no failed pass)."""
    k = Kernel(exact=exact)
    knobs.store(k, "smart_scan", b"0")  # no page skipped: merges as soon as possible
    knobs.store(k, "run", b"1")
    b = k.spawn("b")  # scanned first: its pages wait in the unstable tree
    baddr = k.mmap(b, 4)
    k.write(b, baddr, np.arange(4, dtype=np.uint64) + np.uint64(100))
    k.madvise(b, baddr, 4, MADV_MERGEABLE)
    a = k.spawn("a")
    n = 2 * HPAGE_PMD_NR
    addr = thp(k, a, np.arange(n, dtype=np.uint64) + np.uint64(100))
    assert len(k.mem.compounds) == 2
    for _ in range(3):
        full_scan(k)
    assert counters(k)[:2] == (4, 4)
    assert len(k.mem.compounds) == 1  # the first huge page was split by its merges
    k.write(a, addr + 100 * 4096, [7, 7])
    after = []
    for _ in range(3):
        full_scan(k)
        after.append(counters(k)[:2])
    # the first pass after the write records the new checksums, the next merges the pair
    assert after == [(4, 4), (5, 5), (5, 5)], after
    assert len(k.mem.compounds) == 1  # the second is untouched

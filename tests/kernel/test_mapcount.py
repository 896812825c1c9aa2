"""Mapcounts above 16 bits: PhysMem keeps them in 16 bits until one would not fit, then in
32 (mm.py ensure_mapcount); counts, smaps and the page tables agree on both sides."""

from __future__ import annotations

import numpy as np
import pytest

from ksmfs.kernel import MADV_MERGEABLE, Kernel, KsmError, knobs
from ksmfs.kernel.mm import MAPCOUNT16_MAX, MAPCOUNT_MAX
from ksmfs.kernel.smaps import vma_smaps

PSS_UNIT = 4096 << 12


def _merged(npages: int, exact: bool = False) -> tuple[Kernel, int, int]:
    """One process whose ``npages`` pages hold one content, merged into one KSM page."""
    k = Kernel(exact=exact)
    knobs.store(k, "max_page_sharing", str(npages + 1).encode())
    pid = k.spawn("p")
    addr = k.mmap(pid, npages)
    k.write(pid, addr, np.full(npages, 7, dtype=np.uint64))
    k.madvise(pid, addr, npages, MADV_MERGEABLE)
    knobs.store(k, "run", b"1")
    for _ in range(3):
        k.ksm_do_scan(npages)
    return k, pid, addr


def _check_mapcounts(k: Kernel) -> None:
    mem = k.mem
    ptes = np.concatenate([mem.pte.a[v.base : v.base + v.npages] for m in k.mms.values() for v in m.vmas])
    ptes = ptes[ptes >= 0]
    count = np.bincount(ptes, minlength=mem.fmap.n)[: mem.fmap.n]
    assert (count == mem.fmap.a[: mem.fmap.n]).all()


@pytest.mark.parametrize("exact", [False, True])
def test_a_ksm_page_mapped_more_than_65535_times(exact: bool) -> None:
    n = MAPCOUNT16_MAX + 100
    k, pid, _ = _merged(n, exact)
    assert k.ksm.pages_shared == 1 and k.ksm.pages_sharing == n - 1
    assert k.mem.fmap.a.dtype == np.int32  # widened on the way
    _check_mapcounts(k)
    (_, c), = k.smaps(pid)
    assert c.ksm == n * 4096 and c.shared_dirty == n * 4096
    assert c.pss == n * (PSS_UNIT // n)


def test_fork_widens_before_a_count_doubles_past_16_bits() -> None:
    k, pid, _ = _merged(40000)
    assert k.mem.fmap.a.dtype == np.uint16  # 40000 fits
    child = k.fork(pid)
    assert k.mem.fmap.a.dtype == np.int32
    _check_mapcounts(k)
    (v, c), = k.smaps(child)
    assert c.pss == 40000 * (PSS_UNIT // 80000)
    assert vma_smaps(k.mem, v) == c
    k.exit(child)
    _check_mapcounts(k)


def test_a_mapcount_beyond_atomic_t_is_refused() -> None:
    k = Kernel()
    with pytest.raises(KsmError) as e:
        k.mem.ensure_mapcount(MAPCOUNT_MAX + 1)
    assert "atomic_t" in str(e.value)

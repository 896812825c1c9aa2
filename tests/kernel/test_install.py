"""Kernel.install_pages(): pages put into place as a capture recorded them behave for
ksmd exactly as the same pages made with mmap/write/fork."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from ksmfs.kernel import MADV_MERGEABLE, Kernel, KsmError, knobs
from ksmfs.kernel.kernel import INSTALL_ANON, INSTALL_FILE, INSTALL_NONE, INSTALL_SWAP
from ksmfs.kernel.mm import VM_IO, VM_MERGEABLE

COUNTERS = ("pages_shared", "pages_sharing", "pages_unshared", "pages_volatile",
            "ksm_zero_pages", "pages_scanned")


def scans(k: Kernel, n: int) -> list[tuple[int, ...]]:
    out = []
    knobs.store(k, "run", b"1\n")
    for _ in range(n):
        target = k.ksm.full_scans + 1
        while k.ksm.full_scans < target:
            k.ksm_do_scan(50)
        s = k.ksm.stats()
        out.append(tuple(s[c] for c in COUNTERS))
    return out


def test_install_equals_write_and_fork() -> None:
    tokens = np.array([7, 7, 0, 9, 0, 11, 7, 12], dtype=np.uint64)
    # reference: parent writes, forks (all pages shared COW), child rewrites two pages
    ref = Kernel()
    p = ref.spawn("p")
    a = ref.mmap(p, 8)
    ref.write(p, a, tokens)
    ref.madvise(p, a, 8, MADV_MERGEABLE)
    c = ref.fork(p)
    ref.write(c, a + 5 * 4096, [13, 7])
    # the same state rebuilt from what a capture sees: frames shared by pfn
    k = Kernel()
    p2 = k.spawn("p")
    c2 = k.spawn("c")
    share_p = np.arange(1, 9, dtype=np.int64)
    share_c = share_p.copy()
    share_c[5:7] = 0
    ctok = tokens.copy()
    ctok[5:7] = [13, 7]
    anon = np.full(8, INSTALL_ANON, dtype=np.uint8)
    for pid, tok, sh in ((p2, tokens, share_p), (c2, ctok, share_c)):
        addr = k.mmap(pid, 8, addr=a)
        k.install_pages(pid, addr, anon, tok, sh)
        k.madvise(pid, addr, 8, MADV_MERGEABLE)
    assert scans(k, 5) == scans(ref, 5)


def test_private_file_mapping_anon_pages_merge_file_pages_do_not() -> None:
    k = Kernel()
    pids = []
    for comm in ("a", "b"):
        pid = k.spawn(comm)
        addr = k.mmap(pid, 6, file="/usr/lib/x.so", populate=False)
        kinds = np.array([INSTALL_FILE, INSTALL_ANON, INSTALL_ANON, INSTALL_NONE,
                          INSTALL_FILE, INSTALL_SWAP], dtype=np.uint8)
        k.install_pages(pid, addr, kinds, np.array([1, 5, 6, 0, 2, 5], dtype=np.uint64))
        k.madvise(pid, addr, 6, MADV_MERGEABLE)
        pids.append(pid)
    last = scans(k, 4)[-1]
    # the two COW'd pages of each process merge pairwise; file, unmapped and swapped
    # pages get no rmap_item
    assert last[:5] == (2, 2, 0, 0, 0)
    assert sum(k.ksm_stat(p)["ksm_rmap_items"] for p in pids) == 4
    assert all(k.ksm_stat(p)["ksm_merging_pages"] == 2 for p in pids)
    assert k.task_mem(pids[0])["swap"] == 1


def test_extra_flags_make_the_vma_incompatible_and_refusals() -> None:
    k = Kernel()
    pid = k.spawn("p")
    addr = k.mmap(pid, 4, extra_flags=VM_IO | VM_MERGEABLE)
    vma = k.tasks[pid].mm.vmas[0]
    assert vma.flags & VM_IO and not vma.mergeable and not vma.ksm_compatible
    k.madvise(pid, addr, 4, MADV_MERGEABLE)
    assert not vma.mergeable  # ignored silently, like the kernel
    with pytest.raises(KsmError) as e:
        k.mmap(pid, 1, addr=addr + 4096)
    assert e.value.errno == errno.EEXIST
    anon = np.full(4, INSTALL_ANON, dtype=np.uint8)
    k.install_pages(pid, addr, anon, np.arange(4, dtype=np.uint64))
    with pytest.raises(KsmError) as e:
        k.install_pages(pid, addr, anon, np.arange(4, dtype=np.uint64))
    assert e.value.errno == errno.EEXIST
    with pytest.raises(KsmError) as e:
        k.install_pages(pid, addr, np.full(4, 9, dtype=np.uint8), np.zeros(4, dtype=np.uint64))
    assert e.value.errno == errno.EINVAL


def test_spawn_with_a_given_pid() -> None:
    k = Kernel()
    assert k.spawn("a", pid=100) == 100
    with pytest.raises(KsmError) as e:
        k.spawn("b", pid=100)
    assert e.value.errno == errno.EEXIST
    assert k.spawn("c") == 101  # automatic pids step over taken ones
    assert k.fork(100) == 102


def test_write_pages_equals_write_page_by_page() -> None:
    ks = []
    for scattered in (False, True):
        k = Kernel()
        pid = k.spawn("p")
        a = k.mmap(pid, 8)
        b = k.mmap(pid, 4)
        k.write(pid, a, np.arange(1, 9, dtype=np.uint64))
        k.write(pid, b, [5, 6, 7, 8])
        k.madvise(pid, a, 8, MADV_MERGEABLE)
        k.madvise(pid, b, 4, MADV_MERGEABLE)
        k.ksm_do_scan(100)
        addrs = [b + 4096, a + 3 * 4096, a + 4 * 4096, a]
        toks = np.array([21, 22, 23, 24], dtype=np.uint64)
        if scattered:
            k.write_pages(pid, np.array(addrs), toks)
        else:
            for ad, t in zip(addrs, toks.tolist(), strict=True):
                k.write(pid, ad, [t])
        ks.append((k.read(pid, a, 8).tolist(), k.read(pid, b, 4).tolist(), scans(k, 3)))
    assert ks[0] == ks[1]
    k = Kernel()
    pid = k.spawn("p")
    a = k.mmap(pid, 2)
    with pytest.raises(KsmError) as e:
        k.write_pages(pid, np.array([a + 8192]), np.array([1], dtype=np.uint64))
    assert e.value.errno == errno.EFAULT

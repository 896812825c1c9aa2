"""smaps rendered in pieces (kfs.smaps.render_smaps_steps, the FUSE adapter's path) gives
the bytes of the one-piece render, and a layout change between two pieces starts the
render again (kfs/smaps.py: each VMA block is the walk of one VMA layout)."""

from __future__ import annotations

import itertools
from collections.abc import Generator

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_properties import Shadow, apply_op, ops

from ksmfs.kernel import MADV_MERGEABLE, MADV_UNMERGEABLE, Kernel, KsmError
from ksmfs.kernel.smaps import SmapsCounts, vma_smaps, vma_smaps_range
from ksmfs.kfs import Tree
from ksmfs.kfs import smaps as ksmaps


def drive(steps: Generator[None, None, bytes | None], between: object = None) -> tuple[bytes | None, int]:
    """Run a render in pieces to its end; ``between(i)`` runs at the i-th yield."""
    n = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value, n
        if callable(between):
            between(n)
        n += 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops, st.lists(st.integers(0, 16), max_size=6), st.integers(1, 40))
def test_pieces_add_up_to_the_one_piece_render(seq: list[tuple], cuts: list[int], range_pages: int) -> None:
    sh = Shadow()
    k = sh.k
    for op in seq:
        apply_op(sh, op)
    for pid, task in k.tasks.items():
        if task.mm is None:
            continue
        for v in task.mm.vmas:
            bounds = sorted({0, v.npages, *(min(c, v.npages) for c in cuts)})
            total = SmapsCounts(size=v.npages * 4096)
            for lo, hi in itertools.pairwise(bounds):
                total = total + vma_smaps_range(k.mem, v, lo, hi)
            assert total == vma_smaps(k.mem, v)
        out, yields = drive(ksmaps.render_smaps_steps(k, pid, range_pages))
        assert out == ksmaps.render_smaps(k, pid)
        pages = sum(v.npages for v in task.mm.vmas)
        assert yields >= pages // (range_pages + ksmaps.VMA_COST_PAGES)  # it did pause
        out, _ = drive(ksmaps.render_smaps_rollup_steps(k, pid, range_pages))
        assert out == ksmaps.render_smaps_rollup(k, pid)


def _guest(npages: int = 64) -> tuple[Kernel, int, int]:
    import numpy as np

    k = Kernel()
    pid = k.spawn("guest")
    addr = k.mmap(pid, npages)
    k.write(pid, addr, np.arange(npages, dtype=np.uint64) % 5)
    k.madvise(pid, addr, npages, MADV_MERGEABLE)
    return k, pid, addr


def test_layout_change_between_pieces_starts_again() -> None:
    for change in ("mmap", "munmap", "madvise", "fork"):
        k, pid, addr = _guest()

        def act(i: int, change: str = change, k: Kernel = k, pid: int = pid, addr: int = addr) -> None:
            if i != 1:
                return
            if change == "mmap":
                k.mmap(pid, 8)
            elif change == "fork":
                k.fork(pid)  # no VMA changes, the pages' mapcounts do
            elif change == "munmap":
                k.munmap(pid, addr, 16)
            else:
                k.madvise(pid, addr, 64, MADV_UNMERGEABLE)

        out, _ = drive(ksmaps.render_smaps_steps(k, pid, 16), act)
        assert out is None, change


def test_tree_renders_the_new_layout_after_a_change() -> None:
    """mmap and munmap between two pieces (FUSE adapter's path, Tree.render_steps): the
    output is the render of the new layout."""
    pages = 3 * ksmaps.SMAPS_RANGE_PAGES
    for name, one_piece in (("smaps", ksmaps.render_smaps), ("smaps_rollup", ksmaps.render_smaps_rollup)):
        k, pid, addr = _guest(pages)
        tree = Tree(k)
        node = tree.lookup(("proc", str(pid), name))
        assert node is not None
        steps = tree.render_steps(node)
        assert steps is not None
        before = one_piece(k, pid)
        changes = {0: lambda k=k, pid=pid: k.mmap(pid, 8),
                   1: lambda k=k, pid=pid, addr=addr: k.munmap(pid, addr, 512)}
        out, yields = drive(steps, lambda i, ch=changes: ch.pop(i, lambda: None)())
        assert not changes and yields > 3
        assert out == one_piece(k, pid) != before


def test_ksmd_between_pieces_is_seen_range_by_range() -> None:
    """ksmd merging between two pieces: pages summed before it count as they were, pages
    after it as ksmd left them, as the kernel's walk between page tables shows them."""
    k, pid, _ = _guest()
    k.ksm.run = 1
    v = k.tasks[pid].mm.vmas[0]  # type: ignore[union-attr]
    seen: list[SmapsCounts] = []

    def scan(i: int) -> None:
        if i == 0:
            seen.append(vma_smaps_range(k.mem, v, 0, 16))
            for _ in range(3):
                k.ksm_do_scan(64)

    rows, _ = drive(ksmaps.smaps_rows_steps(k, pid, range_pages=16), scan)  # type: ignore[arg-type]
    assert rows is not None
    (_, c), = rows
    assert vma_smaps_range(k.mem, v, 0, 16) != seen[0], "ksmd changed nothing: the test proves nothing"
    assert c == SmapsCounts(size=64 * 4096) + seen[0] + vma_smaps_range(k.mem, v, 16, 64)


def test_exit_between_pieces_gives_what_a_read_after_the_exit_gives() -> None:
    k, pid, _ = _guest(2 * ksmaps.SMAPS_RANGE_PAGES)
    tree = Tree(k)
    node = tree.lookup(("proc", str(pid), "smaps_rollup"))
    assert node is not None
    steps = tree.render_steps(node)
    assert steps is not None
    next(steps)
    k.exit(pid)
    try:
        drive(steps)
    except KsmError as e:
        assert e.errno == 3  # ESRCH, as a read of the gone task
    else:
        raise AssertionError("the render went on over an exited task")


def _smaps_per_page(k: Kernel, v: object) -> SmapsCounts:
    """smaps_pte_entry() / smaps_account() page by page (fs/proc/task_mmu.c), the reference
    for the vector sums: a present page adds PAGE_SIZE to Rss and Referenced, to
    Private_* at mapcount 1 or Shared_* above, (PAGE_SIZE << PSS_SHIFT) // mapcount to Pss
    and to the Pss field of its kind; anon and shmem pages are dirty, file pages clean; a
    swap entry adds PAGE_SIZE to Swap and its share to SwapPss."""
    from ksmfs.kernel.mm import FRAME_FILE, FRAME_SHMEM, PTE_SWAP0, VM_LOCKED, Vma

    assert isinstance(v, Vma)
    mem = k.mem
    m = SmapsCounts(size=v.npages * 4096)
    unit = 4096 << 12
    for g in range(v.base, v.base + v.npages):
        pte = int(mem.pte.a[g])
        if pte >= 0:
            kind, mc = int(mem.fnode.a[pte]), max(int(mem.fmap.a[pte]), 1)
            share = unit // mc
            m.rss += 4096
            m.referenced += 4096
            m.pss += share
            dirty = kind != FRAME_FILE
            if dirty:
                m.pss_dirty += share
            if kind == FRAME_FILE:
                m.pss_file += share
            elif kind == FRAME_SHMEM:
                m.pss_shmem += share
            else:
                m.pss_anon += share
                m.anonymous += 4096
            if kind >= 0:
                m.ksm += 4096
            field = ("shared_" if mc > 1 else "private_") + ("dirty" if dirty else "clean")
            setattr(m, field, getattr(m, field) + 4096)
            if v.flags & VM_LOCKED:
                m.locked += share
        elif pte <= PTE_SWAP0:
            m.swap += 4096
            m.swap_pss += unit // max(int(mem.swap_count.a[PTE_SWAP0 - pte]), 1)
    return m


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops, st.integers(0, 3))
def test_vector_sums_equal_the_per_page_walk(seq: list[tuple], extra: int) -> None:
    """vma_smaps (ranges of SUM_RANGE_PAGES), vma_smaps_range and vma_ksm_pages give what the
    page-by-page walk gives, on random workloads with file, shmem and locked mappings."""
    import numpy as np

    from ksmfs.kernel.mm import VM_LOCKED
    from ksmfs.kernel.smaps import vma_ksm_pages

    sh = Shadow()
    k = sh.k
    pid = min(sh.procs)
    k.mmap(pid, 5, file="/lib/x.so")
    shm = k.mmap(pid, 4, shared=True)
    k.write(pid, shm, np.arange(4, dtype=np.uint64) % 2)
    locked = k.mmap(pid, 6, extra_flags=VM_LOCKED)
    k.write(pid, locked, np.arange(6, dtype=np.uint64) % 3)
    for op in seq:
        apply_op(sh, op)
    for _ in range(extra):
        k.fork(min(sh.procs))  # mapcounts above 2 (file and shmem pages too, if it lives)
    for task in k.tasks.values():
        if task.mm is None:
            continue
        for v in task.mm.vmas:
            want = _smaps_per_page(k, v)
            assert vma_smaps(k.mem, v) == want
            assert SmapsCounts(size=v.npages * 4096) + vma_smaps_range(k.mem, v, 0, v.npages) == want
            assert vma_ksm_pages(k.mem, v) * 4096 == want.ksm

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

"""A ksmd batch run in slices (Ksm.scan_slice) ends in exactly the state of the unsplit
batch, whatever the split and whatever is read between slices; and ksmd's wake-ups are
recorded where mm/ksm.c calls wake_up_interruptible()."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_oracle import KSM_EVENTS, Driver, first_difference, op, scan, setup, snapshot

from ksmfs.kernel import MADV_MERGEABLE, Kernel, KsmError, knobs
from ksmfs.kfs.table import PID
from ksmfs.kfs.tree import Tree

EXAMPLES = int(os.environ.get("KSMFS_ORACLE_EXAMPLES", "25"))

# a batch and where to cut it: slice sizes, used in turn until the batch is over
split = st.lists(st.integers(1, 400), min_size=1, max_size=6)
step = st.tuples(st.booleans(), scan, op, split, st.booleans()).map(
    lambda t: (t[1], t[3], t[4]) if t[0] else (t[2], None, False)
)


def read_everything(k: Kernel) -> None:
    """What readers of the mount do between slices: every file of the table, for every
    process (trace_pipe, whose reads consume records, excepted)."""
    for row in Tree(k, btime=0).rows:
        spec = row.spec
        if spec is None or spec.show is None or spec.stream:
            continue
        pids = list(k.tasks) if row.path[:2] == ("proc", PID) else [None]
        for pid in pids:
            try:
                spec.show(k, pid)
            except KsmError:  # an errno of the file (EACCES, ESRCH ...) is an answer too
                pass


def run_split(setup_: tuple, ops: list[tuple]) -> None:
    mps, zero, smart, nprocs, nr_nodes = setup_
    whole, sliced = Driver(False, nr_nodes), Driver(False, nr_nodes)
    first = [("knob", ("max_page_sharing", mps)),
             ("knob", ("use_zero_pages", b"1" if zero else b"0")),
             ("knob", ("smart_scan", b"1" if smart else b"0"))]
    first += [("spawn", 16 + 8 * i) for i in range(nprocs)]
    for o in first:
        whole.apply(o)
        sliced.apply(o)
    for i, (o, cuts, reads) in enumerate(ops):
        ra = whole.apply(o)
        if o[0] == "scan" and cuts:
            k = sliced.k
            batch = k.ksm.begin_batch(o[1])
            j = 0
            while not k.ksm.scan_slice(batch, cuts[j % len(cuts)]):
                j += 1
                if reads:
                    read_everything(k)
            rb: object = batch.done
        else:
            rb = sliced.apply(o)
        assert ra == rb, f"op {i} {o}: whole returned {ra}, sliced {rb}"
        diff = first_difference(snapshot(whole.k), snapshot(sliced.k))
        assert not diff, f"after op {i} {o} cut {cuts}: {diff}"


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(setup, st.lists(step, min_size=20, max_size=60))
def test_any_split_of_a_batch_equals_the_batch(setup_: tuple, ops: list[tuple]) -> None:
    run_split(setup_, ops)


def test_wakeups_where_mm_ksm_c_wakes_ksmd() -> None:
    """run_store wakes ksm_thread_wait for every value with KSM_RUN_MERGE, changed or not;
    sleep_millisecs_store wakes ksm_iter_wait; __ksm_enter wakes ksm_thread_wait only
    for the first mm on the list."""
    k = Kernel()
    assert k.ksm.take_wakeups() == (0, 0)
    knobs.store(k, "run", b"0")
    assert k.ksm.take_wakeups() == (0, 0)
    knobs.store(k, "run", b"1")
    knobs.store(k, "run", b"1")
    assert k.ksm.take_wakeups() == (2, 0)
    knobs.store(k, "sleep_millisecs", b"20")
    assert k.ksm.take_wakeups() == (0, 1)
    knobs.store(k, "pages_to_scan", b"200")
    assert k.ksm.take_wakeups() == (0, 0)
    a = k.spawn("a")
    addr = k.mmap(a, 4)
    k.madvise(a, addr, 4, MADV_MERGEABLE)  # the first mm: ksmd may now have work
    assert k.ksm.take_wakeups() == (1, 0)
    b = k.spawn("b")
    addr = k.mmap(b, 4)
    k.madvise(b, addr, 4, MADV_MERGEABLE)
    assert k.ksm.take_wakeups() == (0, 0)
    knobs.store(k, "run", b"2")  # no KSM_RUN_MERGE bit
    assert k.ksm.take_wakeups() == (0, 0)


def test_ksmd_begin_is_none_while_ksmd_would_wait() -> None:
    k = Kernel()
    assert k.ksmd_begin() is None  # run = 0
    knobs.store(k, "run", b"1")
    assert k.ksmd_begin() is None  # no mm registered
    pid = k.spawn("a")
    addr = k.mmap(pid, 300)
    k.write(pid, addr, [5] * 300)
    k.madvise(pid, addr, 300, MADV_MERGEABLE)
    batch = k.ksmd_begin()
    assert batch is not None and batch.npages == k.ksm.pages_to_scan
    seen = []
    while not k.ksm.scan_slice(batch, 30):
        seen.append(k.ksm.pages_scanned)
    # a reader between slices sees pages_scanned grow page by page, as ksm_do_scan counts
    assert seen == list(range(30, 100, 30))
    assert k.ksm.pages_scanned == 100


@pytest.mark.parametrize("blocks", [1, 2, 3])  # a plain full node, then a chain
def test_a_slice_after_a_blocks_first_page_stays_on_the_vector_path(blocks: int) -> None:
    """A slice that ends right after the first page of a block (which waits in the
    unstable tree while the content's KSM page is full) leaves the next slice a content
    with both a full stable node and an unstable tree item. Its pages take the vector
    path (a page-by-page window of the 16M scenario's zero pages cost ~120 ms in the
    mount) and end in the exact kernel's state."""
    mps, pages = 4, 40
    kernels = [Kernel(exact=True), Kernel()]
    for k in kernels:
        k.trace.enabled = {e for e in KSM_EVENTS if e in k.version.trace_events}
        knobs.store(k, "max_page_sharing", str(mps).encode())
        knobs.store(k, "pages_to_scan", str(pages).encode())
        knobs.store(k, "run", b"1")
        pid = k.spawn("a")
        addr = k.mmap(pid, pages)
        k.write(pid, addr, [7] * pages)
        k.madvise(pid, addr, pages, MADV_MERGEABLE)
        while k.ksm.full_scans < 1:  # the first pass: checksums only
            k.ksm_do_scan(pages)
            k.advance(20)
        batch = k.ksm.begin_batch(pages)
        # each run of 4 pages makes a full KSM page; the next page waits in the unstable tree
        assert not k.ksm.scan_slice(batch, blocks * mps + 1)
        assert k.ksm.pages_unshared == 1 and k.ksm.pages_shared == blocks
        before = k.ksm.pages_in_order
        assert k.ksm.scan_slice(batch, pages)
        if not k.ksm.exact:
            assert k.ksm.pages_in_order == before
    assert kernels[1].ksm.pages_shared == pages // mps
    diff = first_difference(snapshot(kernels[0]), snapshot(kernels[1]))
    assert not diff, diff

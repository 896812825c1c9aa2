"""The worked timelines of the spec (§3.9, §3.6, §8) reproduced on the simulated clock."""

from __future__ import annotations

import pytest

from ksmfs.kernel import MADV_MERGEABLE, MADV_UNMERGEABLE, Kernel, knobs

COUNTERS = ("pages_shared", "pages_sharing", "pages_unshared", "pages_volatile")


def counters(k: Kernel) -> tuple[int, ...]:
    s = k.ksm.stats()
    return tuple(s[c] for c in COUNTERS)


def full_scan(k: Kernel, batch: int = 100) -> None:
    """Run batches until one more full scan has completed."""
    target = k.ksm.full_scans + 1
    while k.ksm.full_scans < target:
        k.ksm_do_scan(batch)
        k.advance(k.ksm.sleep_millisecs)


def proc(k: Kernel, comm: str, tokens: list[int], mergeable: bool = True) -> tuple[int, int]:
    pid = k.spawn(comm)
    addr = k.mmap(pid, len(tokens))
    k.write(pid, addr, tokens)
    if mergeable:
        k.madvise(pid, addr, len(tokens), MADV_MERGEABLE)
    return pid, addr


def test_spec_3_9_timeline() -> None:
    """Two processes with X, Y and X', Z (Z always changing) follow spec §3.9 pass by pass."""
    k = Kernel()
    a, _va = proc(k, "A", [11, 12])
    b, vb = proc(k, "B", [11, 13])
    knobs.store(k, "run", b"1\n")
    expected = {
        0: (0, 0, 0, 4),  # first visits only record checksums
        1: (1, 1, 1, 1),  # X/X' merge, Y unstable, Z volatile
        2: (1, 1, 1, 1),
        3: (1, 1, 1, 1),
        4: (1, 1, 0, 2),  # Y and Z reached age 4: skipped, so volatile
        5: (1, 1, 1, 1),  # processed again
    }
    scanned_before = 0
    for p in range(6):
        full_scan(k)
        assert counters(k) == expected[p], f"pass {p}"
        scanned = k.ksm.pages_scanned - scanned_before
        scanned_before = k.ksm.pages_scanned
        assert scanned == (2 if p == 4 else 4), f"pass {p}"
        assert k.ksm.full_scans == p + 1
        k.write(b, vb + 4096, [100 + p])
    # general_profit = 4096 - 4*64; each process: 4096 - 2*64 (spec §3.9)
    assert k.ksm.general_profit == 4096 - 4 * 64
    assert k.ksm_stat(a)["ksm_process_profit"] == 4096 - 2 * 64
    assert k.ksm_stat(b)["ksm_merging_pages"] == 1
    assert k.ksm.pages_skipped == 2


@pytest.mark.parametrize(
    ("n", "mps", "shared", "sharing", "unshared", "chains", "dups"),
    [
        (257, 256, 1, 255, 1, 0, 0),  # spec §3.6: the 257th page waits in the unstable tree
        (300, 256, 2, 298, 0, 1, 2),  # spec §8.7
        (1000, 256, 4, 996, 0, 1, 4),
        (10, 2, 5, 5, 0, 1, 5),  # "With 2, n copies make n/2 dups in one chain"
    ],
)
def test_max_page_sharing_chains(n: int, mps: int, shared: int, sharing: int, unshared: int, chains: int, dups: int) -> None:
    """n identical pages make chains and dups of max_page_sharing pages each."""
    k = Kernel()
    knobs.store(k, "max_page_sharing", f"{mps}\n".encode())
    proc(k, "A", [77] * n)
    knobs.store(k, "run", b"1")
    for _ in range(2):
        full_scan(k, batch=100000)
    s = k.ksm.stats()
    assert (s["pages_shared"], s["pages_sharing"], s["pages_unshared"]) == (shared, sharing, unshared)
    assert (s["stable_node_chains"], s["stable_node_dups"]) == (chains, dups)


def test_batches_do_not_change_counters() -> None:
    """The counters depend on the sequence of visits, not on how it is cut (spec §8.14)."""
    def go(batch: int) -> list[tuple[int, ...]]:
        k = Kernel()
        proc(k, "A", [1, 2, 3, 1, 2, 5] * 20)
        proc(k, "B", [3, 3, 9, 1] * 30)
        knobs.store(k, "run", b"1")
        out = []
        for _ in range(5):
            full_scan(k, batch)
            out.append(tuple(k.ksm.stats().values()))
        return out

    assert go(7) == go(100000) == go(1)


def test_batch_stops_at_end_of_pass() -> None:
    """A batch never runs past the end of a full scan; the rest of its budget is lost."""
    k = Kernel()
    proc(k, "A", list(range(1, 11)))
    knobs.store(k, "run", b"1")
    assert k.ksm_do_scan(100) == 10
    assert k.ksm.full_scans == 1
    assert k.ksm_do_scan(6) == 6
    assert k.ksm.full_scans == 1
    assert k.ksm_do_scan(100) == 4
    assert k.ksm.full_scans == 2


def test_cow_after_merge_is_lazy() -> None:
    """A write to a KSM page gives a private copy now; counters fall when ksmd passes."""
    k = Kernel()
    a, va = proc(k, "A", [5, 5, 5])
    knobs.store(k, "run", b"1")
    full_scan(k)
    full_scan(k)
    assert counters(k)[:2] == (1, 2)
    k.write(a, va, [6])
    assert k.smaps(a)[0][1].ksm == 2 * 4096  # smaps KSM falls at once
    assert counters(k)[:2] == (1, 2)  # pages_sharing only when ksmd visits
    assert k.ksm.cow_ksm == 1
    full_scan(k)
    assert counters(k) == (1, 1, 0, 1)
    assert list(k.read(a, va, 3)) == [6, 5, 5]


def test_run2_unmerges_and_resets_full_scans() -> None:
    """run=2 unmerges synchronously, frees every item, resets full_scans, keeps the mms."""
    k = Kernel()
    a, va = proc(k, "A", [5, 5, 7, 7])
    knobs.store(k, "run", b"1")
    full_scan(k)
    full_scan(k)
    scanned = k.ksm.pages_scanned
    knobs.store(k, "run", b"2")
    s = k.ksm.stats()
    assert (s["pages_shared"], s["pages_sharing"], s["full_scans"], s["pages_volatile"]) == (0, 0, 0, 0)
    assert s["pages_scanned"] == scanned
    assert k.ksm_stat(a) == {**k.ksm_stat(a), "ksm_rmap_items": 0, "ksm_merging_pages": 0, "ksm_mergeable": "yes"}
    assert k.smaps(a)[0][1].ksm == 0
    assert list(k.read(a, va, 4)) == [5, 5, 7, 7]
    knobs.store(k, "run", b"1")
    full_scan(k)
    assert counters(k) == (0, 0, 0, 4)  # starts over: two visits before anything merges


def test_unmergeable_breaks_now_counts_later() -> None:
    """MADV_UNMERGEABLE copies the KSM pages at once; the items go in the next scan."""
    k = Kernel()
    _a, _va = proc(k, "A", [5, 5])
    b, vb = proc(k, "B", [5, 5])
    knobs.store(k, "run", b"1")
    full_scan(k)
    full_scan(k)
    assert counters(k)[:2] == (1, 3)
    k.madvise(b, vb, 2, MADV_UNMERGEABLE)
    assert k.ksm_stat(b)["ksm_mergeable"] == "no"
    assert k.smaps(b)[0][1].ksm == 0
    assert k.ksm_stat(b)["ksm_merging_pages"] == 2
    full_scan(k)
    assert counters(k)[:2] == (1, 1)
    assert k.ksm_stat(b)["ksm_rmap_items"] == 0


def test_use_zero_pages() -> None:
    """Zero pages merge into the zero page: ksm_zero_pages and profit, not shared/sharing."""
    k = Kernel()
    knobs.store(k, "use_zero_pages", b"1")
    a, va = proc(k, "A", [0] * 8)
    knobs.store(k, "run", b"1")
    full_scan(k)
    full_scan(k)
    s = k.ksm.stats()
    assert (s["ksm_zero_pages"], s["pages_shared"], s["pages_sharing"]) == (8, 0, 0)
    assert k.ksm_stat(a)["ksm_rmap_items"] == 8  # freed in the next scan
    assert k.smaps(a)[0][1].rss == 0
    full_scan(k)
    assert k.ksm_stat(a)["ksm_rmap_items"] == 0
    k.write(a, va, [9])
    assert k.ksm.ksm_zero_pages == 7  # at once


def test_fork_child_attaches_on_first_visit() -> None:
    """A forked child's inherited KSM pages join on its first visit (no checksum round)."""
    k = Kernel()
    a, _va = proc(k, "A", [5, 5])
    knobs.store(k, "run", b"1")
    full_scan(k)
    full_scan(k)
    c = k.fork(a)
    st = k.ksm_stat(c)
    assert (st["ksm_merging_pages"], st["ksm_rmap_items"]) == (0, 0)
    assert k.smaps(c)[0][1].ksm == 2 * 4096
    full_scan(k)
    assert k.ksm_stat(c)["ksm_merging_pages"] == 2
    assert counters(k)[:2] == (1, 3)


def test_exit_is_counted_when_ksmd_passes() -> None:
    """An exiting mm's items are removed at the start of the next scan (spec §8.10)."""
    k = Kernel()
    _a, _ = proc(k, "A", [5, 6])
    b, _ = proc(k, "B", [5, 6])
    knobs.store(k, "run", b"1")
    full_scan(k)
    full_scan(k)
    assert counters(k)[:2] == (2, 2)
    k.exit(b)
    assert counters(k)[:2] == (2, 2)  # stale until ksmd runs
    full_scan(k)
    assert counters(k)[:2] == (2, 0)  # A still maps two KSM pages alone (spec §3.10)
    assert b not in k.tasks
    assert len(k.ksm.mm_list) == 1


def test_new_mm_inserted_behind_cursor() -> None:
    """An mm registered mid-pass waits for the next pass (inserted behind the cursor)."""
    k = Kernel()
    proc(k, "A", list(range(1, 101)))
    knobs.store(k, "run", b"1")
    k.ksm_do_scan(10)  # mid-pass
    b, _ = proc(k, "B", [500, 501])
    while k.ksm.full_scans < 1:
        k.ksm_do_scan(10)
    assert k.ksm_stat(b)["ksm_rmap_items"] == 0
    full_scan(k)
    assert k.ksm_stat(b)["ksm_rmap_items"] == 2


def test_smart_scan_skip_pattern() -> None:
    """A page that never merges is processed on visits 0-3, 5, 8, 13, 22 (spec §3.4)."""
    k = Kernel()
    proc(k, "A", [1])
    knobs.store(k, "run", b"1")
    processed = []
    for visit in range(23):
        before = k.ksm.pages_scanned
        full_scan(k)
        if k.ksm.pages_scanned > before:
            processed.append(visit)
    assert processed == [0, 1, 2, 3, 5, 8, 13, 22]


@pytest.mark.parametrize("exact", [True, False])
def test_skipped_item_leaves_its_node_when_ksmd_reaches_it(exact: bool) -> None:
    """should_skip_rmap_item() calls remove_rmap_item_from_tree() when the scan reaches the
    item, so a page earlier in the same VMA still finds the node full (mm/ksm.c,
    scan_get_next_rmap_item). Layout of one VMA: [c, a, d, b], max_page_sharing 3."""
    k = Kernel(exact=exact)
    knobs.store(k, "max_page_sharing", b"3")
    x = 7
    pid = k.spawn("p")
    base = k.mmap(pid, 4)
    k.write(pid, base + 4096, [x, x])  # a, d
    k.write(pid, base + 3 * 4096, k.unique_tokens(1))  # b: unique, ages without merging
    k.madvise(pid, base, 4, MADV_MERGEABLE)
    knobs.store(k, "run", b"1")
    full_scan(k, 1000)
    full_scan(k, 1000)  # a and d make the KSM page (1 shared, 1 sharing)
    k.write(pid, base + 3 * 4096, [x])  # b: now x, in place (checksum changes)
    full_scan(k, 1000)  # b: volatile; its age reaches 3
    k.write(pid, base, [x])  # c: a new page (a young rmap_item)
    full_scan(k, 1000)  # b (age 3, no skips left) joins the node: full; c: checksum
    assert counters(k)[:3] == (1, 2, 0)
    k.write(pid, base + 3 * 4096, [x])  # COW: b has a private copy, still on the node
    full_scan(k, 1000)
    # c searched first and found the node full -> unstable tree; then b was skipped and
    # left the node (sharing 2 -> 1)
    assert k.ksm.pages_skipped == 1
    assert counters(k)[:3] == (1, 1, 1)


def test_prctl_merge_any_and_disable() -> None:
    """PR_SET_MEMORY_MERGE makes every VMA mergeable; 0 clears all, madvised ones too."""
    k = Kernel()
    p = k.spawn("A")
    assert k.prctl(p, 67, 1) == 0
    v1 = k.mmap(p, 2)
    v2 = k.mmap(p, 2, shared=True)
    k.write(p, v1, [3, 3])
    k.write(p, v2, [3, 3])
    assert [v.mergeable for v in k.task(p).mm.vmas] == [True, False]
    assert k.prctl(p, 68) == 1
    knobs.store(k, "run", b"1")
    full_scan(k)
    full_scan(k)
    assert counters(k)[:2] == (1, 1)
    assert k.prctl(p, 67, 0) == 0
    assert k.ksm_stat(p)["ksm_merge_any"] == "no"
    assert k.ksm_stat(p)["ksm_mergeable"] == "no"
    with pytest.raises(Exception) as e:
        k.prctl(p, 67, 1, 1)
    assert getattr(e.value, "errno", None) == 22


def test_swap_breaks_sharing() -> None:
    """A KSM page swapped out and in comes back as ordinary pages to be merged again."""
    k = Kernel()
    a, va = proc(k, "A", [5, 5, 5])
    knobs.store(k, "run", b"1")
    full_scan(k)
    full_scan(k)
    assert k.swap_out(a, va, 1) == 1
    assert k.smaps(a)[0][1].swap == 3 * 4096
    k.swap_in(a, va, 3)
    assert list(k.read(a, va, 3)) == [5, 5, 5]
    assert k.smaps(a)[0][1].ksm == 0  # ordinary private pages now
    # the items kept their checksum and the content is unchanged, so (like a KSM page
    # rewritten with the same content, spec §8.2) they merge again in the next scan
    full_scan(k)
    assert counters(k)[:2] == (1, 2)
    assert k.smaps(a)[0][1].ksm == 3 * 4096


def test_clock_only_moves_when_driven() -> None:
    """The kernel's clock is simulated: it moves by advance() and ksmd's CPU cost only."""
    k = Kernel()
    assert k.now == 0
    k.advance(20)
    assert k.now == 20
    proc(k, "A", [1, 2])
    knobs.store(k, "run", b"1")
    assert k.ksmd_step() == 20
    # a batch costs simulated CPU time: 450 ns for each of the 2 pages it handled
    assert k.clock.ns == 20_000_000 + 2 * 450
    assert k.now == 20


def test_trace_events_of_a_pair_merge() -> None:
    """ksm_start_scan/stop_scan frame each pass; a pair merge traces the current page
    first (no ksm_page: it becomes the KSM page), then the tree page joining it."""
    k = Kernel()
    k.trace.enabled = {"ksm_start_scan", "ksm_stop_scan", "ksm_merge_with_ksm_page", "ksm_enter"}
    a, _va = proc(k, "A", [11, 12])
    b, _vb = proc(k, "B", [11, 13])
    knobs.store(k, "run", b"1")
    full_scan(k)
    full_scan(k)
    recs = [(r.event, r.fields) for r in k.trace.records]
    assert [e for e, _ in recs[:2]] == ["ksm_enter", "ksm_enter"]
    assert recs[2] == ("ksm_start_scan", {"seq": 0, "rmap_entries": 0})
    assert recs[3] == ("ksm_stop_scan", {"seq": 0, "rmap_entries": 4})
    assert recs[4] == ("ksm_start_scan", {"seq": 1, "rmap_entries": 4})
    merges = [f for e, f in recs if e == "ksm_merge_with_ksm_page"]
    assert len(merges) == 2
    first, second = merges
    assert first["ksm_page"] is None and second["ksm_page"] == first["pfn"]
    assert first["mm"] == k.task(b).mm.id and second["mm"] == k.task(a).mm.id
    assert recs[-1] == ("ksm_stop_scan", {"seq": 1, "rmap_entries": 4})

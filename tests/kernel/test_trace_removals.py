"""The removal side of the KSM trace events, as mm/ksm.c emits them.

remove_node_from_stable_tree() names every rmap_item of the node's hlist but the last
(ksm_remove_rmap_item), head first, then the node (ksm_remove_ksm_page), both with the
node's kpfn.  stable_tree_append() adds at the head, and a pair merge appends the tree
item before the current page, so the expected lines follow from the merge lines: per KSM
page, the items in reverse append order without the first one appended.  (The live
kernel's lines for these workloads are compared in tests/real/test_trace_differential.py.)
"""

from __future__ import annotations

import numpy as np
import pytest

from ksmfs.kernel import MADV_MERGEABLE, Kernel, knobs
from ksmfs.kernel.trace import KSM_EVENTS


def kernel(**knob_values: int) -> Kernel:
    k = Kernel()
    k.trace.enabled = set(KSM_EVENTS)
    for name, value in knob_values.items():
        knobs.store(k, name, str(value).encode())
    knobs.store(k, "pages_to_scan", b"4294967295")
    return k


def spawn(k: Kernel, tokens: np.ndarray) -> tuple[int, int]:
    pid = k.spawn("w")
    addr = k.mmap(pid, len(tokens))
    k.write(pid, addr, tokens)
    k.madvise(pid, addr, len(tokens), MADV_MERGEABLE)
    return pid, addr


def full_scan(k: Kernel) -> list:
    k.trace.clear()
    knobs.store(k, "run", b"1")
    k.ksm_do_scan(k.ksm.pages_to_scan)
    knobs.store(k, "run", b"0")
    return list(k.trace.records)


def append_orders(merges: list) -> dict[int, list[int]]:
    """pfn -> rmap_items in stable_tree_append() order, from ksm_merge_with_ksm_page
    lines: a NULL-ksm_page line (the current page) is followed by the tree item's line,
    which was appended first."""
    order: dict[int, list[int]] = {}
    pending: dict[int, int] = {}
    for r in merges:
        f = r.fields
        if f["ksm_page"] is None:
            pending[f["pfn"]] = f["rmap_item"]
            continue
        items = order.setdefault(f["pfn"], [])
        items.append(f["rmap_item"])
        if f["pfn"] in pending:
            items.append(pending.pop(f["pfn"]))
    return order


def removals(records: list) -> dict[int, list[int]]:
    """pfn -> the rmap_items its removal named, checking each group ends with its page."""
    out: dict[int, list[int]] = {}
    group: list = []
    for r in records:
        if r.event == "ksm_remove_rmap_item":
            group.append(r)
        elif r.event == "ksm_remove_ksm_page":
            assert all(g.fields["pfn"] == r.fields["pfn"] for g in group)
            out[r.fields["pfn"]] = [g.fields["rmap_item"] for g in group]
            group = []
    assert not group, "ksm_remove_rmap_item lines without their ksm_remove_ksm_page"
    return out


@pytest.mark.parametrize(
    ("knob_values", "tokens"),
    [
        ({}, (np.arange(100, dtype=np.uint64) % 25) + 1),  # 25 KSM pages of 4 items
        ({"max_page_sharing": 3}, np.full(20, 7, dtype=np.uint64)),  # a chain of dups
    ],
    ids=["plain", "chain"],
)
def test_exit_removes_every_node_with_its_hlist_but_the_last(knob_values, tokens) -> None:
    k = kernel(**knob_values)
    pid, _ = spawn(k, tokens)
    full_scan(k)
    merges = [r for r in full_scan(k) if r.event == "ksm_merge_with_ksm_page"]
    appended = append_orders(merges)
    assert sum(len(v) for v in appended.values()) == len(tokens)
    k.exit(pid)
    recs = full_scan(k)
    removed = removals(recs)
    assert set(removed) == set(appended)  # every pfn a removal names was merged, not -1
    for pfn, items in appended.items():
        assert removed[pfn] == items[::-1][:-1]
    assert all(r.comm == "ksmd" for r in recs)
    rm_items = [r for r in recs if r.event == "ksm_remove_rmap_item"]
    assert len(rm_items) == len(tokens) - len(appended)


def test_run_2_removes_in_the_writers_context() -> None:
    k = kernel()
    image = (np.arange(100, dtype=np.uint64) % 25) + 1
    spawn(k, image)
    spawn(k, image)
    full_scan(k)
    full_scan(k)
    k.trace.clear()
    with k.trace.running(4242, "bash"):
        knobs.store(k, "run", b"2")
    recs = list(k.trace.records)
    assert {(r.pid, r.comm) for r in recs} == {(4242, "bash")}
    # the first process's items leave pages the second still maps; the second one's
    # unmerge frees them: 3 of its 4 items per page are named, then the page
    assert [r.event for r in recs].count("ksm_remove_rmap_item") == 75
    assert [r.event for r in recs].count("ksm_remove_ksm_page") == 25
    knobs.store(k, "run", b"0")
    full_scan(k)
    assert all(r.comm == "ksmd" for r in full_scan(k))


def test_cow_by_every_mapper_names_the_newest_item() -> None:
    """Two processes share 25 KSM pages; both COW five of them: the stale node's removal
    names the second process's item (appended last) and keeps the tree item quiet."""
    k = kernel()
    image = np.arange(1, 26, dtype=np.uint64)
    a, addr_a = spawn(k, image)
    b, addr_b = spawn(k, image)
    full_scan(k)
    full_scan(k)
    k.write(a, addr_a + 10 * 4096, k.unique_tokens(5))
    k.write(b, addr_b + 10 * 4096, k.unique_tokens(5))
    recs = full_scan(k)
    mm_b = k.tasks[b].mm.id
    rm = [r for r in recs if r.event == "ksm_remove_rmap_item"]
    assert len(rm) == 5 and {r.fields["mm"] for r in rm} == {mm_b}
    assert [r.event for r in recs].count("ksm_remove_ksm_page") == 5

"""The trace differential: KSM trace events of the real kernel and of a ksmfs mount.

Each scenario is played on the machine's kernel (a C worker per process, ksmd paced one
pass per full scan, the live tracefs) and on a ksmfs mount (ksmfs/control, the mount's
sysfs and tracefs).  Per full scan (the steps after the previous scan plus the pass) the
lines of both sides must be the same in order: event, context (ksmd, the writing test
process, or the scenario process), every numeric field, and pointers and pfns compared
by consistency (trace_support.Canon).  Each scenario also names the (context, event)
pairs it exists to produce, so that a run where nothing was traced cannot pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ksmfs.scenario.realkernel import build_worker

from .conftest import PacedKsm
from .trace_support import MountSide, RealSide, counts, ksmfs_mount, live_tracefs

SCAN = ("full_scan",)

# (steps, (context, event) pairs the scenario must produce on the real kernel)
SCENARIOS: dict[str, tuple[list[tuple], set[tuple[str, str]]]] = {
    # chains of dups (max_page_sharing 4), COW of whole dups, prune at every search
    "chain-merges": ([
        ("knob", "max_page_sharing", 4), ("knob", "stable_node_chains_prune_millisecs", 0),
        ("spawn", "a", 24, "value:7"), ("spawn", "b", 10, "cycle:2"), SCAN, SCAN,
        ("write", "a", 0, 4, "unique"), SCAN, ("write", "a", 4, 8, "unique"), SCAN, SCAN,
    ], {("ksmd", "ksm_merge_with_ksm_page"), ("ksmd", "ksm_remove_ksm_page")}),
    # a stale dup found by a search of another content walking through the chain
    # (stable_node_dup() with prune), before ksmd reaches the dup's own items
    "chain-prune": ([
        ("knob", "max_page_sharing", 2), ("knob", "stable_node_chains_prune_millisecs", 0),
        ("spawn", "a", 2, "unique"), ("spawn", "b", 4, "value:7"), SCAN, SCAN,
        ("write", "b", 2, 2, "unique"), SCAN, SCAN,
    ], {("ksmd", "ksm_remove_rmap_item"), ("ksmd", "ksm_remove_ksm_page")}),
    # COW of shared KSM pages: nothing at the write; a removal only once no mapper is left
    "cow": ([
        ("spawn", "a", 25, "cycle:25"), ("spawn", "b", 25, "cycle:25"), SCAN, SCAN,
        ("write", "a", 0, 10, "unique"), SCAN, ("write", "b", 0, 5, "unique"), SCAN,
        ("write", "a", 10, 5, "unique"), ("write", "b", 10, 5, "unique"), SCAN,
    ], {("ksmd", "ksm_remove_rmap_item"), ("ksmd", "ksm_remove_ksm_page")}),
    # MADV_UNMERGEABLE breaks the KSM pages at once; ksmd removes the nodes at its visit
    "unmergeable": ([
        ("spawn", "a", 100, "cycle:25"), ("spawn", "b", 4, "value:1000"), SCAN, SCAN,
        ("unmergeable", "a"), SCAN, ("exit", "a"), SCAN,
    ], {("ksmd", "ksm_remove_rmap_item"), ("ksmd", "ksm_remove_ksm_page")}),
    # exit: __ksm_exit in the process's context, the removals by ksmd in the next pass
    "exit": ([
        ("spawn", "a", 100, "cycle:25"), ("spawn", "b", 4, "value:1000"), SCAN, SCAN,
        ("exit", "a"), SCAN, ("exit", "b"), SCAN,
    ], {("a", "ksm_exit"), ("ksmd", "ksm_remove_rmap_item"), ("ksmd", "ksm_remove_ksm_page")}),
    # run=2: unmerge_and_remove_all_rmap_items() in the writer's context
    "run2": ([
        ("spawn", "a", 100, "cycle:25"), ("spawn", "b", 100, "cycle:25"), SCAN, SCAN,
        ("knob", "run", 2), SCAN, SCAN,
    ], {("writer", "ksm_remove_rmap_item"), ("writer", "ksm_remove_ksm_page")}),
    # triggers and a filter written as tools write them: traceoff (with or without a
    # condition) acts after its own record; a filter drops lines
    "triggers": ([
        ("spawn", "a", 10, "cycle:5"), SCAN,
        ("tracefs_write", "events/ksm/ksm_start_scan/filter", "seq != 1 && comm == \"ksmd\""),
        ("tracefs_write", "events/ksm/ksm_stop_scan/trigger", "traceoff if seq > 1"), SCAN,
        ("tracefs_write", "events/ksm/ksm_start_scan/filter", "0"),
        ("write", "a", 0, 5, "unique"), SCAN, SCAN,
        ("tracefs_write", "tracing_on", "1"),
        ("tracefs_write", "events/ksm/ksm_start_scan/trigger", "traceoff:1"), SCAN,
        ("tracefs_write", "tracing_on", "1"), ("write", "a", 5, 5, "value:9"), SCAN, SCAN,
    ], {("ksmd", "ksm_stop_scan"), ("ksmd", "ksm_remove_ksm_page")}),
    # a process spawned with merge_any (ksm_enter at its prctl), zero pages, merge_any off
    "merge-any": ([
        ("knob", "use_zero_pages", 1),
        ("spawn", "c", 20, "cycle:5", True), ("spawn", "z", 8, "zero"), SCAN, SCAN,
        ("merge_any_off", "c"), SCAN, SCAN,
    ], {("c", "ksm_enter"), ("ksmd", "ksm_merge_one_page"), ("ksmd", "ksm_remove_ksm_page")}),
}


def play(side, steps: list[tuple]) -> list[list[tuple]]:
    """Run the steps; one list of canonical lines per full scan."""
    side.start()
    side.take()  # what setting up the side traced
    scans: list[list[tuple]] = []
    try:
        for op, *args in steps:
            if op == "full_scan":
                side.full_scan()
                scans.append(side.take())
            else:
                getattr(side, op)(*args)
    finally:
        side.close()
    return scans


@pytest.mark.realkernel
@pytest.mark.fuse
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_trace_lines_match_the_real_kernel(paced: PacedKsm, tmp_path: Path, name: str) -> None:
    steps, expected = SCENARIOS[name]
    exe = build_worker()
    with live_tracefs() as tracefs:
        real = RealSide(paced.sysfs, exe, tracefs)
        real_scans = play(real, steps)
    with ksmfs_mount(tmp_path) as mnt:
        mount = MountSide(mnt, exe.name[:15])
        mount_scans = play(mount, steps)

    problems = [f"real: {p}" for p in real.canon.problems]
    problems += [f"mount: {p}" for p in mount.canon.problems]
    for side in (real, mount):
        if len(side.canon.zero_pfns) > 1:
            problems.append(f"{side.name}: zero-page merges name several pfns")
    for k, (r, m) in enumerate(zip(real_scans, mount_scans, strict=True), 1):
        print(f"{name} scan {k}: real {dict(counts(r))}")
        if counts(r) != counts(m):
            problems.append(
                f"scan {k}: counts differ: real {dict(counts(r))} mount {dict(counts(m))}"
            )
        elif r != m:
            i = next(i for i, (a, b) in enumerate(zip(r, m, strict=False)) if a != b)
            problems.append(f"scan {k}: line {i} differs: real {r[i]} mount {m[i]}")
    seen = {(line[0], line[1]) for scan in real_scans for line in scan}
    missing = expected - seen
    assert not missing, f"{name}: the real kernel traced none of {sorted(missing)}"
    assert not problems, f"{name}:\n" + "\n".join(problems)

"""A capture rebuilt in the simulated kernel behaves like the same processes made by hand
through the kernel's public API, and the estimate loop stops when nothing changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ksmfs.capture.build import BuildError, build
from ksmfs.capture.estimate import run
from ksmfs.capture.format import (
    KIND_ANON,
    KIND_FILE,
    KIND_SWAP,
    KIND_ZERO,
    PF_VOLATILE,
    Capture,
    CaptureError,
    CProcess,
    CVma,
    load,
)
from ksmfs.kernel import MADV_MERGEABLE, PR_SET_MEMORY_MERGE, Kernel, knobs

ANON = ["rd", "wr", "mr", "mw", "me", "ac"]
BASE = 0x7F0000000000
STACK = 0x7FFF00000000
COUNTERS = ("pages_shared", "pages_sharing", "pages_unshared", "pages_volatile",
            "ksm_zero_pages", "pages_scanned")


def make_capture(merge_any: bool, nproc: int = 3) -> Capture:
    """Per process: an anonymous VMA (16 pages: 8 shared contents, 4 zero, 2 unique,
    2 not present), a private file mapping (4 file pages, 2 COW'd anon pages with shared
    contents), a [stack] (4 shared contents; with mg only when not merge_any, as after
    exec under merge_any) and a MAP_SHARED VMA (incompatible)."""
    procs, offs, kinds, pfl, cont = [], [], [], [], []
    first = 0
    uniq = 1000
    for i in range(nproc):
        vmas = []

        def add(start: int, npages: int, flags: list[str], name: str | None,
                pages: list[tuple[int, int, int]]) -> None:
            nonlocal first
            vmas.append(CVma(start, start + npages * 4096, flags, name, 0, first, len(pages)))  # noqa: B023 - called in this iteration
            for off, kind, c in pages:
                offs.append(off)
                kinds.append(kind)
                pfl.append(0)
                cont.append(c)
            first += len(pages)

        mg = ["mg"]
        anon_pages = [(j, KIND_ANON, 10 + j) for j in range(8)]
        anon_pages += [(8 + j, KIND_ANON, 0) for j in range(4)]
        anon_pages += [(12, KIND_ANON, uniq + 2 * i), (13, KIND_ANON, uniq + 2 * i + 1)]
        add(BASE, 16, ANON + mg, None, anon_pages)
        add(BASE + 0x100000, 6, ["rd", "wr", "mr", "mw", "me"] + mg, "/usr/lib/libx.so",
            [(0, KIND_FILE, 0), (1, KIND_FILE, 0), (2, KIND_ANON, 10), (3, KIND_ANON, 11),
             (4, KIND_FILE, 0), (5, KIND_FILE, 0)])
        add(STACK, 4, ANON + ["gd"] + ([] if merge_any else ["mg"]), "[stack]",
            [(j, KIND_ANON, 20 + j) for j in range(4)])
        add(BASE + 0x200000, 4, ["rd", "wr", "sh", "mr", "mw", "me", "ms"], "/dev/zero (deleted)",
            [(j, KIND_FILE, 0) for j in range(4)])
        procs.append(CProcess(4000 + i, f"p{i}", 0, i,
                              {"ksm_merge_any": "yes" if merge_any else "no"}, vmas))
    n = len(kinds)
    return Capture("6.18.0", {}, "madvise", None, procs, np.array(offs, dtype=np.uint64),
                   np.array(kinds, dtype=np.uint8), np.array(pfl, dtype=np.uint8),
                   np.array(cont, dtype=np.uint64), np.zeros(n, dtype=np.uint32))


def by_hand(merge_any: bool, nproc: int = 3) -> Kernel:
    """The same processes through spawn/mmap/write/madvise/prctl."""
    k = Kernel()
    uniq = k.unique_tokens(2 * nproc)
    for i in range(nproc):
        pid = k.spawn(f"p{i}")
        a = k.mmap(pid, 16, addr=BASE)
        k.write(pid, a, np.array(list(range(10, 18)) + [0] * 4 + [uniq[2 * i], uniq[2 * i + 1]],
                                 dtype=np.uint64))
        f = k.mmap(pid, 6, file="/usr/lib/libx.so", addr=BASE + 0x100000)
        k.write(pid, f + 2 * 4096, [10, 11])
        s = k.mmap(pid, 4, stack=True, name="[stack]", addr=STACK)
        k.write(pid, s, [20, 21, 22, 23])
        k.mmap(pid, 4, shared=True, addr=BASE + 0x200000)
        if merge_any:
            k.prctl(pid, PR_SET_MEMORY_MERGE, 1)
            k.madvise(pid, s, 4, 13)  # the [stack] made before exec has no mg
        else:
            for addr, n in ((a, 16), (f, 6), (s, 4)):
                k.madvise(pid, addr, n, MADV_MERGEABLE)
    return k


def counters(k: Kernel, n: int) -> list[tuple[int, ...]]:
    knobs.store(k, "run", b"1\n")
    out = []
    for _ in range(n):
        target = k.ksm.full_scans + 1
        while k.ksm.full_scans < target:
            k.ksm_do_scan(1000)
        s = k.ksm.stats()
        out.append(tuple(s[c] for c in COUNTERS))
    return out


@pytest.mark.parametrize("merge_any", [False, True])
def test_built_kernel_scans_like_the_hand_made_one(merge_any: bool) -> None:
    built = build(make_capture(merge_any), "as-is")
    assert counters(built.kernel, 6) == counters(by_hand(merge_any), 6)


def test_merge_any_assumption_adds_the_stack_of_processes_that_did_not_ask() -> None:
    cap = make_capture(False)
    for p in cap.processes:
        for v in p.vmas:
            v.vmflags = [f for f in v.vmflags if f != "mg"]
    none = run(build(cap, "as-is"))
    assert none.final["ksm"]["pages_sharing"] == 0 and not none.final["processes"]
    res = run(build(cap, "merge-any"))
    # 3 processes: contents 10..17 (8 + 2 COW'd copies each) and 20..23 (stack) merge;
    # the 4 zero pages of each too (use_zero_pages 0: one KSM page of zeros)
    shared = 8 + 4 + 1
    copies = 3 * (8 + 2 + 4 + 4)
    assert res.final["ksm"]["pages_shared"] == shared
    assert res.final["ksm"]["pages_sharing"] == copies - shared
    assert res.converged and res.converged_at == 2
    assert set(res.final["processes"]) == {"4000", "4001", "4002"}


def test_volatile_pages_never_merge_and_the_loop_converges() -> None:
    cap = make_capture(True)
    cap.pflags[cap.content == 10] |= PF_VOLATILE
    res = run(build(cap, "as-is"))
    plain = run(build(make_capture(True), "as-is"))
    # content 10 lives in 6 pages (anon + COW'd) of 3 processes: no longer merged
    assert plain.final["ksm"]["pages_sharing"] - res.final["ksm"]["pages_sharing"] == 5
    assert res.final["ksm"]["pages_volatile"] == 6
    assert res.converged


def test_swapped_and_zero_page_kinds_are_not_scanned() -> None:
    cap = make_capture(True)
    cap.kind[cap.content == 11] = KIND_SWAP
    cap.kind[cap.content == 12] = KIND_ZERO
    res = run(build(cap, "as-is"))
    plain = run(build(make_capture(True), "as-is"))
    # 6 pages with content 11 and 3 with content 12 are no longer candidates
    assert plain.final["ksm"]["pages_sharing"] - res.final["ksm"]["pages_sharing"] == 5 + 2


def test_knobs_and_refusals(tmp_path: Path) -> None:
    cap = make_capture(True)
    built = build(cap, "as-is", {"max_page_sharing": 2, "use_zero_pages": 1})
    res = run(built)
    assert res.final["ksm"]["max_page_sharing"] == 2
    assert res.final["ksm"]["ksm_zero_pages"] == 3 * 4  # 4 zero pages in each of 3 processes
    with pytest.raises(BuildError, match="max_page_sharing=1"):
        build(cap, "as-is", {"max_page_sharing": 1})
    with pytest.raises(BuildError, match="unknown or read-only"):
        build(cap, "as-is", {"pages_shared": 1})
    with pytest.raises(BuildError, match="--assume"):
        build(cap, "all")


def test_format_round_trip_and_bad_files(tmp_path: Path) -> None:
    cap = make_capture(True)
    path = tmp_path / "c.kcap"
    cap.save(path)
    back = load(path)
    assert [p.pid for p in back.processes] == [p.pid for p in cap.processes]
    assert back.processes[0].vmas == cap.processes[0].vmas
    for name in ("offset", "kind", "pflags", "content", "share"):
        assert np.array_equal(getattr(back, name), getattr(cap, name))
    assert counters(build(back, "as-is").kernel, 4) == counters(build(cap, "as-is").kernel, 4)
    (tmp_path / "text").write_text("hello")
    for bad, why in ((tmp_path / "none", "no such file"), (tmp_path / "text", "not a readable")):
        with pytest.raises(CaptureError, match=why):
            load(bad)
    import json
    import zipfile

    with zipfile.ZipFile(path, "a") as z:
        header = json.loads(z.read("capture.json"))
    header["version"] = 99
    with zipfile.ZipFile(tmp_path / "v99.kcap", "w") as z:
        z.writestr("capture.json", json.dumps(header))
    with pytest.raises(CaptureError, match="version 99"):
        load(tmp_path / "v99.kcap")


def test_fork_shared_frames_converge_to_what_many_more_scans_give() -> None:
    """Frames still shared after fork merge a pass later than private copies; the loop
    must not stop before that (reference: the same processes made with fork(), 12 scans)."""
    ref = Kernel()
    parent = ref.spawn("parent")
    a = ref.mmap(parent, 8, addr=BASE)
    ref.write(parent, a, np.arange(30, 38, dtype=np.uint64))
    ref.prctl(parent, PR_SET_MEMORY_MERGE, 1)
    ref.fork(parent)
    other = ref.spawn("other")
    b = ref.mmap(other, 4, addr=BASE)
    ref.write(other, b, np.arange(30, 34, dtype=np.uint64))
    ref.prctl(other, PR_SET_MEMORY_MERGE, 1)
    want = counters(ref, 12)[-1]

    offs = np.arange(8, dtype=np.uint64)
    procs, first = [], 0
    parts = []
    for i, (n, shared) in enumerate(((8, True), (8, True), (4, False))):
        procs.append(CProcess(5000 + i, f"p{i}", 0, i, {"ksm_merge_any": "yes"},
                              [CVma(BASE, BASE + n * 4096, ANON + ["mg"], None, 0, first, n)]))
        parts.append((offs[:n], np.arange(1, n + 1, dtype=np.uint32) if shared
                      else np.zeros(n, dtype=np.uint32)))
        first += n
    cap = Capture("6.18.0", {}, "never", None, procs,
                  np.concatenate([o for o, _ in parts]), np.full(first, KIND_ANON, np.uint8),
                  np.zeros(first, np.uint8),
                  np.concatenate([np.arange(30, 30 + len(o), dtype=np.uint64) for o, _ in parts]),
                  np.concatenate([s for _, s in parts]))
    res = run(build(cap, "as-is"))
    assert res.converged
    got = res.final["ksm"]
    assert (got["pages_shared"], got["pages_sharing"]) == want[:2]
    assert got["pages_sharing"] > 0


def test_scan_time_advisor_runs_batch_by_batch() -> None:
    """With advisor_mode scan-time the advisor sets pages_to_scan, so the estimate runs
    ksmd's real batches; it must reach the same merged state as without the advisor."""
    cap = make_capture(True)
    plain = run(build(cap, "as-is", {"pages_to_scan": 5000}))
    adv = run(build(cap, "as-is", {"advisor_mode": "scan-time", "pages_to_scan": 100}))
    assert adv.final["ksm"]["pages_sharing"] == \
        plain.final["ksm"]["pages_sharing"] > 0
    assert adv.converged


def test_a_failed_save_leaves_no_file(tmp_path: Path) -> None:
    """Saving over a directory fails with OSError and leaves no temporary file beside it."""
    (tmp_path / "d").mkdir()
    with pytest.raises(OSError):
        make_capture(True).save(tmp_path / "d")
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_contents_that_merge_nowhere_end_as_pages_unshared() -> None:
    """Nothing merges, so the counters that converge are the ones of the second full scan
    (the first only records checksums): every rmap_item unshared, none volatile."""
    cap = make_capture(True)
    anon = cap.kind == KIND_ANON
    cap.content[anon] = 5000 + np.arange(int(anon.sum()), dtype=np.uint64)  # all distinct
    res = run(build(cap, "as-is"))
    ksm = res.final["ksm"]
    items = sum(p["ksm_rmap_items"] for p in res.final["processes"].values())
    assert ksm["pages_shared"] == ksm["pages_sharing"] == 0
    assert ksm["pages_volatile"] == 0 and ksm["pages_unshared"] == items > 0
    assert res.converged and res.converged_at == 2

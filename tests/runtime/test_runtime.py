"""The runtime without a mount: ksmd pacing on trio's virtual clock, store wake-ups, the
scenario timeline, FUSE options and the mount checks."""

from __future__ import annotations

import os

import numpy as np
import pytest
import trio

from ksmfs.kernel import Kernel, knobs
from ksmfs.kfs import Tree
from ksmfs.runtime import (
    KsmdPacer,
    MountConfig,
    Timeline,
    build_simulation,
    check_mountpoint,
    fuse_options,
)
from ksmfs.runtime.mount import _unescape_mountinfo

RUN = ("sys", "kernel", "mm", "ksm", "run")


def merging_kernel(n: int = 3, pages: int = 64) -> Kernel:
    k = Kernel(version="6.18")
    image = np.arange(1, pages + 1, dtype=np.uint64)
    for i in range(n):
        pid = k.spawn(f"vm{i}")
        addr = k.mmap(pid, pages)
        k.write(pid, addr, image)
        k.madvise(pid, addr, pages, 12)
    knobs.store(k, "run", b"1\n")
    return k


def node(k: Kernel, *path: str):
    return Tree(k).lookup(path)


async def pace_merging_kernel(speed: float, seconds: float) -> tuple[Kernel, KsmdPacer]:
    """A merging kernel paced for ``seconds`` of (virtual) wall time at ``speed``."""
    k = merging_kernel()
    pacer = KsmdPacer(k, speed=speed)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pacer.run)
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()
    return k, pacer


async def test_pacer_runs_a_batch_every_sleep_millisecs(autojump_clock):
    """At speed 1, one second of (virtual) wall time is 1000 simulated ms and about
    1000 / sleep_millisecs batches."""
    k, pacer = await pace_merging_kernel(speed=1.0, seconds=1.0)
    # The clock is synced when ksmd wakes: at most one sleep (20 ms) behind.
    assert 980 <= k.now <= 1001
    assert 48 <= pacer.batches <= 52
    assert k.ksm.pages_sharing > 0


async def test_speed_multiplies_simulated_time_and_batches(autojump_clock):
    """--speed 10: ten times the simulated time and ten times the batches."""
    k, pacer = await pace_merging_kernel(speed=10.0, seconds=1.0)
    assert 9800 <= k.now <= 10001
    assert 480 <= pacer.batches <= 520


async def test_idle_ksmd_sleeps_until_a_store_wakes_it(autojump_clock):
    """With nothing registered ksmd is idle; a store (a new mergeable process through
    the control file) wakes it at once, as __ksm_enter does."""
    k = Kernel(version="6.18")
    knobs.store(k, "run", b"1\n")
    pacer = KsmdPacer(k)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pacer.run)
        await trio.sleep(5)
        idle_batches = pacer.batches
        assert idle_batches == 1  # looked once, found nothing, went idle
        control = node(k, "ksmfs", "control")
        control.spec.store(k, None, b"spawn vm pages=8 fill=cycle:8 mergeable\n")
        woke_at = trio.current_time()
        pacer.on_store(control, b"")
        await trio.testing.wait_all_tasks_blocked()
        assert pacer.batches == idle_batches + 1
        assert trio.current_time() == woke_at
        nursery.cancel_scope.cancel()


async def test_changed_sleep_millisecs_wakes_ksmd_early(autojump_clock):
    """A long sleep is cut short by a changed sleep_millisecs (sleep_millisecs_store wakes
    ksm_iter_wait), not by other stores; run = 1 wakes only an idle ksmd (run_store wakes
    ksm_thread_wait), so it does not cut a sleep short (docs/NOTES.md, live 6.18)."""
    k = merging_kernel()
    knobs.store(k, "sleep_millisecs", b"100000\n")
    pacer = KsmdPacer(k)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pacer.run)
        await trio.sleep(1)
        assert pacer.batches == 1
        knobs.store(k, "pages_to_scan", b"200\n")
        pacer.on_store(node(k, "sys", "kernel", "mm", "ksm", "pages_to_scan"), b"200\n")
        await trio.sleep(1)
        assert pacer.batches == 1  # not a reason to wake
        knobs.store(k, "sleep_millisecs", b"50000\n")
        pacer.on_store(node(k, "sys", "kernel", "mm", "ksm", "sleep_millisecs"), b"")
        await trio.sleep(1)
        assert pacer.batches == 2
        knobs.store(k, "run", b"1\n")
        pacer.on_store(node(k, *RUN), b"1\n")
        await trio.sleep(1)
        assert pacer.batches == 2
        nursery.cancel_scope.cancel()


def test_slice_size_follows_the_time_per_page():
    """The next slice fits SLICE_TARGET_S at the last slice's time per page when the
    last one was far from it, grows at most twofold per slice and stays within its
    bounds."""
    pacer = KsmdPacer(Kernel(version="6.18"))
    target = pacer.SLICE_TARGET_S
    pacer.slice_pages = 1000
    assert pacer.next_slice_pages(1000, 4 * target) == 250  # four times too slow
    assert pacer.next_slice_pages(1000, target / 10) == 2000  # fast: only doubles
    assert pacer.next_slice_pages(1000, 1000 * target) == pacer.MIN_SLICE_PAGES
    assert pacer.next_slice_pages(1000, 1.2 * target) == 1000  # near the target: kept
    assert pacer.next_slice_pages(1000, 0.7 * target) == 1000
    assert pacer.next_slice_pages(10, 0.01 * target) == 1000  # cut short by the batch's end
    pacer.slice_pages = pacer.MAX_SLICE_PAGES
    assert pacer.next_slice_pages(pacer.MAX_SLICE_PAGES, target / 100) == pacer.MAX_SLICE_PAGES
    assert pacer.next_slice_pages(0, 0.0) == pacer.MAX_SLICE_PAGES  # nothing to learn from


async def test_a_pass_starts_with_small_slices(autojump_clock):
    """After the batch that ends a pass, the next one (the first of the next pass, which
    may merge where the last one only hashed) starts with FIRST_SLICE_PAGES again."""
    k = merging_kernel(n=4, pages=3000)
    knobs.store(k, "pages_to_scan", b"5000\n")
    pacer = KsmdPacer(k)
    seen: list[tuple[int, int, int]] = []
    pacer.on_batch = lambda: seen.append((k.ksm.full_scans, pacer.slice_pages, pacer.slices))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pacer.run)
        await trio.sleep(0.3)
        nursery.cancel_scope.cancel()
    ends = [i for i in range(1, len(seen)) if seen[i][0] > seen[i - 1][0]]
    assert len(ends) >= 2  # several passes of 3 batches each
    assert all(seen[i][1] == pacer.FIRST_SLICE_PAGES for i in ends)
    # batches were cut into several slices (5000 pages > FIRST_SLICE_PAGES)
    assert seen[-1][2] > 2 * len(seen)


def test_pacer_refuses_a_nonsense_speed():
    """--speed must be positive and finite."""
    for speed in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError):
            KsmdPacer(Kernel(version="6.18"), speed=speed)


def test_the_demo_timeline_plays_as_full_scans_complete():
    """The demo scenario's steps run after their full scan: qemu-vm-3 exits after scan 6,
    qemu-vm-new boots after scan 7; a run=2 reset of full_scans does not replay them."""
    sim = build_simulation(MountConfig("/nonexistent", scenario="demo"))
    k, timeline = sim.kernel, sim.timeline
    assert isinstance(timeline, Timeline) and k.ksm.run == 1

    def comms() -> list[str]:
        return sorted(t.comm for t in k.tasks.values())

    assert "qemu-vm-3" in comms()
    while timeline.completed < 8:
        k.ksmd_step()
        timeline.after_batch()
    assert "qemu-vm-3" not in comms() and "qemu-vm-new" in comms()
    knobs.store(k, "run", b"2\n")
    knobs.store(k, "run", b"1\n")
    assert k.ksm.full_scans == 0
    while k.ksm.full_scans < 2:
        k.ksmd_step()
        timeline.after_batch()
    assert timeline.completed == 10
    assert comms().count("qemu-vm-new") == 1


def test_fuse_options():
    """The options libfuse accepts (notes §1.7); allow_other only when asked."""
    base = fuse_options(MountConfig("/m"))
    assert base == {"fsname=ksmfs", "subtype=ksmfs", "default_permissions", "auto_unmount"}
    assert fuse_options(MountConfig("/m", allow_other=True)) == base | {"allow_other"}


def test_mountinfo_paths_are_unescaped():
    """/proc/self/mountinfo writes a space as \\040 (and tab, newline, backslash)."""
    assert _unescape_mountinfo("/tmp/a\\040b\\011c") == "/tmp/a b\tc"
    assert _unescape_mountinfo("/plain") == "/plain"


def test_mount_checks_name_the_problem(tmp_path):
    """Missing, not a directory, not empty: one line each; an empty directory is fine."""
    assert "no such directory" in check_mountpoint(str(tmp_path / "nope"))
    f = tmp_path / "file"
    f.write_text("x")
    assert "not a directory" in check_mountpoint(str(f))
    d = tmp_path / "d"
    d.mkdir()
    assert check_mountpoint(str(d)) is None
    (d / "x").write_text("")
    assert "not empty" in check_mountpoint(str(d))
    assert os.path.isdir(d)


async def test_timeline_plays_on_while_ksmd_is_stopped(autojump_clock):
    """run2-and-back stops ksmd with run=2 after full scan 3 and restarts it after 5: on a
    mount the scans in between are virtual (one per sleep_millisecs), so run comes back
    to 1 and merging starts over, as `ksmfs run` does it."""
    sim = build_simulation(MountConfig("/nonexistent", scenario="run2-and-back"))
    k, timeline = sim.kernel, sim.timeline
    pacer = KsmdPacer(k, speed=1.0)
    pacer.on_batch = timeline.after_batch
    pacer.timeline = timeline
    seen_run = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pacer.run)
        for _ in range(400):
            await trio.sleep(0.05)
            seen_run.append(k.ksm.run)
            if timeline.completed >= 7 and k.ksm.run == 1 and k.ksm.full_scans >= 2:
                break
        nursery.cancel_scope.cancel()
    assert 2 in seen_run  # ksmd was stopped by the timeline
    assert k.ksm.run == 1 and timeline.completed >= 7
    assert k.ksm.full_scans >= 2 and k.ksm.pages_sharing > 0  # merging started over


def _builtin_names() -> list[str]:
    from ksmfs.scenario.loader import iter_builtin_paths

    return [p.stem for p in iter_builtin_paths()]


@pytest.mark.parametrize("name", _builtin_names())
async def test_mount_timeline_agrees_with_ksmfs_run(name, autojump_clock):
    """A mount's timeline (the real pacer on trio's virtual clock) and `ksmfs run --backend
    sim` play the same steps after the same full scans: the snapshot the contract defines,
    taken on the mount at each completed full scan, equals the run's."""
    from ksmfs.scenario import load_scenario
    from ksmfs.scenario.sim import run_sim

    scenario = load_scenario(name)
    expected = run_sim(scenario, lambda s: None)
    sim = build_simulation(MountConfig("/nonexistent", scenario=name))
    timeline = sim.timeline
    assert timeline is not None
    seen: list[dict] = []
    timeline.on_full_scan = lambda k: seen.append(timeline.backend.snapshot(k))
    pacer = KsmdPacer(sim.kernel, speed=1.0)
    pacer.on_batch = timeline.after_batch
    pacer.timeline = timeline
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pacer.run)
        for _ in range(4000):
            await trio.sleep(0.05)
            if len(seen) >= scenario.max_full_scans:
                break
        nursery.cancel_scope.cancel()
    assert len(seen) >= scenario.max_full_scans
    for k, (got, want) in enumerate(zip(seen, expected[1:], strict=False), start=1):
        assert got == want, f"{name}: snapshot {k} differs"


EDGE_TIMELINE = """
name = "edges"
max_full_scans = 6
[ksm]
pages_to_scan = 40
[[process]]
name = "a"
count = 2
[[process.vma]]
name = "ram"
pages = 64
mergeable = true
fill = [{from = "value:3", pages = 32}, {from = "unique", pages = 32}]
[[step]]
after_full_scans = 2
sysfs = {pages_to_scan = 0}
[[step]]
after_full_scans = 3
fork = {process = "a-0", name = "child"}
[[step]]
after_full_scans = 4
sysfs = {pages_to_scan = 40}
[[step]]
after_full_scans = 6
exit = "a-1"
"""


async def test_mount_and_run_agree_on_pages_to_scan_0_and_the_last_scan(tmp_path, autojump_clock):
    """pages_to_scan 0 makes full scans virtual on the mount as in `ksmfs run` (contract
    v2), and a step at K = max_full_scans runs in neither: a-1 is still there after it."""
    from ksmfs.scenario import load_scenario
    from ksmfs.scenario.sim import run_sim

    path = tmp_path / "edges.toml"
    path.write_text(EDGE_TIMELINE)
    scenario = load_scenario(path)
    expected = run_sim(scenario, lambda s: None)
    sim = build_simulation(MountConfig("/nonexistent", scenario=str(path)))
    timeline = sim.timeline
    assert timeline is not None
    seen: list[dict] = []
    timeline.on_full_scan = lambda k: seen.append(timeline.backend.snapshot(k))
    pacer = KsmdPacer(sim.kernel, speed=1.0)
    pacer.on_batch = timeline.after_batch
    pacer.timeline = timeline
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pacer.run)
        for _ in range(2000):  # 40 s of virtual time: hundreds of full scans
            await trio.sleep(0.02)
            if len(seen) >= 9:
                break
        nursery.cancel_scope.cancel()
    assert len(seen) >= 9, f"the mount's timeline stalled after {len(seen)} full scans"
    assert seen[:6] == expected[1:]
    # full scans 3 and 4 were virtual: the kernel's counter moved only 4 times in 6
    assert [s["ksm"]["full_scans"] for s in expected[1:]] == [1, 2, 2, 2, 3, 4]
    assert "child" in seen[3]["processes"]
    assert all("a-1" in s["processes"] for s in seen)

"""The sim backend on the built-in scenarios: contract-shaped snapshots and behaviour that
follows from the spec (ksm-kernel-spec.md sections cited per test)."""

from __future__ import annotations

import dataclasses
from functools import cache
from pathlib import Path

import pytest

from ksmfs.scenario.loader import list_builtin, load_scenario
from ksmfs.scenario.model import KSM_COUNTER_FILES, KSM_STAT_FIELDS
from ksmfs.scenario.sim import SimBackend, run_sim

KNOBS = ("run", "pages_to_scan", "sleep_millisecs", "merge_across_nodes", "max_page_sharing",
         "stable_node_chains_prune_millisecs", "use_zero_pages", "smart_scan",
         "advisor_max_cpu", "advisor_min_pages_to_scan", "advisor_max_pages_to_scan",
         "advisor_target_scan_time")
BUILTINS = [n for n, _ in list_builtin()]


@cache
def run(name: str) -> tuple[dict, ...]:
    return tuple(run_sim(load_scenario(name), lambda s: None))


def by(name: str, k: int) -> dict:
    return run(name)[k]


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_snapshots_have_contract_shape(name: str) -> None:
    """One snapshot per full scan 0..max; ksm has every numeric file as int; processes have
    the ksm_stat fields and smaps_ksm_kb per VMA; the profit formulas hold (spec §1.3, §2.1)."""
    scenario = load_scenario(name)
    snaps = run(name)
    assert [s["full_scans"] for s in snaps] == list(range(scenario.max_full_scans + 1))
    specs = {p.name: p for p in scenario.all_processes()}
    for s in snaps:
        assert set(s) == {"full_scans", "ksm", "processes"}
        ksm = s["ksm"]
        assert set(KSM_COUNTER_FILES) | set(KNOBS) <= set(ksm)
        assert all(type(v) is int for v in ksm.values())
        # general_profit = (sharing + zero)*4096 - rmap_items*64, volatile is the rest
        rmap, rem = divmod((ksm["pages_sharing"] + ksm["ksm_zero_pages"]) * 4096
                           - ksm["general_profit"], 64)
        assert rem == 0
        in_trees = ksm["pages_shared"] + ksm["pages_sharing"] + ksm["pages_unshared"]
        assert ksm["pages_volatile"] == max(0, rmap - in_trees)
        for pname, st in s["processes"].items():
            assert list(st) == [*KSM_STAT_FIELDS, "smaps_ksm_kb"]
            assert st["ksm_merge_any"] in ("yes", "no") and st["ksm_mergeable"] in ("yes", "no")
            assert st["ksm_process_profit"] == (
                (st["ksm_merging_pages"] + st["ksm_zero_pages"]) * 4096
                - st["ksm_rmap_items"] * 64)
            # declaration order; a VMA whose every page was unmapped is left out (v2)
            names = [v.name for v in specs[pname].vmas]
            assert list(st["smaps_ksm_kb"]) == [n for n in names if n in st["smaps_ksm_kb"]]
            assert all(type(v) is int and v % 4 == 0 for v in st["smaps_ksm_kb"].values())
    assert snaps[0]["ksm"]["run"] == 0 and snaps[0]["ksm"]["pages_scanned"] == 0


def test_sim_is_deterministic() -> None:
    """Two runs of one scenario give identical snapshots (no wall clock, no salted hash)."""
    s = load_scenario("demo")
    small = dataclasses.replace(s, max_full_scans=3)
    assert run_sim(small, lambda _: None) == run_sim(small, lambda _: None)


def test_on_snapshot_streams_every_snapshot() -> None:
    seen: list[dict] = []
    msgs: list[str] = []
    out = run_sim(load_scenario("kvm-guests"), seen.append, progress=msgs.append)
    assert seen == out and msgs[-1] == "full scan 6/6"


def test_backend_start_sets_up_without_scanning() -> None:
    """SimBackend.start (the mount's too) creates the processes but leaves run = 0."""
    backend = SimBackend(load_scenario("kvm-guests"))
    backend.start()
    k = backend.kernel
    assert k.ksm.run == 0 and k.ksm.pages_scanned == 0
    assert list(backend.processes) == ["kvm-guest-0", "kvm-guest-1", "kvm-guest-2"]
    for p in backend.processes.values():
        assert k.ksm_stat(p.pid)["ksm_mergeable"] == "yes"
        starts = list(p.vmas.values())
        assert starts == sorted(starts)


def test_kvm_guests_merge_in_the_second_scan() -> None:
    """Spec §8.1: merging first shows at the end of full scan 2. 3 guests x 1024 image
    pages -> 1024 KSM pages with 2 sharers each; 768 zero pages -> 3 dups of 256 (§3.6)."""
    assert by("kvm-guests", 1)["ksm"]["pages_shared"] == 0
    ksm = by("kvm-guests", 2)["ksm"]
    assert (ksm["pages_shared"], ksm["pages_sharing"]) == (1024 + 3, 2048 + 765)
    assert (ksm["stable_node_chains"], ksm["stable_node_dups"]) == (1, 3)
    assert ksm["pages_unshared"] == 3 * 768
    for p in by("kvm-guests", 2)["processes"].values():
        # every image and zero page of each guest maps a KSM page
        assert p["smaps_ksm_kb"] == {"guest-ram": (1024 + 256) * 4}


def test_max_page_sharing_chains() -> None:
    """Spec §3.6/§8.7: 1000 copies -> shared 4, sharing 996, 1 chain, 4 dups; 257 copies
    -> shared 1, sharing 255 and one page left unshared."""
    for k in (2, 3, 4):
        ksm = by("max-page-sharing", k)["ksm"]
        assert (ksm["pages_shared"], ksm["pages_sharing"]) == (4 + 1, 996 + 255)
        assert (ksm["stable_node_chains"], ksm["stable_node_dups"]) == (1, 4)
        assert ksm["pages_unshared"] == 1


def test_zero_pages_only_affects_later_merges() -> None:
    """Spec §3.7/§8.6: with use_zero_pages 0 zero pages merge as KSM pages (768 -> 3 dups);
    switched on, newly zeroed pages go to the zero page (here after a smart-scan skip of
    visit 4, spec §3.4), and overwriting 32 of them lowers ksm_zero_pages at once."""
    ksm = by("zero-pages", 3)["ksm"]
    assert (ksm["pages_shared"], ksm["pages_sharing"]) == (3 + 1, 765 + 255)
    assert ksm["ksm_zero_pages"] == 0 and ksm["use_zero_pages"] == 0
    assert by("zero-pages", 4)["ksm"]["use_zero_pages"] == 1
    assert by("zero-pages", 5)["ksm"]["ksm_zero_pages"] == 0
    assert by("zero-pages", 6)["ksm"]["ksm_zero_pages"] == 128
    assert by("zero-pages", 6)["processes"]["zeroes-a"]["ksm_zero_pages"] == 128
    assert by("zero-pages", 7)["ksm"]["ksm_zero_pages"] == 96
    # the zero-content KSM pages made earlier stay
    assert by("zero-pages", 8)["ksm"]["pages_shared"] == 4


def test_run2_unmerges_and_the_timeline_goes_on() -> None:
    """Spec §3.11/§8.13: run=2 frees everything and resets full_scans; while run != 1 the
    full scans are virtual (nothing moves); run=1 starts over with two visits."""
    before = by("run2-and-back", 3)["ksm"]
    assert before["pages_shared"] == 512 and before["pages_sharing"] == 512
    for k in (4, 5):
        ksm = by("run2-and-back", k)["ksm"]
        assert ksm["run"] == 2 and ksm["full_scans"] == 0
        assert (ksm["pages_shared"], ksm["pages_sharing"], ksm["pages_unshared"]) == (0, 0, 0)
        assert ksm["pages_scanned"] == before["pages_scanned"]
        assert ksm["general_profit"] == 0
        for st in by("run2-and-back", k)["processes"].values():
            assert st["ksm_rmap_items"] == 0 and st["ksm_mergeable"] == "yes"
    assert by("run2-and-back", 6)["ksm"]["full_scans"] == 1
    assert by("run2-and-back", 6)["ksm"]["pages_sharing"] == 0
    assert by("run2-and-back", 7)["ksm"]["pages_sharing"] == 512


def test_unmergeable_and_exit() -> None:
    """Spec §8.11/§8.10: MADV_UNMERGEABLE copies the KSM pages at once (smaps KSM 0,
    ksm_mergeable no) and the items go in the next scan; an exited process leaves the
    snapshot and its items are removed in the next scan."""
    s3 = by("unmergeable-and-exit", 3)
    assert s3["processes"]["ue-1"]["smaps_ksm_kb"] == {"ram": 1600}
    s4 = by("unmergeable-and-exit", 4)["processes"]["ue-1"]
    assert s4["smaps_ksm_kb"] == {"ram": 0} and s4["ksm_mergeable"] == "no"
    assert s4["ksm_rmap_items"] == 0 and s4["ksm_merging_pages"] == 0
    s6 = by("unmergeable-and-exit", 6)
    assert list(s6["processes"]) == ["ue-0", "ue-1"]
    # ue-0 keeps its KSM pages alone: shared with no sharer (spec §3.10)
    assert (s6["ksm"]["pages_shared"], s6["ksm"]["pages_sharing"]) == (400, 0)
    assert s6["processes"]["ue-0"]["smaps_ksm_kb"] == {"ram": 1600}


def test_merge_any() -> None:
    """Spec §3.12/§8.12: merge_any makes every private VMA mergeable, never MAP_SHARED;
    disabling it unmerges and clears VM_MERGEABLE everywhere."""
    st = by("merge-any", 3)["processes"]["any-1"]
    assert (st["ksm_merge_any"], st["ksm_mergeable"]) == ("yes", "yes")
    assert st["smaps_ksm_kb"] == {"ram": 1200, "scratch": 400, "shm": 0}
    assert st["ksm_rmap_items"] == 400
    st = by("merge-any", 5)["processes"]["any-1"]
    assert (st["ksm_merge_any"], st["ksm_mergeable"]) == ("no", "no")
    assert st["smaps_ksm_kb"] == {"ram": 0, "scratch": 0, "shm": 0}
    assert st["ksm_rmap_items"] == 0


def test_smart_scan_skips() -> None:
    """Spec §3.4: the 1024 never-merging pages are skipped on visit 4 (full scan 5)."""
    s = [by("smart-scan", k)["ksm"] for k in range(13)]
    assert s[4]["pages_skipped"] == 0
    assert s[5]["pages_skipped"] == 1024
    assert s[5]["pages_scanned"] - s[4]["pages_scanned"] == 2 * 576 - 1024
    # smart_scan 0 after full scan 6: nothing is skipped in scans 7..9
    assert s[9]["pages_skipped"] == s[6]["pages_skipped"]
    assert s[9]["pages_scanned"] - s[6]["pages_scanned"] == 3 * 2 * 576


def test_small_batches_do_not_change_counters() -> None:
    """Spec §8.14: the counters depend only on the sequence of visits, not on batching."""
    small = run("small-batches")
    base = load_scenario("small-batches")
    big_ksm = dict(base.ksm, pages_to_scan=100000)
    big = dataclasses.replace(base, ksm=big_ksm, steps=())
    other = run_sim(big, lambda _: None)
    for a, b in zip(small, other, strict=True):
        a = dict(a, ksm={k: v for k, v in a["ksm"].items() if k != "pages_to_scan"})
        b = dict(b, ksm={k: v for k, v in b["ksm"].items() if k != "pages_to_scan"})
        assert a == b


def test_spawn_mid_run() -> None:
    """Spawned processes join at the end of the mm list and merge in their second scan."""
    assert list(by("spawn-mid-run", 2)["processes"]) == ["first"]
    assert list(by("spawn-mid-run", 3)["processes"]) == ["first", "late-0", "late-1"]
    assert by("spawn-mid-run", 3)["processes"]["late-0"]["ksm_merging_pages"] == 0
    assert by("spawn-mid-run", 4)["processes"]["late-0"]["ksm_merging_pages"] == 256
    assert "later-any" in by("spawn-mid-run", 6)["processes"]
    assert by("spawn-mid-run", 7)["processes"]["later-any"]["ksm_merging_pages"] == 256


def test_sysfs_refusal_is_reported_and_the_run_goes_on(capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    """Contract: a refused sysfs step (max_page_sharing while shared: EBUSY) goes to
    stderr and the kernel keeps its value."""
    snaps = run_sim(load_scenario("small-max-page-sharing"), lambda _: None)
    err = capsys.readouterr().err
    assert "after_full_scans = 5" in err and "max_page_sharing" in err and "EBUSY" in err
    assert len(err.strip().splitlines()) == 1
    assert snaps[6]["ksm"]["max_page_sharing"] == 2  # accepted after run = 2
    assert snaps[5]["ksm"]["max_page_sharing"] == 3


def test_cow_storm_follows_lazy_counters_and_smart_scan() -> None:
    """Spec §3.8/§3.10/§3.4: COW lowers smaps KSM at once and pages_sharing at the next
    visit; a lone mapper keeps its KSM page (pages_shared); pages rewritten with the image
    sit in smart_scan skip windows (visits 4, 6-7 skipped) and merge through the stable
    tree on visit 8 (full scan 10)."""
    # full scan: (shared, sharing, unshared, volatile, skipped)
    expected = {
        1: (0, 0, 0, 2048, 0),
        2: (1024, 1024, 0, 0, 0),
        3: (1024, 1024, 0, 0, 0),
        4: (1024, 512, 0, 512, 0),
        5: (1024, 512, 512, 0, 0),
        6: (1024, 512, 0, 512, 512),
        7: (1024, 512, 256, 256, 512),
        8: (1024, 512, 0, 512, 1024),
        9: (1024, 512, 0, 512, 1536),
        10: (1024, 768, 256, 0, 1536),
        11: (1024, 768, 0, 256, 1792),
    }
    fields = ("pages_shared", "pages_sharing", "pages_unshared", "pages_volatile",
              "pages_skipped")
    got = {k: tuple(by("cow-storm", k)["ksm"][f] for f in fields) for k in expected}
    assert got == expected
    kb = {k: by("cow-storm", k)["processes"]["cow-b"]["smaps_ksm_kb"]["ram"]
          for k in (3, 4, 9, 10)}
    assert kb == {3: 4096, 4: 2048, 9: 2048, 10: 3072}
    assert by("cow-storm", 4)["processes"]["cow-a"]["smaps_ksm_kb"]["ram"] == 4096


V2 = Path(__file__).with_name("v2-steps.toml")


def test_v2_munmap_ranged_madvise_fork_and_pages_to_scan_0() -> None:
    """Contract v2 on the sim: the parts of a split VMA add up in smaps_ksm_kb; a VMA with
    no page left is left out; a forked child is registered by the kernel (ksm_fork) with
    the parent's VMAs; pages_to_scan 0 makes full scans virtual."""
    snaps = run_sim(load_scenario(V2), lambda _: None)
    kb = [{p: st["smaps_ksm_kb"] for p, st in s["processes"].items()} for s in snaps]
    # scan 2: the 4 value:5 pages of each process merge into one KSM page and the 4 pool
    # pages pairwise: all 8 pages of r are KSM pages in both, 32 kB
    assert kb[2] == {"a-0": {"r": 32, "other": 0}, "a-1": {"r": 32, "other": 0}}
    # a-0 lost pages 2..4 (r split in two parts: 5 pages left); a-1 broke pages 6..7
    # (unmergeable: private copies at once)
    assert kb[3]["a-0"]["r"] == 5 * 4 and kb[3]["a-1"]["r"] == 6 * 4
    # the child maps a-1's pages as they are (COW): the same KSM pages, without madvise
    child = snaps[4]["processes"]["child"]
    assert child["ksm_mergeable"] == "yes" and child["smaps_ksm_kb"]["r"] == 6 * 4
    # after the next full scan ksmd has met the child's items
    assert child["ksm_rmap_items"] == 6 + 3
    assert "other" not in snaps[5]["processes"]["child"]["smaps_ksm_kb"]
    # pages_to_scan 0 after scan 5: scans 6 and 7 are virtual, the kernel's count stands
    assert [s["ksm"]["full_scans"] for s in snaps] == [0, 1, 2, 3, 4, 5, 5, 5, 6]
    # the write after scan 6 breaks the child's sharing at once (COW), no ksmd needed,
    # while the pages_sharing count follows only when ksmd passes again (scan 8)
    assert snaps[7]["processes"]["child"]["smaps_ksm_kb"]["r"] == 0
    assert snaps[7]["ksm"]["pages_sharing"] == snaps[6]["ksm"]["pages_sharing"]
    assert snaps[8]["ksm"]["pages_sharing"] < snaps[7]["ksm"]["pages_sharing"]

"""ksm-kernel-spec.md §3.9, the worked timeline, reproduced by the sim backend.

Expected values derived from the spec text (§3.3-§3.5, §3.9):

* full scan 1 (pass 0): 4 new items, all volatile; pages_scanned 4.
* full scan 2 (pass 1): A:X and A:Y go into the unstable tree, B:X' matches A:X and becomes
  the KSM page, B:Z changed: shared 1, sharing 1, unshared 1, volatile 1;
  general_profit = 4096 - 4*64 = 3840; each process's profit 4096 - 2*64 = 3968.
* passes 2 and 3: the same (A:Y out and back in; KSM pages are never skipped).
* smart_scan: A:Y and B:Z are processed on visits 0-3, skipped on 4, processed on 5,
  skipped on 6-7, processed on 8, skipped from 9.  A skipped A:Y leaves the unstable tree
  (unshared 0, volatile 2); pages_scanned then grows by 2 only (the two KSM items).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ksmfs.scenario.loader import load_scenario
from ksmfs.scenario.sim import run_sim

SCENARIO = Path(__file__).with_name("worked-timeline.toml")

#   full_scans: (shared, sharing, unshared, volatile, scanned, skipped)
EXPECTED = {
    0: (0, 0, 0, 0, 0, 0),
    1: (0, 0, 0, 4, 4, 0),
    2: (1, 1, 1, 1, 8, 0),
    3: (1, 1, 1, 1, 12, 0),
    4: (1, 1, 1, 1, 16, 0),
    5: (1, 1, 0, 2, 18, 2),
    6: (1, 1, 1, 1, 22, 2),
    7: (1, 1, 0, 2, 24, 4),
    8: (1, 1, 0, 2, 26, 6),
    9: (1, 1, 1, 1, 30, 6),
    10: (1, 1, 0, 2, 32, 8),
}
FIELDS = ("pages_shared", "pages_sharing", "pages_unshared", "pages_volatile",
          "pages_scanned", "pages_skipped")


@pytest.fixture(scope="module")
def snaps() -> list[dict]:
    return run_sim(load_scenario(SCENARIO), lambda s: None)


def test_one_snapshot_per_full_scan(snaps: list[dict]) -> None:
    assert [s["full_scans"] for s in snaps] == list(range(11))
    assert [s["ksm"]["full_scans"] for s in snaps] == list(range(11))
    assert snaps[0]["ksm"]["run"] == 0 and all(s["ksm"]["run"] == 1 for s in snaps[1:])


@pytest.mark.parametrize("k", sorted(EXPECTED))
def test_counters_follow_spec_3_9(snaps: list[dict], k: int) -> None:
    ksm = snaps[k]["ksm"]
    assert tuple(ksm[f] for f in FIELDS) == EXPECTED[k]
    assert ksm["ksm_zero_pages"] == 0
    assert ksm["stable_node_chains"] == 0 and ksm["stable_node_dups"] == 0


@pytest.mark.parametrize("k", sorted(EXPECTED))
def test_profits_follow_spec_3_9(snaps: list[dict], k: int) -> None:
    s = snaps[k]
    if k == 0:
        assert s["ksm"]["general_profit"] == 0
        for p in ("A", "B"):
            assert s["processes"][p]["ksm_rmap_items"] == 0
            assert s["processes"][p]["ksm_process_profit"] == 0
        return
    merged = k >= 2
    assert s["ksm"]["general_profit"] == (3840 if merged else -256)
    for p in ("A", "B"):
        st = s["processes"][p]
        assert st["ksm_rmap_items"] == 2
        assert st["ksm_merging_pages"] == (1 if merged else 0)
        assert st["ksm_process_profit"] == (3968 if merged else -128)
        assert st["ksm_zero_pages"] == 0
        assert (st["ksm_merge_any"], st["ksm_mergeable"]) == ("no", "yes")
        assert st["smaps_ksm_kb"] == {"mem": 4 if merged else 0}

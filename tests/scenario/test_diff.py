"""Comparing two runs snapshot by snapshot."""

from __future__ import annotations

from ksmfs.scenario.diff import allowed_fields, compare
from ksmfs.scenario.loader import parse_scenario


def snap(k: int, shared: int, procs: dict | None = None) -> dict:
    return {"full_scans": k, "ksm": {"pages_shared": shared, "run": 1},
            "processes": procs if procs is not None else {}}


def test_identical_runs() -> None:
    a = [snap(0, 0), snap(1, 5)]
    r = compare(a, [dict(x) for x in a])
    assert r.equal and r.differences == ()
    assert r.cells == 4 and r.snapshots == 2
    assert r.summary().startswith("identical: compared 4 cells in 2 snapshots, 0 differences")


def test_every_differing_field_is_listed() -> None:
    p = {"p": {"ksm_rmap_items": 3, "smaps_ksm_kb": {"ram": 8}}}
    q = {"p": {"ksm_rmap_items": 3, "smaps_ksm_kb": {"ram": 4}}}
    r = compare([snap(0, 0, p), snap(1, 1)], [snap(0, 0, q), snap(1, 2)])
    assert [d.line() for d in r.differences] == [
        "full_scans=0 processes.p.smaps_ksm_kb.ram sim=8 real=4",
        "full_scans=1 ksm.pages_shared sim=1 real=2",
    ]
    assert not r.equal and r.counted == 2


def test_missing_process_and_snapshot() -> None:
    """A process or snapshot on one side only is one difference each."""
    p = {"p": {"ksm_rmap_items": 3, "smaps_ksm_kb": {"ram": 8}}}
    r = compare([snap(0, 0, p), snap(1, 0)], [snap(0, 0)])
    assert [d.line() for d in r.differences] == [
        "full_scans=0 processes.p sim=present real=-",
        "full_scans=1 snapshot sim=present real=-",
    ]


def test_advisor_makes_pages_to_scan_allowed() -> None:
    base = ("max_full_scans = 2\n[[process]]\nname = \"a\"\n[[process.vma]]\nname = \"r\"\n"
            "pages = 1\n")
    assert allowed_fields(parse_scenario(base)) == set()
    s = parse_scenario("max_full_scans = 2\n[ksm]\nadvisor_mode = \"scan-time\"\n"
                       + base.replace("max_full_scans = 2\n", ""))
    assert allowed_fields(s) == {"ksm.pages_to_scan"}
    a = [{"full_scans": 1, "ksm": {"pages_to_scan": 500}, "processes": {}}]
    b = [{"full_scans": 1, "ksm": {"pages_to_scan": 700}, "processes": {}}]
    r = compare(a, b, {"ksm.pages_to_scan"})
    assert r.equal and len(r.differences) == 1 and "not counted" in r.differences[0].line()

"""Contract v2 on the real kernel: forked workers, munmap and ranged madvise in the C
worker, smaps summed over split VMAs, virtual full scans while pages_to_scan is 0."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ksmfs.linux import MADV_MERGEABLE
from ksmfs.scenario.diff import allowed_fields, compare
from ksmfs.scenario.loader import load_scenario
from ksmfs.scenario.real import run_real
from ksmfs.scenario.realkernel import KsmSysfs, read_smaps_ksm_kb
from ksmfs.scenario.sim import run_sim

from .conftest import PacedKsm

realkernel = pytest.mark.realkernel
V2 = Path(__file__).parents[1] / "scenario" / "v2-steps.toml"


@realkernel
def test_v2_steps_match_the_sim(real_ksm: KsmSysfs) -> None:
    """munmap (a VMA split in two, one fully unmapped), a ranged unmergeable madvise, a
    fork and pages_to_scan 0: every cell equal to the sim's, and the two full scans with
    pages_to_scan 0 are virtual on the real kernel too (no ksmd batch)."""
    scenario = load_scenario(V2)
    batches: list[int] = []
    real = run_real(scenario, lambda s: None, batches_out=batches)
    sim = run_sim(scenario, lambda s: None)
    result = compare(sim, real, allowed_fields(scenario))
    detail = "\n".join(d.line() for d in result.differences if d.counted)
    assert result.equal, f"{result.summary()}\n{detail}"
    assert [b > 0 for b in batches] == [True] * 5 + [False, False] + [True]
    assert [s["ksm"]["full_scans"] for s in real] == [0, 1, 2, 3, 4, 5, 5, 5, 6]
    assert real[3]["processes"]["a-0"]["smaps_ksm_kb"]["r"] == 5 * 4
    assert "other" not in real[5]["processes"]["child"]["smaps_ksm_kb"]


@realkernel
@pytest.mark.parametrize("merge_any", [False, True], ids=["madvise", "merge_any"])
def test_forked_worker_holds_only_the_scenario_pages(paced: PacedKsm, merge_any: bool) -> None:
    """A forked worker is registered by the kernel (ksm_fork), has the parent's VMAs at the
    same addresses and no mergeable memory of its own: after a pass its rmap items are
    exactly the scenario's pages, as the parent's are (with merge_any too, whose flag the
    child inherits)."""
    parent = paced.worker()
    if merge_any:
        parent.merge_any(True)
    addr = parent.map(8, False)
    parent.fill(0, 0, np.arange(1, 9, dtype=np.uint64))
    if not merge_any:
        parent.madvise(0, MADV_MERGEABLE)
    child = parent.fork("child")
    paced.workers.append(child)
    assert child.pid != parent.pid
    assert child.ksm_stat()["ksm_mergeable"] == "yes"
    paced.pacer.full_scan()
    for w in (parent, child):
        st = w.ksm_stat()
        assert st["ksm_rmap_items"] == 8, (w.name, st)
        assert st["ksm_merge_any"] == ("yes" if merge_any else "no")
    assert addr in read_smaps_ksm_kb(child.pid)
    # a forked worker can fork again, and its exit returns once its mm is gone
    grandchild = child.fork("grandchild")
    paced.workers.append(grandchild)
    grandchild.exit()
    assert not os.path.exists(f"/proc/{grandchild.pid}/ksm_stat")


@realkernel
def test_worker_munmap_and_ranged_madvise_split_the_vma(paced: PacedKsm) -> None:
    """The worker's munmap and ranged madvise split its VMA as madvise(2)/munmap(2) do;
    a range outside the VMA is refused with EINVAL before any syscall."""
    from ksmfs.scenario.realkernel import WorkerError

    w = paced.worker()
    addr = w.map(16, False)
    w.fill(0, 0, np.zeros(16, dtype=np.uint64))
    w.madvise(0, MADV_MERGEABLE, 4, 8)
    w.munmap(0, 14, 2)
    starts = sorted(a for a in read_smaps_ksm_kb(w.pid) if addr <= a < addr + 16 * 4096)
    assert starts == [addr, addr + 4 * 4096, addr + 12 * 4096]
    with pytest.raises(WorkerError, match="outside"):
        w.munmap(0, 10, 7)

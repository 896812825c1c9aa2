"""The fidelity gate: every built-in scenario on the simulated and on the real kernel.

Each scenario runs on both backends and every cell of every snapshot (the KSM counters
and knobs, each process's ksm_stat and smaps KSM per VMA, after each full scan) must be
equal; only fields that depend on wall time (the scan-time advisor) may differ.
"""

from __future__ import annotations

import pytest

from ksmfs.scenario.diff import allowed_fields, compare
from ksmfs.scenario.loader import list_builtin, load_scenario
from ksmfs.scenario.real import run_real
from ksmfs.scenario.realkernel import KsmSysfs
from ksmfs.scenario.sim import run_sim

BUILTINS = [name for name, _ in list_builtin()]


@pytest.mark.realkernel
@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_scenario_matches_real_kernel(real_ksm: KsmSysfs, name: str) -> None:
    """Sim and real snapshots of a built-in scenario are identical, cell for cell."""
    scenario = load_scenario(name)
    sim = run_sim(scenario, lambda s: None)
    real = run_real(scenario, lambda s: None)
    result = compare(sim, real, allowed_fields(scenario))
    detail = "\n".join(d.line() for d in result.differences if d.counted)
    assert result.equal, f"{name}: {result.summary()}\n{detail}"
    assert result.cells > 0 and len(real) == scenario.max_full_scans + 1


@pytest.mark.realkernel
def test_the_differential_can_fail(real_ksm: KsmSysfs) -> None:
    """A deliberately different sim run (one more page written) is caught by the diff."""
    scenario = load_scenario("kvm-guests")
    sim = run_sim(scenario, lambda s: None)
    real = run_real(scenario, lambda s: None)
    sim[-1]["ksm"]["pages_sharing"] += 1
    result = compare(sim, real, allowed_fields(scenario))
    assert not result.equal
    assert any(d.field == "ksm.pages_sharing" for d in result.differences)

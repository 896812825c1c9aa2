"""Fixtures for tests that drive the machine's real KSM (marker ``realkernel``).

Every such test is skipped, with the reason, unless this process may drive
/sys/kernel/mm/ksm right now (root, the directory writable, nobody else's KSM pages),
and afterwards every writable knob must read as before the test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ksmfs.scenario.realkernel import (
    Ksmd,
    KsmSysfs,
    Pacer,
    RealBackendError,
    Worker,
    build_worker,
    check_can_drive,
    recover_stale_state,
)


@pytest.fixture
def real_ksm() -> Iterator[KsmSysfs]:
    """The real /sys/kernel/mm/ksm, checked to be usable; knobs compared after the test."""
    sysfs = KsmSysfs()
    try:
        if os.geteuid() == 0 and sysfs.root.is_dir():
            recover_stale_state(sysfs, lambda m: None)  # a killed run's leftovers
        check_can_drive(sysfs)
    except RealBackendError as e:
        pytest.skip(f"real KSM not usable: {e}")
    sysfs.save()
    before = dict(sysfs.saved)
    yield sysfs
    after = KsmSysfs()
    after.save()
    assert after.saved == before, "a real-kernel test left /sys/kernel/mm/ksm changed"
    assert after.read_int("pages_shared") == 0


class PacedKsm:
    """Low-level access for tests: the knobs, a Pacer, and workers started by the test."""

    def __init__(self, sysfs: KsmSysfs) -> None:
        self.sysfs = sysfs
        self.pacer = Pacer(sysfs, Ksmd())
        self.exe = build_worker()
        self.workers: list[Worker] = []

    def worker(self, reserve_pages: int = 64) -> Worker:
        w = Worker(self.exe, reserve_pages)
        self.workers.append(w)
        return w


@pytest.fixture
def paced(real_ksm: KsmSysfs) -> Iterator[PacedKsm]:
    """ksmd paced one batch per trigger (run 0 between batches); everything put back."""
    real_ksm.write("run", 0)
    p = PacedKsm(real_ksm)
    p.pacer.install()
    try:
        yield p
    finally:
        for w in p.workers:
            w.kill()
        real_ksm.restore(lambda m: pytest.fail(m))

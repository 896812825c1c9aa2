"""The real backend: a scenario run on this machine's kernel (/sys/kernel/mm/ksm).

``run_real(scenario, on_snapshot, progress=None)`` implements the contract
(docs/scenario-format.md, version 2) through the one driver (driver.py) with
:class:`RealBackend`: one C worker process per scenario process (worker/ksmworker.c; a
``fork`` step forks the worker, and the child is a worker of its own), and ksmd paced
one full pass at a time (realkernel.Pacer), so that every snapshot is read between two
ksmd batches at the end of a full scan.  Full scans are virtual, without a batch, while
the scenario's run is not 1 or its pages_to_scan is 0.

Everything it changes in /sys/kernel/mm/ksm is saved first and put back (run=2, wait for
pages_shared 0, run=0, the saved values) when the run ends, fails, or gets SIGINT/SIGTERM.
It refuses to start (RealBackendError, exit status 2) without root, without a writable
/sys/kernel/mm/ksm, or when other processes already have KSM pages.
"""

from __future__ import annotations

import errno
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ksmfs.linux import MADV_MERGEABLE, MADV_UNMERGEABLE, PAGE_SIZE
from ksmfs.scenario.contents import Contents
from ksmfs.scenario.driver import MappedPages, Snapshot, drive
from ksmfs.scenario.model import (
    Exit,
    Fork,
    Madvise,
    MergeAny,
    Munmap,
    ProcessSpec,
    Scenario,
    Spawn,
    Step,
    Sysfs,
    Write,
    report_refusal,
)
from ksmfs.scenario.realkernel import (
    STATE_PATH,
    KnobError,
    Ksmd,
    KsmSysfs,
    Pacer,
    Worker,
    WorkerError,
    build_worker,
    check_access,
    check_can_drive,
    exclusive_lock,
    foreign_ksm_users,
    recover_stale_state,
)

# The knobs ksmfs itself uses to pace ksmd; a snapshot shows the scenario's values instead.
PACING_KNOBS = ("pages_to_scan", "sleep_millisecs")


def _warn(message: str) -> None:
    print(f"ksmfs: real backend: {message}", file=sys.stderr)


@contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGINT and SIGTERM become exceptions, so that the ``finally`` that restores the
    knobs runs (SIGTERM's default action would kill us with the pacing values set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    old_term = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


@contextmanager
def _signals_blocked() -> Iterator[None]:
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@dataclass
class _Process:
    spec: ProcessSpec
    worker: Worker
    pages: MappedPages
    addr: dict[str, int] = field(default_factory=dict)  # VMA name -> start address
    index: dict[str, int] = field(default_factory=dict)  # VMA name -> worker VMA index


class RealBackend:
    """One run on the machine's kernel: the driver's backend (``driver.py``).

    It holds the state the contract talks about: the ``run`` value the scenario has set,
    the pacing knobs as the scenario sees them, and the processes by scenario name."""

    def __init__(
        self,
        scenario: Scenario,
        sysfs: KsmSysfs,
        exe: Path,
        kernel_batches: bool,
    ) -> None:
        self.scenario = scenario
        self.sysfs = sysfs
        self.exe = exe
        self.pacer = Pacer(sysfs, Ksmd(), pass_batches=not kernel_batches)
        self.contents = Contents(scenario)
        self.procs: dict[str, _Process] = {}
        self.run_value = 0  # `run` as the scenario has set it (0 until full scan 0)
        self.visible: dict[str, int] = {}  # pages_to_scan / sleep_millisecs as scenario sees
        self.base: dict[str, int] = {}
        self.virtual_scans = 0
        self.batches_per_scan: list[int] = []  # ksmd batches each full scan took (0: virtual)
        self.warned_foreign = False

    # ---------------------------------------------------------------- driver.Backend

    def start(self) -> None:
        if self.sysfs.read_int("run") != 0:
            self.sysfs.write("run", 0)
        for name in PACING_KNOBS:
            self.visible[name] = self.sysfs.read_int(name)
        self.apply_sysfs(self.scenario.ksm.items(), "[ksm]", pacing_installed=False)
        self.pacer.install()
        for spec in self.scenario.processes:
            self.spawn(spec)

    def start_ksmd(self) -> None:
        # kept for the next trigger: the pacer writes run = 1 for each batch
        self.run_value = 1

    def full_scan(self) -> bool:
        """One pass of the real ksmd, or a virtual full scan (contract v2) while the
        scenario's run is not 1 or its pages_to_scan is 0: then ksmd is not let run at
        all (left alone, the kernel's ksmd would scan nothing either)."""
        if self.run_value != 1 or self.scenario_pages_to_scan() == 0:
            self.virtual_scans += 1
            self.batches_per_scan.append(0)
            return False
        ran, done = self.pacer.full_scan()
        if not ran:
            self.virtual_scans += 1  # no mm registered: ksmd had nothing to do
        self.batches_per_scan.append(len(done) if ran else 0)
        return ran

    def scenario_pages_to_scan(self) -> int:
        if self.sysfs.advisor_mode() != "none":
            return self.sysfs.read_int("pages_to_scan")  # the advisor's value is real
        return self.visible["pages_to_scan"]

    def step(self, step: Step) -> None:
        a = step.action
        when = step.when
        try:
            if isinstance(a, Sysfs):
                self.apply_sysfs(a.values, when)
            elif isinstance(a, Spawn):
                for spec in a.processes:
                    self.spawn(spec)
            elif isinstance(a, Exit):
                proc = self.procs.pop(a.process)
                proc.worker.exit()
            elif isinstance(a, Write):
                proc = self.procs[a.process]
                tokens = self.contents.segment(a.segment, a.process)
                proc.worker.fill(proc.index[a.vma], a.first, tokens)
            elif isinstance(a, Madvise):
                proc = self.procs[a.process]
                advice = MADV_MERGEABLE if a.advice == "mergeable" else MADV_UNMERGEABLE
                for first, count in proc.pages.runs(a.vma, a.first, a.count):
                    proc.worker.madvise(proc.index[a.vma], advice, first, count)
            elif isinstance(a, Munmap):
                proc = self.procs[a.process]
                proc.worker.munmap(proc.index[a.vma], a.first, a.count)
                proc.pages.unmap(a.vma, a.first, a.count)
            elif isinstance(a, MergeAny):
                self.procs[a.process].worker.merge_any(a.enable)
            elif isinstance(a, Fork):
                parent = self.procs[a.process]
                child = parent.worker.fork(a.child.name)
                self.procs[a.child.name] = _Process(
                    a.child, child, MappedPages(a.child, parent=parent.pages),
                    dict(parent.addr), dict(parent.index))
            else:
                raise ValueError(f"unknown step action {step.kind!r}")
        except WorkerError as e:
            _warn(f"{when}: {step.kind} failed: {e} (the run goes on)")

    def snapshot(self, full_scans: int) -> Snapshot:
        ksm = self.sysfs.numeric()
        if not self.base:
            self.base = {n: ksm[n] for n in ("pages_scanned", "pages_skipped") if n in ksm}
        for name, base in self.base.items():
            ksm[name] -= base
        ksm["run"] = self.run_value
        ksm["sleep_millisecs"] = self.visible["sleep_millisecs"]
        if self.sysfs.advisor_mode() == "none":
            ksm["pages_to_scan"] = self.visible["pages_to_scan"]
        processes: dict[str, Any] = {}
        for name, proc in self.procs.items():
            stat: dict[str, Any] = dict(proc.worker.ksm_stat())
            kb = proc.worker.smaps_ksm_kb()
            per_vma: dict[str, int] = {}
            for vname in proc.pages.live_vmas():
                start = proc.addr[vname]
                end = start + proc.pages.pages(vname) * PAGE_SIZE
                # contract v2: the parts of a VMA that madvise or munmap split, added up
                per_vma[vname] = sum(v for a, v in kb.items() if start <= a < end)
            stat["smaps_ksm_kb"] = per_vma
            processes[name] = stat
        snap = {"full_scans": full_scans, "ksm": ksm, "processes": processes}
        self.check_foreign()
        return snap

    # ---------------------------------------------------------------- processes

    def teardown(self) -> None:
        for p in self.procs.values():
            p.worker.kill()
        self.procs.clear()

    def spawn(self, spec: ProcessSpec) -> None:
        """Start one scenario process: merge_any first, then each VMA mapped, filled and
        advised, so that its mm joins ksmd's list now, behind the earlier processes."""
        # one guard page before each VMA and one after the last (worker layout)
        reserve = 2 + sum(v.pages + 1 for v in spec.vmas)
        worker = Worker(self.exe, reserve, spec.name)
        proc = _Process(spec, worker, MappedPages(spec))
        self.procs[spec.name] = proc
        if spec.merge_any:
            worker.merge_any(True)
        for i, vma in enumerate(spec.vmas):
            proc.addr[vma.name] = worker.map(vma.pages, vma.shared)
            proc.index[vma.name] = i
            worker.fill(i, 0, self.contents.fill(spec, vma))
            if vma.mergeable:
                worker.madvise(i, MADV_MERGEABLE)

    # ---------------------------------------------------------------- sysfs

    def apply_sysfs(
        self, items: Iterable[tuple[str, int | str]], when: str, *, pacing_installed: bool = True
    ) -> None:
        """Write scenario values in order; a refusal is reported and the run goes on.

        pages_to_scan and sleep_millisecs are pacing knobs: around scenario writes that
        touch them (or advisor_mode, which resets pages_to_scan) the kernel is given the
        scenario's values back, the writes run with the kernel's own checks and side
        effects, and what the kernel then holds becomes the scenario's value.
        """
        items = list(items)
        touches = any(k in (*PACING_KNOBS, "advisor_mode") for k, _ in items)
        if touches and pacing_installed:
            # ksmd may wake on the sleep_millisecs write; with run at 0 or 2 it only
            # goes back to sleep (ksm_scan_thread rechecks ksmd_should_run)
            if self.sysfs.advisor_mode() == "none":
                self.sysfs.write("pages_to_scan", self.visible["pages_to_scan"])
            self.sysfs.write("sleep_millisecs", self.visible["sleep_millisecs"])
        for name, value in items:
            if name == "run":
                self.write_run(value, when)
                continue
            try:
                self.sysfs.write(name, value)
            except KnobError as e:
                report_refusal(name, value, e, when)
        if touches:
            for name in PACING_KNOBS:
                self.visible[name] = self.sysfs.read_int(name)
            if pacing_installed:
                self.pacer.install()

    def write_run(self, value: int | str, when: str) -> None:
        """run = 1 is kept for the next trigger (written now, it could start a batch in
        the middle of the steps); 0 and 2 go to the kernel at once (2 unmerges now)."""
        text = str(value).strip()
        if text.lstrip("+").lstrip("0") == "1":
            self.run_value = 1
            return
        try:
            self.sysfs.write("run", value)
        except KnobError as e:
            report_refusal("run", value, e, when)
            if e.errno == errno.EINTR:
                # a signal aborted the unmerge of run=2: run_store sets run back to 0
                self.run_value = self.sysfs.read_int("run")
            return
        self.run_value = self.sysfs.read_int("run")

    def check_foreign(self) -> None:
        if self.warned_foreign:
            return
        ours = {p.worker.pid for p in self.procs.values()}
        others = foreign_ksm_users(exclude=ours)
        if others:
            self.warned_foreign = True
            pids = ", ".join(str(pid) for pid, _ in others[:5])
            _warn(f"other processes started using KSM during the run (pid {pids}); "
                  "the counts include their pages")


def run_real(
    scenario: Scenario,
    on_snapshot: Callable[[Snapshot], None],
    progress: Callable[[str], None] | None = None,
    *,
    kernel_batches: bool = False,
    batches_out: list[int] | None = None,
) -> list[Snapshot]:
    """Run ``scenario`` on the machine's kernel and return its snapshots.

    ``on_snapshot`` gets each snapshot as soon as it is read.  By default ksmd scans a
    whole pass in one batch (pages_to_scan = UINT_MAX, the scenario's value is reported);
    ``kernel_batches=True`` writes the scenario's pages_to_scan to the kernel and lets
    ksmd really work in batches of that size, one trigger per batch (the counters must
    come out the same, spec §8.14).  ``batches_out``, when given, receives the number
    of ksmd batches each full scan took (0 for a virtual one).
    """
    sysfs = KsmSysfs()
    check_access(sysfs)
    exe = build_worker()
    with exclusive_lock():
        recover_stale_state(sysfs, _warn)
        check_can_drive(sysfs)  # again, now that no other ksmfs run can start
        runner: RealBackend | None = None
        with _signals_raise():
            try:
                sysfs.save(STATE_PATH)
                runner = RealBackend(scenario, sysfs, exe, kernel_batches)
                return drive(scenario, runner, on_snapshot, progress)
            finally:
                if runner is not None and batches_out is not None:
                    batches_out.extend(runner.batches_per_scan)
                with _signals_blocked():
                    if runner is not None:
                        runner.teardown()
                    sysfs.restore(_warn)

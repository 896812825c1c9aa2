"""The simulated backend: play a scenario on ksmfs.kernel by its own clock (no sleeping).

:class:`SimBackend` implements the driver's backend (``driver.py``; the order of a run is
the contract's, docs/scenario-format.md):

* ``start``: ``[ksm]`` knobs stored in key order (``ksmfs.kernel.knobs.store``, the same
  store functions the FUSE files use), then the processes in file order: ``spawn``,
  ``prctl(PR_SET_MEMORY_MERGE, 1)`` for merge_any, and per VMA ``mmap`` (rising
  addresses), ``write`` of the fill tokens, ``madvise(MADV_MERGEABLE)``.
* ``full_scan``: ksmd batches (``ksm_do_scan(pages_to_scan)``, then the clock moves by
  ``sleep_millisecs``) until the kernel's ``full_scans`` moves -- or, when ksmd would not
  run (run != 1, no mm registered, pages_to_scan 0), a *virtual* full scan that does
  nothing.
* ``step``: one timeline step (v2: fork, munmap and ranged madvise too).

The FUSE mount's ``--scenario`` uses the same backend: it starts it, sets run=1 and plays
the timeline (``ksmfs.runtime.Timeline``) as its real-time ksmd completes full scans.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ksmfs.kernel import Kernel
from ksmfs.kernel import knobs as _knobs
from ksmfs.kernel.errors import KsmError
from ksmfs.kernel.smaps import vma_ksm_pages
from ksmfs.linux import (
    DEFAULT_VERSION,
    MADV_MERGEABLE,
    MADV_UNMERGEABLE,
    PAGE_SIZE,
    PR_SET_MEMORY_MERGE,
)
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
    sysfs_bytes,
)

TASK_COMM_LEN = 16  # include/linux/sched.h: comm holds 15 characters and a NUL


class SimError(RuntimeError):
    """A kernel call of the scenario failed (e.g. merge_any on a kernel before 6.4): one
    line naming the step, the process and the call."""


@contextmanager
def _call(what: str) -> Iterator[None]:
    try:
        yield
    except KsmError as e:
        raise SimError(f"{what}: {e}") from None


@dataclass
class SimProcess:
    """A live scenario process in the simulated kernel."""

    spec: ProcessSpec
    pid: int
    vmas: dict[str, int] = field(default_factory=dict)  # VMA name -> start address
    pages: MappedPages | None = None

    def __post_init__(self) -> None:
        if self.pages is None:
            self.pages = MappedPages(self.spec)

    @property
    def mapped(self) -> MappedPages:
        assert self.pages is not None
        return self.pages


def store_knob(k: Kernel, name: str, value: int | str, when: str) -> bool:
    """Store one sysfs value as a write(2) would; a refusal is reported and the run goes on
    (contract: "A sysfs step that the kernel refuses ... is reported on standard error")."""
    try:
        _knobs.store(k, name, sysfs_bytes(value))
    except KsmError as e:
        report_refusal(name, value, e, when)
        return False
    return True


def ksmd_would_run(k: Kernel) -> bool:
    """ksm_scan_thread's test (ksmd_should_run): run has MERGE set and the mm list is not
    empty.  pages_to_scan = 0 runs ksmd but never ends a pass, so it counts as not running
    (contract v2: the full scans are virtual instead of waiting forever)."""
    return k.ksm.would_scan() and k.ksm.pages_to_scan > 0


class SimBackend:
    """A scenario on a fresh simulated kernel (see the module docstring)."""

    def __init__(self, scenario: Scenario, version: str = DEFAULT_VERSION) -> None:
        self.scenario = scenario
        with _call(f"kernel {version}"):
            self.kernel = Kernel(version=version)
        self.contents = Contents(scenario)
        self.processes: dict[str, SimProcess] = {}

    # -- driver.Backend
    def start(self) -> None:
        for name, value in self.scenario.ksm.items():
            store_knob(self.kernel, name, value, "[ksm]")
        # the page arrays sized once for the initial processes: growing them by doubling
        # would copy them, and hold old and new at once, several times on the way
        self.kernel.mem.reserve(sum(v.pages for p in self.scenario.processes for v in p.vmas))
        for spec in self.scenario.processes:
            self.spawn(spec)
        self.contents.release()

    def start_ksmd(self) -> None:
        store_knob(self.kernel, "run", 1, "start")

    def full_scan(self) -> bool:
        """Run ksmd batches until the kernel completes a pass; False for a virtual full
        scan (ksmd would not run).  The clock moves by sleep_millisecs after every batch."""
        k = self.kernel
        if not ksmd_would_run(k):
            return False
        start = k.ksm.full_scans
        while True:
            before = k.ksm.pages_scanned
            k.ksm_do_scan(k.ksm.pages_to_scan)
            k.advance(k.ksm.sleep_millisecs)
            if k.ksm.full_scans != start:
                return True
            if k.ksm.pages_scanned == before:
                # A batch either scans a page or ends the pass (ksm_do_scan returns at the
                # end of a pass); anything else would loop forever.
                raise RuntimeError("ksmd made no progress in a batch (kernel bug?)")

    def snapshot(self, full_scans: int) -> Snapshot:
        return snapshot(self.kernel, self.processes, full_scans)

    def step(self, step: Step) -> None:
        a = step.action
        when = step.when
        k = self.kernel
        if isinstance(a, Sysfs):
            for name, value in a.values:
                store_knob(k, name, value, when)
            return
        if isinstance(a, Spawn):
            for spec in a.processes:
                self.spawn(spec, when)
            return
        proc = self.processes[a.process]
        with _call(f"{when}: {step.kind} of process {proc.spec.name!r}"):
            if isinstance(a, Exit):
                k.exit(proc.pid)
                del self.processes[a.process]
            elif isinstance(a, MergeAny):
                k.prctl(proc.pid, PR_SET_MEMORY_MERGE, 1 if a.enable else 0)
            elif isinstance(a, Madvise):
                advice = MADV_MERGEABLE if a.advice == "mergeable" else MADV_UNMERGEABLE
                for first, count in proc.mapped.runs(a.vma, a.first, a.count):
                    k.madvise(proc.pid, proc.vmas[a.vma] + first * PAGE_SIZE, count, advice)
            elif isinstance(a, Munmap):
                k.munmap(proc.pid, proc.vmas[a.vma] + a.first * PAGE_SIZE, a.count)
                proc.mapped.unmap(a.vma, a.first, a.count)
            elif isinstance(a, Write):
                addr = proc.vmas[a.vma] + a.first * PAGE_SIZE
                k.write(proc.pid, addr, self.contents.segment(a.segment, proc.spec.name))
            elif isinstance(a, Fork):
                pid = k.fork(proc.pid)
                # the child's address space is the parent's: same VMA addresses
                self.processes[a.child.name] = SimProcess(
                    spec=a.child, pid=pid, vmas=dict(proc.vmas),
                    pages=MappedPages(a.child, parent=proc.mapped))
            else:  # pragma: no cover - the loader only builds the actions above
                raise ValueError(f"unknown step action {step.kind!r}")

    # -- helpers
    def spawn(self, spec: ProcessSpec, when: str = "start") -> SimProcess:
        """Start one scenario process: spawn, merge_any, then map, fill and advise each VMA."""
        k = self.kernel
        who = f"{when}: process {spec.name!r}"
        with _call(f"{who}: spawn"):
            pid = k.spawn(spec.name[: TASK_COMM_LEN - 1], cmdline=[spec.name])
        proc = SimProcess(spec=spec, pid=pid)
        if spec.merge_any:
            # Before any VMA exists, as the contract says: merge_any then makes each new
            # compatible VMA mergeable when it is created.
            with _call(f"{who}: merge_any: prctl(PR_SET_MEMORY_MERGE, 1)"):
                k.prctl(pid, PR_SET_MEMORY_MERGE, 1)
        for v in spec.vmas:
            # The kernel's mmap places VMAs at rising addresses with a gap between them, so
            # they never merge into one VMA and ksmd visits them in declaration order.
            with _call(f"{who}: VMA {v.name!r}"):
                addr = k.mmap(pid, v.pages, shared=v.shared)
                proc.vmas[v.name] = addr
                for first, tokens in self.contents.fill_parts(spec.name, v):
                    k.write(pid, addr + first * PAGE_SIZE, tokens)
                if v.mergeable:
                    k.madvise(pid, addr, v.pages, MADV_MERGEABLE)
        self.processes[spec.name] = proc
        return proc


def ksm_file_values(k: Kernel) -> dict[str, int]:
    """Every numeric file of /sys/kernel/mm/ksm this kernel version has (an older release
    lacks general_profit, ...): the ``ksm`` object of a snapshot."""
    present = set(k.version.sysfs_files)
    return {name: int(v) for name, v in k.ksm.stats().items() if name in present}


def snapshot(k: Kernel, processes: dict[str, SimProcess], full_scans: int) -> Snapshot:
    """The contract's snapshot: every numeric ksm file, and per live process its ksm_stat
    fields and the smaps ``KSM:`` kB of each of its VMAs (v2: the parts of a split VMA
    added up; a VMA whose every page is unmapped left out)."""
    procs: dict[str, Any] = {}
    for name, proc in processes.items():
        stat = k.ksm_stat(proc.pid) or {}
        # Only the ksm_stat lines this release prints (none before 6.1, one on 6.1 ...).
        fields = [f for f in k.version.ksm_stat_lines if f in stat]
        entry: dict[str, Any] = {f: (stat[f] if isinstance(stat[f], str) else int(stat[f]))
                                 for f in fields}
        if not k.version.has_smaps_ksm:
            procs[name] = entry  # no KSM: line in smaps before 6.6
            continue
        # only the KSM: line of each smaps entry (vma_ksm_pages: the same count without
        # the PSS sums)
        mm = k.task(proc.pid).mm
        vmas = mm.vmas if mm is not None else []
        kb: dict[str, int] = {}
        for vname in proc.mapped.live_vmas():
            start = proc.vmas[vname]
            end = start + proc.spec.vma(vname).pages * PAGE_SIZE
            # every smaps entry inside the VMA's original range: its parts after a split
            kb[vname] = sum(vma_ksm_pages(k.mem, v) * PAGE_SIZE
                            for v in vmas if start <= v.start < end) >> 10
        entry["smaps_ksm_kb"] = kb
        procs[name] = entry
    return {"full_scans": full_scans, "ksm": ksm_file_values(k), "processes": procs}


def run_sim(scenario: Scenario, on_snapshot: Callable[[Snapshot], None],
            progress: Callable[[str], None] | None = None,
            kernel_version: str = DEFAULT_VERSION) -> list[Snapshot]:
    """Run ``scenario`` on a fresh simulated kernel; return (and stream) its snapshots."""
    return drive(scenario, SimBackend(scenario, kernel_version), on_snapshot, progress)

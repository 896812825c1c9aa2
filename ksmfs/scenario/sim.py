"""The simulated backend: play a scenario on ksmfs.kernel by its own clock (no sleeping).

The run follows the contract (docs/scenario-format.md):

1. ``[ksm]`` knobs are stored in key order (``ksmfs.kernel.knobs.store``, the same store
   functions the FUSE files use), then the processes start in file order: ``spawn``,
   ``prctl(PR_SET_MEMORY_MERGE, 1)`` for merge_any, and per VMA ``mmap`` (rising
   addresses), ``write`` of the fill tokens, ``madvise(MADV_MERGEABLE)``.
2. Snapshot 0, then ``run = 1``.
3. Per full scan K = 1 … max_full_scans: ksmd batches (``ksm_do_scan(pages_to_scan)``,
   then the clock moves by ``sleep_millisecs``) until the kernel's ``full_scans`` moves —
   or, when ksmd would not run (run != 1, no mm registered, pages_to_scan 0), a *virtual*
   full scan that does nothing. Then snapshot K, then the steps of K.

``build_kernel`` and ``apply_step`` are the same machinery for the FUSE mount's
``--scenario``: it builds the processes without running ksmd, sets run=1 itself and plays
the timeline as its real-time ksmd completes full scans.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ksmfs.kernel import Kernel
from ksmfs.kernel import knobs as _knobs
from ksmfs.kernel.errors import KsmError
from ksmfs.scenario.contents import Contents
from ksmfs.scenario.model import (
    MADV_MERGEABLE,
    MADV_UNMERGEABLE,
    PAGE_SIZE,
    PR_SET_MEMORY_MERGE,
    ProcessSpec,
    Scenario,
    Step,
    report_refusal,
    sysfs_bytes,
)

Snapshot = dict[str, Any]

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


@dataclass
class SimHandles:
    """What a run knows about its kernel: live processes by scenario name, and the token
    source (one per run, so ``unique`` contents never repeat)."""

    scenario: Scenario
    contents: Contents
    processes: dict[str, SimProcess] = field(default_factory=dict)


def store_knob(k: Kernel, name: str, value: int | str, when: str) -> bool:
    """Store one sysfs value as a write(2) would; a refusal is reported and the run goes on
    (contract: "A sysfs step that the kernel refuses ... is reported on standard error")."""
    try:
        _knobs.store(k, name, sysfs_bytes(value))
    except KsmError as e:
        report_refusal(name, value, e, when)
        return False
    return True


def spawn_process(k: Kernel, handles: SimHandles, spec: ProcessSpec,
                  when: str = "start") -> SimProcess:
    """Start one scenario process: spawn, merge_any, then map, fill and advise each VMA."""
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
            k.write(pid, addr, handles.contents.fill(spec.name, v))
            if v.mergeable:
                k.madvise(pid, addr, v.pages, MADV_MERGEABLE)
    handles.processes[spec.name] = proc
    return proc


def build_kernel(scenario: Scenario, version: str = "6.18") -> tuple[Kernel, SimHandles]:
    """A kernel with the scenario's knobs set and its initial processes filled, ksmd not
    started (run stays 0): the state just before snapshot 0."""
    with _call(f"kernel {version}"):
        k = Kernel(version=version)
    for name, value in scenario.ksm.items():
        store_knob(k, name, value, "[ksm]")
    handles = SimHandles(scenario=scenario, contents=Contents(scenario))
    for spec in scenario.processes:
        spawn_process(k, handles, spec)
    return k, handles


def apply_step(k: Kernel, handles: SimHandles, step: Step) -> None:
    """Play one timeline step on the kernel."""
    args = step.args
    when = f"after_full_scans = {step.after_full_scans}"
    if step.action == "sysfs":
        for name, value in args.items():
            store_knob(k, name, value, when)
        return
    if step.action == "spawn":
        for spec in args:
            spawn_process(k, handles, spec, when)
        return
    proc = handles.processes[args["process"]]
    with _call(f"{when}: {step.action} of process {proc.spec.name!r}"):
        _apply(k, handles, step, proc)


def _apply(k: Kernel, handles: SimHandles, step: Step, proc: SimProcess) -> None:
    args = step.args
    if step.action == "exit":
        k.exit(proc.pid)
        del handles.processes[args["process"]]
    elif step.action == "merge_any":
        k.prctl(proc.pid, PR_SET_MEMORY_MERGE, 1 if args["enable"] else 0)
    elif step.action == "madvise":
        vma = proc.spec.vma(args["vma"])
        advice = MADV_MERGEABLE if args["advice"] == "mergeable" else MADV_UNMERGEABLE
        k.madvise(proc.pid, proc.vmas[vma.name], vma.pages, advice)
    elif step.action == "write":
        addr = proc.vmas[args["vma"]] + args["first"] * PAGE_SIZE
        k.write(proc.pid, addr, handles.contents.segment(args["segment"], proc.spec.name))
    else:  # pragma: no cover - the loader only builds the actions above
        raise ValueError(f"unknown step action {step.action!r}")


def _ksm_file_values(k: Kernel) -> dict[str, int]:
    # Only the files this kernel version has (an older release lacks general_profit, ...).
    present = set(getattr(k.version, "sysfs_files", ()) or k.ksm.stats())
    return {name: int(v) for name, v in k.ksm.stats().items() if name in present}


def snapshot(k: Kernel, handles: SimHandles, full_scans: int) -> Snapshot:
    """The contract's snapshot: every numeric ksm file, and per live process its ksm_stat
    fields and the smaps ``KSM:`` kB of each of its VMAs."""
    procs: dict[str, Any] = {}
    for name, proc in handles.processes.items():
        stat = k.ksm_stat(proc.pid) or {}
        # Only the ksm_stat lines this release prints (none before 6.1, one on 6.1 ...).
        lines = getattr(k.version, "ksm_stat_lines", None)
        fields = list(stat) if lines is None else [f for f in lines if f in stat]
        entry: dict[str, Any] = {f: (stat[f] if isinstance(stat[f], str) else int(stat[f]))
                                 for f in fields}
        if not getattr(k.version, "has_smaps_ksm", True):
            procs[name] = entry  # no KSM: line in smaps before 6.6
            continue
        smaps = k.smaps(proc.pid)
        kb: dict[str, int] = {}
        for vname, start in proc.vmas.items():
            end = start + proc.spec.vma(vname).pages * PAGE_SIZE
            # Sum over every smaps entry inside the VMA's range, in case the kernel split it.
            kb[vname] = sum(int(c.ksm) for v, c in smaps if start <= v.start < end) >> 10
        entry["smaps_ksm_kb"] = kb
        procs[name] = entry
    return {"full_scans": full_scans, "ksm": _ksm_file_values(k), "processes": procs}


def ksmd_would_run(k: Kernel) -> bool:
    """ksm_scan_thread's test (ksmd_should_run): run has MERGE set and the mm list is not
    empty.  pages_to_scan = 0 runs ksmd but never ends a pass, so it counts as not running
    (the full scans become virtual instead of waiting forever)."""
    return k.ksm.would_scan() and k.ksm.pages_to_scan > 0


def run_full_scan(k: Kernel) -> bool:
    """Run ksmd batches until the kernel completes a pass; False for a virtual full scan
    (ksmd would not run).  The clock moves by sleep_millisecs after every batch."""
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
            # A batch either scans a page or ends the pass (ksm_do_scan returns at the end
            # of a pass); anything else would loop forever.
            raise RuntimeError("ksmd made no progress in a batch (kernel bug?)")


def run_sim(scenario: Scenario, on_snapshot: Callable[[Snapshot], None],
            progress: Callable[[str], None] | None = None,
            kernel_version: str = "6.18") -> list[Snapshot]:
    """Run ``scenario`` on a fresh simulated kernel; return (and stream) its snapshots."""
    k, handles = build_kernel(scenario, kernel_version)
    snaps: list[Snapshot] = []

    def take(n: int) -> None:
        s = snapshot(k, handles, n)
        snaps.append(s)
        on_snapshot(s)
        if progress is not None:
            progress(f"full scan {n}/{scenario.max_full_scans}")

    take(0)
    store_knob(k, "run", 1, "start")
    for n in range(1, scenario.max_full_scans + 1):
        run_full_scan(k)
        take(n)
        if n < scenario.max_full_scans:  # later steps could not show in any snapshot
            for step in scenario.steps_after(n):
                apply_step(k, handles, step)
    return snaps

"""The one scenario driver: when snapshots are taken and when steps run.

The contract (docs/scenario-format.md) fixes the order of a run; every backend follows
it through :func:`drive`, and the FUSE mount's timeline (``ksmfs.runtime.Timeline``)
through :func:`steps_due`, so ``ksmfs run`` and a mount with ``--scenario`` play the same
steps after the same full scans:

1. ``backend.start()``: the ``[ksm]`` knobs in key order, then the processes in file
   order (spawned, merge_any, each VMA mapped, filled, advised); ksmd does not run.
2. Snapshot 0, then ``backend.start_ksmd()`` (``run = 1``: "full scan 0").
3. For K = 1 … max_full_scans: ``backend.full_scan()`` (one pass of ksmd, or a virtual
   full scan when ksmd does not run), snapshot K, then the steps of K in file order —
   none after the last snapshot, since no snapshot could show them.

A backend implements :class:`Backend`.  :class:`MappedPages` is the bookkeeping both
backends share for contract v2: which pages of each VMA (numbered as first mapped) a
process still has mapped after ``munmap`` steps and forks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from ksmfs.scenario.model import ProcessSpec, Scenario, Step

Snapshot = dict[str, Any]


class Backend(Protocol):
    def start(self) -> None:
        """Knobs of ``[ksm]`` and the initial processes; ksmd stopped (run 0)."""

    def start_ksmd(self) -> None:
        """``run = 1``, right after snapshot 0."""

    def full_scan(self) -> bool:
        """One full scan: ksmd's batches until its pass ends (True), or a virtual one
        when ksmd does not run (False: run 0 or 2, pages_to_scan 0, nothing registered)."""

    def snapshot(self, full_scans: int) -> Snapshot:
        """The contract's snapshot, read between two batches of ksmd."""

    def step(self, step: Step) -> None:
        """Play one timeline step."""


def steps_due(scenario: Scenario, k: int) -> tuple[Step, ...]:
    """The steps that run once full scan ``k`` has completed and its snapshot has been
    taken: those of ``after_full_scans = k`` in file order, none from the last snapshot on
    (``k >= max_full_scans``: a step there could not show in any snapshot)."""
    if k >= scenario.max_full_scans:
        return ()
    return scenario.steps_after(k)


def steps_pending(scenario: Scenario, completed: int) -> bool:
    """Some step is still due after a later full scan than ``completed``."""
    return any(completed < s.after_full_scans < scenario.max_full_scans
               for s in scenario.steps)


def drive(scenario: Scenario, backend: Backend, on_snapshot: Callable[[Snapshot], None],
          progress: Callable[[str], None] | None = None) -> list[Snapshot]:
    """Run ``scenario`` on ``backend``; stream each snapshot to ``on_snapshot`` and return
    them all.  ``progress(message)``, when given, hears of each snapshot taken."""
    snaps: list[Snapshot] = []

    def take(k: int) -> None:
        snap = backend.snapshot(k)
        snaps.append(snap)
        on_snapshot(snap)
        if progress is not None:
            progress(f"full scan {k}/{scenario.max_full_scans}")

    backend.start()
    take(0)
    backend.start_ksmd()
    for k in range(1, scenario.max_full_scans + 1):
        backend.full_scan()
        take(k)
        for step in steps_due(scenario, k):
            backend.step(step)
    return snaps


class MappedPages:
    """Which pages of each VMA a scenario process still has mapped (contract v2).

    Page numbers are those of the VMA as first mapped; ``munmap`` clears them, a fork
    copies the parent's state to the child.  Kept as sorted, disjoint runs of unmapped
    pages per VMA, so that the bookkeeping costs nothing per page (a scenario may map
    millions of pages; a file may even ask for more than any machine has)."""

    def __init__(self, spec: ProcessSpec, parent: MappedPages | None = None) -> None:
        self.spec = spec
        self.sizes = {v.name: v.pages for v in spec.vmas}
        self.holes: dict[str, list[tuple[int, int]]] = (
            {name: list(h) for name, h in parent.holes.items()} if parent is not None
            else {v.name: [] for v in spec.vmas})

    def pages(self, vma: str) -> int:
        return self.sizes[vma]

    def unmapped_runs(self, vma: str, first: int, count: int) -> list[tuple[int, int]]:
        """Unmapped runs ``(first, count)`` within ``first … first+count-1``."""
        end = first + count
        return [(max(a, first), min(a + n, end) - max(a, first))
                for a, n in self.holes[vma] if a < end and a + n > first]

    def all_mapped(self, vma: str, first: int, count: int) -> bool:
        return first + count <= self.sizes[vma] and not self.unmapped_runs(vma, first, count)

    def runs(self, vma: str, first: int = 0, count: int | None = None) -> list[tuple[int, int]]:
        """Mapped runs ``(first, count)`` in the range (default: to the VMA's end)."""
        if count is None:
            count = self.sizes[vma] - first
        out: list[tuple[int, int]] = []
        at = first
        for a, n in self.unmapped_runs(vma, first, count):
            if a > at:
                out.append((at, a - at))
            at = a + n
        if at < first + count:
            out.append((at, first + count - at))
        return out

    def unmap(self, vma: str, first: int, count: int) -> None:
        merged: list[tuple[int, int]] = []
        for a, n in sorted([*self.holes[vma], (first, count)]):
            if merged and a <= merged[-1][0] + merged[-1][1]:
                b, m = merged[-1]
                merged[-1] = (b, max(b + m, a + n) - b)
            else:
                merged.append((a, n))
        self.holes[vma] = merged

    def live_vmas(self) -> Iterable[str]:
        """VMA names with at least one page mapped, in declaration order."""
        return (v.name for v in self.spec.vmas if self.runs(v.name))

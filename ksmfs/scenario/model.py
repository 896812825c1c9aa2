"""The in-memory form of a scenario file (docs/scenario-format.md, version 1).

Everything here is a frozen value: the loader (``loader.py``) builds it once, and both
backends (``sim.py`` drives ksmfs.kernel, ``real.py`` drives the machine's kernel) read it.
Names follow the contract's TOML keys, so a reader of a scenario file can find each field.

Step arguments (``Step.args``), by ``Step.action``:

=============  ==========================================================================
``write``      dict: ``process`` (full name), ``vma`` (name), ``first`` (int),
               ``count`` (int), ``segment`` (a :class:`Segment` whose ``pages == count``)
``madvise``    dict: ``process``, ``vma``, ``advice`` (``"mergeable"``/``"unmergeable"``)
``merge_any``  dict: ``process``, ``enable`` (bool)
``sysfs``      dict FILE -> VALUE in file order (VALUE is an int, or a str for
               ``advisor_mode``; booleans are stored as 0/1). Write
               ``sysfs_bytes(VALUE)`` to /sys/kernel/mm/ksm/FILE.
``exit``       dict: ``process``
``spawn``      tuple[ProcessSpec, ...] (several when the spawned table has ``count > 1``)
=============  ==========================================================================

Backends (``sim.run_sim``, ``real.run_real``) share one shape::

    run_xxx(scenario, on_snapshot, progress=None) -> list[dict]

``on_snapshot(snapshot: dict)`` is called with each snapshot as soon as it is taken (the
contract's "Snapshots" section: ``full_scans``, ``ksm``, ``processes``), and the list of
all of them is returned at the end.  ``progress(message: str)``, when given, receives a
short one-line status now and then (the CLI shows it on stderr when that is a TTY).
A ``sysfs`` write that the kernel refuses is reported with :func:`report_refusal`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ksmfs.kernel.versions import WRITABLE_SYSFS_ORDER

PAGE_SIZE = 4096

# The sources of a fill segment (contract table "SOURCE").
SegmentSource = Literal["zero", "unique", "value", "pool"]
StepAction = Literal["write", "madvise", "merge_any", "sysfs", "exit", "spawn"]

# Writable files of /sys/kernel/mm/ksm on 6.18 (mm/ksm.c ksm_attrs, __ATTR_RW ones), in the
# kernel's attribute-array order.  `run` is allowed in steps, never in [ksm].
WRITABLE_KSM_FILES: tuple[str, ...] = WRITABLE_SYSFS_ORDER

# The keys of a snapshot's "ksm" object that the contract's example shows; a snapshot holds
# every readable numeric file (these plus the numeric knobs).
KSM_COUNTER_FILES: tuple[str, ...] = (
    "pages_scanned",
    "pages_shared",
    "pages_sharing",
    "pages_unshared",
    "pages_volatile",
    "pages_skipped",
    "ksm_zero_pages",
    "full_scans",
    "stable_node_chains",
    "stable_node_dups",
    "general_profit",
)

# /proc/PID/ksm_stat fields on 6.18, in file order (fs/proc/base.c proc_pid_ksm_stat).
KSM_STAT_FIELDS: tuple[str, ...] = (
    "ksm_rmap_items",
    "ksm_zero_pages",
    "ksm_merging_pages",
    "ksm_process_profit",
    "ksm_merge_any",
    "ksm_mergeable",
)

MADV_MERGEABLE = 12
MADV_UNMERGEABLE = 13
PR_SET_MEMORY_MERGE = 67


@dataclass(frozen=True)
class Segment:
    """``pages`` consecutive pages of one content source.

    ``value`` is K for ``value:K``; ``pool`` is NAME for ``pool:NAME`` (then ``offset`` and
    ``shuffle`` apply: page j holds pool content ``perm[(offset + j) % size]``).
    """

    source: SegmentSource
    pages: int
    value: int | None = None
    pool: str | None = None
    offset: int = 0
    shuffle: bool = False

    @property
    def spec(self) -> str:
        """The contract's ``from`` string (``zero``, ``unique``, ``value:K``, ``pool:NAME``)."""
        if self.source == "value":
            return f"value:{self.value}"
        if self.source == "pool":
            return f"pool:{self.pool}"
        return self.source


@dataclass(frozen=True)
class VmaSpec:
    """One anonymous private (or MAP_SHARED) mapping, filled front to back by ``fill``."""

    name: str
    pages: int
    mergeable: bool = False
    shared: bool = False
    fill: tuple[Segment, ...] = ()


@dataclass(frozen=True)
class ProcessSpec:
    """One process; ``name`` is the full name (``NAME-i`` when the table had count > 1)."""

    name: str
    merge_any: bool = False
    vmas: tuple[VmaSpec, ...] = ()

    def vma(self, name: str) -> VmaSpec:
        for v in self.vmas:
            if v.name == name:
                return v
        raise KeyError(name)


@dataclass(frozen=True)
class Step:
    """One timeline action, run after the ``after_full_scans``-th full scan's snapshot."""

    after_full_scans: int
    action: StepAction
    args: Any  # see the module docstring for the shape per action
    index: int = 0  # position in the file ([[step]] number), for messages


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    seed: int
    max_full_scans: int
    ksm: dict[str, int | str] = field(default_factory=dict)  # file order
    pools: dict[str, int] = field(default_factory=dict)
    processes: tuple[ProcessSpec, ...] = ()
    steps: tuple[Step, ...] = ()  # sorted by after_full_scans, file order kept within a K
    path: Path | None = None

    def steps_after(self, k: int) -> tuple[Step, ...]:
        """The steps that run once full scan ``k`` has completed, in file order."""
        return tuple(s for s in self.steps if s.after_full_scans == k)

    def all_processes(self) -> tuple[ProcessSpec, ...]:
        """Initial processes, then those spawned by steps, in timeline order."""
        spawned = tuple(p for s in self.steps if s.action == "spawn" for p in s.args)
        return self.processes + spawned

    @property
    def summary(self) -> str:
        """First line of the description (for `ksmfs scenarios`)."""
        text = self.description.strip()
        return text.splitlines()[0].strip() if text else ""


def sysfs_bytes(value: int | str | bool) -> bytes:
    """The bytes to write to a sysfs knob for a scenario value (a shell `echo` would add
    the newline too; the kernel's parsers accept one trailing newline)."""
    if isinstance(value, bool):
        value = int(value)
    return f"{value}\n".encode()


def report_refusal(file: str, value: int | str, err: BaseException, when: str) -> None:
    """The contract's rule for a refused sysfs write: one line on stderr, the run goes on.

    ``when`` says where in the run it happened (``"[ksm]"``, ``"after_full_scans = 3"``).
    """
    import sys

    reason = getattr(err, "strerror", None) or str(err)
    print(f"ksmfs: {when}: writing {value!r} to /sys/kernel/mm/ksm/{file} failed: {reason} "
          "(the kernel keeps its value; the run goes on)", file=sys.stderr)

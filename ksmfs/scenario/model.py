"""The in-memory form of a scenario file (docs/scenario-format.md, version 2).

Everything here is a frozen value: the loader (``loader.py``) builds it once, and the
backends (``sim.py`` drives ksmfs.kernel, ``real.py`` drives the machine's kernel) read it
through the one driver (``driver.py``).  Names follow the contract's TOML keys, so a reader
of a scenario file can find each field.

A timeline step is a :class:`Step` (when, and where in the file) holding one action, a
frozen dataclass per contract action: :class:`Write`, :class:`Madvise`, :class:`Fork`,
:class:`Munmap`, :class:`MergeAny`, :class:`Sysfs`, :class:`Exit`, :class:`Spawn`.  Page
numbers are always those of the VMA as first mapped (contract v2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ksmfs.kernel.versions import WRITABLE_SYSFS_ORDER

# The sources of a fill segment (contract table "SOURCE").
SegmentSource = Literal["zero", "unique", "value", "pool"]

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
class Write:
    """Write new contents into pages ``first … first+count-1`` (copy-on-write breaks any
    sharing); ``segment`` is a fill segment with ``pages == count``."""

    process: str
    vma: str
    first: int
    count: int
    segment: Segment
    kind: Literal["write"] = "write"


@dataclass(frozen=True)
class Madvise:
    """MADV_MERGEABLE / MADV_UNMERGEABLE on pages ``first … first+count-1``.

    ``count`` None is the contract's default (to the VMA's original end); then the pages
    already unmapped in that range are skipped (``ranged`` False), while an explicit range
    must name mapped pages only."""

    process: str
    vma: str
    advice: Literal["mergeable", "unmergeable"]
    first: int = 0
    count: int | None = None
    kind: Literal["madvise"] = "madvise"

    @property
    def ranged(self) -> bool:
        return self.count is not None


@dataclass(frozen=True)
class Fork:
    """``process`` forks; ``child`` is the new process (its VMAs are the parent's, with the
    parent's page numbers; which of them are still mapped is the parent's state)."""

    process: str
    child: ProcessSpec
    kind: Literal["fork"] = "fork"


@dataclass(frozen=True)
class Munmap:
    """Unmap pages ``first … first+count-1`` of the VMA (the rest stays, maybe split)."""

    process: str
    vma: str
    first: int
    count: int
    kind: Literal["munmap"] = "munmap"


@dataclass(frozen=True)
class MergeAny:
    """``prctl(PR_SET_MEMORY_MERGE, enable)``."""

    process: str
    enable: bool
    kind: Literal["merge_any"] = "merge_any"


@dataclass(frozen=True)
class Sysfs:
    """FILE -> VALUE writes in file order (VALUE an int, or a str for ``advisor_mode``;
    booleans stored as 0/1): ``sysfs_bytes(VALUE)`` goes to /sys/kernel/mm/ksm/FILE."""

    values: tuple[tuple[str, int | str], ...]
    kind: Literal["sysfs"] = "sysfs"


@dataclass(frozen=True)
class Exit:
    process: str
    kind: Literal["exit"] = "exit"


@dataclass(frozen=True)
class Spawn:
    """New processes (several when the spawned table has ``count > 1``)."""

    processes: tuple[ProcessSpec, ...]
    kind: Literal["spawn"] = "spawn"


Action = Write | Madvise | Fork | Munmap | MergeAny | Sysfs | Exit | Spawn
ACTION_KEYS: tuple[str, ...] = ("write", "madvise", "fork", "munmap", "merge_any", "sysfs",
                                "exit", "spawn")


@dataclass(frozen=True)
class Step:
    """One timeline action, run after the ``after_full_scans``-th full scan's snapshot."""

    after_full_scans: int
    action: Action
    index: int = 0  # position in the file ([[step]] number), for messages

    @property
    def kind(self) -> str:
        """The contract's action key (``write``, ``fork``, ...)."""
        return self.action.kind

    @property
    def when(self) -> str:
        return f"after_full_scans = {self.after_full_scans}"


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
        """Initial processes, then those spawned or forked by steps, in timeline order."""
        out = list(self.processes)
        for s in self.steps:
            if isinstance(s.action, Spawn):
                out.extend(s.action.processes)
            elif isinstance(s.action, Fork):
                out.append(s.action.child)
        return tuple(out)

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

"""Kernel version profiles: which KSM files, ksm_stat lines and behaviours a release has.

Source: the version table of ksm-kernel-spec.md §0.3 (commit ids there). Only the releases
users ask for are profiled; 6.18 is the default and the one measured on the live machine.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from ksmfs.linux import DEFAULT_VERSION as DEFAULT_VERSION
from ksmfs.linux import SUPPORTED_VERSIONS

from .errors import KsmError
from .trace import KSM_EVENTS

# The attribute array of mm/ksm.c (ksm_attrs[]), in its order.
_ALL_SYSFS = (
    ("sleep_millisecs", (2, 6)),
    ("pages_to_scan", (2, 6)),
    ("run", (2, 6)),
    ("pages_scanned", (6, 6)),
    ("pages_shared", (2, 6)),
    ("pages_sharing", (2, 6)),
    ("pages_unshared", (2, 6)),
    ("pages_volatile", (2, 6)),
    ("pages_skipped", (6, 7)),
    ("ksm_zero_pages", (6, 6)),
    ("full_scans", (2, 6)),
    ("merge_across_nodes", (3, 9)),
    ("max_page_sharing", (4, 13)),
    ("stable_node_chains", (4, 13)),
    ("stable_node_dups", (4, 13)),
    ("stable_node_chains_prune_millisecs", (4, 13)),
    ("use_zero_pages", (4, 11)),
    ("general_profit", (6, 4)),
    ("smart_scan", (6, 7)),
    ("advisor_mode", (6, 8)),
    ("advisor_max_cpu", (6, 8)),
    ("advisor_min_pages_to_scan", (6, 8)),
    ("advisor_max_pages_to_scan", (6, 8)),
    ("advisor_target_scan_time", (6, 8)),
)

# The __ATTR_RW attributes (mode 0644), in attribute-array order; every other file is
# __ATTR_RO (0444). The one list every layer uses.
WRITABLE_SYSFS_ORDER: tuple[str, ...] = (
    "sleep_millisecs",
    "pages_to_scan",
    "run",
    "merge_across_nodes",
    "max_page_sharing",
    "stable_node_chains_prune_millisecs",
    "use_zero_pages",
    "smart_scan",
    "advisor_mode",
    "advisor_max_cpu",
    "advisor_min_pages_to_scan",
    "advisor_max_pages_to_scan",
    "advisor_target_scan_time",
)
WRITABLE_SYSFS = frozenset(WRITABLE_SYSFS_ORDER)
# Every attribute any supported release has, in ksm_attrs[] order.
SYSFS_ATTR_ORDER: tuple[str, ...] = tuple(name for name, _ in _ALL_SYSFS)

SUPPORTED = SUPPORTED_VERSIONS


@dataclass(frozen=True)
class KernelProfile:
    """What one kernel release exposes; every layer asks this object instead of comparing
    version numbers itself."""

    name: str
    numa: bool = True

    @property
    def key(self) -> tuple[int, int]:
        major, minor = self.name.split(".")
        return int(major), int(minor)

    def at_least(self, major: int, minor: int) -> bool:
        return self.key >= (major, minor)

    @property
    def release(self) -> str:
        return f"{self.name}.0-ksmfs"

    @property
    def sysfs_files(self) -> tuple[str, ...]:
        return tuple(
            n
            for n, since in _ALL_SYSFS
            if self.key >= since and (self.numa or n != "merge_across_nodes")
        )

    @property
    def ksm_stat_lines(self) -> tuple[str, ...]:
        # fs/proc/base.c proc_pid_ksm_stat, by release (spec §2.1 "Older layouts").
        if not self.at_least(6, 1):
            return ()
        if not self.at_least(6, 4):
            return ("ksm_rmap_items",)
        lines = ["ksm_rmap_items"]
        if self.at_least(6, 6):
            lines.append("ksm_zero_pages")
        lines += ["ksm_merging_pages", "ksm_process_profit"]
        if self.at_least(6, 14):
            lines += ["ksm_merge_any", "ksm_mergeable"]
        return tuple(lines)

    @property
    def has_ksm_merging_pages_file(self) -> bool:
        return self.at_least(5, 19)

    @property
    def has_smaps_ksm(self) -> bool:
        return self.at_least(6, 6)

    @property
    def has_prctl_memory_merge(self) -> bool:
        return self.at_least(6, 4)

    @property
    def ksm_zero_pages_signed(self) -> bool:
        return self.at_least(6, 10)

    @property
    def profit_counts_zero_pages(self) -> bool:
        return self.at_least(6, 6)

    @property
    def has_smart_scan(self) -> bool:
        return self.at_least(6, 7)

    @property
    def fork_resets_child_ksm_stats(self) -> bool:
        # Donet Tom's fork fix (6.18 cycle, Cc stable 6.6+).
        return self.at_least(6, 18)

    @property
    def keeps_merge_any_on_drop(self) -> bool:
        return self.at_least(6, 18)

    @property
    def trace_events(self) -> tuple[str, ...]:
        if not self.at_least(6, 4):
            return ()
        return tuple(e for e in KSM_EVENTS if e != "ksm_advisor" or self.at_least(6, 8))


def get_profile(version: str) -> KernelProfile:
    if version not in SUPPORTED:
        raise KsmError(
            errno.EINVAL,
            f"unknown kernel version {version!r}; supported: {', '.join(SUPPORTED)}",
        )
    return KernelProfile(version)

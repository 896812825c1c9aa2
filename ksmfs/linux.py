"""The numbers ksmfs shares with the Linux interface, and the kernel versions it
simulates: one source for every layer (kernel, kfs, fuse, scenario, cli, top).

It imports nothing, so the command line and the real-kernel backend use it without
loading the simulation (numpy).
"""

from __future__ import annotations

PAGE_SIZE = 4096  # x86_64 base pages

# include/uapi/asm-generic/mman-common.h
MADV_MERGEABLE = 12
MADV_UNMERGEABLE = 13

# include/uapi/linux/prctl.h (6.4+)
PR_SET_MEMORY_MERGE = 67
PR_GET_MEMORY_MERGE = 68

# include/linux/threads.h: no 64-bit kernel has more pids than this (the top of
# /proc/sys/kernel/pid_max), so no scenario can have more processes.
PID_MAX_LIMIT = 4 * 1024 * 1024

# kernfs_fop_write_iter() copies at most PAGE_SIZE bytes of one write(2) for the store
# function; the writer sees a short write [LIVE] (spec §1.1).
WRITE_MAX = PAGE_SIZE

# The kernel releases ksmfs simulates (ksmfs.kernel.versions has a profile for each) and
# the one used when none is named.
SUPPORTED_VERSIONS = ("5.15", "6.1", "6.4", "6.6", "6.8", "6.14", "6.18")
DEFAULT_VERSION = "6.18"

# Every writable file of /sys/kernel/mm/ksm but `run`, in an order in which any set of
# values can be stored: advisor_mode first (switching it to none resets pages_to_scan in
# advisor_mode_store(), and while it is scan-time a pages_to_scan store is EINVAL), then
# max_page_sharing and merge_across_nodes (EBUSY once anything is shared). The real
# backend restores the machine's knobs in this order; an estimate writes a capture's.
KNOB_STORE_ORDER: tuple[str, ...] = (
    "advisor_mode",
    "max_page_sharing",
    "merge_across_nodes",
    "pages_to_scan",
    "sleep_millisecs",
    "use_zero_pages",
    "smart_scan",
    "stable_node_chains_prune_millisecs",
    "advisor_max_cpu",
    "advisor_min_pages_to_scan",
    "advisor_max_pages_to_scan",
    "advisor_target_scan_time",
)

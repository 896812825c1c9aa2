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

# kernfs_fop_write_iter() copies at most PAGE_SIZE bytes of one write(2) for the store
# function; the writer sees a short write [LIVE] (spec §1.1).
WRITE_MAX = PAGE_SIZE

# The kernel releases ksmfs simulates (ksmfs.kernel.versions has a profile for each) and
# the one used when none is named.
SUPPORTED_VERSIONS = ("5.15", "6.1", "6.4", "6.6", "6.8", "6.14", "6.18")
DEFAULT_VERSION = "6.18"

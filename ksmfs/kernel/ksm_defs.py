"""What ksm.py and its shortcut modules (ksm_nodes.py, ksm_bulk.py) share: the rmap_item
flag bits and calc_checksum()."""

from __future__ import annotations

import numpy as np

# rmap_item flag bits kept in PhysMem.iflags (the kernel keeps them in rmap_item->address)
HAS_ITEM = 0x1
STABLE = 0x2  # STABLE_FLAG
UNSTABLE = 0x4  # UNSTABLE_FLAG
SEQ_ODD = 0x8  # low bit of ksm_scan.seqnr when the item entered the unstable tree


_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
# (u32) xxhash64 of a 4096-byte zero page, seed 0 (spec §3.5): zero_checksum.
ZERO_CHECKSUM = 0x32D8BBDB


def calc_checksum(tokens: np.ndarray) -> np.ndarray:
    """calc_checksum(): a 32-bit hash of the content. Never 0 for a non-zero page, so a
    fresh item (oldchecksum 0) always waits one visit, as a real xxhash practically does."""
    x = tokens.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= _M1
        x ^= x >> np.uint64(27)
        x *= _M2
        x ^= x >> np.uint64(31)
    c = (x & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    c[c == 0] = 1
    c[c == ZERO_CHECKSUM] = ZERO_CHECKSUM + 1
    c[tokens == 0] = ZERO_CHECKSUM
    return c


def calc_checksum1(token: int) -> int:
    """calc_checksum() of one page, in plain integers (same values as the vector form)."""
    if token == 0:
        return ZERO_CHECKSUM
    x = token
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    c = (x ^ (x >> 31)) & 0xFFFFFFFF
    if c == 0:
        return 1
    if c == ZERO_CHECKSUM:
        return ZERO_CHECKSUM + 1
    return c

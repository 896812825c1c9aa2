"""Writes to /sys/kernel/mm/ksm that the live 6.18 kernel refuses (spec §1.4), with the
errno it answers, and the defaults of a fresh kernel: the one table the kernel tier
(knobs.store), the kfs tier (the sysfs rows) and the e2e tier (a mount next to the real
/sys) all check.  Every case here FAILS on the real kernel (or is an empty write, which
returns 0 and calls no store), so running them against the machine's real KSM changes
nothing: that is why the table holds no valid value, not even the current one (someone
else may be changing the real KSM, which would make a "same value" write a change).
"""

from __future__ import annotations

import errno

EINVAL, ERANGE = errno.EINVAL, errno.ERANGE

_NOT_A_NUMBER = [b"abc", b"\n", b" 5", b"5 ", b"\t5", b"5\r\n", b"5\n\n", b"0x10", b"1e2",
                 b"5abc", b"-1", b"-0"]
_BOOL_BAD = [b"2", b"\n", b"abc", b"-1", b"o", b"ox", b"x", b" 0"]

# (file, bytes written, expected errno; 0 means "returns 0, nothing stored")
INVALID_WRITES: list[tuple[str, bytes, int]] = [
    *[("run", d, EINVAL) for d in _NOT_A_NUMBER],
    ("run", b"3", EINVAL),
    ("run", b"7\n", EINVAL),
    ("run", b"4294967296", EINVAL),
    ("run", b"", 0),
    *[("pages_to_scan", d, EINVAL) for d in (b"abc", b"-1", b" 5", b"5abc", b"4294967296")],
    ("pages_to_scan", b"abc" * 2000, EINVAL),  # longer than a page: only 4096 bytes parsed
    ("pages_to_scan", b"", 0),
    *[("sleep_millisecs", d, EINVAL) for d in (b"abc", b"-1", b"4294967296", b"\n")],
    *[("stable_node_chains_prune_millisecs", d, EINVAL) for d in (b"abc", b"4294967296")],
    ("max_page_sharing", b"abc", EINVAL),
    ("max_page_sharing", b"-1", EINVAL),
    ("max_page_sharing", b"0", EINVAL),
    ("max_page_sharing", b"1", EINVAL),
    ("max_page_sharing", b"2147483648", ERANGE),
    ("max_page_sharing", b"99999999999", ERANGE),
    ("merge_across_nodes", b"abc", EINVAL),
    ("merge_across_nodes", b"-1", EINVAL),
    ("merge_across_nodes", b"2", EINVAL),
    ("merge_across_nodes", b"18446744073709551616", ERANGE),
    *[("use_zero_pages", d, EINVAL) for d in _BOOL_BAD],
    *[("smart_scan", d, EINVAL) for d in _BOOL_BAD],
    *[("advisor_mode", d, EINVAL) for d in (b"bogus", b"\n", b"NONE", b" none", b"[none]",
                                             b"none ", b"none\n\n", b"scan_time")],
    ("advisor_mode", b"", 0),
    ("advisor_max_cpu", b"abc", EINVAL),
    ("advisor_max_cpu", b"18446744073709551616", EINVAL),
    ("advisor_min_pages_to_scan", b"-1", EINVAL),
    ("advisor_max_pages_to_scan", b"x", EINVAL),
    ("advisor_target_scan_time", b"0", EINVAL),
    ("advisor_target_scan_time", b"abc", EINVAL),
]

# The documented defaults of a freshly booted 6.18 kernel (spec §1.4).
DEFAULTS = {
    "advisor_max_cpu": "70",
    "advisor_max_pages_to_scan": "30000",
    "advisor_min_pages_to_scan": "500",
    "advisor_mode": "[none] scan-time",
    "advisor_target_scan_time": "200",
    "full_scans": "0",
    "general_profit": "0",
    "ksm_zero_pages": "0",
    "max_page_sharing": "256",
    "merge_across_nodes": "1",
    "pages_scanned": "0",
    "pages_shared": "0",
    "pages_sharing": "0",
    "pages_skipped": "0",
    "pages_to_scan": "100",
    "pages_unshared": "0",
    "pages_volatile": "0",
    "run": "0",
    "sleep_millisecs": "20",
    "smart_scan": "1",
    "stable_node_chains": "0",
    "stable_node_chains_prune_millisecs": "2000",
    "stable_node_dups": "0",
    "use_zero_pages": "0",
}


def attempt(path, data: bytes) -> str:
    """One open(O_WRONLY)+write(2), as a comparable outcome: "OK n" or the errno name."""
    import os

    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as e:
        return f"open: {errno.errorcode[e.errno]}"
    try:
        return f"OK {os.write(fd, data)}"
    except OSError as e:
        return errno.errorcode[e.errno]
    finally:
        os.close(fd)


def expected(code: int) -> str:
    return "OK 0" if code == 0 else errno.errorcode[code]

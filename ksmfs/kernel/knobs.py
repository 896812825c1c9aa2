"""The store functions of /sys/kernel/mm/ksm: written bytes in, the kernel's errno out.

Each function copies its ``*_store`` in mm/ksm.c, parser and error mapping included (spec
§1.1-1.4, confirmed on the live 6.18 machine). The FUSE adapter and the scenario runner
both call :func:`store`, so a bad value fails the same way everywhere.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING

from ksmfs.linux import WRITE_MAX

from .errors import KsmError
from .versions import WRITABLE_SYSFS

if TYPE_CHECKING:
    from .kernel import Kernel

U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1
S32_MAX = (1 << 31) - 1


class ParseError(Exception):
    def __init__(self, err: int) -> None:
        self.errno = err


def _kstrtoull(s: bytes, *, allow_plus: bool = True) -> int:
    """_kstrtoull(): decimal digits, at most one trailing newline, nothing else."""
    if allow_plus and s[:1] == b"+":
        s = s[1:]
    i = 0
    while i < len(s) and 0x30 <= s[i] <= 0x39:
        i += 1
    if i == 0:
        raise ParseError(errno.EINVAL)
    value = int(s[:i])
    rest = s[i:]
    if rest[:1] == b"\n":
        rest = rest[1:]
    if rest:
        raise ParseError(errno.EINVAL)
    if value > U64_MAX:
        raise ParseError(errno.ERANGE)
    return value


def kstrtoul(s: bytes) -> int:
    return _kstrtoull(s)


def kstrtouint(s: bytes) -> int:
    v = _kstrtoull(s)
    if v > U32_MAX:
        raise ParseError(errno.ERANGE)
    return v


def kstrtoint(s: bytes) -> int:
    if s[:1] == b"-":
        v = -_kstrtoull(s[1:], allow_plus=False)
        if v < -(S32_MAX + 1):
            raise ParseError(errno.ERANGE)
        return v
    v = _kstrtoull(s)
    if v > S32_MAX:
        raise ParseError(errno.ERANGE)
    return v


def kstrtobool(s: bytes) -> bool:
    """kstrtobool(): the first character decides, ``on``/``of`` by the second."""
    c = s[:1]
    if c and c in b"eEyYtT1":
        return True
    if c and c in b"fFdDnN0":
        return False
    if c and c in b"oO":
        c2 = s[1:2]
        if c2 and c2 in b"nN":
            return True
        if c2 and c2 in b"fF":
            return False
    raise ParseError(errno.EINVAL)


def sysfs_streq(s: bytes, word: bytes) -> bool:
    """sysfs_streq(): equal, allowing one trailing newline."""
    return s == word or s == word + b"\n"


def _uint_einval(s: bytes) -> int:
    try:
        return kstrtouint(s)
    except ParseError as e:
        raise KsmError(errno.EINVAL, "not an unsigned 32-bit decimal number") from e


def _ulong_einval(s: bytes) -> int:
    try:
        return kstrtoul(s)
    except ParseError as e:
        raise KsmError(errno.EINVAL, "not an unsigned decimal number") from e


def _bool(s: bytes) -> bool:
    try:
        return kstrtobool(s)
    except ParseError as e:
        raise KsmError(e.errno, "not a boolean (0/1, y/n, on/off)") from e


def store_run(k: Kernel, s: bytes) -> None:
    v = _uint_einval(s)
    if v > 2:
        raise KsmError(errno.EINVAL, "run must be 0, 1 or 2")
    k.set_run(v)


def store_pages_to_scan(k: Kernel, s: bytes) -> None:
    # pages_to_scan_store(): refused while the advisor drives it, before parsing
    if k.ksm.advisor_mode != "none":
        raise KsmError(errno.EINVAL, "pages_to_scan is managed by advisor_mode scan-time")
    k.ksm.set_pages_to_scan(_uint_einval(s))


def store_sleep_millisecs(k: Kernel, s: bytes) -> None:
    k.ksm.set_sleep_millisecs(_uint_einval(s))


def store_merge_across_nodes(k: Kernel, s: bytes) -> None:
    try:
        v = kstrtoul(s)  # errors pass through: ERANGE on overflow
    except ParseError as e:
        raise KsmError(e.errno, "not an unsigned decimal number") from e
    if v > 1:
        raise KsmError(errno.EINVAL, "merge_across_nodes must be 0 or 1")
    k.ksm.set_merge_across_nodes(v)


def store_use_zero_pages(k: Kernel, s: bytes) -> None:
    k.ksm.use_zero_pages = int(_bool(s))


def store_max_page_sharing(k: Kernel, s: bytes) -> None:
    try:
        v = kstrtoint(s)  # errors pass through: ERANGE beyond INT_MAX
    except ParseError as e:
        raise KsmError(e.errno, "not a signed 32-bit decimal number") from e
    if v < 2:
        raise KsmError(errno.EINVAL, "max_page_sharing must be at least 2")
    k.ksm.set_max_page_sharing(v)


def store_prune_millisecs(k: Kernel, s: bytes) -> None:
    k.ksm.stable_node_chains_prune_millisecs = _uint_einval(s)


def store_smart_scan(k: Kernel, s: bytes) -> None:
    k.ksm.smart_scan = int(_bool(s))


def store_advisor_mode(k: Kernel, s: bytes) -> None:
    if sysfs_streq(s, b"none"):
        k.ksm.set_advisor_mode("none")
    elif sysfs_streq(s, b"scan-time"):
        k.ksm.set_advisor_mode("scan-time")
    else:
        raise KsmError(errno.EINVAL, "advisor_mode must be 'none' or 'scan-time'")


def store_advisor_max_cpu(k: Kernel, s: bytes) -> None:
    # no range check; the unsigned int silently keeps the low 32 bits (live: 4294967366 -> 70)
    k.ksm.advisor_max_cpu = _ulong_einval(s) & U32_MAX


def store_advisor_min_pages_to_scan(k: Kernel, s: bytes) -> None:
    k.ksm.advisor_min_pages_to_scan = _ulong_einval(s)


def store_advisor_max_pages_to_scan(k: Kernel, s: bytes) -> None:
    k.ksm.advisor_max_pages_to_scan = _ulong_einval(s)


def store_advisor_target_scan_time(k: Kernel, s: bytes) -> None:
    v = _ulong_einval(s)
    if v < 1:
        raise KsmError(errno.EINVAL, "advisor_target_scan_time must be at least 1 second")
    k.ksm.advisor_target_scan_time = v


STORES: dict[str, Callable[[Kernel, bytes], None]] = {
    "run": store_run,
    "pages_to_scan": store_pages_to_scan,
    "sleep_millisecs": store_sleep_millisecs,
    "merge_across_nodes": store_merge_across_nodes,
    "use_zero_pages": store_use_zero_pages,
    "max_page_sharing": store_max_page_sharing,
    "stable_node_chains_prune_millisecs": store_prune_millisecs,
    "smart_scan": store_smart_scan,
    "advisor_mode": store_advisor_mode,
    "advisor_max_cpu": store_advisor_max_cpu,
    "advisor_min_pages_to_scan": store_advisor_min_pages_to_scan,
    "advisor_max_pages_to_scan": store_advisor_max_pages_to_scan,
    "advisor_target_scan_time": store_advisor_target_scan_time,
}
assert set(STORES) == WRITABLE_SYSFS


def store(k: Kernel, name: str, data: bytes) -> int:
    """Write ``data`` to /sys/kernel/mm/ksm/``name`` the way sysfs does: an empty write
    returns 0 and changes nothing; only the first 4096 bytes reach the store function,
    cut at the first NUL; success returns the bytes consumed. Raises KsmError."""
    if name not in k.version.sysfs_files:
        raise KsmError(errno.ENOENT, f"{name}: no such file in /sys/kernel/mm/ksm of {k.version.name}")
    fn = STORES.get(name)
    if fn is None:
        raise KsmError(errno.EACCES, f"{name} is read-only")
    if not data:
        return 0
    count = min(len(data), WRITE_MAX)
    buf = data[:count].split(b"\0", 1)[0]
    try:
        fn(k, buf)
    except KsmError as e:
        e.message = f"{name}: {e.message}"
        raise
    return count


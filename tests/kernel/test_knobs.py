"""sysfs store functions: the kernel's parsers and errnos (spec §1.1-1.4, live 6.18 matrix)."""

from __future__ import annotations

import errno
import os

import pytest

from ksmfs.kernel import Kernel, KsmError, knobs

UINT_FILES = ("pages_to_scan", "sleep_millisecs", "stable_node_chains_prune_millisecs")
REAL = "/sys/kernel/mm/ksm"


def err_of(k: Kernel, name: str, data: bytes) -> int | str:
    try:
        return f"OK({knobs.store(k, name, data)})"
    except KsmError as e:
        return e.errno


@pytest.mark.parametrize("name", UINT_FILES + ("run",))
@pytest.mark.parametrize(
    "data", [b"abc", b"-1", b"\n", b" 5", b"5 ", b"\t5", b"5\r\n", b"5\n\n", b"0x10", b"1e2", b"5abc", b"-0", b"4294967296"]
)
def test_uint_files_reject_with_einval(name: str, data: bytes) -> None:
    """kstrtouint files map every parse error (overflow too) to EINVAL."""
    assert err_of(Kernel(), name, data) == errno.EINVAL


def test_empty_write_changes_nothing() -> None:
    """A zero-length write returns 0 without calling the store function."""
    k = Kernel()
    for name in k.version.sysfs_files:
        if name in knobs.STORES:
            assert err_of(k, name, b"") == "OK(0)"
    assert k.ksm.stats()["pages_to_scan"] == 100


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("max_page_sharing", b"2147483648", errno.ERANGE),
        ("max_page_sharing", b"99999999999", errno.ERANGE),
        ("max_page_sharing", b"1", errno.EINVAL),
        ("max_page_sharing", b"-1", errno.EINVAL),
        ("max_page_sharing", b"+256", "OK(4)"),
        ("merge_across_nodes", b"18446744073709551616", errno.ERANGE),
        ("merge_across_nodes", b"2", errno.EINVAL),
        ("merge_across_nodes", b"1\n", "OK(2)"),
        ("advisor_max_cpu", b"18446744073709551616", errno.EINVAL),
        ("advisor_target_scan_time", b"0", errno.EINVAL),
        ("run", b"3", errno.EINVAL),
        ("run", b"+0\n", "OK(3)"),
        ("run", b"00", "OK(2)"),
        ("pages_to_scan", b"0100", "OK(4)"),
        ("advisor_mode", b"NONE", errno.EINVAL),
        ("advisor_mode", b"none\n\n", errno.EINVAL),
        ("advisor_mode", b"[none]", errno.EINVAL),
        ("advisor_mode", b"none\n", "OK(5)"),
        ("pages_shared", b"5", errno.EACCES),
    ],
)
def test_errno_matrix(name: str, data: bytes, expected: int | str) -> None:
    """The live kernel's errno matrix (spec §1.4)."""
    assert err_of(Kernel(), name, data) == expected


@pytest.mark.parametrize(
    ("data", "value"),
    [(b"0", 0), (b"0abc", 0), (b"n", 0), (b"no", 0), (b"f", 0), (b"off", 0), (b"OFF", 0), (b"of", 0), (b"d", 0),
     (b"1", 1), (b"1abc", 1), (b"y", 1), (b"Y", 1), (b"t", 1), (b"on", 1), (b"ON", 1), (b"enable", 1), (b"10", 1)],
)
def test_kstrtobool_accepts(data: bytes, value: int) -> None:
    """kstrtobool looks at the first character (and the second after o)."""
    k = Kernel()
    knobs.store(k, "use_zero_pages", data)
    assert k.ksm.use_zero_pages == value


@pytest.mark.parametrize("data", [b"2", b"\n", b"abc", b"-1", b"o", b"ox", b"x", b" 0"])
def test_kstrtobool_rejects(data: bytes) -> None:
    """Everything else is EINVAL."""
    assert err_of(Kernel(), "smart_scan", data) == errno.EINVAL


def test_first_4096_bytes_and_nul() -> None:
    """Only the first 4096 bytes are parsed (short write), cut at the first NUL."""
    k = Kernel()
    assert knobs.store(k, "pages_to_scan", b"0" * 4095 + b"100") == 4096
    assert k.ksm.pages_to_scan == 1
    assert knobs.store(k, "pages_to_scan", b"100\x00zz") == 6
    assert k.ksm.pages_to_scan == 100


def test_advisor_mode_round_trip() -> None:
    """scan-time sets pages_to_scan to advisor_min_pages_to_scan and locks it; none sets 100."""
    k = Kernel()
    knobs.store(k, "pages_to_scan", b"777")
    knobs.store(k, "advisor_mode", b"scan-time\n")
    assert knobs.show(k, "advisor_mode") == b"none [scan-time]\n"
    assert k.ksm.pages_to_scan == 500
    assert err_of(k, "pages_to_scan", b"100") == errno.EINVAL
    knobs.store(k, "advisor_mode", b"none\n")
    assert knobs.show(k, "advisor_mode") == b"[none] scan-time\n"
    assert k.ksm.pages_to_scan == 100


def test_advisor_max_cpu_truncated_to_32_bits() -> None:
    """4294967366 is stored as 70 (unsigned int)."""
    k = Kernel()
    assert knobs.store(k, "advisor_max_cpu", b"4294967366") == 10
    assert knobs.show(k, "advisor_max_cpu") == b"70\n"


def test_ebusy_only_when_value_changes_while_shared() -> None:
    """max_page_sharing: the same value succeeds, a new one is EBUSY while pages are shared."""
    k = Kernel()
    pid = k.spawn("a")
    addr = k.mmap(pid, 4)
    k.write(pid, addr, [7, 7, 7, 7])
    k.madvise(pid, addr, 4, 12)
    knobs.store(k, "run", b"1")
    while k.ksm.full_scans < 2:
        k.ksm_do_scan(100)
    assert k.ksm.pages_shared == 1
    assert err_of(k, "max_page_sharing", b"256") == "OK(3)"
    assert err_of(k, "max_page_sharing", b"10") == errno.EBUSY
    assert err_of(k, "merge_across_nodes", b"0") == errno.EBUSY
    knobs.store(k, "run", b"2")
    assert err_of(k, "max_page_sharing", b"10") == "OK(2)"


def test_defaults_match_a_fresh_kernel() -> None:
    """The defaults of a freshly booted 6.18 (spec §1.4)."""
    k = Kernel()
    shown = {n: knobs.show(k, n).decode().strip() for n in k.version.sysfs_files}
    assert shown["advisor_mode"] == "[none] scan-time"
    assert shown["pages_to_scan"] == "100" and shown["sleep_millisecs"] == "20"
    assert shown["max_page_sharing"] == "256" and shown["smart_scan"] == "1"
    assert shown["stable_node_chains_prune_millisecs"] == "2000"


@pytest.mark.skipif(not os.path.isdir(REAL), reason="no /sys/kernel/mm/ksm on this machine")
def test_file_list_and_defaults_like_the_real_kernel() -> None:
    """The 6.18 profile has exactly the live machine's files."""
    k = Kernel()
    assert sorted(k.version.sysfs_files) == sorted(os.listdir(REAL))

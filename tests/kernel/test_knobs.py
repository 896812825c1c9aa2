"""sysfs store functions: the kernel's parsers and errnos (spec §1.1-1.4, live 6.18 matrix)."""

from __future__ import annotations

import errno
import os

import pytest
from ksm_cases import INVALID_WRITES

from ksmfs.kernel import Kernel, KsmError, knobs
from ksmfs.kernel.versions import SUPPORTED, WRITABLE_SYSFS
from ksmfs.linux import KNOB_STORE_ORDER

REAL = "/sys/kernel/mm/ksm"


def err_of(k: Kernel, name: str, data: bytes) -> int | str:
    try:
        return f"OK({knobs.store(k, name, data)})"
    except KsmError as e:
        return e.errno


@pytest.mark.parametrize(("name", "data", "code"), INVALID_WRITES)
def test_refused_writes_give_the_live_errno(name: str, data: bytes, code: int) -> None:
    """Every refused write of the live kernel's table (tests/ksm_cases.py), through the
    store function the mount calls (after kernfs' 4096-byte cut)."""
    expected = "OK(0)" if code == 0 else code
    assert err_of(Kernel(), name, data[:4096]) == expected


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
        ("max_page_sharing", b"+256", "OK(4)"),
        ("merge_across_nodes", b"1\n", "OK(2)"),
        ("run", b"+0\n", "OK(3)"),
        ("run", b"00", "OK(2)"),
        ("pages_to_scan", b"0100", "OK(4)"),
        ("advisor_mode", b"none\n", "OK(5)"),
        ("pages_shared", b"5", errno.EACCES),
    ],
)
def test_accepted_writes_and_a_read_only_file(name: str, data: bytes, expected: int | str) -> None:
    """Writes the live kernel accepts (bytes consumed), and a file without a store."""
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
    assert k.ksm.advisor_mode == "scan-time"
    assert k.ksm.pages_to_scan == 500
    assert err_of(k, "pages_to_scan", b"100") == errno.EINVAL
    knobs.store(k, "advisor_mode", b"none\n")
    assert k.ksm.advisor_mode == "none"
    assert k.ksm.pages_to_scan == 100


def test_advisor_max_cpu_truncated_to_32_bits() -> None:
    """4294967366 is stored as 70 (unsigned int)."""
    k = Kernel()
    assert knobs.store(k, "advisor_max_cpu", b"4294967366") == 10
    assert k.ksm.advisor_max_cpu == 70


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


LIVE_VERSION = ".".join(os.uname().release.split(".")[:2])


@pytest.mark.skipif(not os.path.isdir(REAL), reason="no /sys/kernel/mm/ksm on this machine")
@pytest.mark.skipif(LIVE_VERSION not in SUPPORTED,
                    reason=f"no kernel profile for the running kernel {LIVE_VERSION}")
def test_file_list_and_defaults_like_the_real_kernel() -> None:
    """The profile of the running kernel's version has exactly the live machine's files."""
    k = Kernel(version=LIVE_VERSION)
    assert sorted(k.version.sysfs_files) == sorted(os.listdir(REAL))


def test_knob_store_order_stores_any_values_on_a_kernel_that_shares_nothing() -> None:
    """ksmfs.linux.KNOB_STORE_ORDER names every writable knob but run, and storing each
    knob's non-default value in that order is accepted (advisor_mode scan-time first, so a
    pages_to_scan store then is the kernel's EINVAL: the one knob the advisor owns)."""
    assert set(KNOB_STORE_ORDER) == WRITABLE_SYSFS - {"run"}
    k = Kernel()
    values = {"advisor_mode": b"scan-time", "max_page_sharing": b"3", "merge_across_nodes": b"0",
              "pages_to_scan": b"7", "sleep_millisecs": b"5", "use_zero_pages": b"1",
              "smart_scan": b"0", "stable_node_chains_prune_millisecs": b"9",
              "advisor_max_cpu": b"50", "advisor_min_pages_to_scan": b"10",
              "advisor_max_pages_to_scan": b"20000", "advisor_target_scan_time": b"100"}
    for name in KNOB_STORE_ORDER:
        want = errno.EINVAL if name == "pages_to_scan" else f"OK({len(values[name])})"
        assert err_of(k, name, values[name]) == want, name

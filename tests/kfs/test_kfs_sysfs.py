"""/sys/kernel/mm/ksm rows: the show formats of spec §1.2 and stores through knobs.store."""

from __future__ import annotations

import errno

import pytest
from kfs_helpers import make_kernel, read, write
from ksm_cases import DEFAULTS, INVALID_WRITES

from ksmfs.kfs import Tree
from ksmfs.kfs.errors import KsmError
from ksmfs.kfs.sysfs import WRITABLE

KSM = "sys/kernel/mm/ksm/"

KSM_PATH = ("sys", "kernel", "mm", "ksm")


def test_writable_set_matches_the_kernel():
    from ksmfs.kernel.versions import WRITABLE_SYSFS

    assert WRITABLE == WRITABLE_SYSFS


def test_store_then_show(tree):
    assert write(tree, KSM + "pages_to_scan", b"1000\n") == 5
    assert read(tree, KSM + "pages_to_scan") == "1000\n"
    assert write(tree, KSM + "sleep_millisecs", b"+0050") == 5
    assert read(tree, KSM + "sleep_millisecs") == "50\n"


def test_advisor_mode_round_trip(tree):
    """spec §1.4: scan-time sets pages_to_scan to advisor_min_pages_to_scan; none to 100."""
    write(tree, KSM + "advisor_mode", b"scan-time\n")
    assert read(tree, KSM + "advisor_mode") == "none [scan-time]\n"
    assert read(tree, KSM + "pages_to_scan") == "500\n"
    with pytest.raises(KsmError) as err:
        write(tree, KSM + "pages_to_scan", b"100")
    assert err.value.errno == errno.EINVAL
    write(tree, KSM + "advisor_mode", b"none\n")
    assert read(tree, KSM + "advisor_mode") == "[none] scan-time\n"
    assert read(tree, KSM + "pages_to_scan") == "100\n"


@pytest.mark.parametrize(("name", "data", "err"), INVALID_WRITES)
def test_refused_writes_raise_the_live_errno(tree, name, data, err):
    """The live kernel's table (tests/ksm_cases.py) through the row the mount uses."""
    if err == 0:
        assert write(tree, KSM + name, data) == 0
        return
    with pytest.raises(KsmError) as e:
        write(tree, KSM + name, data)
    assert e.value.errno == err


def test_a_fresh_kernel_shows_the_live_defaults(tree):
    """Every attribute of a fresh 6.18 prints the live kernel's boot default."""
    names = tree.listdir(KSM_PATH)
    assert sorted(names) == sorted(DEFAULTS)
    for name in names:
        assert read(tree, KSM + name) == DEFAULTS[name] + "\n", name


def test_empty_write_is_zero_and_changes_nothing(tree):
    assert write(tree, KSM + "run", b"") == 0
    assert read(tree, KSM + "run") == "0\n"


def test_only_the_first_4096_bytes_reach_the_parser(tree):
    """spec §1.1 [LIVE]: 4095 zeros + "100" parses as "0...01" -> 1, and returns 4096."""
    assert write(tree, KSM + "pages_to_scan", b"0" * 4095 + b"100") == 4096
    assert read(tree, KSM + "pages_to_scan") == "1\n"


def test_read_only_attributes_have_no_store(tree):
    for name in tree.listdir(KSM_PATH):
        node = tree.lookup((*KSM_PATH, name))
        assert (node.spec.store is not None) == (name in WRITABLE)


def test_signed_values_print_a_minus(kernel):
    """general_profit (%ld) goes negative once rmap_items outweigh the shared pages."""
    tree = Tree(kernel)
    write(tree, "ksmfs/control", b"spawn a pages=32 fill=unique mergeable\n")
    write(tree, KSM + "run", b"1\n")
    kernel.ksm_do_scan(100)  # first pass: rmap_items only, nothing merged yet
    profit = int(kernel.ksm.general_profit)
    assert profit < 0
    assert read(tree, KSM + "general_profit") == f"{profit}\n"


def test_5_15_has_no_new_files():
    tree = Tree(make_kernel("5.15"))
    names = tree.listdir(KSM_PATH)
    for gone in ("general_profit", "ksm_zero_pages", "smart_scan", "advisor_mode", "pages_scanned"):
        assert gone not in names
    assert "merge_across_nodes" in names


def test_unsigned_formats_print_the_c_view():
    """%u/%lu of a negative int wrap like C; %ld keeps the sign (ksm_zero_pages from 6.10)."""
    from ksmfs.kfs.sysfs import format_value

    assert format_value("pages_to_scan", -1) == b"4294967295\n"
    assert format_value("pages_shared", -1) == b"18446744073709551615\n"
    assert format_value("ksm_zero_pages", -3) == b"-3\n"
    assert format_value("general_profit", -4096) == b"-4096\n"
    assert format_value("pages_volatile", 7) == b"7\n"
    assert format_value("ksm_zero_pages", -3, zero_pages_signed=False) == (
        b"18446744073709551613\n"
    )

"""Exact /proc formats (spec §2.1-2.5 samples, live-machine layouts) and psutil parsing."""

from __future__ import annotations

import errno
import re

import pytest
from kfs_helpers import make_kernel, materialize, populate, read, write

from ksmfs.kfs import Tree
from ksmfs.kfs.errors import KsmError
from ksmfs.kfs.smaps import header_line, vm_flags_line

# spec §2.4 verbatim sample [LIVE]: 64 anon pages after MADV_MERGEABLE, run=0.
SPEC_SMAPS_64 = """\
7f3cbcfad000-7f3cbcfed000 rw-p 00000000 00:00 0 
Size:                256 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:                 256 kB
Pss:                 256 kB
Pss_Dirty:           256 kB
Shared_Clean:          0 kB
Shared_Dirty:          0 kB
Private_Clean:         0 kB
Private_Dirty:       256 kB
Referenced:          256 kB
Anonymous:           256 kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
THPeligible:           0
ProtectionKey:         0
VmFlags: rd wr mr mw me ac mg 
"""  # noqa: W291 - the trailing spaces are the kernel's

ROLLUP_FIELDS = ["Rss", "Pss", "Pss_Dirty", "Pss_Anon", "Pss_File", "Pss_Shmem", "Shared_Clean", "Shared_Dirty", "Private_Clean", "Private_Dirty", "Referenced", "Anonymous", "KSM", "LazyFree", "AnonHugePages", "ShmemPmdMapped", "FilePmdMapped", "Shared_Hugetlb", "Private_Hugetlb", "Swap", "SwapPss", "Locked"]


def _addr_range(text: str) -> str:
    return text.split(" ", 1)[0]


def test_smaps_of_64_mergeable_pages_is_the_spec_block(kernel, pids):
    """The whole block equals the live sample, addresses aside."""
    tree = Tree(kernel)
    smaps = read(tree, f"proc/{pids['worker']}/smaps")
    vma = kernel.tasks[pids["worker"]].mm.vmas[0]
    assert vma.npages == 64
    expected = SPEC_SMAPS_64.replace(
        "7f3cbcfad000-7f3cbcfed000", f"{vma.start:08x}-{vma.end:08x}"
    )
    assert smaps == expected


def test_smaps_has_no_ksm_line_before_6_6():
    k = make_kernel("6.4")
    pid = populate(k)["worker"]
    smaps = read(Tree(k), f"proc/{pid}/smaps")
    assert "KSM:" not in smaps
    assert "\nAnonymous:           256 kB\nLazyFree:" in smaps


def test_smaps_rollup_fields_and_header(kernel, pids):
    pid = pids["worker"]
    text = read(Tree(kernel), f"proc/{pid}/smaps_rollup")
    head, *lines = text.splitlines()
    vmas = kernel.tasks[pid].mm.vmas
    assert head == (
        f"{vmas[0].start:08x}-{vmas[-1].end:08x} ---p 00000000 00:00 0".ljust(72)
        + " [rollup]"
    )
    assert [line.split(":")[0] for line in lines] == ROLLUP_FIELDS
    assert all(len(line) == 27 and line.endswith(" kB") for line in lines)
    values = {line.split(":")[0]: int(line.split()[1]) for line in lines}
    assert values["Rss"] == values["Anonymous"] == values["Pss_Anon"] == 256


def test_smaps_rollup_sums_all_vmas(kernel, pids):
    pid = pids["worker"]
    write(Tree(kernel), "ksmfs/control", f"mmap {pid} 16 fill=unique\n".encode())
    text = read(Tree(kernel), f"proc/{pid}/smaps_rollup")
    assert "\nRss:                 320 kB\n" in text


def test_smaps_rollup_of_an_mm_without_vmas(kernel):
    """show_smaps_rollup's empty_set: a 0-0 header and all-zero fields; smaps is empty."""
    pid = kernel.spawn("idle")
    tree = Tree(kernel)
    text = read(tree, f"proc/{pid}/smaps_rollup")
    assert text.startswith("00000000-00000000 ---p 00000000 00:00 0".ljust(72) + " [rollup]\n")
    assert all(line.split()[1] == "0" for line in text.splitlines()[1:])
    assert read(tree, f"proc/{pid}/smaps") == "" and read(tree, f"proc/{pid}/maps") == ""


def test_header_padding_of_named_vmas():
    """show_vma_header_prefix + seq_pad: names start in column 74 (spec §2.4 samples)."""
    line = header_line(0x5578DDFA3000, 0x5578DDFA8000, 0x5, 0x2000, (0xFE, 0), 260131,
                       "/usr/bin/cat")  # fmt: skip
    assert line == (
        "5578ddfa3000-5578ddfa8000 r-xp 00002000 fe:00 260131"
        "                     /usr/bin/cat"
    )
    vsys = header_line(0xFFFFFFFFFF600000, 0xFFFFFFFFFF601000, 0x4, 0, None, 0, "[vsyscall]")
    assert vsys == (
        "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]"
    )
    assert header_line(0x1000, 0x2000, 0x3, 0, None, 0, None) == (
        "00001000-00002000 rw-p 00000000 00:00 0 "
    )


@pytest.mark.parametrize(
    ("flags", "text"),
    [
        (0x1 | 0x2 | 0x10 | 0x20 | 0x40 | 0x100000 | 0x80000000, "rd wr mr mw me ac mg "),
        (0x1 | 0x2 | 0x8 | 0x10 | 0x20 | 0x40 | 0x80, "rd wr sh mr mw me ms "),
        (0x1 | 0x2 | 0x10 | 0x20 | 0x40 | 0x100 | 0x100000, "rd wr mr mw me gd ac "),
        (0x1 | 0x4 | 0x10 | 0x20 | 0x40 | 0x40000, "rd ex mr mw me de "),
        (0x4, "ex "),
        (0x200 | 0x400, "um pf "),  # bit order: VM_UFFD_MISSING (bit 9) before VM_PFNMAP
    ],
)
def test_vmflags_mnemonics_in_bit_order(flags, text):
    """The live examples of spec §2.4."""
    assert vm_flags_line(flags) == "VmFlags: " + text


def test_maps_lines_are_smaps_headers(kernel, pids):
    pid = pids["worker"]
    tree = Tree(kernel)
    maps = read(tree, f"proc/{pid}/maps").splitlines()
    smaps_heads = [ln for ln in read(tree, f"proc/{pid}/smaps").splitlines() if "-" in ln[:20]]
    assert maps == smaps_heads


@pytest.mark.parametrize(
    ("version", "lines"),
    [
        ("6.1", ["ksm_rmap_items 0"]),
        ("6.4", ["ksm_rmap_items 0", "ksm_merging_pages 0", "ksm_process_profit 0"]),
        ("6.8", ["ksm_rmap_items 0", "ksm_zero_pages 0", "ksm_merging_pages 0",
                 "ksm_process_profit 0"]),
        ("6.18", ["ksm_rmap_items 0", "ksm_zero_pages 0", "ksm_merging_pages 0",
                  "ksm_process_profit 0", "ksm_merge_any: no", "ksm_mergeable: yes"]),
    ],
)  # fmt: skip
def test_ksm_stat_layout_per_version(version, lines):
    """spec §2.1: the live 6.18 sample after MADV_MERGEABLE, and the older layouts."""
    k = make_kernel(version)
    pid = populate(k)["worker"]
    assert read(Tree(k), f"proc/{pid}/ksm_stat") == "".join(f"{ln}\n" for ln in lines)


def test_ksm_stat_merge_any_yes(kernel, pids):
    stat = read(Tree(kernel), f"proc/{pids['other']}/ksm_stat")
    assert stat.endswith("ksm_merge_any: yes\nksm_mergeable: yes\n")
    assert read(Tree(kernel), f"proc/{pids['worker']}/ksm_merging_pages") == "0\n"


def test_pid_stat_has_52_fields(kernel, pids):
    pid = pids["worker"]
    text = read(Tree(kernel), f"proc/{pid}/stat")
    assert text.startswith(f"{pid} (worker) S 1 ")
    fields = text[text.rindex(")") + 2 :].split()
    assert len(fields) + 2 == 52
    assert int(fields[20]) == 64 * 4096  # (23) vsize in bytes
    assert int(fields[21]) == 64  # (24) rss in pages
    assert int(fields[19]) == kernel.tasks[pid].start_time // 10  # (22) starttime, USER_HZ


def test_status_and_statm(kernel, pids):
    pid = pids["other"]
    status = read(Tree(kernel), f"proc/{pid}/status")
    assert status.startswith("Name:\tother\nUmask:\t0022\nState:\tS (sleeping)\n")
    assert f"\nTgid:\t{pid}\nNgid:\t0\nPid:\t{pid}\nPPid:\t1\n" in status
    assert "\nUid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\n" in status
    assert "\nVmSize:\t      32 kB\n" in status
    assert "\nVmRSS:\t      32 kB\n" in status
    assert re.search(r"\nThreads:\t1\n", status)
    assert status.endswith("voluntary_ctxt_switches:\t0\nnonvoluntary_ctxt_switches:\t0\n")
    assert read(Tree(kernel), f"proc/{pid}/statm") == "8 8 0 0 0 8 0\n"


def test_cmdline_and_comm(kernel, pids):
    pid = pids["worker"]
    tree = Tree(kernel)
    cmdline = kernel.tasks[pid].cmdline
    assert read(tree, f"proc/{pid}/cmdline") == "".join(a + "\0" for a in cmdline)
    assert read(tree, f"proc/{pid}/comm") == "worker\n"
    with pytest.raises(KsmError) as err:
        write(tree, f"proc/{pid}/comm", b"x\n")
    assert err.value.errno == errno.EINVAL


def test_exited_pid_reads_are_esrch(kernel, pids):
    tree = Tree(kernel)
    node = tree.lookup(("proc", str(pids["worker"]), "status"))
    kernel.exit(pids["worker"])
    with pytest.raises(KsmError) as err:
        node.spec.show(kernel, node.pid)
    assert err.value.errno == errno.ESRCH


def test_meminfo_layout(kernel, pids):
    text = read(Tree(kernel), "proc/meminfo")
    lines = text.splitlines()
    assert lines[0].startswith("MemTotal:") and lines[1].startswith("MemFree:")
    for line in lines:
        _label, value = line.split(":", 1)
        if line.endswith(" kB") and len(value.split()[0]) <= 8:
            assert len(line) == 27, line  # 16-column label, %8lu, " kB"
    total = kernel.mem_stats()["mem_total"] * 4
    assert lines[0] == f"MemTotal:       {total:>8} kB"
    assert "\nHugePages_Total:       0\n" in text


def test_proc_stat_uptime_version_vmstat(kernel, pids):
    kernel.advance(12_340)
    tree = Tree(kernel, btime=1_700_000_000)
    stat = read(tree, "proc/stat")
    assert stat.startswith("cpu  ")
    assert "\nbtime 1700000000\n" in stat
    assert "\ncpu0 " in stat and "\nprocs_running " in stat and "\nctxt " in stat
    assert read(tree, "proc/uptime") == "12.34 24.68\n"
    assert read(tree, "proc/version").startswith(f"Linux version {kernel.version.release} (ksmfs)")
    vmstat = dict(line.split() for line in read(tree, "proc/vmstat").splitlines())
    assert vmstat["ksm_swpin_copy"] == "0" and vmstat["cow_ksm"] == "0"
    assert int(vmstat["nr_anon_pages"]) == kernel.mem_stats()["anon_pages"]


def test_psutil_reads_the_tree(kernel, pids, tmp_path):
    """psutil (PROCFS_PATH pointed at a copy of the tree) lists the processes and parses
    memory_info, memory_full_info (smaps_rollup), memory_maps (smaps), status, stat."""
    psutil = pytest.importorskip("psutil")
    materialize(Tree(kernel, btime=1_700_000_000), tmp_path)
    saved = psutil.PROCFS_PATH
    psutil.PROCFS_PATH = str(tmp_path / "proc")
    try:
        assert set(psutil.pids()) == set(kernel.tasks)
        assert psutil.boot_time() == 1_700_000_000
        assert psutil.virtual_memory().total == kernel.mem_stats()["mem_total"] * 4096
        p = psutil.Process(pids["worker"])
        assert p.name() == "worker"
        assert p.ppid() == 1
        assert p.status() == psutil.STATUS_SLEEPING
        assert p.uids().real == 0 and p.num_threads() == 1
        assert p.cmdline() == kernel.tasks[pids["worker"]].cmdline
        mem = p.memory_info()
        assert mem.rss == 64 * 4096 and mem.vms == 64 * 4096
        full = p.memory_full_info()
        assert full.uss == 64 * 4096 and full.pss == 64 * 4096 and full.swap == 0
        maps = p.memory_maps(grouped=False)
        assert len(maps) == 1 and maps[0].rss == 64 * 4096 and maps[0].anonymous == 64 * 4096
        assert p.create_time() == 1_700_000_000 + kernel.tasks[pids["worker"]].start_time / 1000
        other = psutil.Process(pids["other"])
        assert other.uids().real == 1000
        names = {q.info["name"] for q in psutil.process_iter(["name"])}
        assert {"worker", "other"} <= names
    finally:
        psutil.PROCFS_PATH = saved


def test_ptrace_rule_open_read_and_masked_fields(kernel, pids):
    """Tree.check_open/render apply ptrace access mode read per row: root and the owner
    (same uid and gid) pass; another gid, another uid, or a root-owned task refuse."""
    import errno

    from ksmfs.kfs import Caller

    tree = Tree(kernel)
    other = pids["other"]  # uid 1000 gid 1000
    owner, stranger, same_uid = Caller(1000, 1000), Caller(1001, 1000), Caller(1000, 5)
    root_task = pids["worker"]  # uid 0

    def node(pid, name):
        return tree.lookup(("proc", str(pid), *name.split("/")))

    for name in ("smaps", "maps", "smaps_rollup", "environ", f"task/{other}/smaps"):
        tree.check_open(node(other, name), owner)
        tree.check_open(node(other, name), Caller())
        for who in (stranger, same_uid):
            with pytest.raises(KsmError) as err:
                tree.check_open(node(other, name), who)
            assert err.value.errno == errno.EACCES
    with pytest.raises(KsmError):
        tree.check_open(node(root_task, "smaps"), Caller(0 + 1000, 0))
    io = node(other, "io")
    tree.check_open(io, stranger)  # the check is in the read
    assert tree.render(io, owner).startswith(b"rchar: ")
    with pytest.raises(KsmError) as err:
        tree.render(io, same_uid)
    assert err.value.errno == errno.EACCES
    for name in ("ksm_stat", "status", "limits", "statm"):
        tree.check_open(node(other, name), stranger)
        assert tree.render(node(other, name), stranger) == tree.render(node(other, name), owner)
    full, masked = (tree.render(node(other, "stat"), who).split() for who in (owner, stranger))
    assert [i + 1 for i, (a, b) in enumerate(zip(full, masked, strict=True)) if a != b] == [26, 27, 35]
    assert masked[25:27] == [b"1", b"1"] and masked[34] == b"0"

"""/proc: the global files (meminfo, stat, uptime, version, vmstat) and /proc/<pid>/* rows.

Formats follow fs/proc/*.c of Linux 6.18 and the live machine (files read on it are quoted
in the comments).  The per-process files are what psutil's _pslinux.py reads: stat (52
fields, comm in parentheses), status (tab-separated ``Name:\\tvalue``), statm, cmdline,
smaps, smaps_rollup.  The KSM rows exist only when the kernel version has them.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Generator
from functools import partial
from typing import TYPE_CHECKING, Any

from ksmfs.kernel.mm import VM_EXEC
from ksmfs.kfs import smaps as _smaps
from ksmfs.kfs.errors import KsmError
from ksmfs.kfs.spec import Caller, FileSpec, RenderContext, ShowFn, StoreFn
from ksmfs.linux import PAGE_SIZE

if TYPE_CHECKING:
    from ksmfs.kernel import Kernel
    from ksmfs.kernel.mm import MM, Task
    from ksmfs.kernel.versions import KernelProfile

USER_HZ = 100  # clock ticks of /proc/<pid>/stat and /proc/stat (sysconf(_SC_CLK_TCK))
NR_CPUS = 2  # the reference machine has 2 CPUs (spec §0.2)
PROC_SIZE = 0  # procfs files report st_size 0

def _ticks(ms: int) -> int:
    return int(ms) * USER_HZ // 1000


# -- /proc/meminfo ------------------------------------------------------------------------
def _kb_line(label: str, kb: int) -> str:
    # show_val_kb(): a 16-column label (the kernel pads the literal) and %8lu.
    return f"{label:<16}{int(kb):>8} kB\n"


def show_meminfo(k: Kernel, pid: int | None = None) -> bytes:
    """meminfo_proc_show(), fields in the kernel's order; values from k.mem_stats()."""
    m = k.mem_stats()
    kb = PAGE_SIZE // 1024
    total, free = m["mem_total"], m["mem_free"]
    anon, file, shmem = m["anon_pages"], m.get("file_pages", 0), m.get("shmem", 0)
    swap_total, swap_free = m.get("swap_total", 0), m.get("swap_free", 0)
    committed = sum(k.task_mem(pid)["total_vm"] for pid, t in k.tasks.items() if t.mm)
    rows = [
        ("MemTotal:", total),
        ("MemFree:", free),
        ("MemAvailable:", free + file),
        ("Buffers:", 0),
        ("Cached:", file + shmem),
        ("SwapCached:", 0),
        ("Active:", anon + file),
        ("Inactive:", 0),
        ("Active(anon):", anon),
        ("Inactive(anon):", 0),
        ("Active(file):", file),
        ("Inactive(file):", 0),
        ("Unevictable:", 0),
        ("Mlocked:", 0),
        ("SwapTotal:", swap_total),
        ("SwapFree:", swap_free),
        ("Zswap:", 0),
        ("Zswapped:", 0),
        ("Dirty:", 0),
        ("Writeback:", 0),
        ("AnonPages:", anon),
        ("Mapped:", file + shmem),
        ("Shmem:", shmem),
        ("KReclaimable:", 0),
        ("Slab:", 0),
        ("SReclaimable:", 0),
        ("SUnreclaim:", 0),
        ("KernelStack:", 0),
        ("PageTables:", 0),
        ("SecPageTables:", 0),
        ("NFS_Unstable:", 0),
        ("Bounce:", 0),
        ("WritebackTmp:", 0),
        ("CommitLimit:", total // 2 + swap_total),
        ("Committed_AS:", committed),
    ]
    out = [_kb_line(label, pages * kb) for label, pages in rows]
    out += [
        _kb_line("VmallocTotal:", 34359738367),
        _kb_line("VmallocUsed:", 0),
        _kb_line("VmallocChunk:", 0),
        _kb_line("Percpu:", 0),
        _kb_line("AnonHugePages:", 0),
        _kb_line("ShmemHugePages:", 0),
        _kb_line("ShmemPmdMapped:", 0),
        _kb_line("FileHugePages:", 0),
        _kb_line("FilePmdMapped:", 0),
        # hugetlb_report_meminfo(): "HugePages_Total:   %5lu" (no unit)
        "HugePages_Total:       0\n",
        "HugePages_Free:        0\n",
        "HugePages_Rsvd:        0\n",
        "HugePages_Surp:        0\n",
        _kb_line("Hugepagesize:", 2048),
        _kb_line("Hugetlb:", 0),
        _kb_line("DirectMap4k:", 0),
        _kb_line("DirectMap2M:", 0),
        _kb_line("DirectMap1G:", total * kb),
    ]
    return "".join(out).encode()


# -- /proc/stat, uptime, version, vmstat -------------------------------------------------
def show_stat(k: Kernel, pid: int | None, *, ctx: RenderContext) -> bytes:
    """show_stat(): cpu lines in USER_HZ ticks (all simulated time is idle), then counters.
    btime anchors simulated time to the epoch (the mount's boot time, ``ctx``)."""
    ticks = _ticks(k.now)
    cpu = f"{0} {0} {0} {{idle}} {0} {0} {0} {0} {0} {0}"
    out = ["cpu  " + cpu.format(idle=ticks * NR_CPUS) + "\n"]
    out += [f"cpu{i} " + cpu.format(idle=ticks) + "\n" for i in range(NR_CPUS)]
    out.append("intr 0" + " 0" * 64 + "\n")
    nproc = k.total_forks
    running = sum(1 for t in k.tasks.values() if t.state == "R")
    out += [
        "ctxt 0\n",
        f"btime {ctx.boot_time(k)}\n",
        f"processes {nproc}\n",
        f"procs_running {max(running, 1)}\n",  # the reader itself is running
        "procs_blocked 0\n",
        "softirq 0 0 0 0 0 0 0 0 0 0 0\n",
    ]
    return "".join(out).encode()


def show_uptime(k: Kernel, pid: int | None = None) -> bytes:
    """uptime_proc_show(): "%lu.%02lu %lu.%02lu" -- uptime and summed idle time."""
    up_cs = int(k.now) // 10
    idle_cs = up_cs * NR_CPUS
    return f"{up_cs // 100}.{up_cs % 100:02d} {idle_cs // 100}.{idle_cs % 100:02d}\n".encode()


def show_version(k: Kernel, pid: int | None = None) -> bytes:
    return (
        f"Linux version {k.version.release} (ksmfs) (ksmfs simulated kernel "
        f"{k.version.name}) #1 SMP PREEMPT_DYNAMIC\n"
    ).encode()


# /proc/vmstat names in the live 6.18 order (up to the KSM counters and the swap ones).
VMSTAT_NAMES = ["nr_free_pages", "nr_free_pages_blocks", "nr_zone_inactive_anon", "nr_zone_active_anon", "nr_zone_inactive_file", "nr_zone_active_file", "nr_zone_unevictable", "nr_zone_write_pending", "nr_mlock", "nr_zspages", "nr_free_cma", "numa_hit", "numa_miss", "numa_foreign", "numa_interleave", "numa_local", "numa_other", "nr_inactive_anon", "nr_active_anon", "nr_inactive_file", "nr_active_file", "nr_unevictable", "nr_slab_reclaimable", "nr_slab_unreclaimable", "nr_isolated_anon", "nr_isolated_file", "workingset_nodes", "workingset_refault_anon", "workingset_refault_file", "workingset_activate_anon", "workingset_activate_file", "workingset_restore_anon", "workingset_restore_file", "workingset_nodereclaim", "nr_anon_pages", "nr_mapped", "nr_file_pages", "nr_dirty", "nr_writeback", "nr_shmem", "nr_shmem_hugepages", "nr_shmem_pmdmapped", "nr_file_hugepages", "nr_file_pmdmapped", "nr_anon_transparent_hugepages", "nr_vmscan_write", "nr_vmscan_immediate_reclaim", "nr_dirtied", "nr_written", "nr_throttled_written", "nr_kernel_misc_reclaimable", "nr_foll_pin_acquired", "nr_foll_pin_released", "nr_kernel_stack", "nr_page_table_pages", "nr_sec_page_table_pages", "nr_swapcached", "pgpromote_success", "pgpromote_candidate", "nr_hugetlb", "nr_dirty_threshold", "nr_dirty_background_threshold", "pgpgin", "pgpgout", "pswpin", "pswpout", "pgalloc_dma", "pgalloc_dma32", "pgalloc_normal", "pgalloc_movable", "pgfree", "pgactivate", "pgdeactivate", "pglazyfree", "pgfault", "pgmajfault", "pglazyfreed", "pgrefill", "pgreuse", "pgsteal_kswapd", "pgsteal_direct", "pgscan_kswapd", "pgscan_direct", "pgscan_direct_throttle", "pgscan_anon", "pgscan_file", "pgsteal_anon", "pgsteal_file", "pginodesteal", "slabs_scanned", "kswapd_inodesteal", "kswapd_low_wmark_hit_quickly", "kswapd_high_wmark_hit_quickly", "pageoutrun", "pgrotated", "drop_pagecache", "drop_slab", "oom_kill", "thp_fault_alloc", "thp_fault_fallback", "thp_split_page", "thp_zero_page_alloc", "swap_ra", "swap_ra_hit", "ksm_swpin_copy", "cow_ksm", "zswpin", "zswpout"]


def show_vmstat(k: Kernel, pid: int | None = None) -> bytes:
    m = k.mem_stats()
    values = dict.fromkeys(VMSTAT_NAMES, 0)
    anon, file, shmem = m["anon_pages"], m.get("file_pages", 0), m.get("shmem", 0)
    values.update(
        nr_free_pages=m["mem_free"],
        nr_zone_active_anon=anon,
        nr_active_anon=anon,
        nr_zone_active_file=file,
        nr_active_file=file,
        nr_anon_pages=anon,
        nr_mapped=file + shmem,
        nr_file_pages=file + shmem,
        nr_shmem=shmem,
    )
    values.update(k.vmstat())  # ksm_swpin_copy, cow_ksm (+ whatever else the kernel counts)
    return "".join(f"{name} {int(v)}\n" for name, v in values.items()).encode()


def show_loadavg(k: Kernel, pid: int | None = None) -> bytes:
    """loadavg_proc_show(): "%lu.%02lu %lu.%02lu %lu.%02lu %u/%d %d" -- the 1/5/15-minute
    load, running/all threads, and the last pid handed out.  Simulated tasks sleep and
    ksmd's batches take no wall time, so the load is 0; the reader itself is running."""
    running = max(sum(1 for t in k.tasks.values() if t.state == "R"), 1)
    return f"0.00 0.00 0.00 {running}/{len(k.tasks)} {k.last_pid}\n".encode()


def global_specs(version: KernelProfile, ctx: RenderContext) -> list[FileSpec]:
    return [
        FileSpec("loadavg", 0o444, PROC_SIZE, show_loadavg, None),
        FileSpec("meminfo", 0o444, PROC_SIZE, show_meminfo, None),
        FileSpec("stat", 0o444, PROC_SIZE, partial(show_stat, ctx=ctx), None),
        FileSpec("uptime", 0o444, PROC_SIZE, show_uptime, None),
        FileSpec("version", 0o444, PROC_SIZE, show_version, None),
        FileSpec("vmstat", 0o444, PROC_SIZE, show_vmstat, None),
    ]


# -- /proc/sys/kernel -----------------------------------------------------------------------
BLANKS = b" \t\n"  # proc_skip_spaces() / the trailers proc_get_long() accepts
# An optional '-' and a number as simple_strtoul(base 0) reads it: 0x hex, 0 octal, decimal.
_C_INT = re.compile(rb"(-?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")


def parse_dointvec(data: bytes, what: str) -> tuple[int, int]:
    """proc_dointvec() for one int: (value, bytes consumed).

    Blanks are skipped, then an optional '-' and a number in C's base 0 ([LIVE] writing
    "0x400" to pid_max set it to 1024), which must be followed by a blank or the end;
    the blanks after it are consumed too.  Anything else, and a write of blanks only, is
    EINVAL.
    """
    start = len(data) - len(data.lstrip(BLANKS))
    text = bytes(data[start : start + 21])  # TMPBUFLEN - 1 bytes are parsed
    m = _C_INT.match(text)
    if m is None or (m.end() < len(text) and text[m.end()] not in BLANKS):
        raise KsmError(errno.EINVAL, f"{what}: {bytes(data)!r} is not a number")
    number = m[2]
    if number[:2].lower() == b"0x":
        value = int(number, 16)
    elif number.startswith(b"0"):
        value = int(number, 8)
    else:
        value = int(number)
    value = -value if m[1] else value
    consumed = start + m.end()
    while consumed < len(data) and data[consumed] in BLANKS:
        consumed += 1
    return value, consumed


def show_pid_max(k: Kernel, pid: int | None = None) -> bytes:
    return b"%d\n" % k.pid_max


def store_pid_max(k: Kernel, pid: int | None, data: bytes) -> int:
    """pid_max's proc_dointvec_minmax: out of RESERVED_PIDS + 1..PID_MAX_LIMIT is EINVAL."""
    if not data:
        return 0
    value, consumed = parse_dointvec(data, "pid_max")
    k.set_pid_max(value)
    return consumed


def sysctl_kernel_specs(version: KernelProfile) -> list[FileSpec]:
    """/proc/sys/kernel: only pid_max (0644 root, as on the live machine)."""
    return [FileSpec("pid_max", 0o644, PROC_SIZE, show_pid_max, store_pid_max)]


# -- /proc/<pid>/* -------------------------------------------------------------------------
STATE_NAMES = {
    "R": "R (running)",
    "S": "S (sleeping)",
    "D": "D (disk sleep)",
    "T": "T (stopped)",
    "t": "t (tracing stop)",
    "X": "X (dead)",
    "Z": "Z (zombie)",
    "P": "P (parked)",
    "I": "I (idle)",
}
PF_KTHREAD = 0x00200000
PF_RANDOMIZE = 0x00400000
PF_NOFREEZE = 0x00008000


def _task(k: Kernel, pid: int | None) -> Task:
    task = None if pid is None else k.tasks.get(pid)
    if task is None:
        # The task exited between lookup and read: like /proc, "No such process".
        raise KsmError(errno.ESRCH, f"no such process {pid}")
    return task


def _mem(k: Kernel, pid: int) -> dict[str, int]:
    return k.task_mem(pid)


def _rss(mem: dict[str, int]) -> int:
    return mem["rss_anon"] + mem["rss_file"] + mem["rss_shmem"]


def _code_range(mm: MM) -> tuple[int, int]:
    # mm->start_code/end_code: the first executable file mapping, if there is one.
    for v in mm.vmas:
        if int(v.flags) & VM_EXEC and (v.name or "").startswith("/"):
            return v.start, v.end
    return 0, 0


def _stack_start(mm: MM) -> int:
    for v in mm.vmas:
        if v.name == "[stack]":
            return v.end - 4096
    return 0


def ptrace_may_access(k: Kernel, pid: int, caller: Caller) -> bool:
    """ptrace_may_access(task, PTRACE_MODE_READ_FSCREDS) for a FUSE caller.

    __ptrace_may_access(): a caller whose fsuid and fsgid equal the task's uids and gids
    passes, then cap_ptrace_access_check() wants the task's permitted capabilities to be
    a subset of the caller's -- a root task has them all, other tasks none.  Otherwise
    only CAP_SYS_PTRACE passes, which a caller with uid 0 is taken to have.  The caller
    is never the task itself (simulated tasks do not run), and Yama only restricts
    PTRACE_MODE_ATTACH.
    """
    if caller.uid == 0:
        return True
    task = k.tasks.get(pid)
    if task is None:
        return False
    return caller.uid == int(task.uid) and caller.gid == int(task.gid) and int(task.uid) != 0


def show_pid_stat(k: Kernel, pid: int | None, *, permitted: bool = True) -> bytes:
    """do_task_stat(): 52 space-separated fields; man proc_pid_stat numbers them.

    A reader that fails ptrace_may_access() (``permitted`` False) gets 1 for start_code
    and end_code (when there is an mm), 0 for start_stack, wchan, the seven addresses
    from start_data and exit_code [LIVE: the same sleep(1) read by root and by nobody].
    """
    task = _task(k, pid)
    mm = task.mm
    state = task.state if task.state in STATE_NAMES else "S"
    flags = PF_RANDOMIZE if mm is not None else (PF_KTHREAD | PF_NOFREEZE)
    vsize = rss = 0
    start_code = end_code = start_stack = 0
    if mm is not None:
        mem = _mem(k, task.pid)
        vsize, rss = mem["total_vm"] * PAGE_SIZE, _rss(mem)
        start_code, end_code = _code_range(mm) if permitted else (1, 1)
        start_stack = _stack_start(mm) if permitted else 0
    fields = [
        pid,  # (1) pid
        f"({task.comm})",  # (2) comm
        state,  # (3) state
        task.ppid,  # (4) ppid
        pid,  # (5) pgrp
        pid,  # (6) session
        0,  # (7) tty_nr
        -1,  # (8) tpgid
        flags,  # (9) flags
        0, 0, 0, 0,  # (10-13) minflt cminflt majflt cmajflt
        0, 0, 0, 0,  # (14-17) utime stime cutime cstime
        20, 0,  # (18-19) priority nice
        1, 0,  # (20-21) num_threads itrealvalue
        _ticks(task.start_time),  # (22) starttime, clock ticks since boot
        vsize,  # (23) vsize, bytes
        rss,  # (24) rss, pages
        18446744073709551615,  # (25) rsslim (RLIM_INFINITY)
        start_code, end_code, start_stack,  # (26-28)
        0, 0,  # (29-30) kstkesp kstkeip
        0, 0, 0, 0,  # (31-34) signal blocked sigignore sigcatch
        int(permitted and state != "R"), 0, 0,  # (35-37) wchan: 1 if it sleeps; nswap cnswap
        17,  # (38) exit_signal SIGCHLD
        0, 0, 0,  # (39-41) processor rt_priority policy
        0, 0, 0,  # (42-44) delayacct_blkio_ticks guest_time cguest_time
        0, 0, 0, 0, 0, 0, 0,  # (45-51) start_data .. env_end
        0,  # (52) exit_code
    ]  # fmt: skip
    return (" ".join(str(f) for f in fields) + "\n").encode()


def show_pid_statm(k: Kernel, pid: int | None) -> bytes:
    """proc_pid_statm(): size resident shared text lib data dt, in pages."""
    task = _task(k, pid)
    if task.mm is None:
        return b"0 0 0 0 0 0 0\n"
    mem = _mem(k, task.pid)
    shared = mem["rss_file"] + mem["rss_shmem"]
    data = mem["data_vm"] + mem["stack_vm"]
    return f"{mem['total_vm']} {_rss(mem)} {shared} 0 0 {data} 0\n".encode()


def _pte_kb(mm: MM) -> int:
    # mm_pgtables_bytes(): one 4 KiB PTE page per 2 MiB of address space touched.
    pmds: set[int] = set()
    for v in mm.vmas:
        pmds.update(range(v.start >> 21, ((v.end - 1) >> 21) + 1))
    return 4 * len(pmds)


def show_pid_status(k: Kernel, pid: int | None) -> bytes:
    """proc_pid_status(): task_name, task_state, task_mem, threads, sig, cap, cpuset, ctxt."""
    task = _task(k, pid)
    uid, gid = int(task.uid), int(task.gid)
    state = task.state if task.state in STATE_NAMES else "S"
    kthread = task.mm is None and state != "Z"
    lines = [
        f"Name:\t{task.comm}",
        "Umask:\t0022",
        f"State:\t{STATE_NAMES[state]}",
        f"Tgid:\t{pid}",
        "Ngid:\t0",
        f"Pid:\t{pid}",
        f"PPid:\t{task.ppid}",
        "TracerPid:\t0",
        f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}",
        f"Gid:\t{gid}\t{gid}\t{gid}\t{gid}",
        "FDSize:\t64",
        "Groups:\t ",
        f"NStgid:\t{pid}",
        f"NSpid:\t{pid}",
        f"NSpgid:\t{pid}",
        f"NSsid:\t{pid}",
        f"Kthread:\t{1 if kthread else 0}",
    ]
    if task.mm is not None:
        mem = _mem(k, task.pid)
        kb = PAGE_SIZE // 1024

        def vm(label: str, pages: int) -> str:
            return f"{label}\t{pages * kb:>8} kB"

        rss = _rss(mem)
        lines += [
            vm("VmPeak:", max(mem["hiwater_vm"], mem["total_vm"])),
            vm("VmSize:", mem["total_vm"]),
            vm("VmLck:", mem["locked_vm"]),
            vm("VmPin:", mem["pinned"]),
            vm("VmHWM:", max(mem["hiwater_rss"], rss)),
            vm("VmRSS:", rss),
            vm("RssAnon:", mem["rss_anon"]),
            vm("RssFile:", mem["rss_file"]),
            vm("RssShmem:", mem["rss_shmem"]),
            vm("VmData:", mem["data_vm"]),
            vm("VmStk:", mem["stack_vm"]),
            vm("VmExe:", 0),  # no start_code/end_code in the simulation: exec_vm is "lib"
            vm("VmLib:", mem["exec_vm"]),
            f"VmPTE:\t{_pte_kb(task.mm):>8} kB",
            vm("VmSwap:", mem["swap"]),
            f"HugetlbPages:\t{0:>8} kB",
            "CoreDumping:\t0",
            "THP_enabled:\t1",
            "untag_mask:\t0xffffffffffffffff",
        ]
    sig_ign = "ffffffffffffffff" if kthread else "0000000000000000"
    cap = "000001ffffffffff" if uid == 0 else "0000000000000000"
    lines += [
        "Threads:\t1",
        f"SigQ:\t0/{rlimits(k)[11][0]}",  # RLIMIT_SIGPENDING
        "SigPnd:\t0000000000000000",
        "ShdPnd:\t0000000000000000",
        "SigBlk:\t0000000000000000",
        f"SigIgn:\t{sig_ign}",
        "SigCgt:\t0000000000000000",
        "CapInh:\t0000000000000000",
        f"CapPrm:\t{cap}",
        f"CapEff:\t{cap}",
        "CapBnd:\t000001ffffffffff",
        "CapAmb:\t0000000000000000",
        "NoNewPrivs:\t0",
        "Seccomp:\t0",
        "Seccomp_filters:\t0",
        "Speculation_Store_Bypass:\tvulnerable",
        "SpeculationIndirectBranch:\talways enabled",
        "Cpus_allowed:\t3",
        "Cpus_allowed_list:\t0-1",
        "Mems_allowed:\t" + ",".join(["00000000"] * 31 + ["00000001"]),
        "Mems_allowed_list:\t0",
        "voluntary_ctxt_switches:\t0",
        "nonvoluntary_ctxt_switches:\t0",
    ]
    return ("\n".join(lines) + "\n").encode()


def show_pid_cmdline(k: Kernel, pid: int | None) -> bytes:
    """get_mm_cmdline(): the argv strings, each ending in NUL; empty without an mm."""
    task = _task(k, pid)
    if task.mm is None or not task.cmdline:
        return b""
    return b"".join(arg.encode() + b"\0" for arg in task.cmdline)


def show_pid_comm(k: Kernel, pid: int | None) -> bytes:
    return f"{_task(k, pid).comm}\n".encode()


def store_pid_comm(k: Kernel, pid: int | None, data: bytes) -> int:
    # comm_write(): only a thread of the same group may rename it; any other writer
    # (and a FUSE client is always another process) gets EINVAL.
    _task(k, pid)
    if not data:
        return 0
    raise KsmError(errno.EINVAL, f"comm of pid {pid}: only the task itself can rename it")


def show_pid_maps(k: Kernel, pid: int | None) -> bytes:
    return _smaps.render_maps(k, _task(k, pid).pid)


def show_pid_smaps(k: Kernel, pid: int | None) -> bytes:
    return _smaps.render_smaps(k, _task(k, pid).pid)


def steps_pid_smaps(k: Kernel, pid: int | None) -> Generator[None, None, bytes | None]:
    return (yield from _smaps.render_smaps_steps(k, _task(k, pid).pid))


def steps_pid_smaps_rollup(k: Kernel, pid: int | None) -> Generator[None, None, bytes | None]:
    task = _task(k, pid)
    if task.mm is None:
        raise KsmError(errno.ESRCH, f"pid {pid} has no mm")  # as show_pid_smaps_rollup
    return (yield from _smaps.render_smaps_rollup_steps(k, task.pid))


def show_pid_smaps_rollup(k: Kernel, pid: int | None) -> bytes:
    task = _task(k, pid)
    if task.mm is None:
        # proc_maps_open/smaps_rollup_open: no mm -> ESRCH [LIVE: cat /proc/2/smaps_rollup]
        raise KsmError(errno.ESRCH, f"pid {pid} has no mm")
    return _smaps.render_smaps_rollup(k, task.pid)


def show_pid_ksm_merging_pages(k: Kernel, pid: int | None) -> bytes:
    """proc_pid_ksm_merging_pages(): "%lu\\n", empty when there is no mm."""
    task = _task(k, pid)
    if task.mm is None:
        return b""
    return b"%d\n" % int(task.mm.ksm_merging_pages)


def _yes_no(value: object) -> str:
    if isinstance(value, str):
        return value
    return "yes" if value else "no"


def show_pid_ksm_stat(k: Kernel, pid: int | None) -> bytes:
    """proc_pid_ksm_stat(): the version's lines; the last two use "name: yes/no"."""
    stat = k.ksm_stat(_task(k, pid).pid)
    if stat is None:
        return b""
    out = []
    for name in k.version.ksm_stat_lines:
        value = stat[name]
        if name in ("ksm_merge_any", "ksm_mergeable"):
            out.append(f"{name}: {_yes_no(value)}\n")
        else:
            out.append(f"{name} {int(value)}\n")
    return "".join(out).encode()


# -- limits, io, environ -----------------------------------------------------------------------
RLIM_INFINITY = 2**64 - 1
THREAD_SIZE = 16384  # x86_64 kernel stack
FUTEX_TID_MASK = 0x3FFFFFFF
MIN_THREADS = 20


def max_threads(k: Kernel) -> int:
    """set_max_threads(): as many threads as fit their stacks in 1/8 of RAM."""
    threads = k.mem_total // (THREAD_SIZE * 8)
    return min(max(threads, MIN_THREADS), FUTEX_TID_MASK)


# lnames[] of fs/proc/base.c: label and unit, in RLIMIT_* order.
LIMIT_NAMES = (
    ("Max cpu time", "seconds"),
    ("Max file size", "bytes"),
    ("Max data size", "bytes"),
    ("Max stack size", "bytes"),
    ("Max core file size", "bytes"),
    ("Max resident set", "bytes"),
    ("Max processes", "processes"),
    ("Max open files", "files"),
    ("Max locked memory", "bytes"),
    ("Max address space", "bytes"),
    ("Max file locks", "locks"),
    ("Max pending signals", "signals"),
    ("Max msgqueue size", "bytes"),
    ("Max nice priority", None),
    ("Max realtime priority", None),
    ("Max realtime timeout", "us"),
)


def rlimits(k: Kernel) -> list[tuple[int, int]]:
    """(soft, hard) per RLIMIT_*: INIT_RLIMITS, which every simulated task inherits from
    init (the kernel's defaults, before any service manager raises them); fork_init()
    sets RLIMIT_NPROC and RLIMIT_SIGPENDING to max_threads / 2."""
    inf = RLIM_INFINITY
    half = max_threads(k) // 2
    return [
        (inf, inf),  # RLIMIT_CPU
        (inf, inf),  # RLIMIT_FSIZE
        (inf, inf),  # RLIMIT_DATA
        (8 << 20, inf),  # RLIMIT_STACK: _STK_LIM
        (0, inf),  # RLIMIT_CORE
        (inf, inf),  # RLIMIT_RSS
        (half, half),  # RLIMIT_NPROC
        (1024, 4096),  # RLIMIT_NOFILE: INR_OPEN_CUR, INR_OPEN_MAX
        (8 << 20, 8 << 20),  # RLIMIT_MEMLOCK: MLOCK_LIMIT
        (inf, inf),  # RLIMIT_AS
        (inf, inf),  # RLIMIT_LOCKS
        (half, half),  # RLIMIT_SIGPENDING
        (819200, 819200),  # RLIMIT_MSGQUEUE: MQ_BYTES_MAX
        (0, 0),  # RLIMIT_NICE
        (0, 0),  # RLIMIT_RTPRIO
        (inf, inf),  # RLIMIT_RTTIME
    ]


def show_pid_limits(k: Kernel, pid: int | None) -> bytes:
    """proc_pid_limits(): a header, then "%-25s %-20s %-20s %-10s" per limit ("unlimited"
    for RLIM_INFINITY; no unit column for the two priorities, only the padding)."""
    _task(k, pid)
    out = [f"{'Limit':<25} {'Soft Limit':<20} {'Hard Limit':<20} {'Units':<10}\n"]
    for (label, unit), (soft, hard) in zip(LIMIT_NAMES, rlimits(k), strict=True):
        cur = "unlimited" if soft == RLIM_INFINITY else str(soft)
        top = "unlimited" if hard == RLIM_INFINITY else str(hard)
        line = f"{label:<25} {cur:<20} {top:<20} "
        out.append(line + (f"{unit:<10}\n" if unit else "\n"))
    return "".join(out).encode()


IO_FIELDS = (
    "rchar", "wchar", "syscr", "syscw", "read_bytes", "write_bytes", "cancelled_write_bytes",
)  # fmt: skip


def show_pid_io(k: Kernel, pid: int | None) -> bytes:
    """do_io_accounting(): seven "name: %llu" lines.  Simulated tasks do no I/O (their
    pages are written by the control commands, not by read(2)/write(2))."""
    _task(k, pid)
    return "".join(f"{name}: 0\n" for name in IO_FIELDS).encode()


def show_pid_environ(k: Kernel, pid: int | None) -> bytes:
    """environ_read(): the env strings of the mm; a simulated task is started with an
    empty environment (and a task without an mm reads as empty too)."""
    _task(k, pid)
    return b""


def pid_specs(version: KernelProfile) -> list[FileSpec]:
    """The files of /proc/<pid>/ and /proc/<pid>/task/<tid>/ (the same ones here: a
    simulated task has one thread), in tgid_base_stuff order; all owned by the task."""

    def row(
        name: str, mode: int, show: ShowFn, store: StoreFn | None = None, **kw: Any
    ) -> FileSpec:
        return FileSpec(name, mode, PROC_SIZE, show, store, owner="task", **kw)

    rows = [
        row("environ", 0o400, show_pid_environ, ptrace="open"),
        row("status", 0o444, show_pid_status),
        row("limits", 0o444, show_pid_limits),
        row("comm", 0o644, show_pid_comm, store_pid_comm),
        row("cmdline", 0o444, show_pid_cmdline),
        row("stat", 0o444, show_pid_stat,
            show_unpermitted=partial(show_pid_stat, permitted=False)),
        row("statm", 0o444, show_pid_statm),
        row("maps", 0o444, show_pid_maps, ptrace="open"),
        row("smaps", 0o444, show_pid_smaps, ptrace="open", show_steps=steps_pid_smaps),
        row("smaps_rollup", 0o444, show_pid_smaps_rollup, ptrace="open",
            show_steps=steps_pid_smaps_rollup),
        row("io", 0o400, show_pid_io, ptrace="read"),
    ]  # fmt: skip
    if version.has_ksm_merging_pages_file:
        rows.append(row("ksm_merging_pages", 0o400, show_pid_ksm_merging_pages))
    if version.ksm_stat_lines:
        rows.append(row("ksm_stat", 0o400, show_pid_ksm_stat))
    return rows

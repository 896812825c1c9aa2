"""Readers of what KSM's scan sees in a real process: /proc/PID/smaps (VMAs and their
VmFlags), /proc/PID/ksm_stat, /proc/PID/pagemap, /proc/kpageflags and /proc/PID/mem.

Every reader raises ``OSError`` (``ProcessLookupError``, ``PermissionError`` ...) when the
process has gone or may not be read; the caller reports it and skips the process.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np

from ksmfs.kernel.mm import (
    VM_ACCOUNT,
    VM_DONTEXPAND,
    VM_EXEC,
    VM_GROWSDOWN,
    VM_HUGETLB,
    VM_IO,
    VM_LOCKED,
    VM_MAYEXEC,
    VM_MAYREAD,
    VM_MAYSHARE,
    VM_MAYWRITE,
    VM_MERGEABLE,
    VM_MIXEDMAP,
    VM_PFNMAP,
    VM_READ,
    VM_SHARED,
    VM_WRITE,
)
from ksmfs.linux import PAGE_SIZE

PAGE_SHIFT = 12

# fs/proc/task_mmu.c show_smap_vma_flags(): the mnemonics that matter to KSM.
VMFLAG_BITS: dict[str, int] = {
    "rd": VM_READ, "wr": VM_WRITE, "ex": VM_EXEC, "sh": VM_SHARED, "mr": VM_MAYREAD,
    "mw": VM_MAYWRITE, "me": VM_MAYEXEC, "ms": VM_MAYSHARE, "gd": VM_GROWSDOWN,
    "pf": VM_PFNMAP, "lo": VM_LOCKED, "io": VM_IO, "de": VM_DONTEXPAND, "ac": VM_ACCOUNT,
    "ht": VM_HUGETLB, "mm": VM_MIXEDMAP, "mg": VM_MERGEABLE,
}
# mm/ksm.c ksm_compatible() / vma_ksm_compatible(): any of these (VM_DROPPABLE, "dp",
# too) makes a VMA one that KSM never scans.
INCOMPATIBLE_VMFLAGS = frozenset({"sh", "ms", "pf", "io", "de", "ht", "mm", "dp"})

# Documentation/admin-guide/mm/pagemap.rst
PM_PRESENT = np.uint64(1 << 63)
PM_SWAP = np.uint64(1 << 62)
PM_FILE = np.uint64(1 << 61)  # file page or shared anon
PM_EXCLUSIVE = np.uint64(1 << 56)  # mapped exactly once
PM_PFN_MASK = np.uint64((1 << 55) - 1)

# include/uapi/linux/kernel-page-flags.h
KPF_ANON = np.uint64(1 << 12)
KPF_KSM = np.uint64(1 << 21)
KPF_THP = np.uint64(1 << 22)
KPF_ZERO_PAGE = np.uint64(1 << 24)

PF_KTHREAD = 0x00200000  # include/linux/sched.h, field 9 of /proc/PID/stat


@dataclass
class VmaInfo:
    start: int
    end: int
    vmflags: list[str]
    name: str | None
    pgoff: int
    rss_kb: int = 0
    swap_kb: int = 0
    anon_huge_kb: int = 0

    @property
    def npages(self) -> int:
        return (self.end - self.start) >> PAGE_SHIFT

    @property
    def flags(self) -> int:
        bits = 0
        for f in self.vmflags:
            bits |= VMFLAG_BITS.get(f, 0)
        return bits

    @property
    def ksm_compatible(self) -> bool:
        return not INCOMPATIBLE_VMFLAGS.intersection(self.vmflags)

    @property
    def mergeable(self) -> bool:
        return "mg" in self.vmflags


@dataclass
class ProcInfo:
    pid: int
    comm: str
    uid: int
    start_time: int  # clock ticks after boot (field 22 of /proc/PID/stat)
    ksm_stat: dict[str, int | str] = field(default_factory=dict)
    vmas: list[VmaInfo] = field(default_factory=list)

    @property
    def merge_any(self) -> bool:
        return self.ksm_stat.get("ksm_merge_any") == "yes"


def read_stat(pid: int) -> tuple[str, int, int]:
    """(comm, flags, start_time) from /proc/PID/stat (comm may hold spaces and parens)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read().decode("utf-8", "replace")
    lp, rp = raw.index("("), raw.rindex(")")
    comm = raw[lp + 1 : rp]
    rest = raw[rp + 2 :].split()
    # rest[0] is field 3 (state): field N is rest[N - 3]
    return comm, int(rest[9 - 3]), int(rest[22 - 3])


def is_kernel_thread(pid: int) -> bool:
    return bool(read_stat(pid)[1] & PF_KTHREAD)


def list_pids() -> list[int]:
    return sorted(int(e.name) for e in os.scandir("/proc") if e.name.isdigit())


def read_uid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                return int(line.split()[1])
    return 0


def read_ksm_stat(pid: int) -> dict[str, int | str]:
    out: dict[str, int | str] = {}
    try:
        with open(f"/proc/{pid}/ksm_stat") as f:
            for line in f:
                key, _, value = line.partition(" ")
                value = value.strip()
                out[key.rstrip(":")] = int(value) if re.fullmatch(r"-?\d+", value) else value
    except FileNotFoundError:
        if not os.path.exists(f"/proc/{pid}"):
            raise
    return out


_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) ([0-9a-f]+) (\S+) (\d+)\s*(.*)$")


def read_smaps(pid: int) -> list[VmaInfo]:
    """Every VMA of /proc/PID/smaps with its VmFlags, Rss, Swap and AnonHugePages."""
    vmas: list[VmaInfo] = []
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = _HEADER.match(line)
            if m:
                name = m.group(7) or None
                vmas.append(VmaInfo(int(m.group(1), 16), int(m.group(2), 16), [], name,
                                    int(m.group(4), 16) >> PAGE_SHIFT))
                continue
            if not vmas:
                continue
            key, _, rest = line.partition(":")
            if key == "VmFlags":
                vmas[-1].vmflags = rest.split()
            elif key == "Rss":
                vmas[-1].rss_kb = int(rest.split()[0])
            elif key == "Swap":
                vmas[-1].swap_kb = int(rest.split()[0])
            elif key == "AnonHugePages":
                vmas[-1].anon_huge_kb = int(rest.split()[0])
    return vmas


def read_proc(pid: int) -> ProcInfo | None:
    """The process's identity, KSM state and VMAs; None for a kernel thread (no mm)."""
    comm, flags, start = read_stat(pid)
    if flags & PF_KTHREAD:
        return None
    info = ProcInfo(pid, comm, read_uid(pid), start, read_ksm_stat(pid), read_smaps(pid))
    return info


def read_pagemap(fd: int, start: int, npages: int, chunk: int = 1 << 20) -> np.ndarray:
    """The pagemap entries (u64) of ``npages`` pages from virtual address ``start``."""
    out = np.empty(npages, dtype=np.uint64)
    done = 0
    while done < npages:
        n = min(chunk, npages - done)
        buf = out[done : done + n].view(np.uint8)
        got = os.preadv(fd, [buf.data], ((start >> PAGE_SHIFT) + done) * 8)
        if got != n * 8:
            raise ProcessLookupError(f"short pagemap read ({got} of {n * 8} bytes)")
        done += n
    return out


class KPageFlags:
    """/proc/kpageflags read for the pfns asked for only: the kernel computes each entry
    (stable_page_flags()), so reading whole blocks of it costs ~0.1 us per frame of RAM.
    Sorted pfns closer than GAP frames share one pread."""

    GAP = 64

    def __init__(self) -> None:
        self.fd = os.open("/proc/kpageflags", os.O_RDONLY)

    def close(self) -> None:
        os.close(self.fd)

    def flags(self, pfns: np.ndarray) -> np.ndarray:
        if not pfns.shape[0]:
            return np.zeros(0, dtype=np.uint64)
        u, inv = np.unique(pfns.astype(np.int64), return_inverse=True)
        cut = np.flatnonzero(np.diff(u) > self.GAP) + 1
        lo = u[np.concatenate(([0], cut))]
        hi = u[np.concatenate((cut - 1, [u.shape[0] - 1]))] + 1
        base = np.concatenate(([0], np.cumsum(hi - lo)))
        vals = np.zeros(int(base[-1]), dtype=np.uint64)
        for a, b, o in zip(lo.tolist(), hi.tolist(), base[:-1].tolist(), strict=True):
            os.preadv(self.fd, [vals[o : o + b - a].view(np.uint8).data], a * 8)
        run = np.searchsorted(lo, u, side="right") - 1
        flags: np.ndarray = vals[base[run] + (u - lo[run])][inv]
        return flags

    def forget(self) -> None:
        """Nothing is cached: flags are read fresh every time (they change)."""


def read_mem_runs(fd: int, addrs: np.ndarray, buf: np.ndarray) -> np.ndarray:
    """Read the pages at ``addrs`` (sorted virtual addresses) from /proc/PID/mem into
    ``buf`` (pages x 4096 bytes), one pread per run of adjacent pages. Only present pages
    may be asked for: reading an absent page would fault it in (a zero page, or a swap-in).
    Returns a bool array: False where the page could not be read (it went away)."""
    n = addrs.shape[0]
    ok = np.ones(n, dtype=bool)
    if not n:
        return ok
    breaks = np.flatnonzero(np.diff(addrs) != PAGE_SIZE) + 1
    starts = np.concatenate(([0], breaks)).tolist()
    ends = np.concatenate((breaks, [n])).tolist()
    flat = buf.reshape(-1)
    for s, e in zip(starts, ends, strict=True):
        view = flat[s * PAGE_SIZE : e * PAGE_SIZE]
        try:
            got = os.preadv(fd, [view.data], int(addrs[s]))
        except OSError:
            got = 0
        if got < (e - s) * PAGE_SIZE:
            ok[s + got // PAGE_SIZE : e] = False
    return ok

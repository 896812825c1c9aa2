"""A simulated Kernel holding the processes of a capture: the same VMAs (flags from
VmFlags), page kinds, contents (as equality classes) and KSM state.

``assume="as-is"``: only what is mergeable now (VMAs with ``mg``, merge_any processes).
``assume="merge-any"``: as if every process had called prctl(PR_SET_MEMORY_MERGE, 1) now
(every KSM-compatible VMA of it; a process that already has merge_any keeps its state,
since the kernel ignores a second prctl: its ``[stack]`` from before exec stays without
``mg``, as measured on the live kernel, docs/NOTES.md "Capture and estimate").
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

import numpy as np

from ksmfs.kernel import MADV_MERGEABLE, MADV_UNMERGEABLE, PR_SET_MEMORY_MERGE, Kernel, KsmError
from ksmfs.kernel import knobs as sysfs
from ksmfs.kernel.kernel import INSTALL_ANON, INSTALL_FILE, INSTALL_NONE, INSTALL_SWAP
from ksmfs.linux import DEFAULT_VERSION, KNOB_STORE_ORDER, PAGE_SIZE

from .format import KIND_ANON, KIND_FILE, KIND_SWAP, PF_THP, PF_VOLATILE, Capture, CProcess, CVma
from .procfs import VMFLAG_BITS

# A VMA is rebuilt as one simulated VMA unless its mapped pages are sparse: then each
# cluster of pages (gaps of more than GAP pages split them) becomes its own VMA, so a
# process's huge reservations cost nothing. Empty VMAs larger than EMPTY_MAX are left out.
GAP = 512
EMPTY_MAX = 1 << 16

# Knobs written to the simulated sysfs, in an order the kernel accepts (see ksmfs.linux).
KNOB_ORDER = KNOB_STORE_ORDER
ASSUME = ("as-is", "merge-any")

_KIND_MAP = np.zeros(256, dtype=np.uint8)
_KIND_MAP[KIND_ANON] = INSTALL_ANON
_KIND_MAP[KIND_FILE] = INSTALL_FILE
_KIND_MAP[KIND_SWAP] = INSTALL_SWAP  # KIND_ZERO: the zero page, never scanned: INSTALL_NONE


class BuildError(Exception):
    pass


@dataclass
class SimProcess:
    pid: int  # simulated pid
    captured: CProcess
    registered: bool = False


@dataclass
class Built:
    kernel: Kernel
    processes: list[SimProcess]
    # volatile pages: simulated pid -> addresses to rewrite after every full scan
    volatile: dict[int, np.ndarray] = field(default_factory=dict)
    nvolatile: int = 0


def _sim_flags(vmflags: list[str]) -> int:
    bits = 0
    for f in vmflags:
        if f != "mg":
            bits |= VMFLAG_BITS.get(f, 0)
    return bits


def _clusters(v: CVma, offs: np.ndarray) -> list[tuple[int, int]]:
    """(first page, pages) of the simulated VMAs that stand for captured VMA ``v``."""
    n = v.npages
    if not offs.shape[0]:
        return [(0, n)] if n <= EMPTY_MAX else []
    if n <= 4 * offs.shape[0] + 4 * GAP:
        return [(0, n)]
    cut = np.flatnonzero(np.diff(offs.astype(np.int64)) > GAP) + 1
    starts = np.concatenate(([0], cut))
    ends = np.concatenate((cut, [offs.shape[0]]))
    return [(int(offs[s]), int(offs[e - 1]) - int(offs[s]) + 1)
            for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]


def tokens_for(cap: Capture, k: Kernel) -> np.ndarray:
    """A token per page record: 0 for the zero page, the content id (< 2^63) for contents
    held by two or more anonymous pages, a unique token (bit 63: ksmd knows nobody else
    has it) for the others and for volatile pages."""
    content = cap.content
    anon = (cap.kind == KIND_ANON) & ((cap.pflags & PF_VOLATILE) == 0)
    tok = np.zeros(content.shape[0], dtype=np.uint64)
    c = content[anon]
    if c.shape[0]:
        cnt = np.bincount(c.astype(np.int64))
        multi = cnt[c.astype(np.int64)] > 1
        t = np.where(multi, c, np.uint64(0))
        single = ~multi & (c != 0)
        t[single] = k.unique_tokens(int(np.count_nonzero(single)))
        tok[anon] = t
    other = ~anon
    if other.any():
        # swapped, file and volatile pages: their content never meets another page's
        tok[other] = k.unique_tokens(int(np.count_nonzero(other)))
    return tok


def build(cap: Capture, assume: str = "as-is", knobs: dict[str, int | str] | None = None,
          version: str = DEFAULT_VERSION) -> Built:
    if assume not in ASSUME:
        raise BuildError(f"--assume must be one of {', '.join(ASSUME)}, not {assume!r}")
    k = Kernel(version=version)
    k.mem.reserve(int(cap.npages))
    tok = tokens_for(cap, k)
    kinds = _KIND_MAP[cap.kind]
    share = cap.share.astype(np.int64)
    built = Built(k, [])
    for cp in cap.processes:
        comm = (cp.comm or "?").replace("/", "_").replace("\n", " ")
        pid = k.spawn(comm, uid=cp.uid, cmdline=[comm],
                      pid=cp.pid if 1 < cp.pid < k.pid_max and cp.pid not in k.tasks else None)
        sp = SimProcess(pid, cp)
        built.processes.append(sp)
        for v in cp.vmas:
            offs = cap.offset[v.first : v.first + v.count]
            name = v.name
            file = name if name and name.startswith("/") else None
            prot = "".join(c for c, f in (("r", "rd"), ("w", "wr"), ("x", "ex")) if f in v.vmflags)
            for lo, npages in _clusters(v, offs):
                addr = k.mmap(pid, npages, shared="sh" in v.vmflags, file=file, name=name,
                              prot=prot, hugetlb="ht" in v.vmflags, stack="gd" in v.vmflags,
                              extra_flags=_sim_flags(v.vmflags), addr=v.start + lo * PAGE_SIZE,
                              populate=False)
                mm = k.tasks[pid].mm
                assert mm is not None  # spawn() gives every task an mm
                vma = next(x for x in mm.vmas if x.start == addr)
                vma.pgoff = v.pgoff + lo
                sel = (offs >= lo) & (offs < lo + npages)
                idx = v.first + np.flatnonzero(sel)
                if not idx.shape[0]:
                    continue
                rel = (offs[sel] - np.uint64(lo)).astype(np.int64)
                pk = np.full(npages, INSTALL_NONE, dtype=np.uint8)
                pt = np.zeros(npages, dtype=np.uint64)
                ps = np.zeros(npages, dtype=np.int64)
                pk[rel] = kinds[idx]
                pt[rel] = tok[idx]
                ps[rel] = share[idx]
                # pages of a transparent huge page (KPF_THP): whole 2 MiB-aligned runs of
                # them become compound pages, which ksmd splits when it merges one
                th = np.zeros(npages, dtype=bool)
                th[rel] = (cap.pflags[idx] & PF_THP) != 0
                k.install_pages(pid, addr, pk, pt, ps if ps.any() else None,
                                th if th.any() else None)
                vol = rel[(cap.pflags[idx] & PF_VOLATILE) != 0]
                if vol.shape[0]:
                    built.nvolatile += int(vol.shape[0])
                    va = np.uint64(addr) + vol.astype(np.uint64) * np.uint64(PAGE_SIZE)
                    old = built.volatile.get(pid)
                    built.volatile[pid] = va if old is None else np.concatenate((old, va))
    # KSM state, process by process in capture (start) order: the order of ksmd's list
    for sp in built.processes:
        _set_ksm_state(k, sp, assume)
    if knobs:
        apply_knobs(k, knobs)
    return built


def _set_ksm_state(k: Kernel, sp: SimProcess, assume: str) -> None:
    cp = sp.captured
    mm = k.tasks[sp.pid].mm
    assert mm is not None
    ends = [(v.start, v.end, "mg" in v.vmflags) for v in cp.vmas]

    def captured_mg(addr: int) -> bool:
        for s, e, m in ends:
            if s <= addr < e:
                return m
        return False

    compat = [v for v in mm.vmas if v.ksm_compatible]
    if cp.merge_any or (assume == "merge-any" and compat):
        k.prctl(sp.pid, PR_SET_MEMORY_MERGE, 1)
        if cp.merge_any:
            # as captured: compatible VMAs without mg (the [stack] set up before exec)
            for v in list(mm.vmas):
                if v.mergeable and not captured_mg(v.start):
                    k.madvise(sp.pid, v.start, v.npages, MADV_UNMERGEABLE)
    else:
        for v in list(mm.vmas):
            if captured_mg(v.start) and v.ksm_compatible:
                k.madvise(sp.pid, v.start, v.npages, MADV_MERGEABLE)
    sp.registered = mm.registered


def apply_knobs(k: Kernel, knobs: dict[str, int | str]) -> None:
    """Write the knobs (names of /sys/kernel/mm/ksm files) to the simulated sysfs;
    a value the kernel refuses raises BuildError naming the knob and the errno."""
    writable = set(KNOB_ORDER)
    unknown = [n for n in knobs if n not in writable and n != "run"]
    if unknown:
        raise BuildError(f"unknown or read-only KSM knob {unknown[0]!r}")
    advisor = str(knobs.get("advisor_mode", "none")) == "scan-time"
    for name in KNOB_ORDER:
        if name not in knobs or name not in k.version.sysfs_files:
            continue
        if name == "pages_to_scan" and advisor:
            continue  # the scan-time advisor owns it (a store is EINVAL meanwhile)
        try:
            sysfs.store(k, name, f"{knobs[name]}\n".encode())
        except KsmError as e:
            why = e.message.removeprefix(f"{name}: ")  # the store's message names the file
            raise BuildError(f"{name}={knobs[name]}: refused by the kernel: {why} "
                             f"({errno.errorcode.get(e.errno, e.errno)})") from None


def kernel_for_mount(path: str, assume: str, version: str) -> tuple[Kernel, str]:
    """``ksmfs mount --capture FILE``: the captured processes with the capture's knobs and
    ksmd running (run = 1). Volatile pages hold unique contents (never merged) but are
    not rewritten while mounted."""
    from .format import load

    cap = load(path)
    knobs = {n: v for n, v in cap.knobs.items() if n in KNOB_ORDER}
    built = build(cap, assume, knobs, version)
    sysfs.store(built.kernel, "run", b"1\n")
    return built.kernel, f"capture {path} ({len(cap.processes)} processes, {assume})"

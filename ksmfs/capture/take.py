"""``ksmfs capture``: look at real processes the way ksmd's scan would, and keep only
which pages are equal.

Per process: its VMAs (smaps, with VmFlags), its KSM state (ksm_stat), and per mapped
page its kind (pagemap + kpageflags) and, for anonymous pages, a 64-bit XXH3 hash of the
content read from /proc/PID/mem, seeded with a random value that lives only in this
process. The file gets dense content ids (0 = all-zero page), never a hash: it tells only
which pages are equal.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xxhash

from ksmfs.linux import PAGE_SIZE

from . import procfs
from .format import (
    KIND_ANON,
    KIND_FILE,
    KIND_SWAP,
    KIND_ZERO,
    PF_KSM,
    PF_THP,
    PF_VOLATILE,
    Capture,
    CProcess,
    CVma,
)

PAGEMAP_CHUNK = 1 << 18  # pages of pagemap read at once (2 MiB of entries)
MEM_CHUNK = 4096  # pages of /proc/PID/mem read at once (16 MiB)

Progress = Callable[[int, int, int, int], None]  # bytes done, bytes total, procs done, total


@dataclass
class VmaLook:
    offset: np.ndarray  # page index in the VMA (u64)
    kind: np.ndarray  # u8
    pflags: np.ndarray  # u8
    digest: np.ndarray  # u64 keyed hash of anon pages (0 = zero page), 0 otherwise
    pfn: np.ndarray  # u64 pfn of anon pages mapped more than once (pagemap), 0 otherwise


@dataclass
class ProcLook:
    info: procfs.ProcInfo
    vmas: list[VmaLook] = field(default_factory=list)


class Hasher:
    """A 64-bit XXH3 hash of each 4 KiB page, seeded with a random 64-bit value that lives
    only in this process; the all-zero page hashes to 0. Hashes never reach the file (it
    gets dense content ids), so what matters is speed and collisions (p ~ n^2 / 2^65).
    Measured here per page: XXH3 0.16-0.32 s/GiB, BLAKE3 keyed 0.5-1.1 s/GiB, hashlib's
    blake2b 3.1 s/GiB."""

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed if seed is not None else int.from_bytes(os.urandom(8), "little")
        self.zero = xxhash.xxh3_64_intdigest(bytes(PAGE_SIZE), self.seed)

    def pages(self, buf: np.ndarray, n: int) -> np.ndarray:
        mv = buf.reshape(-1).data
        f = xxhash.xxh3_64_intdigest
        seed = self.seed
        d = np.fromiter((f(mv[i : i + PAGE_SIZE], seed) for i in range(0, n * PAGE_SIZE, PAGE_SIZE)),
                        dtype=np.uint64, count=n)
        z = d == np.uint64(self.zero)
        d[d == 0] = 1  # a non-zero page whose hash is 0: keep 0 for the zero page
        d[z] = 0
        return d


def read_knobs() -> dict[str, int | str]:
    """The writable KSM knobs of this machine (names of /sys/kernel/mm/ksm files)."""
    from .build import KNOB_ORDER

    out: dict[str, int | str] = {}
    root = Path("/sys/kernel/mm/ksm")
    for name in KNOB_ORDER:
        try:
            text = (root / name).read_text().strip()
        except OSError:
            continue
        if re.fullmatch(r"-?\d+", text):
            out[name] = int(text)
        else:
            m = re.search(r"\[([^\]]+)\]", text)
            out[name] = m.group(1) if m else text
    return out


def thp_enabled() -> str:
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "unknown"
    m = re.search(r"\[([^\]]+)\]", text)
    return m.group(1) if m else text.strip()


class Looker:
    """Takes one look at a process: page kinds and content hashes of every mapped page."""

    def __init__(self, hasher: Hasher) -> None:
        self.hasher = hasher
        try:
            self.kpf: procfs.KPageFlags | None = procfs.KPageFlags()
        except OSError:
            self.kpf = None  # not root: kinds from pagemap alone (zero page not told apart)
        self.bufs = [np.empty((MEM_CHUNK, PAGE_SIZE), dtype=np.uint8) for _ in range(2)]
        self.reader = ThreadPoolExecutor(max_workers=1)
        self.bytes_done = 0
        self.on_bytes: Callable[[], None] | None = None

    def close(self) -> None:
        self.reader.shutdown()
        if self.kpf is not None:
            self.kpf.close()

    def look(self, pid: int) -> ProcLook | None:
        info = procfs.read_proc(pid)
        if info is None:
            return None
        if self.kpf is not None:
            self.kpf.forget()
        pm_fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
        try:
            mem_fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
        except OSError:
            os.close(pm_fd)
            raise
        try:
            out = ProcLook(info)
            for v in info.vmas:
                out.vmas.append(self._vma(pm_fd, mem_fd, v))
            if not os.path.exists(f"/proc/{pid}/stat"):
                raise ProcessLookupError(f"process {pid} exited during the capture")
            return out
        finally:
            os.close(pm_fd)
            os.close(mem_fd)

    def _vma(self, pm_fd: int, mem_fd: int, v: procfs.VmaInfo) -> VmaLook:
        parts: list[VmaLook] = []
        if v.rss_kb or v.swap_kb:
            for lo in range(0, v.npages, PAGEMAP_CHUNK):
                n = min(PAGEMAP_CHUNK, v.npages - lo)
                try:
                    pm = procfs.read_pagemap(pm_fd, v.start + lo * PAGE_SIZE, n)
                except OSError:
                    break  # e.g. [vsyscall]: outside the process's page tables
                parts.append(self._chunk(mem_fd, v, lo, pm))
        if not parts:
            z8 = np.zeros(0, dtype=np.uint8)
            z64 = np.zeros(0, dtype=np.uint64)
            return VmaLook(z64, z8, z8, z64, z64)
        return VmaLook(*(np.concatenate([getattr(p, f) for p in parts])
                         for f in ("offset", "kind", "pflags", "digest", "pfn")))

    def _chunk(self, mem_fd: int, v: procfs.VmaInfo, lo: int, pm: np.ndarray) -> VmaLook:
        present = (pm & procfs.PM_PRESENT) != 0
        swapped = ~present & ((pm & procfs.PM_SWAP) != 0)
        idx = np.flatnonzero(present | swapped)
        e = pm[idx]
        pres = present[idx]
        kind = np.full(idx.shape[0], KIND_SWAP, dtype=np.uint8)
        pflags = np.zeros(idx.shape[0], dtype=np.uint8)
        pfn = e & procfs.PM_PFN_MASK
        if self.kpf is not None and np.any(pfn[pres] != 0):
            fl = self.kpf.flags(pfn[pres])
            k = np.where((fl & procfs.KPF_ZERO_PAGE) != 0, KIND_ZERO,
                         np.where((fl & procfs.KPF_ANON) != 0, KIND_ANON, KIND_FILE))
            kind[pres] = k
            pflags[pres] = (np.where((fl & procfs.KPF_THP) != 0, PF_THP, 0)
                            | np.where((fl & procfs.KPF_KSM) != 0, PF_KSM, 0))
        else:
            kind[pres] = np.where((e[pres] & procfs.PM_FILE) != 0, KIND_FILE, KIND_ANON)
        anon = np.flatnonzero(kind == KIND_ANON)
        digest = np.zeros(idx.shape[0], dtype=np.uint64)
        keep = np.ones(idx.shape[0], dtype=bool)
        addrs = (idx[anon] + lo).astype(np.uint64) * np.uint64(PAGE_SIZE) + np.uint64(v.start)
        # the next slice is read (pread releases the GIL) while this one is hashed
        starts = list(range(0, anon.shape[0], MEM_CHUNK))
        pending = None
        for i, s in enumerate(starts):
            buf = self.bufs[i % 2]
            a = addrs[s : s + MEM_CHUNK]
            ok = (pending.result() if pending is not None
                  else procfs.read_mem_runs(mem_fd, a, buf))
            pending = None
            if i + 1 < len(starts):
                nxt = addrs[starts[i + 1] : starts[i + 1] + MEM_CHUNK]
                pending = self.reader.submit(procfs.read_mem_runs, mem_fd, nxt,
                                             self.bufs[(i + 1) % 2])
            d = self.hasher.pages(buf, a.shape[0])
            digest[anon[s : s + MEM_CHUNK]] = d
            keep[anon[s : s + MEM_CHUNK][~ok]] = False  # gone meanwhile
            self.bytes_done += a.shape[0] * PAGE_SIZE
            if self.on_bytes is not None:
                self.on_bytes()
        # fork-shared candidates: anonymous, not KSM, not mapped exclusively
        shared = (kind == KIND_ANON) & ((pflags & PF_KSM) == 0) & ((e & procfs.PM_EXCLUSIVE) == 0)
        pfn = np.where(shared, pfn, np.uint64(0))
        return VmaLook((idx + lo).astype(np.uint64)[keep], kind[keep], pflags[keep],
                       digest[keep], pfn[keep])


def _select(pids: list[int] | None, warn: Callable[[str], None]) -> list[int]:
    me = os.getpid()
    if pids is None:
        out = []
        for pid in procfs.list_pids():
            if pid == me:
                continue
            try:
                if procfs.is_kernel_thread(pid):
                    continue
            except OSError:
                continue
            out.append(pid)
        return out
    return list(dict.fromkeys(pids))


def _mark_volatile(first: ProcLook, second: ProcLook) -> int:
    """Pages anonymous in both looks whose content hash differs: PF_VOLATILE."""
    later = {v.start: lv for v, lv in zip(second.info.vmas, second.vmas, strict=True)}
    changed = 0
    for v, lv in zip(first.info.vmas, first.vmas, strict=True):
        other = later.get(v.start)
        if other is None or not lv.offset.shape[0]:
            continue
        _common, i1, i2 = np.intersect1d(lv.offset, other.offset, assume_unique=True,
                                        return_indices=True)
        both = (lv.kind[i1] == KIND_ANON) & (other.kind[i2] == KIND_ANON)
        diff = both & (lv.digest[i1] != other.digest[i2])
        lv.pflags[i1[diff]] |= PF_VOLATILE
        changed += int(np.count_nonzero(diff))
    return changed


def capture(
    pids: list[int] | None,
    watch: float | None = None,
    warn: Callable[[str], None] = lambda m: None,
    progress: Progress | None = None,
) -> Capture:
    """Look at ``pids`` (None: every process but kernel threads and this one); with
    ``watch`` look again after that many seconds and mark changed pages volatile."""
    hasher = Hasher()
    looker = Looker(hasher)
    skipped: list[str] = []
    try:
        targets = _select(pids, warn)
        total = 0
        for pid in targets:  # the progress bar's total: resident memory from smaps_rollup
            try:
                with open(f"/proc/{pid}/smaps_rollup") as f:
                    for line in f:
                        if line.startswith("Anonymous:"):
                            total += int(line.split()[1]) * 1024
            except OSError:
                pass
        if watch:
            total *= 2
        nlooks = len(targets) * (2 if watch else 1)
        state = {"procs": 0}

        def tick() -> None:
            if progress is not None:
                progress(looker.bytes_done, total, state["procs"], nlooks)

        looker.on_bytes = tick
        looks: list[ProcLook] = []

        def one(pid: int) -> ProcLook | None:
            try:
                got = looker.look(pid)
                if got is None and pids is not None:
                    why = "a kernel thread"
                    skipped.append(f"{pid}: {why}")
                    warn(f"skipped process {pid}: {why}")
                return got
            except OSError as e:
                # gone: a pid that never ran is as absent as one that exited
                why = "not running" if isinstance(e, (ProcessLookupError, FileNotFoundError)) else (
                    e.strerror or str(e)).lower()
                skipped.append(f"{pid}: {why}")
                warn(f"skipped process {pid}: {why}")
                return None
            finally:
                state["procs"] += 1
                tick()

        for pid in targets:
            got = one(pid)
            if got is not None:
                looks.append(got)
        if watch:
            time.sleep(watch)
            for lk in looks:
                try:
                    second = looker.look(lk.info.pid)
                except OSError:
                    second = None
                state["procs"] += 1
                tick()
                if second is not None:
                    _mark_volatile(lk, second)
    finally:
        looker.close()
    return _assemble(looks, watch, skipped)


def _assemble(looks: list[ProcLook], watch: float | None, skipped: list[str]) -> Capture:
    # ksmd's mm list is in registration order; the best guess is the start order
    looks.sort(key=lambda lk: (lk.info.start_time, lk.info.pid))
    procs: list[CProcess] = []
    arrays: dict[str, list[np.ndarray]] = {f: [] for f in ("offset", "kind", "pflags", "digest", "pfn")}
    first = 0
    for lk in looks:
        cp = CProcess(lk.info.pid, lk.info.comm, lk.info.uid, lk.info.start_time,
                      dict(lk.info.ksm_stat))
        for v, lv in zip(lk.info.vmas, lk.vmas, strict=True):
            n = int(lv.offset.shape[0])
            cp.vmas.append(CVma(v.start, v.end, list(v.vmflags), v.name, v.pgoff, first, n))
            first += n
            for f in arrays:
                arrays[f].append(getattr(lv, f))
        procs.append(cp)

    def cat(f: str, dtype: type) -> np.ndarray:
        return np.concatenate(arrays[f]).astype(dtype) if arrays[f] else np.zeros(0, dtype=dtype)

    kind = cat("kind", np.uint8)
    digest = cat("digest", np.uint64)
    pfn = cat("pfn", np.uint64)
    anon = kind == KIND_ANON
    content = np.zeros(kind.shape[0], dtype=np.uint64)
    nz = anon & (digest != 0)
    if nz.any():
        _, inv = np.unique(digest[nz], return_inverse=True)
        content[nz] = inv.astype(np.uint64) + np.uint64(1)
    share = np.zeros(kind.shape[0], dtype=np.uint32)
    cand = np.flatnonzero(pfn != 0)
    if cand.shape[0]:
        _u, inv, cnt = np.unique(pfn[cand], return_inverse=True, return_counts=True)
        multi = cnt[inv] > 1
        gid = np.cumsum(cnt > 1)  # group number of each pfn mapped more than once
        share[cand[multi]] = gid[inv[multi]].astype(np.uint32)
    return Capture(os.uname().release, read_knobs(), thp_enabled(), watch, procs,
                   cat("offset", np.uint64), kind, cat("pflags", np.uint8), content, share,
                   skipped)

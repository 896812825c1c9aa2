"""The simulated kernel: tasks, system calls, the clock and ksmd behind one facade.

Everything is synchronous and deterministic; time moves only through ``advance`` and the
simulated CPU cost of ksmd batches, so tests drive it like SimPy's Environment.
"""

from __future__ import annotations

import errno
import itertools
import zlib

import numpy as np

from ksmfs.linux import (
    MADV_MERGEABLE,
    MADV_UNMERGEABLE,
    PID_MAX_LIMIT,
    PR_GET_MEMORY_MERGE,
    PR_SET_MEMORY_MERGE,
)

from .clock import SimClock
from .errors import KsmError
from .ksm import Ksm, ScanBatch
from .mm import (
    FRAME_ANON,
    FRAME_FILE,
    FRAME_SHMEM,
    HPAGE_PMD_NR,
    MM,
    PAGE_SHIFT,
    PAGE_SIZE,
    PTE_KSM_ZERO,
    PTE_NONE,
    PTE_SWAP0,
    UNIQUE_BIT,
    VM_ACCOUNT,
    VM_DONTEXPAND,
    VM_EXEC,
    VM_GROWSDOWN,
    VM_HUGETLB,
    VM_MAYEXEC,
    VM_MAYREAD,
    VM_MAYSHARE,
    VM_MAYWRITE,
    VM_MERGEABLE,
    VM_READ,
    VM_SHARED,
    VM_WRITE,
    GrowArray,
    PhysMem,
    Segment,
    Task,
    Vma,
)
from .smaps import SmapsCounts, vma_smaps
from .trace import TraceBuffer
from .versions import DEFAULT_VERSION, get_profile

# include/linux/threads.h: the default /proc/sys/kernel/pid_max for up to 32 CPUs (its
# 64-bit upper bound, PID_MAX_LIMIT, is in ksmfs.linux), and the pids below which
# allocation never wraps (kernel/pid.c).
PID_MAX_DEFAULT = 0x8000
RESERVED_PIDS = 300
FIRST_PID = 100  # simulated tasks start here: lower pids belong to the boot

DEFAULT_MEM_TOTAL = 16 << 30

# pages a write handles at a time (its temporaries: some tens of bytes per page)
WRITE_CHUNK = 1 << 18

# install_pages() page kinds
INSTALL_NONE = 0
INSTALL_ANON = 1
INSTALL_FILE = 2
INSTALL_SWAP = 3


def _file_id(path: str) -> int:
    """A number for a mapped file's name, the same in every run (its inode number and page
    contents derive from it; Python's hash() of a str is salted per process)."""
    return zlib.crc32(path.encode())


class Kernel:
    """A Linux kernel reduced to what KSM sees: tasks, mms, VMAs, page tables, ksmd."""

    def __init__(
        self,
        version: str = DEFAULT_VERSION,
        nr_nodes: int = 1,
        mem_total: int = DEFAULT_MEM_TOTAL,
        swap_total: int = 4 << 30,
        exact: bool = False,
    ) -> None:
        """``exact``: ksmd handles every page on its own (cmp_and_merge_page() in visit
        order, no vector shortcuts): slow, the reference for the fast path."""
        self.version = get_profile(version)
        if nr_nodes < 1 or nr_nodes > 64:
            raise KsmError(errno.EINVAL, f"nr_nodes must be 1..64, not {nr_nodes}")
        self.clock = SimClock()
        self.mem = PhysMem(nr_nodes)
        self.trace = TraceBuffer()
        self.tasks: dict[int, Task] = {}
        self.mms: dict[int, MM] = {}
        self.mem_total = mem_total
        self.swap_total = swap_total
        self._range_base = GrowArray(np.int64)
        self._range_mm = GrowArray(np.int32)
        self.pid_max = PID_MAX_DEFAULT
        self._pid_cursor = FIRST_PID  # idr cursor: the next pid alloc_pid() tries
        self.last_pid = FIRST_PID - 1  # the last pid handed out (/proc/loadavg)
        self.total_forks = FIRST_PID - 1  # forks since boot (/proc/stat "processes")
        self._mm_ids = itertools.count(1)
        self._next_unique = 1
        self._install_frames: dict[int, int] = {}  # install_pages() share name -> frame
        self.ksm = Ksm(
            self.mem,
            self.trace,
            lambda: self.clock.ns,
            self.clock.advance_ns,
            self.mm_ids_of,
            self.mms,
            self.version,
            exact=exact,
        )

    # ------------------------------------------------------------------ clock and ksmd
    @property
    def now(self) -> int:
        return self.clock.now

    def advance(self, ms: float) -> None:
        self.clock.advance_ms(ms)

    def ksmd_step(self) -> int | None:
        """One iteration of ksm_scan_thread(): a batch when ksmd_should_run(), then the
        number of ms it sleeps; None when it would wait to be woken."""
        if not self.ksm.would_scan():
            return None
        self.ksm.ksm_do_scan(self.ksm.pages_to_scan)
        return self.ksm.sleep_millisecs

    def ksm_do_scan(self, n: int) -> int:
        return self.ksm.ksm_do_scan(n)

    def ksmd_begin(self) -> ScanBatch | None:
        """ksmd_step() in slices: the batch ksmd would run now (None: it would wait to
        be woken). Run it with ``k.ksm.scan_slice(batch, max_pages)`` until that returns
        True; ksmd then sleeps ``k.ksm.sleep_millisecs``."""
        if not self.ksm.would_scan():
            return None
        return self.ksm.begin_batch(self.ksm.pages_to_scan)

    def unique_tokens(self, n: int) -> np.ndarray:
        """Contents no other page has (bit 63 set): ksmd knows they cannot match."""
        start = self._next_unique
        self._next_unique += n
        return (np.arange(start, start + n, dtype=np.uint64)) | UNIQUE_BIT

    # ------------------------------------------------------------------ lookup helpers
    def mm_ids_of(self, g: np.ndarray) -> np.ndarray:
        n = self._range_base.n
        r = np.searchsorted(self._range_base.a[:n], g, side="right") - 1
        return self._range_mm.a[r]

    def task(self, pid: int) -> Task:
        t = self.tasks.get(pid)
        if t is None:
            raise KsmError(errno.ESRCH, f"no such process: {pid}")
        return t

    def _mm(self, pid: int) -> MM:
        t = self.task(pid)
        if t.mm is None:
            raise KsmError(errno.EINVAL, f"process {pid} has no address space")
        return t.mm

    def _new_mm(self, pid: int) -> MM:
        mm = MM(next(self._mm_ids), pid, profit_counts_zero=self.version.profit_counts_zero_pages)
        self.mms[mm.id] = mm
        return mm

    def _reserve(self, mm: MM, npages: int) -> int:
        base = self.mem.reserve_gpids(npages)
        i = self._range_base.extend(1)
        self._range_mm.extend(1)
        self._range_base.a[i] = base
        self._range_mm.a[i] = mm.id
        return base

    # ------------------------------------------------------------------ tasks
    def _alloc_pid(self) -> int:
        """alloc_pid(): idr_alloc_cyclic() from the cursor below pid_max, wrapping to
        RESERVED_PIDS; EAGAIN when every pid is taken."""
        low = RESERVED_PIDS if self._pid_cursor > RESERVED_PIDS else 1
        start = min(max(self._pid_cursor, low), self.pid_max)
        for pid in itertools.chain(range(start, self.pid_max), range(low, start)):
            if pid not in self.tasks and pid != 1:
                self._pid_cursor = pid + 1
                self.last_pid = pid
                self.total_forks += 1
                return pid
        raise KsmError(errno.EAGAIN, f"no free pid below pid_max {self.pid_max}")

    def set_pid_max(self, value: int) -> None:
        """/proc/sys/kernel/pid_max: proc_dointvec_minmax between RESERVED_PIDS + 1 and
        PID_MAX_LIMIT; existing tasks keep their pids."""
        if not RESERVED_PIDS + 1 <= value <= PID_MAX_LIMIT:
            raise KsmError(
                errno.EINVAL, f"pid_max {value} is outside {RESERVED_PIDS + 1}..{PID_MAX_LIMIT}"
            )
        self.pid_max = value

    def spawn(
        self,
        comm: str,
        uid: int = 0,
        gid: int | None = None,
        cmdline: list[str] | None = None,
        ppid: int = 1,
        pid: int | None = None,
    ) -> int:
        """A new process with an empty address space (as after exec of a tiny static
        binary: no heap or stack pages that ksmd could see). ``pid`` asks for that pid
        (a process rebuilt from a capture keeps its pid): EEXIST when it is taken."""
        if not comm or "\n" in comm or "/" in comm:
            raise KsmError(errno.EINVAL, f"bad process name {comm!r}")
        if pid is None:
            pid = self._alloc_pid()
        elif not 1 < pid < self.pid_max or pid in self.tasks:
            raise KsmError(errno.EEXIST, f"pid {pid} is taken or not below pid_max")
        t = Task(pid, comm[:15], uid, uid if gid is None else gid, ppid, cmdline or [comm], self.now)
        t.mm = self._new_mm(pid)
        self.tasks[pid] = t
        return pid

    def fork(self, pid: int) -> int:
        """copy_process(): the child shares every anonymous page copy-on-write, inherits
        VM_MERGEABLE and MMF_VM_MERGE_ANY, and is registered with ksmd if the parent is.
        6.18: its ksm_merging_pages/ksm_rmap_items start at 0, its ksm_zero_pages are
        inherited and added to the global count."""
        parent = self.task(pid)
        pmm = self._mm(pid)
        child = Task(self._alloc_pid(), parent.comm, parent.uid, parent.gid, pid, list(parent.cmdline), self.now)
        cmm = self._new_mm(child.pid)
        child.mm = cmm
        cmm.merge_any = pmm.merge_any
        cmm.next_addr = pmm.next_addr
        mem = self.mem
        for v in pmm.vmas:
            base = self._reserve(cmm, v.npages)
            nv = Vma(v.start, v.npages, v.flags, base, v.name, v.pgoff, v.dev, v.inode, v.kind)
            src = mem.pte.a[v.base : v.base + v.npages]
            mem.pte.a[base : base + v.npages] = src
            fr = src[src >= 0]
            mem.map_add(fr)  # the child's PTEs (map_add widens the counts if need be)
            sw = src[src <= PTE_SWAP0]
            for s in (PTE_SWAP0 - sw).tolist():
                mem.swap_count.a[s] += 1
            cmm.ksm_zero_pages += int(np.count_nonzero(src == PTE_KSM_ZERO))
            cmm.vmas.append(nv)
        if self.version.fork_resets_child_ksm_stats:
            self.ksm.ksm_zero_pages += cmm.ksm_zero_pages
        else:
            # before Donet Tom's fix dup_mm() copied the parent's KSM counters verbatim
            # (a real kernel bug: the child's stats were wrong until ksmd corrected them)
            cmm.ksm_merging_pages = pmm.ksm_merging_pages
            cmm.ksm_rmap_items = pmm.ksm_rmap_items
        self.tasks[child.pid] = child
        if pmm.registered:
            self.ksm.ksm_enter(cmm, child.pid, child.comm)
        return child.pid

    def exit(self, pid: int) -> None:
        t = self.task(pid)
        self._exit_mm(t)
        del self.tasks[pid]

    def _exit_mm(self, t: Task) -> None:
        """exit_mmap(): pages are unmapped at once (ksm_zero_pages falls now); the rmap_items
        stay until ksmd passes the slot (__ksm_exit)."""
        mm = t.mm
        if mm is None:
            return
        if mm.registered:
            self.ksm.ksm_exit(mm, t.pid, t.comm)
        mm.exiting = True
        for v in list(mm.vmas):
            self._unmap_pages(mm, v, 0, v.npages)
            mm.dead.append(Segment(v.start, v.npages, v.base, None))
        mm.vmas = []
        if not mm.registered:
            mm.dead = []
        t.mm = None

    # ------------------------------------------------------------------ mmap / munmap
    def mmap(
        self,
        pid: int,
        npages: int,
        *,
        shared: bool = False,
        file: str | None = None,
        hugetlb: bool = False,
        name: str | None = None,
        prot: str = "rw",
        stack: bool = False,
        extra_flags: int = 0,
        addr: int | None = None,
        populate: bool = True,
    ) -> int:
        """mmap(): VMAs of a process go at rising addresses with a one-page hole between
        them, so no two are ever merged into one (the scenario layout rule).

        ``addr`` places the VMA there instead (MAP_FIXED_NOREPLACE: EEXIST over another
        VMA); ``extra_flags`` adds VM_* bits such as VM_IO or VM_PFNMAP (a VMA rebuilt
        from another machine's VmFlags); ``populate=False`` leaves a file mapping's pages
        unmapped (for :meth:`install_pages`)."""
        mm = self._mm(pid)
        if npages <= 0 or npages > (1 << 40):
            raise KsmError(errno.EINVAL, f"mmap: bad length {npages} pages")
        if addr is not None:
            if addr % PAGE_SIZE or addr <= 0:
                raise KsmError(errno.EINVAL, f"mmap: address {addr:#x} is not page aligned")
            end = addr + npages * PAGE_SIZE
            if any(v.start < end and addr < v.end for v in mm.vmas):
                raise KsmError(errno.EEXIST, f"mmap: [{addr:#x}, {end:#x}) overlaps a mapping")
        flags = VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC
        if "r" in prot:
            flags |= VM_READ
        if "w" in prot:
            flags |= VM_WRITE
        if "x" in prot:
            flags |= VM_EXEC
        kind = FRAME_ANON
        if shared:
            flags |= VM_SHARED | VM_MAYSHARE
            kind = FRAME_SHMEM if file is None else FRAME_FILE
        elif file is not None:
            kind = FRAME_FILE
        elif "w" in prot:
            flags |= VM_ACCOUNT
        if hugetlb:
            flags |= VM_HUGETLB
        if stack:
            flags |= VM_GROWSDOWN
        flags |= extra_flags & ~VM_MERGEABLE  # VM_MERGEABLE only through madvise/prctl
        if addr is None:
            addr = mm.next_addr
            mm.next_addr = addr + (npages + 1) * PAGE_SIZE
        else:
            mm.next_addr = max(mm.next_addr, addr + (npages + 1) * PAGE_SIZE)
        base = self._reserve(mm, npages)
        vma = Vma(addr, npages, flags, base, name if name is not None else file, kind=kind)
        if file is not None:
            vma.dev, vma.inode = (0xFE, 0x00), 1000 + (_file_id(file) & 0xFFFFF)
        # 6.16+ ksm_vma_flags(): under MERGE_ANY a new compatible VMA is born mergeable and
        # the mm is (re-)registered
        if mm.merge_any and vma.ksm_compatible:
            vma.flags |= VM_MERGEABLE
            if not mm.registered:
                self.ksm.ksm_enter(mm, pid, self.tasks[pid].comm)
        mm.vmas.append(vma)
        mm.vmas.sort(key=lambda v: v.start)
        if file is not None and populate:
            # page cache pages of the file are mapped (read) but stay clean and not anon
            tokens = np.arange(npages, dtype=np.uint64) + np.uint64((_file_id(file) & 0xFFFF) << 32) + np.uint64(1)
            frames = self.mem.alloc_frames(tokens, FRAME_FILE)
            self.mem.pte.a[base : base + npages] = frames
        return addr

    def _find_range(self, mm: MM, addr: int, npages: int, what: str) -> list[tuple[Vma, int, int]]:
        """[(vma, first page index, count)] covering [addr, addr+npages) — EFAULT on holes."""
        if addr % PAGE_SIZE:
            raise KsmError(errno.EINVAL, f"{what}: address {addr:#x} is not page aligned")
        end = addr + npages * PAGE_SIZE
        out = []
        cur = addr
        for v in mm.vmas:
            if v.end <= cur or v.start >= end:
                continue
            if v.start > cur:
                raise KsmError(errno.EFAULT, f"{what}: {cur:#x} is not mapped")
            lo = (cur - v.start) >> PAGE_SHIFT
            hi = (min(end, v.end) - v.start) >> PAGE_SHIFT
            out.append((v, lo, hi - lo))
            cur = min(end, v.end)
        if cur < end:
            raise KsmError(errno.EFAULT, f"{what}: {cur:#x} is not mapped")
        return out

    def _split(self, mm: MM, addr: int) -> None:
        """split_vma() so that a VMA boundary falls at ``addr``."""
        for i, v in enumerate(mm.vmas):
            if v.start < addr < v.end:
                k = (addr - v.start) >> PAGE_SHIFT
                right = Vma(addr, v.npages - k, v.flags, v.base + k, v.name, v.pgoff + k, v.dev, v.inode, v.kind)
                v.npages = k
                mm.vmas.insert(i + 1, right)
                return

    def _merge_adjacent(self, mm: MM) -> None:
        """vma_merge(): neighbours of one original mapping with equal flags become one."""
        out: list[Vma] = []
        for v in mm.vmas:
            p = out[-1] if out else None
            if (
                p is not None
                and p.end == v.start
                and p.flags == v.flags
                and p.base + p.npages == v.base
                and p.kind == v.kind
                and p.name == v.name
            ):
                p.npages += v.npages
            else:
                out.append(v)
        mm.vmas = out

    def munmap(self, pid: int, addr: int, npages: int) -> None:
        mm = self._mm(pid)
        if addr % PAGE_SIZE:
            raise KsmError(errno.EINVAL, f"munmap: address {addr:#x} is not page aligned")
        end = addr + npages * PAGE_SIZE
        self._split(mm, addr)
        self._split(mm, end)
        keep = []
        for v in mm.vmas:
            if v.start >= addr and v.end <= end:
                self._unmap_pages(mm, v, 0, v.npages)
                if mm.registered:
                    mm.dead.append(Segment(v.start, v.npages, v.base, None))
            else:
                keep.append(v)
        mm.vmas = keep

    def _unmap_pages(self, mm: MM, v: Vma, lo: int, n: int) -> None:
        mem = self.mem
        sl = slice(v.base + lo, v.base + lo + n)
        pte = mem.pte.a[sl]
        zero = int(np.count_nonzero(pte == PTE_KSM_ZERO))
        if zero:
            # ksm_might_unmap_zero_page(): the count falls at once
            self.ksm.ksm_zero_pages -= zero
            mm.ksm_zero_pages -= zero
        fr = pte[pte >= 0]
        self.ksm.put_frames(fr.astype(np.int32))
        sw = pte[pte <= PTE_SWAP0]
        if sw.shape[0]:
            mem.put_swap(PTE_SWAP0 - sw)
        mem.pte.a[sl] = PTE_NONE

    # ------------------------------------------------------------------ page contents
    def write(self, pid: int, addr: int, tokens: np.ndarray | list[int]) -> None:
        """Store new contents: a write fault on a KSM page, a fork-shared page, the zero
        page or a swapped page gives the writer a private copy (cow_ksm counts KSM COWs);
        a private anon page changes in place (and so does its checksum).

        Tokens with bit 63 set are *unique* contents: ksmd takes them to be held by one
        page only, so take them from :meth:`unique_tokens` (or any source that never
        repeats one) and use values below 2^63 for contents meant to be shared."""
        mm = self._mm(pid)
        tok = np.asarray(tokens, dtype=np.uint64)
        done = 0
        for v, lo, cnt in self._find_range(mm, addr, tok.shape[0], "write"):
            if not v.flags & VM_WRITE:
                raise KsmError(errno.EFAULT, f"write: {v.start:#x} is not writable")
            self._write_vma(mm, v, lo, tok[done : done + cnt])
            done += cnt

    def _write_vma(self, mm: MM, v: Vma, lo: int, tok: np.ndarray) -> None:
        # In pieces of WRITE_CHUNK pages, so that the temporaries of a 16M-page write stay
        # small; the frames the write replaces are dropped once at the end, as before, so
        # that no piece reuses a frame freed by an earlier one (frame numbers are pfns).
        old: list[np.ndarray] = []
        for a in range(0, tok.shape[0], WRITE_CHUNK):
            part = tok[a : a + WRITE_CHUNK]
            o = self._write_piece(mm, v, lo + a, part)
            if o is not None:
                old.append(o)
        if old:
            self.ksm.put_frames(np.concatenate(old).astype(np.int32, copy=False))

    def _write_piece(self, mm: MM, v: Vma, lo: int, tok: np.ndarray) -> np.ndarray | None:
        """Store ``tok`` in pages ``lo …`` of ``v``; returns the frames it unmapped."""
        mem = self.mem
        g0 = v.base + lo
        n = tok.shape[0]
        fresh = mem.pte.a[g0 : g0 + n]
        kind_new = FRAME_SHMEM if v.kind == FRAME_SHMEM else FRAME_ANON
        if (fresh == PTE_NONE).all():
            # never faulted (a scenario's fill): every page gets a new frame
            fresh[:] = mem.alloc_frames(tok, kind_new, self._nid(mm))
            return None
        pte = fresh.copy()
        present = pte >= 0
        fr = np.where(present, pte, 0)
        kind = mem.fnode.a[fr]
        if v.kind == FRAME_SHMEM:
            inplace = present
        else:
            inplace = present & (kind == FRAME_ANON) & (mem.fmap.a[fr] == 1)
        if inplace.any():
            mem.ftoken.a[pte[inplace]] = tok[inplace]
        new = ~inplace
        if not new.any():
            return None
        ksm_cow = int(np.count_nonzero(present & new & (kind >= 0)))
        self.ksm.cow_ksm += ksm_cow
        zero = int(np.count_nonzero(pte[new] == PTE_KSM_ZERO))
        if zero:
            self.ksm.ksm_zero_pages -= zero
            mm.ksm_zero_pages -= zero
        sw = pte[new & (pte <= PTE_SWAP0)]
        if sw.shape[0]:
            mem.put_swap(PTE_SWAP0 - sw)
        old = pte[new & present]
        frames = mem.alloc_frames(tok[new], kind_new, self._nid(mm))
        idx = np.flatnonzero(new)
        mem.pte.a[g0 + idx] = frames
        return old

    def write_pages(self, pid: int, addrs: np.ndarray, tokens: np.ndarray) -> None:
        """:meth:`write` of many single pages at scattered addresses (a process that keeps
        rewriting pages here and there), one VMA lookup for all of them."""
        mm = self._mm(pid)
        # user addresses go up to 2^64 ([vsyscall]): unsigned arithmetic throughout
        addrs = np.asarray(addrs, dtype=np.uint64)
        tokens = np.asarray(tokens, dtype=np.uint64)
        if addrs.shape != tokens.shape:
            raise KsmError(errno.EINVAL, "write_pages: addrs and tokens differ in length")
        if np.any(addrs % np.uint64(PAGE_SIZE)):
            raise KsmError(errno.EINVAL, "write_pages: an address is not page aligned")
        order = np.argsort(addrs, kind="stable")
        addrs, tokens = addrs[order], tokens[order]
        starts = np.array([v.start for v in mm.vmas], dtype=np.uint64)
        ends = np.array([v.end for v in mm.vmas], dtype=np.uint64)
        vi = np.searchsorted(starts, addrs, side="right") - 1
        if np.any(vi < 0) or np.any(addrs >= ends[np.maximum(vi, 0)]):
            raise KsmError(errno.EFAULT, "write_pages: an address is not mapped")
        for i in np.unique(vi).tolist():
            v = mm.vmas[i]
            if not v.flags & VM_WRITE:
                raise KsmError(errno.EFAULT, f"write_pages: {v.start:#x} is not writable")
            sel = np.flatnonzero(vi == i)
            rel = ((addrs[sel] - np.uint64(v.start)) // np.uint64(PAGE_SIZE)).astype(np.int64)
            cut = np.flatnonzero(np.diff(rel) != 1) + 1
            for a, b in zip([0, *cut.tolist()], [*cut.tolist(), rel.shape[0]], strict=True):
                self._write_vma(mm, v, int(rel[a]), tokens[sel[a:b]])

    def install_pages(
        self,
        pid: int,
        addr: int,
        kinds: np.ndarray,
        tokens: np.ndarray,
        share: np.ndarray | None = None,
        thp: np.ndarray | None = None,
    ) -> None:
        """Map pages as another machine's page tables had them (a capture), into a range
        whose pages are not mapped yet: per page ``kinds`` is INSTALL_NONE (no PTE, or the
        shared zero page: ksmd never sees it), INSTALL_ANON (an anonymous page holding
        ``tokens[i]``, also inside a private file mapping: a COW'd page),
        INSTALL_FILE (a page-cache page) or INSTALL_SWAP (swapped out). ``share[i] > 0``
        names a frame: anonymous pages with the same name, in this call or an earlier one,
        map one frame, as pages still shared copy-on-write after fork() do. ``thp[i]``
        marks a page of a transparent huge page: every HPAGE_PMD_NR-page, 2 MiB-aligned
        run of anonymous pages all marked becomes one compound page."""
        mm = self._mm(pid)
        kinds = np.asarray(kinds, dtype=np.uint8)
        tokens = np.asarray(tokens, dtype=np.uint64)
        if kinds.shape != tokens.shape or any(
            x is not None and x.shape != kinds.shape for x in (share, thp)
        ):
            raise KsmError(errno.EINVAL, "install_pages: kinds, tokens, share and thp differ in length")
        if kinds.shape[0] and int(kinds.max()) > INSTALL_SWAP:
            raise KsmError(errno.EINVAL, f"install_pages: unknown page kind {int(kinds.max())}")
        mem = self.mem
        done = 0
        for v, lo, cnt in self._find_range(mm, addr, kinds.shape[0], "install_pages"):
            g0 = v.base + lo
            if np.any(mem.pte.a[g0 : g0 + cnt] != PTE_NONE):
                raise KsmError(errno.EEXIST, f"install_pages: {v.start:#x} has mapped pages")
            k = kinds[done : done + cnt]
            t = tokens[done : done + cnt]
            anon = k == INSTALL_ANON
            if share is not None:
                sh = share[done : done + cnt]
                shared = anon & (sh > 0)
                anon &= ~shared
                for i in np.flatnonzero(shared).tolist():
                    key = int(sh[i])
                    fr = self._install_frames.get(key)
                    if fr is None:
                        fr = int(mem.alloc_frames(t[i : i + 1], FRAME_ANON, self._nid(mm))[0])
                        self._install_frames[key] = fr
                    else:
                        mem.map_add(fr)
                    mem.pte.a[g0 + i] = fr
            for sel, kind in ((anon, FRAME_ANON), (k == INSTALL_FILE, FRAME_FILE)):
                idx = np.flatnonzero(sel)
                if idx.shape[0]:
                    fk = FRAME_SHMEM if v.kind == FRAME_SHMEM and kind == FRAME_ANON else kind
                    mem.pte.a[g0 + idx] = mem.alloc_frames(t[idx], fk, self._nid(mm))
            for i in np.flatnonzero(k == INSTALL_SWAP).tolist():
                mem.pte.a[g0 + i] = PTE_SWAP0 - mem.alloc_swap(int(t[i]), 1)
            if thp is not None:
                self._install_compounds(v, lo, cnt, anon & (thp[done : done + cnt] != 0))
            done += cnt

    def _install_compounds(self, v: Vma, lo: int, cnt: int, huge: np.ndarray) -> None:
        """The 2 MiB-aligned runs of ``huge`` pages (of VMA ``v`` from page ``lo``) that are
        whole become compound pages."""
        if v.kind == FRAME_SHMEM or not huge.any():
            return
        first = v.start // PAGE_SIZE + lo  # virtual page number of huge[0]
        i = (-first) % HPAGE_PMD_NR
        while i + HPAGE_PMD_NR <= cnt:
            if huge[i : i + HPAGE_PMD_NR].all():
                g = v.base + lo + i
                self.mem.make_compound(self.mem.pte.a[g : g + HPAGE_PMD_NR])
            i += HPAGE_PMD_NR

    def _nid(self, mm: MM) -> int:
        return mm.owner_pid % self.mem.nr_nodes

    def read(self, pid: int, addr: int, npages: int) -> np.ndarray:
        """The contents a process reads (unfaulted and zero pages read as token 0)."""
        mm = self._mm(pid)
        out = []
        mem = self.mem
        for v, lo, cnt in self._find_range(mm, addr, npages, "read"):
            pte = mem.pte.a[v.base + lo : v.base + lo + cnt]
            t = np.zeros(cnt, dtype=np.uint64)
            p = pte >= 0
            t[p] = mem.ftoken.a[pte[p]]
            s = pte <= PTE_SWAP0
            t[s] = mem.swap_token.a[PTE_SWAP0 - pte[s]]
            out.append(t)
        return np.concatenate(out) if out else np.zeros(0, dtype=np.uint64)

    # ------------------------------------------------------------------ KSM calls
    def madvise(self, pid: int, addr: int, npages: int, advice: int) -> None:
        """madvise(MADV_MERGEABLE / MADV_UNMERGEABLE) with ksm_madvise()'s rules: an
        incompatible VMA is silently left alone; holes give ENOMEM after the mapped parts
        were changed; an unaligned start is EINVAL."""
        mm = self._mm(pid)
        t = self.tasks[pid]
        if advice not in (MADV_MERGEABLE, MADV_UNMERGEABLE):
            raise KsmError(errno.EINVAL, f"madvise: unsupported advice {advice}")
        if addr % PAGE_SIZE:
            raise KsmError(errno.EINVAL, f"madvise: address {addr:#x} is not page aligned")
        if npages == 0:
            return
        end = addr + npages * PAGE_SIZE
        self._split(mm, addr)
        self._split(mm, end)
        covered = 0
        for v in mm.vmas:
            if v.start >= addr and v.end <= end:
                covered += v.npages
                if advice == MADV_MERGEABLE:
                    if v.mergeable or not v.ksm_compatible:
                        continue
                    if not mm.registered:
                        self.ksm.ksm_enter(mm, pid, t.comm)
                    v.flags |= VM_MERGEABLE
                else:
                    if not v.mergeable:
                        continue
                    self._unmerge_range(mm, v, 0, v.npages)
                    v.flags &= ~VM_MERGEABLE
        self._merge_adjacent(mm)
        if covered < npages:
            raise KsmError(errno.ENOMEM, f"madvise: [{addr:#x}, {end:#x}) has unmapped holes")

    def _unmerge_range(self, mm: MM, v: Vma, lo: int, n: int) -> None:
        """unmerge_ksm_pages() / break_ksm(): KSM pages and KSM zero pages in the range
        become private copies at once; the counters follow when ksmd passes."""
        mem = self.mem
        g0 = v.base + lo
        pte = mem.pte.a[g0 : g0 + n]
        present = pte >= 0
        fr = np.where(present, pte, 0)
        ksm = present & (mem.fnode.a[fr] >= 0)
        zero = pte == PTE_KSM_ZERO
        brk = ksm | zero
        if not brk.any():
            return
        idx = np.flatnonzero(brk)
        old = pte[ksm].copy()
        tok = np.where(ksm[idx], mem.ftoken.a[fr[idx]], np.uint64(0)).astype(np.uint64)
        nz = int(np.count_nonzero(zero))
        if nz:
            self.ksm.ksm_zero_pages -= nz
            mm.ksm_zero_pages -= nz
        frames = mem.alloc_frames(tok, FRAME_ANON, self._nid(mm))
        mem.pte.a[g0 + idx] = frames
        self.ksm.put_frames(old.astype(np.int32))

    def _unmerge_vma(self, mm: MM, v: object) -> None:
        assert isinstance(v, Vma)
        self._unmerge_range(mm, v, 0, v.npages)

    def prctl(self, pid: int, option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
        """PR_SET_MEMORY_MERGE / PR_GET_MEMORY_MERGE (kernel/sys.c)."""
        mm = self._mm(pid)
        t = self.tasks[pid]
        if option not in (PR_SET_MEMORY_MERGE, PR_GET_MEMORY_MERGE) or not self.version.has_prctl_memory_merge:
            raise KsmError(errno.EINVAL, f"prctl: unknown option {option}")
        if option == PR_GET_MEMORY_MERGE:
            if arg2 or arg3 or arg4 or arg5:
                raise KsmError(errno.EINVAL, "prctl(PR_GET_MEMORY_MERGE): arguments must be 0")
            return int(mm.merge_any)
        if arg3 or arg4 or arg5:
            raise KsmError(errno.EINVAL, "prctl(PR_SET_MEMORY_MERGE): arg3-arg5 must be 0")
        if arg2:
            # ksm_enable_merge_any()
            if mm.merge_any:
                return 0
            if not mm.registered:
                self.ksm.ksm_enter(mm, pid, t.comm)
            mm.merge_any = True
            for v in mm.vmas:
                if v.ksm_compatible:
                    v.flags |= VM_MERGEABLE
            return 0
        # ksm_disable_merge_any(): unmerge and clear VM_MERGEABLE everywhere
        if not mm.merge_any:
            return 0
        for v in mm.vmas:
            if v.mergeable:
                self._unmerge_range(mm, v, 0, v.npages)
                v.flags &= ~VM_MERGEABLE
        mm.merge_any = False
        self._merge_adjacent(mm)
        return 0

    # ------------------------------------------------------------------ swap
    def swap_out(self, pid: int, addr: int, npages: int) -> int:
        """Reclaim the pages mapped in the range: every mapping of each page (rmap walk,
        rmap_walk_ksm for KSM pages) becomes a swap entry; the page is freed, so a KSM
        page's stable node goes stale. Returns the number of pages swapped out."""
        mm = self._mm(pid)
        mem = self.mem
        victims = []
        for v, lo, cnt in self._find_range(mm, addr, npages, "swapout"):
            pte = mem.pte.a[v.base + lo : v.base + lo + cnt]
            fr = pte[pte >= 0]
            fr = fr[mem.fnode.a[fr] != FRAME_FILE]
            victims.append(fr)
        frames = np.unique(np.concatenate(victims)) if victims else np.zeros(0, np.int32)
        if not frames.shape[0]:
            return 0
        n = mem.pte.n
        allpte = mem.pte.a[:n]
        hit = np.flatnonzero(np.isin(allpte, frames))
        mapped = allpte[hit]
        order = np.argsort(mapped, kind="stable")
        hit, mapped = hit[order], mapped[order]
        uniq, start, counts = np.unique(mapped, return_index=True, return_counts=True)
        for fr, s, c in zip(uniq.tolist(), start.tolist(), counts.tolist(), strict=True):
            slot = mem.alloc_swap(int(mem.ftoken.a[fr]), c)
            mem.pte.a[hit[s : s + c]] = PTE_SWAP0 - slot
        self.ksm.put_frames(mapped.astype(np.int32))
        return int(uniq.shape[0])

    def swap_in(self, pid: int, addr: int, npages: int) -> int:
        """do_swap_page(): each swapped PTE in the range gets an ordinary private page with
        the content (ksm_might_need_to_copy: sharing is broken; ksmd must merge it again)."""
        mm = self._mm(pid)
        mem = self.mem
        total = 0
        for v, lo, cnt in self._find_range(mm, addr, npages, "swapin"):
            g0 = v.base + lo
            pte = mem.pte.a[g0 : g0 + cnt]
            sw = np.flatnonzero(pte <= PTE_SWAP0)
            if not sw.shape[0]:
                continue
            slots = PTE_SWAP0 - pte[sw]
            tok = mem.swap_token.a[slots].copy()
            shared = mem.swap_count.a[slots] > 1
            for t in tok[shared & ((tok & UNIQUE_BIT) != 0)].tolist():
                self.ksm.demoted_unique.add(int(t))  # several private copies of one content
            frames = mem.alloc_frames(tok, FRAME_SHMEM if v.kind == FRAME_SHMEM else FRAME_ANON, self._nid(mm))
            mem.pte.a[g0 + sw] = frames
            mem.put_swap(slots)
            total += sw.shape[0]
        return total

    # ------------------------------------------------------------------ views
    def ksm_stat(self, pid: int) -> dict[str, int | str] | None:
        t = self.task(pid)
        mm = t.mm
        if mm is None:
            return None
        return {
            "ksm_rmap_items": mm.ksm_rmap_items,
            "ksm_zero_pages": mm.ksm_zero_pages,
            "ksm_merging_pages": mm.ksm_merging_pages,
            "ksm_process_profit": mm.ksm_process_profit,
            "ksm_merge_any": "yes" if mm.merge_any else "no",
            "ksm_mergeable": "yes" if mm.mergeable else "no",
        }

    def smaps(self, pid: int) -> list[tuple[Vma, SmapsCounts]]:
        mm = self.task(pid).mm
        if mm is None:
            return []
        return [(v, vma_smaps(self.mem, v)) for v in mm.vmas]

    def task_mem(self, pid: int) -> dict[str, int]:
        mm = self.task(pid).mm
        out = dict.fromkeys(
            ("total_vm", "rss_anon", "rss_file", "rss_shmem", "swap", "data_vm", "stack_vm",
             "exec_vm", "locked_vm", "pinned", "hiwater_rss", "hiwater_vm"),
            0,
        )
        if mm is None:
            return out
        mem = self.mem
        for v in mm.vmas:
            pte = mem.pte.a[v.base : v.base + v.npages]
            fr = pte[pte >= 0]
            kind = mem.fnode.a[fr]
            out["total_vm"] += v.npages
            out["rss_file"] += int(np.count_nonzero(kind == FRAME_FILE))
            out["rss_shmem"] += int(np.count_nonzero(kind == FRAME_SHMEM))
            out["rss_anon"] += int(np.count_nonzero((kind != FRAME_FILE) & (kind != FRAME_SHMEM)))
            out["swap"] += int(np.count_nonzero(pte <= PTE_SWAP0))
            if v.flags & VM_GROWSDOWN:
                out["stack_vm"] += v.npages
            elif v.flags & VM_EXEC and not v.flags & VM_WRITE:
                out["exec_vm"] += v.npages
            elif v.flags & VM_WRITE and not v.flags & VM_SHARED:
                out["data_vm"] += v.npages
        out["hiwater_rss"] = out["rss_anon"] + out["rss_file"] + out["rss_shmem"]
        out["hiwater_vm"] = out["total_vm"]
        return out

    def mem_stats(self) -> dict[str, int]:
        mem = self.mem
        n = mem.fnode.n
        kinds = mem.fnode.a[:n]
        used = mem.fmap.a[:n] > 0
        anon = int(np.count_nonzero(used & ((kinds == FRAME_ANON) | (kinds >= 0))))
        total = self.mem_total // PAGE_SIZE
        in_use = int(np.count_nonzero(used))
        return {
            "mem_total": total,
            "mem_free": max(total - in_use, 0),
            "anon_pages": anon,
            "ksm_pages": int(np.count_nonzero(used & (kinds >= 0))),
            "file_pages": int(np.count_nonzero(used & (kinds == FRAME_FILE))),
            "shmem": int(np.count_nonzero(used & (kinds == FRAME_SHMEM))),
            "swap_total": self.swap_total // PAGE_SIZE,
            "swap_free": max(self.swap_total // PAGE_SIZE - mem.nr_swap_used, 0),
        }

    def vmstat(self) -> dict[str, int]:
        return {"ksm_swpin_copy": self.ksm.ksm_swpin_copy, "cow_ksm": self.ksm.cow_ksm}

    # ------------------------------------------------------------------ knob plumbing
    def set_run(self, value: int) -> None:
        self.ksm.set_run(value, self._unmerge_vma)



__all__ = [
    "INSTALL_ANON",
    "INSTALL_FILE",
    "INSTALL_NONE",
    "INSTALL_SWAP",
    "MADV_MERGEABLE",
    "MADV_UNMERGEABLE",
    "PR_GET_MEMORY_MERGE",
    "PR_SET_MEMORY_MERGE",
    "VM_DONTEXPAND",
    "VM_HUGETLB",
    "Kernel",
]

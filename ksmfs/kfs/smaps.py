"""/proc/<pid>/maps, smaps and smaps_rollup text (fs/proc/task_mmu.c).

Formats are the kernel's, verified against the live 6.18 machine (spec §2.4, §2.5):
show_vma_header_prefix pads the header to 72 columns and seq_pad adds one space before the
name; every field line is a 16-column label and an 8-column value in kB.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING

from ksmfs.kernel.mm import (
    FRAME_FILE,
    PAGE_SIZE,
    VM_EXEC,
    VM_HUGETLB,
    VM_MAYSHARE,
    VM_READ,
    VM_WRITE,
    Vma,
)
from ksmfs.kernel.smaps import SMAPS_RANGE_PAGES, SmapsCounts, vma_smaps_range

if TYPE_CHECKING:
    from ksmfs.kernel import Kernel

PAGE_SHIFT = 12
PSS_SHIFT = 12
# seq_setwidth(m, 25 + sizeof(void *) * 6 - 1): the name starts after column 72 + 1 space.
HEADER_PAD = 25 + 8 * 6 - 1

# show_smap_vma_flags(): mnemonics indexed by VM_* bit (x86-64, 6.18).  Bit 27 (sd,
# VM_SOFTDIRTY) is omitted: CONFIG_MEM_SOFT_DIRTY is unset on the reference machine.
# Bits 32+ (pkeys, ss, ...) are never set by the simulation.
VM_MNEMONICS: dict[int, str] = {
    0: "rd", 1: "wr", 2: "ex", 3: "sh", 4: "mr", 5: "mw", 6: "me", 7: "ms",
    8: "gd", 9: "um", 10: "pf", 12: "uw", 13: "lo", 14: "io", 15: "sr", 16: "rr",
    17: "dc", 18: "de", 19: "lf", 20: "ac", 21: "nr", 22: "ht", 23: "sf", 24: "ar",
    25: "wf", 26: "dd", 28: "mm", 29: "hg", 30: "nh", 31: "mg",
}  # fmt: skip

# The reference machine of the spec has PKU, so show_smap prints ProtectionKey (spec
# §2.4 verbatim sample).  A machine without PKU (this dev box) prints no such line.
SHOW_PROTECTION_KEY = True


def version_tuple(name: str) -> tuple[int, int]:
    major, minor = name.split(".")[:2]
    return int(major), int(minor)


def vma_name(vma: Vma) -> str | None:
    """The name column: a file path or a [bracketed] name as is, else ``[anon:<name>]``."""
    name: str | None = vma.name
    if not name:
        return None
    if name.startswith(("/", "[")):
        return name
    return f"[anon:{name}]"


def _is_file(vma: Vma) -> bool:
    return (
        getattr(vma, "kind", None) == FRAME_FILE
        or bool(getattr(vma, "inode", 0))
        or (getattr(vma, "name", None) or "").startswith("/")
    )


def vm_flags_line(flags: int) -> str:
    """'VmFlags: rd wr mr mw me ac mg ' -- every mnemonic is followed by a space."""
    return "VmFlags: " + "".join(f"{m} " for bit, m in VM_MNEMONICS.items() if flags >> bit & 1)


def header_line(start: int, end: int, flags: int, offset: int, dev: tuple[int, int] | None, inode: int,
                name: str | None) -> str:
    """show_vma_header_prefix() + seq_pad + name, without the newline."""
    perms = (
        ("r" if flags & VM_READ else "-")
        + ("w" if flags & VM_WRITE else "-")
        + ("x" if flags & VM_EXEC else "-")
        + ("s" if flags & VM_MAYSHARE else "p")
    )
    major, minor = dev if dev else (0, 0)
    line = f"{start:08x}-{end:08x} {perms} {offset:08x} {major:02x}:{minor:02x} {inode} "
    if name is not None:
        line = line.ljust(HEADER_PAD) + " " + name
    return line


def vma_header(vma: Vma) -> str:
    # Anonymous VMAs print offset 0 and 00:00 0 whatever vm_pgoff holds.
    is_file = _is_file(vma)
    offset = (int(getattr(vma, "pgoff", 0) or 0) << PAGE_SHIFT) if is_file else 0
    dev = getattr(vma, "dev", None) if is_file else None
    inode = int(getattr(vma, "inode", 0) or 0) if is_file else 0
    return header_line(vma.start, vma.end, int(vma.flags), offset, dev, inode, vma_name(vma))


def _kb(label: str, value_bytes: int) -> str:
    # SEQ_PUT_DEC(label, val): seq_put_decimal_ull_width(m, label, val >> 10, 8) + " kB".
    return f"{label:<16}{int(value_bytes) >> 10:>8} kB\n"


def _pss_kb(label: str, value: int) -> str:
    return _kb(label, int(value) >> PSS_SHIFT)


def smap_fields(c: SmapsCounts, *, rollup: bool, has_ksm: bool, has_pss_dirty: bool = True) -> str:
    """__show_smap(): the field lines shared by smaps and smaps_rollup."""
    out = [_kb("Rss:", c.rss), _pss_kb("Pss:", c.pss)]
    if has_pss_dirty:
        out.append(_pss_kb("Pss_Dirty:", c.pss_dirty))
    if rollup:
        out += [
            _pss_kb("Pss_Anon:", c.pss_anon),
            _pss_kb("Pss_File:", c.pss_file),
            _pss_kb("Pss_Shmem:", c.pss_shmem),
        ]
    out += [
        _kb("Shared_Clean:", c.shared_clean),
        _kb("Shared_Dirty:", c.shared_dirty),
        _kb("Private_Clean:", c.private_clean),
        _kb("Private_Dirty:", c.private_dirty),
        _kb("Referenced:", c.referenced),
        _kb("Anonymous:", c.anonymous),
    ]
    if has_ksm:
        out.append(_kb("KSM:", c.ksm))
    out += [
        _kb("LazyFree:", c.lazyfree),
        _kb("AnonHugePages:", c.anon_huge),
        _kb("ShmemPmdMapped:", c.shmem_pmd),
        _kb("FilePmdMapped:", c.file_pmd),
        _kb("Shared_Hugetlb:", c.shared_hugetlb),
        # The only label of 17 columns, with a 7-column value (same total width).
        f"Private_Hugetlb: {int(c.private_hugetlb) >> 10:>7} kB\n",
        _kb("Swap:", c.swap),
        _pss_kb("SwapPss:", c.swap_pss),
        _kb("Locked:", c.locked),
    ]
    return "".join(out)


def _features(k: Kernel) -> tuple[bool, bool]:
    v = k.version
    return bool(v.has_smaps_ksm), version_tuple(v.name) >= (6, 0)  # Pss_Dirty: 6.0


def render_smap_block(vma: Vma, counts: SmapsCounts, *, has_ksm: bool, has_pss_dirty: bool = True,
                      protection_key: bool = SHOW_PROTECTION_KEY) -> str:
    """One VMA of /proc/<pid>/smaps (show_smap)."""
    page_kb = 2048 if int(vma.flags) & VM_HUGETLB else 4
    out = [
        vma_header(vma) + "\n",
        _kb("Size:", counts.size),
        f"{'KernelPageSize:':<16}{page_kb:>8} kB\n",
        f"{'MMUPageSize:':<16}{page_kb:>8} kB\n",
        smap_fields(counts, rollup=False, has_ksm=has_ksm, has_pss_dirty=has_pss_dirty),
        # THPeligible: only VMAs that could hold a THP in madvise mode (VM_HUGEPAGE).
        f"{'THPeligible:':<16}{1 if _thp_eligible(vma) else 0:>8}\n",
    ]
    if protection_key:
        out.append(f"{'ProtectionKey:':<16}{0:>8}\n")
    out.append(vm_flags_line(int(vma.flags)) + "\n")
    return "".join(out)


def _thp_eligible(vma: Vma) -> bool:
    # transparent_hugepage=madvise (spec §0.2): only VM_HUGEPAGE anon VMAs of >= 2 MiB.
    VM_HUGEPAGE = 0x20000000
    flags = int(vma.flags)
    return bool(flags & VM_HUGEPAGE) and not _is_file(vma) and vma.end - vma.start >= 2 << 20


def render_smaps(k: Kernel, pid: int) -> bytes:
    """/proc/<pid>/smaps in one piece (the reference of :func:`render_smaps_steps`)."""
    task = k.tasks[pid]
    if task.mm is None:
        return b""
    return smaps_text(k, k.smaps(pid))


def smaps_text(k: Kernel, rows: list[tuple[Vma, SmapsCounts]]) -> bytes:
    has_ksm, has_pss_dirty = _features(k)
    return "".join(
        render_smap_block(vma, c, has_ksm=has_ksm, has_pss_dirty=has_pss_dirty)
        for vma, c in rows
    ).encode()


def render_smaps_rollup(k: Kernel, pid: int) -> bytes:
    """show_smaps_rollup(); the caller maps a missing mm to ESRCH."""
    return rollup_text(k, k.smaps(pid))


def rollup_text(k: Kernel, rows: list[tuple[Vma, SmapsCounts]]) -> bytes:
    has_ksm, has_pss_dirty = _features(k)
    if rows:
        total = rows[0][1]
        for _, c in rows[1:]:
            total = total + c
        start, end = rows[0][0].start, rows[-1][0].end
    else:
        # show_smaps_rollup's empty_set: vma_start = last_vma_end = 0.
        total = _zero_counts(k)
        start = end = 0
    head = header_line(start, end, 0, 0, None, 0, "[rollup]")
    # The rollup header prints "---p" whatever the flags: show_vma_header_prefix(m, ...,
    # 0, 0, 0, 0) with vm_flags 0 -> "---p".
    body = smap_fields(total, rollup=True, has_ksm=has_ksm, has_pss_dirty=has_pss_dirty)
    return (head + "\n" + body).encode()


# -- the render in pieces ---------------------------------------------------------------
# A 4M-page VMA takes ~100 ms to sum up; the mount must not stop serving other readers
# (or ksmd) that long.  The walk is cut into ranges of pages and the caller (the FUSE
# adapter) lets other work run at each ``yield``.  What the result means, from the
# kernel's locking (fs/proc/task_mmu.c, 6.18):
# * smap_gather_stats() walks a VMA with the mmap lock held for read (taken in m_start).
#   smaps_pte_range() holds the PTE lock for one page table and calls cond_resched()
#   after it; ksmd takes the mmap lock for read too (scan_get_next_rmap_item,
#   try_to_merge_with_ksm_page), so it merges pages of the VMA while the walk is between
#   two page tables: ranges summed at different moments, with ksmd batch slices between,
#   add up to what the kernel's walk can print.  Each page is counted once, with its PTE
#   and mapcount as they were when its range was summed.
# * What takes the mmap lock for write (mmap, munmap, a split, madvise, fork's
#   dup_mmap, exit_mmap) cannot happen during the walk.  Here it may (a store or a
#   scenario step runs between two pieces); it is detected after every piece (the task,
#   its mm, its VMA list and the VMA being walked are the ones the render started with,
#   and no task was forked: a fork of the process itself changes no VMA, only the
#   mapcounts of its pages, and its dup_mmap would wait for the walk; any fork counts,
#   as a restart is always correct, only slower) and the render starts again, so the
#   output is a walk that ran after the change: a VMA block is always the block of one
#   VMA layout.  After MAX_RESTARTS the render is done in one piece.
MAX_RESTARTS = 3
# What a VMA costs besides its pages (lookups, its block of text), counted in pages.
VMA_COST_PAGES = 64

RowsSteps = Generator[None, None, "list[tuple[Vma, SmapsCounts]] | None"]
RenderSteps = Generator[None, None, "bytes | None"]


def smaps_rows_steps(k: Kernel, pid: int, range_pages: int = SMAPS_RANGE_PAGES) -> RowsSteps:
    """``k.smaps(pid)`` summed in ranges of at most ``range_pages`` pages, yielding
    after every ``range_pages`` pages of walk; None when the layout changed at a yield
    (start again)."""
    if range_pages < 1:
        raise ValueError("range_pages must be positive")
    task = k.tasks.get(pid)
    mm = task.mm if task is not None else None
    if task is None or mm is None:
        return []
    vmas = mm.vmas
    count = len(vmas)
    forks = k.total_forks
    rows: list[tuple[Vma, SmapsCounts]] = []
    used = 0
    for v in list(vmas):
        key = (v.start, v.npages, v.flags, v.base)
        c = SmapsCounts(size=v.npages * PAGE_SIZE)
        used += VMA_COST_PAGES
        lo = 0
        while True:
            hi = min(v.npages, lo + range_pages)
            c = c + vma_smaps_range(k.mem, v, lo, hi)
            used += hi - lo
            lo = hi
            if used >= range_pages:
                used = 0
                yield
                if (k.tasks.get(pid) is not task or task.mm is not mm or mm.vmas is not vmas
                        or len(vmas) != count or (v.start, v.npages, v.flags, v.base) != key
                        or k.total_forks != forks):
                    return None
            if lo >= v.npages:
                break
        rows.append((v, c))
    return rows


def render_smaps_steps(k: Kernel, pid: int, range_pages: int = SMAPS_RANGE_PAGES) -> RenderSteps:
    """:func:`render_smaps` in pieces (see above); None: start again."""
    rows = yield from smaps_rows_steps(k, pid, range_pages)
    return None if rows is None else smaps_text(k, rows)


def render_smaps_rollup_steps(k: Kernel, pid: int,
                              range_pages: int = SMAPS_RANGE_PAGES) -> RenderSteps:
    """:func:`render_smaps_rollup` in pieces (see above); None: start again."""
    rows = yield from smaps_rows_steps(k, pid, range_pages)
    return None if rows is None else rollup_text(k, rows)


def _zero_counts(k: Kernel) -> SmapsCounts:
    return SmapsCounts()


def render_maps(k: Kernel, pid: int) -> bytes:
    task = k.tasks[pid]
    if task.mm is None:
        return b""
    return "".join(vma_header(v) + "\n" for v in task.mm.vmas).encode()

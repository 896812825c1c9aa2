"""/sys/kernel/mm/ksm/*: one row per attribute of the kernel version (mm/ksm.c, CONFIG_SYSFS).

Show functions print exactly what the kernel's ``*_show`` prints (spec §1.2); stores go to
``ksmfs.kernel.knobs.store``, the kernel's parser, after kernfs' 4096-byte cut.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ksmfs.kernel.versions import WRITABLE_SYSFS
from ksmfs.kfs.spec import FileSpec, ShowFn, StoreFn
from ksmfs.linux import WRITE_MAX

if TYPE_CHECKING:
    from ksmfs.kernel import Kernel
    from ksmfs.kernel.versions import KernelProfile

# Attributes made with __ATTR_RW (mode 0644); every other one is __ATTR_RO (0444).
WRITABLE = WRITABLE_SYSFS
SYSFS_SIZE = 4096  # kernfs reports PAGE_SIZE as st_size for every attribute [LIVE]


# Printed with %u (unsigned int variables in mm/ksm.c); the rest are %lu unless signed.
UINT_FORMAT = frozenset(
    {
        "pages_to_scan",
        "sleep_millisecs",
        "merge_across_nodes",
        "use_zero_pages",
        "max_page_sharing",
        "stable_node_chains_prune_millisecs",
        "smart_scan",
        "advisor_max_cpu",
    }
)


def format_value(name: str, value: int, *, zero_pages_signed: bool = True) -> bytes:
    """One numeric attribute as its *_show prints it.  %u/%lu print the C view (a negative
    value would wrap); %ld (pages_volatile, general_profit, and ksm_zero_pages from 6.10)
    keeps the minus sign."""
    signed = name in ("pages_volatile", "general_profit") or (
        name == "ksm_zero_pages" and zero_pages_signed
    )
    if signed:
        return b"%d\n" % value
    mask = 0xFFFFFFFF if name in UINT_FORMAT else 2**64 - 1
    return b"%d\n" % (value & mask)


def show_value(k: Kernel, name: str) -> bytes:
    """The attribute's content for kernel ``k``."""
    if name == "advisor_mode":
        # advisor_mode_show: the active mode in brackets.
        mode = k.ksm.advisor_mode
        return b"[none] scan-time\n" if mode == "none" else b"none [scan-time]\n"
    return format_value(
        name,
        int(getattr(k.ksm, name)),
        zero_pages_signed=bool(k.version.ksm_zero_pages_signed),
    )


def _show(name: str) -> ShowFn:
    def show(k: Kernel, pid: int | None) -> bytes:
        return show_value(k, name)

    show.__name__ = f"show_{name}"
    return show


def _store(name: str) -> StoreFn:
    def store(k: Kernel, pid: int | None, data: bytes) -> int:
        if not data:  # kernfs: a zero-length write never reaches the store function
            return 0
        from ksmfs.kernel import knobs

        return int(knobs.store(k, name, bytes(data[:WRITE_MAX])))

    store.__name__ = f"store_{name}"
    return store


def file_specs(version: KernelProfile) -> list[FileSpec]:
    """Rows in the kernel's attribute-array order (version.sysfs_files)."""
    out = []
    for name in version.sysfs_files:
        rw = name in WRITABLE
        out.append(
            FileSpec(
                name=name,
                mode=0o644 if rw else 0o444,
                size=SYSFS_SIZE,
                show=_show(name),
                store=_store(name) if rw else None,
            )
        )
    return out

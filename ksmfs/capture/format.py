"""The capture file (docs/capture-format.md): what KSM's scan would see in a set of real
processes, without their contents.

A capture is a zip archive holding ``capture.json`` (format name and version, the
machine's KSM knobs, the processes and their VMAs) and one ``.npy`` array per page
attribute. Only pages that are mapped (present or swapped out) have a record; the records
of one VMA are contiguous and in address order, the VMAs of a process in address order.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

FORMAT = "ksmfs-capture"
VERSION = 1

# page kinds (the ``kind`` array)
KIND_ANON = 1  # an anonymous page (also a COW'd page of a private file mapping)
KIND_FILE = 2  # a page-cache page (file, shmem, shared anonymous)
KIND_SWAP = 3  # swapped out
KIND_ZERO = 4  # the shared zero page (memory read but never written)
KIND_NAMES = {KIND_ANON: "anon", KIND_FILE: "file", KIND_SWAP: "swap", KIND_ZERO: "zero"}

# page flags (the ``pflags`` array)
PF_THP = 1  # part of a transparent huge page
PF_KSM = 2  # already a KSM page when captured
PF_VOLATILE = 4  # content changed during --watch

ARRAYS: dict[str, type] = {
    "offset": np.uint64,  # page index inside its VMA
    "kind": np.uint8,
    "pflags": np.uint8,
    "content": np.uint64,  # content id: 0 = all zero bytes; equal ids = equal contents
    "share": np.uint32,  # > 0: the same physical anonymous page (fork COW), by group
}


class CaptureError(Exception):
    """A capture file that cannot be used (the message names the file and the problem)."""


@dataclass
class CVma:
    start: int
    end: int
    vmflags: list[str]
    name: str | None
    pgoff: int
    first: int  # index of its first page record
    count: int  # number of page records

    @property
    def npages(self) -> int:
        return (self.end - self.start) // 4096


@dataclass
class CProcess:
    pid: int
    comm: str
    uid: int
    start_time: int
    ksm_stat: dict[str, int | str]
    vmas: list[CVma] = field(default_factory=list)

    @property
    def merge_any(self) -> bool:
        return self.ksm_stat.get("ksm_merge_any") == "yes"


@dataclass
class Capture:
    kernel_release: str
    knobs: dict[str, int | str]
    thp_enabled: str
    watch_seconds: float | None
    processes: list[CProcess]
    offset: np.ndarray
    kind: np.ndarray
    pflags: np.ndarray
    content: np.ndarray
    share: np.ndarray
    skipped: list[str] = field(default_factory=list)

    @property
    def npages(self) -> int:
        return int(self.kind.shape[0])

    def save(self, path: str | Path) -> None:
        header = {
            "format": FORMAT,
            "version": VERSION,
            "page_size": 4096,
            "kernel_release": self.kernel_release,
            "knobs": self.knobs,
            "thp_enabled": self.thp_enabled,
            "watch_seconds": self.watch_seconds,
            "skipped": self.skipped,
            "processes": [asdict(p) for p in self.processes],
        }
        tmp = Path(f"{path}.tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
            z.writestr("capture.json", json.dumps(header, indent=1))
            for name, dtype in ARRAYS.items():
                b = io.BytesIO()
                np.lib.format.write_array(b, np.ascontiguousarray(getattr(self, name), dtype=dtype),
                                          allow_pickle=False)
                z.writestr(f"{name}.npy", b.getvalue())
        tmp.replace(path)


def load(path: str | Path) -> Capture:
    """Read a capture file; CaptureError with one line for anything wrong."""
    try:
        with zipfile.ZipFile(path) as z:
            header = json.loads(z.read("capture.json"))
            if header.get("format") != FORMAT:
                raise CaptureError(f"{path}: not a ksmfs capture file")
            if header.get("version") != VERSION:
                raise CaptureError(f"{path}: capture format version {header.get('version')} "
                                   f"(this ksmfs reads version {VERSION})")
            arrays = {}
            for name, dtype in ARRAYS.items():
                a = np.lib.format.read_array(io.BytesIO(z.read(f"{name}.npy")), allow_pickle=False)
                if a.dtype != np.dtype(dtype) or a.ndim != 1:
                    raise CaptureError(f"{path}: {name}.npy has type {a.dtype}{list(a.shape)}")
                arrays[name] = a
    except CaptureError:
        raise
    except FileNotFoundError:
        raise CaptureError(f"{path}: no such file") from None
    except (OSError, zipfile.BadZipFile, KeyError, ValueError) as e:
        raise CaptureError(f"{path}: not a readable capture file ({e})") from None
    n = arrays["kind"].shape[0]
    if any(a.shape[0] != n for a in arrays.values()):
        raise CaptureError(f"{path}: page arrays differ in length")
    try:
        procs = []
        for p in header["processes"]:
            vmas = [CVma(**v) for v in p.pop("vmas")]
            procs.append(CProcess(**p, vmas=vmas))
            for v in vmas:
                if v.first < 0 or v.count < 0 or v.first + v.count > n or v.end <= v.start:
                    raise ValueError(f"VMA {v.start:#x} of pid {p['pid']} is out of range")
        cap = Capture(header["kernel_release"], header["knobs"], header["thp_enabled"],
                      header["watch_seconds"], procs, **arrays,
                      skipped=list(header.get("skipped", [])))
    except (KeyError, TypeError, ValueError) as e:
        raise CaptureError(f"{path}: bad capture header ({e})") from None
    return cap

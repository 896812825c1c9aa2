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
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ksmfs.linux import PAGE_SIZE

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
        return (self.end - self.start) // PAGE_SIZE


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
            "page_size": PAGE_SIZE,
            "kernel_release": self.kernel_release,
            "knobs": self.knobs,
            "thp_enabled": self.thp_enabled,
            "watch_seconds": self.watch_seconds,
            "skipped": self.skipped,
            "processes": [asdict(p) for p in self.processes],
        }
        # written next to the target and renamed over it: a reader never sees half a file,
        # and a failed write leaves neither the temporary file nor a broken target
        target = Path(path)
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
                z.writestr("capture.json", json.dumps(header, indent=1))
                for name, dtype in ARRAYS.items():
                    b = io.BytesIO()
                    np.lib.format.write_array(
                        b, np.ascontiguousarray(getattr(self, name), dtype=dtype), allow_pickle=False)
                    z.writestr(f"{name}.npy", b.getvalue())
            tmp.replace(target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def load(path: str | Path) -> Capture:
    """Read a capture file; CaptureError with one line for anything wrong."""
    try:
        with zipfile.ZipFile(path) as z:
            header = json.loads(z.read("capture.json"))
            if not isinstance(header, dict) or header.get("format") != FORMAT:
                raise CaptureError(f"{path}: not a ksmfs capture file")
            if header.get("version") != VERSION:
                raise CaptureError(f"{path}: capture format version {header.get('version')} "
                                   f"(this ksmfs reads version {VERSION})")
            if header.get("page_size") != PAGE_SIZE:
                raise CaptureError(f"{path}: pages of {header.get('page_size')} bytes "
                                   f"(the simulated kernel has {PAGE_SIZE}-byte pages)")
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
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError, ValueError) as e:
        # zlib.error / EOFError: a damaged or cut-off member behind an intact directory
        raise CaptureError(f"{path}: not a readable capture file ({e})") from None
    n = arrays["kind"].shape[0]
    if any(a.shape[0] != n for a in arrays.values()):
        raise CaptureError(f"{path}: page arrays differ in length")
    try:
        procs = [_process(p, n) for p in _typed(header["processes"], list, "processes")]
        cap = Capture(_typed(header["kernel_release"], str, "kernel_release"),
                      _typed(header["knobs"], dict, "knobs"),
                      _typed(header["thp_enabled"], str, "thp_enabled"),
                      _typed(header["watch_seconds"], (int, float, type(None)), "watch_seconds"),
                      procs, **arrays,
                      skipped=[str(s) for s in _typed(header.get("skipped", []), list, "skipped")])
    except KeyError as e:
        raise CaptureError(f"{path}: bad capture header (no key {e})") from None
    except (TypeError, ValueError) as e:
        raise CaptureError(f"{path}: bad capture header ({e})") from None
    return cap


def _typed(value: Any, types: type | tuple[type, ...], what: str) -> Any:
    """``value`` if it is of ``types`` (a JSON true/false is not an int), else TypeError."""
    if isinstance(value, types) and not (isinstance(value, bool) and types is int):
        return value
    raise TypeError(f"{what}: {value!r:.40} has the wrong type")


def _process(p: Any, npages: int) -> CProcess:
    """One entry of ``processes``, every field checked (a hand-edited or foreign header
    must give one line, not a traceback later in build)."""
    p = _typed(p, dict, "a process")
    pid = _typed(p["pid"], int, "pid")
    where = f"pid {pid}"
    vmas = []
    for v in _typed(p["vmas"], list, f"{where}: vmas"):
        v = _typed(v, dict, f"{where}: a VMA")
        flags = _typed(v["vmflags"], list, f"{where}: vmflags")
        if not all(isinstance(f, str) for f in flags):
            raise TypeError(f"{where}: vmflags must be strings")
        ints = {k: _typed(v[k], int, f"{where}: {k}") for k in ("start", "end", "pgoff", "first", "count")}
        vma = CVma(vmflags=flags, name=_typed(v["name"], (str, type(None)), f"{where}: name"), **ints)
        if (vma.first < 0 or vma.count < 0 or vma.first + vma.count > npages
                or vma.end <= vma.start or vma.count > vma.npages):
            raise ValueError(f"VMA {vma.start:#x} of {where} is out of range")
        vmas.append(vma)
    stat = _typed(p["ksm_stat"], dict, f"{where}: ksm_stat")
    return CProcess(pid, _typed(p["comm"], str, f"{where}: comm"), _typed(p["uid"], int, f"{where}: uid"),
                    _typed(p["start_time"], int, f"{where}: start_time"), stat, vmas)

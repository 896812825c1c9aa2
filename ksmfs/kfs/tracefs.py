"""/sys/kernel/tracing: tracing_on, trace, trace_pipe and events/ksm/*.

Modes, formats and event ids are those of the live 6.18 tracefs (a temporary
``mount -t tracefs`` on the reference machine): files are 0640/0440 there, not 0644/0444.
Records are printed like kernel/trace/trace.c print_trace_fmt() with the default options
(context info, irq info): ``%16s-%-7d [%03d] %5s %5llu.%06lu: <event>: <TP_printk>``.
"""

from __future__ import annotations

import errno
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ksmfs.kfs.errors import KsmError, einval
from ksmfs.kfs.spec import FileSpec

if TYPE_CHECKING:
    from ksmfs.kernel import Kernel

TRACE_SIZE = 0
RW = 0o640  # tracefs: -rw-r----- [LIVE]
RO = 0o440  # tracefs: -r--r----- [LIVE]
NR_CPUS = 2

# Event ids of the live machine (they depend on the kernel build; spec §4).
EVENT_IDS = {
    "ksm_advisor": 741,
    "ksm_remove_rmap_item": 742,
    "ksm_remove_ksm_page": 743,
    "ksm_merge_with_ksm_page": 744,
    "ksm_merge_one_page": 745,
    "ksm_exit": 746,
    "ksm_enter": 747,
    "ksm_stop_scan": 748,
    "ksm_start_scan": 749,
}

_COMMON = (
    "\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n"
    "\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n"
    "\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n"
    "\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n"
    "\n"
)

# (fields as "type name;offset;size;signed", print fmt line) per event, copied from
# /sys/kernel/tracing/events/ksm/*/format of the live kernel.
_FORMATS: dict[str, tuple[list[tuple[str, int, int, int]], str]] = {
    "ksm_advisor": (
        [("s64 scan_time", 8, 8, 1), ("unsigned long pages_to_scan", 16, 8, 0),
         ("unsigned int cpu_percent", 24, 4, 0)],
        '"ksm scan time %lld pages_to_scan %lu cpu percent %u", REC->scan_time, '
        "REC->pages_to_scan, REC->cpu_percent",
    ),
    "ksm_enter": ([("void * mm", 8, 8, 0)], '"mm %p", REC->mm'),
    "ksm_exit": ([("void * mm", 8, 8, 0)], '"mm %p", REC->mm'),
    "ksm_merge_one_page": (
        [("unsigned long pfn", 8, 8, 0), ("void * rmap_item", 16, 8, 0),
         ("void * mm", 24, 8, 0), ("int err", 32, 4, 1)],
        '"ksm pfn %lu rmap_item %p mm %p error %d", REC->pfn, REC->rmap_item, REC->mm, '
        "REC->err",
    ),
    "ksm_merge_with_ksm_page": (
        [("void * ksm_page", 8, 8, 0), ("unsigned long pfn", 16, 8, 0),
         ("void * rmap_item", 24, 8, 0), ("void * mm", 32, 8, 0), ("int err", 40, 4, 1)],
        '"%spfn %lu rmap_item %p mm %p error %d", (REC->ksm_page ? "ksm " : ""), REC->pfn, '
        "REC->rmap_item, REC->mm, REC->err",
    ),
    "ksm_remove_ksm_page": ([("unsigned long pfn", 8, 8, 0)], '"pfn %lu", REC->pfn'),
    "ksm_remove_rmap_item": (
        [("unsigned long pfn", 8, 8, 0), ("void * rmap_item", 16, 8, 0),
         ("void * mm", 24, 8, 0)],
        '"pfn %lu rmap_item %p mm %p", REC->pfn, REC->rmap_item, REC->mm',
    ),
    "ksm_start_scan": (
        [("int seq", 8, 4, 1), ("u32 rmap_entries", 12, 4, 0)],
        '"seq %d rmap size %d", REC->seq, REC->rmap_entries',
    ),
    "ksm_stop_scan": (
        [("int seq", 8, 4, 1), ("u32 rmap_entries", 12, 4, 0)],
        '"seq %d rmap size %d", REC->seq, REC->rmap_entries',
    ),
}  # fmt: skip


def format_text(event: str) -> str:
    """The content of events/ksm/<event>/format."""
    fields, fmt = _FORMATS[event]
    body = "".join(
        f"\tfield:{decl};\toffset:{off};\tsize:{size};\tsigned:{signed};\n"
        for decl, off, size, signed in fields
    )
    return f"name: {event}\nID: {EVENT_IDS[event]}\nformat:\n{_COMMON}{body}\nprint fmt: {fmt}\n"


# -- %p -------------------------------------------------------------------------------------
def hash_pointer(value, kind: str = "") -> str:
    """%p as printed by ptr_to_id() on 64-bit: NULL (None) as 16 zeros, anything else as a
    32-bit hash zero-padded to 16 hex digits.  The kernel uses siphash with a boot-time
    key; a keyed blake2b gives the same shape.  The simulation passes small ids (an mm id,
    a gpid for an rmap_item), so ``kind`` salts the hash: mm 5 and rmap_item 5 differ, as
    two real objects would.  Stable per (kind, value)."""
    if value is None:
        return "0" * 16
    if isinstance(value, int):
        raw = (value & (2**64 - 1)).to_bytes(8, "little")
    elif isinstance(value, str | bytes):
        raw = value.encode() if isinstance(value, str) else value
    else:
        raw = id(value).to_bytes(8, "little")
    digest = hashlib.blake2b(raw, digest_size=4, key=b"ksmfs-ptr", salt=kind.encode()[:16])
    return f"{int.from_bytes(digest.digest(), 'little'):016x}"


def _lu(value) -> int:
    """%lu: the C unsigned long view of a (possibly negative) Python int."""
    return int(value) & (2**64 - 1)


def _d(value) -> int:
    """%d: the C int view (u32 rmap_entries printed with %d wraps like the kernel)."""
    v = int(value) & 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def event_text(event: str, f: dict) -> str:
    """TP_printk() of include/trace/events/ksm.h (the "print fmt" lines above)."""

    def p(name: str) -> str:
        return hash_pointer(f.get(name), name)

    if event in ("ksm_start_scan", "ksm_stop_scan"):
        return f"seq {_d(f['seq'])} rmap size {_d(f['rmap_entries'])}"
    if event in ("ksm_enter", "ksm_exit"):
        return f"mm {p('mm')}"
    if event == "ksm_merge_one_page":
        return (
            f"ksm pfn {_lu(f['pfn'])} rmap_item {p('rmap_item')} mm {p('mm')} "
            f"error {_d(f.get('err', 0))}"
        )
    if event == "ksm_merge_with_ksm_page":
        # (REC->ksm_page ? "ksm " : ""): the simulation passes None for NULL and a frame
        # number (0 included) for a KSM page.
        prefix = "" if f.get("ksm_page") is None else "ksm "
        return (
            f"{prefix}pfn {_lu(f['pfn'])} rmap_item {p('rmap_item')} mm {p('mm')} "
            f"error {_d(f.get('err', 0))}"
        )
    if event == "ksm_remove_ksm_page":
        return f"pfn {_lu(f['pfn'])}"
    if event == "ksm_remove_rmap_item":
        return f"pfn {_lu(f['pfn'])} rmap_item {p('rmap_item')} mm {p('mm')}"
    if event == "ksm_advisor":
        return (
            f"ksm scan time {int(f['scan_time'])} pages_to_scan {_lu(f['pages_to_scan'])} "
            f"cpu percent {int(f['cpu_percent']) & 0xFFFFFFFF}"
        )
    # An event this table does not know: name=value pairs.
    return " ".join(f"{key}={val}" for key, val in f.items())


def render_record(r) -> str:
    """One line of `trace` / `trace_pipe` (trace_print_context + print fmt)."""
    ts_ns = getattr(r, "ts_ns", None)
    usecs = int(ts_ns) // 1000 if ts_ns is not None else int(r.ts_ms) * 1000
    secs, usec = divmod(usecs, 1_000_000)
    cpu = getattr(r, "cpu", 0)
    comm = str(r.comm)[:15]
    return (
        f"{comm:>16}-{int(r.pid):<7} [{int(cpu):03d}] ..... {secs:5d}.{usec:06d}: "
        f"{r.event}: {event_text(r.event, r.fields)}\n"
    )


TRACE_HEADER = (
    "# tracer: nop\n"
    "#\n"
    "# entries-in-buffer/entries-written: {entries}/{written}   #P:{ncpu}\n"
    "#\n"
    "#                                _-----=> irqs-off/BH-disabled\n"
    "#                               / _----=> need-resched\n"
    "#                              | / _---=> hardirq/softirq\n"
    "#                              || / _--=> preempt-depth\n"
    "#                              ||| / _-=> migrate-disable\n"
    "#                              |||| /     delay\n"
    "#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION\n"
    "#              | |         |   |||||     |         |\n"
)


def show_trace(k: Kernel, pid: int | None = None) -> bytes:
    records = list(k.trace.records)
    written = getattr(k.trace, "written", None)
    if written is None:
        written = len(records)
    head = TRACE_HEADER.format(entries=len(records), written=int(written), ncpu=NR_CPUS)
    return (head + "".join(render_record(r) for r in records)).encode()


def store_trace(k: Kernel, pid: int | None, data: bytes) -> int:
    # tracing_write_stub(): writes are accepted and ignored; clearing is the O_TRUNC open.
    return len(data)


def truncate_trace(k: Kernel, pid: int | None) -> None:
    """tracing_open() with O_TRUNC: tracing_reset_online_cpus() empties the buffer."""
    clear = getattr(k.trace, "clear", None)
    if callable(clear):
        clear()
    else:
        k.trace.records.clear()


# -- trace_pipe ------------------------------------------------------------------------------
@dataclass
class TraceReader:
    """Per-open state of a trace_pipe reader: the seq of the last record it consumed."""

    last_seq: int = 0


def read_stream(kernel: Kernel, reader: TraceReader, max_bytes: int | None = None) -> bytes:
    """Non-blocking trace_pipe read: the records after ``reader.last_seq`` rendered, or b""
    when there is nothing new (the adapter then waits and calls again).

    Like the kernel's ring-buffer consuming read, only whole lines are returned (at least
    one, even if longer than max_bytes) and the records handed out are consumed: they
    leave ``trace`` too (TraceBuffer.consume(seq) when the kernel has it).
    """
    out: list[str] = []
    size = 0
    last = reader.last_seq
    for r in kernel.trace.since(reader.last_seq):
        line = render_record(r)
        if out and max_bytes is not None and size + len(line) > max_bytes:
            break
        out.append(line)
        size += len(line)
        last = r.seq
    if not out:
        return b""
    reader.last_seq = last
    _consume(kernel, last)
    return "".join(out).encode()


def _consume(k: Kernel, seq: int) -> None:
    consume = getattr(k.trace, "consume", None)
    if callable(consume):
        consume(seq)
        return
    records = k.trace.records
    if isinstance(records, list):
        records[:] = [r for r in records if r.seq > seq]


# -- knobs -----------------------------------------------------------------------------------
def _parse_ulong(data: bytes, what: str) -> int:
    """kstrtoul_from_user(base 10): digits and one optional trailing newline."""
    text = data.decode("ascii", "replace")
    body = text[:-1] if text.endswith("\n") else text
    if body.startswith("+"):
        body = body[1:]
    if not body.isdigit() or not body.isascii():
        raise einval(f"{what}: expected a decimal number, got {text!r}")
    value = int(body)
    if value >= 2**64:
        raise KsmError(errno.ERANGE, f"{what}: {body} is out of range")
    return value


def show_tracing_on(k: Kernel, pid: int | None = None) -> bytes:
    return b"1\n" if k.trace.tracing_on else b"0\n"


def store_tracing_on(k: Kernel, pid: int | None, data: bytes) -> int:
    # rb_simple_write(): any non-zero number turns the ring buffer on.
    if not data:
        return 0
    k.trace.tracing_on = _parse_ulong(data, "tracing_on") != 0
    return len(data)


def _events(k: Kernel) -> list[str]:
    return [e for e in k.version.trace_events if e in EVENT_IDS]


def show_system_enable(k: Kernel, pid: int | None = None) -> bytes:
    """system_enable_read(): 0 none, 1 all, X mixed."""
    states = {e in k.trace.enabled for e in _events(k)}
    if states == {True}:
        return b"1\n"
    if states == {False} or not states:
        return b"0\n"
    return b"X\n"


def _parse_enable(data: bytes, what: str) -> bool:
    value = _parse_ulong(data, what)
    if value not in (0, 1):  # event_enable_write / system_enable_write: only 0 or 1
        raise einval(f"{what}: expected 0 or 1, got {value}")
    return value == 1


def _set_enabled(k: Kernel, event: str, on: bool) -> None:
    enable = getattr(k.trace, "enable", None)
    if callable(enable):
        enable(event, on)
    elif on:
        k.trace.enabled.add(event)
    else:
        k.trace.enabled.discard(event)


def store_system_enable(k: Kernel, pid: int | None, data: bytes) -> int:
    if not data:
        return 0
    on = _parse_enable(data, "events/ksm/enable")
    for event in _events(k):
        _set_enabled(k, event, on)
    return len(data)


def _event_specs(event: str) -> list[FileSpec]:
    def show_enable(k: Kernel, pid: int | None = None) -> bytes:
        return b"1\n" if event in k.trace.enabled else b"0\n"

    def store_enable(k: Kernel, pid: int | None, data: bytes) -> int:
        if not data:
            return 0
        _set_enabled(k, event, _parse_enable(data, f"events/ksm/{event}/enable"))
        return len(data)

    fmt = format_text(event).encode()
    ident = b"%d\n" % EVENT_IDS[event]
    return [
        FileSpec("enable", RW, TRACE_SIZE, show_enable, store_enable),
        FileSpec("format", RO, TRACE_SIZE, lambda k, pid=None: fmt, None),
        FileSpec("id", RO, TRACE_SIZE, lambda k, pid=None: ident, None),
    ]


def tree_specs(version) -> list[tuple[tuple[str, ...], list[FileSpec]]]:
    """(subdirectory of sys/kernel/tracing, rows) pairs, in listing order."""
    top = [
        FileSpec("trace", RW, TRACE_SIZE, show_trace, store_trace, truncate=truncate_trace),
        FileSpec("trace_pipe", RO, TRACE_SIZE, None, None, stream=True),
        FileSpec("tracing_on", RW, TRACE_SIZE, show_tracing_on, store_tracing_on),
    ]
    out: list[tuple[tuple[str, ...], list[FileSpec]]] = [
        ((), top),
        (("events", "ksm"), [
            FileSpec("enable", RW, TRACE_SIZE, show_system_enable, store_system_enable)
        ]),
    ]  # fmt: skip
    events = sorted(e for e in version.trace_events if e in EVENT_IDS)
    if not events:  # before 6.4 there is no events/ksm system at all
        return out[:1]
    for event in events:
        out.append((("events", "ksm", event), _event_specs(event)))
    return out

"""/sys/kernel/tracing: tracing_on, trace, trace_pipe and events/ksm/*.

Modes, formats and event ids are those of the live 6.18 tracefs (a temporary
``mount -t tracefs`` on the reference machine): files are 0640/0440 there, not 0644/0444.
Records are printed like kernel/trace/trace.c print_trace_fmt() with the default options
(context info, irq info): ``%16s-%-7d [%03d] %5s %5llu.%06lu: <event>: <TP_printk>``.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from ksmfs.kernel.trace import EventFilter, Trigger
from ksmfs.kfs.errors import KsmError, einval
from ksmfs.kfs.spec import FileSpec

if TYPE_CHECKING:
    from ksmfs.kernel import Kernel
    from ksmfs.kernel.trace import TraceRecord
    from ksmfs.kernel.versions import KernelProfile

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
def hash_pointer(value: object, kind: str = "") -> str:
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


def _lu(value: Any) -> int:
    """%lu: the C unsigned long view of a (possibly negative) Python int."""
    return int(value) & (2**64 - 1)


def _d(value: Any) -> int:
    """%d: the C int view (u32 rmap_entries printed with %d wraps like the kernel)."""
    v = int(value) & 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def event_text(event: str, f: dict[str, Any]) -> str:
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


def render_record(r: TraceRecord) -> str:
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
    # entries-written counts the records the full ring dropped too (TraceBuffer.written)
    head = TRACE_HEADER.format(entries=len(records), written=k.trace.written, ncpu=NR_CPUS)
    return (head + "".join(render_record(r) for r in records)).encode()


def store_trace(k: Kernel, pid: int | None, data: bytes) -> int:
    # tracing_write_stub(): writes are accepted and ignored; clearing is the O_TRUNC open.
    return len(data)


def truncate_trace(k: Kernel, pid: int | None) -> None:
    """tracing_open() with O_TRUNC: tracing_reset_online_cpus() empties the buffer."""
    k.trace.clear()


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
    leave ``trace`` too (TraceBuffer.consume).
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
    kernel.trace.consume(last)
    return "".join(out).encode()


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


def _soft_mode(k: Kernel, event: str) -> bool:
    """EVENT_FILE_FL_SOFT_MODE: an event with triggers, or the target of an
    enable_event/disable_event trigger, keeps its tracepoint on while not enabled."""
    if event in k.trace.triggers:
        return True
    return any(t.target == event for ts in k.trace.triggers.values() for t in ts)


def show_system_enable(k: Kernel, pid: int | None = None) -> bytes:
    """system_enable_read(): 0 none, 1 all, X mixed -- of EVENT_FILE_FL_ENABLED, which
    soft mode sets too [live: one trigger on ksm_start_scan makes it X]."""
    states = {e in k.trace.enabled or _soft_mode(k, e) for e in _events(k)}
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
    k.trace.enable(event, on)


def store_system_enable(k: Kernel, pid: int | None, data: bytes) -> int:
    if not data:
        return 0
    on = _parse_enable(data, "events/ksm/enable")
    for event in _events(k):
        _set_enabled(k, event, on)
    return len(data)


# -- filter: kernel/trace/trace_events_filter.c ----------------------------------------------
# The parser follows predicate_parse() / parse_pred() step by step, because the error text
# the filter file shows afterwards points with a caret at the position the kernel reached.
FILT_ERRORS = {
    "INVALID_OP": "Invalid operator",
    "TOO_MANY_OPEN": "Too many '('",
    "TOO_MANY_CLOSE": "Too few '('",
    "MISSING_QUOTE": "Missing matching quote",
    "OPERAND_TOO_LONG": "Operand too long",
    "EXPECT_STRING": "Expecting string field",
    "EXPECT_DIGIT": "Expecting numeric field",
    "ILLEGAL_FIELD_OP": "Illegal operation for field type",
    "FIELD_NOT_FOUND": "Field not found",
    "ILLEGAL_INTVAL": "Illegal integer value",
    "BAD_SUBSYS_FILTER": "Couldn't find or set field in one of a subsystem's events",
    "TOO_MANY_PREDS": "Too many terms in predicate expression",
    "INVALID_VALUE": "Invalid value (did you forget quotes)?",
}
# ops[] in the kernel's order: a longer operator is tried before its prefix
FILTER_OPS = ("~", "!=", "==", "<=", "<", ">=", ">", "&")
SYSTEM_FILTER_TEXT = (
    b"### global filter ###\n"
    b"# Use this to set filters for multiple events.\n"
    b"# Only events with the given fields will be affected.\n"
    b"# If no events are modified, an error message will be displayed here\n"
)
TRIGGER_HELP = b"# Available triggers:\n# traceon traceoff stacktrace enable_event disable_event\n"
_NUM_BUF = 24  # parse_pred()'s num_buf: "0xfeedfacedeadbeef" and its terminator


class FilterError(Exception):
    """A refused filter: the errno of the write and the text the filter file then shows
    (append_filter_err(): the string, a caret under the position, the parse error)."""

    def __init__(self, err: int, code: str | None = None, pos: int = 0) -> None:
        super().__init__(code or "error")
        self.errno = err
        self.code = code
        self.pos = pos

    def text(self, filter_string: str) -> str:
        if self.code is None:
            return f"{filter_string}\nError: (0)\n"
        pos = min(self.pos, len(filter_string))
        return f"{filter_string}\n{' ' * pos}^\nparse_error: {FILT_ERRORS[self.code]}\n"


@dataclass(frozen=True)
class _Field:
    name: str
    size: int
    signed: bool
    string: bool = False


def _event_fields(event: str) -> dict[str, _Field]:
    """Fields a filter may name: the event's, the common ones, and COMM/CPU."""
    out = {
        "common_type": _Field("common_type", 2, False),
        "common_flags": _Field("common_flags", 1, False),
        "common_preempt_count": _Field("common_preempt_count", 1, False),
        "common_pid": _Field("common_pid", 4, True),
        "CPU": _Field("CPU", 4, True),
        "cpu": _Field("CPU", 4, True),
        "COMM": _Field("COMM", 16, False, True),
        "comm": _Field("COMM", 16, False, True),
    }
    for decl, _off, size, signed in _FORMATS[event][0]:
        name = decl.split()[-1]
        out[name] = _Field(name, size, bool(signed))
    return out


def _c_int(text: str, signed: bool) -> int | None:
    """kstrtoll / kstrtoull with base 0: 0x hex, leading 0 octal, else decimal."""
    body = text[1:] if signed and text.startswith("-") else text
    try:
        if body[:2].lower() == "0x":
            value = int(body[2:], 16) if body[2:] else None
        elif len(body) > 1 and body[0] == "0":
            value = int(body[1:], 8)
        else:
            value = int(body, 10) if body.isdigit() else None
    except ValueError:
        return None
    if value is None or not body.isalnum():
        return None
    if text.startswith("-"):
        value = -value
        return value if value >= -(1 << 63) else None
    return value if value < (1 << 64) and (not signed or value < (1 << 63)) else None


def _glob_pred(pattern: str) -> tuple[Callable[[str], bool], bool]:
    """filter_parse_regex(): '!' inverts; '*x', 'x*', '*x*' are end/front/middle
    matches; any other '*', '?', '[' or '\\' makes it a full glob."""
    negate = pattern.startswith("!")
    if negate:
        pattern = pattern[1:]
    body = pattern
    inner = body[1:-1] if len(body) >= 2 else ""
    if any(c in body for c in "[?\\") or ("*" in inner):
        return (lambda s: fnmatch.fnmatchcase(s, body)), negate
    if body.startswith("*") and body.endswith("*") and len(body) > 1:
        mid = body[1:-1]
        return (lambda s: mid in s), negate
    if body.startswith("*"):
        end = body[1:]
        return (lambda s: s.endswith(end)), negate
    if body.endswith("*"):
        front = body[:-1]
        return (lambda s: s.startswith(front)), negate
    return (lambda s: s == body), negate


def _parse_pred(
    text: str, at: int, pos: int, fields: dict[str, _Field]
) -> tuple[int, EventFilter]:
    """parse_pred() on text[at:]; returns (chars consumed, predicate function)."""
    n = len(text)

    def ch(j: int) -> str:
        return text[at + j] if at + j < n else "\0"

    i = 0
    while ch(i).isspace():
        i += 1
    s0 = i
    while ch(i).isalnum() or ch(i) == "_":
        i += 1
    if i == s0:
        raise FilterError(errno.EPERM)  # no field name: parse_pred() returns -1
    field = fields.get(text[at + s0 : at + i])
    if field is None:
        raise FilterError(errno.EINVAL, "FIELD_NOT_FOUND", pos + i)
    while ch(i).isspace():
        i += 1
    op = next((o for o in FILTER_OPS if text.startswith(o, at + i)), None)
    if op is None:
        raise FilterError(errno.EINVAL, "INVALID_OP", pos + i)
    i += len(op)
    while ch(i).isspace():
        i += 1
    s0 = i
    c = ch(i)
    if c in "'\"":
        if op not in ("==", "!=", "~"):
            raise FilterError(errno.EINVAL, "ILLEGAL_FIELD_OP", pos + i)
        if not field.string:
            raise FilterError(errno.EINVAL, "EXPECT_DIGIT", pos + i)
        i += 1
        while ch(i) not in (c, "\0"):
            i += 1
        if ch(i) == "\0":
            raise FilterError(errno.EINVAL, "MISSING_QUOTE", pos + i)
        text_value = text[at + s0 + 1 : at + i]
        i += 1
        match: Callable[[str], bool]
        if op == "~":
            match, negate = _glob_pred(text_value)
        else:
            match, negate = (lambda x: x == text_value), op == "!="

        def on_comm(pid: int, comm: str, f: dict[str, Any]) -> bool:
            return match(comm) != negate

        return i, on_comm
    if c.isdigit() or c == "-":
        if field.string:
            raise FilterError(errno.EINVAL, "EXPECT_STRING", pos + i)
        if op == "~":
            raise FilterError(errno.EINVAL, "ILLEGAL_FIELD_OP", pos + i)
        if c == "-":
            i += 1
        while ch(i).isalnum():
            i += 1
        if i - s0 >= _NUM_BUF:
            raise FilterError(errno.EINVAL, "OPERAND_TOO_LONG", pos + i)
        number = _c_int(text[at + s0 : at + i], field.signed)
        if number is None:
            raise FilterError(errno.EINVAL, "ILLEGAL_INTVAL", pos + s0)
        return i, _numeric_pred(field, op, number)
    raise FilterError(errno.EINVAL, "INVALID_VALUE", pos + i)


def _numeric_pred(field: _Field, op: str, value: int) -> EventFilter:
    """filter_pred_<OP>_<type>(): both sides cast to the field's C type."""
    bits = 8 * field.size
    mask = (1 << bits) - 1

    def to_field(v: int) -> int:
        v &= mask
        return v - (1 << bits) if field.signed and v >> (bits - 1) else v

    val = to_field(value)
    name = field.name

    def get(pid: int, f: dict[str, Any]) -> int:
        if name == "common_pid":
            return to_field(pid)
        if name in ("CPU", "common_flags", "common_preempt_count"):
            return 0
        if name == "common_type":
            return to_field(f.get("_id", 0))
        v = f.get(name)
        return to_field(int(v) if v is not None else 0)

    if op == "&":
        return lambda pid, comm, f: (get(pid, f) & val) != 0
    compare: Callable[[int], bool] = {
        "==": lambda a: a == val, "!=": lambda a: a != val, "<": lambda a: a < val,
        "<=": lambda a: a <= val, ">": lambda a: a > val, ">=": lambda a: a >= val,
    }[op]  # fmt: skip
    return lambda pid, comm, f: compare(get(pid, f))


def parse_filter(event: str, text: str) -> EventFilter:
    """predicate_parse(): the filter string (already stripped) of ``event`` as a function
    of (pid, comm, fields); raises FilterError.  '&&' binds tighter than '||'."""
    if not text:
        raise FilterError(errno.EINVAL)
    fields = _event_fields(event)
    n = len(text)
    out: list[object] = []  # predicates and '(' ')' '!' '&&' '||', in order
    depth = 0
    ptr = 0
    while ptr < n:
        nxt = ptr
        ptr += 1
        c = text[nxt]
        if c.isspace():
            continue
        if c == "(":
            depth += 1
            out.append("(")
            continue
        if c == "!" and text[nxt + 1 : nxt + 2] not in ("=", "~"):
            out.append("!")
            continue
        length, pred = _parse_pred(text, nxt, ptr, fields)
        out.append(pred)
        ptr = nxt + length
        while True:
            nxt = ptr
            ptr += 1
            c = text[nxt] if nxt < n else "\0"
            if c.isspace():
                continue
            if c in "&|":
                if text[nxt + 1 : nxt + 2] != c:
                    raise FilterError(errno.EPERM, "TOO_MANY_PREDS", nxt)
                ptr += 1
                out.append(c * 2)
                break
            if c == "\0":
                break
            if c != ")":
                raise FilterError(errno.EPERM, "TOO_MANY_PREDS", nxt)
            if depth == 0:
                raise FilterError(errno.EPERM, "TOO_MANY_CLOSE", nxt)
            depth -= 1
            out.append(")")
        if c == "\0":
            break
    if depth:
        # live 6.18: ENOENT, the caret at the start
        raise FilterError(errno.ENOENT, "TOO_MANY_OPEN", 0)
    if not any(callable(t) for t in out):
        raise FilterError(errno.EINVAL)
    return _compile(out)


def _compile(tokens: list[object]) -> EventFilter:
    """The token list as one function (precedence: ! over && over ||)."""
    pos = 0

    def expr_or() -> EventFilter:
        nonlocal pos
        terms = [expr_and()]
        while pos < len(tokens) and tokens[pos] == "||":
            pos += 1
            if pos < len(tokens) and tokens[pos] != ")":
                terms.append(expr_and())
        return terms[0] if len(terms) == 1 else (lambda p, c, f: any(t(p, c, f) for t in terms))

    def expr_and() -> EventFilter:
        nonlocal pos
        terms = [unary()]
        while pos < len(tokens) and tokens[pos] == "&&":
            pos += 1
            if pos < len(tokens) and tokens[pos] not in (")", "||"):
                terms.append(unary())
        return terms[0] if len(terms) == 1 else (lambda p, c, f: all(t(p, c, f) for t in terms))

    def unary() -> EventFilter:
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok == "!":
            inner = unary()
            return lambda p, c, f: not inner(p, c, f)
        if tok == "(":
            inner = expr_or()
            pos += 1  # ')'
            return inner
        assert callable(tok)
        return cast(EventFilter, tok)

    return expr_or()


def _filter_state(k: Kernel) -> dict[str, str]:
    """The text each event's filter file shows (absent: "none")."""
    return k.trace.filter_text


def _apply_filter(k: Kernel, event: str, text: str) -> None:
    """apply_event_filter(): "0" removes the filter; a bad one stays shown with its error
    and the event goes unfiltered (filter_disable())."""
    texts = _filter_state(k)
    if text == "0":
        texts.pop(event, None)
        k.trace.filters.pop(event, None)
        return
    try:
        pred = parse_filter(event, text)
    except FilterError as e:
        texts[event] = e.text(text)
        k.trace.filters.pop(event, None)
        raise
    texts[event] = text
    ident = EVENT_IDS[event]
    k.trace.filters[event] = lambda pid, comm, f: pred(pid, comm, {**f, "_id": ident})


def _filter_arg(data: bytes) -> str:
    # memdup_user_nul() then strstrip(): surrounding blanks and the newline go
    return data.decode("utf-8", "replace").strip()


def show_system_filter(k: Kernel, pid: int | None = None) -> bytes:
    return SYSTEM_FILTER_TEXT


def store_system_filter(k: Kernel, pid: int | None, data: bytes) -> int:
    """apply_subsystem_event_filter(): every event of the system gets the filter; an event
    without one of its fields (or a filter that does not parse) shows the subsystem error
    and is left unfiltered.  The write itself succeeds [live 6.18, even when no event took
    the filter], and the system's own file keeps its help text."""
    text = _filter_arg(data)
    for event in _events(k):
        try:
            _apply_filter(k, event, text)
        except FilterError:
            err = FilterError(errno.EINVAL, "BAD_SUBSYS_FILTER", 0)
            _filter_state(k)[event] = err.text(text)
    return len(data)


def _filter_specs(event: str) -> FileSpec:
    def show(k: Kernel, pid: int | None = None) -> bytes:
        return (_filter_state(k).get(event, "none") + "\n").encode()

    def store(k: Kernel, pid: int | None, data: bytes) -> int:
        try:
            _apply_filter(k, event, _filter_arg(data))
        except FilterError as e:
            shown = e.text(_filter_arg(data))
            raise KsmError(e.errno, f"events/ksm/{event}/filter: {shown!r}") from None
        return len(data)

    return FileSpec("filter", RW, TRACE_SIZE, show, store)


# -- trigger: kernel/trace/trace_events_trigger.c ---------------------------------------------
def _trigger_line(t: Trigger) -> str:
    """event_trigger_print() / event_enable_trigger_print()."""
    name = f"{t.command}:ksm:{t.target}" if t.target is not None else t.command
    count = ":unlimited" if t.count == -1 else f":count={t.count}"
    cond = f" if {t.filter_text}" if t.filter_text is not None else ""
    return f"{name}{count}{cond}\n"


def _same_kind(a: Trigger, b: Trigger) -> bool:
    """Registration refuses a second trigger of a type (EEXIST): traceon and traceoff are
    one type (ETT_TRACE_ONOFF); enable/disable_event are one per target event."""
    kind = {"traceon": "onoff", "traceoff": "onoff"}
    if a.target is not None or b.target is not None:
        return a.target == b.target and a.target is not None and b.target is not None
    return kind.get(a.command, a.command) == kind.get(b.command, b.command)


def _parse_trigger(k: Kernel, event: str, text: str) -> tuple[bool, Trigger]:
    """trigger_process_regex() + event_trigger_parse(): ("!" removes, the trigger)."""
    remove = text.startswith("!")
    body = text[1:] if remove else text
    cmd_part, _, cond = body.partition(" if ")
    words = cmd_part.strip().split(":")
    command = words[0]
    if command not in ("traceon", "traceoff", "stacktrace", "enable_event", "disable_event"):
        raise einval(f"events/ksm/{event}/trigger: unknown trigger {command!r}")
    target = None
    if command in ("enable_event", "disable_event"):
        if len(words) < 3 or words[1] != "ksm" or words[2] not in _events(k):
            raise einval(f"events/ksm/{event}/trigger: {command} needs ksm:EVENT")
        target = words[2]
        words = words[2:]
    count = -1
    if len(words) > 2:
        raise einval(f"events/ksm/{event}/trigger: too many ':' in {cmd_part!r}")
    if len(words) == 2:
        if not words[1]:
            raise einval(f"events/ksm/{event}/trigger: empty count")
        parsed = _c_int(words[1], False)
        if parsed is None:
            raise einval(f"events/ksm/{event}/trigger: bad count {words[1]!r}")
        count = parsed
    condition = None
    cond = cond.strip()
    if cond and not remove:
        try:
            condition = parse_filter(event, cond)
        except FilterError as e:
            raise KsmError(errno.EINVAL, f"events/ksm/{event}/trigger: {e.text(cond)!r}") from None
    return remove, Trigger(command, count, target, condition, cond or None)


def _trigger_specs(event: str) -> FileSpec:
    def show(k: Kernel, pid: int | None = None) -> bytes:
        triggers = k.trace.triggers.get(event)
        if not triggers:
            return TRIGGER_HELP
        return "".join(_trigger_line(t) for t in triggers).encode()

    def store(k: Kernel, pid: int | None, data: bytes) -> int:
        # event_trigger_regex_write(): strim(); an empty command is EINVAL ("0" too)
        text = data.decode("utf-8", "replace").strip()
        if not text:
            raise einval(f"events/ksm/{event}/trigger: empty trigger")
        remove, trig = _parse_trigger(k, event, text)
        current = k.trace.triggers.get(event, [])
        if remove:
            left = [t for t in current
                    if not (t.command == trig.command and t.target == trig.target)]
        else:
            if any(_same_kind(t, trig) for t in current):
                raise KsmError(
                    errno.EEXIST, f"events/ksm/{event}/trigger: {trig.command} is already set"
                )
            left = [trig, *current]
        if left:
            k.trace.triggers[event] = left
        else:
            k.trace.triggers.pop(event, None)
        return len(data)

    return FileSpec("trigger", RW, TRACE_SIZE, show, store)


def _event_specs(event: str) -> list[FileSpec]:
    def show_enable(k: Kernel, pid: int | None = None) -> bytes:
        # event_enable_read(): "1" when recording, "*" appended in soft mode
        text = "1" if event in k.trace.enabled else "0"
        return (text + ("*" if _soft_mode(k, event) else "") + "\n").encode()

    def store_enable(k: Kernel, pid: int | None, data: bytes) -> int:
        if not data:
            return 0
        _set_enabled(k, event, _parse_enable(data, f"events/ksm/{event}/enable"))
        return len(data)

    fmt = format_text(event).encode()
    ident = b"%d\n" % EVENT_IDS[event]
    return [
        FileSpec("enable", RW, TRACE_SIZE, show_enable, store_enable),
        _filter_specs(event),
        FileSpec("format", RO, TRACE_SIZE, lambda k, pid: fmt, None),
        FileSpec("id", RO, TRACE_SIZE, lambda k, pid: ident, None),
        _trigger_specs(event),
    ]


def tree_specs(version: KernelProfile) -> list[tuple[tuple[str, ...], list[FileSpec]]]:
    """(subdirectory of sys/kernel/tracing, rows) pairs, in listing order."""
    top = [
        FileSpec("trace", RW, TRACE_SIZE, show_trace, store_trace, truncate=truncate_trace),
        FileSpec("trace_pipe", RO, TRACE_SIZE, None, None, stream=True),
        FileSpec("tracing_on", RW, TRACE_SIZE, show_tracing_on, store_tracing_on),
    ]
    out: list[tuple[tuple[str, ...], list[FileSpec]]] = [
        ((), top),
        (("events", "ksm"), [
            FileSpec("enable", RW, TRACE_SIZE, show_system_enable, store_system_enable),
            FileSpec("filter", RW, TRACE_SIZE, show_system_filter, store_system_filter),
        ]),
    ]  # fmt: skip
    events = sorted(e for e in version.trace_events if e in EVENT_IDS)
    if not events:  # before 6.4 there is no events/ksm system at all
        return out[:1]
    for event in events:
        out.append((("events", "ksm", event), _event_specs(event)))
    return out

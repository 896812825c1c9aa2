"""KSM trace events (include/trace/events/ksm.h), recorded for tracefs to render.

The buffer follows the ring buffer of kernel/trace/ring_buffer.c as tracefs shows it:
records are kept only while ``tracing_on`` and only for enabled events that pass their
filter; a full ring drops its oldest records (overwrite mode, the default) and counts them
as overrun; a consuming read (trace_pipe) removes records; truncating ``trace`` empties
the ring and its counters.  The ``trace`` header's "entries-in-buffer/entries-written" is
``len(records)/written``: live, entries-written is the records in the ring plus the ones
the ring dropped (get_total_entries_cpu(): entries + overrun), so it falls by one for each
record consumed and goes back to 0 on truncation [measured on 6.18 with buffer_size_kb=4:
131/2005, then 123/1997 after 8 lines of trace_pipe, then 0/0 after ``> trace``].
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

# Names in the order of include/trace/events/ksm.h; ksm_advisor exists from 6.8.
KSM_EVENTS = (
    "ksm_start_scan",
    "ksm_stop_scan",
    "ksm_enter",
    "ksm_exit",
    "ksm_merge_one_page",
    "ksm_merge_with_ksm_page",
    "ksm_remove_ksm_page",
    "ksm_remove_rmap_item",
    "ksm_advisor",
)

# An event filter: takes (pid, comm, fields) of a record, says whether to keep it.
EventFilter = Callable[[int, str, dict[str, Any]], bool]


@dataclass
class Trigger:
    """One line of events/<system>/<event>/trigger (kernel/trace/trace_events_trigger.c).

    ``command``: traceon, traceoff, stacktrace, enable_event or disable_event; ``target``:
    the event an enable_event/disable_event trigger switches; ``count``: how many more
    times it may act (-1: unlimited); ``condition``: the ``if FILTER`` part, evaluated on
    the record (None: always).  Every trigger acts after its event's record is written."""

    command: str
    count: int = -1
    target: str | None = None
    condition: EventFilter | None = None
    filter_text: str | None = None


@dataclass(frozen=True)
class TraceRecord:
    seq: int
    ts_ns: int
    pid: int
    comm: str
    event: str
    fields: dict[str, int | str | None] = field(default_factory=dict)

    @property
    def ts_ms(self) -> int:
        return self.ts_ns // 1_000_000


class TraceBuffer:
    """A bounded ring of records of the enabled events.

    Nothing is recorded unless ``tracing_on`` and the event is enabled, so the scan pays
    one set lookup per event site when tracing is off.
    """

    def __init__(self, limit: int = 65536) -> None:
        self.enabled: set[str] = set()
        self.tracing_on = True
        self.records: list[TraceRecord] = []
        self.limit = limit
        # filter_match_preds(): an event with a filter keeps only the records it accepts
        self.filters: dict[str, EventFilter] = {}
        # the filter_string each event's filter file shows (a refused one with its error)
        self.filter_text: dict[str, str] = {}
        # the task the kernel runs for right now (pid, comm): a store's writer, whose
        # context run_store's unmerge runs in; None means ksmd's own context
        self.current: tuple[int, str] | None = None
        self.overrun = 0  # records the full ring dropped since the last reset
        # event -> its triggers, newest first (list_add_rcu at the head)
        self.triggers: dict[str, list[Trigger]] = {}
        self._seq = 0

    def want(self, event: str) -> bool:
        # an event with triggers fires even while it is not enabled or tracing is off
        # (the trigger keeps its tracepoint on in soft mode)
        return (self.tracing_on and event in self.enabled) or event in self.triggers

    def enable(self, event: str, on: bool) -> None:
        """events/<system>/<event>/enable (ftrace_event_enable_disable)."""
        if on:
            self.enabled.add(event)
        else:
            self.enabled.discard(event)

    def emit(self, ts_ns: int, pid: int, comm: str, event: str, **fields: int | str | None) -> None:
        triggers = self.triggers.get(event)
        if self.tracing_on and event in self.enabled:
            keep = self.filters.get(event)
            if keep is None or keep(pid, comm, fields):
                self._seq += 1
                self.records.append(TraceRecord(self._seq, ts_ns, pid, comm, event, fields))
                if len(self.records) > self.limit:
                    # like the ring buffer, which overwrites a whole page of events at a
                    # time, drop a block (1/16 of the ring): one list shift per block
                    drop = max(len(self.records) - self.limit, self.limit // 16)
                    del self.records[:drop]
                    self.overrun += drop
        # triggers act after the record is written [live 6.18: the ksm_start_scan line of
        # an unconditional traceoff trigger is in the buffer]
        if triggers:
            for t in triggers:
                if t.condition is None or t.condition(pid, comm, fields):
                    self._fire(t)

    def _fire(self, t: Trigger) -> None:
        """traceon/traceoff/event_enable *_count_trigger(): act only when it changes
        something, and count down only then."""
        if t.count == 0:
            return
        if t.command in ("traceon", "traceoff"):
            on = t.command == "traceon"
            if self.tracing_on == on:
                return
            self.tracing_on = on
        elif t.command in ("enable_event", "disable_event") and t.target is not None:
            on = t.command == "enable_event"
            if (t.target in self.enabled) == on:
                return
            self.enable(t.target, on)
        if t.count > 0:
            t.count -= 1

    @property
    def written(self) -> int:
        """entries-written of the ``trace`` header: records in the ring plus overrun."""
        return len(self.records) + self.overrun

    def since(self, seq: int) -> list[TraceRecord]:
        recs = self.records
        if not recs or recs[-1].seq <= seq:
            return []
        lo = max(0, len(recs) - (recs[-1].seq - seq))
        return [r for r in recs[lo:] if r.seq > seq]

    def consume(self, seq: int) -> None:
        """A consuming read (trace_pipe) took every record up to ``seq``."""
        recs = self.records
        n = 0
        while n < len(recs) and recs[n].seq <= seq:
            n += 1
        del recs[:n]

    def clear(self) -> None:
        """tracing_reset_online_cpus(): empty ring, counters back to 0."""
        self.records.clear()
        self.overrun = 0

    @contextmanager
    def running(self, pid: int, comm: str) -> Iterator[None]:
        """Events emitted inside come from task (pid, comm), not from ksmd."""
        saved = self.current
        self.current = (pid, comm)
        try:
            yield
        finally:
            self.current = saved

"""KSM trace events (include/trace/events/ksm.h), recorded for tracefs to render."""

from __future__ import annotations

from dataclasses import dataclass, field

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
        self._seq = 0

    def want(self, event: str) -> bool:
        return self.tracing_on and event in self.enabled

    def emit(self, ts_ns: int, pid: int, comm: str, event: str, **fields: int | str | None) -> None:
        if not self.want(event):
            return
        self._seq += 1
        self.records.append(TraceRecord(self._seq, ts_ns, pid, comm, event, fields))
        if len(self.records) > self.limit:
            del self.records[: len(self.records) - self.limit]

    def since(self, seq: int) -> list[TraceRecord]:
        recs = self.records
        if not recs or recs[-1].seq <= seq:
            return []
        lo = max(0, len(recs) - (recs[-1].seq - seq))
        return [r for r in recs[lo:] if r.seq > seq]

    def clear(self) -> None:
        self.records.clear()

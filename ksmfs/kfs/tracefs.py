"""/sys/kernel/tracing: tracing_on, trace, trace_pipe and events/ksm/*."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ksmfs.kfs.tree import FileSpec

if TYPE_CHECKING:
    from ksmfs.kernel import Kernel


@dataclass
class TraceReader:
    """Per-open state of a trace_pipe reader: the last record seq it consumed."""

    last_seq: int = 0


def read_stream(kernel: Kernel, reader: TraceReader) -> bytes:
    """Non-blocking trace_pipe read: rendered records newer than reader.last_seq, or b""."""
    return b""


def tree_specs(version) -> list[tuple[tuple[str, ...], list[FileSpec]]]:
    return []

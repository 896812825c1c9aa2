"""The simulated clock: the kernel never reads the wall clock (SimPy's Environment.now)."""

from __future__ import annotations


class SimClock:
    """Simulated time in nanoseconds since boot; ``now`` is whole milliseconds.

    Only the owner advances it: the scenario runner by ``sleep_millisecs`` per batch, the
    mount's ksmd task by the real time it slept times ``--speed``.
    """

    __slots__ = ("ns",)

    def __init__(self) -> None:
        self.ns = 0

    @property
    def now(self) -> int:
        return self.ns // 1_000_000

    def advance_ms(self, ms: float) -> None:
        if ms < 0:
            raise ValueError("time cannot go backwards")
        self.ns += int(ms * 1_000_000)

    def advance_ns(self, ns: int) -> None:
        self.ns += int(ns)

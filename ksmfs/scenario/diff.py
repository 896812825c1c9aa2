"""Compare two runs of one scenario (sim and real), snapshot by snapshot.

Snapshots are matched by their top-level ``full_scans``; within one, every leaf field is
compared: ``ksm.FILE``, ``processes.NAME.FIELD`` and ``processes.NAME.smaps_ksm_kb.VMA``.
A process present in one run and missing in the other is one difference
(``processes.NAME``), as is a snapshot present on one side only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ksmfs.scenario.model import Sysfs

Snapshot = dict[str, Any]

MISSING = None  # shown as "-" in reports


@dataclass(frozen=True)
class Difference:
    full_scans: int
    field: str
    sim: Any
    real: Any
    counted: bool = True  # False for fields allowed to differ (wall-time dependent)

    def line(self) -> str:
        note = "" if self.counted else "  (depends on wall time; not counted)"
        return (f"full_scans={self.full_scans} {self.field} sim={_show(self.sim)} "
                f"real={_show(self.real)}{note}")


@dataclass(frozen=True)
class DiffResult:
    differences: tuple[Difference, ...]
    cells: int  # leaf fields compared
    snapshots: int  # snapshot pairs looked at

    @property
    def counted(self) -> int:
        return sum(1 for d in self.differences if d.counted)

    @property
    def equal(self) -> bool:
        return self.counted == 0

    def summary(self) -> str:
        extra = len(self.differences) - self.counted
        tail = f" ({extra} more allowed to differ)" if extra else ""
        verdict = "identical" if self.equal else "DIFFERENT"
        return (f"{verdict}: compared {self.cells} cells in {self.snapshots} snapshots, "
                f"{self.counted} differences{tail}")


def _show(v: Any) -> str:
    return "-" if v is MISSING else str(v)


def flatten(snapshot: Snapshot) -> dict[str, Any]:
    """Leaf fields of one snapshot, keyed by dotted path (full_scans itself excluded)."""
    out: dict[str, Any] = {}
    for k, v in snapshot.get("ksm", {}).items():
        out[f"ksm.{k}"] = v
    for pname, stats in snapshot.get("processes", {}).items():
        out[f"processes.{pname}"] = True
        for k, v in stats.items():
            if isinstance(v, dict):
                for vk, vv in v.items():
                    out[f"processes.{pname}.{k}.{vk}"] = vv
            else:
                out[f"processes.{pname}.{k}"] = v
    return out


def compare(sim: Sequence[Snapshot], real: Sequence[Snapshot],
            allowed: Iterable[str] = ()) -> DiffResult:
    """Every differing field, in full-scan order. ``allowed`` names fields (``ksm.X``) that
    may differ; they are listed but not counted."""
    allowed = set(allowed)
    by_k_sim = {s["full_scans"]: s for s in sim}
    by_k_real = {s["full_scans"]: s for s in real}
    diffs: list[Difference] = []
    cells = 0
    keys = sorted(set(by_k_sim) | set(by_k_real))
    for k in keys:
        a, b = by_k_sim.get(k), by_k_real.get(k)
        if a is None or b is None:
            diffs.append(Difference(k, "snapshot", "present" if a else MISSING,
                                    "present" if b else MISSING))
            continue
        fa, fb = flatten(a), flatten(b)
        names = list(fa) + [n for n in fb if n not in fa]
        for name in names:
            cells += 1
            va, vb = fa.get(name, MISSING), fb.get(name, MISSING)
            if va == vb:
                continue
            if name.startswith("processes.") and name.count(".") == 1:
                # the process itself is missing on one side: one difference, not one per field
                va = "present" if va is True else va
                vb = "present" if vb is True else vb
            diffs.append(Difference(k, name, va, vb, counted=name not in allowed))
    # Drop per-field noise under a process that only one side has.
    gone = {(d.full_scans, d.field) for d in diffs
            if d.field.startswith("processes.") and d.field.count(".") == 1}
    diffs = [d for d in diffs if not any(
        (d.full_scans, p) in gone for p in _process_prefixes(d.field))]
    return DiffResult(tuple(diffs), cells, len(keys))


def _process_prefixes(field: str) -> list[str]:
    parts = field.split(".")
    if parts[0] != "processes" or len(parts) <= 2:
        return []
    return [".".join(parts[:2])]


def allowed_fields(scenario: Any) -> set[str]:
    """Fields the contract allows to differ: with the scan-time advisor on, pages_to_scan
    follows ksmd's measured scan time and CPU use (§3.14), so it depends on wall time."""
    values = [scenario.ksm.get("advisor_mode")]
    values += [v for s in scenario.steps if isinstance(s.action, Sysfs)
               for f, v in s.action.values if f == "advisor_mode"]
    if "scan-time" in values:
        return {"ksm.pages_to_scan"}
    return set()

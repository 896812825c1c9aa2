#!/usr/bin/env python3
"""Build time, snapshot time and peak RSS of the scale scenarios (scripts/scenarios).

For each scenario, best of ``--repeat`` runs (the machine may be shared):

* ``ksmfs run``: wall time and peak RSS (the child's ru_maxrss, the figure of
  ``/usr/bin/time -v``), in bytes per simulated page; the issue's bound is 32 B/page
  (512 MiB at 16M pages) and 2 GiB at 64M pages, interpreter included;
* in one process: the build (``SimBackend.start``: knobs, processes, fills) and the
  snapshots (all ``max_full_scans + 1`` of them) on the sim backend;
* with ``--mount``: ``ksmfs mount --scenario`` of it, held until ksmd has completed
  ``--mount-scans`` full scans (past the merging pass), then the server's VmHWM.

    python scripts/bench_memory.py                        # scale-16m
    python scripts/bench_memory.py scale-16m scale-64m --mount --repeat 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCENARIOS = HERE / "scenarios"
KSMFS = str(Path(sys.executable).parent / "ksmfs")
MIB = 1 << 20


def scenario_path(name: str) -> Path:
    p = Path(name)
    return p if p.suffix == ".toml" else SCENARIOS / f"{name}.toml"


def pages_of(path: Path) -> int:
    from ksmfs.scenario.loader import load_scenario

    sc = load_scenario(path)
    return sum(v.pages for p in sc.processes for v in p.vmas)


def timed_run(args: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of a command that must succeed."""
    t = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise RuntimeError(f"{' '.join(args)} failed: {err.strip()}")
    return time.perf_counter() - t, usage.ru_maxrss * 1024


def phases_child(path: str) -> None:
    """Build and snapshot times of one sim run in this (fresh) process: one JSON line.
    The run is the scenario driver's own (``drive``), on a SimBackend that times its
    ``start`` (the build) and its snapshots."""
    from ksmfs.scenario.driver import Snapshot, drive
    from ksmfs.scenario.loader import load_scenario
    from ksmfs.scenario.sim import SimBackend

    class TimedBackend(SimBackend):
        build_s = 0.0
        snapshots_s = 0.0

        def start(self) -> None:
            t = time.perf_counter()
            super().start()
            self.build_s += time.perf_counter() - t

        def snapshot(self, k: int) -> Snapshot:
            t = time.perf_counter()
            snap = super().snapshot(k)
            self.snapshots_s += time.perf_counter() - t
            return snap

    sc = load_scenario(path)
    b = TimedBackend(sc)
    drive(sc, b, lambda snap: None)
    print(json.dumps({"build_s": b.build_s, "snapshots_s": b.snapshots_s,
                      "snapshots": sc.max_full_scans + 1}))


def read_int(p: Path) -> int:
    return int(p.read_text().split()[0])


def mount_hwm(path: Path, scans: int, timeout: float) -> tuple[int, float]:
    """Mount the scenario, wait for ``scans`` full scans; (server VmHWM bytes, seconds)."""
    from ksmfs.runtime.mount import read_server_pid

    with tempfile.TemporaryDirectory(prefix="ksmfs-bench-") as tmp:
        mnt = Path(tmp) / "mnt"
        mnt.mkdir()
        t = time.perf_counter()
        r = subprocess.run([KSMFS, "mount", str(mnt), "--scenario", str(path)],
                           capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"mount failed: {r.stderr.strip()}")
        try:
            pid = read_server_pid(str(mnt))
            if pid is None:
                raise RuntimeError("no server pid for the mount")
            full = mnt / "sys/kernel/mm/ksm/full_scans"
            while read_int(full) < scans:
                if time.perf_counter() - t > timeout:
                    raise RuntimeError(f"the mount did not reach {scans} full scans in {timeout:.0f} s")
                time.sleep(0.2)
            with open(f"/proc/{pid}/status") as fh:
                hwm = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
            return hwm * 1024, time.perf_counter() - t
        finally:
            u = subprocess.run([KSMFS, "umount", str(mnt)], capture_output=True, text=True)
            if u.returncode:
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenarios", nargs="*", default=["scale-16m"],
                    help="names in scripts/scenarios or TOML files (default scale-16m)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per measurement; the best is shown")
    ap.add_argument("--mount", action="store_true", help="also the peak RSS of a mount")
    ap.add_argument("--mount-scans", type=int, default=3, help="full scans the mount runs (default 3)")
    ap.add_argument("--mount-timeout", type=float, default=900.0)
    ap.add_argument("--phases", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phases:
        phases_child(args.phases)
        return 0
    for name in args.scenarios:
        path = scenario_path(name)
        pages = pages_of(path)
        bound = 32 * pages if pages <= 16 << 20 else 2 << 30
        runs = [timed_run([KSMFS, "run", str(path)]) for _ in range(args.repeat)]
        wall = min(w for w, _ in runs)
        rss = min(r for _, r in runs)
        ph = []
        for _ in range(args.repeat):
            out = subprocess.run([sys.executable, __file__, "--phases", str(path)],
                                 capture_output=True, text=True, check=True)
            ph.append(json.loads(out.stdout.strip().splitlines()[-1]))
        build = min(p["build_s"] for p in ph)
        snaps = min(p["snapshots_s"] for p in ph)
        print(f"{path.stem} ({pages} pages): ksmfs run {wall:.2f} s, peak RSS {rss / MIB:.0f} MiB "
              f"= {rss / pages:.1f} B/page (bound {bound / MIB:.0f} MiB: "
              f"{'within' if rss <= bound else 'OVER'}); build {build:.2f} s, "
              f"{ph[0]['snapshots']} snapshots {snaps:.2f} s")
        if args.mount:
            hw = [mount_hwm(path, args.mount_scans, args.mount_timeout) for _ in range(args.repeat)]
            hwm = min(h for h, _ in hw)
            print(f"  mount: VmHWM {hwm / MIB:.0f} MiB = {hwm / pages:.1f} B/page after "
                  f"{args.mount_scans} full scans ({min(s for _, s in hw):.0f} s; "
                  f"{'within' if hwm <= bound else 'OVER'} the bound)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""How fast is a ksmfs mount compared with the real kernel's files, measured in one run?

* open-read-close latency (median, p99) and reads/s of
  ``sys/kernel/mm/ksm/pages_sharing`` and of ``proc/PID/ksm_stat`` on a mount, and of
  the real ``/sys/kernel/mm/ksm/pages_sharing`` and ``/proc/self/ksm_stat``, with the
  ratios (target: the mount at most 12x the real sysfs latency);
* the time to scrape every KSM file plus the ksm_stat of 1000 simulated processes, the
  way a monitoring agent would (target: under 1 s), cold (first pass, nothing cached in
  the kernel) and warm.

ksmd runs during the measurement (1000 processes with mergeable pages).  The figures are
printed, with ratios against minimal pyfuse3 and libfuse3 servers measured in the same
run; ``--notes`` also appends them to docs/NOTES.md.

    python scripts/bench_fs.py [--iterations 5000] [--procs 1000] [--notes]
    python scripts/bench_fs.py --merging scripts/scenarios/scale-16m.toml
        # a reader every millisecond through the merging pass of a 16M-page mount
    python scripts/bench_fs.py --smaps [--smaps-pages 4194304]
        # a reader every millisecond while smaps of a process with one 4M-page VMA is read
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REAL_KSM = Path("/sys/kernel/mm/ksm")
LATENCY_TARGET = 12.0  # x real sysfs
SCRAPE_TARGET = 1.0  # seconds

IDLE_SCENARIO = """\
name = "bench"
max_full_scans = 1
[[process]]
name = "init"
  [[process.vma]]
  name = "heap"
  pages = 1
"""


def ksmfs(*args: str) -> list[str]:
    return [sys.executable, "-m", "ksmfs", *args]


def open_read_close(path: str, n: int) -> list[int]:
    """n timed open(2)+read(2)+close(2) of ``path``; nanoseconds each."""
    samples = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t = clock()
        fd = os.open(path, os.O_RDONLY)
        os.read(fd, 4096)
        os.close(fd)
        samples.append(clock() - t)
    return samples


def latency(path: str, n: int) -> dict[str, float]:
    open_read_close(path, min(200, n))  # warm the dentry/attr caches
    s = open_read_close(path, n)
    s.sort()
    return {
        "median_us": statistics.median(s) / 1e3,
        "p99_us": s[int(len(s) * 0.99) - 1] / 1e3,
        "reads_per_s": len(s) / (sum(s) / 1e9),
    }


def scrape(root: Path) -> tuple[float, int]:
    """Read every file of sys/kernel/mm/ksm and every proc/PID/ksm_stat below root."""
    t = time.perf_counter()
    files = 0
    ksm = root / "sys" / "kernel" / "mm" / "ksm"
    for name in sorted(os.listdir(ksm)):
        with open(ksm / name, "rb") as f:
            f.read()
        files += 1
    proc = root / "proc"
    for pid in os.listdir(proc):
        if pid.isdigit():
            try:
                with open(proc / pid / "ksm_stat", "rb") as f:
                    f.read()
                files += 1
            except OSError:  # a real process that exited meanwhile
                pass
    return time.perf_counter() - t, files


def spawn_processes(mount: Path, count: int) -> list[str]:
    """count tasks with 4 identical mergeable pages each, through ksmfs/control (50
    commands per write: kernfs-style stores see at most 4096 bytes of one write)."""
    lines = [f"spawn bench-{i} pages=4 fill=cycle:4 mergeable" for i in range(count)]
    control = mount / "ksmfs" / "control"
    for i in range(0, count, 50):
        fd = os.open(control, os.O_WRONLY)
        try:
            os.write(fd, ("\n".join(lines[i : i + 50]) + "\n").encode())
        finally:
            os.close(fd)
    return sorted((p for p in os.listdir(mount / "proc") if p.isdigit()), key=int)


def minimal_pyfuse3_latency(n: int) -> dict[str, float] | None:
    """The baseline: scripts/minimal_pyfuse3.py (one direct_io file, pyfuse3 + trio)."""
    with tempfile.TemporaryDirectory(prefix="ksmfs-minimal-") as tmp:
        proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "minimal_pyfuse3.py"), tmp])
        try:
            deadline = time.monotonic() + 10
            while not os.path.ismount(tmp):
                if proc.poll() is not None or time.monotonic() > deadline:
                    print("bench_fs: the minimal pyfuse3 server did not mount", file=sys.stderr)
                    return None
                time.sleep(0.05)
            return latency(os.path.join(tmp, "value"), n)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                subprocess.run(["fusermount3", "-u", "-z", tmp])


def minimal_libfuse3_latency(n: int) -> dict[str, float] | None:
    """The C floor: scripts/minimal_libfuse3.c, compiled here (gcc + libfuse3-dev)."""
    with tempfile.TemporaryDirectory(prefix="ksmfs-cfloor-") as tmp:
        exe = os.path.join(tmp, "minimal")
        flags = subprocess.run(["pkg-config", "fuse3", "--cflags", "--libs"],
                               capture_output=True, text=True)
        build = subprocess.run(
            ["gcc", "-O2", "-o", exe, str(REPO / "scripts" / "minimal_libfuse3.c"),
             *flags.stdout.split()], capture_output=True, text=True)
        if flags.returncode or build.returncode:
            print("bench_fs: cannot build the C baseline (gcc, pkg-config, libfuse3-dev)",
                  file=sys.stderr)
            return None
        mnt = os.path.join(tmp, "mnt")
        os.mkdir(mnt)
        proc = subprocess.Popen([exe, "-f", mnt])
        try:
            deadline = time.monotonic() + 10
            while not os.path.ismount(mnt):
                if proc.poll() is not None or time.monotonic() > deadline:
                    return None
                time.sleep(0.05)
            return latency(os.path.join(mnt, "value"), n)
        finally:
            subprocess.run(["fusermount3", "-u", mnt], capture_output=True)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                subprocess.run(["fusermount3", "-u", "-z", mnt])


def real_ksm_stat() -> Path | None:
    for p in (Path("/proc/self/ksm_stat"), Path("/proc/1/ksm_stat")):
        if p.exists():
            return p
    return None


def fmt_row(label: str, m: dict[str, float], ref: dict[str, float] | None,
            floor: dict[str, float] | None = None) -> str:
    """A table row: the ratios are against the real file (ref) and against the minimal
    pyfuse3 server of the same run (floor)."""
    ratio = f"{m['median_us'] / ref['median_us']:6.1f}x" if ref else "     - "
    vs_floor = f"{m['median_us'] / floor['median_us']:6.2f}x" if floor else "     - "
    return (f"| {label:<44} | {m['median_us']:9.1f} | {m['p99_us']:9.1f} | "
            f"{m['reads_per_s']:9.0f} | {ratio} | {vs_floor} |")


def _read_int(path: Path) -> int:
    return int(path.read_text())


class _Reader:
    """A thread that does open-read-close of ``paths`` in turn, sleeping ``period`` seconds
    between reads; ``lat`` holds each read's latency in ns (callers may clear it)."""

    def __init__(self, paths: list[str], period: float) -> None:
        self.paths, self.period = paths, period
        self.lat: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        clock = time.perf_counter_ns
        i = 0
        while not self._stop.is_set():
            path = self.paths[i % len(self.paths)]
            i += 1
            t = clock()
            fd = os.open(path, os.O_RDONLY)
            os.read(fd, 4096)
            os.close(fd)
            self.lat.append(clock() - t)
            time.sleep(self.period)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _ms_quantile(v: list[int], f: float) -> float:
    """Quantile ``f`` of sorted ns latencies, in ms (nan for none)."""
    return v[min(len(v) - 1, int(len(v) * f))] / 1e6 if v else float("nan")


def _unmount(mount: Path) -> None:
    u = subprocess.run(ksmfs("umount", str(mount)), capture_output=True, text=True)
    if u.returncode != 0:
        subprocess.run(["fusermount3", "-u", "-z", str(mount)])


def _cpu_seconds(pid: int | None) -> float:
    """utime + stime of a process (nan when unknown): the server's own CPU, which a busy
    machine stretches less than wall time."""
    if pid is None:
        return float("nan")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pass_under_readers(scenario: str, period: float | None, smaps: bool) -> dict[str, object]:
    """Mount ``scenario``; through its merging pass (full scan 1 -> 2) a reader does
    open-read-close of a sysfs file and of a ksm_stat every ``period`` seconds (None: a
    poll of full_scans every 0.1 s only). Returns the latencies, the pass's wall time
    and, with ``smaps``, the reader's latencies while smaps of a guest is read."""

    with tempfile.TemporaryDirectory(prefix="ksmfs-bench-") as tmp:
        mount, out = _mount(tmp, scenario)
        m = re.search(r"server pid (\d+)", out)
        server = int(m.group(1)) if m else None
        try:
            ksm = mount / "sys/kernel/mm/ksm"
            pids = sorted((p for p in os.listdir(mount / "proc") if p.isdigit()), key=int)
            stat = str(mount / "proc" / pids[-1] / "ksm_stat")
            sysfs = str(ksm / "pages_sharing")
            while _read_int(ksm / "full_scans") < 1:
                time.sleep(0.01)
            reader = _Reader([sysfs, stat], period) if period is not None else None
            t0 = time.perf_counter()
            c0 = _cpu_seconds(server)
            if reader is not None:
                reader.start()
            while _read_int(ksm / "full_scans") < 2:
                time.sleep(0.1)
            pass_s = time.perf_counter() - t0
            out: dict[str, object] = {
                "pass_s": pass_s, "cpu_s": _cpu_seconds(server) - c0,
                "lat": list(reader.lat) if reader is not None else []}
            if smaps and reader is not None:
                # smaps of a 4M-page guest while the reader goes on
                reader.lat.clear()
                big = mount / "proc" / pids[0] / "smaps"
                t = time.perf_counter()
                for _ in range(3):
                    big.read_bytes()
                out["smaps_s"] = (time.perf_counter() - t) / 3
                out["lat_smaps"] = list(reader.lat)
            if reader is not None:
                reader.stop()
            return out
        finally:
            _unmount(mount)


def _mount(tmp: str, scenario: str) -> tuple[Path, str]:
    """``ksmfs mount`` of ``scenario`` at TMP/mnt: (the mountpoint, the command's stdout).
    RuntimeError with the mount's own message when it fails."""
    mount = Path(tmp) / "mnt"
    mount.mkdir()
    r = subprocess.run(ksmfs("mount", str(mount), "--scenario", scenario),
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"mount failed: {r.stderr.strip()}")
    return mount, r.stdout


def merging_pass(scenario: str) -> int:
    """Readers through the merging pass of a mounted scale scenario (issue: p99 <= 2 ms,
    max <= 20 ms, the pass at most 20 % slower with a reader every millisecond)."""
    load0 = os.getloadavg()[0]
    base = _pass_under_readers(scenario, None, False)
    busy = _pass_under_readers(scenario, 0.001, True)
    load1 = os.getloadavg()[0]
    lat = sorted(busy["lat"])  # type: ignore[arg-type]

    q = _ms_quantile

    print(f"{Path(scenario).name}: merging pass {base['pass_s']:.1f} s alone, "
          f"{busy['pass_s']:.1f} s with the reader "
          f"({(busy['pass_s'] / base['pass_s'] - 1) * 100:+.0f} %); the server's CPU "
          f"{base['cpu_s']:.1f} s and {busy['cpu_s']:.1f} s "
          f"({(busy['cpu_s'] / base['cpu_s'] - 1) * 100:+.0f} %)")  # type: ignore[operator]
    print(f"  reader (sysfs pages_sharing / proc/PID/ksm_stat, every 1 ms): {len(lat)} reads, "
          f"median {q(lat, 0.5):.2f} ms, p99 {q(lat, 0.99):.2f} ms, max {q(lat, 1.0):.1f} ms")
    print(f"  load average (1 min) {load0:.2f} before, {load1:.2f} after, on {os.cpu_count()} CPUs")
    ls = sorted(busy.get("lat_smaps", []))  # type: ignore[arg-type]
    if "smaps_s" in busy:
        print(f"  smaps of a guest: {busy['smaps_s'] * 1e3:.0f} ms per read; the reader meanwhile: "
              f"{len(ls)} reads, p99 {q(ls, 0.99):.2f} ms, max {q(ls, 1.0):.1f} ms")
    return 0


SMAPS_SCENARIO = """\
name = "bench-smaps"
seed = 1
max_full_scans = 1000
[ksm]
pages_to_scan = 100000
sleep_millisecs = 20
[pools]
image = 12500
[[process]]
name = "guest"
  [[process.vma]]
  name = "guest-ram"
  pages = {pages}
  mergeable = true
  fill = [
    {{ from = "pool:image", pages = {pool} }},
    {{ from = "unique", pages = {unique} }},
  ]
"""


def smaps_under_reader(pages: int, reads: int = 5) -> int:
    """A reader does open-read-close of sysfs pages_sharing every millisecond while
    another thread reads /proc/PID/smaps and smaps_rollup of a process with one
    ``pages``-page VMA; ksmd keeps scanning (pages_to_scan 100000, sleep 20 ms).
    Prints the reader's latencies alone and during the smaps reads (target: max 20 ms),
    and the time of one smaps read."""

    pool = pages * 3 // 4
    with tempfile.TemporaryDirectory(prefix="ksmfs-bench-") as tmp:
        toml = Path(tmp) / "smaps.toml"
        toml.write_text(SMAPS_SCENARIO.format(pages=pages, pool=pool, unique=pages - pool))
        mount, _ = _mount(tmp, str(toml))
        try:
            ksm = mount / "sys/kernel/mm/ksm"
            pid = max((p for p in os.listdir(mount / "proc") if p.isdigit()), key=int)
            sysfs = str(ksm / "pages_sharing")
            # past the merging pass: its first slices are slow whatever smaps does
            while _read_int(ksm / "full_scans") < 2:
                time.sleep(0.05)
            reader = _Reader([sysfs], 0.001)
            lat = reader.lat
            reader.start()
            try:
                scanned0, t0 = _read_int(ksm / "pages_scanned"), time.perf_counter()
                time.sleep(1.0)
                alone = sorted(lat)
                rate_alone = (_read_int(ksm / "pages_scanned") - scanned0) / (time.perf_counter() - t0)
                times: dict[str, float] = {}
                during: list[int] = []
                scanned0, t0 = _read_int(ksm / "pages_scanned"), time.perf_counter()
                for name in ("smaps", "smaps_rollup"):
                    lat.clear()
                    path = mount / "proc" / pid / name
                    t = time.perf_counter()
                    for _ in range(reads):
                        path.read_bytes()
                    times[name] = (time.perf_counter() - t) / reads
                    during += lat
                during.sort()
                rate_during = (_read_int(ksm / "pages_scanned") - scanned0) / (time.perf_counter() - t0)
            finally:
                reader.stop()
        finally:
            _unmount(mount)

    q = _ms_quantile

    print(f"smaps of a {pages}-page VMA: smaps {times['smaps'] * 1e3:.0f} ms per read, "
          f"smaps_rollup {times['smaps_rollup'] * 1e3:.0f} ms per read")
    print(f"  reader (sysfs pages_sharing every 1 ms) alone: {len(alone)} reads, "
          f"median {q(alone, 0.5):.2f} ms, p99 {q(alone, 0.99):.2f} ms, max {q(alone, 1.0):.1f} ms")
    print(f"  reader during the smaps reads: {len(during)} reads, median {q(during, 0.5):.2f} ms, "
          f"p99 {q(during, 0.99):.2f} ms, max {q(during, 1.0):.1f} ms (target: max 20 ms)")
    print(f"  ksmd: {rate_alone / 1e6:.2f} M pages/s scanned with the reader alone, "
          f"{rate_during / 1e6:.2f} M pages/s during the smaps reads")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=5000)
    ap.add_argument("--procs", type=int, default=1000)
    ap.add_argument("--notes", action="store_true",
                    help="append the table to docs/NOTES.md (default: print only)")
    ap.add_argument("--merging", metavar="SCENARIO",
                    help="only: readers through the merging pass of SCENARIO mounted "
                         "(e.g. scripts/scenarios/scale-16m.toml)")
    ap.add_argument("--smaps", action="store_true",
                    help="only: a reader every millisecond while smaps of a process with one "
                         "large VMA is read")
    ap.add_argument("--smaps-pages", type=int, default=4 << 20,
                    help="pages of that VMA (default 4194304: a 16 GiB guest)")
    args = ap.parse_args(argv)
    if args.smaps:
        return smaps_under_reader(args.smaps_pages)
    if args.merging:
        return merging_pass(args.merging)

    with tempfile.TemporaryDirectory(prefix="ksmfs-bench-") as tmp:
        toml = Path(tmp) / "bench.toml"
        toml.write_text(IDLE_SCENARIO)
        mount, _ = _mount(tmp, str(toml))
        try:
            t = time.perf_counter()
            pids = spawn_processes(mount, args.procs)
            spawn_s = time.perf_counter() - t
            mine_ksm = str(mount / "sys/kernel/mm/ksm/pages_sharing")
            mine_stat = str(mount / "proc" / pids[-1] / "ksm_stat")
            cold_s, cold_files = scrape(mount)
            warm_s, _warm_files = min(scrape(mount) for _ in range(3))
            res = {
                "mount pages_sharing": latency(mine_ksm, args.iterations),
                "mount proc/PID/ksm_stat": latency(mine_stat, args.iterations),
            }
            sharing = int((mount / "sys/kernel/mm/ksm/pages_sharing").read_text())
            full_scans = int((mount / "sys/kernel/mm/ksm/full_scans").read_text())
            # The same file with ksmd stopped: the adapter's own cost, without the time
            # FUSE requests wait while a ksmd batch runs on the server's one thread.
            fd = os.open(mount / "sys/kernel/mm/ksm/run", os.O_WRONLY)
            os.write(fd, b"0\n")
            os.close(fd)
            res["mount pages_sharing, ksmd stopped"] = latency(mine_ksm, args.iterations)
        finally:
            _unmount(mount)

    floor = minimal_pyfuse3_latency(args.iterations)
    c_floor = minimal_libfuse3_latency(args.iterations)

    real: dict[str, dict[str, float]] = {}
    if REAL_KSM.is_dir():
        real["real /sys/kernel/mm/ksm/pages_sharing"] = latency(
            str(REAL_KSM / "pages_sharing"), args.iterations)
    stat_path = real_ksm_stat()
    if stat_path is not None:
        real[f"real {stat_path}"] = latency(str(stat_path), args.iterations)
    real_scrape_s, real_files = scrape(Path("/")) if REAL_KSM.is_dir() else (0.0, 0)

    ref_ksm = next((v for k, v in real.items() if "pages_sharing" in k), None)
    ref_stat = next((v for k, v in real.items() if "ksm_stat" in k), None)
    rows = [
        "| file | median us | p99 us | reads/s | vs real | vs minimal pyfuse3 |",
        "|---|---:|---:|---:|---:|---:|",
        *[fmt_row(k, v, None, floor) for k, v in real.items()],
        fmt_row("mount sys/kernel/mm/ksm/pages_sharing", res["mount pages_sharing"], ref_ksm,
                floor),
        fmt_row("mount proc/PID/ksm_stat", res["mount proc/PID/ksm_stat"], ref_stat, floor),
        fmt_row("mount sys/kernel/mm/ksm/pages_sharing (run=0)",
                res["mount pages_sharing, ksmd stopped"], ref_ksm, floor),
    ]
    if floor is not None:
        rows.append(fmt_row("minimal pyfuse3 server, one file", floor, ref_ksm, floor))
    if c_floor is not None:
        rows.append(fmt_row("minimal C libfuse3 server, one file", c_floor, ref_ksm, floor))
    ratio = (res["mount pages_sharing"]["median_us"] / ref_ksm["median_us"]) if ref_ksm else None
    verdict_lat = (
        f"latency {ratio:.1f}x real sysfs (target <= {LATENCY_TARGET:g}x): "
        f"{'met' if ratio <= LATENCY_TARGET else 'NOT met'}" if ratio else "no real sysfs here"
    )
    verdict_scrape = (
        f"scrape of {cold_files} files ({args.procs} processes): cold {cold_s * 1e3:.0f} ms, "
        f"warm {warm_s * 1e3:.0f} ms (target < {SCRAPE_TARGET:g} s: "
        f"{'met' if max(cold_s, warm_s) < SCRAPE_TARGET else 'NOT met'}); real kernel: "
        f"{real_files} files in {real_scrape_s * 1e3:.0f} ms"
    )
    header = (
        f"Linux {platform.release()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; {args.iterations} iterations per file; ksmd running "
        f"(pages_sharing {sharing} after {full_scans} full scans); spawning "
        f"{args.procs} processes took {spawn_s * 1e3:.0f} ms"
    )
    verdicts = [f"- {verdict_lat}", f"- {verdict_scrape}"]
    if floor is not None:
        verdicts.append(
            f"- ksmfs vs the minimal pyfuse3 server (same machine, same run): "
            f"{res['mount pages_sharing']['median_us'] / floor['median_us']:.2f}x "
            f"({res['mount pages_sharing, ksmd stopped']['median_us'] / floor['median_us']:.2f}x "
            "with ksmd stopped)"
        )
    text = "\n".join([header, "", *rows, "", *verdicts])
    print(text)
    if args.notes:
        notes = REPO / "docs" / "NOTES.md"
        with open(notes, "a") as f:
            f.write(f"\n## FUSE read performance (scripts/bench_fs.py)\n\n{text}\n")
        print(f"\nappended to {notes}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as e:  # a mount that failed: its own message, no traceback
        print(f"bench_fs: {e}", file=sys.stderr)
        sys.exit(1)

#!/usr/bin/env python3
"""Benchmark the simulated ksmd against the machine's real one, in the same run.

For each size (simulated pages) a fresh child process builds a workload — several
VM-like processes, each with 60 % pages from a shared pool of contents, 10 % zero pages
and 30 % unique pages — runs full scans until nothing changes any more, and reports
simulated pages scanned per second (all passes, and the converged passes alone) and
bytes of RSS per simulated page. Where the real KSM interface is writable, the real
ksmd's steady rate is measured on a 1 GiB mergeable mapping with pages_to_scan 100000
and sleep_millisecs 0 (every knob restored afterwards), and the ratio is printed.

    python scripts/bench_scan.py                 # 1M, 16M, 64M + the real ksmd
    python scripts/bench_scan.py --sizes 1M --no-real
    python scripts/bench_scan.py --scenarios    # as root: it also runs the real ksmd
        # `ksmfs run` of scripts/scenarios/scale-{1m,16m}.toml (wall time, peak RSS, worst
        # batch) against the real ksmd's CPU time on scale-1m (x16 for 16M pages)
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import subprocess
import sys
import time

POOL = 20000
NPROC = 8
BATCH = 100_000


def parse_size(s: str) -> int:
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if s[-1].upper() in mult:
        return int(float(s[:-1]) * mult[s[-1].upper()])
    return int(s)


def rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def child(n: int) -> None:
    """Run one size in this (fresh) process and print one JSON line."""
    import ctypes

    import numpy as np

    from ksmfs.kernel import MADV_MERGEABLE, Kernel, knobs

    libc = ctypes.CDLL("libc.so.6")
    libc.malloc_trim(0)
    base = rss_bytes()
    k = Kernel(mem_total=max(16 << 30, n * 4096 * 2))
    k.mem.reserve(n)
    per = n // NPROC
    t0 = time.perf_counter()
    for i in range(NPROC):
        pid = k.spawn(f"vm{i}")
        addr = k.mmap(pid, per)
        npool = per * 6 // 10
        nzero = per // 10
        nuniq = per - npool - nzero
        chunk = 1 << 20  # fill in pieces so the token arrays stay small
        off = 0
        for kind, count in (("pool", npool), ("zero", nzero), ("uniq", nuniq)):
            done = 0
            while done < count:
                m = min(chunk, count - done)
                if kind == "pool":
                    tok = (np.arange(done, done + m, dtype=np.uint64) % POOL) + 1000
                elif kind == "zero":
                    tok = np.zeros(m, dtype=np.uint64)
                else:
                    tok = k.unique_tokens(m)
                k.write(pid, addr + off * 4096, tok)
                off += m
                done += m
        k.madvise(pid, addr, per, MADV_MERGEABLE)
    setup = time.perf_counter() - t0
    knobs.store(k, "pages_to_scan", str(BATCH).encode())
    knobs.store(k, "run", b"1")
    passes = []
    prev = None
    t_all = time.perf_counter()
    worst_default_batch = 0.0
    while True:
        s0 = k.ksm.pages_scanned
        t = time.perf_counter()
        target = k.ksm.full_scans + 1
        while k.ksm.full_scans < target:
            k.ksm_do_scan(BATCH)
        dt = time.perf_counter() - t
        st = k.ksm.stats()
        passes.append({"pages": k.ksm.pages_scanned - s0, "seconds": dt})
        key = (st["pages_shared"], st["pages_sharing"], st["ksm_zero_pages"])
        if key == prev and len(passes) >= 4:
            break
        prev = key
    # three more converged passes: the steady rate
    steady_pages = 0
    steady_t = 0.0
    for _ in range(3):
        s0 = k.ksm.pages_scanned
        t = time.perf_counter()
        target = k.ksm.full_scans + 1
        while k.ksm.full_scans < target:
            k.ksm_do_scan(BATCH)
        steady_t += time.perf_counter() - t
        steady_pages += k.ksm.pages_scanned - s0
    total_t = time.perf_counter() - t_all
    total_pages = sum(p["pages"] for p in passes) + steady_pages
    # one batch of the default pages_to_scan (100), as the mount's ksmd runs it
    for _ in range(200):
        t = time.perf_counter()
        k.ksm_do_scan(100)
        worst_default_batch = max(worst_default_batch, time.perf_counter() - t)
    libc.malloc_trim(0)
    rss = rss_bytes() - base
    st = k.ksm.stats()
    print(json.dumps({
        "pages": n,
        "setup_s": setup,
        "passes_to_converge": len(passes),
        "all_pages_per_s": total_pages / total_t,
        "steady_pages_per_s": steady_pages / steady_t,
        "merge_pass_s": max(p["seconds"] for p in passes),
        "rss_bytes_per_page": rss / n,
        "peak_rss_bytes": rss,
        "default_batch_max_ms": worst_default_batch * 1000,
        "pages_shared": st["pages_shared"],
        "pages_sharing": st["pages_sharing"],
    }))


def real_ksmd_rate(seconds: float = 4.0) -> float | None:
    """pages/s of the real ksmd on a 1 GiB mergeable mapping; None if KSM is not ours."""
    base = "/sys/kernel/mm/ksm"
    if os.geteuid() != 0 or not os.access(f"{base}/run", os.W_OK):
        print("real ksmd: skipped (needs root and a writable /sys/kernel/mm/ksm)", file=sys.stderr)
        return None

    def rd(name: str) -> str:
        with open(f"{base}/{name}") as fh:
            return fh.read().strip()

    def wr(name: str, value: str) -> None:
        with open(f"{base}/{name}", "w") as fh:
            fh.write(value)

    if int(rd("pages_shared")) or int(rd("pages_sharing")) or rd("run") != "0":
        print("real ksmd: skipped (someone else is using KSM right now)", file=sys.stderr)
        return None
    saved = {n: rd(n) for n in ("pages_to_scan", "sleep_millisecs", "run")}
    size = 1 << 30
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        pages = size // 4096
        npool = pages * 6 // 10
        nzero = pages // 10
        page = bytearray(4096)
        for i in range(pages):
            if i < npool:
                v = (i % POOL) + 1000
            elif i < npool + nzero:
                v = 0
            else:
                v = (1 << 40) + i
            page[0:8] = v.to_bytes(8, "big") * 1
            page[8:16] = page[0:8]
            m[i * 4096 : i * 4096 + 16] = page[0:16]
            if v == 0:
                m[i * 4096 : i * 4096 + 16] = b"\0" * 16
        m.madvise(mmap.MADV_NOHUGEPAGE)
        m.madvise(mmap.MADV_MERGEABLE)
        wr("pages_to_scan", "100000")
        wr("sleep_millisecs", "0")
        wr("run", "1")
        while int(rd("full_scans")) < 3:  # converge first: the steady rate
            time.sleep(0.05)
        s0, t0 = int(rd("pages_scanned")), time.perf_counter()
        time.sleep(seconds)
        s1, t1 = int(rd("pages_scanned")), time.perf_counter()
        return (s1 - s0) / (t1 - t0)
    finally:
        wr("run", "2")
        while int(rd("pages_shared")):
            time.sleep(0.05)
        wr("run", "0")
        m.close()
        for n in ("pages_to_scan", "sleep_millisecs", "run"):
            wr(n, saved[n])


SCENARIOS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scenarios")
KSMFS = os.path.join(os.path.dirname(sys.executable), "ksmfs")


def ksmd_cpu_seconds() -> float | None:
    """utime + stime of the ksmd kernel thread (/proc/PID/stat fields 14 and 15)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as fh:
                if fh.read().strip() != "ksmd":
                    continue
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return None


def timed_run(args: list[str]) -> tuple[float, int, int]:
    """Run a command; (wall seconds, peak RSS bytes, exit status)."""
    t = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    return time.perf_counter() - t, usage.ru_maxrss * 1024, os.waitstatus_to_exitcode(status)


def batch_child(path: str) -> None:
    """The scenario's ksmd batches one by one in this process: worst batch (and where),
    the time of every pass, and 300 batches of the default 100 pages afterwards."""
    from ksmfs.scenario import sim
    from ksmfs.scenario.loader import load_scenario

    sc = load_scenario(path)
    backend = sim.SimBackend(sc)
    backend.start()
    backend.start_ksmd()
    k = backend.kernel
    worst = (0.0, 0)
    passes = []
    for _ in range(sc.max_full_scans):
        start = k.ksm.full_scans
        t_pass = time.perf_counter()
        while k.ksm.full_scans == start:
            at = k.ksm.pages_scanned
            t = time.perf_counter()
            k.ksm_do_scan(k.ksm.pages_to_scan)
            dt = time.perf_counter() - t
            worst = max(worst, (dt, at))
            k.advance(k.ksm.sleep_millisecs)
        passes.append(time.perf_counter() - t_pass)
    # The default batch: wall time, and this thread's CPU time, which the scheduler's
    # preemptions (whole ticks of 4 ms on a busy machine) do not stretch.
    walls, cpus = [], []
    for _ in range(300):
        t, c = time.perf_counter(), time.thread_time()
        k.ksm_do_scan(100)
        cpus.append(time.thread_time() - c)
        walls.append(time.perf_counter() - t)
    # the first small batch after the big ones runs on cold caches: reported apart
    first = cpus[0]
    walls, cpus = sorted(walls[1:]), cpus[1:]
    print(json.dumps({"worst_batch_s": worst[0], "worst_batch_at": worst[1], "passes_s": passes,
                      "default_batch_max_s": walls[-1], "default_batch_p50_s": walls[len(walls) // 2],
                      "default_batch_max_cpu_s": max(cpus), "default_batch_first_cpu_s": first}))


def scenario_bench(real: bool) -> None:
    """`ksmfs run` of the scale scenarios against the real ksmd's CPU time for the 1M-page
    version (the real backend, end to end, in this run)."""
    real_cpu = None
    if real:
        before = ksmd_cpu_seconds()
        if before is None or os.geteuid() != 0:
            print("real ksmd: skipped (needs root and a ksmd thread)", file=sys.stderr)
        else:
            wall, _, rc = timed_run([KSMFS, "run", os.path.join(SCENARIOS, "scale-1m.toml"),
                                     "--backend", "real"])
            after = ksmd_cpu_seconds()
            if rc == 0 and after is not None:
                real_cpu = after - before
                print(f"real kernel, scale-1m end to end: {wall:.1f} s wall, "
                      f"ksmd CPU (utime+stime) {real_cpu:.2f} s")
            else:
                print(f"real kernel run failed (exit {rc})", file=sys.stderr)
    for name, pages, factor in (("scale-1m", 1 << 20, 1), ("scale-16m", 16 << 20, 16)):
        path = os.path.join(SCENARIOS, f"{name}.toml")
        wall, rss, rc = timed_run([KSMFS, "run", path])
        if rc:
            print(f"{name}: ksmfs run failed (exit {rc})")
            continue
        out = subprocess.run([sys.executable, __file__, "--batches", path],
                             capture_output=True, text=True)
        b = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None
        ratio = ""
        if real_cpu:
            target = 30 if factor > 1 else 20
            ratio = (f"; real ksmd CPU for the same work {real_cpu * factor:.1f} s -> "
                     f"{real_cpu * factor / wall:.1f}x faster (target {target}x)")
        print(f"{name}: ksmfs run {wall:.2f} s, peak RSS {rss / 2**20:.0f} MiB "
              f"({rss / pages:.1f} B/page){ratio}")
        if b:
            print(f"  worst batch {b['worst_batch_s'] * 1000:.0f} ms (at pages_scanned "
                  f"{b['worst_batch_at']}), passes "
                  + ", ".join(f"{p:.2f}" for p in b["passes_s"])
                  + f" s; a batch of 100 pages: median {b['default_batch_p50_s'] * 1000:.3f} ms, "
                  f"max {b['default_batch_max_s'] * 1000:.3f} ms wall, "
                  f"{b['default_batch_max_cpu_s'] * 1000:.3f} ms CPU (the first one after the "
                  f"big batches, cold: {b['default_batch_first_cpu_s'] * 1000:.3f} ms CPU)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1M,16M,64M", help="comma-separated page counts (K/M suffixes)")
    ap.add_argument("--no-real", action="store_true", help="do not measure the real ksmd")
    ap.add_argument("--scenarios", action="store_true",
                    help="only the scale scenarios (scripts/scenarios): ksmfs run vs the real ksmd's CPU time")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--batches", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return 0
    if args.batches:
        batch_child(args.batches)
        return 0
    if args.scenarios:
        scenario_bench(not args.no_real)
        return 0
    real = None if args.no_real else real_ksmd_rate()
    if real:
        print(f"real ksmd (1 GiB, pages_to_scan 100000, sleep 0): {real / 1e6:.2f} M pages/s")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    for size in args.sizes.split(","):
        n = parse_size(size)
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(n)], capture_output=True, text=True, env=env
        )
        if out.returncode:
            print(f"{size}: failed: {out.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        ratio = f" = {r['steady_pages_per_s'] / real:.1f}x real ksmd" if real else ""
        ratio_all = f" = {r['all_pages_per_s'] / real:.1f}x" if real else ""
        print(
            f"{size:>4} pages ({n * 4096 / (1 << 30):.0f} GiB simulated): "
            f"steady {r['steady_pages_per_s'] / 1e6:.1f} M pages/s{ratio}; "
            f"with the merge passes {r['all_pages_per_s'] / 1e6:.1f} M pages/s{ratio_all} "
            f"(slowest pass {r['merge_pass_s']:.2f} s, {r['passes_to_converge']} passes to converge); "
            f"RSS {r['rss_bytes_per_page']:.1f} B/page ({r['peak_rss_bytes'] / (1 << 30):.2f} GiB); "
            f"one batch of 100 pages <= {r['default_batch_max_ms']:.3f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

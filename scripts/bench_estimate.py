#!/usr/bin/env python3
"""Speed of ``ksmfs capture`` and ``ksmfs estimate``, each against a baseline measured in
the same run.

capture: a child process holds GIB GiB of private anonymous memory (half of it one 64 MiB
block repeated, half random bytes, so both hashing paths run); the capture's rate in GiB
of process memory per second is printed next to the rate of merely reading the same pages
from /proc/PID/mem (pread of the same runs, no hashing): the goal is >= 1 GiB/s.

estimate: a synthetic capture of PAGES pages (8 processes: 60 % from a shared pool of
contents, 10 % zero, 30 % unique, 0.1 % volatile) is built into the simulated kernel and
run to convergence; the seconds are printed next to a naive duplicate count of the same
contents (np.unique): the goal is <= 2 s for 1M pages.

    sudo python scripts/bench_estimate.py               # 1 GiB capture, 1M-page estimate
    python scripts/bench_estimate.py --no-capture --pages 4M
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np

from ksmfs.capture import procfs
from ksmfs.capture.build import build
from ksmfs.capture.estimate import run
from ksmfs.capture.format import KIND_ANON, PF_VOLATILE, Capture, CProcess, CVma
from ksmfs.capture.take import capture

REPEAT = 3
HOLDER = r"""
import mmap, os, sys
n = int(sys.argv[1]) << 30
m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
block = os.urandom(64 << 20)
for off in range(0, n // 2, len(block)):
    m[off:off + len(block)] = block
for off in range(n // 2, n, 64 << 20):
    m[off:off + (64 << 20)] = os.urandom(64 << 20)
sys.stdout.write("ready\n"); sys.stdout.flush(); sys.stdin.read()
"""


def bench_capture(gib: int) -> None:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(gib)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE)
    try:
        assert p.stdout is not None and p.stdout.readline() == b"ready\n"
        t_read, nbytes = min(plain_read(p.pid) for _ in range(REPEAT))
        t_cap, cap = min(((timed(capture, [p.pid])) for _ in range(REPEAT)), key=lambda x: x[0])
    finally:
        p.kill()
        p.wait()
    anon = int(np.count_nonzero(cap.kind == KIND_ANON)) * 4096
    print(f"capture: {anon / (1 << 30):.2f} GiB anonymous in {t_cap:.2f} s = "
          f"{anon / (1 << 30) / t_cap:.2f} GiB/s (goal >= 1); plain read of the same pages "
          f"{nbytes / (1 << 30) / t_read:.2f} GiB/s; capture/read time ratio {t_cap / t_read:.2f}"
          f" (best of {REPEAT})")


def timed(f: Callable[..., Capture], *a: object) -> tuple[float, Capture]:
    t0 = time.perf_counter()
    r = f(*a)
    return time.perf_counter() - t0, r


def plain_read(pid: int) -> tuple[float, int]:
    """Baseline: read every anonymous present page of the process, nothing else."""
    t0 = time.perf_counter()
    info = procfs.read_proc(pid)
    assert info is not None
    pm = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    mem = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    buf = np.empty((4096, 4096), dtype=np.uint8)
    nbytes = 0
    for v in info.vmas:
        if not v.rss_kb:
            continue
        e = procfs.read_pagemap(pm, v.start, v.npages)
        addrs = (np.flatnonzero(((e & procfs.PM_PRESENT) != 0) & ((e & procfs.PM_FILE) == 0))
                 .astype(np.uint64) * np.uint64(4096) + np.uint64(v.start))
        for s in range(0, addrs.shape[0], 4096):
            procfs.read_mem_runs(mem, addrs[s : s + 4096], buf)
        nbytes += addrs.shape[0] * 4096
    os.close(pm)
    os.close(mem)
    return time.perf_counter() - t0, nbytes


def synthetic(pages: int, seed: int = 1) -> Capture:
    rng = np.random.default_rng(seed)
    nproc = 8
    per = pages // nproc
    pool = 20000
    kinds, contents, pflags, offsets, procs = [], [], [], [], []
    first = 0
    next_unique = pool + 1
    for i in range(nproc):
        r = rng.random(per)
        c = np.where(r < 0.6, rng.integers(1, pool + 1, per), 0).astype(np.uint64)
        uniq = r >= 0.7
        c[uniq] = np.arange(next_unique, next_unique + int(uniq.sum()), dtype=np.uint64)
        next_unique += int(uniq.sum())
        pf = np.where(rng.random(per) < 0.001, PF_VOLATILE, 0).astype(np.uint8)
        kinds.append(np.full(per, KIND_ANON, dtype=np.uint8))
        contents.append(c)
        pflags.append(pf)
        offsets.append(np.arange(per, dtype=np.uint64))
        start = 0x7F0000000000
        procs.append(CProcess(1000 + i, f"vm{i}", 0, i, {"ksm_merge_any": "yes"},
                              [CVma(start, start + per * 4096, ["rd", "wr", "mr", "mw", "me",
                                                                "ac", "mg"],
                                    None, 0, first, per)]))
        first += per
    n = first
    return Capture("bench", {}, "never", None, procs, np.concatenate(offsets),
                   np.concatenate(kinds), np.concatenate(pflags), np.concatenate(contents),
                   np.zeros(n, dtype=np.uint32))


def bench_estimate(pages: int) -> None:
    cap = synthetic(pages)
    t0 = time.perf_counter()
    c = cap.content[cap.kind == KIND_ANON]
    _u, cnt = np.unique(c, return_counts=True)
    naive = int(np.sum(cnt[cnt > 1] - 1))
    t_naive = time.perf_counter() - t0
    best = None
    for _ in range(REPEAT):
        t0 = time.perf_counter()
        built = build(cap, "as-is", {"pages_to_scan": 100, "sleep_millisecs": 20})
        t_build = time.perf_counter() - t0
        res = run(built)
        t_all = time.perf_counter() - t0
        if best is None or t_all < best[0]:
            best = (t_all, t_build)
    t_all, t_build = best
    final = res.final["ksm"]
    print(f"estimate: {cap.npages} pages to convergence in {t_all:.2f} s (build {t_build:.2f} s, "
          f"{res.converged_at} full scans to converge, {len(res.snapshots) - 1} run; goal <= 2 s); "
          f"naive count {t_naive:.3f} s, ratio {t_all / t_naive:.0f}x; pages_sharing "
          f"{final['pages_sharing']} vs naive {naive} (best of {REPEAT})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=int, default=1, help="GiB held by the captured process")
    ap.add_argument("--pages", default="1M", help="pages of the synthetic capture (1M, 4M ...)")
    ap.add_argument("--no-capture", action="store_true")
    args = ap.parse_args()
    pages = int(float(args.pages[:-1]) * (1 << 20)) if args.pages[-1] in "MK" else int(args.pages)
    if args.pages[-1] == "K":
        pages >>= 10
    if not args.no_capture:
        if os.geteuid() != 0:
            print("capture: skipped (needs root)")
        else:
            bench_capture(args.gib)
    bench_estimate(pages)
    return 0


if __name__ == "__main__":
    sys.exit(main())

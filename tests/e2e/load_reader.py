"""One reader process of the load test: reads every file of a mount in a loop.

Usage: load_reader.py MOUNT SECONDS -> prints one JSON object with its counts.
It reads for SECONDS and, on a machine too busy for that, on until it has checked at
least one consistent snapshot (at most MAX_SECONDS).

Each round has two parts:

1. A *consistent snapshot* of pages_shared, pages_sharing and every
   /proc/PID/ksm_stat.  The files are read one by one while ksmd runs and a writer
   changes the kernel, so a round may straddle a change.  The mount's
   ``user.ksmfs.generation`` xattr moves on every kernel change (ksmd batch, store,
   scenario step), so it is read before and after, like a seqlock: equal values prove
   that every file of the round came from one kernel state, and only then is the
   invariant  sum(ksm_merging_pages) == pages_shared + pages_sharing  checked (both
   sides count the rmap_items in the stable tree).  Rounds that saw a change are
   counted as torn, not checked, and retried at once.  (Without the xattr the alternative is to stop
   ksmd with run = 0 first; COW writes do not move these lazy counters, but run = 2
   and exits do, so the writer would have to pause too.)
2. Every readable file of the tree (smaps, status, tracefs, control ...), checked
   only for errors; trace_pipe is skipped because its reads block until events come.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time

GENERATION = "user.ksmfs.generation"
SNAPSHOT_TRIES = 20  # a torn snapshot is retried at once, up to this many times
MAX_SECONDS = 120.0


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def snapshot(mount: str, counts: dict) -> bool:
    """Read pages_shared, pages_sharing and every ksm_stat between two reads of the
    generation; check the invariant if nothing changed in between (True)."""
    ksm = os.path.join(mount, "sys/kernel/mm/ksm")
    proc = os.path.join(mount, "proc")
    g0 = os.getxattr(mount, GENERATION)
    shared = int(read(os.path.join(ksm, "pages_shared")))
    sharing = int(read(os.path.join(ksm, "pages_sharing")))
    merging = 0
    pids = [p for p in os.listdir(proc) if p.isdigit()]
    for pid in pids:
        lines = read(os.path.join(proc, pid, "ksm_stat")).decode().splitlines()
        fields = dict(line.replace(":", "").split() for line in lines)
        merging += int(fields["ksm_merging_pages"])
    g1 = os.getxattr(mount, GENERATION)
    counts["reads"] += 2 + len(pids)
    if g0 != g1:
        counts["torn"] += 1
        return False
    counts["snapshots"] += 1
    if shared + sharing != merging:
        counts["violations"].append({"generation": int(g0), "pages_shared": shared,
                                     "pages_sharing": sharing, "sum_ksm_merging_pages": merging})
    return True


def main() -> int:
    mount, seconds = sys.argv[1], float(sys.argv[2])
    ksm = os.path.join(mount, "sys/kernel/mm/ksm")
    counts = {"rounds": 0, "snapshots": 0, "torn": 0, "reads": 0, "errors": [],
              "violations": []}
    start = time.monotonic()
    while True:
        elapsed = time.monotonic() - start
        if elapsed >= MAX_SECONDS or (elapsed >= seconds and counts["snapshots"] > 0):
            break
        counts["rounds"] += 1
        try:
            for _ in range(SNAPSHOT_TRIES):
                if snapshot(mount, counts):
                    break
            for dirpath, _dirnames, filenames in os.walk(mount):
                for name in filenames:
                    path = os.path.join(dirpath, name)
                    if name == "trace_pipe" or not os.stat(path).st_mode & stat.S_IRUSR:
                        continue
                    data = read(path)
                    counts["reads"] += 1
                    if dirpath == ksm and name != "advisor_mode":
                        int(data)  # every counter parses
        except Exception as e:  # every failure is reported, none stops the reader
            counts["errors"].append(f"{type(e).__name__}: {e}")
            if len(counts["errors"]) > 20:
                break
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())

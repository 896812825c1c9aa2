"""A process with known memory for the estimate-vs-real test. Prints "ready" and the
addresses of its mappings (JSON) once its memory is in place, then waits until stdin closes.

--same N     N pages whose contents every worker shares (page i = seeded bytes)
--zero N     N zero-filled pages (written, so present)
--unique N   N pages of random bytes
--volatile N N pages rewritten continuously by a thread (a counter in each)
--thp MIB    MIB of memory advised MADV_HUGEPAGE, filled with the --same contents
--file PATH --cow N  a MAP_PRIVATE mapping of PATH; its first N pages are rewritten
             with the --same contents (COW'd anonymous pages inside a file mapping)
"""

import argparse
import ctypes
import json
import mmap
import os
import random
import sys
import threading
import time

P = 4096
ap = argparse.ArgumentParser()
for opt in ("same", "zero", "unique", "volatile", "thp", "cow"):
    ap.add_argument(f"--{opt}", type=int, default=0)
ap.add_argument("--file")
a = ap.parse_args()

same_pages = random.Random(1).randbytes(max(a.same, a.cow, 1) * P)
keep = []
where = {}  # option -> address of its mapping (printed after "ready")

def addr(m):
    return ctypes.addressof(ctypes.c_char.from_buffer(m))

def anon(npages, what):
    # MAP_PRIVATE: Python's default for -1 is a shared mapping, which KSM never scans
    m = mmap.mmap(-1, npages * P, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    keep.append(m)
    where[what] = addr(m)
    return m

if a.same:
    m = anon(a.same, "same")
    m[:] = same_pages[: a.same * P]
if a.zero:
    m = anon(a.zero, "zero")
    for off in range(0, a.zero * P, P):
        m[off] = 0
if a.unique:
    m = anon(a.unique, "unique")
    m[:] = os.urandom(a.unique * P)
if a.thp:
    n = a.thp * 256
    m = anon(n, "thp")
    m.madvise(14)  # MADV_HUGEPAGE
    src = random.Random(2).randbytes(256 * P)
    for off in range(0, n * P, 256 * P):
        m[off : off + 256 * P] = src
if a.file:
    fd = os.open(a.file, os.O_RDONLY)
    size = os.fstat(fd).st_size
    fm = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    keep.append(fm)
    where["file"] = addr(fm)
    s = 0
    for off in range(0, size, P):  # read every page: file pages are mapped
        s += fm[off]
    fm[: a.cow * P] = same_pages[: a.cow * P]
if a.volatile:
    vm = anon(a.volatile, "volatile")

    def rewrite():
        i = 0
        while True:
            for off in range(0, a.volatile * P, P):
                vm[off : off + 8] = i.to_bytes(8, "little")
                i += 1
            time.sleep(0.001)

    threading.Thread(target=rewrite, daemon=True).start()
    time.sleep(0.05)
sys.stdout.write("ready " + json.dumps(where) + "\n")
sys.stdout.flush()
sys.stdin.read()

"""mmap(file=...): the file's inode number and page contents are the same in every run."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = (
    "from ksmfs.kernel import Kernel; k = Kernel(); p = k.spawn('a');"
    "a = k.mmap(p, 4, file='/usr/lib/libc.so.6');"
    "v = k.tasks[p].mm.vmas[0]; print(v.inode, k.read(p, a, 4).tolist())"
)


def test_a_file_mapping_is_the_same_under_every_hash_seed():
    outs = {
        subprocess.run(
            [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(outs) == 1, outs

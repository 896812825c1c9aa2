#!/usr/bin/env python3
"""The smallest pyfuse3 server that serves a sysfs-like file the way ksmfs does: one file
``value`` (st_size 4096, direct_io, content "0\\n"), pyfuse3 under trio. scripts/bench_fs.py
measures it as the floor of what any pyfuse3 file system costs per open-read-close.

    python scripts/minimal_pyfuse3.py MOUNTPOINT      # serves until SIGTERM / SIGINT
"""

from __future__ import annotations

import errno
import signal
import stat
import sys

import pyfuse3
import trio

CONTENT = b"0\n"
INO = pyfuse3.ROOT_INODE + 1


class Minimal(pyfuse3.Operations):
    def _attr(self, ino: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.entry_timeout = a.attr_timeout = 1.0
        if ino == pyfuse3.ROOT_INODE:
            a.st_mode = stat.S_IFDIR | 0o755
        else:
            a.st_mode = stat.S_IFREG | 0o444
            a.st_size = 4096
        return a

    async def getattr(self, inode, ctx=None):
        return self._attr(inode)

    async def lookup(self, parent_inode, name, ctx=None):
        if parent_inode != pyfuse3.ROOT_INODE or name != b"value":
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(INO)

    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=inode, direct_io=True, keep_cache=False)

    async def read(self, fh, off, size):
        return CONTENT[off : off + size]

    async def release(self, fh):
        return None


async def serve(mountpoint: str) -> None:
    pyfuse3.init(Minimal(), mountpoint, {"fsname=minimal", "auto_unmount"})
    try:
        async with trio.open_nursery() as nursery:
            async def stop() -> None:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
                    async for _ in sigs:
                        pyfuse3.terminate()
                        return

            nursery.start_soon(stop)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    trio.run(serve, sys.argv[1])

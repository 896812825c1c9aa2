"""serve() mounted inside the test process (`await nursery.start(serve, ...)`), driven by
real `cat` and `bash` through trio.run_process -- never by blocking calls from the trio
thread, which serves the mount (notes §1.8)."""

from __future__ import annotations

import os

import pytest
import trio
from e2e_support import fuse_test

from ksmfs.runtime import MountConfig, build_simulation, find_mount, serve

pytestmark = [*fuse_test, pytest.mark.timeout(60)]


@pytest.fixture
async def server(mountpoint):
    config = MountConfig(str(mountpoint), scenario="demo", handle_signals=False)
    sim = build_simulation(config)
    async with trio.open_nursery() as nursery:

        async def run_serve(task_status=trio.TASK_STATUS_IGNORED):
            await serve(config, sim=sim, task_status=task_status)

        srv = await nursery.start(run_serve)
        try:
            yield srv
        finally:
            srv.stop()  # main() returns, then serve() calls close(unmount=True)
    assert find_mount(str(mountpoint)) is None


async def sh(cmd: str) -> trio.CompletedProcess:
    return await trio.run_process(["bash", "-c", cmd], capture_stdout=True,
                                  capture_stderr=True, check=False)


async def test_cat_and_echo_through_an_in_process_mount(server):
    """cat reads the kernel's values; echo stores; an error reaches bash as EINVAL."""
    ksm = f"{server.mountpoint}/sys/kernel/mm/ksm"
    r = await sh(f"cat {ksm}/pages_to_scan {ksm}/run")
    assert r.stdout == b"1000\n1\n"
    r = await sh(f"echo 77 > {ksm}/sleep_millisecs && cat {ksm}/sleep_millisecs")
    assert r.stdout == b"77\n" and server.kernel.ksm.sleep_millisecs == 77
    r = await sh(f"echo abc > {ksm}/run")
    assert r.returncode == 1 and r.stderr.endswith(b"echo: write error: Invalid argument\n")


async def test_ksmd_sleep_is_cut_short_by_sleep_millisecs_not_by_run(server):
    """A long sleep_millisecs is cut short by a new sleep_millisecs (sleep_millisecs_store
    wakes ksm_iter_wait), not by `echo 1 > run` (run_store wakes ksm_thread_wait, where
    only an idle ksmd waits; docs/NOTES.md, live 6.18)."""
    ksm = f"{server.mountpoint}/sys/kernel/mm/ksm"
    await sh(f"echo 600000 > {ksm}/sleep_millisecs")
    await trio.sleep(0.1)  # ksmd finishes its batch and goes to sleep for 10 minutes
    before = server.ksmd.batches
    await sh(f"echo 1 > {ksm}/run")
    await trio.sleep(0.3)
    assert server.ksmd.batches == before
    await sh(f"echo 20 > {ksm}/sleep_millisecs")
    with trio.fail_after(5):
        while server.ksmd.batches == before:
            await trio.sleep(0.01)


async def test_python_file_io_from_a_worker_thread(server):
    """os.open/os.read from a worker thread: a snapshot per open, reads at offsets."""
    path = f"{server.mountpoint}/sys/kernel/mm/ksm/max_page_sharing"

    def pread_twice() -> tuple[bytes, bytes]:
        fd = os.open(path, os.O_RDONLY)
        try:
            return os.pread(fd, 100, 0), os.pread(fd, 100, 2)
        finally:
            os.close(fd)

    assert await trio.to_thread.run_sync(pread_twice) == (b"256\n", b"6\n")

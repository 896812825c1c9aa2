"""The ksmfs/control grammar: every command, its result in ksmfs/last, and one-line
EINVAL errors for bad input."""

from __future__ import annotations

import errno

import numpy as np
import pytest
from kfs_helpers import read, write

from ksmfs.kfs import Tree
from ksmfs.kfs.control import README, run_command
from ksmfs.kfs.errors import KsmError

PAGE = 4096


def ctl(tree: Tree, text: str) -> str:
    write(tree, "ksmfs/control", text.encode())
    return read(tree, "ksmfs/last").strip()


def test_spawn_maps_fills_and_advises(tree):
    k = tree.kernel
    result = ctl(tree, "spawn web pages=16 fill=value:5 mergeable")
    pid = int(result.split()[1])
    task = k.tasks[pid]
    assert task.comm == "web"
    (vma,) = task.mm.vmas
    assert result == f"pid {pid} addr {vma.start:#x} pages 16"
    assert vma.npages == 16 and vma.mergeable
    assert (k.read(pid, vma.start, 16) == 5).all()
    assert int(k.ksm_stat(pid)["ksm_rmap_items"]) == 0


def test_spawn_plain_and_options(tree):
    k = tree.kernel
    pid = int(ctl(tree, "spawn idle").split()[1])
    assert k.tasks[pid].mm is not None and not k.tasks[pid].mm.vmas
    pid2 = int(ctl(tree, "spawn u uid=1000 gid=100 pages=2 merge_any").split()[1])
    assert (k.tasks[pid2].uid, k.tasks[pid2].gid) == (1000, 100)
    assert k.ksm_stat(pid2)["ksm_merge_any"] == "yes"


def test_sources(tree):
    k = tree.kernel
    pid = int(ctl(tree, "spawn s pages=6").split()[1])
    start = k.tasks[pid].mm.vmas[0].start
    assert (k.read(pid, start, 6) == 0).all()  # default fill: zero
    ctl(tree, f"write {pid} 0 0 6 cycle:2")
    assert k.read(pid, start, 6).tolist() == [1, 2, 1, 2, 1, 2]
    ctl(tree, f"write {pid} {start + PAGE:#x} 2 3 unique")
    got = k.read(pid, start, 6)
    assert len(set(got[2:5].tolist())) == 3 and got[0] == 1 and got[5] == 2
    ctl(tree, f"write {pid} 0 5 1 value:0x10")
    assert int(k.read(pid, start + 5 * PAGE, 1)[0]) == 16


def test_fork_mmap_munmap_madvise_merge_any_swap_exit(tree):
    k = tree.kernel
    pid = int(ctl(tree, "spawn p pages=8 fill=unique").split()[1])
    child = int(ctl(tree, f"fork {pid}").split()[1])
    assert k.tasks[child].ppid == pid
    out = ctl(tree, f"mmap {pid} 4 name=buf fill=value:3 mergeable")
    addr = int(out.split()[1], 16)
    vmas = k.tasks[pid].mm.vmas
    assert any(v.start == addr and v.mergeable and v.npages == 4 for v in vmas)
    index = [v.start for v in vmas].index(addr)
    ctl(tree, f"madvise {pid} {index} unmergeable")
    assert not k.tasks[pid].mm.vmas[index].mergeable
    ctl(tree, f"madvise {pid} {addr:#x} mergeable 1 2")
    assert any(v.mergeable for v in k.tasks[pid].mm.vmas)
    ctl(tree, f"merge_any {pid} 1")
    assert k.ksm_stat(pid)["ksm_merge_any"] == "yes"
    ctl(tree, f"merge_any {pid} 0")
    assert k.ksm_stat(pid)["ksm_merge_any"] == "no"
    before = k.task_mem(pid)["swap"]
    ctl(tree, f"swapout {pid} 0")
    assert k.task_mem(pid)["swap"] > before
    ctl(tree, f"swapin {pid} 0 0 1")
    n = len(k.tasks[pid].mm.vmas)
    ctl(tree, f"munmap {pid} {n - 1}")
    assert len(k.tasks[pid].mm.vmas) == n - 1
    ctl(tree, f"exit {child}")
    assert child not in k.tasks


def test_several_lines_per_write_and_comments(tree):
    write(tree, "ksmfs/control", b"# a comment\n\nspawn a\nspawn b\n")
    comms = sorted(t.comm for t in tree.kernel.tasks.values())
    assert "a" in comms and "b" in comms


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("frobnicate 1", "unknown command 'frobnicate'"),
        ("spawn", "usage: spawn"),
        ("spawn a pages=x", "pages 'x' is not a number"),
        ("spawn a pages=0", "pages 0 must be >= 1"),
        ("spawn a mergeable", "need pages=N"),
        ("spawn a pages=2 fill=bogus", "unknown SOURCE 'bogus'"),
        ("spawn a colour=red", "unknown option colour="),
        ("spawn a pages=2 wobbly", "unknown word 'wobbly'"),
        ("write {pid} 0 0 5 zero", "outside the VMA"),
        ("write {pid} 7 0 1 zero", "no VMA 7"),
        ("write {pid} 0x10 0 1 zero", "no VMA at 0x10"),
        ("write {pid} 0 0 1", "usage: write"),
        ("madvise {pid} 0 sideways", "not mergeable or unmergeable"),
        ("merge_any {pid} 2", "is not 0 or 1"),
        ("fork abc", "PID 'abc' is not a number"),
    ],
)
def test_bad_commands_are_one_line_einval(tree, line, needle):
    pid = int(ctl(tree, "spawn t pages=4").split()[1])
    with pytest.raises(KsmError) as err:
        write(tree, "ksmfs/control", line.format(pid=pid).encode() + b"\n")
    assert err.value.errno == errno.EINVAL
    message = err.value.message
    assert needle in message and "\n" not in message and message.startswith("control: ")


def test_unknown_pid_is_esrch(tree):
    with pytest.raises(KsmError) as err:
        run_command(tree.kernel, "exit 4242")
    assert err.value.errno == errno.ESRCH


def test_error_names_the_line(tree):
    with pytest.raises(KsmError) as err:
        write(tree, "ksmfs/control", b"spawn ok\nbogus\n")
    assert err.value.message.startswith("control: line 2: unknown command")
    assert any(t.comm == "ok" for t in tree.kernel.tasks.values())  # line 1 stays done


def test_readme_and_processes(tree):
    assert read(tree, "ksmfs/README") == README
    for cmd in ("spawn", "fork", "exit", "mmap", "munmap", "write", "madvise", "merge_any",
                "swapout", "swapin"):  # fmt: skip
        assert f"\n  {cmd} " in README
    pid = int(ctl(tree, "spawn lister pages=3 mergeable").split()[1])
    text = read(tree, "ksmfs/processes")
    assert f"pid {pid} ppid 1 uid 0 comm lister merge_any no\n" in text
    vma = tree.kernel.tasks[pid].mm.vmas[0]
    assert f"  0 {vma.start:08x}-{vma.end:08x} rw-p 00000000 00:00 0 pages 3 mg\n" in text
    node = tree.lookup(("ksmfs", "control"))
    assert node.spec.mode == 0o200 and node.spec.show is None


def test_tokens_are_uint64(kernel):
    """value:K takes K below 2^63; bit 63 is reserved for the kernel's unique contents."""
    from ksmfs.kfs.control import tokens

    assert tokens(kernel, "value:9223372036854775807", 2).dtype == np.uint64
    for too_big in ("value:9223372036854775808", "value:18446744073709551616"):
        with pytest.raises(KsmError):
            tokens(kernel, too_big, 1)
    assert (tokens(kernel, "unique", 3) >= np.uint64(1 << 63)).all()


def test_one_file_per_action() -> None:
    """ksmfs/<verb> runs one action per write with that verb's arguments."""
    from ksmfs.kernel import Kernel, KsmError
    from ksmfs.kfs import Tree

    k = Kernel()
    tree = Tree(k)
    spawn = tree.lookup(("ksmfs", "spawn"))
    assert spawn is not None and spawn.spec.mode == 0o200 and spawn.spec.show is None
    data = b"guest pages=8 fill=value:7 mergeable\n"
    assert spawn.spec.store(k, None, data) == len(data)
    (pid,) = [p for p, t in k.tasks.items() if t.comm == "guest"]
    assert k.ksm_stat(pid)["ksm_mergeable"] == "yes"
    write = tree.lookup(("ksmfs", "write"))
    write.spec.store(k, None, f"{pid} 0 0 2 value:9".encode())
    addr = k.task(pid).mm.vmas[0].start
    assert list(k.read(pid, addr, 3)) == [9, 9, 7]
    try:
        write.spec.store(k, None, b"1 2\n3 4")
    except KsmError as e:
        assert e.errno == 22 and "one action per write" in str(e)
    else:
        raise AssertionError("two lines were accepted")

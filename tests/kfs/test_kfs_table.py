"""The table as a whole: every file of every version renders, with the right mode, size
and owner per kind; inode numbers are derived and round-trip; imports stay clean."""

from __future__ import annotations

import subprocess
import sys

import pytest
from kfs_helpers import VERSIONS, make_kernel, populate

from ksmfs.kfs import DIR_MODE, PID_BASE, PID_DIR_MODE, ROOT_INODE, Tree

SYSFS = ("sys", "kernel", "mm", "ksm")
TRACING = ("sys", "kernel", "tracing")


def kind(path: tuple[str, ...]) -> str:
    if path[:4] == SYSFS:
        return "sysfs"
    if path[:3] == TRACING:
        return "tracefs"
    if path[0] == "proc":
        return "procpid" if path[1].isdigit() else "proc"
    return "control"


def all_file_nodes():
    for version in VERSIONS:
        k = make_kernel(version)
        populate(k)
        tree = Tree(k, btime=1_700_000_000)
        for node in tree.iter_files():
            yield pytest.param(tree, node, id=f"{version}:/{'/'.join(node.path)}")


@pytest.mark.parametrize(("tree", "node"), list(all_file_nodes()))
def test_every_file_renders_with_its_kind(tree, node):
    """Each row has the mode/size/owner policy of its kind, and its content is bytes that
    end in a newline (or is empty), as every kernel show function prints."""
    spec = node.spec
    assert node.mode == spec.mode and not node.is_dir
    assert tree.node_by_inode(node.inode) == node
    assert tree.lookup(node.path) == node
    which = kind(node.path)
    if which == "sysfs":
        assert spec.size == 4096
        assert spec.mode == (0o644 if spec.store else 0o444)
    else:
        assert spec.size == 0
    if which == "tracefs":
        assert spec.mode in (0o640, 0o440)
    if which == "procpid":
        assert spec.owner == "task"
        task = tree.kernel.tasks[node.pid]
        assert tree.owner(node) == (task.uid, task.gid)
        assert spec.mode in (0o444, 0o400, 0o644)
    else:
        assert tree.owner(node) == (0, 0)
    if spec.stream:
        assert spec.show is None
        return
    if spec.show is None:
        assert spec.mode == 0o200 and spec.store is not None
        return
    data = spec.show(tree.kernel, node.pid)
    assert isinstance(data, bytes)
    if node.path[-1] == "cmdline":
        assert data.endswith(b"\0")
    elif data:
        assert data.endswith(b"\n")
    if which == "sysfs":
        assert data.count(b"\n") == 1


@pytest.mark.parametrize("version", VERSIONS)
def test_sysfs_files_are_the_versions(version):
    """sys/kernel/mm/ksm lists exactly the version's attributes, in attribute-array order."""
    k = make_kernel(version)
    tree = Tree(k)
    assert tuple(tree.listdir(SYSFS)) == tuple(k.version.sysfs_files)


@pytest.mark.parametrize("version", VERSIONS)
def test_proc_pid_rows_follow_the_version(version):
    """ksm_stat and ksm_merging_pages exist only where the version has them."""
    k = make_kernel(version)
    pid = populate(k)["worker"]
    names = Tree(k).listdir(("proc", str(pid)))
    assert ("ksm_stat" in names) == bool(k.version.ksm_stat_lines)
    assert ("ksm_merging_pages" in names) == k.version.has_ksm_merging_pages_file
    for name in ("stat", "status", "statm", "cmdline", "comm", "maps", "smaps", "smaps_rollup"):
        assert name in names


@pytest.mark.parametrize("version", VERSIONS)
def test_trace_events_follow_the_version(version):
    k = make_kernel(version)
    tree = Tree(k)
    events = tree.listdir((*TRACING, "events", "ksm"))
    if not k.version.trace_events:
        assert tree.lookup((*TRACING, "events")) is None
        return
    assert events == ["enable", "filter", *sorted(k.version.trace_events)]
    for event in k.version.trace_events:
        assert tree.listdir((*TRACING, "events", "ksm", event)) == [
            "enable", "filter", "format", "id", "trigger"]


def test_directories_and_inodes(kernel, pids):
    """Root is inode 1; dirs are 0755 except /proc/<pid> (0555, task-owned); per-pid
    inodes are PID_BASE + (pid << 8) + index + 1 and vanish when the task exits."""
    tree = Tree(kernel)
    root = tree.lookup(())
    assert root.inode == ROOT_INODE and root.is_dir and root.mode == DIR_MODE
    assert tree.listdir(()) == ["proc", "sys", "ksmfs"]
    pid = pids["other"]
    d = tree.lookup(("proc", str(pid)))
    assert d.is_dir and d.mode == PID_DIR_MODE and d.inode == PID_BASE + (pid << 8)
    assert tree.owner(d) == (1000, 1000)
    smaps = tree.child(d.inode, "smaps")
    index = tree.listdir(("proc", str(pid))).index("smaps")  # rows under proc/<pid>
    assert smaps.inode == PID_BASE + (pid << 8) + index + 1
    # task/<tid>/ nodes: tid = pid only; every per-pid inode resolves back to its node
    assert tree.listdir(("proc", str(pid), "task")) == [str(pid)]
    assert tree.lookup(("proc", str(pid), "task", str(pids["worker"]))) is None
    nested = tree.lookup(("proc", str(pid), "task", str(pid), "smaps"))
    assert nested.spec == smaps.spec and nested.inode != smaps.inode
    for path in [("proc", str(pid), *rest) for rest in
                 [("task",), ("fd",), ("task", str(pid)), ("task", str(pid), "fd"),
                  ("task", str(pid), "io")]]:  # fmt: skip
        node = tree.lookup(path)
        assert tree.node_by_inode(node.inode) == node, path
    assert tree.child(d.inode, "..") == tree.lookup(("proc",))
    assert str(pid) in tree.listdir(("proc",))
    kernel.exit(pid)
    assert tree.lookup(("proc", str(pid))) is None
    assert tree.node_by_inode(smaps.inode) is None
    assert str(pid) not in tree.listdir(("proc",))


def test_static_inodes_are_stable_and_unique(kernel):
    a, b = Tree(kernel), Tree(kernel)
    nodes = [a.lookup(p) for p in a._static]
    assert len({n.inode for n in nodes}) == len(nodes)
    assert all(b.lookup(n.path).inode == n.inode for n in nodes)
    assert max(n.inode for n in nodes) < PID_BASE


@pytest.mark.parametrize("name", ["01", "+1", "1x", "", "٣"])
def test_non_canonical_pids_are_enoent(kernel, pids, name):
    assert Tree(kernel).lookup(("proc", name)) is None


def test_unknown_paths(tree):
    assert tree.lookup(("nope",)) is None
    assert tree.lookup(("proc", "999999")) is None
    assert tree.listdir(("nope",)) == []
    assert tree.node_by_inode(10**6) is None
    assert tree.child(ROOT_INODE, "nope") is None


def test_kfs_imports_neither_trio_nor_pyfuse3():
    """kfs is the pure table: importing it must not pull in trio or pyfuse3."""
    code = (
        "import sys, ksmfs.kfs, ksmfs.kfs.tree, ksmfs.kfs.control;"
        "bad = [m for m in ('trio', 'pyfuse3') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("path", [("proc",), ("sys",), ("sys", "kernel"), ("sys", "kernel", "mm"), ("sys", "kernel", "mm", "ksm")])
def test_directory_modes_match_the_live_machine(path: tuple[str, ...]) -> None:
    """Static directories have the live kernel's modes (/proc and /sys are 0555)."""
    import os
    import stat

    from ksmfs.kernel import Kernel
    from ksmfs.kfs import Tree

    real = "/" + "/".join(path)
    if not os.path.isdir(real):
        pytest.skip(f"{real} does not exist here")
    node = Tree(Kernel()).lookup(path)
    assert node is not None and node.mode == stat.S_IMODE(os.stat(real).st_mode)


def test_kfs_modules_import_without_a_cycle():
    """The import graph of kfs' modules is acyclic: spec.py imports no kfs module, the
    kind modules import spec (never tree or table), table imports the kinds, tree the table."""
    import ast
    from graphlib import CycleError, TopologicalSorter
    from pathlib import Path

    import ksmfs.kfs

    folder = Path(ksmfs.kfs.__file__).parent
    modules = {p.stem for p in folder.glob("*.py")} - {"__init__"}
    graph: dict[str, set[str]] = {}
    for name in modules:
        deps: set[str] = set()
        for node in ast.walk(ast.parse((folder / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module.startswith("ksmfs.kfs."):
                    deps.add(node.module.split(".")[2])
                elif node.module == "ksmfs.kfs":
                    deps |= {a.name for a in node.names if a.name in modules}
        graph[name] = deps
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as err:  # pragma: no cover - the failure message
        pytest.fail(f"import cycle in ksmfs.kfs: {err.args[1]}")
    assert graph["spec"] <= set(), graph["spec"]
    assert order.index("table") < order.index("tree")

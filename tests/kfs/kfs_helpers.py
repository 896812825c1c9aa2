"""Helpers for the kfs table tests (imported by the test modules and conftest)."""

from __future__ import annotations

from pathlib import Path

from ksmfs.kfs import Tree
from ksmfs.kfs.control import run_command
from ksmfs.linux import SUPPORTED_VERSIONS

# every simulated release: a version added to ksmfs.linux is rendered by the table tests
VERSIONS = SUPPORTED_VERSIONS


def make_kernel(version: str = "6.18"):
    from ksmfs.kernel import Kernel

    return Kernel(version=version)


def populate(k) -> dict[str, int]:
    """Two tasks through the control grammar: a 64-page mergeable one and a merge_any one."""
    a = int(run_command(k, "spawn worker pages=64 fill=unique mergeable").split()[1])
    merge_any = " merge_any" if k.version.has_prctl_memory_merge else " mergeable"
    b = int(run_command(k, "spawn other uid=1000 gid=1000 pages=8 fill=cycle:2" + merge_any).split()[1])
    return {"worker": a, "other": b}


def path_of(text: str) -> tuple[str, ...]:
    return tuple(p for p in text.split("/") if p)


def read(tree: Tree, text: str) -> str:
    node = tree.lookup(path_of(text))
    assert node is not None and node.spec is not None, text
    return node.spec.show(tree.kernel, node.pid).decode()


def write(tree: Tree, text: str, data: bytes) -> int:
    node = tree.lookup(path_of(text))
    assert node is not None and node.spec is not None and node.spec.store is not None, text
    return node.spec.store(tree.kernel, node.pid, data)


def materialize(tree: Tree, root: Path, top: tuple[str, ...] = ()) -> None:
    """Copy every readable file of the tree under ``root`` (for tools that read paths)."""
    for name in tree.listdir(top):
        path = (*top, name)
        node = tree.lookup(path)
        assert node is not None
        target = root.joinpath(*path)
        if node.is_dir:
            target.mkdir(parents=True, exist_ok=True)
            materialize(tree, root, path)
        elif node.spec.show is not None:
            try:
                target.write_bytes(node.spec.show(tree.kernel, node.pid))
            except Exception:
                pass

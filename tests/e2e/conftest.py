"""Real-mount tests: they run one after another, and each leaves no mount behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_support import FUSE_MISSING, force_cleanup


def _ksmfs_mounts(root: Path) -> list[str]:
    # Only below this run's base temp dir: other sessions on the machine mount too.
    with open("/proc/mounts") as f:
        return [line.split()[1] for line in f
                if line.split()[2] == "fuse.ksmfs" and line.split()[1].startswith(str(root))]


@pytest.fixture(autouse=True)
def no_mount_left_behind(tmp_path_factory):
    """Teardown check: no ksmfs mount of this test run is left in /proc/mounts."""
    root = tmp_path_factory.getbasetemp()
    before = set(_ksmfs_mounts(root))
    yield
    left = [m for m in _ksmfs_mounts(root) if m not in before]
    for m in left:
        force_cleanup(Path(m), None)
    assert not left, f"mounts left behind: {left}"


@pytest.fixture
def mountpoint(tmp_path):
    if FUSE_MISSING:
        pytest.skip(FUSE_MISSING)
    mp = tmp_path / "mnt"
    mp.mkdir()
    return mp

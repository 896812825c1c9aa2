"""Real-mount tests: they run one after another, and each leaves no mount behind."""

from __future__ import annotations

import pytest

from e2e_support import FUSE_MISSING, force_cleanup, fuse_mounts_under


def _ksmfs_mounts() -> list[str]:
    with open("/proc/mounts") as f:
        return [line.split()[1] for line in f if line.split()[2] == "fuse.ksmfs"]


@pytest.fixture(autouse=True)
def no_mount_left_behind(tmp_path):
    """Teardown check: no ksmfs mount below this test's tmp_path in /proc/mounts."""
    before = set(_ksmfs_mounts())
    yield
    left = [m for m in _ksmfs_mounts() if m not in before]
    for m in fuse_mounts_under(tmp_path):
        force_cleanup(__import__("pathlib").Path(m), None)
    assert not left, f"mounts left behind: {left}"


@pytest.fixture
def mountpoint(tmp_path):
    if FUSE_MISSING:
        pytest.skip(FUSE_MISSING)
    mp = tmp_path / "mnt"
    mp.mkdir()
    return mp

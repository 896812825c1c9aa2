"""The README's two commands on a fresh clone: scripts/setup-test.sh and scripts/setup-demo.sh.

These run the real setup (apt-get for missing packages, a new .venv, pip install of the
pinned dependencies) in a `git clone` of this repository, so they are slow and need the
package archives; without network or root they are skipped with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

pytestmark = pytest.mark.slow

# Messages of apt-get and pip when the machine cannot reach a package archive.
OFFLINE = re.compile(
    r"Temporary failure in name resolution|Could not resolve|Failed to establish a new "
    r"connection|Network is unreachable|No matching distribution found|Failed to fetch|"
    r"Could not connect|Connection refused|Max retries exceeded"
)
DEBS = ["fuse3", "libfuse3-dev", "pkg-config", "gcc", "python3-dev", "python3-venv", "tmux"]


def test_readme_names_exactly_the_two_setup_commands() -> None:
    """The README's fresh-machine section gives scripts/setup-demo.sh and setup-test.sh."""
    text = README.read_text()
    section = text.split("## Try it on a fresh machine", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    assert block.split("\n")[:2] == ["scripts/setup-demo.sh", "scripts/setup-test.sh"]
    for script in ("setup-demo.sh", "setup-test.sh"):
        assert os.access(REPO / "scripts" / script, os.X_OK)


def _missing_debs() -> list[str]:
    missing = []
    for pkg in DEBS:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True
        )
        if "install ok installed" not in out.stdout:
            missing.append(pkg)
    return missing


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 1200) -> str:
    """Run a setup script; skip on a network failure, fail with its output otherwise."""
    out = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    text = out.stdout + out.stderr
    if out.returncode != 0:
        offline = OFFLINE.search(text)
        if offline:
            pytest.skip(f"no network for apt/pip ({offline.group(0)})")
        raise AssertionError(f"{' '.join(cmd)} exited {out.returncode}:\n{text[-4000:]}")
    return text


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A `git clone` of this repository, set up by `scripts/setup-test.sh` (setup part)."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: nothing to clone")
    if shutil.which("dpkg-query") is None:
        pytest.skip("not a Debian-like machine (the scripts use apt-get)")
    missing = _missing_debs()
    if missing and os.geteuid() != 0 and shutil.which("sudo") is None:
        pytest.skip(f"needs root (or sudo) to apt-get install {' '.join(missing)}")
    clone = tmp_path_factory.mktemp("fresh") / "ksmfs"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["KSMFS_SETUP_ONLY"] = "1"
    # The clone is temporary: leave the `ksmfs` on this machine's PATH where it points.
    env["KSMFS_NO_LINK"] = "1"
    _run(["scripts/setup-test.sh"], clone, env)
    return clone, env


def test_setup_test_in_fresh_clone(fresh_clone: tuple[Path, dict[str, str]]) -> None:
    """setup-test.sh makes a working .venv with ksmfs and pytest; a second run does nothing."""
    clone, env = fresh_clone
    version = subprocess.run(
        [str(clone / ".venv/bin/ksmfs"), "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.strip() == "ksmfs 0.1.0"
    # The editable install points at the clone, not at this checkout.
    where = subprocess.run(
        [str(clone / ".venv/bin/python"), "-c", "import ksmfs; print(ksmfs.__file__)"],
        capture_output=True, text=True, check=True, cwd="/",
    )
    assert where.stdout.strip() == str(clone / "ksmfs/__init__.py")
    # pip compiled the stable tree's C extension (kernel/_rbtree.c) in the clone
    built = subprocess.run(
        [str(clone / ".venv/bin/python"), "-c",
         "import ksmfs.kernel._rbtree as m; print(m.__file__)"],
        capture_output=True, text=True, cwd="/",
    )
    assert built.returncode == 0, built.stderr
    assert built.stdout.startswith(str(clone / "ksmfs/kernel/_rbtree."))
    again = _run(["scripts/setup-test.sh"], clone, env, timeout=300)
    assert "pip install" not in again and "apt-get install" not in again
    assert "ready: ksmfs 0.1.0" in again
    # The test runner of the clone works (collection only: the suite itself runs here).
    collect = subprocess.run(
        [str(clone / ".venv/bin/python"), "-m", "pytest", "--collect-only", "-q",
         "tests/test_cli.py"],
        cwd=clone, capture_output=True, text=True,
    )
    assert collect.returncode == 0, collect.stdout + collect.stderr


@pytest.mark.fuse
def test_setup_demo_in_fresh_clone(
    fresh_clone: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """setup-demo.sh mounts a simulated kernel; run again it keeps the mount."""
    clone, env = fresh_clone
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        pytest.skip("needs /dev/fuse and fusermount3")
    mnt = tmp_path / "demo"
    env = {**env, "KSMFS_DEMO_MOUNTPOINT": str(mnt)}
    del env["KSMFS_SETUP_ONLY"]
    try:
        first = _run(["scripts/setup-demo.sh"], clone, env, timeout=300)
        value = (mnt / "sys/kernel/mm/ksm/pages_sharing").read_text()
        assert re.fullmatch(r"\d+\n", value)
        try_block = f"M={mnt}; K=$M/sys/kernel/mm/ksm"  # what to try, from the banner
        assert try_block in first
        second = _run(["scripts/setup-demo.sh"], clone, env, timeout=300)
        assert "already mounted" in second
        assert try_block in second  # the same block when the mount is kept
        subprocess.run(
            [str(clone / ".venv/bin/ksmfs"), "umount", str(mnt)], check=True, timeout=60,
            capture_output=True,
        )
        assert not (mnt / "sys").exists()
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)

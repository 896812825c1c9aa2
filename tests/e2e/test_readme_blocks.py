"""The README's shell blocks for a mount, run as written (on a mount of the test's own),
so that what a newcomer pastes after scripts/setup-demo.sh works."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from e2e_support import IDLE_SCENARIO, fuse_test, mounted, run

pytestmark = [*fuse_test, pytest.mark.timeout(120)]

README = Path(__file__).resolve().parents[2] / "README.md"
DEMO = "/tmp/ksmfs-demo"


def sh_blocks(section: str) -> list[str]:
    """The ```sh blocks of a README section (## or ###) that start with M=/tmp/ksmfs-demo."""
    text = README.read_text()
    body = re.split(r"\n#{2,3} ", text.split(f"\n{section}\n", 1)[1], maxsplit=1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", body, re.S)
    return [b for b in blocks if b.startswith(f"M={DEMO}\n")]


@pytest.fixture
def mount(tmp_path):
    # The idle scenario: the demo's timeline ends a process, which could vanish between a
    # shell glob of proc/* and the read.
    toml = tmp_path / "idle.toml"
    toml.write_text(IDLE_SCENARIO)
    with mounted(tmp_path / "mnt", "--scenario", str(toml)) as m:
        yield m


def shell(mount_path: Path, script: str):
    """bash with M pointing at the mount and `ksmfs` meaning this checkout's ksmfs."""
    prelude = f'ksmfs() {{ {sys.executable} -m ksmfs "$@"; }}\n'
    return run(prelude + script.replace(f"M={DEMO}", f"M={mount_path}"))


def test_looking_around_works_as_written(mount):
    """Every line of "Looking around" succeeds, except the one the README says fails,
    which fails with the error it names; `ksmfs top` (interactive) runs as --once."""
    (block,) = sh_blocks("## Looking around")
    lines = block.strip().splitlines()
    assert lines[0] == f"M={DEMO}"
    for line in lines[1:]:
        command, _, comment = line.partition("#")
        if command.strip().startswith("ksmfs top"):
            command += " --once --interval 0"
        r = shell(mount.path, f"{lines[0]}\n{command}")
        expected = re.search(r"-> (.+?),", comment)
        if expected:
            assert r.returncode != 0 and expected.group(1) in r.stderr, (line, r)
        else:
            assert r.returncode == 0 and r.stderr == "", (line, r)
            assert "Traceback" not in r.stdout


def test_control_files_work_as_written(mount):
    """The control-file block runs start to end without an error, and does what its
    comments say: a new process, its pid read back, its exit, two scripted spawns."""
    (block,) = sh_blocks("### Control files: making processes")
    r = shell(mount.path, "set -e\n" + block)
    assert r.returncode == 0 and r.stderr == "", r
    assert "Traceback" not in r.stdout
    last = re.search(r"^pid (\d+) addr 0x[0-9a-f]+ pages 256$", r.stdout, re.M)
    assert last, r.stdout
    # `cat processes` comes last: "pid N ppid P uid U comm NAME ..." per task.
    names = set(re.findall(r"^pid \d+ ppid \d+ uid \d+ comm (\S+)", r.stdout, re.M))
    assert {"a", "b"} <= names and "guest" not in names, r.stdout

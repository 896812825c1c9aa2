"""Who may read what under /proc/PID, next to the live kernel: with --allow-other, an
unprivileged user gets from every per-process file of the mount (open, read, list) what
the same user gets from the same file of a live process with the same owner -- the mode
bits, and ptrace access mode read (PTRACE_MODE_READ_FSCREDS) where the kernel checks it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from e2e_support import fuse_test, mounted, run
from e2e_support import public_dir as e2e_public_dir

pytestmark = [
    *fuse_test,
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        shutil.which("setpriv") is None or os.geteuid() != 0, reason="needs root and setpriv"
    ),
]

NOBODY = 65534
NOGROUP = 65534
OTHER_GID = 1  # a group nobody is not in: same uid, different gid

# Open, then read (or list) each entry; the answer names the step that failed, so an
# EACCES at open (proc_mem_open) and one at read (do_io_accounting) are told apart.
PROBE = textwrap.dedent(
    """
    import json, os, sys
    base = sys.argv[1]
    out = {}
    for rel in sys.argv[2:]:
        path = os.path.join(base, rel)
        try:
            if os.path.isdir(path):
                os.listdir(path)
                out[rel] = "list ok"
                continue
            fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            out[rel] = "open " + os.strerror(e.errno)
            continue
        try:
            data = os.read(fd, 1 << 20)
            out[rel] = "read ok" if rel.split("/")[-1] != "stat" else data.decode()
        except OSError as e:
            out[rel] = "read " + os.strerror(e.errno)
        finally:
            os.close(fd)
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def public_dir():
    """A directory other users can traverse, holding the probe script."""
    with e2e_public_dir("ksmfs-access-") as d:
        (d / "probe.py").write_text(PROBE)
        (d / "probe.py").chmod(0o644)
        yield d


def has_cap_sys_ptrace() -> bool:
    """Whether this process has CAP_SYS_PTRACE (bit 19 of CapEff), which lets root pass
    ptrace_may_access() for any task; containers drop it by default."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> 19 & 1)
    return False


def python_for(uid: int) -> str:
    """An interpreter the unprivileged user can run (the venv may sit in a 0700 home)."""
    for candidate in (sys.executable, "/usr/bin/python3"):
        r = run(["setpriv", f"--reuid={uid}", f"--regid={NOGROUP}", "--clear-groups",
                 candidate, "-c", "pass"])
        if r.returncode == 0:
            return candidate
    pytest.skip(f"no Python that uid {uid} may run")


@pytest.fixture(scope="module")
def mount(public_dir):
    with mounted(public_dir / "mnt", "--allow-other") as m:
        yield m


@pytest.fixture(scope="module")
def targets(mount):
    """(simulated pid, live pid) per owner: root, and nobody:nogroup."""
    out = {}
    procs = []
    for owner, (uid, gid) in {"root": (0, 0), "nobody": (NOBODY, NOGROUP)}.items():
        sim = int(mount.control(f"spawn t{owner} uid={uid} gid={gid} pages=8 fill=unique")
                  .split()[1])
        cmd = ["sleep", "600"]
        if uid:
            cmd = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *cmd]
        procs.append(subprocess.Popen(cmd))
        out[owner] = (sim, procs[-1].pid)
    try:
        yield out
    finally:
        for p in procs:
            p.kill()
            p.wait()


def entries(mount, pid: int) -> list[str]:
    """Every per-process entry of the mount: PID/*, PID/task/TID/* (files and dirs)."""
    base = mount.path / "proc" / str(pid)
    names = sorted(os.listdir(base))
    tid = f"task/{pid}"
    return names + [f"{tid}/{n}" for n in sorted(os.listdir(base / tid))]


def probe(public_dir: Path, uid: int, gid: int, base: Path, rels: list[str]) -> dict:
    r = run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
             python_for(uid), str(public_dir / "probe.py"), str(base), *rels])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _outcome(answer: str) -> str:
    # stat's content is compared field by field below; here only "it was read" counts.
    return answer if answer.split()[0] in ("open", "read", "list") else "read ok"


@pytest.mark.parametrize(
    ("owner", "reader_gid"),
    [("root", NOGROUP), ("nobody", OTHER_GID), ("nobody", NOGROUP)],
    ids=["nobody-reads-root", "nobody:daemon-reads-nobody:nogroup", "nobody-reads-own"],
)
def test_every_per_process_entry_answers_as_the_live_kernel(
    mount, public_dir, targets, owner, reader_gid
):
    sim, live = targets[owner]
    rels = entries(mount, sim)
    live_rels = [r.replace(f"task/{sim}", f"task/{live}") for r in rels]
    ours = probe(public_dir, NOBODY, reader_gid, mount.path / "proc" / str(sim), rels)
    theirs = probe(public_dir, NOBODY, reader_gid, Path("/proc") / str(live), live_rels)
    for rel, live_rel in zip(rels, live_rels, strict=True):
        assert _outcome(ours[rel]) == _outcome(theirs[live_rel]), rel
    # the answers must include both refusals the kernel gives, or the test proves little
    if owner == "root":
        assert ours["smaps"] == "open Permission denied"
        assert ours["fd"] == "open Permission denied"
    if reader_gid == OTHER_GID:
        assert ours["io"] == "read Permission denied"
        assert ours["ksm_stat"] == "read ok"


@pytest.mark.parametrize("owner", ["root", "nobody"])
def test_stat_hides_the_same_fields_from_a_stranger(mount, public_dir, targets, owner):
    """do_task_stat(): the fields that differ between the owner's (root's) and a
    stranger's read of a live process's stat are the ones the mount masks, with the
    stranger's values."""
    if not has_cap_sys_ptrace():
        pytest.skip("root lacks CAP_SYS_PTRACE here (a container's default): the live "
                    "kernel hides these fields from root too, nothing to compare with")
    sim, live = targets[owner]
    gid = OTHER_GID if owner == "nobody" else NOGROUP
    live_root = (Path("/proc") / str(live) / "stat").read_text().split()
    live_other = probe(public_dir, NOBODY, gid, Path("/proc") / str(live), ["stat"])["stat"]
    hidden = {i for i, (a, b) in enumerate(zip(live_root, live_other.split(), strict=True))
              if a != b}
    assert hidden, "the live kernel hid nothing"
    ours_root = (mount.path / "proc" / str(sim) / "stat").read_text().split()
    ours_other = probe(public_dir, NOBODY, gid, mount.path / "proc" / str(sim), ["stat"])
    ours_other = ours_other["stat"].split()
    live_other = live_other.split()
    for i, (a, b) in enumerate(zip(ours_root, ours_other, strict=True)):
        if i in hidden:
            assert b == live_other[i], f"field {i + 1}"
        else:
            assert a == b, f"field {i + 1}"
    assert ours_root != ours_other

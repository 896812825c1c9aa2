"""Mount tooling: ``ksmfs mount`` / ``ksmfs umount``, the mount table, pid and log files.

``cmd_mount(args)`` checks everything it can before mounting (one line and exit code 2
per problem), then either serves in the foreground or forks a server and waits on a pipe
until the mount is ready.  The server's pid goes to a runtime file so that
``cmd_umount(args)`` can wait for it to exit after ``fusermount3 -u``.  The serving itself
is ``ksmfs.runtime.server.serve``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import faulthandler
import hashlib
import logging
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from ksmfs.runtime.server import MountConfig, Server, Simulation, build_simulation, serve

log = logging.getLogger(__name__)

__all__ = [
    "MountEntry",
    "check_mountpoint",
    "cmd_mount",
    "cmd_umount",
    "find_mount",
    "log_file",
    "pid_file",
    "read_server_pid",
]

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2


# -- mount table, runtime files ----------------------------------------------------------
def _unescape_mountinfo(field_: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo (fs/proc_namespace.c).
    out, i = [], 0
    while i < len(field_):
        code = field_[i + 1 : i + 4]
        if field_[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field_[i])
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    fstype: str
    source: str


def find_mount(path: str) -> MountEntry | None:
    """The last mount at ``path`` in /proc/self/mountinfo.

    ``os.path.ismount`` is not enough: it says False for a stale FUSE mount, which
    /proc/mounts still lists (notes §1.2).
    """
    path = os.path.abspath(path)
    found = None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields = left.split()
                rest = right.split()
                if len(fields) >= 5 and _unescape_mountinfo(fields[4]) == path:
                    fstype = rest[0] if rest else ""
                    found = MountEntry(path, fstype, rest[1] if len(rest) > 1 else "")
    except OSError:
        return None
    return found


def runtime_dir() -> Path:
    """Where pid and log files live: /run/ksmfs for root, else a per-user directory."""
    if os.geteuid() == 0:
        base = Path("/run/ksmfs")
    elif os.environ.get("XDG_RUNTIME_DIR"):
        base = Path(os.environ["XDG_RUNTIME_DIR"]) / "ksmfs"
    else:
        base = Path(f"/tmp/ksmfs-{os.geteuid()}")
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    return base


def _key(mountpoint: str) -> str:
    # No realpath() here: it would lstat the mountpoint, and the server must never make
    # a syscall on its own mount from the trio thread (it would wait for itself).
    # Callers pass the path resolved before mounting (MountConfig.from_args).
    return hashlib.sha256(os.path.abspath(mountpoint).encode()).hexdigest()[:16]


def pid_file(mountpoint: str) -> Path:
    return runtime_dir() / f"{_key(mountpoint)}.pid"


def log_file(mountpoint: str) -> Path:
    return runtime_dir() / f"{_key(mountpoint)}.log"


def read_server_pid(mountpoint: str) -> int | None:
    """The pid of the live server of ``mountpoint``, or None (no file, or it died)."""
    try:
        text = pid_file(mountpoint).read_text().split()
        pid = int(text[0])
    except (OSError, ValueError, IndexError):
        return None
    if not _alive(pid) or not _is_ksmfs(pid):
        # The server died without cleaning up (kill -9), and the pid may even belong to
        # another program by now: forget the file.
        pid_file(mountpoint).unlink(missing_ok=True)
        return None
    return pid


def _is_ksmfs(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"ksmfs" in f.read()
    except OSError:
        return False


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (killed, not yet reaped by its parent) is dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _write_pid_file(mountpoint: str) -> Path:
    path = pid_file(mountpoint)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{os.getpid()}\n{mountpoint}\n")
    tmp.replace(path)
    return path


def _remove_pid_file(path: Path) -> None:
    try:
        if int(path.read_text().split()[0]) == os.getpid():
            path.unlink()
    except (OSError, ValueError, IndexError):
        pass


def _fusermount() -> str | None:
    return shutil.which("fusermount3") or shutil.which("fusermount")


def is_dead_fuse_mount(mountpoint: str) -> bool:
    """True when the server of the FUSE mount at ``mountpoint`` is gone: stat fails
    with ENOTCONN (ECONNABORTED for a request caught by the kernel's fuse_abort_conn).
    Only call it for a mount whose ksmfs server is known dead: on a live one the stat
    is a request that server must answer."""
    try:
        os.stat(mountpoint)
    except OSError as e:
        return e.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    return False


def clear_stale_mount(mountpoint: str) -> str | None:
    """Lazily unmount a dead FUSE mount at ``mountpoint``; returns an error line or None."""
    tool = _fusermount()
    if tool is None:
        return "fusermount3 is not installed, cannot clear it"
    r = subprocess.run([tool, "-u", "-z", mountpoint], capture_output=True, text=True)
    if r.returncode != 0 or find_mount(mountpoint) is not None:
        reason = (r.stderr.strip().splitlines() or ["still mounted"])[-1]
        return f"could not clear it ({reason}); try: fusermount3 -u -z {mountpoint}"
    return None


# -- ksmfs mount ------------------------------------------------------------------------
def _say(msg: str) -> None:
    print(f"ksmfs mount: {msg}", file=sys.stderr)


def check_mountpoint(mountpoint: str) -> str | None:
    """Everything that would make the mount fail, as one line (or None)."""
    entry = find_mount(mountpoint)
    if entry is not None and entry.fstype.startswith("fuse"):
        try:
            os.stat(mountpoint)
        except OSError as e:
            if e.errno != errno.ENOTCONN:
                return f"{mountpoint}: {e.strerror}"
            log.info("%s: clearing a stale FUSE mount", mountpoint)
            problem = clear_stale_mount(mountpoint)
            if problem is not None:
                return (
                    f"{mountpoint}: stale FUSE mount (transport endpoint not connected): "
                    f"{problem}"
                )
        else:
            if entry.fstype == "fuse.ksmfs":
                pid = read_server_pid(mountpoint)
                who = f" (server pid {pid})" if pid else ""
                return (
                    f"{mountpoint}: already mounted by ksmfs{who}; "
                    f"run `ksmfs umount {mountpoint}` first"
                )
    if not os.path.exists(mountpoint):
        return f"{mountpoint}: no such directory"
    if not os.path.isdir(mountpoint):
        return f"{mountpoint}: not a directory"
    try:
        if os.listdir(mountpoint):
            return f"{mountpoint}: directory is not empty"
    except OSError as e:
        return f"{mountpoint}: {e.strerror}"
    return None


def ksmfs_command() -> str:
    """How a shell reaches this ksmfs: ``ksmfs`` when that name on PATH is this
    installation (or none is known), else the full path of the venv's script."""
    here = Path(sys.executable).parent / "ksmfs"
    found = shutil.which("ksmfs")
    if not here.exists() or (found and os.path.realpath(found) == os.path.realpath(here)):
        return "ksmfs"
    return shlex.quote(str(here))


def try_text(mountpoint: str) -> str:
    """What to try on a fresh mount: printed by `ksmfs mount` and scripts/setup-demo.sh.
    Lines to paste into a shell (the variables keep them short)."""
    q = shlex.quote
    plain = q(mountpoint) == mountpoint
    m, k = ("$M", "$K") if plain else ('"$M"', '"$K"')  # a path with spaces stays one word
    cmd = ksmfs_command()
    rows = [
        (f"M={q(mountpoint)}; K={m}/sys/kernel/mm/ksm", ""),
        (f"cat {k}/pages_shared {k}/pages_sharing", "the main counters"),
        (f"grep . {k}/*", "every counter and knob"),
        (f"grep . {m}/proc/*/ksm_stat", "per-process KSM state"),
        (f"echo 2 > {k}/run", "unmerge all (0 stops ksmd, 1 restarts it)"),
        (f"cat {m}/ksmfs/README", "control files: start processes, write pages"),
        (f"{cmd} top {m}", "live view (q quits)"),
        (f"{cmd} scenarios", "built-in workloads (ksmfs run NAME)"),
    ]
    width = max(len(c) for c, _ in rows)
    lines = ["try:", *(f"  {c:<{width}}  # {why}".rstrip(" #") for c, why in rows)]
    lines.append(f"unmount: {cmd} umount {q(mountpoint)}")
    return "\n".join(lines)


def _banner(config: MountConfig, sim: Simulation, pid: int, log: Path | None) -> str:
    kernel = sim.kernel
    what = f"processes ({sim.label})"
    speed = f", speed x{config.speed:g}" if config.speed != 1.0 else ""
    head = (
        f"ksmfs: simulated Linux {config.kernel_version} with {len(kernel.tasks)} "
        f"{what}{speed} mounted at {config.mountpoint} (server pid {pid})"
    )
    lines = [head]
    if log is not None:
        lines.append(f"log: {log} (refused control commands and errors are written there)")
    return "\n".join([*lines, try_text(config.mountpoint)])


# fusermount3's words when a container lacks what FUSE needs (seen with podman: without
# CAP_SYS_ADMIN "mount failed: Operation not permitted", without the device "fuse:
# device not found").
def _mount_hint(reason: str) -> str:
    if ("Operation not permitted" in reason or "Permission denied" in reason) and (
        os.geteuid() == 0
    ):
        return ("; in a container, FUSE needs the capability: run it with "
                "--cap-add SYS_ADMIN --device /dev/fuse")
    if "device not found" in reason or "No such device" in reason:
        return "; in a container, pass the device: --device /dev/fuse --cap-add SYS_ADMIN"
    return ""


def _one_line(e: BaseException) -> str:
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    text = " ".join(str(e).split())
    return text or type(e).__name__


def _serve_until_done(
    config: MountConfig, sim: Simulation, ready: Callable[[Server], None]
) -> None:
    """trio.run(serve): ``ready(server)`` once mounted.  Errors propagate."""

    async def main() -> None:
        async with trio.open_nursery() as nursery:

            async def serve_sim(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
                await serve(config, sim=sim, task_status=task_status)

            ready(await nursery.start(serve_sim))

    trio.run(main)


def _missing(path: str) -> bool:
    """True only for ENOENT (a stale FUSE mount gives ENOTCONN: it exists)."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return True
    except OSError:
        pass
    return False


def cmd_mount(args: argparse.Namespace) -> int:
    """``ksmfs mount``: check, build the kernel, then serve (foreground) or fork."""
    config = MountConfig.from_args(args)
    if _missing(config.mountpoint):
        # A new user types `ksmfs mount /tmp/ksm` and expects it to work, as mkdir would.
        try:
            os.makedirs(config.mountpoint)
        except OSError as e:
            _say(f"{config.mountpoint}: no such directory, and it cannot be created "
                 f"({e.strerror})")
            return EXIT_USAGE
        _say(f"created {config.mountpoint}")
    problem = check_mountpoint(config.mountpoint)
    if problem is not None:
        _say(problem)
        return EXIT_USAGE
    if not config.speed > 0 or math.isinf(config.speed):
        _say(f"--speed must be a positive number, not {config.speed:g}")
        return EXIT_USAGE
    if not os.path.exists("/dev/fuse"):
        _say("/dev/fuse is missing (no FUSE support here; in a container pass --device /dev/fuse)")
        return EXIT_FAIL
    try:
        import pyfuse3  # noqa: F401 - only checking that it is installed
    except ImportError as e:
        _say(f"needs pyfuse3 ({e})")
        return EXIT_FAIL
    try:
        sim = build_simulation(config)
    except Exception as e:  # KsmError (version), ScenarioError (file), OSError
        from ksmfs.kernel import KsmError

        if isinstance(e, KsmError):
            _say(e.message)
        else:
            _say(_one_line(e))
        return EXIT_USAGE
    if getattr(args, "foreground", False):
        return _mount_foreground(config, sim)
    return _mount_daemon(config, sim)


def _mount_foreground(config: MountConfig, sim: Simulation) -> int:
    faulthandler.enable()
    pidf: list[Path] = []

    def ready(server: Server) -> None:
        pidf.append(_write_pid_file(config.mountpoint))
        banner = _banner(config, sim, os.getpid(), None)
        print(banner.replace("unmount: ", "unmount: Ctrl-C, or "), flush=True)

    try:
        _serve_until_done(config, sim, ready)
    except Exception as e:
        reason = _one_line(e)
        hint = ""
        if "fuse_session_mount" in reason:
            # libfuse printed its reason on this stderr just above, out of our reach.
            hint = ("; if it says Operation not permitted or device not found and this runs "
                    "in a container: --cap-add SYS_ADMIN --device /dev/fuse")
        _say(f"{config.mountpoint}: {reason}{hint}")
        return EXIT_FAIL
    finally:
        for p in pidf:
            _remove_pid_file(p)
    return EXIT_OK


def _mount_daemon(config: MountConfig, sim: Simulation) -> int:
    logpath = log_file(config.mountpoint)
    sys.stdout.flush()
    sys.stderr.flush()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the server
        os.close(r)
        code = EXIT_FAIL
        try:
            code = _daemon_child(config, sim, w, logpath)
        except BaseException:  # the forked child must reach os._exit, whatever happens
            logging.getLogger(__name__).exception("server failed")
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        message = pipe.read().decode(errors="replace").strip()
    if message.startswith("ready"):
        print(_banner(config, sim, pid, logpath), flush=True)
        return EXIT_OK
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)  # reap the failed server
    if message.startswith("error "):
        reason = message[len("error ") :]
        _say(reason + _mount_hint(reason))
    else:
        _say(f"the server exited before the mount was ready; see {logpath}")
    return EXIT_FAIL


def _daemon_child(config: MountConfig, sim: Simulation, ready_fd: int, logpath: Path) -> int:
    """The forked server: detach, log to a file, serve; tell the parent through ready_fd."""
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    logfd = os.open(logpath, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(logfd, 1)
    os.dup2(logfd, 2)
    os.close(devnull)
    os.close(logfd)
    os.chdir("/")
    faulthandler.enable()
    faulthandler.register(signal.SIGUSR1)  # stack dump of a hung server into the log
    logging.getLogger().handlers[:] = []
    logging.basicConfig(
        level=logging.DEBUG if config.debug else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    pidf: list[Path] = []
    pipe = os.fdopen(ready_fd, "wb")

    def ready(server: Server) -> None:
        pidf.append(_write_pid_file(config.mountpoint))
        log.info("serving %s (pid %d)", config.mountpoint, os.getpid())
        pipe.write(b"ready\n")
        pipe.close()

    try:
        _serve_until_done(config, sim, ready)
    except Exception as e:
        sys.stderr.flush()
        reason = _libfuse_reason(logpath) or _one_line(e)
        log.exception("mount failed")
        if not pipe.closed:
            pipe.write(f"error {config.mountpoint}: {reason} (log: {logpath})\n".encode())
            pipe.close()
        return EXIT_FAIL
    finally:
        for p in pidf:
            _remove_pid_file(p)
        if not pipe.closed:
            pipe.close()
    _drop_quiet_log(logpath)
    return EXIT_OK


def _libfuse_reason(logpath: Path) -> str | None:
    """libfuse and fusermount3 explain a failed mount on stderr (our log), while
    pyfuse3 only raises "fuse_session_mount failed": use their last line."""
    try:
        lines = logpath.read_text(errors="replace").splitlines()
    except OSError:
        return None
    said = [line.strip() for line in lines if line.startswith(("fuse:", "fusermount3:"))]
    return said[-1] if said else None


def _drop_quiet_log(logpath: Path) -> None:
    """After a clean exit, remove the log if it only holds routine INFO/DEBUG lines;
    keep it when something (a warning, a refused scenario step, libfuse) spoke up."""
    sys.stderr.flush()
    try:
        lines = logpath.read_text(errors="replace").splitlines()
    except OSError:
        return
    if all(" INFO: " in line or " DEBUG: " in line for line in lines):
        logpath.unlink(missing_ok=True)


# -- ksmfs umount -----------------------------------------------------------------------
def cmd_umount(args: argparse.Namespace, *, timeout: float = 10.0) -> int:
    """``ksmfs umount``: ``fusermount3 -u``, then wait until the server has exited."""
    mountpoint = os.path.realpath(args.mountpoint)

    def say(msg: str) -> None:
        print(f"ksmfs umount: {msg}", file=sys.stderr)

    pid = read_server_pid(mountpoint)
    entry = find_mount(mountpoint)
    if entry is None:
        if pid is not None:
            # Mount gone but server alive (someone ran umount -l): stop it.
            os.kill(pid, signal.SIGTERM)
            return EXIT_OK if _wait_gone(pid, timeout) else EXIT_FAIL
        pid_file(mountpoint).unlink(missing_ok=True)
        say(f"{mountpoint}: not mounted")
        return EXIT_USAGE
    if not entry.fstype.startswith("fuse"):
        say(f"{mountpoint}: not a ksmfs mount ({entry.fstype})")
        return EXIT_USAGE
    if pid is None and is_dead_fuse_mount(mountpoint):
        # Its server died (kill -9) and fusermount3's auto_unmount did not remove it: a
        # dead mount serves nobody, so it goes lazily even while a file is still open.
        problem = clear_stale_mount(mountpoint)
        if problem is not None:
            say(f"{mountpoint}: stale mount (its server is gone): {problem}")
            return EXIT_FAIL
        say(f"{mountpoint}: its server was gone (stale mount); unmounted it")
        pid_file(mountpoint).unlink(missing_ok=True)
        return EXIT_OK
    tool = _fusermount()
    if tool is None:
        say("fusermount3 is not installed")
        return EXIT_FAIL
    r = subprocess.run([tool, "-u", mountpoint], capture_output=True, text=True)
    if r.returncode != 0:
        reason = (r.stderr.strip().splitlines() or ["failed"])[-1]
        say(f"{reason} (busy? close the files, or force it with: fusermount3 -u -z {mountpoint})")
        return EXIT_FAIL
    if pid is not None and not _wait_gone(pid, timeout):
        say(f"the server (pid {pid}) did not exit within {timeout:g} s; sending SIGTERM")
        os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, 5.0):
            return EXIT_FAIL
    return EXIT_OK


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            # Reap it if it is our child (tests), else just probe it.
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        if not _alive(pid):
            return True
        time.sleep(0.02)
    return False

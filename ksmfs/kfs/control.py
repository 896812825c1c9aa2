"""ksmfs/: the control directory of the mount (not a kernel path).

``ksmfs/control`` takes text commands, one per line, and turns each into kernel actions
(spawn, fork, mmap, write, madvise, prctl, swap, exit); ``ksmfs/last`` shows what the last
command did (e.g. the pid it spawned); ``ksmfs/processes`` lists the tasks and their VMAs;
``ksmfs/README`` documents the grammar (the text is :data:`README` below).

A bad command raises ``KsmError(EINVAL, "<one line naming the problem>")``; a failing
kernel call keeps the kernel's errno and gets the command prefixed to its message.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from ksmfs.kfs.errors import KsmError, einval
from ksmfs.kfs.smaps import vma_header
from ksmfs.kfs.spec import FileSpec, RenderContext
from ksmfs.linux import MADV_MERGEABLE, MADV_UNMERGEABLE, PAGE_SIZE, PR_SET_MEMORY_MERGE

if TYPE_CHECKING:
    from ksmfs.kernel import Kernel
    from ksmfs.kernel.mm import Task, Vma
    from ksmfs.kernel.versions import KernelProfile


README = """\
ksmfs control directory
=======================

control     (write-only) one command per line; several lines per write run in order,
            and the first bad line stops the write with EINVAL (earlier lines stay done).
            Blank lines and lines starting with '#' are ignored.
last        (read-only) the result of the last successful command, e.g. "pid 101 addr ...".
processes   (read-only) every task: pid, ppid, uid, comm, merge_any, then one line per
            VMA: index, maps-style header (start-end perms ...), pages, "mg" if mergeable.
README      this text.
spawn fork exit mmap munmap write madvise merge_any swapout swapin
            (write-only) one action per write: the arguments of that command, e.g.
            echo "qemu pages=64 fill=value:7 mergeable" > ksmfs/spawn
            echo "101 0 0 8 unique" > ksmfs/write      (= "write 101 0 0 8 unique")

Commands (PID and numbers are decimal; ADDR is 0x-hex):
  spawn COMM [uid=N] [gid=N] [pages=N] [fill=SOURCE] [mergeable] [merge_any] [shared]
             [name=NAME]
        New task (parent 1).  With pages=N it also maps N private (or shared) anonymous
        pages, fills them from SOURCE (default zero) and, with 'mergeable', madvises
        them MADV_MERGEABLE.  merge_any = prctl(PR_SET_MEMORY_MERGE, 1) first.
        last: "pid P" or "pid P addr 0x... pages N".
  fork PID                              last: "pid CHILD"
  exit PID
  mmap PID PAGES [shared] [name=NAME] [fill=SOURCE] [mergeable]
                                        last: "addr 0x... pages N"
  munmap PID VMA
  write PID VMA FIRST COUNT SOURCE      write COUNT pages from page FIRST of the VMA
  madvise PID VMA mergeable|unmergeable [FIRST COUNT]
  merge_any PID 0|1                     prctl(PR_SET_MEMORY_MERGE, 0|1)
  swapout PID VMA [FIRST COUNT]
  swapin PID VMA [FIRST COUNT]

  VMA     a decimal index into the task's VMAs in address order (see 'processes'),
          or a 0x-hex address inside the VMA.
  SOURCE  zero        the all-zero page (token 0)
          unique      contents no other page has (k.unique_tokens)
          value:K     every page has content K (K decimal or 0x-hex below 2^63;
                      value:0 = zero)
          cycle:K     contents 1, 2, ..., K, 1, 2, ... (K distinct pages, repeating)
Without FIRST COUNT a command applies to the whole VMA.
"""

# -- parsing helpers -------------------------------------------------------------------------
def _int(text: str, what: str, *, minimum: int = 0) -> int:
    try:
        value = int(text, 16) if text.lower().startswith("0x") else int(text, 10)
    except ValueError:
        raise einval(f"{what} {text!r} is not a number") from None
    if value < minimum:
        raise einval(f"{what} {value} must be >= {minimum}")
    return value


def _task(k: Kernel, text: str) -> tuple[int, Task]:
    pid = _int(text, "PID", minimum=1)
    task = k.tasks.get(pid)
    if task is None:
        raise KsmError(errno.ESRCH, f"no such process {pid}")
    return pid, task


def _vma(k: Kernel, task: Task, text: str) -> Vma:
    if task.mm is None:
        raise einval(f"pid {task.pid} has no address space")
    vmas = task.mm.vmas
    if text.lower().startswith("0x"):
        addr = _int(text, "ADDR")
        for v in vmas:
            if v.start <= addr < v.end:
                return v
        raise einval(f"pid {task.pid} has no VMA at {addr:#x}")
    index = _int(text, "VMA")
    if index >= len(vmas):
        raise einval(f"pid {task.pid} has {len(vmas)} VMAs, no VMA {index}")
    return vmas[index]


def _range(vma: Vma, first_text: str | None, count_text: str | None) -> tuple[int, int]:
    """(addr, npages) of pages FIRST..FIRST+COUNT-1 of the VMA (all of it by default)."""
    if first_text is None:
        return vma.start, vma.npages
    first = _int(first_text, "FIRST")
    count = _int(count_text or "", "COUNT", minimum=1)
    if first + count > vma.npages:
        raise einval(
            f"pages {first}..{first + count - 1} are outside the VMA ({vma.npages} pages)"
        )
    return vma.start + first * PAGE_SIZE, count


def tokens(k: Kernel, source: str, count: int) -> np.ndarray:
    """The content tokens of SOURCE for ``count`` pages."""
    if source == "zero":
        return np.zeros(count, dtype=np.uint64)
    if source == "unique":
        return np.asarray(k.unique_tokens(count), dtype=np.uint64)
    kind, sep, arg = source.partition(":")
    if sep and kind == "value":
        value = _int(arg, "value", minimum=0)
        if value >= 2**63:
            # tokens with bit 63 set are the kernel's unique contents (k.unique_tokens):
            # ksmd knows no other page can hold them
            raise einval(f"value {value} is too large (values must be below 2^63)")
        return np.full(count, value, dtype=np.uint64)
    if sep and kind == "cycle":
        period = _int(arg, "cycle", minimum=1)
        return (np.arange(count, dtype=np.uint64) % np.uint64(period)) + np.uint64(1)
    raise einval(f"unknown SOURCE {source!r} (zero, unique, value:K, cycle:K)")


def _options(words: list[str], flags: set[str], keys: set[str]) -> tuple[set[str], dict[str, str]]:
    seen: set[str] = set()
    values: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if sep:
            if key not in keys:
                raise einval(f"unknown option {key}= (known: {', '.join(sorted(keys))})")
            values[key] = value
        elif word in flags:
            seen.add(word)
        else:
            raise einval(f"unknown word {word!r}")
    return seen, values


def _nargs(cmd: str, args: list[str], low: int, high: int, usage: str) -> None:
    if not low <= len(args) <= high:
        raise einval(f"usage: {cmd} {usage}")


# -- commands --------------------------------------------------------------------------------
def _map_and_fill(k: Kernel, pid: int, npages: int, flags: set[str], opts: dict[str, str]) -> str:
    addr = k.mmap(pid, npages, shared="shared" in flags, name=opts.get("name"))
    source = opts.get("fill", "zero")
    k.write(pid, addr, tokens(k, source, npages))
    if "mergeable" in flags:
        k.madvise(pid, addr, npages, MADV_MERGEABLE)
    return f"addr {addr:#x} pages {npages}"


def cmd_spawn(k: Kernel, args: list[str]) -> str:
    if not args:
        raise einval("usage: spawn COMM [uid=N] [gid=N] [pages=N] [fill=SOURCE] ...")
    comm, rest = args[0], args[1:]
    flags, opts = _options(
        rest, {"mergeable", "merge_any", "shared"}, {"uid", "gid", "pages", "fill", "name"}
    )
    uid = _int(opts["uid"], "uid") if "uid" in opts else 0
    npages = _int(opts["pages"], "pages", minimum=1) if "pages" in opts else 0
    if npages == 0 and (flags & {"mergeable", "shared"} or "fill" in opts or "name" in opts):
        raise einval("spawn: mergeable/shared/fill=/name= need pages=N")
    if "fill" in opts:
        tokens(k, opts["fill"], 0)  # validate SOURCE before anything is created
    gid = _int(opts["gid"], "gid") if "gid" in opts else None
    pid = k.spawn(comm, uid=uid)
    try:
        if gid is not None:
            k.tasks[pid].gid = gid
        result = f"pid {pid}"
        if "merge_any" in flags:
            # EINVAL before 6.4 (no PR_SET_MEMORY_MERGE), as the kernel says.
            k.prctl(pid, PR_SET_MEMORY_MERGE, 1)
        if npages:
            result += " " + _map_and_fill(k, pid, npages, flags, opts)
    except KsmError:
        k.exit(pid)  # a failed spawn leaves no half-made task behind
        raise
    return result


def cmd_fork(k: Kernel, args: list[str]) -> str:
    _nargs("fork", args, 1, 1, "PID")
    pid, _ = _task(k, args[0])
    return f"pid {k.fork(pid)}"


def cmd_exit(k: Kernel, args: list[str]) -> str:
    _nargs("exit", args, 1, 1, "PID")
    pid, _ = _task(k, args[0])
    k.exit(pid)
    return f"exited {pid}"


def cmd_mmap(k: Kernel, args: list[str]) -> str:
    if len(args) < 2:
        raise einval("usage: mmap PID PAGES [shared] [name=NAME] [fill=SOURCE] [mergeable]")
    pid, _ = _task(k, args[0])
    npages = _int(args[1], "PAGES", minimum=1)
    flags, opts = _options(args[2:], {"shared", "mergeable"}, {"name", "fill"})
    if "fill" in opts:
        tokens(k, opts["fill"], 0)
    return _map_and_fill(k, pid, npages, flags, opts)


def cmd_munmap(k: Kernel, args: list[str]) -> str:
    _nargs("munmap", args, 2, 2, "PID VMA")
    pid, task = _task(k, args[0])
    vma = _vma(k, task, args[1])
    start, npages = vma.start, vma.npages
    k.munmap(pid, start, npages)
    return f"unmapped {start:#x} pages {npages}"


def cmd_write(k: Kernel, args: list[str]) -> str:
    _nargs("write", args, 5, 5, "PID VMA FIRST COUNT SOURCE")
    pid, task = _task(k, args[0])
    vma = _vma(k, task, args[1])
    addr, npages = _range(vma, args[2], args[3])
    k.write(pid, addr, tokens(k, args[4], npages))
    return f"wrote {addr:#x} pages {npages}"


def cmd_madvise(k: Kernel, args: list[str]) -> str:
    if len(args) not in (3, 5):
        raise einval("usage: madvise PID VMA mergeable|unmergeable [FIRST COUNT]")
    pid, task = _task(k, args[0])
    vma = _vma(k, task, args[1])
    advice = {"mergeable": MADV_MERGEABLE, "unmergeable": MADV_UNMERGEABLE}.get(args[2])
    if advice is None:
        raise einval(f"advice {args[2]!r} is not mergeable or unmergeable")
    addr, npages = _range(vma, *(args[3:5] if len(args) == 5 else (None, None)))
    k.madvise(pid, addr, npages, advice)
    return f"madvise {addr:#x} pages {npages} {args[2]}"


def cmd_merge_any(k: Kernel, args: list[str]) -> str:
    _nargs("merge_any", args, 2, 2, "PID 0|1")
    pid, _ = _task(k, args[0])
    if args[1] not in ("0", "1"):
        raise einval(f"merge_any value {args[1]!r} is not 0 or 1")
    k.prctl(pid, PR_SET_MEMORY_MERGE, int(args[1]))
    return f"merge_any {pid} {args[1]}"


def _swap(name: str, fn_name: str) -> Callable[[Kernel, list[str]], str]:
    def cmd(k: Kernel, args: list[str]) -> str:
        if len(args) not in (2, 4):
            raise einval(f"usage: {name} PID VMA [FIRST COUNT]")
        pid, task = _task(k, args[0])
        vma = _vma(k, task, args[1])
        addr, npages = _range(vma, *(args[2:4] if len(args) == 4 else (None, None)))
        getattr(k, fn_name)(pid, addr, npages)
        return f"{name} {addr:#x} pages {npages}"

    return cmd


COMMANDS: dict[str, Callable[[Kernel, list[str]], str]] = {
    "spawn": cmd_spawn,
    "fork": cmd_fork,
    "exit": cmd_exit,
    "mmap": cmd_mmap,
    "munmap": cmd_munmap,
    "write": cmd_write,
    "madvise": cmd_madvise,
    "merge_any": cmd_merge_any,
    "swapout": _swap("swapout", "swap_out"),
    "swapin": _swap("swapin", "swap_in"),
}


def run_command(k: Kernel, line: str, ctx: RenderContext | None = None) -> str:
    """Parse and run one command line; returns the result text (kept in ``ctx.last``
    for ksmfs/last)."""
    words = line.split()
    if not words:
        raise einval("empty command")
    fn = COMMANDS.get(words[0])
    if fn is None:
        raise einval(f"unknown command {words[0]!r} (see ksmfs/README)")
    try:
        result = fn(k, words[1:])
    except KsmError as err:
        message = getattr(err, "message", None) or str(err)
        raise KsmError(err.errno, f"{words[0]}: {message}") from None
    if ctx is not None:
        ctx.last = result
    return result


def store_control(
    k: Kernel, pid: int | None, data: bytes, *, ctx: RenderContext | None = None
) -> int:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise einval("control: commands must be UTF-8 text") from None
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            run_command(k, line, ctx)
        except KsmError as err:
            message = getattr(err, "message", None) or str(err)
            where = f"line {number}: " if number > 1 else ""
            raise KsmError(err.errno, f"control: {where}{message}") from None
    return len(data)


def show_last(k: Kernel, pid: int | None, *, ctx: RenderContext) -> bytes:
    return (ctx.last + "\n").encode() if ctx.last else b""


def show_readme(k: Kernel, pid: int | None = None) -> bytes:
    return README.encode()


def show_processes(k: Kernel, pid: int | None = None) -> bytes:
    out = []
    for p in sorted(k.tasks):
        t = k.tasks[p]
        if t.mm is None:
            out.append(f"pid {p} ppid {t.ppid} uid {t.uid} comm {t.comm} mm none\n")
            continue
        merge_any = "yes" if t.mm.merge_any else "no"
        out.append(f"pid {p} ppid {t.ppid} uid {t.uid} comm {t.comm} merge_any {merge_any}\n")
        for i, v in enumerate(t.mm.vmas):
            head = vma_header(v).rstrip()
            mg = " mg" if v.mergeable else ""
            out.append(f"  {i} {head} pages {v.npages}{mg}\n")
    return "".join(out).encode()


def _store_action(verb: str, ctx: RenderContext) -> Callable[[Kernel, int | None, bytes], int]:
    """ksmfs/<verb>: one action per write, the arguments of ``verb`` in the control
    grammar (``echo "qemu pages=64 fill=value:7 mergeable" > ksmfs/spawn``)."""

    def store(k: Kernel, pid: int | None, data: bytes) -> int:
        try:
            text = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise einval(f"{verb}: arguments must be UTF-8 text") from None
        if "\n" in text:
            raise einval(f"{verb}: one action per write (use ksmfs/control for several lines)")
        run_command(k, f"{verb} {text}", ctx)
        return len(data)

    return store


def file_specs(version: KernelProfile, ctx: RenderContext) -> list[FileSpec]:
    """README, control, last, processes and one write-only file per command; the
    stores keep the last result in ``ctx`` for ksmfs/last."""
    specs = [
        FileSpec("README", 0o444, 0, show_readme, None),
        FileSpec("control", 0o200, 0, None, partial(store_control, ctx=ctx)),
        FileSpec("last", 0o444, 0, partial(show_last, ctx=ctx), None),
        FileSpec("processes", 0o444, 0, show_processes, None),
    ]
    specs += [FileSpec(verb, 0o200, 0, None, _store_action(verb, ctx)) for verb in COMMANDS]
    return specs


__all__ = ["COMMANDS", "README", "run_command", "store_control", "tokens"]

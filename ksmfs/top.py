"""``ksmfs top``: a live terminal view of KSM, for a ksmfs mount or for the real machine.

It only *reads* files, so it works against any directory ROOT that has
``ROOT/sys/kernel/mm/ksm/*`` and ``ROOT/proc/PID/{ksm_stat,comm}``: a ksmfs mount, ``/``
(this machine's real kernel), or a plain directory tree made by a test.

One frame shows:

* every file of ``sys/kernel/mm/ksm``: the counters with their rate per second since the
  previous refresh, the knobs (``run``, ``pages_to_scan`` ...) as ``name=value``;
* the memory saved: ``pages_sharing * 4096`` and ``general_profit`` in MiB;
* the processes of ``proc/*/ksm_stat`` sorted by ``ksm_merging_pages`` (by default only
  those with some KSM state; ``--all`` or the ``a`` key lists every one).

The interactive view uses curses (the terminal is restored on ``q``, on Ctrl-C and on
errors: ``curses.wrapper``); ``--once`` prints one plain-text frame, and a non-terminal
stdout gets plain frames one after another (like ``top -b``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ksmfs.kernel.versions import SYSFS_ATTR_ORDER, WRITABLE_SYSFS
from ksmfs.linux import PAGE_SIZE

MIB = 1024 * 1024

# Order of the kernel's ksm_attrs[] array (mm/ksm.c), so the view reads like the source;
# files this list does not know (a newer kernel) follow in name order.
KSM_ATTR_ORDER = SYSFS_ATTR_ORDER
# The writable files (0644 in mm/ksm.c). Decided by name, not by st_mode, because a tree of
# plain files (tests, copies) has every file writable; every other file is a counter.
KSM_KNOBS = WRITABLE_SYSFS
# ksm_stat fields that mean "this process has KSM state" when non-zero / "yes".
_ACTIVE_NUMBERS = ("ksm_rmap_items", "ksm_merging_pages", "ksm_zero_pages")
_ACTIVE_FLAGS = ("ksm_merge_any", "ksm_mergeable")

Value = int | str


class TopError(Exception):
    """A one-line reason the tree cannot be shown (no such directory ...)."""


@dataclass(frozen=True)
class ProcKsm:
    """One process: /proc/PID/ksm_stat fields (ints, or "yes"/"no") and its comm."""

    pid: int
    comm: str
    stat: dict[str, Value]

    def number(self, name: str) -> int | None:
        value = self.stat.get(name)
        return value if isinstance(value, int) else None

    @property
    def active(self) -> bool:
        return any(self.number(n) for n in _ACTIVE_NUMBERS) or any(
            self.stat.get(n) == "yes" for n in _ACTIVE_FLAGS
        )


@dataclass(frozen=True)
class Sample:
    """Everything one refresh read, with the monotonic time of the read."""

    time: float
    ksm: dict[str, Value]
    procs: list[ProcKsm] = field(default_factory=list)
    # /proc/PID directories whose ksm_stat could not be read (permissions), for the footer.
    unreadable: int = 0
    # True when no process directory had a ksm_stat file at all (kernels before 6.1).
    no_ksm_stat: bool = False


def _parse_value(text: str) -> Value:
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        return text


def _attr_sort_key(name: str) -> tuple[int, str]:
    try:
        return KSM_ATTR_ORDER.index(name), name
    except ValueError:
        return len(KSM_ATTR_ORDER), name


def read_ksm(root: str | Path) -> dict[str, Value]:
    """Read every file of ROOT/sys/kernel/mm/ksm, in the kernel's attribute order."""
    ksm_dir = Path(root, "sys/kernel/mm/ksm")
    try:
        names = sorted(os.listdir(ksm_dir), key=_attr_sort_key)
    except FileNotFoundError:
        raise TopError(f"{ksm_dir}: no such directory (not a ksmfs mount, or no KSM)") from None
    except OSError as e:
        raise TopError(f"{ksm_dir}: {e.strerror or e}") from None
    values: dict[str, Value] = {}
    for name in names:
        try:
            values[name] = _parse_value((ksm_dir / name).read_text())
        except IsADirectoryError:
            continue
        except OSError as e:
            values[name] = f"? ({e.strerror or e})"
    return values


def parse_ksm_stat(text: str) -> dict[str, Value]:
    """Parse /proc/PID/ksm_stat: ``name value`` lines, and ``name: yes|no`` (6.14+)."""
    stat: dict[str, Value] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name:
            stat[name.rstrip(":")] = _parse_value(value)
    return stat


def read_procs(root: str | Path) -> tuple[list[ProcKsm], int, bool]:
    """Read ROOT/proc/*/ksm_stat: (processes with an mm, unreadable count, none had the file).

    A process that exits while we read is skipped. An empty ksm_stat means the task has no
    mm (kernel thread, zombie: fs/proc/base.c proc_pid_ksm_stat), so it is skipped too.
    """
    proc_dir = Path(root, "proc")
    procs: list[ProcKsm] = []
    unreadable = 0
    seen_file = False
    try:
        entries = [e.name for e in os.scandir(proc_dir) if e.name.isdigit()]
    except OSError:
        return procs, unreadable, False
    for name in entries:
        pid_dir = proc_dir / name
        try:
            text = (pid_dir / "ksm_stat").read_text()
        except PermissionError:
            seen_file = True
            unreadable += 1
            continue
        except OSError:  # gone, or no ksm_stat in this kernel version
            continue
        seen_file = True
        if not text.strip():
            continue
        stat = parse_ksm_stat(text)
        if "ksm_merging_pages" not in stat:
            # 6.1-6.3 ksm_stat has only ksm_rmap_items; the count is in its own file.
            try:
                stat["ksm_merging_pages"] = int((pid_dir / "ksm_merging_pages").read_text())
            except (OSError, ValueError):
                pass
        try:
            comm = (pid_dir / "comm").read_text().rstrip("\n")
        except OSError:
            comm = "?"
        procs.append(ProcKsm(int(name), comm, stat))
    procs.sort(
        key=lambda p: (
            -(p.number("ksm_merging_pages") or 0),
            -(p.number("ksm_rmap_items") or 0),
            p.pid,
        )
    )
    return procs, unreadable, not seen_file and bool(entries)


def sample(root: str | Path) -> Sample:
    """Read the whole tree once."""
    ksm = read_ksm(root)
    procs, unreadable, no_ksm_stat = read_procs(root)
    return Sample(time.monotonic(), ksm, procs, unreadable, no_ksm_stat)


def _mib(nbytes: int) -> str:
    return f"{nbytes / MIB:,.1f} MiB"


def _rate(prev: Sample | None, cur: Sample, name: str) -> str:
    if prev is None:
        return "-"
    a, b = prev.ksm.get(name), cur.ksm.get(name)
    dt = cur.time - prev.time
    if not isinstance(a, int) or not isinstance(b, int) or dt <= 0:
        return "-"
    return f"{(b - a) / dt:+,.1f}"


def _wrap_pairs(pairs: Iterable[str], width: int, indent: str = "  ") -> list[str]:
    lines: list[str] = []
    line = ""
    for item in pairs:
        if line and len(line) + 2 + len(item) > width:
            lines.append(line)
            line = ""
        line = f"{line}  {item}" if line else f"{indent}{item}"
    if line:
        lines.append(line)
    return lines


def _fmt(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def render(
    root: str | Path,
    prev: Sample | None,
    cur: Sample,
    *,
    width: int = 100,
    height: int | None = None,
    show_all: bool = False,
    interval: float | None = None,
    error: str | None = None,
) -> list[str]:
    """One frame as plain text lines (no escape codes); curses and --once both print it."""
    width = max(width, 40)
    clock = time.strftime("%H:%M:%S")
    every = f"every {interval:g}s, " if interval else ""
    lines = [f"ksmfs top  {root}  {clock}  ({every}q quits, a toggles all processes)"]
    if error:
        lines.append(f"!! {error}")

    ksm = cur.ksm
    sharing = ksm.get("pages_sharing")
    profit = ksm.get("general_profit")
    zero = ksm.get("ksm_zero_pages")
    saved = []
    if isinstance(sharing, int):
        saved.append(f"pages_sharing x 4096 = {_mib(sharing * PAGE_SIZE)}")
    if isinstance(zero, int) and zero:
        saved.append(f"ksm_zero_pages x 4096 = {_mib(zero * PAGE_SIZE)}")
    if isinstance(profit, int):
        saved.append(f"general_profit = {_mib(profit)}")
    lines.append("saved: " + ("   ".join(saved) if saved else "-"))
    lines.append("")

    knobs = [f"{n}={v}" for n, v in ksm.items() if n in KSM_KNOBS]
    if knobs:
        lines.append("knobs:")
        lines.extend(_wrap_pairs(knobs, width - 1))
        lines.append("")

    counters = [n for n in ksm if n not in KSM_KNOBS]
    name_w = max([len("COUNTER"), *map(len, counters)])
    lines.append(f"{'COUNTER':<{name_w}}  {'VALUE':>16}  {'RATE/s':>14}")
    for name in counters:
        value = ksm[name]
        shown = f"{value:,}" if isinstance(value, int) else str(value)
        lines.append(f"{name:<{name_w}}  {shown:>16}  {_rate(prev, cur, name):>14}")
    lines.append("")

    procs = cur.procs if show_all else [p for p in cur.procs if p.active]
    hidden = len(cur.procs) - len(procs)
    header = (
        f"{'PID':>7}  {'COMM':<16} {'MERGING':>10} {'RMAP_ITEMS':>10} {'ZERO':>8} "
        f"{'PROFIT MiB':>11}  {'MERGE_ANY':<9} {'MERGEABLE':<9}"
    )
    lines.append(header)
    room = None if height is None else max(height - len(lines) - 1, 0)
    shown_procs = procs if room is None else procs[:room]
    for p in shown_procs:
        proc_profit = p.number("ksm_process_profit")
        profit_mib = "-" if proc_profit is None else f"{proc_profit / MIB:,.1f}"
        merge_any = str(p.stat.get("ksm_merge_any", "-"))
        mergeable = str(p.stat.get("ksm_mergeable", "-"))
        lines.append(
            f"{p.pid:>7}  {p.comm[:16]:<16} {_fmt(p.number('ksm_merging_pages')):>10} "
            f"{_fmt(p.number('ksm_rmap_items')):>10} {_fmt(p.number('ksm_zero_pages')):>8} "
            f"{profit_mib:>11}  {merge_any:<9} {mergeable:<9}"
        )
    notes = []
    if len(shown_procs) < len(procs):
        notes.append(f"{len(procs) - len(shown_procs)} more not shown")
    if hidden:
        notes.append(f"{hidden} processes with no KSM state hidden")
    if cur.unreadable:
        notes.append(f"{cur.unreadable} ksm_stat unreadable (permissions)")
    if cur.no_ksm_stat:
        notes.append("no /proc/PID/ksm_stat in this kernel (6.1+)")
    if not procs and not notes:
        notes.append("no processes")
    if notes:
        lines.append("  (" + "; ".join(notes) + ")")
    return [(line[: width - 1] if len(line) >= width else line).rstrip() for line in lines]


def _terminal_width() -> int:
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns
    except OSError:
        return 120


def run_once(root: str, interval: float, show_all: bool) -> int:
    """Print one plain frame; with interval > 0 read twice so the rates are filled in."""
    prev = None
    cur = sample(root)
    if interval > 0:
        time.sleep(interval)
        prev, cur = cur, sample(root)
    for line in render(root, prev, cur, width=_terminal_width(), show_all=show_all):
        print(line)
    return 0


def run_plain(root: str, interval: float, show_all: bool) -> int:
    """Frames one after another, for a stdout that is not a terminal (`ksmfs top | tee`)."""
    prev: Sample | None = None
    while True:
        error = None
        try:
            cur = sample(root)
        except TopError as e:
            if prev is None:
                raise
            cur, error = prev, str(e)
        frame = render(
            root, prev, cur, width=_terminal_width(), show_all=show_all, interval=interval,
            error=error,
        )
        print("\n".join(frame))
        print(flush=True)
        prev = cur
        time.sleep(interval)


def run_curses(root: str, interval: float, show_all: bool) -> int:
    """The interactive view; curses.wrapper restores the terminal however we leave."""
    import curses

    def loop(stdscr: curses.window) -> int:
        try:
            curses.curs_set(0)
        except curses.error:
            pass
        nonlocal show_all
        prev: Sample | None = None
        cur = sample(root)
        error: str | None = None
        deadline = time.monotonic() + interval
        while True:
            height, width = stdscr.getmaxyx()
            lines = render(
                root, prev, cur, width=width, height=height, show_all=show_all,
                interval=interval, error=error,
            )
            stdscr.erase()
            for y, line in enumerate(lines[:height]):
                try:
                    # The last cell of the screen cannot be written without an error.
                    stdscr.addnstr(y, 0, line, width - 1, curses.A_BOLD if y == 0 else 0)
                except curses.error:
                    pass
            stdscr.refresh()
            redraw = False
            while not redraw:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                stdscr.timeout(max(1, int(remaining * 1000)))
                key = stdscr.getch()
                if key in (ord("q"), ord("Q")):
                    return 0
                if key in (ord("a"), ord("A")):
                    show_all = not show_all
                    redraw = True
                elif key == curses.KEY_RESIZE:
                    redraw = True
            if redraw:
                continue
            try:
                prev, cur, error = cur, sample(root), None
            except TopError as e:
                error = str(e)
            now = time.monotonic()
            deadline = deadline + interval if deadline + interval > now else now + interval

    return curses.wrapper(loop)


def cmd_top(args: argparse.Namespace) -> int:
    """``ksmfs top [MOUNTPOINT] [--interval SECONDS] [--once] [--all]``."""
    root = args.mountpoint
    interval = args.interval
    show_all = getattr(args, "all", False)
    if interval < 0:
        print("ksmfs top: --interval must be >= 0", file=sys.stderr)
        return 2
    try:
        if args.once:
            return run_once(root, interval, show_all)
        # A live view that refreshes faster than 10 times a second only burns CPU.
        interval = max(interval, 0.1)
        # Ctrl-C must quit even when started from a script's background job, which
        # inherits SIGINT ignored (Python then installs no KeyboardInterrupt handler).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if not (sys.stdout.isatty() and sys.stdin.isatty()):
            return run_plain(root, interval, show_all)
        read_ksm(root)  # fail before curses takes the screen, so the message stays visible
        try:
            import curses
        except ModuleNotFoundError:
            return run_plain(root, interval, show_all)
        try:
            return run_curses(root, interval, show_all)
        except curses.error as e:  # unknown TERM and the like: before anything was drawn
            print(f"ksmfs top: no curses ({e}); printing plain frames", file=sys.stderr)
            return run_plain(root, interval, show_all)
    except TopError as e:
        print(f"ksmfs top: {e}", file=sys.stderr)
        return 2

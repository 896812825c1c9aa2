"""``ksmfs capture`` and ``ksmfs estimate``: argument handling, progress and output."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

from ksmfs.kernel import KsmError
from ksmfs.linux import PAGE_SIZE

from .build import KNOB_ORDER, BuildError, build
from .format import KIND_ANON, Capture, CaptureError, load

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
GiB = 1 << 30


class Bar:
    """A one-line progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, label: str, stream: IO[str] | None = None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.on = self.stream.isatty()
        self.last = 0.0
        self.shown = False

    def __call__(self, done: int, total: int, procs: int, nprocs: int) -> None:
        now = time.monotonic()
        if not self.on or (now - self.last < 0.1 and procs < nprocs):
            return
        self.last = now
        frac = min(1.0, done / total) if total else (procs / nprocs if nprocs else 1.0)
        width = 30
        fill = int(frac * width)
        self.stream.write(f"\r{self.label} [{'#' * fill}{'.' * (width - fill)}] "
                          f"{done / GiB:.2f}/{total / GiB:.2f} GiB, {procs}/{nprocs} processes ")
        self.stream.flush()
        self.shown = True

    def text(self, msg: str) -> None:
        if self.on:
            self.stream.write(f"\r{self.label} {msg}\033[K")
            self.stream.flush()
            self.shown = True

    def done(self) -> None:
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False


def _err(cmd: str, msg: str) -> None:
    print(f"ksmfs {cmd}: {msg}", file=sys.stderr)


def _unwritable(path: str) -> str | None:
    """Why ``path`` cannot be written as a new file, checked before the work that fills it
    (a capture with --watch, an estimate): None when it looks writable."""
    p = Path(path)
    if p.is_dir():
        return f"cannot write {path}: it is a directory"
    if not p.resolve().parent.is_dir():
        return f"cannot write {path}: no directory {p.parent}"
    return None


def _take(cmd: str, args: argparse.Namespace) -> Capture | None:
    from .take import capture

    pids = list(getattr(args, "pids", None) or [])
    if pids and args.all:
        _err(cmd, "give PIDs or --all, not both")
        return None
    if not pids and not args.all:
        _err(cmd, "say which processes: PID ... or --all" + (" or --capture FILE" if cmd == "estimate" else ""))
        return None
    if os.geteuid() != 0:
        _err(cmd, "needs root (page frame numbers in /proc/PID/pagemap, /proc/kpageflags, "
                  "/proc/PID/mem of other users' processes)")
        return None
    watch = getattr(args, "watch", None)
    if watch is not None and watch < 0:
        _err(cmd, f"--watch must be >= 0 seconds, not {watch}")
        return None
    bar = Bar(f"{cmd}:")

    def warn(msg: str) -> None:
        bar.done()
        _err(cmd, msg)

    try:
        cap = capture(None if args.all else pids, watch or None, warn, bar)
    finally:
        bar.done()
    if not cap.processes:
        _err(cmd, "no process could be read")
        return None
    return cap


def _summary(cap: Capture) -> str:
    anon = int((cap.kind == KIND_ANON).sum())
    n = len(cap.processes)
    return (f"{n} process{'es' if n != 1 else ''}, {anon} anonymous pages "
            f"({anon * PAGE_SIZE / GiB:.2f} GiB), {cap.npages} mapped pages")


def cmd_capture(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    problem = _unwritable(args.output)
    if problem is not None:
        _err("capture", problem)
        return EXIT_USAGE
    cap = _take("capture", args)
    if cap is None:
        return EXIT_USAGE
    try:
        cap.save(args.output)
    except OSError as e:
        _err("capture", f"cannot write {args.output}: {e.strerror or e}")
        return EXIT_FAIL
    print(f"captured {_summary(cap)} in {time.monotonic() - t0:.1f} s -> {args.output}")
    return EXIT_OK


def parse_sets(items: list[str] | None) -> dict[str, str] | str:
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name or not value.strip():
            return f"--set wants KNOB=VALUE, not {item!r}"
        if name not in KNOB_ORDER:
            return f"--set {name}: not a writable KSM knob ({', '.join(sorted(KNOB_ORDER))})"
        out[name] = value.strip()
    return out


def current_knobs() -> dict[str, int | str] | None:
    from .take import read_knobs

    got = read_knobs()
    return got or None


def cmd_estimate(args: argparse.Namespace) -> int:
    from .estimate import report, run

    if args.max_full_scans < 1:
        _err("estimate", f"--max-full-scans must be at least 1, not {args.max_full_scans}")
        return EXIT_USAGE
    sets = parse_sets(getattr(args, "set", None))
    if isinstance(sets, str):
        _err("estimate", sets)
        return EXIT_USAGE
    if args.capture:
        if args.pids or args.all:
            _err("estimate", "give PIDs, --all or --capture FILE, only one of them")
            return EXIT_USAGE
        try:
            cap: Capture | None = load(args.capture)
        except CaptureError as e:
            _err("estimate", str(e))
            return EXIT_USAGE
        source = f"capture {args.capture}"
    else:
        cap = _take("estimate", args)
        source = "processes captured now"
    if cap is None:
        return EXIT_USAGE
    machine = current_knobs()
    knobs: dict[str, Any] = dict(machine if machine is not None else cap.knobs)
    knobs = {n: v for n, v in knobs.items() if n in KNOB_ORDER}
    knobs.update(sets)
    problem = _unwritable(args.plot) if args.plot else None
    if problem is not None:  # checked before the run, as --json is by opening it
        _err("estimate", problem)
        return EXIT_USAGE
    try:
        snaps_out: IO[str] | None = (
            open(args.json, "w", encoding="utf-8") if args.json else None  # noqa: SIM115 - closed in the finally
        )
    except OSError as e:
        _err("estimate", f"cannot write {args.json}: {e.strerror or e}")
        return EXIT_USAGE
    bar = Bar("estimate:")
    try:
        bar.text("building the simulated kernel")
        built = build(cap, args.assume, knobs)

        def on_snapshot(s: dict[str, Any]) -> None:
            if snaps_out is not None:
                snaps_out.write(json.dumps(s) + "\n")

        res = run(built, on_snapshot, max_full_scans=args.max_full_scans,
                  progress=lambda n: bar.text(f"full scan {n}"))
    except BuildError as e:
        bar.done()
        _err("estimate", str(e))
        return EXIT_USAGE
    except (KsmError, RuntimeError, ValueError) as e:  # a capture the model cannot hold
        bar.done()
        _err("estimate", f"the simulated kernel refused the capture: {' '.join(str(e).split())}")
        return EXIT_FAIL
    except OSError as e:
        bar.done()
        _err("estimate", f"cannot write {e.filename}: {e.strerror}")
        return EXIT_FAIL
    finally:
        if snaps_out is not None:
            snaps_out.close()
    bar.done()
    which = "this machine's knobs" if machine is not None else "the knobs recorded in the capture"
    header = f"ksmfs estimate: {source}: {_summary(cap)}; {which}" + (
        f", {', '.join(f'{n}={v}' for n, v in sets.items())} set" if sets else "")
    print(report(built, res, args.assume, header))
    if args.json:
        print(f"wrote {len(res.snapshots)} snapshots (one per line) to {args.json}", file=sys.stderr)
    if args.plot:
        from ksmfs.scenario.cli import write_plot

        title = "ksmfs estimate: " + (Path(args.capture).name if args.capture else "live processes")
        return write_plot("estimate", "plot_snapshots", args.plot, res.snapshots, title=title)
    return EXIT_OK

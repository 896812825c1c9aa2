"""``ksmfs run``, ``ksmfs diff`` and ``ksmfs scenarios`` (called by ksmfs.cli).

Each ``cmd_*(args) -> int`` prints a problem as one line on stderr, prefixed with its
command (``ksmfs run: ...``), and returns 2 for a bad scenario, bad arguments or a real
kernel that cannot be used, 1 when a run fails or ``diff`` finds differences.

``ksmfs run`` shows a table on a terminal (one row per full scan: the main counters and
the timeline steps that ran after it) and writes JSON lines (one snapshot per full scan)
when stdout is not a terminal, with ``--json`` (stdout) or ``--json FILE``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

from ksmfs.linux import DEFAULT_VERSION
from ksmfs.scenario.driver import steps_due
from ksmfs.scenario.loader import ScenarioError, list_builtin, load_scenario
from ksmfs.scenario.model import Fork, Madvise, MergeAny, Scenario, Spawn, Step, Sysfs, Write

EXIT_OK = 0
EXIT_FAIL = 1  # the run failed, or `diff` found differences
EXIT_USAGE = 2  # bad scenario / bad arguments / the real kernel cannot be used

Snapshot = dict[str, Any]

# Columns of the terminal table: (snapshot ksm field, heading). Counters a kernel
# version does not have (ksm_zero_pages before 6.6, general_profit before 6.4) are left out.
TABLE_COUNTERS = (
    ("pages_shared", "shared"),
    ("pages_sharing", "sharing"),
    ("pages_unshared", "unshared"),
    ("pages_volatile", "volatile"),
    ("ksm_zero_pages", "zero"),
)
MIB = 1024 * 1024


def _say(command: str, message: str) -> None:
    print(f"ksmfs {command}: {' '.join(message.split())}", file=sys.stderr)


def step_label(step: Step) -> str:
    """A step as a short phrase for the table and the plots: ``write vm-0 ram 0+100 unique``,
    ``run=2``, ``exit vm-1``, ``fork web-0 web-0-child``, ``spawn late-0 late-1``."""
    action = step.action
    if isinstance(action, Sysfs):  # a knob write reads best as itself: run=2
        return " ".join(f"{name}={value}" for name, value in action.values)
    words: list[str] = [action.kind]
    for attr in ("process", "vma"):
        if hasattr(action, attr):
            words.append(str(getattr(action, attr)))
    count = getattr(action, "count", None)
    if count is not None:
        words.append(f"{getattr(action, 'first', 0)}+{count}")
    if isinstance(action, Write):
        words.append(action.segment.spec)
    elif isinstance(action, Madvise):
        words.append(action.advice)
    elif isinstance(action, MergeAny):
        words.append("on" if action.enable else "off")
    elif isinstance(action, Fork):
        words.append(action.child.name)
    elif isinstance(action, Spawn):
        words.extend(p.name for p in action.processes)
    return " ".join(words)


def steps_by_scan(scenario: Scenario) -> dict[int, list[str]]:
    """Labels of the steps that run after each full scan's snapshot (the driver's
    steps_due: none from the last snapshot on, no snapshot could show them)."""
    out: dict[int, list[str]] = {}
    for k in range(scenario.max_full_scans):
        labels = [step_label(step) for step in steps_due(scenario, k)]
        if labels:
            out[k] = labels
    return out


class _StderrProgress:
    """A one-line status on a TTY stderr, redrawn in place at every message (rich);
    silent otherwise, so that pipes and CI logs stay clean."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.live: Any = None
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.live import Live
            from rich.spinner import Spinner

            self.spinner = Spinner("dots", text=prefix)
            self.live = Live(self.spinner, console=Console(stderr=True), transient=True,
                             refresh_per_second=8)
            self.live.start()

    def __call__(self, message: str) -> None:
        if self.live is not None:
            self.spinner.update(text=f"{self.prefix}{message}")
            self.live.refresh()

    def done(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


class RunTable:
    """``ksmfs run`` on a terminal: a table that grows by one row per full scan, with a
    status line under it while the backend works on the next one."""

    def __init__(self, scenario: Scenario, backend: str, kernel: str | None) -> None:
        from rich import box
        from rich.console import Console, Group
        from rich.live import Live
        from rich.spinner import Spinner
        from rich.table import Table

        self.scenario = scenario
        self.steps = steps_by_scan(scenario)
        where = f"simulated {kernel}" if backend == "sim" else "this machine's kernel"
        self.table = Table(
            title=f"{scenario.name} ({where}, {scenario.max_full_scans} full scans)",
            caption="pages; profit = general_profit in MiB; then = steps run after the scan",
            caption_justify="left",
            title_justify="left",
            box=box.SIMPLE_HEAD,
        )
        self.columns: list[str] | None = None
        self.spinner = Spinner("dots", text="setting up the processes")
        self.console = Console()
        self.live = Live(Group(self.table, self.spinner), console=self.console,
                         refresh_per_second=8, transient=False)

    def _add_columns(self, ksm: dict[str, Any]) -> None:
        self.table.add_column("scan", justify="right", no_wrap=True)
        self.columns = [name for name, _ in TABLE_COUNTERS if name in ksm]
        for name, heading in TABLE_COUNTERS:
            if name in self.columns:
                self.table.add_column(heading, justify="right", no_wrap=True)
        if "general_profit" in ksm:
            self.table.add_column("profit", justify="right", no_wrap=True)
        self.table.add_column("then")

    def snapshot(self, snap: Snapshot) -> None:
        ksm = snap.get("ksm", {})
        if self.columns is None:
            self._add_columns(ksm)
        assert self.columns is not None
        k = snap["full_scans"]
        cells = [str(k), *(f"{ksm[name]:,}" for name in self.columns)]
        if "general_profit" in ksm:
            cells.append(f"{ksm['general_profit'] / MIB:.2f}")
        steps = self.steps.get(k, [])
        if len(steps) > 3:  # eight forks after one scan: the first ones and a count
            steps = [*steps[:2], f"+{len(steps) - 2} more"]
        cells.append("; ".join(steps))
        self.table.add_row(*cells)
        if k < self.scenario.max_full_scans:
            self.spinner.update(text=f"full scan {k + 1} of {self.scenario.max_full_scans}")
        self.live.refresh()

    def progress(self, message: str) -> None:
        """The backends' own messages: the rows already say which full scan is done."""

    def __enter__(self) -> RunTable:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.update(self.table)  # drop the status line; the table stays
        self.live.stop()


def _load(command: str, args: argparse.Namespace) -> Scenario | None:
    try:
        return load_scenario(args.scenario)
    except ScenarioError as e:
        _say(command, str(e))
        return None


def real_kernel_problem() -> str | None:
    """Why this machine's KSM cannot be driven now, in words a user understands (None: it
    can). Checked before anything runs, so that a refusal simulates and writes nothing."""
    import errno
    import os
    import shutil

    from ksmfs.scenario.realkernel import (
        KSM_DIR,
        KnobError,
        KsmSysfs,
        RealBackendError,
        check_no_foreign_pages,
    )

    if not KSM_DIR.is_dir():
        return (f"this kernel has no KSM ({KSM_DIR} does not exist: built without "
                "CONFIG_KSM?); only the simulated kernel (--backend sim) is available")
    if os.statvfs(KSM_DIR).f_flag & os.ST_RDONLY:
        return (f"{KSM_DIR} is read-only here (/sys is mounted read-only, as in a "
                "container): the real KSM cannot be driven from this place")
    if os.geteuid() != 0:
        return f"driving the real KSM needs root (writes to {KSM_DIR}); run this as root"
    sysfs = KsmSysfs()
    probe = "stable_node_chains_prune_millisecs"  # writing its own value changes nothing
    try:
        sysfs.write(probe, sysfs.read(probe))
    except (KnobError, OSError) as e:
        if e.errno == errno.EROFS:
            return (f"{KSM_DIR} is read-only here (/sys is mounted read-only, as in a "
                    "container): the real KSM cannot be driven from this place")
        return f"{KSM_DIR} cannot be written here ({os.strerror(e.errno or errno.EIO)})"
    if shutil.which("gcc") is None:
        return "the real backend compiles a small C worker: install gcc (apt-get install gcc)"
    try:
        check_no_foreign_pages(sysfs)
    except RealBackendError as e:
        return str(e)
    return None


def _backend(name: str) -> Callable[..., list[Snapshot]]:
    if name == "sim":
        from ksmfs.scenario.sim import run_sim

        return run_sim
    # Lazy: the real backend needs root and a C compiler; `ksmfs run --backend sim`
    # must work without it.
    from ksmfs.scenario.real import run_real

    return run_real


def _run_backend(scenario: Scenario, backend: str, on_snapshot: Callable[[Snapshot], None],
                 progress: Callable[[str], None],
                 kernel_version: str | None = None) -> list[Snapshot]:
    run = _backend(backend)
    if backend == "sim" and kernel_version:
        return run(scenario, on_snapshot, progress=progress, kernel_version=kernel_version)
    return run(scenario, on_snapshot, progress=progress)


def _fail(command: str, backend: str, e: BaseException) -> int:
    text = " ".join(str(e).split()) or type(e).__name__
    _say(command, f"{backend} backend failed: {text}")
    return EXIT_FAIL


def write_plot(command: str, kind: str, path: str, *data: Any, title: str,
                steps: dict[int, list[str]] | None = None) -> int:
    try:
        from ksmfs import plot

        getattr(plot, kind)(*data, path, title=title, steps=steps)
    except ModuleNotFoundError as e:
        _say(command, f"--plot needs the Python module {e.name!r} (pip install 'ksmfs[plot]')")
        return EXIT_FAIL
    except Exception as e:  # PlotError and OSError are one-line, user-facing reasons
        _say(command, f"--plot {path}: {e}")
        return EXIT_FAIL
    print(f"wrote {path}", file=sys.stderr)
    return EXIT_OK


@contextmanager
def _output(json_path: str | None, table: bool, scenario: Scenario, backend: str,
            kernel: str | None) -> Iterator[tuple[Callable[[Snapshot], None],
                                                Callable[[str], None]]]:
    """(on_snapshot, progress) for a run: JSON lines to a file or stdout, and/or the
    terminal table; the file is closed and the screen restored however the run ends."""
    out: IO[str] | None = None
    if json_path not in (None, "-"):
        out = open(json_path, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    elif json_path == "-" or not table:
        out = sys.stdout
    view = RunTable(scenario, backend, kernel) if table else None
    status = None if view else _StderrProgress(f"{scenario.name} ({backend}): ")

    def on_snapshot(snap: Snapshot) -> None:
        if out is not None:
            out.write(json.dumps(snap) + "\n")
            out.flush()
        if view is not None:
            view.snapshot(snap)

    try:
        if view is not None:
            with view:
                yield on_snapshot, view.progress
        else:
            assert status is not None
            try:
                yield on_snapshot, status
            finally:
                status.done()
    finally:
        if out is not None and out is not sys.stdout:
            out.close()


def cmd_run(args: argparse.Namespace) -> int:
    """Run a scenario on one backend: a table on a terminal, JSON lines otherwise."""
    scenario = _load("run", args)
    if scenario is None:
        return EXIT_USAGE
    backend = getattr(args, "backend", "sim") or "sim"
    kernel = getattr(args, "kernel", None)
    if backend == "sim" and kernel is not None:
        from ksmfs.kernel import KsmError
        from ksmfs.kernel.versions import get_profile

        try:
            get_profile(kernel)
        except KsmError as e:
            _say("run", f"--kernel: {e.message}")
            return EXIT_USAGE
    if backend == "real":
        if kernel:
            _say("run", "--kernel picks the simulated kernel's version; the real backend "
                 "runs this machine's kernel")
            return EXIT_USAGE
        problem = real_kernel_problem()
        if problem is not None:
            _say("run", f"cannot use the real kernel: {problem}")
            return EXIT_USAGE
    json_path = getattr(args, "json", None)
    table = sys.stdout.isatty() and json_path != "-"
    snaps: list[Snapshot] = []
    try:
        with _output(json_path, table, scenario, backend, kernel or DEFAULT_VERSION) as (on_snap, prog):
            snaps = _run_backend(scenario, backend, on_snap, prog, kernel)
    except (KeyboardInterrupt, ModuleNotFoundError, BrokenPipeError):
        raise
    except OSError as e:
        if json_path and e.filename == json_path:
            _say("run", f"cannot write {json_path}: {e.strerror}")
            return EXIT_USAGE
        return _fail("run", backend, e)
    except Exception as e:
        return _fail("run", backend, e)
    if json_path not in (None, "-"):
        print(f"wrote {len(snaps)} snapshots (one per line) to {json_path}", file=sys.stderr)
    plot_path = getattr(args, "plot", None)
    if plot_path:
        return write_plot("run", "plot_snapshots", plot_path, snaps,
                           title=f"{scenario.name} ({backend})", steps=steps_by_scan(scenario))
    return EXIT_OK


def cmd_diff(args: argparse.Namespace) -> int:
    """Run a scenario on the simulated and the real kernel and print what differs."""
    from ksmfs.scenario.diff import allowed_fields, compare

    scenario = _load("diff", args)
    if scenario is None:
        return EXIT_USAGE
    problem = real_kernel_problem()
    if problem is not None:
        _say("diff", f"cannot use the real kernel: {problem}")
        return EXIT_USAGE
    runs: dict[str, list[Snapshot]] = {}
    for backend in ("sim", "real"):
        progress = _StderrProgress(f"{scenario.name} ({backend}): ")
        try:
            runs[backend] = _run_backend(scenario, backend, lambda s: None, progress)
        except (KeyboardInterrupt, ModuleNotFoundError, BrokenPipeError):
            raise
        except Exception as e:
            return _fail("diff", backend, e)
        finally:
            progress.done()
    result = compare(runs["sim"], runs["real"], allowed_fields(scenario))
    for d in result.differences:
        print(d.line())
    print(f"{scenario.name}: {result.summary()}")
    rc = EXIT_OK if result.equal else EXIT_FAIL
    plot_path = getattr(args, "plot", None)
    if plot_path:
        prc = write_plot("diff", "plot_diff", plot_path, runs["sim"], runs["real"],
                          title=scenario.name, steps=steps_by_scan(scenario))
        rc = rc or prc
    return rc


def cmd_scenarios(args: argparse.Namespace) -> int:
    """List the built-in scenarios: name and the first line of the description."""
    items = list_builtin()
    width = max((len(n) for n, _ in items), default=0)
    for name, summary in items:
        print(f"{name:<{width}}  {summary}".rstrip())
    return EXIT_OK

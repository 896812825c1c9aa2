"""``ksmfs run``, ``ksmfs diff`` and ``ksmfs scenarios`` (called by ksmfs.cli).

Each ``cmd_*(args) -> int`` prints a bad scenario as one line on stderr and returns 2.
Snapshots go to stdout (or ``--json FILE``) as JSON lines; progress goes to stderr, and
only when stderr is a terminal, so pipes and CI logs stay clean.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import IO, Any

from ksmfs.scenario.loader import ScenarioError, list_builtin, load_scenario
from ksmfs.scenario.model import Scenario

EXIT_OK = 0
EXIT_FAIL = 1  # the run failed, or `diff` found differences
EXIT_USAGE = 2  # bad scenario / bad arguments

Snapshot = dict[str, Any]


class _Progress:
    """A one-line status on a TTY stderr, redrawn in place; silent otherwise."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.active = sys.stderr.isatty()
        self.shown = False

    def __call__(self, message: str) -> None:
        if self.active:
            sys.stderr.write(f"\r\x1b[K{self.prefix}{message}")
            sys.stderr.flush()
            self.shown = True

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.shown = False


def _load(args: argparse.Namespace) -> Scenario | None:
    try:
        return load_scenario(args.scenario)
    except ScenarioError as e:
        print(f"ksmfs: {e}", file=sys.stderr)
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
                 progress: _Progress, kernel_version: str | None = None) -> list[Snapshot]:
    run = _backend(backend)
    try:
        if backend == "sim" and kernel_version:
            return run(scenario, on_snapshot, progress=progress, kernel_version=kernel_version)
        return run(scenario, on_snapshot, progress=progress)
    finally:
        progress.done()


def _fail(command: str, backend: str, e: BaseException) -> int:
    text = " ".join(str(e).split()) or type(e).__name__
    print(f"ksmfs {command}: {backend} backend failed: {text}", file=sys.stderr)
    return EXIT_FAIL


def _write_plot(kind: str, path: str, *data: Any, title: str) -> int:
    try:
        from ksmfs import plot

        getattr(plot, kind)(*data, path, title=title)
    except ModuleNotFoundError as e:
        print(f"ksmfs: --plot needs the Python module {e.name!r} "
              "(pip install 'ksmfs[plot]')", file=sys.stderr)
        return EXIT_FAIL
    except Exception as e:  # PlotError and OSError are one-line, user-facing reasons
        print(f"ksmfs: --plot {path}: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """Run a scenario on one backend; one JSON snapshot per line."""
    scenario = _load(args)
    if scenario is None:
        return EXIT_USAGE
    backend = getattr(args, "backend", "sim") or "sim"
    json_path = getattr(args, "json", None)
    out: IO[str]
    try:
        out = open(json_path, "w", encoding="utf-8") if json_path else sys.stdout
    except OSError as e:
        print(f"ksmfs run: cannot write {json_path}: {e.strerror}", file=sys.stderr)
        return EXIT_USAGE

    def on_snapshot(snap: Snapshot) -> None:
        out.write(json.dumps(snap) + "\n")
        out.flush()

    progress = _Progress(f"{scenario.name} ({backend}): ")
    try:
        snaps = _run_backend(scenario, backend, on_snapshot, progress,
                             getattr(args, "kernel", None))
    except (KeyboardInterrupt, ModuleNotFoundError, BrokenPipeError):
        raise
    except Exception as e:  # noqa: BLE001 - the backend's reason, as one line
        return _fail("run", backend, e)
    finally:
        if out is not sys.stdout:
            out.close()
    plot_path = getattr(args, "plot", None)
    if plot_path:
        return _write_plot("plot_snapshots", plot_path, snaps,
                           title=f"{scenario.name} ({backend})")
    return EXIT_OK


def cmd_diff(args: argparse.Namespace) -> int:
    """Run a scenario on the simulated and the real kernel and print what differs."""
    from ksmfs.scenario.diff import allowed_fields, compare

    scenario = _load(args)
    if scenario is None:
        return EXIT_USAGE
    runs: dict[str, list[Snapshot]] = {}
    for backend in ("sim", "real"):
        progress = _Progress(f"{scenario.name} ({backend}): ")
        try:
            runs[backend] = _run_backend(scenario, backend, lambda s: None, progress)
        except (KeyboardInterrupt, ModuleNotFoundError, BrokenPipeError):
            raise
        except Exception as e:  # noqa: BLE001
            return _fail("diff", backend, e)
    result = compare(runs["sim"], runs["real"], allowed_fields(scenario))
    for d in result.differences:
        print(d.line())
    print(f"{scenario.name}: {result.summary()}")
    rc = EXIT_OK if result.equal else EXIT_FAIL
    plot_path = getattr(args, "plot", None)
    if plot_path:
        prc = _write_plot("plot_diff", plot_path, runs["sim"], runs["real"],
                          title=f"{scenario.name}: sim (solid) vs real (dashed)")
        rc = rc or prc
    return rc


def cmd_scenarios(args: argparse.Namespace) -> int:
    """List the built-in scenarios: name and the first line of the description."""
    items = list_builtin()
    width = max((len(n) for n, _ in items), default=0)
    for name, summary in items:
        print(f"{name:<{width}}  {summary}".rstrip())
    return EXIT_OK

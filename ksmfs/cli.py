"""The ``ksmfs`` command line.

``main(argv) -> int`` parses the arguments and hands the parsed namespace to the function
that implements the subcommand. Those functions live in other modules (``ksmfs.runtime``,
``ksmfs.scenario.cli``, ``ksmfs.plot``, ``ksmfs.top``) and are imported only when their
subcommand runs, so that ``ksmfs scenarios`` or ``ksmfs plot`` work on a machine without
pyfuse3 and ``ksmfs --help`` starts fast.

Errors are one line on stderr and an exit code, never a traceback: 2 for usage errors and
for a subcommand whose module or dependency is missing, 130 for Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from ksmfs import __version__
from ksmfs.linux import DEFAULT_VERSION, SUPPORTED_VERSIONS

# Kernel versions the simulation knows, for --help (ksmfs.linux loads no numpy); the
# kernel itself rejects an unknown one with EINVAL.
KERNEL_VERSIONS = SUPPORTED_VERSIONS
DEFAULT_KERNEL = DEFAULT_VERSION

EXIT_USAGE = 2
EXIT_SIGINT = 130


@dataclass(frozen=True)
class Target:
    """Where a subcommand is implemented: ``module.function(args) -> int``."""

    module: str
    function: str
    # pip extra that brings the module's third-party dependencies, for the error message.
    extra: str | None = None


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def build_parser() -> argparse.ArgumentParser:
    """The whole ``ksmfs`` argument parser (also used by the tests)."""
    parser = argparse.ArgumentParser(
        prog="ksmfs",
        description=(
            "A simulated Linux kernel with KSM (kernel samepage merging), served as a FUSE\n"
            "file system that looks like /sys/kernel/mm/ksm and /proc."
        ),
        epilog=_examples(
            "ksmfs mount /tmp/ksm                 # mount a simulated 6.18 kernel",
            "cat /tmp/ksm/sys/kernel/mm/ksm/pages_sharing",
            "ksmfs top /tmp/ksm                   # live view of the counters",
            "ksmfs umount /tmp/ksm",
            "ksmfs scenarios                      # list the built-in scenarios",
            "ksmfs <command> --help               # details and examples per command",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ksmfs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(
        name: str, help_: str, description: str, epilog: str, target: Target
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_,
            description=description,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(target=target)
        return p

    p = add(
        "mount",
        "mount a simulated kernel's /sys and /proc at MOUNTPOINT",
        "Mount a simulated kernel at MOUNTPOINT. MOUNTPOINT/sys/kernel/mm/ksm and\n"
        "MOUNTPOINT/proc/PID/ksm_stat behave like the real files; ksmd runs in the\n"
        "background; MOUNTPOINT/ksmfs/ holds control files that start processes and write\n"
        "their memory. Without --foreground the command returns once the file system is\n"
        "mounted and keeps serving it in the background until `ksmfs umount`.",
        _examples(
            "ksmfs mount /tmp/ksm",
            "ksmfs mount /tmp/ksm --scenario kvm-guests --kernel 6.1",
            "ksmfs mount /tmp/ksm --scenario ./my.toml --speed 10   # ksmd 10x faster",
            "ksmfs mount /ksm --foreground --allow-other            # e.g. in a container",
            "echo 1 > /tmp/ksm/sys/kernel/mm/ksm/run",
        ),
        Target("ksmfs.runtime", "cmd_mount"),
    )
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing empty directory")
    p.add_argument(
        "--scenario",
        metavar="FILE_OR_NAME",
        help="start the processes of a scenario (a TOML file or a built-in name)",
    )
    p.add_argument("--capture", metavar="FILE",
                   help="the processes of a `ksmfs capture` file instead (KSM on)")
    p.add_argument("--assume", choices=("as-is", "merge-any"), default="as-is",
                   help="with --capture: what is mergeable (as for ksmfs estimate)")
    p.add_argument(
        "--kernel",
        metavar="VERSION",
        default=DEFAULT_KERNEL,
        help=f"kernel version to simulate: {' '.join(KERNEL_VERSIONS)} (default {DEFAULT_KERNEL})",
    )
    p.add_argument(
        "--speed",
        metavar="FACTOR",
        type=float,
        default=1.0,
        help="simulated time runs FACTOR times as fast as wall time (default 1.0)",
    )
    p.add_argument("--foreground", action="store_true", help="stay in the foreground")
    p.add_argument(
        "--allow-other",
        action="store_true",
        help="let other users see the mount (FUSE allow_other)",
    )
    p.add_argument("--debug", action="store_true", help="log debug messages")

    p = add(
        "umount",
        "unmount a ksmfs mount",
        "Unmount a file system mounted with `ksmfs mount` and stop its server.",
        _examples("ksmfs umount /tmp/ksm"),
        Target("ksmfs.runtime", "cmd_umount"),
    )
    p.add_argument("mountpoint", metavar="MOUNTPOINT")

    p = add(
        "run",
        "run a scenario on the simulated or the real kernel",
        "Run a scenario (TOML file or built-in name). On a terminal it shows a table, one\n"
        "row per full scan: the main counters and the timeline steps that ran after it.\n"
        "Piped, or with --json, it writes one JSON snapshot per full scan instead.\n"
        "--backend sim drives the simulated kernel (--kernel picks its version);\n"
        "--backend real drives this machine's KSM (root; it changes /sys/kernel/mm/ksm\n"
        "and restores it afterwards).",
        _examples(
            "ksmfs run kvm-guests",
            "ksmfs run kvm-guests --kernel 6.1",
            "ksmfs run kvm-guests | jq .ksm.pages_sharing    # JSON lines when piped",
            "ksmfs run ./my.toml --json out.jsonl --plot out.png",
            "ksmfs run ./my.toml --backend real --json real.jsonl   # as root",
        ),
        Target("ksmfs.scenario.cli", "cmd_run"),
    )
    p.add_argument("scenario", metavar="SCENARIO", help="a TOML file or a built-in name")
    p.add_argument(
        "--backend", choices=("sim", "real"), default="sim", help="which kernel (default sim)"
    )
    p.add_argument(
        "--kernel",
        metavar="VERSION",
        help=f"simulated kernel version: {' '.join(KERNEL_VERSIONS)} (default {DEFAULT_KERNEL})",
    )
    p.add_argument(
        "--json",
        metavar="OUT.jsonl",
        nargs="?",
        const="-",
        help="write one JSON snapshot per full scan to OUT.jsonl (without a file: stdout)",
    )
    p.add_argument("--plot", metavar="FILE.png", help="draw the counters (needs ksmfs[plot])")

    p = add(
        "diff",
        "run a scenario on both kernels and compare",
        "Run SCENARIO on the simulated kernel and on this machine's real KSM, and print,\n"
        "per full scan, every snapshot field that differs. Exits 0 when none does, 1 when\n"
        "some differ, 2 when this machine's KSM cannot be driven (it says why first).",
        _examples(
            "ksmfs diff kvm-guests                      # as root",
            "ksmfs diff ./my.toml --plot diff.png       # solid = sim, dashed = real",
        ),
        Target("ksmfs.scenario.cli", "cmd_diff"),
    )
    p.add_argument("scenario", metavar="SCENARIO", help="a TOML file or a built-in name")
    p.add_argument("--plot", metavar="FILE.png", help="draw both runs (needs ksmfs[plot])")

    add(
        "scenarios",
        "list the built-in scenarios",
        "List the built-in scenarios with their descriptions.",
        _examples("ksmfs scenarios", "ksmfs run NAME   # NAME from the list"),
        Target("ksmfs.scenario.cli", "cmd_scenarios"),
    )

    p = add(
        "plot",
        "draw a snapshot file (from `ksmfs run --json`) as a PNG",
        "Draw pages_shared, pages_sharing, pages_unshared, pages_volatile and\n"
        "ksm_zero_pages over full scans, and general_profit in MiB, from a snapshot\n"
        "JSONL file written by `ksmfs run --json`. Needs the plot extra:\n"
        "pip install 'ksmfs[plot]'.",
        _examples(
            "ksmfs run kvm-guests --json out.jsonl",
            "ksmfs plot out.jsonl -o out.png",
            "ksmfs plot out.jsonl -o out.png --title 'two VMs, 6.18'",
            "ksmfs plot out.jsonl -o out.png --scenario kvm-guests   # mark its steps",
        ),
        Target("ksmfs.plot", "cmd_plot", extra="plot"),
    )
    p.add_argument("jsonl", metavar="OUT.jsonl", help="snapshot file, one JSON object a line")
    p.add_argument("-o", "--output", metavar="FILE.png", required=True, help="PNG to write")
    p.add_argument("--title", help="figure title (default: the file name)")
    p.add_argument(
        "--scenario",
        metavar="FILE_OR_NAME",
        help="the scenario that was run: its timeline steps are marked on the plot",
    )

    p = add(
        "top",
        "live view of KSM counters and processes",
        "Show every counter of MOUNTPOINT/sys/kernel/mm/ksm with its rate per second, the\n"
        "memory saved, and the processes of MOUNTPOINT/proc/*/ksm_stat sorted by\n"
        "ksm_merging_pages. Works on a ksmfs mount and on / (this machine's real KSM).\n"
        "Keys: q quits. --once prints one plain-text frame (rates over --interval).",
        _examples(
            "ksmfs top /tmp/ksm",
            "ksmfs top                    # the real kernel (/)",
            "ksmfs top /tmp/ksm --interval 0.5",
            "ksmfs top /tmp/ksm --once --interval 0   # no wait, no rates",
        ),
        Target("ksmfs.top", "cmd_top"),
    )
    p.add_argument(
        "mountpoint",
        metavar="MOUNTPOINT",
        nargs="?",
        default="/",
        help="root of the tree to watch (default /)",
    )
    p.add_argument(
        "--interval",
        metavar="SECONDS",
        type=float,
        default=1.0,
        help="refresh every SECONDS (default 1.0)",
    )
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.add_argument(
        "--all",
        action="store_true",
        help="list every process, also those with no KSM state",
    )
    _add_capture_commands(add)
    return parser


def _add_capture_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """``ksmfs capture`` and ``ksmfs estimate`` (ksmfs.capture.cli)."""
    p = add(
        "capture",
        "record what KSM would see in real processes (contents as equality only)",
        "Record, for each process, its VMAs (VmFlags), its KSM state and, per mapped page,\n"
        "what ksmd's scan would see (not present, swapped, zero page, file page, or an\n"
        "anonymous page). Contents are kept only as equality: a content id per page from a\n"
        "keyed hash whose random key never leaves this process (0 = all-zero page).\n"
        "Needs root. Format: docs/capture-format.md.",
        _examples(
            "sudo ksmfs capture --all -o machine.kcap",
            "sudo ksmfs capture 1234 1240 --watch 10 -o jvms.kcap   # mark changing pages",
            "ksmfs estimate --capture machine.kcap --assume merge-any",
        ),
        Target("ksmfs.capture.cli", "cmd_capture"),
    )
    p.add_argument("pids", metavar="PID", type=int, nargs="*", help="processes to capture")
    p.add_argument("--all", action="store_true", help="every process but kernel threads")
    p.add_argument("--watch", metavar="SECONDS", type=float,
                   help="look again after SECONDS; pages that changed are volatile")
    p.add_argument("-o", "--output", metavar="FILE", required=True, help="capture file to write")

    p = add(
        "estimate",
        "predict what KSM would merge in real processes (or a capture)",
        "Build the simulated kernel from a capture (taken now from PIDs or --all, or read\n"
        "from --capture FILE), run the simulated ksmd with this machine's KSM knobs\n"
        "(overridden by --set) until the counters stop changing, and print what it saved,\n"
        "the counters, the full scans and ksmd time needed, and the processes that gain most.\n"
        "--assume as-is merges only what is mergeable now; merge-any as if every process\n"
        "had called prctl(PR_SET_MEMORY_MERGE, 1).",
        _examples(
            "sudo ksmfs estimate --all --assume merge-any",
            "sudo ksmfs estimate $(pgrep java) --assume merge-any --set pages_to_scan=1000",
            "ksmfs estimate --capture machine.kcap --json est.jsonl --plot est.png",
        ),
        Target("ksmfs.capture.cli", "cmd_estimate"),
    )
    p.add_argument("pids", metavar="PID", type=int, nargs="*", help="processes to capture now")
    p.add_argument("--all", action="store_true", help="every process but kernel threads")
    p.add_argument("--capture", metavar="FILE", help="a file written by `ksmfs capture`")
    p.add_argument("--watch", metavar="SECONDS", type=float,
                   help="with PIDs/--all: look again after SECONDS (changing pages)")
    p.add_argument("--assume", choices=("as-is", "merge-any"), default="as-is",
                   help="what is mergeable (default as-is)")
    p.add_argument("--set", metavar="KNOB=VALUE", action="append",
                   help="a KSM knob for the estimate (repeatable)")
    p.add_argument("--json", metavar="FILE.jsonl", help="write one snapshot per full scan")
    p.add_argument("--plot", metavar="FILE.png", help="draw the counters (needs ksmfs[plot])")
    p.add_argument("--max-full-scans", metavar="N", type=int, default=100,
                   help="give up after N full scans (default 100)")


def _missing_module_message(command: str, target: Target, e: ImportError) -> str:
    if not isinstance(e, ModuleNotFoundError):
        # `from ksmfs.kernel import Kernel` while that part of ksmfs is not there (yet).
        detail = " ".join(str(e).split())
        return f"ksmfs {command}: not available in this build ({detail})"
    missing = e.name or str(e)
    if missing == "ksmfs" or missing.startswith("ksmfs."):
        # One of our own modules: another part of ksmfs that this build does not have yet.
        return f"ksmfs {command}: not available in this build ({missing} is missing)"
    hint = f" (pip install 'ksmfs[{target.extra}]')" if target.extra else ""
    return f"ksmfs {command}: needs the Python module {missing!r}{hint}"


def _resolve(command: str, target: Target) -> Callable[[argparse.Namespace], int | None] | str:
    """Import the implementing function, or return the one-line reason it is unavailable."""
    try:
        module = importlib.import_module(target.module)
    except ImportError as e:
        return _missing_module_message(command, target, e)
    func = getattr(module, target.function, None)
    if func is None:
        return (
            f"ksmfs {command}: not available in this build "
            f"({target.module}.{target.function} is missing)"
        )
    run: Callable[[argparse.Namespace], int | None] = func
    return run


def main(argv: list[str] | None = None) -> int:
    """Run the ``ksmfs`` command line and return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors: argparse already printed
        return e.code if isinstance(e.code, int) else EXIT_USAGE

    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "debug", False) else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )
    return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    """Call ``args.target`` with ``args``; turn a missing module or Ctrl-C into an exit code."""
    try:
        func = _resolve(args.command, args.target)
        if isinstance(func, str):
            print(func, file=sys.stderr)
            return EXIT_USAGE
        rc = func(args)
    except ImportError as e:
        # A dependency imported lazily inside the command (matplotlib, pyfuse3 ...).
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(_missing_module_message(args.command, args.target, e), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_SIGINT
    except BrokenPipeError:
        # `ksmfs top --once | head`: the reader went away; Python would otherwise print an
        # error when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return 0 if rc is None else int(rc)


if __name__ == "__main__":
    sys.exit(main())

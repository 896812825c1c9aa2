"""The ``ksmfs`` command line: help, version, usage errors and lazy imports."""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ksmfs import __version__
from ksmfs.cli import EXIT_SIGINT, EXIT_USAGE, Target, build_parser, main, run_command

SUBCOMMANDS = ["mount", "umount", "run", "diff", "scenarios", "plot", "top"]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """`ksmfs --version` prints `ksmfs 0.1.0` from ksmfs.__version__ and exits 0."""
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"ksmfs {__version__}\n"
    assert __version__ == "0.1.0"


def test_version_through_python_m() -> None:
    """`python -m ksmfs --version` goes through __main__ and the same main()."""
    out = subprocess.run(
        [sys.executable, "-m", "ksmfs", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "ksmfs 0.1.0"


def test_top_level_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    """`ksmfs --help` names each subcommand and shows examples."""
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out
    assert "examples:" in out


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_help_has_examples(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every subcommand's --help exits 0 and shows at least one `ksmfs NAME` example."""
    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: ksmfs {name}")
    examples = out.split("examples:\n", 1)[1]
    assert f"ksmfs {name}" in examples
    # RawDescriptionHelpFormatter keeps one example per line.
    assert all(line.startswith("  ") for line in examples.strip("\n").splitlines())


def test_unknown_subcommand_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown subcommand is a usage error: exit 2 and a message naming it."""
    assert main(["frobnicate"]) == EXIT_USAGE
    assert "frobnicate" in capsys.readouterr().err


def test_no_subcommand_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """`ksmfs` alone is a usage error."""
    assert main([]) == EXIT_USAGE
    assert "usage:" in capsys.readouterr().err


def test_bad_float_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """--speed takes a float; anything else is exit 2 with argparse's message."""
    assert main(["mount", "/tmp/x", "--speed", "fast"]) == EXIT_USAGE
    assert "--speed" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["mount", "/mnt/k"],
            {
                "mountpoint": "/mnt/k",
                "scenario": None,
                "kernel": "6.18",
                "speed": 1.0,
                "foreground": False,
                "allow_other": False,
                "debug": False,
            },
        ),
        (
            [
                "mount",
                "/mnt/k",
                "--scenario",
                "x.toml",
                "--kernel",
                "6.1",
                "--speed",
                "2.5",
                "--foreground",
                "--allow-other",
                "--debug",
            ],
            {
                "mountpoint": "/mnt/k",
                "scenario": "x.toml",
                "kernel": "6.1",
                "speed": 2.5,
                "foreground": True,
                "allow_other": True,
                "debug": True,
            },
        ),
        (["umount", "/mnt/k"], {"mountpoint": "/mnt/k"}),
        (["run", "s.toml"], {"scenario": "s.toml", "backend": "sim", "json": None, "plot": None}),
        (
            ["run", "s.toml", "--backend", "real", "--json", "o.jsonl", "--plot", "o.png"],
            {"scenario": "s.toml", "backend": "real", "json": "o.jsonl", "plot": "o.png"},
        ),
        (["diff", "s"], {"scenario": "s", "plot": None}),
        (["diff", "s", "--plot", "d.png"], {"scenario": "s", "plot": "d.png"}),
        (["plot", "o.jsonl", "-o", "o.png"], {"jsonl": "o.jsonl", "output": "o.png"}),
        (["top"], {"mountpoint": "/", "interval": 1.0, "once": False}),
        (
            ["top", "/mnt/k", "--interval", "0.5", "--once"],
            {"mountpoint": "/mnt/k", "interval": 0.5, "once": True},
        ),
    ],
)
def test_argument_dests(argv: list[str], expected: dict[str, object]) -> None:
    """The parsed namespace carries the dests the implementing modules read."""
    args = build_parser().parse_args(argv)
    for key, value in expected.items():
        assert getattr(args, key) == value, key


@pytest.mark.parametrize(
    ("command", "module", "function"),
    [
        ("mount", "ksmfs.runtime", "cmd_mount"),
        ("umount", "ksmfs.runtime", "cmd_umount"),
        ("run", "ksmfs.scenario.cli", "cmd_run"),
        ("diff", "ksmfs.scenario.cli", "cmd_diff"),
        ("scenarios", "ksmfs.scenario.cli", "cmd_scenarios"),
        ("plot", "ksmfs.plot", "cmd_plot"),
        ("top", "ksmfs.top", "cmd_top"),
    ],
)
def test_targets(command: str, module: str, function: str) -> None:
    """Each subcommand is wired to the agreed module and function."""
    args = {
        "mount": ["mount", "m"],
        "umount": ["umount", "m"],
        "run": ["run", "s"],
        "diff": ["diff", "s"],
        "scenarios": ["scenarios"],
        "plot": ["plot", "j", "-o", "p"],
        "top": ["top"],
    }[command]
    target = build_parser().parse_args(args).target
    assert (target.module, target.function) == (module, function)


@pytest.fixture
def fake_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A real module on sys.path whose functions behave like subcommand implementations."""
    (tmp_path / "ksmfs_test_commands.py").write_text(
        textwrap.dedent(
            """
            def cmd_ok(args):
                return 7

            def cmd_none(args):
                return None

            def cmd_interrupt(args):
                raise KeyboardInterrupt

            def cmd_needs_dependency(args):
                import ksmfs_no_such_dependency_xyz

            def cmd_needs_name(args):
                from ksmfs import NoSuchName
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "ksmfs_test_commands"


def _ns(module: str, function: str) -> argparse.Namespace:
    return argparse.Namespace(command="demo", target=Target(module, function))


def test_exit_code_is_passed_through(fake_commands: str) -> None:
    """The implementing function's int is the exit code; None means 0."""
    assert run_command(_ns(fake_commands, "cmd_ok")) == 7
    assert run_command(_ns(fake_commands, "cmd_none")) == 0


def test_keyboard_interrupt_exits_130_quietly(
    fake_commands: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C inside a command gives exit 130 and prints nothing."""
    assert run_command(_ns(fake_commands, "cmd_interrupt")) == EXIT_SIGINT
    assert capsys.readouterr() == ("", "")


def test_missing_module_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A missing implementing module gives one line on stderr and exit 2."""
    assert run_command(_ns("ksmfs.no_such_module", "cmd_x")) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "ksmfs demo" in err and "ksmfs.no_such_module" in err
    assert "Traceback" not in err


def test_missing_function_is_one_line(
    fake_commands: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A module without the agreed function gives one line on stderr and exit 2."""
    assert run_command(_ns(fake_commands, "cmd_missing")) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cmd_missing" in err


def test_missing_dependency_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A third-party module missing at import time is named on one line (exit 2)."""
    args = argparse.Namespace(
        command="demo", target=Target("ksmfs_no_such_dependency_xyz", "cmd", extra="plot")
    )
    assert run_command(args) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "ksmfs_no_such_dependency_xyz" in err and "ksmfs[plot]" in err


def test_dependency_missing_inside_command_is_one_line(
    fake_commands: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dependency imported lazily by the command itself is reported the same way."""
    assert run_command(_ns(fake_commands, "cmd_needs_dependency")) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ksmfs_no_such_dependency_xyz" in err


def test_import_error_inside_command_is_one_line(
    fake_commands: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`from ksmfs.x import Name` failing inside a command is one line too, exit 2."""
    assert run_command(_ns(fake_commands, "cmd_needs_name")) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NoSuchName" in err and "Traceback" not in err


def test_scenarios_does_not_import_pyfuse3() -> None:
    """`ksmfs scenarios` must work without pyfuse3: the CLI imports lazily."""
    code = textwrap.dedent(
        """
        import sys
        from ksmfs.cli import main
        main(["scenarios"])
        print("IMPORTED" if "pyfuse3" in sys.modules else "CLEAN")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "CLEAN", out.stderr
    assert "Traceback" not in out.stderr


def test_help_does_not_import_heavy_modules() -> None:
    """`ksmfs --help` imports neither pyfuse3, trio, numpy nor matplotlib."""
    code = textwrap.dedent(
        """
        import sys
        from ksmfs.cli import main
        main(["--help"])
        heavy = {"pyfuse3", "trio", "numpy", "matplotlib"} & set(sys.modules)
        print("HEAVY", sorted(heavy))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "HEAVY []"

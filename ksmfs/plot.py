"""Draw snapshot files (``ksmfs run --json``) as PNG figures.

A snapshot file has one JSON object per line (see docs/scenario-format.md, "Snapshots"):
``{"full_scans": N, "ksm": {counter: int, ...}, "processes": {...}}``. This module reads
it with line-accurate errors and draws, over full scans:

* the page counters pages_shared, pages_sharing, pages_unshared, pages_volatile and
  ksm_zero_pages (top panel), and
* general_profit in MiB (bottom panel; it can be negative: every rmap_item costs 64 bytes),
* and, when the scenario is known, its timeline's steps (a write, ``run=2``, an exit ...)
  as dotted vertical lines at the full scan after which each ran, so that a reader sees
  why a curve moves.

Counters that a kernel version does not have (general_profit before 6.4, ksm_zero_pages
before 6.6) are simply left out. matplotlib is optional (``pip install 'ksmfs[plot]'``) and
is imported only when a figure is drawn, with the Agg backend so that no display is needed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Snapshot = dict[str, Any]
# Timeline steps to mark: full scan K -> labels of the steps run after K's snapshot.
Steps = dict[int, list[str]]
# What a figure shows, returned by the plot functions: line label -> (xs, ys), and the
# step marks as (full scan, text).
Drawn = dict[str, Any]

PAGE_COUNTERS = (
    "pages_shared",
    "pages_sharing",
    "pages_unshared",
    "pages_volatile",
    "ksm_zero_pages",
)
# Counters compared by plot_diff: the four that describe where every rmap_item is.
DIFF_COUNTERS = ("pages_shared", "pages_sharing", "pages_unshared", "pages_volatile")
COLORS = {
    "pages_shared": "tab:blue",
    "pages_sharing": "tab:green",
    "pages_unshared": "tab:orange",
    "pages_volatile": "tab:red",
    "ksm_zero_pages": "tab:purple",
    "general_profit": "tab:gray",
}
MIB = 1024 * 1024
# Figure size in pixels is FIGSIZE * DPI; savefig without bbox_inches="tight" keeps it exact.
FIGSIZE = (10.0, 7.0)
DPI = 100

PLOT_EXTRA_HINT = "install the plot extra: pip install 'ksmfs[plot]'"


class PlotError(Exception):
    """A one-line, user-facing reason why no figure was drawn (bad input, no matplotlib)."""


def parse_snapshots(lines: Sequence[str] | Any, source: str = "<input>") -> list[Snapshot]:
    """Parse snapshot lines; a bad line raises PlotError naming ``source:LINE``.

    Blank lines are ignored (an editor may add a final newline). Each line must be a JSON
    object with an int ``full_scans`` and an object ``ksm`` of ints; ``processes`` is
    optional here because the figures do not use it.
    """
    snaps: list[Snapshot] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{lineno}"
        try:
            snap = json.loads(line)
        except json.JSONDecodeError as e:
            raise PlotError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(snap, dict):
            raise PlotError(f"{where}: expected a JSON object, got {type(snap).__name__}")
        full_scans = snap.get("full_scans")
        if type(full_scans) is not int:
            raise PlotError(f"{where}: 'full_scans' must be an integer")
        ksm = snap.get("ksm")
        if not isinstance(ksm, dict):
            raise PlotError(f"{where}: 'ksm' must be an object of counters")
        for name in (*PAGE_COUNTERS, "general_profit"):
            if name in ksm and type(ksm[name]) is not int:
                raise PlotError(f"{where}: ksm.{name} must be an integer, got {ksm[name]!r}")
        snaps.append(snap)
    if not snaps:
        raise PlotError(f"{source}: no snapshots (the file is empty)")
    return snaps


def read_snapshots(path: str | Path) -> list[Snapshot]:
    """Read a snapshot JSONL file; any problem raises PlotError with file (and line)."""
    try:
        with open(path, encoding="utf-8") as f:
            return parse_snapshots(f, source=str(path))
    except OSError as e:
        raise PlotError(f"{path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise PlotError(f"{path}: not UTF-8 text ({e.reason})") from None


def _pyplot() -> Any:
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise PlotError(PLOT_EXTRA_HINT) from None
    # Agg: draw to files only; no display, no GUI toolkit (also in CI and containers).
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(snaps: Sequence[Snapshot], name: str) -> tuple[list[int], list[int]] | None:
    """(full_scans, values) for one counter, or None when no snapshot has it."""
    xs = [s["full_scans"] for s in snaps if name in s["ksm"]]
    if not xs:
        return None
    return xs, [s["ksm"][name] for s in snaps if name in s["ksm"]]


def _mark_steps(axes: Sequence[Any], steps: Steps | None) -> list[tuple[int, str]]:
    """Dotted vertical lines at each full scan after which steps ran, the steps' labels
    written along the line in the first axes."""
    marks: list[tuple[int, str]] = []
    for k in sorted(steps or {}):
        text = "; ".join(steps[k]) if steps else ""
        if len(text) > 60:
            text = text[:57] + "..."
        for ax in axes:
            ax.axvline(k, color="black", linestyle=":", linewidth=1.0, zorder=1)
        axes[0].annotate(
            text, xy=(k, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -4),
            textcoords="offset points", rotation=90, va="top", ha="left", fontsize="small",
            color="dimgray",
        )
        marks.append((k, text))
    return marks


def _save(fig: Any, plt: Any, path: str | Path) -> None:
    try:
        fig.savefig(path, dpi=DPI)
    except OSError as e:
        raise PlotError(f"{path}: {e.strerror or e}") from None
    finally:
        plt.close(fig)


def plot_snapshots(
    snaps: Sequence[Snapshot], path: str | Path, *, title: str | None = None,
    steps: Steps | None = None,
) -> Drawn:
    """Draw the page counters and general_profit (MiB) over full scans into the PNG ``path``,
    with the timeline's ``steps`` marked; return what was drawn."""
    plt = _pyplot()
    drawn: Drawn = {"series": {}, "steps": []}
    fig, (ax, ax_profit) = plt.subplots(
        2, 1, figsize=FIGSIZE, sharex=True, gridspec_kw={"height_ratios": [3, 1.4]}
    )
    # Counters often coincide (pages_shared == pages_sharing for pairs): draw the earlier
    # ones wider, underneath, so every line stays visible.
    for i, name in enumerate(PAGE_COUNTERS):
        series = _series(snaps, name)
        if series is not None:
            ax.plot(
                *series, marker=".", label=name, color=COLORS[name],
                linewidth=3.4 - 0.6 * i, zorder=2 + i,
            )
            drawn["series"][name] = series
    ax.set_ylabel("pages")
    ax.legend(loc="best", fontsize="small")
    ax.grid(True, alpha=0.3)

    profit = _series(snaps, "general_profit")
    if profit is not None:
        xs, values = profit
        ax_profit.plot(
            xs, [v / MIB for v in values], marker=".", color=COLORS["general_profit"],
            label="general_profit",
        )
        ax_profit.axhline(0, color="black", linewidth=0.6)
        ax_profit.legend(loc="best", fontsize="small")
        drawn["series"]["general_profit"] = profit
    else:
        ax_profit.text(
            0.5, 0.5, "general_profit: not in this kernel version (6.4+)",
            ha="center", va="center", transform=ax_profit.transAxes,
        )
    ax_profit.set_ylabel("general_profit (MiB)")
    ax_profit.set_xlabel("full scans")
    ax_profit.grid(True, alpha=0.3)
    # Full scans are whole numbers: no 2.5 ticks.
    ax_profit.xaxis.get_major_locator().set_params(integer=True)
    drawn["steps"] = _mark_steps((ax, ax_profit), steps)
    fig.suptitle(title or "KSM counters")
    fig.tight_layout()
    _save(fig, plt, path)
    return drawn


def plot_diff(
    sim_snaps: Sequence[Snapshot],
    real_snaps: Sequence[Snapshot],
    path: str | Path,
    *,
    title: str | None = None,
    steps: Steps | None = None,
) -> Drawn:
    """Draw both backends' pages_shared/sharing/unshared/volatile over full scans.

    One colour per counter; solid lines are the simulated kernel, dashed lines the real
    one, so a mismatch shows as two lines of one colour parting ways. Returns what was
    drawn (lines labelled "NAME (sim)" and "NAME (real)").
    """
    plt = _pyplot()
    drawn: Drawn = {"series": {}, "steps": []}
    fig, ax = plt.subplots(figsize=FIGSIZE)
    # Wide translucent solid lines under thin dashed ones: where both agree the dashes run
    # inside the solid band; where they differ they leave it.
    backends = (
        (sim_snaps, "sim", {"linestyle": "-", "linewidth": 4.0, "alpha": 0.45, "zorder": 2}),
        (real_snaps, "real", {"linestyle": "--", "linewidth": 1.4, "zorder": 3}),
    )
    for name in DIFF_COUNTERS:
        for snaps, backend, style in backends:
            series = _series(snaps, name)
            if series is not None:
                ax.plot(
                    *series, marker=".", color=COLORS[name], label=f"{name} ({backend})",
                    **style,
                )
                drawn["series"][f"{name} ({backend})"] = series
    ax.set_xlabel("full scans")
    ax.set_ylabel("pages")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small", ncol=2)
    legend = "sim (solid) vs real (dashed)"
    ax.set_title(f"{title}: {legend}" if title else legend)
    drawn["steps"] = _mark_steps((ax,), steps)
    fig.tight_layout()
    _save(fig, plt, path)
    return drawn


def cmd_plot(args: argparse.Namespace) -> int:
    """``ksmfs plot OUT.jsonl -o FILE.png [--title T] [--scenario S]``."""
    try:
        snaps = read_snapshots(args.jsonl)
        steps = None
        if getattr(args, "scenario", None):
            from ksmfs.scenario.cli import steps_by_scan
            from ksmfs.scenario.loader import ScenarioError, load_scenario

            try:
                steps = steps_by_scan(load_scenario(args.scenario))
            except ScenarioError as e:
                raise PlotError(f"--scenario: {e}") from None
        title = getattr(args, "title", None) or Path(args.jsonl).stem
        plot_snapshots(snaps, args.output, title=title, steps=steps)
    except PlotError as e:
        print(f"ksmfs plot: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}", file=sys.stderr)
    return 0

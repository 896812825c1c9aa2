"""`ksmfs plot` and ksmfs.plot: snapshot files to PNG figures, and their error messages."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ksmfs.cli import main
from ksmfs.plot import DPI, FIGSIZE, PlotError, plot_diff, plot_snapshots, read_snapshots

mpimg = pytest.importorskip("matplotlib.image")

WIDTH, HEIGHT = int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI)


def _ksm(shared: int, sharing: int, unshared: int, volatile: int, rmap_items: int) -> dict:
    """The snapshot's ksm object; general_profit as mm/ksm.c general_profit_show computes it."""
    return {
        "pages_shared": shared,
        "pages_sharing": sharing,
        "pages_unshared": unshared,
        "pages_volatile": volatile,
        "ksm_zero_pages": 0,
        "general_profit": sharing * 4096 - rmap_items * 64,
    }


def hand_derived_snapshots() -> list[dict]:
    """The worked timeline of the KSM spec (§3.9), derived by hand, smart_scan = 1.

    A maps X and Y, B maps X' (same content as X) and Z (rewritten before every visit).
    Scan 1: four new rmap_items, all volatile. Scan 2: X/X' merge (shared 1, sharing 1),
    Y goes to the unstable tree, Z stays volatile. Scans 3 and 4: the same. Scan 5
    (smart_scan): Y and Z are skipped, so Y leaves the unstable tree and counts as volatile.
    """
    rows = [
        (0, _ksm(0, 0, 0, 0, 0)),
        (1, _ksm(0, 0, 0, 4, 4)),
        (2, _ksm(1, 1, 1, 1, 4)),
        (3, _ksm(1, 1, 1, 1, 4)),
        (4, _ksm(1, 1, 1, 1, 4)),
        (5, _ksm(1, 1, 0, 2, 4)),
    ]
    snaps = []
    for full_scans, ksm in rows:
        ksm = {**ksm, "full_scans": full_scans, "run": 1 if full_scans else 0}
        merging = 1 if ksm["pages_shared"] else 0
        rmap = 2 if full_scans else 0
        proc = {
            "ksm_rmap_items": rmap,
            "ksm_zero_pages": 0,
            "ksm_merging_pages": merging,
            "ksm_process_profit": merging * 4096 - rmap * 64,
            "ksm_merge_any": "no",
            "ksm_mergeable": "yes",
            "smaps_ksm_kb": {"mem": 4 * merging},
        }
        snaps.append({"full_scans": full_scans, "ksm": ksm, "processes": {"A": proc, "B": proc}})
    return snaps


def write_jsonl(path: Path, snaps: list[dict]) -> Path:
    path.write_text("".join(json.dumps(s) + "\n" for s in snaps))
    return path


def assert_png_drawn(path: Path) -> None:
    """The PNG has the figure's pixel size and is not a blank canvas."""
    image = mpimg.imread(path)
    assert image.shape[:2] == (HEIGHT, WIDTH)
    assert image[..., :3].var() > 0.001


def test_plot_command_writes_png(tmp_path: Path) -> None:
    """`ksmfs plot OUT.jsonl -o FILE.png` draws the hand-derived run into a PNG."""
    jsonl = write_jsonl(tmp_path / "two-procs.jsonl", hand_derived_snapshots())
    png = tmp_path / "out.png"
    assert main(["plot", str(jsonl), "-o", str(png), "--title", "spec 3.9 timeline"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_png_drawn(png)


def test_read_snapshots_round_trip(tmp_path: Path) -> None:
    """read_snapshots returns the objects in file order; blank lines are ignored."""
    snaps = hand_derived_snapshots()
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(json.dumps(s) for s in snaps) + "\n\n")
    assert read_snapshots(path) == snaps


def test_old_kernel_without_profit_still_plots(tmp_path: Path) -> None:
    """Counters missing in old kernels (general_profit, ksm_zero_pages: 5.15) are left out."""
    snaps = hand_derived_snapshots()
    for s in snaps:
        del s["ksm"]["general_profit"], s["ksm"]["ksm_zero_pages"]
    jsonl = write_jsonl(tmp_path / "old.jsonl", snaps)
    png = tmp_path / "old.png"
    assert main(["plot", str(jsonl), "-o", str(png)]) == 0
    assert_png_drawn(png)


@pytest.mark.parametrize(
    ("line3", "message"),
    [
        ('{"full_scans": 2, "ksm": ', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"ksm": {}}', "'full_scans' must be an integer"),
        ('{"full_scans": 2}', "'ksm' must be an object"),
        ('{"full_scans": 2, "ksm": {"pages_sharing": "many"}}', "ksm.pages_sharing"),
    ],
)
def test_bad_line_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line3: str, message: str
) -> None:
    """A bad line gives exit 2 and one stderr line naming the file and the line number."""
    good = [json.dumps(s) for s in hand_derived_snapshots()[:2]]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([*good, line3]) + "\n")
    png = tmp_path / "bad.png"
    assert main(["plot", str(path), "-o", str(png)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{path}:3:" in err and message in err
    assert not png.exists()


def test_missing_and_empty_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing or empty file is one line and exit 2."""
    png = tmp_path / "x.png"
    assert main(["plot", str(tmp_path / "nope.jsonl"), "-o", str(png)]) == 2
    assert "nope.jsonl" in capsys.readouterr().err
    (tmp_path / "empty.jsonl").write_text("")
    assert main(["plot", str(tmp_path / "empty.jsonl"), "-o", str(png)]) == 2
    assert "no snapshots" in capsys.readouterr().err


def test_unwritable_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An output path in a missing directory is one line and exit 2."""
    jsonl = write_jsonl(tmp_path / "s.jsonl", hand_derived_snapshots())
    assert main(["plot", str(jsonl), "-o", str(tmp_path / "no" / "dir.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dir.png" in err


def test_plot_diff(tmp_path: Path) -> None:
    """plot_diff draws both backends in one figure (what `ksmfs diff --plot` writes): a
    line per counter and backend, the real one departing where the two differ."""
    sim = hand_derived_snapshots()
    real = hand_derived_snapshots()
    real[5]["ksm"]["pages_unshared"] = 1  # a made-up mismatch, so the dashed line departs
    png = tmp_path / "diff.png"
    drawn = plot_diff(sim, real, png, title="spec 3.9")
    assert_png_drawn(png)
    assert sorted(drawn["series"]) == sorted(
        f"{n} ({b})" for n in ("pages_shared", "pages_sharing", "pages_unshared",
                               "pages_volatile") for b in ("sim", "real"))
    assert drawn["series"]["pages_unshared (sim)"][1] == [0, 0, 1, 1, 1, 0]
    assert drawn["series"]["pages_unshared (real)"][1] == [0, 0, 1, 1, 1, 1]
    assert drawn["series"]["pages_volatile (real)"] == drawn["series"]["pages_volatile (sim)"]


def test_steps_are_marked_where_they_ran(tmp_path: Path) -> None:
    """The timeline's steps are marked at the full scan they follow, and change the
    picture (the same counters without marks draw other pixels)."""
    snaps = hand_derived_snapshots()
    plain, marked = tmp_path / "plain.png", tmp_path / "marked.png"
    plot_snapshots(snaps, plain, title="t")
    drawn = plot_snapshots(snaps, marked, title="t", steps={3: ["run=2"], 4: ["exit B"]})
    assert drawn["steps"] == [(3, "run=2"), (4, "exit B")]
    assert drawn["series"]["pages_sharing"] == ([0, 1, 2, 3, 4, 5], [0, 0, 1, 1, 1, 1])
    assert (mpimg.imread(plain) != mpimg.imread(marked)).any()


def test_run_plot_marks_the_scenario_steps(tmp_path: Path) -> None:
    """`ksmfs plot --scenario` reads the steps from the scenario that was run."""
    jsonl = tmp_path / "r.jsonl"
    assert main(["run", "run2-and-back", "--json", str(jsonl)]) == 0
    png = tmp_path / "r.png"
    assert main(["plot", str(jsonl), "-o", str(png), "--scenario", "run2-and-back"]) == 0
    assert_png_drawn(png)
    assert main(["plot", str(jsonl), "-o", str(png), "--scenario", "no-such"]) == 2


def test_without_matplotlib(tmp_path: Path) -> None:
    """Without matplotlib, `ksmfs plot` says how to install it, on one line, exit 2."""
    jsonl = write_jsonl(tmp_path / "s.jsonl", hand_derived_snapshots())
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["matplotlib"] = None  # as if the plot extra were not installed
        from ksmfs.cli import main
        sys.exit(main(["plot", {str(jsonl)!r}, "-o", {str(tmp_path / "x.png")!r}]))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1
    assert "install the plot extra: pip install 'ksmfs[plot]'" in out.stderr


def test_plot_error_is_an_exception_for_callers() -> None:
    """Callers such as `ksmfs diff --plot` can catch PlotError and print its one line."""
    with pytest.raises(PlotError, match="no snapshots"):
        from ksmfs.plot import parse_snapshots

        parse_snapshots([], source="x")

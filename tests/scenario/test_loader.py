"""The scenario loader: accepted files, and one-line errors that name file, line and key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from ksmfs.linux import PID_MAX_LIMIT
from ksmfs.scenario.loader import ScenarioError, list_builtin, load_scenario, parse_scenario
from ksmfs.scenario.model import (
    Exit,
    Fork,
    Madvise,
    MergeAny,
    Munmap,
    Segment,
    Spawn,
    Sysfs,
    Write,
)

BASE = """\
max_full_scans = 3
[[process]]
name = "a"
[[process.vma]]
name = "r"
pages = 4
"""


def load_text(tmp_path: Path, text: str) -> object:
    p = tmp_path / "s.toml"
    p.write_text(textwrap.dedent(text))
    return load_scenario(p)


def error_of(tmp_path: Path, text: str) -> ScenarioError:
    with pytest.raises(ScenarioError) as ei:
        load_text(tmp_path, text)
    msg = str(ei.value)
    assert "\n" not in msg
    assert str(tmp_path / "s.toml") in msg
    return ei.value


def test_minimal_defaults(tmp_path: Path) -> None:
    """Defaults: name = file stem, seed 0, no knobs, a VMA is all zero and not mergeable."""
    s = load_text(tmp_path, BASE)
    assert s.name == "s" and s.seed == 0 and s.description == "" and s.ksm == {}
    (p,) = s.processes
    assert p.name == "a" and not p.merge_any
    (v,) = p.vmas
    assert (v.name, v.pages, v.mergeable, v.shared) == ("r", 4, False, False)
    assert v.fill == (Segment("zero", 4),)
    assert s.steps == ()


def test_full_file(tmp_path: Path) -> None:
    """count > 1 names processes NAME-i; segments, knobs and steps keep their order."""
    s = load_text(tmp_path, """\
        name = "full"
        description = "first line\\nsecond"
        seed = 9
        max_full_scans = 5
        [ksm]
        sleep_millisecs = 5
        pages_to_scan = 10
        use_zero_pages = true
        advisor_mode = "none"
        [pools]
        img = 10
        [[process]]
        name = "vm"
        count = 2
        merge_any = true
          [[process.vma]]
          name = "ram"
          pages = 8
          mergeable = true
          fill = [{from = "pool:img", pages = 3, offset = 2, shuffle = true},
                  {from = "value:7", pages = 2}, {from = "unique", pages = 3}]
        [[step]]
        after_full_scans = 3
        exit = "vm-1"
        [[step]]
        after_full_scans = 1
        write = {process = "vm-1", vma = "ram", first = 6, count = 2, from = "value:1"}
        [[step]]
        after_full_scans = 1
        [step.sysfs]
        run = 2
        max_page_sharing = 4
        [[step]]
        after_full_scans = 2
        madvise = {process = "vm-0", vma = "ram", advice = "unmergeable"}
        [[step]]
        after_full_scans = 2
        merge_any = {process = "vm-0", enable = false}
        [[step]]
        after_full_scans = 2
        spawn = {name = "new", vma = [{name = "x", pages = 1}]}
        """)
    assert s.summary == "first line"
    assert list(s.ksm.items()) == [("sleep_millisecs", 5), ("pages_to_scan", 10),
                                   ("use_zero_pages", 1), ("advisor_mode", "none")]
    assert [p.name for p in s.processes] == ["vm-0", "vm-1"]
    assert all(p.merge_any for p in s.processes)
    fill = s.processes[0].vmas[0].fill
    assert fill[0] == Segment("pool", 3, pool="img", offset=2, shuffle=True)
    assert fill[1] == Segment("value", 2, value=7)
    # sorted by K, file order within one K
    assert [(st.after_full_scans, st.kind) for st in s.steps] == [
        (1, "write"), (1, "sysfs"), (2, "madvise"), (2, "merge_any"), (2, "spawn"),
        (3, "exit")]
    assert s.steps[0].action == Write("vm-1", "ram", 6, 2, Segment("value", 2, value=1))
    assert s.steps[1].action == Sysfs((("run", 2), ("max_page_sharing", 4)))
    assert s.steps[3].action == MergeAny("vm-0", False)
    spawn = s.steps[4].action
    assert isinstance(spawn, Spawn) and [p.name for p in spawn.processes] == ["new"]
    assert s.steps[5].action == Exit("vm-1")
    assert [p.name for p in s.all_processes()] == ["vm-0", "vm-1", "new"]


@pytest.mark.parametrize(
    ("text", "line", "key", "words"),
    [
        ("bogus = 1\n" + BASE, 1, "bogus", "unknown key"),
        (BASE + "[ksm]\nrun = 1\n", 8, "ksm.run", "run"),
        (BASE + "[ksm]\nnot_a_knob = 1\n", 8, "ksm.not_a_knob", "writable"),
        (BASE + "[ksm]\npages_scanned = 1\n", 8, "ksm.pages_scanned", "writable"),
        (BASE + "[ksm]\nmax_page_sharing = 1\n", 8, "ksm.max_page_sharing", "2..2147483647"),
        (BASE + "[ksm]\nsmart_scan = 2\n", 8, "ksm.smart_scan", "0/1"),
        (BASE + "[ksm]\nadvisor_mode = \"fast\"\n", 8, "ksm.advisor_mode", "scan-time"),
        (BASE + "[ksm]\npages_to_scan = \"100\"\n", 8, "ksm.pages_to_scan", "integer"),
        (BASE.replace("max_full_scans = 3", "max_full_scans = 0"), 1, "max_full_scans",
         ">= 1"),
        (BASE.replace("max_full_scans = 3\n", ""), None, "max_full_scans", "missing"),
        (BASE.replace("pages = 4\n", ""), 4, "process[0].vma[0].pages", "missing"),
        (BASE.replace("pages = 4", "pages = 4.0"), 6, "process[0].vma[0].pages", "integer"),
        (BASE.replace("pages = 4", "pages = true"), 6, "process[0].vma[0].pages", "integer"),
        (BASE + 'mergeable = "yes"\n', 7, "process[0].vma[0].mergeable", "true or false"),
        (BASE + 'fill = [{from = "zero", pages = 1},\n  {from = "unique", pages = 2}]\n', 7,
         "process[0].vma[0].fill", "add up to 3"),
        (BASE + 'fill = [{from = "zero", pages = 1},\n  {from = "pool:x", pages = 3}]\n', 8,
         "process[0].vma[0].fill[1].from", "unknown pool 'x'"),
        (BASE + 'fill = [{from = "value:0", pages = 4}]\n', 7,
         "process[0].vma[0].fill[0].from", "value:K"),
        (BASE + 'fill = [{from = "random", pages = 4}]\n', 7,
         "process[0].vma[0].fill[0].from", "must be"),
        (BASE + 'fill = [{from = "zero", pages = 4, shuffle = true}]\n', 7,
         "process[0].vma[0].fill[0].shuffle", "only pool"),
        (BASE + "[[process]]\nname = \"a\"\n[[process.vma]]\nname = \"r\"\npages = 1\n", 8,
         "process[1].name", "duplicate process name 'a'"),
        (BASE + "[[process.vma]]\nname = \"r\"\npages = 1\n", 8, "process[0].vma[1].name",
         "duplicate VMA name 'r'"),
        (BASE + "[[step]]\nafter_full_scans = 1\nexit = \"b\"\n", 9, "step[0].exit",
         "'b' is not defined"),
        (BASE + "[[step]]\nafter_full_scans = 0\nexit = \"a\"\n", 8,
         "step[0].after_full_scans", ">= 1"),
        (BASE + "[[step]]\nafter_full_scans = 1\n", 7, "step[0]", "no action"),
        (BASE + "[[step]]\nafter_full_scans = 1\nexit = \"a\"\nsysfs = {run = 2}\n", 7,
         "step[0]", "several actions"),
        (BASE + "[[step]]\nafter_full_scans = 1\n[step.sysfs]\nrun = 3\n", 10,
         "step[0].sysfs.run", "0..2"),
        (BASE + "[[step]]\nafter_full_scans = 1\n[step.sysfs]\nfull_scans = 3\n", 10,
         "step[0].sysfs.full_scans", "writable"),
        (BASE + "[[step]]\nafter_full_scans = 1\n[step.write]\nprocess = \"a\"\n"
         "vma = \"zz\"\nfirst = 0\ncount = 1\nfrom = \"zero\"\n", 11, "step[0].write.vma",
         "no VMA 'zz'"),
        (BASE + "[[step]]\nafter_full_scans = 1\nwrite = {process = \"a\", vma = \"r\", "
         "first = 3, count = 2, from = \"zero\"}\n", 9, "step[0].write.count", "outside"),
        (BASE + "[[step]]\nafter_full_scans = 1\nmadvise = {process = \"a\", vma = \"r\", "
         "advice = \"hugepage\"}\n", 9, "step[0].madvise.advice", "unmergeable"),
        (BASE + "[[step]]\nafter_full_scans = 2\nexit = \"a\"\n"
         "[[step]]\nafter_full_scans = 3\nexit = \"a\"\n", 12, "step[1].exit",
         "already exited"),
        ("max_full_scans = \n" + BASE, 1, "max_full_scans", "invalid TOML"),
        # contract v2: fork, munmap, ranged madvise
        (BASE + "[[step]]\nafter_full_scans = 1\nfork = {process = \"a\", name = \"a\"}\n", 9,
         "step[0].fork.name", "fork to the name 'a', which the scenario already uses"),
        (BASE + "[[step]]\nafter_full_scans = 1\nfork = {process = \"a\", name = \"b\"}\n"
         "[[step]]\nafter_full_scans = 2\nfork = {process = \"a\", name = \"b\"}\n", 12,
         "step[1].fork.name", "already uses (at step[0].fork)"),
        (BASE + "[[step]]\nafter_full_scans = 1\nfork = {process = \"a\", name = \"b\"}\n"
         "[[step]]\nafter_full_scans = 2\n[step.spawn]\nname = \"b\"\n[[step.spawn.vma]]\nname = \"x\"\npages = 1\n",
         13, "step[1].spawn.name", "duplicate process name 'b'"),
        (BASE + "[[step]]\nafter_full_scans = 1\nfork = {process = \"z\", name = \"b\"}\n", 9,
         "step[0].fork.process", "'z' is not defined"),
        (BASE + "[[step]]\nafter_full_scans = 1\nmunmap = {process = \"a\", vma = \"r\", first = 2, count = 3}\n",
         9, "step[0].munmap.count", "pages 2..4 are outside VMA 'r' (4 pages)"),
        (BASE + "[[step]]\nafter_full_scans = 1\nmunmap = {process = \"a\", vma = \"r\", first = 1}\n",
         9, "step[0].munmap.count", "missing"),
        (BASE + "[[step]]\nafter_full_scans = 1\nmunmap = {process = \"a\", vma = \"r\", first = 1, count = 2}\n"
         "[[step]]\nafter_full_scans = 2\nmunmap = {process = \"a\", vma = \"r\", first = 2, count = 2}\n", 12,
         "step[1].munmap.first", "pages 2..2 of VMA 'r' of process 'a' are already unmapped"),
        (BASE + "[[step]]\nafter_full_scans = 1\nmunmap = {process = \"a\", vma = \"r\", first = 0, count = 2}\n"
         "[[step]]\nafter_full_scans = 1\nwrite = {process = \"a\", vma = \"r\", first = 1, count = 2, "
         "from = \"zero\"}\n", 12, "step[1].write.first", "pages 1..1 of VMA 'r'"),
        (BASE + "[[step]]\nafter_full_scans = 1\nmunmap = {process = \"a\", vma = \"r\", first = 3, count = 1}\n"
         "[[step]]\nafter_full_scans = 1\nmadvise = {process = \"a\", vma = \"r\", advice = \"mergeable\", "
         "first = 2, count = 2}\n", 12, "step[1].madvise.first", "already unmapped"),
        (BASE + "[[step]]\nafter_full_scans = 1\nmunmap = {process = \"a\", vma = \"r\", first = 0, count = 4}\n"
         "[[step]]\nafter_full_scans = 1\nmadvise = {process = \"a\", vma = \"r\", advice = \"mergeable\"}\n",
         12, "step[1].madvise", "pages 0..3 of VMA 'r' of process 'a' are all unmapped"),
        (BASE + "[[step]]\nafter_full_scans = 1\nmadvise = {process = \"a\", vma = \"r\", advice = \"mergeable\", "
         "first = 4}\n", 9, "step[0].madvise.first", "page 4 is outside"),
        # the child inherits the parent's holes; a later munmap in the parent is its own
        (BASE + "[[step]]\nafter_full_scans = 1\nmunmap = {process = \"a\", vma = \"r\", first = 0, count = 1}\n"
         "[[step]]\nafter_full_scans = 2\nfork = {process = \"a\", name = \"b\"}\n"
         "[[step]]\nafter_full_scans = 3\nwrite = {process = \"b\", vma = \"r\", first = 0, count = 1, "
         "from = \"zero\"}\n", 15, "step[2].write.first", "of process 'b' are already"),
        (BASE + "[[step]]\nafter_full_scans = 2\nfork = {process = \"a\", name = \"b\"}\n"
         "[[step]]\nafter_full_scans = 1\nexit = \"b\"\n", 12, "step[1].exit", "'b' is not defined"),
        (BASE + "[[step]]\nafter_full_scans = 1\nexit = \"a\"\n"
         "[[step]]\nafter_full_scans = 2\nfork = {process = \"a\", name = \"b\"}\n", 12,
         "step[1].fork.process", "'a' has already exited"),
    ],
)
def test_errors_name_file_line_and_key(tmp_path: Path, text: str, line: int | None,
                                       key: str, words: str) -> None:
    """Every contract violation is one line: FILE:LINE: KEY: PROBLEM."""
    e = error_of(tmp_path, text)
    assert e.line == line, str(e)
    assert e.key == key, str(e)
    assert words in str(e), str(e)
    if line is not None:
        assert f"s.toml:{line}: " in str(e)


def test_spawned_names_must_be_unique(tmp_path: Path) -> None:
    """A spawned process may not reuse a name (names identify processes in snapshots)."""
    e = error_of(tmp_path, BASE + "[[step]]\nafter_full_scans = 1\n[step.spawn]\n"
                 "name = \"a\"\n[[step.spawn.vma]]\nname = \"x\"\npages = 1\n")
    assert e.key == "step[0].spawn.name" and e.line == 10


def test_step_may_use_a_spawned_process(tmp_path: Path) -> None:
    """A step can name a process spawned earlier in the timeline, not one spawned later."""
    spawn = ("[[step]]\nafter_full_scans = 2\nspawn = {name = \"b\", vma = "
             "[{name = \"x\", pages = 1}]}\n")
    ok = BASE + spawn + "[[step]]\nafter_full_scans = 2\nexit = \"b\"\n"
    assert [s.kind for s in load_text(tmp_path, ok).steps] == ["spawn", "exit"]
    bad = BASE + "[[step]]\nafter_full_scans = 1\nexit = \"b\"\n" + spawn
    assert "not defined" in str(error_of(tmp_path, bad))


def test_missing_file_and_unknown_builtin() -> None:
    """A missing path or unknown built-in name is one line too."""
    with pytest.raises(ScenarioError, match="no such file"):
        load_scenario("/nonexistent/x.toml")
    with pytest.raises(ScenarioError, match=r"no built-in scenario .*built-ins: .*demo"):
        load_scenario("no-such-builtin")


def test_parse_scenario_from_text() -> None:
    s = parse_scenario(BASE, "inline.toml")
    assert s.name == "inline"


EXPECTED_BUILTINS = {
    "demo", "kvm-guests", "containers", "zero-pages", "max-page-sharing",
    "small-max-page-sharing", "cow-storm", "run2-and-back", "unmergeable-and-exit",
    "merge-any", "smart-scan", "small-batches", "spawn-mid-run",
    "prefork-web-server", "zygote", "cache-unmap-remap", "vm-balloon",
}


def test_builtins_all_load_and_are_small() -> None:
    """Every built-in loads, has a description, and is small enough for CI."""
    names = {n for n, _ in list_builtin()}
    assert names >= EXPECTED_BUILTINS
    for name in names:
        s = load_scenario(name)
        assert s.name == name
        assert s.summary and not s.summary.startswith("(broken")
        assert s.max_full_scans <= 12
        # a forked child shares its parent's pages until it writes them
        forked = {st.action.child.name for st in s.steps if isinstance(st.action, Fork)}
        pages = sum(v.pages for p in s.all_processes() if p.name not in forked
                    for v in p.vmas)
        pages += sum(st.action.count for st in s.steps if isinstance(st.action, Write))
        assert pages <= (25000 if name == "demo" else 7000), (name, pages)


def test_v2_steps_and_the_forked_child(tmp_path: Path) -> None:
    """A fork's child gets the parent's VMAs; a default-range madvise skips unmapped pages;
    an explicit range keeps first and count; munmap of the parent leaves the child alone."""
    s = load_text(tmp_path, BASE + """\
        [[step]]
        after_full_scans = 1
        munmap = {process = "a", vma = "r", first = 1, count = 1}
        [[step]]
        after_full_scans = 2
        fork = {process = "a", name = "b"}
        [[step]]
        after_full_scans = 2
        munmap = {process = "a", vma = "r", first = 2, count = 2}
        [[step]]
        after_full_scans = 2
        madvise = {process = "b", vma = "r", advice = "mergeable"}
        [[step]]
        after_full_scans = 2
        madvise = {process = "b", vma = "r", advice = "unmergeable", first = 2, count = 2}
        """)
    fork = s.steps[1].action
    assert isinstance(fork, Fork) and fork.child.name == "b"
    assert fork.child.vmas == s.processes[0].vmas
    assert s.steps[2].action == Munmap("a", "r", 2, 2)
    assert s.steps[3].action == Madvise("b", "r", "mergeable")
    assert s.steps[4].action == Madvise("b", "r", "unmergeable", 2, 2)
    assert [p.name for p in s.all_processes()] == ["a", "b"]


@pytest.mark.parametrize("line, key, bound", [
    ("count = 99999999999999999999", "process[0].count", PID_MAX_LIMIT),
    ("count = 4194305", "process[0].count", PID_MAX_LIMIT),
])
def test_more_processes_than_any_kernel_has_pids_is_one_line(line, key, bound):
    """A count no kernel can spawn is refused before the loader makes a name per process
    (it used to build 10^20 names and take the machine's memory)."""
    text = f'max_full_scans = 1\n[[process]]\nname = "a"\n{line}\n[[process.vma]]\nname = "r"\npages = 1\n'
    with pytest.raises(ScenarioError) as e:
        parse_scenario(text, "big.toml")
    assert str(e.value).startswith(f"big.toml:4: {key}: must be <= {bound}")


def test_a_vma_longer_than_the_address_space_is_one_line():
    """pages above x86_64's 2^35-page user address space: one line, nothing allocated."""
    text = ('max_full_scans = 1\n[[process]]\nname = "a"\n[[process.vma]]\nname = "r"\n'
            f"pages = {2**35 + 1}\n")
    with pytest.raises(ScenarioError) as e:
        parse_scenario(text, "big.toml")
    assert str(e.value).startswith(f"big.toml:6: process[0].vma[0].pages: must be <= {2**35}")


def test_munmap_bookkeeping_of_a_huge_vma_costs_nothing_per_page():
    """A 2^35-page VMA with holes punched is checked by runs, not per page."""
    text = ('max_full_scans = 2\n[[process]]\nname = "a"\n[[process.vma]]\nname = "r"\n'
            f'pages = {2**35}\n'
            '[[step]]\nafter_full_scans = 1\nmunmap = {process = "a", vma = "r", first = 5, count = 10}\n'
            '[[step]]\nafter_full_scans = 1\nmunmap = {process = "a", vma = "r", first = 12, count = 10}\n')
    with pytest.raises(ScenarioError) as e:
        parse_scenario(text, "holes.toml")
    assert "pages 12..14 of VMA 'r' of process 'a' are already unmapped" in str(e.value)

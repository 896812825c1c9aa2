"""Read and check scenario files (docs/scenario-format.md, version 2).

``load_scenario(path_or_name)`` returns a :class:`~ksmfs.scenario.model.Scenario` or raises
:class:`ScenarioError`, whose text is one line: ``FILE:LINE: KEY: PROBLEM``.  TOML syntax
errors carry tomllib's line; for errors found after parsing, the line is found again in the
text by a small scanner that maps each key path (``process[1].vma[0].pages``) to the line
that defines it.

The timeline is checked before anything runs, by playing it on names and page maps
(:func:`_check_timeline`): a step on a process that has exited or was never defined, a
fork to a name the scenario already used, a page range outside its VMA, a ``munmap`` of
pages already unmapped, a ``write`` or an explicit ``madvise`` range on unmapped pages.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

from ksmfs.linux import PAGE_SIZE, PID_MAX_LIMIT
from ksmfs.scenario.driver import MappedPages
from ksmfs.scenario.model import (
    ACTION_KEYS,
    WRITABLE_KSM_FILES,
    Action,
    Exit,
    Fork,
    Madvise,
    MergeAny,
    Munmap,
    ProcessSpec,
    Scenario,
    Segment,
    Spawn,
    Step,
    Sysfs,
    VmaSpec,
    Write,
)

TASK_PAGES = (1 << 47) // PAGE_SIZE

__all__ = ["ScenarioError", "builtin_dir", "list_builtin", "load_scenario", "parse_scenario"]

U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1
I32_MAX = (1 << 31) - 1

Path_ = tuple[str | int, ...]


class ScenarioError(Exception):
    """A scenario file is unreadable or breaks the contract; ``str()`` is one line."""

    def __init__(self, message: str, *, file: str = "", line: int | None = None,
                 key: str = "") -> None:
        self.file = file
        self.line = line
        self.key = key
        self.problem = message
        where = file
        if line is not None:
            where = f"{file}:{line}"
        text = f"{where}: " if where else ""
        if key:
            text += f"{key}: "
        text += message
        super().__init__(" ".join(text.split("\n")))


def builtin_dir() -> Path:
    return Path(str(resources.files("ksmfs.scenario") / "builtin"))


def list_builtin() -> list[tuple[str, str]]:
    """(name, first line of the description) of every built-in scenario, by name."""
    out = []
    for p in sorted(builtin_dir().glob("*.toml")):
        try:
            out.append((p.stem, load_scenario(p).summary))
        except ScenarioError as e:
            out.append((p.stem, f"(broken: {e})"))
    return out


def _resolve(path_or_name: str | Path) -> Path:
    p = Path(path_or_name)
    if p.exists():
        return p
    s = str(path_or_name)
    if "/" not in s and not s.endswith(".toml"):
        b = builtin_dir() / f"{s}.toml"
        if b.exists():
            return b
        names = ", ".join(n.stem for n in sorted(builtin_dir().glob("*.toml")))
        raise ScenarioError(f"no such file, and no built-in scenario of that name "
                            f"(built-ins: {names})", file=s)
    raise ScenarioError("no such file", file=s)


def load_scenario(path_or_name: str | Path) -> Scenario:
    """Load a scenario from a path, or the name of a built-in (ksmfs/scenario/builtin)."""
    path = _resolve(path_or_name)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ScenarioError(f"cannot read: {e}", file=str(path)) from None
    return parse_scenario(text, path)


# --------------------------------------------------------------------------- key locator

def _key_text(path: Path_) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            if out:
                out += "."
            out += part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else f'"{part}"'
    return out


class _Locator:
    """Maps key paths to the line that defines them, for valid TOML text.

    It only needs to be right for text that tomllib accepted, and it never raises: a
    failure leaves the map partial, and :meth:`line` falls back to the nearest parent.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines: dict[Path_, int] = {}
        self.i = 0
        self.ln = 1
        self.arrays: dict[Path_, int] = {}
        try:
            self._document()
        except Exception:
            pass

    def line(self, path: Path_) -> int | None:
        p = tuple(path)
        while p:
            if p in self.lines:
                return self.lines[p]
            p = p[:-1]
        return None

    # -- scanner helpers
    def _peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.text[j] if j < len(self.text) else ""

    def _adv(self, n: int = 1) -> None:
        for _ in range(n):
            if self.i < len(self.text):
                if self.text[self.i] == "\n":
                    self.ln += 1
                self.i += 1

    def _skip_ws(self, newlines: bool) -> None:
        while self.i < len(self.text):
            c = self.text[self.i]
            if c in " \t\r" or (newlines and c == "\n"):
                self._adv()
            elif c == "#":
                while self.i < len(self.text) and self.text[self.i] != "\n":
                    self._adv()
            else:
                return

    def _string(self) -> str:
        t = self.text
        for q in ('"""', "'''"):
            if t.startswith(q, self.i):
                self._adv(3)
                start = self.i
                while self.i < len(t) and not t.startswith(q, self.i):
                    self._adv(2 if q == '"""' and t[self.i] == "\\" else 1)
                s = t[start:self.i]
                self._adv(3)
                while self._peek() == q[0]:  # up to two quotes may close the string
                    self._adv()
                return s
        q = t[self.i]
        self._adv()
        out = []
        while self.i < len(t) and t[self.i] != q:
            if q == '"' and t[self.i] == "\\":
                out.append(t[self.i:self.i + 2])
                self._adv(2)
            else:
                out.append(t[self.i])
                self._adv()
        self._adv()
        raw = "".join(out)
        if q == '"' and "\\" in raw:
            try:
                raw = tomllib.loads(f'x = "{raw}"')["x"]
            except tomllib.TOMLDecodeError:
                pass
        return raw

    def _key(self) -> list[str]:
        parts: list[str] = []
        while True:
            self._skip_ws(False)
            c = self._peek()
            if c in ('"', "'"):
                parts.append(self._string())
            else:
                start = self.i
                while self._peek() and re.match(r"[A-Za-z0-9_-]", self._peek()):
                    self._adv()
                parts.append(self.text[start:self.i])
            self._skip_ws(False)
            if self._peek() == ".":
                self._adv()
                continue
            return parts

    def _document(self) -> None:
        cur: Path_ = ()
        while True:
            self._skip_ws(True)
            if self.i >= len(self.text):
                return
            if self._peek() == "[":
                double = self._peek(1) == "["
                self._adv(2 if double else 1)
                parts = self._key()
                self._adv(2 if double else 1)
                path: Path_ = ()
                for n, part in enumerate(parts):
                    path += (part,)
                    if path in self.arrays and (n < len(parts) - 1 or not double):
                        path += (self.arrays[path] - 1,)
                if double:
                    idx = self.arrays.get(path, 0)
                    self.arrays[path] = idx + 1
                    self.lines.setdefault(path, self.ln)
                    path += (idx,)
                self.lines[path] = self.ln
                cur = path
            else:
                line = self.ln
                parts = self._key()
                p = cur
                for part in parts:
                    p += (part,)
                    self.lines.setdefault(p, line)
                self._adv()  # '='
                self._value(p)
            # rest of the line
            self._skip_ws(False)

    def _value(self, path: Path_) -> None:
        self._skip_ws(False)
        c = self._peek()
        if c == "{":
            self._adv()
            while True:
                self._skip_ws(True)
                if self._peek() == "}":
                    self._adv()
                    return
                if self._peek() == ",":
                    self._adv()
                    continue
                line = self.ln
                parts = self._key()
                p = path
                for part in parts:
                    p += (part,)
                    self.lines.setdefault(p, line)
                self._adv()
                self._value(p)
        elif c == "[":
            self._adv()
            idx = 0
            while True:
                self._skip_ws(True)
                if self._peek() == "]":
                    self._adv()
                    return
                if self._peek() == ",":
                    self._adv()
                    continue
                if not self._peek():
                    return
                self.lines[path + (idx,)] = self.ln
                self._value(path + (idx,))
                idx += 1
        elif c in ('"', "'"):
            self._string()
        else:
            while self._peek() and self._peek() not in ",]}\n#":
                self._adv()


# --------------------------------------------------------------------------- checker

class _Checker:
    def __init__(self, text: str, file: str) -> None:
        self.text = text
        self.file = file
        self._loc: _Locator | None = None

    def fail(self, path: Path_, problem: str) -> ScenarioError:
        if self._loc is None:
            self._loc = _Locator(self.text)
        return ScenarioError(problem, file=self.file, line=self._loc.line(path),
                             key=_key_text(path))

    # -- typed getters
    def table(self, obj: Any, path: Path_, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(obj, dict):
            raise self.fail(path, f"must be a table, not {_tname(obj)}")
        for k in obj:
            if k not in allowed:
                hint = f" (known keys: {', '.join(allowed)})" if allowed else ""
                raise self.fail(path + (k,), f"unknown key{hint}")
        return obj

    def int_(self, obj: dict[str, Any], key: str, path: Path_, default: Any = ...,
             lo: int | None = None, hi: int | None = None) -> int:
        if key not in obj:
            if default is ...:
                raise self.fail(path + (key,), "missing (required)")
            d: int = default
            return d
        v = obj[key]
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(path + (key,), f"must be an integer, not {_tname(v)}")
        if lo is not None and v < lo:
            raise self.fail(path + (key,), f"must be >= {lo}, not {v}")
        if hi is not None and v > hi:
            raise self.fail(path + (key,), f"must be <= {hi}, not {v}")
        return v

    def str_(self, obj: dict[str, Any], key: str, path: Path_, default: Any = ...) -> str:
        if key not in obj:
            if default is ...:
                raise self.fail(path + (key,), "missing (required)")
            ds: str = default
            return ds
        v = obj[key]
        if not isinstance(v, str):
            raise self.fail(path + (key,), f"must be a string, not {_tname(v)}")
        return v

    def name_(self, obj: dict[str, Any], key: str, path: Path_) -> str:
        v = self.str_(obj, key, path)
        if not v.strip():
            raise self.fail(path + (key,), "must not be empty")
        return v

    def bool_(self, obj: dict[str, Any], key: str, path: Path_, default: bool = False) -> bool:
        if key not in obj:
            return default
        v = obj[key]
        if not isinstance(v, bool):
            raise self.fail(path + (key,), f"must be true or false, not {_tname(v)}")
        return v

    def array(self, obj: dict[str, Any], key: str, path: Path_, required: bool) -> list[Any]:
        if key not in obj:
            if required:
                raise self.fail(path + (key,), "missing (required)")
            return []
        v = obj[key]
        if not isinstance(v, list):
            raise self.fail(path + (key,), f"must be an array, not {_tname(v)}")
        return v

    # -- contract parts
    def segment(self, obj: Any, path: Path_, pools: dict[str, int]) -> Segment:
        """A fill segment ``{from = SOURCE, pages = N, offset, shuffle}``."""
        self.table(obj, path, ("from", "pages", "offset", "shuffle"))
        return self._segment_body(obj, path, pools, self.int_(obj, "pages", path, lo=1))

    def _segment_body(self, obj: dict[str, Any], path: Path_, pools: dict[str, int],
                      pages: int) -> Segment:
        src = self.str_(obj, "from", path)
        if src in ("zero", "unique"):
            for k in ("offset", "shuffle"):
                if k in obj:
                    raise self.fail(path + (k,), f"only pool segments take {k!r}")
            return Segment(source=src, pages=pages)  # type: ignore[arg-type]
        m = re.fullmatch(r"value:(.*)", src)
        if m:
            for k in ("offset", "shuffle"):
                if k in obj:
                    raise self.fail(path + (k,), f"only pool segments take {k!r}")
            if not re.fullmatch(r"[0-9]+", m.group(1)) or int(m.group(1)) < 1:
                raise self.fail(path + ("from",),
                                f"{src!r}: K in value:K must be an integer >= 1")
            return Segment(source="value", pages=pages, value=int(m.group(1)))
        m = re.fullmatch(r"pool:(.*)", src)
        if m:
            pool = m.group(1)
            if pool not in pools:
                known = ", ".join(pools) or "none defined in [pools]"
                raise self.fail(path + ("from",), f"unknown pool {pool!r} (pools: {known})")
            offset = self.int_(obj, "offset", path, default=0)
            shuffle = self.bool_(obj, "shuffle", path)
            return Segment(source="pool", pages=pages, pool=pool, offset=offset,
                           shuffle=shuffle)
        raise self.fail(path + ("from",), f"{src!r}: must be \"zero\", \"unique\", "
                        "\"value:K\" or \"pool:NAME\"")

    def vma(self, obj: Any, path: Path_, pools: dict[str, int]) -> VmaSpec:
        self.table(obj, path, ("name", "pages", "mergeable", "shared", "fill"))
        name = self.name_(obj, "name", path)
        # x86_64's user address space (TASK_SIZE, 2^47 bytes) holds 2^35 pages: mmap of
        # a longer VMA fails with ENOMEM on any machine.
        pages = self.int_(obj, "pages", path, lo=1, hi=TASK_PAGES)
        mergeable = self.bool_(obj, "mergeable", path)
        shared = self.bool_(obj, "shared", path)
        if "fill" in obj:
            raw = self.array(obj, "fill", path, True)
            if not raw:
                raise self.fail(path + ("fill",), "must hold at least one segment")
            fill = tuple(self.segment(s, path + ("fill", i), pools)
                         for i, s in enumerate(raw))
            total = sum(s.pages for s in fill)
            if total != pages:
                raise self.fail(path + ("fill",), f"segments add up to {total} pages, "
                                f"but the VMA has pages = {pages}")
        else:
            fill = (Segment(source="zero", pages=pages),)
        return VmaSpec(name=name, pages=pages, mergeable=mergeable, shared=shared, fill=fill)

    def process(self, obj: Any, path: Path_, pools: dict[str, int]) -> list[ProcessSpec]:
        self.table(obj, path, ("name", "count", "merge_any", "vma"))
        name = self.name_(obj, "name", path)
        count = self.int_(obj, "count", path, default=1, lo=1, hi=PID_MAX_LIMIT)
        merge_any = self.bool_(obj, "merge_any", path)
        raw = self.array(obj, "vma", path, True)
        if not raw:
            raise self.fail(path + ("vma",), "a process needs at least one [[process.vma]]")
        vmas = []
        seen: set[str] = set()
        for i, v in enumerate(raw):
            spec = self.vma(v, path + ("vma", i), pools)
            if spec.name in seen:
                raise self.fail(path + ("vma", i, "name"),
                                f"duplicate VMA name {spec.name!r} in process {name!r}")
            seen.add(spec.name)
            vmas.append(spec)
        names = [name] if count == 1 else [f"{name}-{i}" for i in range(count)]
        return [ProcessSpec(name=n, merge_any=merge_any, vmas=tuple(vmas)) for n in names]

    def knob(self, name: str, value: Any, path: Path_, *, allow_run: bool) -> int | str:
        """Check one sysfs value statically (the kernel's dynamic refusals, like EBUSY,
        are reported at run time instead)."""
        if name == "run" and not allow_run:
            raise self.fail(path, "`run` cannot be set in [ksm]: the run sets it to 1 "
                            "once every process is filled (use a [[step]] sysfs action)")
        if name not in WRITABLE_KSM_FILES:
            raise self.fail(path, "not a writable file of /sys/kernel/mm/ksm (known: "
                            + ", ".join(f for f in WRITABLE_KSM_FILES
                                        if allow_run or f != "run") + ")")
        if name == "advisor_mode":
            if value not in ("none", "scan-time"):
                raise self.fail(path, f"must be \"none\" or \"scan-time\", not {value!r}")
            mode: str = value
            return mode
        if name in ("use_zero_pages", "smart_scan"):
            if isinstance(value, bool):
                return int(value)
            if isinstance(value, int) and value in (0, 1):
                return value
            raise self.fail(path, f"must be true/false or 0/1, not {value!r}")
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(path, f"must be an integer, not {_tname(value)}")
        lo, hi = {
            "run": (0, 2),
            "merge_across_nodes": (0, 1),
            "max_page_sharing": (2, I32_MAX),
            "advisor_target_scan_time": (1, U64_MAX),
            "advisor_max_cpu": (0, U64_MAX),
            "advisor_min_pages_to_scan": (0, U64_MAX),
            "advisor_max_pages_to_scan": (0, U64_MAX),
        }.get(name, (0, U32_MAX))
        if not lo <= value <= hi:
            raise self.fail(path, f"must be in {lo}..{hi}, not {value}")
        return value


def _tname(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
            list: "an array", dict: "a table"}.get(type(v), type(v).__name__)


def parse_scenario(text: str, path: str | Path = "<string>") -> Scenario:
    """Parse and check scenario text; ``path`` names the file in messages."""
    file = str(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        line = int(m.group(1)) if m else None
        problem = re.sub(r"\s*\(at line \d+, column \d+\)", "", msg) or "invalid TOML"
        key = ""
        if line is not None:
            src = text.splitlines()[line - 1] if line <= len(text.splitlines()) else ""
            km = re.match(r"\s*([A-Za-z0-9_.\"'-]+)\s*=", src)
            if km:
                key = km.group(1).strip()
            if problem.startswith("Cannot overwrite a value"):
                problem = "defined more than once (or redefined as a table)"
            else:
                problem = f"invalid TOML ({problem}, column {m.group(2)})" if m else problem
        raise ScenarioError(problem, file=file, line=line, key=key) from None

    c = _Checker(text, file)
    top = ("name", "description", "seed", "max_full_scans", "ksm", "pools", "process",
           "step")
    c.table(doc, (), top)
    stem = Path(file).stem if file != "<string>" else "scenario"
    name = c.str_(doc, "name", (), default=stem)
    description = c.str_(doc, "description", (), default="")
    seed = c.int_(doc, "seed", (), default=0)
    max_full_scans = c.int_(doc, "max_full_scans", (), lo=1)

    ksm_raw = doc.get("ksm", {})
    if not isinstance(ksm_raw, dict):
        raise c.fail(("ksm",), "must be a table")
    ksm = {k: c.knob(k, v, ("ksm", k), allow_run=False) for k, v in ksm_raw.items()}

    pools_raw = doc.get("pools", {})
    if not isinstance(pools_raw, dict):
        raise c.fail(("pools",), "must be a table of NAME = size")
    pools: dict[str, int] = {}
    for k in pools_raw:
        pools[k] = c.int_(pools_raw, k, ("pools",), lo=1)

    procs_raw = c.array(doc, "process", (), True)
    if not procs_raw:
        raise c.fail(("process",), "at least one [[process]] is required")
    processes: list[ProcessSpec] = []
    where: dict[str, Path_] = {}

    def add(specs: list[ProcessSpec], path: Path_) -> None:
        for s in specs:
            if s.name in where:
                raise c.fail(path + ("name",), f"duplicate process name {s.name!r} (also "
                             f"defined at {_key_text(where[s.name])})")
            where[s.name] = path

    for i, p in enumerate(procs_raw):
        specs = c.process(p, ("process", i), pools)
        add(specs, ("process", i))
        processes.extend(specs)

    steps_raw = c.array(doc, "step", (), False)
    parsed: list[Step] = []
    for i, s in enumerate(steps_raw):
        step = _step(c, s, ("step", i), i, pools, add)
        if isinstance(step.action, Fork):
            child = step.action.child.name
            if child in where:
                raise c.fail(("step", i, "fork", "name"), f"fork to the name {child!r}, which "
                             f"the scenario already uses (at {_key_text(where[child])})")
            where[child] = ("step", i, "fork")
        parsed.append(step)
    # Steps run by K, in file order within one K (a stable sort keeps file order).
    steps = _check_timeline(c, processes, sorted(parsed, key=lambda s: s.after_full_scans))

    return Scenario(name=name, description=description, seed=seed,
                    max_full_scans=max_full_scans, ksm=ksm, pools=pools,
                    processes=tuple(processes), steps=tuple(steps),
                    path=Path(file) if file != "<string>" else None)


_ACTIONS = ACTION_KEYS


def _step(c: _Checker, obj: Any, path: Path_, index: int, pools: dict[str, int],
          add: Any) -> Step:
    c.table(obj, path, ("after_full_scans",) + _ACTIONS)
    k = c.int_(obj, "after_full_scans", path, lo=1)
    actions = [a for a in _ACTIONS if a in obj]
    if len(actions) != 1:
        problem = ("names no action" if not actions
                   else "names several actions (" + ", ".join(actions) + ")")
        raise c.fail(path, f"{problem}: a step has exactly one of " + ", ".join(_ACTIONS))
    action = actions[0]
    ap = path + (action,)
    v = obj[action]
    act: Action
    if action == "write":
        c.table(v, ap, ("process", "vma", "first", "count", "from", "offset", "shuffle"))
        count = c.int_(v, "count", ap, lo=1)
        seg = c._segment_body(v, ap, pools, count)
        act = Write(process=c.name_(v, "process", ap), vma=c.name_(v, "vma", ap),
                    first=c.int_(v, "first", ap, lo=0), count=count, segment=seg)
    elif action == "madvise":
        c.table(v, ap, ("process", "vma", "advice", "first", "count"))
        advice = c.str_(v, "advice", ap)
        if advice not in ("mergeable", "unmergeable"):
            raise c.fail(ap + ("advice",),
                         f"must be \"mergeable\" or \"unmergeable\", not {advice!r}")
        count_: int | None = c.int_(v, "count", ap, lo=1) if "count" in v else None
        act = Madvise(process=c.name_(v, "process", ap), vma=c.name_(v, "vma", ap),
                      advice=advice,  # type: ignore[arg-type]
                      first=c.int_(v, "first", ap, default=0, lo=0), count=count_)
    elif action == "munmap":
        c.table(v, ap, ("process", "vma", "first", "count"))
        act = Munmap(process=c.name_(v, "process", ap), vma=c.name_(v, "vma", ap),
                     first=c.int_(v, "first", ap, lo=0), count=c.int_(v, "count", ap, lo=1))
    elif action == "fork":
        c.table(v, ap, ("process", "name"))
        # the child's VMAs are the parent's, known once the timeline is played
        act = Fork(process=c.name_(v, "process", ap),
                   child=ProcessSpec(name=c.name_(v, "name", ap)))
    elif action == "merge_any":
        c.table(v, ap, ("process", "enable"))
        if "enable" not in v:
            raise c.fail(ap + ("enable",), "missing (required)")
        act = MergeAny(process=c.name_(v, "process", ap), enable=c.bool_(v, "enable", ap))
    elif action == "sysfs":
        if not isinstance(v, dict):
            raise c.fail(ap, "must be a table FILE = VALUE")
        if not v:
            raise c.fail(ap, "must name at least one file")
        act = Sysfs(tuple((f, c.knob(f, val, ap + (f,), allow_run=True))
                          for f, val in v.items()))
    elif action == "exit":
        if not isinstance(v, str) or not v:
            raise c.fail(ap, f"must be a process name (a string), not {_tname(v)}")
        act = Exit(process=v)
    else:  # spawn
        specs = c.process(v, ap, pools)
        add(specs, ap)
        act = Spawn(tuple(specs))
    return Step(after_full_scans=k, action=act, index=index)


def _check_timeline(c: _Checker, processes: list[ProcessSpec],
                    steps: list[Step]) -> list[Step]:
    """Play the timeline on names and page maps: every step must name a live process, a
    VMA it has and pages it still has mapped.  Returns the steps with each fork's child
    filled in (the parent's VMAs as they are at that point)."""
    alive: dict[str, MappedPages] = {p.name: MappedPages(p) for p in processes}
    gone: set[str] = set()
    out: list[Step] = []
    for s in steps:
        a = s.action
        path: Path_ = ("step", s.index, s.kind)
        if isinstance(a, Spawn):
            for p in a.processes:
                alive[p.name] = MappedPages(p)
            out.append(s)
            continue
        if isinstance(a, Sysfs):
            out.append(s)
            continue
        pname = a.process
        ppath = path if isinstance(a, Exit) else path + ("process",)
        if pname not in alive:
            why = "has already exited" if pname in gone else "is not defined"
            known = ", ".join(alive) or "none"
            raise c.fail(ppath, f"process {pname!r} {why} at after_full_scans = "
                         f"{s.after_full_scans} (live processes: {known})")
        proc = alive[pname]
        if isinstance(a, Exit):
            del alive[pname]
            gone.add(pname)
        elif isinstance(a, Fork):
            child = replace(proc.spec, name=a.child.name)
            alive[child.name] = MappedPages(child, parent=proc)
            s = replace(s, action=replace(a, child=child))
        elif isinstance(a, (Write, Madvise, Munmap)):
            _check_range(c, path, s, proc)
        out.append(s)
    return out


def _check_range(c: _Checker, path: Path_, s: Step, proc: MappedPages) -> None:
    a = s.action
    assert isinstance(a, (Write, Madvise, Munmap))
    pname = proc.spec.name
    try:
        pages = proc.pages(a.vma)
    except KeyError:
        known = ", ".join(v.name for v in proc.spec.vmas)
        raise c.fail(path + ("vma",), f"process {pname!r} has no VMA {a.vma!r} "
                     f"(VMAs: {known})") from None
    at = f"at after_full_scans = {s.after_full_scans}"
    if isinstance(a, Madvise) and a.count is None:
        if a.first >= pages:
            raise c.fail(path + ("first",), f"page {a.first} is outside VMA {a.vma!r} "
                         f"({pages} pages)")
        if not proc.runs(a.vma, a.first):
            raise c.fail(path, f"pages {a.first}..{pages - 1} of VMA {a.vma!r} of process "
                         f"{pname!r} are all unmapped {at}")
        return
    count = a.count
    assert count is not None
    last = a.first + count - 1
    if a.first + count > pages:
        raise c.fail(path + ("count",), f"pages {a.first}..{last} are outside VMA "
                     f"{a.vma!r} ({pages} pages)")
    if not proc.all_mapped(a.vma, a.first, count):
        holes = [f"{f}..{f + n - 1}" for f, n in
                 _unmapped_runs(proc, a.vma, a.first, count)]
        raise c.fail(path + ("first",), f"pages {', '.join(holes)} of VMA {a.vma!r} of "
                     f"process {pname!r} are already unmapped {at}")
    if isinstance(a, Munmap):
        proc.unmap(a.vma, a.first, count)


def _unmapped_runs(proc: MappedPages, vma: str, first: int,
                   count: int) -> list[tuple[int, int]]:
    return proc.unmapped_runs(vma, first, count)


def iter_builtin_paths() -> Iterator[Path]:
    yield from sorted(builtin_dir().glob("*.toml"))

#!/usr/bin/env python3
"""Random scenarios, run on the simulated and on the real kernel, compared cell by cell.

Each round writes a small random scenario (contract v2: processes, VMAs, fills from zero /
unique / value / pool contents, knob settings and a timeline of writes, whole-VMA and
ranged madvise, munmap of ranges, forks, merge_any, sysfs changes -- pages_to_scan 0
included --, exits and spawns), runs both backends and prints the first differences.
A failing scenario is kept under --keep for replay with `ksmfs diff FILE`.  Round i of
seed S is the same scenario on every machine (``--first`` starts a chunk mid-way).

    python scripts/fuzz_diff.py --rounds 50 --seed 1
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from pathlib import Path

from ksmfs.scenario.diff import allowed_fields, compare
from ksmfs.scenario.loader import load_scenario
from ksmfs.scenario.real import run_real
from ksmfs.scenario.sim import run_sim


def fill(rng: random.Random, pages: int, pools: dict[str, int]) -> str:
    segs = []
    left = pages
    while left:
        n = left if rng.random() < 0.4 else rng.randint(1, left)
        kind = rng.choice(["zero", "unique", "value", "value", "pool", "pool"])
        if kind == "value":
            segs.append(f'{{from = "value:{rng.randint(1, 4)}", pages = {n}}}')
        elif kind == "pool" and pools:
            name = rng.choice(sorted(pools))
            shuffle = "true" if rng.random() < 0.3 else "false"
            segs.append(
                f'{{from = "pool:{name}", pages = {n}, offset = {rng.randint(0, 50)}, shuffle = {shuffle}}}'
            )
        else:
            segs.append(f'{{from = "{"zero" if kind == "zero" else "unique"}", pages = {n}}}')
        left -= n
    return "[" + ", ".join(segs) + "]"


class Proc:
    """What the generator knows of a live process: its VMAs and which pages are mapped."""

    def __init__(self, vmas: list[tuple[str, int]]) -> None:
        self.maps = {name: [True] * pages for name, pages in vmas}

    def fork(self) -> Proc:
        child = Proc([])
        child.maps = {name: list(m) for name, m in self.maps.items()}
        return child

    def runs(self, vma: str) -> list[tuple[int, int]]:
        out, start, m = [], -1, self.maps[vma]
        for i, mapped in enumerate(m + [False]):
            if mapped and start < 0:
                start = i
            elif not mapped and start >= 0:
                out.append((start, i - start))
                start = -1
        return out

    def mapped_vmas(self) -> list[str]:
        return [v for v, m in self.maps.items() if any(m)]


def process(rng: random.Random, name: str, pools: dict[str, int],
            scale: int = 1) -> tuple[str, list[tuple[str, int]]]:
    lines = ["[[process]]", f'name = "{name}"']
    if rng.random() < 0.2:
        lines.append("merge_any = true")
    vmas = []
    for j in range(rng.randint(1, 3)):
        pages = rng.choice([1, 3, 16, 64, 200, 300]) * scale
        shared = rng.random() < 0.1
        lines += [
            "[[process.vma]]",
            f'name = "v{j}"',
            f"pages = {pages}",
            f"mergeable = {'true' if rng.random() < 0.8 else 'false'}",
            f"shared = {'true' if shared else 'false'}",
            f"fill = {fill(rng, pages, pools)}",
        ]
        vmas.append((f"v{j}", pages))
    return "\n".join(lines), vmas


def sub_range(rng: random.Random, first: int, count: int) -> tuple[int, int]:
    """A random non-empty range inside pages first … first+count-1."""
    a = rng.randint(first, first + count - 1)
    return a, rng.randint(1, first + count - a)


STEP_KINDS = ["write", "write", "madvise", "madvise", "munmap", "munmap", "fork", "fork",
              "merge_any", "sysfs", "exit", "spawn"]
SYSFS_CHANGES = [("run", 2), ("run", 1), ("run", 0), ("use_zero_pages", 1),
                 ("use_zero_pages", 0), ("smart_scan", 0), ("smart_scan", 1),
                 ("max_page_sharing", 3), ("stable_node_chains_prune_millisecs", 0),
                 ("pages_to_scan", 0), ("pages_to_scan", 100)]


def scenario(rng: random.Random, i: int, scale: int = 1) -> str:
    """Round i; ``scale`` multiplies the sizes of VMAs and pools."""
    pools = {f"p{k}": rng.choice([3, 20, 100]) * scale for k in range(rng.randint(0, 2))}
    max_full_scans = rng.randint(5, 10)
    out = [f'name = "fuzz-{i}"', f"max_full_scans = {max_full_scans}"]
    ksm = {}
    if rng.random() < 0.5:
        ksm["max_page_sharing"] = rng.choice([2, 3, 5, 256])
    if rng.random() < 0.4:
        ksm["use_zero_pages"] = rng.randint(0, 1)
    if rng.random() < 0.4:
        ksm["smart_scan"] = rng.randint(0, 1)
    if rng.random() < 0.4:
        ksm["pages_to_scan"] = rng.choice([7, 50, 1000])
    if rng.random() < 0.3:
        ksm["stable_node_chains_prune_millisecs"] = rng.choice([0, 2000])
    if ksm:
        out.append("[ksm]")
        out += [f"{k} = {v}" for k, v in ksm.items()]
    if pools:
        out.append("[pools]")
        out += [f"{k} = {v}" for k, v in pools.items()]
    alive: dict[str, Proc] = {}
    for p in range(rng.randint(1, 4)):
        text, vmas = process(rng, f"proc{p}", pools, scale)
        out.append(text)
        alive[f"proc{p}"] = Proc(vmas)
    names = len(alive)
    # Steps in timeline order, so that every one names a live process and mapped pages
    # (the loader refuses anything else, contract v2).
    for k in sorted(rng.randint(1, max_full_scans - 1) for _ in range(rng.randint(0, 8))):
        act = rng.choice(STEP_KINDS)
        head = f"[[step]]\nafter_full_scans = {k}\n"
        if act not in ("sysfs", "spawn") and not alive:
            continue
        p = rng.choice(sorted(alive)) if alive else ""
        proc = alive.get(p)
        vmas = proc.mapped_vmas() if proc else []
        if act in ("write", "madvise", "munmap") and not vmas:
            continue
        if act == "write":
            v = rng.choice(vmas)
            first, count = sub_range(rng, *rng.choice(proc.runs(v)))
            src = rng.choice(['"zero"', '"unique"', '"value:1"', '"value:9"'])
            out.append(head + f'write = {{process = "{p}", vma = "{v}", first = {first}, '
                       f"count = {count}, from = {src}}}")
        elif act == "madvise":
            v = rng.choice(vmas)
            adv = rng.choice(["mergeable", "unmergeable"])
            if rng.random() < 0.4:  # whole VMA: unmapped pages are skipped
                out.append(head + f'madvise = {{process = "{p}", vma = "{v}", advice = "{adv}"}}')
            else:
                first, count = sub_range(rng, *rng.choice(proc.runs(v)))
                out.append(head + f'madvise = {{process = "{p}", vma = "{v}", advice = "{adv}", '
                           f"first = {first}, count = {count}}}")
        elif act == "munmap":
            v = rng.choice(vmas)
            first, count = sub_range(rng, *rng.choice(proc.runs(v)))
            out.append(head + f'munmap = {{process = "{p}", vma = "{v}", first = {first}, '
                       f"count = {count}}}")
            proc.maps[v][first:first + count] = [False] * count
        elif act == "fork":
            child = f"fork{names}"
            names += 1
            out.append(head + f'fork = {{process = "{p}", name = "{child}"}}')
            alive[child] = proc.fork()
        elif act == "merge_any":
            out.append(head + f'merge_any = {{process = "{p}", enable = {rng.choice(["true", "false"])}}}')
        elif act == "sysfs":
            key, val = rng.choice(SYSFS_CHANGES)
            out.append(head + f"sysfs = {{{key} = {val}}}")
        elif act == "exit":
            del alive[p]
            out.append(head + f'exit = "{p}"')
        else:
            name = f"late{names}"
            names += 1
            pages = rng.choice([16, 64]) * scale
            out.append(
                head + f'[step.spawn]\nname = "{name}"\n'
                f'[[step.spawn.vma]]\nname = "v0"\npages = {pages}\nmergeable = true\nfill = {fill(rng, pages, pools)}'
            )
            alive[name] = Proc([("v0", pages)])
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--first", type=int, default=0, help="number of the first round")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sim-only", action="store_true",
                    help="generate and run on the sim only (checks the generator; no root)")
    ap.add_argument("--scale", type=int, default=1,
                    help="multiply VMA and pool sizes (bigger trees, chains, more forked pages)")
    ap.add_argument("--kernel-batches", action="store_true",
                    help="let the real ksmd scan pages_to_scan pages per batch (run_real's "
                         "kernel_batches) instead of a whole pass per batch")
    ap.add_argument("--keep", default="/tmp/ksmfs-fuzz", help="where failing scenarios are saved")
    args = ap.parse_args()
    keep = Path(args.keep)
    keep.mkdir(parents=True, exist_ok=True)
    bad = broken = cells = 0
    kinds: Counter[str] = Counter()
    t0 = time.monotonic()
    last = args.first + args.rounds
    for i in range(args.first, last):
        text = scenario(random.Random(f"{args.seed}:{i}"), i, args.scale)
        path = keep / f"fuzz-{args.seed}-{i}.toml"
        path.write_text(text)
        try:
            sc = load_scenario(str(path))
        except Exception as e:  # a generator bug, not a kernel difference
            broken += 1
            print(f"round {i}: generator wrote a bad scenario: {e}")
            continue
        kinds.update(st.kind for st in sc.steps)
        sim = run_sim(sc, lambda s: None)
        if args.sim_only:
            path.unlink()
            continue
        real = run_real(sc, lambda s: None, kernel_batches=args.kernel_batches)
        res = compare(sim, real, allowed_fields(sc))
        cells += res.cells
        if res.equal:
            path.unlink()
            print(f"round {i}: {res.summary()}")
        else:
            bad += 1
            print(f"round {i}: {res.summary()} -> {path}")
            for d in [d for d in res.differences if d.counted][:8]:
                print("   ", d.line())
    steps = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
    mode = " (kernel batches)" if args.kernel_batches else ""
    mode += f" scale {args.scale}" if args.scale != 1 else ""
    print(f"seed {args.seed}{mode} rounds {args.first}..{last - 1}: {bad} of {args.rounds} scenarios "
          f"differ, {broken} not loadable; {cells} cells compared; steps: {steps}; "
          f"{time.monotonic() - t0:.1f} s")
    return 1 if bad or broken else 0


if __name__ == "__main__":
    sys.exit(main())

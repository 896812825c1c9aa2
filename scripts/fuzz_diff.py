#!/usr/bin/env python3
"""Random scenarios, run on the simulated and on the real kernel, compared cell by cell.

Each round writes a small random scenario (processes, VMAs, fills from zero / unique /
value / pool contents, knob settings and a timeline of writes, madvise, merge_any,
sysfs changes, exits and spawns), runs both backends and prints the first differences.
A failing scenario is kept under --keep for replay with `ksmfs diff FILE`.

    python scripts/fuzz_diff.py --rounds 50 --seed 1
"""

from __future__ import annotations

import argparse
import random
import sys
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


def process(rng: random.Random, name: str, pools: dict[str, int]) -> tuple[str, list[tuple[str, int]]]:
    lines = ["[[process]]", f'name = "{name}"']
    if rng.random() < 0.2:
        lines.append("merge_any = true")
    vmas = []
    for j in range(rng.randint(1, 3)):
        pages = rng.choice([1, 3, 16, 64, 200, 300])
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


def scenario(rng: random.Random, i: int) -> str:
    pools = {f"p{k}": rng.choice([3, 20, 100]) for k in range(rng.randint(0, 2))}
    out = [f'name = "fuzz-{i}"', f"max_full_scans = {rng.randint(5, 10)}"]
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
    procs: dict[str, list[tuple[str, int]]] = {}
    for p in range(rng.randint(1, 4)):
        text, vmas = process(rng, f"proc{p}", pools)
        out.append(text)
        procs[f"proc{p}"] = vmas
    alive = list(procs)
    for _ in range(rng.randint(0, 5)):
        k = rng.randint(1, 6)
        act = rng.choice(["write", "write", "madvise", "merge_any", "sysfs", "exit", "spawn"])
        if act in ("write", "madvise", "merge_any", "exit") and not alive:
            continue
        if act == "write":
            p = rng.choice(alive)
            v, pages = rng.choice(procs[p])
            first = rng.randint(0, pages - 1)
            count = rng.randint(1, pages - first)
            src = rng.choice(['"zero"', '"unique"', '"value:1"', '"value:9"'])
            out.append(
                f"[[step]]\nafter_full_scans = {k}\nwrite = {{process = \"{p}\", vma = \"{v}\", "
                f"first = {first}, count = {count}, from = {src}}}"
            )
        elif act == "madvise":
            p = rng.choice(alive)
            v, _ = rng.choice(procs[p])
            adv = rng.choice(["mergeable", "unmergeable"])
            out.append(f'[[step]]\nafter_full_scans = {k}\nmadvise = {{process = "{p}", vma = "{v}", advice = "{adv}"}}')
        elif act == "merge_any":
            p = rng.choice(alive)
            out.append(f'[[step]]\nafter_full_scans = {k}\nmerge_any = {{process = "{p}", enable = {rng.choice(["true", "false"])}}}')
        elif act == "sysfs":
            key, val = rng.choice([("run", 2), ("run", 1), ("run", 0), ("use_zero_pages", 1),
                                   ("use_zero_pages", 0), ("smart_scan", 0), ("smart_scan", 1),
                                   ("max_page_sharing", 3), ("stable_node_chains_prune_millisecs", 0)])
            out.append(f"[[step]]\nafter_full_scans = {k}\nsysfs = {{{key} = {val}}}")
        elif act == "exit":
            p = alive.pop(rng.randrange(len(alive)))
            out.append(f'[[step]]\nafter_full_scans = {k}\nexit = "{p}"')
        else:
            name = f"late{len(procs)}"
            pages = rng.choice([16, 64])
            out.append(
                f'[[step]]\nafter_full_scans = {k}\n[step.spawn]\nname = "{name}"\n'
                f'[[step.spawn.vma]]\nname = "v0"\npages = {pages}\nmergeable = true\nfill = {fill(rng, pages, pools)}'
            )
            procs[name] = [("v0", pages)]
            alive.append(name)
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", default="/tmp/ksmfs-fuzz", help="where failing scenarios are saved")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    keep = Path(args.keep)
    keep.mkdir(parents=True, exist_ok=True)
    bad = 0
    for i in range(args.rounds):
        text = scenario(rng, i)
        path = keep / f"fuzz-{args.seed}-{i}.toml"
        path.write_text(text)
        try:
            sc = load_scenario(str(path))
        except Exception as e:  # a generator bug, not a kernel difference
            print(f"round {i}: generator wrote a bad scenario: {e}")
            continue
        sim = run_sim(sc, lambda s: None)
        real = run_real(sc, lambda s: None)
        res = compare(sim, real, allowed_fields(sc))
        if res.equal:
            path.unlink()
            print(f"round {i}: {res.summary()}")
        else:
            bad += 1
            print(f"round {i}: {res.summary()} -> {path}")
            for d in [d for d in res.differences if d.counted][:8]:
                print("   ", d.line())
    print(f"{bad} of {args.rounds} scenarios differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

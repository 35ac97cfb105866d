"""``python -m benchmarks.run [--smoke] [--only NAME] [--out DIR]``: run the suite (or one
benchmark of it, e.g. ``--only orchestration``), write and print results.

Full mode takes about 100 minutes on 2 cores (most of it the payoff and pruning sweeps) and
needs the Shakespeare corpus (``make data``); ``--smoke`` runs every benchmark at tiny sizes,
once, in under a minute (its figures mean nothing; it proves the suite runs), the benchmarks
that work in child processes concurrently with each other and with the in-process ones. In
full mode everything runs one after the other, so that no benchmark slows another down.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from benchmarks import (
    bookkeeping,
    memory,
    orchestration,
    overlap,
    payoff,
    pruning,
    report,
    scaling,
    search,
    swept,
    throughput,
)
from benchmarks.common import ROOT, Row

IN_PROCESS: list[Callable[[bool], list[Row]]] = [throughput.run, overlap.run, swept.run]
CHILD_PROCESSES: list[Callable[[bool], list[Row]]] = [
    memory.run, orchestration.run, scaling.run, search.run, bookkeeping.run,
]  # fmt: skip
# A budgeted sweep plans from its start-up time: in smoke mode it runs once the others are
# done, so that their load does not eat its budget.
LAST: list[Callable[[bool], list[Row]]] = [payoff.run, pruning.run]
CORPUS = ROOT / "data" / "shakespeare.txt"


def by_name() -> dict[str, Callable[[bool], list[Row]]]:
    benches = [*IN_PROCESS, *CHILD_PROCESSES, *LAST]
    return {bench.__module__.rsplit(".", 1)[-1]: bench for bench in benches}


def run_all(smoke: bool, only: str | None = None) -> list[Row]:
    torch.set_num_threads(1)  # the single-thread figures; child processes set their own
    if only is not None:
        return by_name()[only](smoke)
    if not smoke:
        benches = [*IN_PROCESS, *CHILD_PROCESSES, *LAST]
        return [row for bench in benches for row in bench(smoke)]
    with ThreadPoolExecutor(max_workers=len(CHILD_PROCESSES)) as pool:
        children = [pool.submit(bench, smoke) for bench in CHILD_PROCESSES]
        rows = [row for bench in IN_PROCESS for row in bench(smoke)]
        rows += [row for child in children for row in child.result()]
    return rows + [row for bench in LAST for row in bench(smoke)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 1 repeat, < 60 s")
    parser.add_argument("--only", choices=sorted(by_name()), help="run this benchmark alone")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if not args.smoke and not CORPUS.exists():
        print(f"error: {CORPUS} is missing; build it with `make data`", file=sys.stderr)
        return 2
    info = report.machine()
    rows = run_all(args.smoke, args.only)
    info["load average at the end"] = report.machine()["load average (1/5/15 min)"]
    command = shlex.join(["python", "-m", "benchmarks.run", *(argv or sys.argv[1:])])
    text = report.markdown(rows, info, command)
    args.out.mkdir(parents=True, exist_ok=True)
    report.write_csv(rows, args.out / "results.csv")
    (args.out / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: the sweep process's own cost per trial, as the sweep grows.

The sweep process (the controller) samples each trial, hands it to a worker and, as each trial
finishes, records it: the study's bookkeeping and the sweep directory's tables
(``sweeps/outputs.py``). A sweep of N trials must cost it the same per trial at trial N as at
trial 10; a controller whose cost per trial grows with the sweep ends up the bottleneck.

Each size N runs our sweeper on ``benchmarks/toy_tables_app.py`` (the toy app, each trial
``steps`` reports over ``sleep`` seconds, that also writes a real run's ``steps.parquet``,
1,200 rows, and ``evals.parquet``, 10 rows, for the sweep to collect), ``n_jobs`` workers,
no pruner and the random sampler: TPE's own cost grows with the number of trials and would
hide ours. While it runs, the controller's own CPU time (``utime + stime`` in
``/proc/PID/stat``: its threads, not its workers) is sampled every 0.2 s; each trial's
completion time comes from the study. From these, per size:

- controller CPU per trial, early and late: its CPU seconds from the completion of trial k to
  that of trial k + m, over m, for m = 10% of N, early starting after the first 5% (the
  start-up's tail), late ending at the last completion; and late / early (flat: about 1);
- controller CPU share: its CPU seconds over wall seconds from the first completion to the
  last (1.0 = one core busy): how close it is to being the bottleneck;
- wall per trial, steady (first to last completion / (N - 1)), and in the early and late
  windows: with ``n_jobs`` workers and nothing else in the way it is ``sleep / n_jobs`` plus
  each trial's overhead;
- the controller's CPU over the whole run, its peak resident memory and the trials finished.

A sweep still running after ``max_wall_s`` is interrupted (as Ctrl-C does; it exits cleanly)
and measured on the trials it finished, which ``trials finished`` then shows. Each run is
long, so full mode runs each size once (5,000 trials at 0.2 s: about 17 minutes on 2 cores,
if the controller keeps up); a single run has no spread, so compare late / early, not one
figure against another machine's.

``python -m benchmarks.bookkeeping --trials 400 --profile /tmp/c.prof`` runs one sweep under
``cProfile`` and prints where the controller's time went.
"""

from __future__ import annotations

import argparse
import math
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, Row, ratios, summarize
from benchmarks.launch import child_env, complete, study_trials

BENCH = "bookkeeping"
APP = ROOT / "benchmarks" / "toy_tables_app.py"
TICK = os.sysconf("SC_CLK_TCK")  # /proc/PID/stat counts CPU time in clock ticks
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Settings:
    sizes: tuple[int, ...] = (100, 1_000, 5_000)  # trials per sweep
    jobs: int = 2
    sleep: float = 0.2  # seconds of a trial: trials are not pure overhead
    steps: int = 20  # reports per trial
    step_rows: int = 1_200  # rows of each trial's steps.parquet (0: none)
    eval_rows: int = 10  # rows of each trial's evals.parquet (0: none)
    repeats: int = 1  # each run is long
    max_wall_s: float = 3_600  # a sweep still running then is interrupted
    interval_s: float = 0.2  # between samples of the controller's CPU time


FULL = Settings()
SMOKE = Settings(sizes=(6,), sleep=0.05, steps=4, max_wall_s=120)
Metrics = dict[str, float]
UNITS = {
    "controller CPU per trial, early": "s",
    "controller CPU per trial, late": "s",
    "controller CPU per trial, late / early": "ratio",
    "controller CPU share, first to last completion": "fraction",
    "wall per trial, steady": "s",
    "wall per trial, early": "s",
    "wall per trial, late": "s",
    "controller CPU, whole run": "s",
    "controller peak RSS": "MiB",
    "trials finished": "trials",
}


@dataclass(frozen=True)
class Sample:
    time: float  # epoch seconds, the clock of the study's trial datetimes
    cpu: float  # the process's own user + system CPU seconds, all threads, no children
    rss_mib: float


def run(smoke: bool) -> list[Row]:
    s = SMOKE if smoke else FULL
    results: dict[int, list[Metrics]] = {n: [] for n in s.sizes}
    with tempfile.TemporaryDirectory(prefix="bench-bookkeeping-") as tmp:
        for repeat in range(s.repeats):
            for n in s.sizes:
                results[n].append(measure(s, n, Path(tmp) / f"{n}-{repeat}"))
    return [
        summarize(BENCH, _case(s, n), metric, [m[metric] for m in runs], UNITS[metric])
        for n, runs in results.items()
        for metric in UNITS
    ]


def _case(s: Settings, n: int) -> str:
    tables = f"tables of {s.step_rows}+{s.eval_rows} rows" if s.step_rows or s.eval_rows else ""
    return f"{n} trials, n_jobs={s.jobs}, sleep={s.sleep} s, {tables or 'no metric tables'}"


def measure(s: Settings, n: int, sweep_dir: Path, profile: Path | None = None) -> Metrics:
    """Run a sweep of ``n`` trials into ``sweep_dir``, watching its controller."""
    args = [
        str(APP), "-m", "hydra/sweeper=optuna", "hydra/sweeper/pruner=none",
        "hydra/sweeper/sampler=random", f"hydra.sweep.dir={sweep_dir}", "x=interval(-1,1)",
        f"steps={s.steps}", f"sleep={s.sleep}", f"step_rows={s.step_rows}",
        f"eval_rows={s.eval_rows}", f"hydra.sweeper.n_trials={n}",
        f"hydra.sweeper.n_jobs={s.jobs}",
    ]  # fmt: skip
    if profile is not None:
        args = ["-m", "cProfile", "-o", str(profile), *args]
    samples = watch(args, sweep_dir.parent / f"{sweep_dir.name}.log", s)
    ends = sorted(complete(t) for t in study_trials(sweep_dir) if t.datetime_complete)
    return metrics(samples, ends)


def watch(args: list[str], log: Path, s: Settings) -> list[Sample]:
    """Run ``python ARGS`` (output to ``log``), sampling its CPU time until it exits; interrupt
    it after ``s.max_wall_s``, kill it a minute later."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=child_env(), stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip
    samples: list[Sample] = []
    interrupt_at, interrupted = time.time() + s.max_wall_s, False
    while (stat := read_stat(proc.pid)) is not None:
        state, sample = stat
        samples.append(sample)
        if state == "Z":  # exited, not yet reaped: its final CPU time is still readable
            break
        if sample.time > interrupt_at + 60:
            proc.kill()
        elif sample.time > interrupt_at and not interrupted:
            proc.send_signal(signal.SIGINT)
            interrupted = True
        time.sleep(s.interval_s)
    code = proc.wait()
    if code != 0 and not interrupted:
        tail = "\n".join(log.read_text().strip().splitlines()[-15:])
        raise RuntimeError(f"python {' '.join(args)} exited {code}:\n{tail}")
    return samples


def read_stat(pid: int) -> tuple[str, Sample] | None:
    """The state of process ``pid`` and a sample of it (None: gone)."""
    now = time.time()
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # from field 3 (state): the name may hold ")"
    cpu = (int(fields[11]) + int(fields[12])) / TICK  # fields 14, 15: utime, stime
    return fields[0], Sample(now, cpu, int(fields[21]) * PAGE / 2**20)  # field 24: rss pages


def windows(n: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The early and late windows, as (first, last) indices into the sorted completions."""
    width, skip = max(2, n // 10), max(2, n // 20)
    return (skip, min(skip + width, n - 1)), (max(0, n - 1 - width), n - 1)


def metrics(samples: list[Sample], ends: list[float]) -> Metrics:
    times, cpus = [x.time for x in samples], [x.cpu for x in samples]

    def cpu(a: int, b: int) -> float:  # controller CPU seconds per trial, completions a to b
        span = np.interp([ends[a], ends[b]], times, cpus)
        return float(span[1] - span[0]) / (b - a) if b > a else math.nan

    def wall(a: int, b: int) -> float:
        return (ends[b] - ends[a]) / (b - a) if b > a else math.nan

    n = len(ends)
    early, late = windows(n) if n >= 4 else ((0, 0), (0, 0))
    whole = (0, n - 1) if n >= 2 else (0, 0)
    return {
        "controller CPU per trial, early": cpu(*early),
        "controller CPU per trial, late": cpu(*late),
        "controller CPU per trial, late / early": ratios([cpu(*late)], [cpu(*early)])[0],
        "controller CPU share, first to last completion": cpu(*whole) / wall(*whole),
        "wall per trial, steady": wall(*whole),
        "wall per trial, early": wall(*early),
        "wall per trial, late": wall(*late),
        "controller CPU, whole run": samples[-1].cpu if samples else math.nan,
        "controller peak RSS": max((x.rss_mib for x in samples), default=math.nan),
        "trials finished": float(n),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bookkeeping")
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--sleep", type=float, default=FULL.sleep)
    parser.add_argument("--profile", type=Path, help="run the controller under cProfile")
    args = parser.parse_args(argv)
    s = Settings(sizes=(args.trials,), sleep=args.sleep)
    with tempfile.TemporaryDirectory(prefix="bench-bookkeeping-") as tmp:
        for metric, value in measure(s, args.trials, Path(tmp) / "sweep", args.profile).items():
            print(f"{metric}: {value:.4g} {UNITS[metric]}")
    if args.profile is not None:
        pstats.Stats(str(args.profile)).sort_stats("cumulative").print_stats(30)


if __name__ == "__main__":
    main()

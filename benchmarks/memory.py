"""Benchmark 3 (memory): peak memory of TBPTT(k1, k2) against k2 and against stream length.

Each case runs in a fresh Python process (``python -m benchmarks.memory CASE``), which builds
its corpus, model and optimizer, reads its peak resident set size, trains, and reports the
growth of that peak: the memory the training itself needed at its worst. ``tracemalloc``
would miss it (torch allocates tensor memory in C++, outside Python's allocator) and a shared
process would hide it under earlier peaks; a fresh process per case and the kernel's own
high-water mark see every tensor, whichever allocator made it.

The peak is ``VmHWM`` from ``/proc/self/status`` (Linux), not ``getrusage``'s ``ru_maxrss``:
Linux carries the high-water mark from before ``execve`` into ``ru_maxrss``, so a child
started by a parent that already holds a few hundred MiB (this suite, after the throughput
benchmarks) reports the parent's size as its own peak, and every growth reads 0. ``VmHWM``
belongs to the child's own address space. The growth includes a constant of a few tens of
MiB (gradients, Adam state, oneDNN and allocator first use); the slope in k2 is the point.

Ours must be flat in stream length (states are kept only where a later span starts, and the
graph is cut there) and grow linearly in k2 (the recomputed span's activations).
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

import torch

from benchmarks.baselines import PerStepTBPTT, new_model, recompute_updates
from benchmarks.common import ROOT, Row, ratios, summarize
from benchmarks.workloads import ModelSpec, our_trainer, rows_needed, synthetic_corpus
from tbptt.trainer import Trainer

BENCH = "tbptt memory"


@dataclass(frozen=True)
class Case:
    arm: str  # ours | recompute | per_step
    k1: int
    k2: int
    updates: int
    hidden: int


@dataclass(frozen=True)
class Settings:
    k2s: tuple[int, ...]  # against k2, with k1 fixed
    lengths: tuple[int, ...]  # updates, against stream length (k1, k2 = k1, 4 k1)
    k1: int = 10
    hidden: int = 128
    repeats: int = 3


FULL = Settings(k2s=(10, 40, 160), lengths=(8, 32, 128))
SMOKE = Settings(k2s=(8,), lengths=(8, 12), k1=2, hidden=16, repeats=1)  # 4 processes
ARMS = {  # the per-step version cannot step an optimizer (see benchmarks.overlap): no Adam state
    "ours": "ours",
    "recompute": "hand recompute",
    "per_step": "per-step (albanD), no optimizer step",
}


def _updates(case: Case, workdir: Path) -> Iterator[None]:
    spec = ModelSpec(case.hidden)
    corpus = synthetic_corpus(rows_needed(case.updates, case.k1, case.k2), window=case.k2)
    if case.arm == "ours":
        return _endless(our_trainer(corpus, spec, case.k1, case.k2, case.updates, workdir))
    model, optimizer = new_model(spec)
    if case.arm == "recompute":
        return recompute_updates(model, optimizer, corpus.train, case.k1, case.k2)
    return PerStepTBPTT(model, case.k1, case.k2).updates(corpus.train)


def _endless(trainer: Trainer) -> Iterator[None]:
    while True:
        trainer.update()
        yield


def peak_growth_mb(case: Case) -> float:
    """Run ``case`` in this process; the growth of its peak RSS, in MiB."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        updates = _updates(case, Path(tmp))
        gc.collect()
        before = peak_rss_kib()
        for _ in islice(updates, case.updates):
            pass
        after = peak_rss_kib()
    return (after - before) / 1024


def peak_rss_kib() -> int:
    """This process image's resident-memory high-water mark (``VmHWM``), in KiB."""
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])


def measure(case: Case) -> float:
    """``peak_growth_mb`` of ``case``, in a fresh process."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", json.dumps(asdict(case))],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(proc.stdout.strip().splitlines()[-1])


def run(smoke: bool) -> list[Row]:
    s = SMOKE if smoke else FULL
    by_k2 = {
        (k2, arm): Case(arm, s.k1, k2, updates=-(-k2 // s.k1) + 4, hidden=s.hidden)
        for k2 in s.k2s
        for arm in ARMS
    }
    k2 = 4 * s.k1
    by_length = {n: Case("ours", s.k1, k2, n, s.hidden) for n in s.lengths}
    peaks = _measure_all([*by_k2.values(), *by_length.values()], s.repeats)
    rows = [
        summarize(BENCH, f"vs k2: k1={s.k1} k2={k2_}", ARMS[arm], peaks[case], "MiB")
        for (k2_, arm), case in by_k2.items()
    ]
    case = f"vs stream: k1={s.k1} k2={k2}"
    rows += [
        summarize(BENCH, case, f"ours, {n * s.k1} rows", peaks[c], "MiB")
        for n, c in by_length.items()
    ]
    short, long = (peaks[by_length[n]] for n in (s.lengths[0], s.lengths[-1]))
    metric = f"ours, {s.lengths[-1] * s.k1} rows / {s.lengths[0] * s.k1} rows"
    return [*rows, summarize(BENCH, case, metric, ratios(long, short), "ratio")]


def _measure_all(cases: list[Case], repeats: int) -> dict[Case, list[float]]:
    """Every case ``repeats`` times, two processes at a time: a peak is a per-process figure
    that the neighbour's load does not change, and the suite's time is what is saved."""
    cases = list(dict.fromkeys(cases))  # a case in both series is measured once
    jobs = [case for _ in range(repeats) for case in cases]
    with ThreadPoolExecutor(max_workers=2) as pool:
        values = list(pool.map(measure, jobs))
    out: dict[Case, list[float]] = {case: [] for case in cases}
    for case, value in zip(jobs, values, strict=True):
        out[case].append(value)
    return out


if __name__ == "__main__":
    print(peak_growth_mb(Case(**json.loads(sys.argv[1]))))

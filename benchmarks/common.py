"""What every benchmark shares: result rows, summaries of repeats, interleaved timing.

The machine is shared and its speed drifts, so no figure stands alone: each is measured in the
same process and run as its baseline, the two interleaved (A B, B A, A B, ...), and reported as
the median of the per-repeat values with their spread (min-max). Ratios are taken repeat by
repeat (ours_i / baseline_i, measured back to back) before the median, so a slow patch of the
machine moves numerator and denominator together.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository


@dataclass(frozen=True)
class Row:
    """One tidy result: a metric of a case of a benchmark, summarized over its repeats."""

    benchmark: str
    case: str
    metric: str
    median: float
    min: float
    max: float
    repeats: int
    unit: str


def summarize(benchmark: str, case: str, metric: str, values: Sequence[float], unit: str) -> Row:
    """Median, min and max over the finite values; ``repeats`` counts those (a target never
    reached is NaN: a row with no finite value reads NaN, repeats 0)."""
    finite = [float(v) for v in values if math.isfinite(v)]
    if not finite:
        return Row(benchmark, case, metric, math.nan, math.nan, math.nan, 0, unit)
    return Row(
        benchmark, case, metric, statistics.median(finite), min(finite), max(finite),
        len(finite), unit,
    )  # fmt: skip


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Repeat-by-repeat ratios of two series measured side by side (NaN over a zero)."""
    return [a / b if b else math.nan for a, b in zip(numerators, denominators, strict=True)]


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternating(names: Sequence[str], repeats: int) -> Iterator[tuple[int, str]]:
    """(repeat, name) pairs, the order reversed every other repeat (A B, B A, ...): run-level
    interleaving, so that a drift of the machine's speed cancels out of the comparison."""
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            yield repeat, name


def alternate(steps: Mapping[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Seconds per arm over ``rounds`` calls each, alternating arms call by call (A B, B A, ...)
    so that every arm runs under the same machine load to within a fraction of a second."""
    total = dict.fromkeys(steps, 0.0)
    for _, name in alternating(list(steps), rounds):
        total[name] += timed(steps[name])
    return total


def blocks(
    steps: Mapping[str, Callable[[], object]], rounds: int, repeats: int
) -> dict[str, list[float]]:
    """``repeats`` blocks of :func:`alternate`: per arm, its seconds in each block."""
    out: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, seconds in alternate(steps, rounds).items():
            out[name].append(seconds)
    return out

"""What every benchmark shares: result rows, summaries of repeats, interleaved timing.

The machine is shared and its speed drifts, so no figure stands alone: each is measured in the
same process and run as its baseline, the two interleaved (A B, B A, A B, ...), and reported as
the median of the per-repeat values with their spread (min-max). Ratios are taken repeat by
repeat (ours_i / baseline_i, measured back to back) before the median, so a slow patch of the
machine moves numerator and denominator together.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass


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
    values = [float(v) for v in values]
    if not values:
        raise ValueError(f"{benchmark}/{case}/{metric}: no values to summarize")
    return Row(
        benchmark, case, metric, statistics.median(values), min(values), max(values),
        len(values), unit,
    )  # fmt: skip


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Repeat-by-repeat ratios of two series measured side by side."""
    return [a / b for a, b in zip(numerators, denominators, strict=True)]


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleave(runs: Mapping[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Call every run ``repeats`` times, alternating the order (A B, B A, ...) to cancel drift.

    Each run returns its own measurement (seconds, or a rate); the lists come back per name.
    """
    names = list(runs)
    out: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            out[name].append(runs[name]())
    return out

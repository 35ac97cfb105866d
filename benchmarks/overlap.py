"""Benchmark 3 (speed): TBPTT with k1 < k2, ours against two hand-written implementations.

- ours: ``Trainer`` with ``FixedSchedule(k1, k2)`` (recomputes the overlap in fused chunks).
- recompute: :func:`benchmarks.baselines.recompute_loop`, the same algorithm by hand.
- per-step: :class:`benchmarks.baselines.PerStepTBPTT` (albanD's forum version). It cannot
  step an optimizer between chained backward passes (the retained graphs saved the weights the
  step modifies in place: "modified by an inplace operation"), so it is timed computing and
  clipping gradients without an optimizer step, and the failure is recorded as a row.

Throughput counts new characters (k1 x batch per update), the rate at which the stream moves.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.baselines import PerStepTBPTT, new_model, per_step_raises_inplace, recompute_loop
from benchmarks.common import Row, interleave, ratios, summarize, timed
from benchmarks.workloads import BATCH, ModelSpec, our_trainer, rows_needed, synthetic_corpus


@dataclass(frozen=True)
class Settings:
    windows: tuple[tuple[int, int, int], ...]  # (k1, k2, updates per run)
    hidden: int = 128
    repeats: int = 7


FULL = Settings(windows=((10, 40, 20), (25, 50, 12), (5, 50, 24)))
SMOKE = Settings(windows=((2, 6, 3),), hidden=16, repeats=1)
ARMS = {
    "ours": "ours (Trainer)",
    "recompute": "hand recompute (fused LSTM)",
    "per_step": "per-step (albanD), no optimizer step",
}


def run(smoke: bool) -> list[Row]:
    settings = SMOKE if smoke else FULL
    spec = ModelSpec(settings.hidden)
    rows: list[Row] = []
    for k1, k2, updates in settings.windows:
        rows += _case(spec, k1, k2, updates, settings.repeats)
    return rows


def _runs(
    spec: ModelSpec, k1: int, k2: int, updates: int, workdir: Path
) -> dict[str, Callable[[], float]]:
    corpus = synthetic_corpus(rows_needed(updates, k1, k2), window=k2)
    stream = corpus.train

    def ours() -> float:
        return timed(our_trainer(corpus, spec, k1, k2, updates, workdir).fit)

    def recompute() -> float:
        model, optimizer = new_model(spec)
        return timed(lambda: recompute_loop(model, optimizer, stream, k1, k2, updates))

    def per_step() -> float:
        model, _ = new_model(spec)
        return timed(lambda: PerStepTBPTT(model, k1, k2).train(stream, updates))

    return {"ours": ours, "recompute": recompute, "per_step": per_step}


def _case(spec: ModelSpec, k1: int, k2: int, updates: int, repeats: int) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="bench-overlap-") as tmp:
        runs = _runs(spec, k1, k2, updates, Path(tmp))
        interleave(runs, 1)  # warm-up
        seconds = interleave(runs, repeats)
    chars = updates * k1 * BATCH
    rate = {arm: [chars / s for s in seconds[arm]] for arm in ARMS}
    case = f"{spec.name} k1={k1} k2={k2} B={BATCH}"
    stream = synthetic_corpus(rows_needed(2, k1, k2), window=k2).train
    raised = per_step_raises_inplace(spec, stream, k1, k2)
    rows = [summarize("tbptt k1<k2", case, ARMS[arm], rate[arm], "new chars/s") for arm in ARMS]
    rows += [
        summarize("tbptt k1<k2", case, f"ours / {ARMS[arm]}", ratios(rate["ours"], rate[arm]),
                  "ratio")
        for arm in ("recompute", "per_step")
    ]  # fmt: skip
    rows.append(
        summarize("tbptt k1<k2", case, "per-step raises 'modified by an inplace operation' "
                  "with an Adam step", [float(raised)], "1 = yes")
    )  # fmt: skip
    return rows

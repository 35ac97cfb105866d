"""Benchmark 3 (speed): TBPTT with k1 < k2, ours against two hand-written implementations.

- ours: ``Trainer`` with ``FixedSchedule(k1, k2)`` (recomputes the overlap in fused chunks).
- recompute: :func:`benchmarks.baselines.recompute_updates`, the same algorithm by hand on a
  fused 2-layer LSTM; also run on our ``CharRNN`` to separate model layout from trainer.
- per-step: :class:`benchmarks.baselines.PerStepTBPTT` (albanD's forum version). It cannot
  step an optimizer between chained backward passes (the retained graphs saved the weights the
  step modifies in place: "modified by an inplace operation"; SGD with lr=0 fails the same way,
  since its update is still an in-place op), so it is timed computing and clipping gradients
  without an optimizer step, and the failure is recorded as a row.

Arms alternate update by update, as in ``benchmarks.throughput``. Throughput counts new
characters (k1 x batch per update): the rate at which the stream moves.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from benchmarks.baselines import (
    PerStepTBPTT,
    new_model,
    per_step_raises_inplace,
    recompute_updates,
)
from benchmarks.common import Row, blocks, ratios, summarize
from benchmarks.workloads import BATCH, LR, ModelSpec, our_trainer, rows_needed, synthetic_corpus


@dataclass(frozen=True)
class Settings:
    windows: tuple[tuple[int, int], ...]  # (k1, k2)
    hidden: int = 128
    rounds: int = 4  # updates per arm per block
    repeats: int = 9  # blocks


FULL = Settings(windows=((10, 40), (25, 50), (5, 50)))
SMOKE = Settings(windows=((2, 6),), hidden=16, rounds=2, repeats=1)
ARMS = {
    "ours": "ours (Trainer)",
    "recompute": "hand recompute (fused 2-layer LSTM)",
    "our_model": "hand recompute on our CharRNN",
    "per_step": "per-step (albanD), no optimizer step",
}
BENCH = "tbptt k1<k2"


def run(smoke: bool) -> list[Row]:
    settings = SMOKE if smoke else FULL
    spec = ModelSpec(settings.hidden)
    rows: list[Row] = []
    for k1, k2 in settings.windows:
        rows += _case(spec, k1, k2, settings.rounds, settings.repeats)
    return rows


def _steps(
    spec: ModelSpec, k1: int, k2: int, updates: int, workdir: Path
) -> dict[str, Callable[[], None]]:
    corpus = synthetic_corpus(rows_needed(updates, k1, k2), window=k2)
    stream = corpus.train
    trainer = our_trainer(corpus, spec, k1, k2, updates, workdir)
    model, optimizer = new_model(spec)
    ours_model = our_trainer(corpus, spec, k1, k2, updates, workdir).model
    ours_optimizer = torch.optim.Adam(ours_model.parameters(), lr=LR)
    per_step = PerStepTBPTT(new_model(spec)[0], k1, k2)
    return {
        "ours": trainer.update,
        "recompute": partial(next, recompute_updates(model, optimizer, stream, k1, k2)),
        "our_model": partial(next, recompute_updates(ours_model, ours_optimizer, stream, k1, k2)),
        "per_step": partial(next, per_step.updates(stream)),
    }


def _case(spec: ModelSpec, k1: int, k2: int, rounds: int, repeats: int) -> list[Row]:
    warmup = -(-k2 // k1)  # until the windows overlap fully
    with tempfile.TemporaryDirectory(prefix="bench-overlap-") as tmp:
        steps = _steps(spec, k1, k2, rounds * repeats + warmup, Path(tmp))
        blocks(steps, warmup, 1)
        seconds = blocks(steps, rounds, repeats)
    chars = rounds * k1 * BATCH
    rate = {arm: [chars / s for s in seconds[arm]] for arm in ARMS}
    case = f"{spec.name} k1={k1} k2={k2}"
    rows = [summarize(BENCH, case, ARMS[arm], rate[arm], "new chars/s") for arm in ARMS]
    rows += [
        summarize(BENCH, case, f"ours / {ARMS[arm]}", ratios(rate["ours"], rate[arm]), "ratio")
        for arm in ("recompute", "our_model", "per_step")
    ]
    layout = ratios(rate["our_model"], rate["recompute"])
    rows.append(summarize(BENCH, case, f"{ARMS['our_model']} / {ARMS['recompute']}", layout,
                          "ratio"))  # fmt: skip
    return [*rows, *_inplace_rows(spec, k1, k2, case)]


def _inplace_rows(spec: ModelSpec, k1: int, k2: int, case: str) -> list[Row]:
    stream = synthetic_corpus(rows_needed(2, k1, k2), window=k2).train
    rows = []
    for optimizer, name in (("adam", "an Adam step"), ("sgd0", "an SGD lr=0 step")):
        raised = per_step_raises_inplace(spec, stream, k1, k2, optimizer)
        metric = f"per-step raises 'modified by an inplace operation' with {name}"
        rows.append(summarize(BENCH, case, metric, [float(raised)], "1 = yes"))
    return rows

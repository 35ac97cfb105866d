"""Benchmarks 1 and 2: trainer throughput at k1 = k2, and its distance from the physical limit.

1. ``throughput``: characters per second of our ``Trainer`` (built from objects, grad flow off,
   no checkpoints, metrics to a temp dir) against :func:`benchmarks.baselines.fused_loop`, the
   minimal hand-written loop over one fused 2-layer ``nn.LSTM``, on the same data, batch,
   window and number of updates. A third arm runs the same hand loop on our ``CharRNN`` (one
   fused single-layer module per layer), which splits any gap into "the model's layout" and
   "the trainer around it".
2. ``limit``: the same runs as a fraction of R / (6 N_eff) characters per second, where R is
   the single-thread float32 ``torch.mm`` rate over the model's own GEMM shapes, measured
   between the training runs, and 6 N_eff the FLOPs per character of forward plus backward.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.baselines import fused_loop, new_model
from benchmarks.common import Row, interleave, ratios, summarize, timed
from benchmarks.workloads import (
    BATCH,
    LR,
    ModelSpec,
    gemm_shapes,
    matmul_rate,
    our_trainer,
    rows_needed,
    synthetic_corpus,
)


@dataclass(frozen=True)
class Settings:
    hidden: tuple[int, ...]  # one case per hidden size, 2 layers each
    updates: tuple[int, ...]  # updates per run, per case (about 1-2 s per run in full mode)
    window: int = 64  # k1 = k2
    repeats: int = 7


FULL = Settings(hidden=(128, 256, 512), updates=(32, 10, 3))
SMOKE = Settings(hidden=(16,), updates=(3,), window=8, repeats=1)
ARMS = {  # arm -> metric name
    "ours": "ours (Trainer)",
    "baseline": "baseline (hand loop, fused 2-layer LSTM)",
    "our_model": "hand loop on our CharRNN",
}


def run(smoke: bool) -> list[Row]:
    settings = SMOKE if smoke else FULL
    rows: list[Row] = []
    for hidden, updates in zip(settings.hidden, settings.updates, strict=True):
        rows += _case(ModelSpec(hidden), settings.window, updates, settings.repeats)
    return rows


def _runs(spec: ModelSpec, k: int, updates: int, workdir: Path) -> dict[str, Callable[[], float]]:
    corpus = synthetic_corpus(rows_needed(updates, k, k), window=k)

    def ours() -> float:
        return timed(our_trainer(corpus, spec, k, k, updates, workdir / "ours").fit)

    def baseline() -> float:
        model, optimizer = new_model(spec)
        state = model.init_state(BATCH)
        return timed(lambda: fused_loop(model, optimizer, corpus.train, k, updates, state))

    def our_model() -> float:
        model = our_trainer(corpus, spec, k, k, updates, workdir / "model").model
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)
        state = model.init_hidden(BATCH)
        return timed(lambda: fused_loop(model, optimizer, corpus.train, k, updates, state))

    def gemm() -> float:
        return matmul_rate(gemm_shapes(spec, BATCH, k))

    return {"ours": ours, "baseline": baseline, "our_model": our_model, "gemm": gemm}


def _case(spec: ModelSpec, k: int, updates: int, repeats: int) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        runs = _runs(spec, k, updates, Path(tmp))
        interleave(runs, 1)  # warm-up: allocator, oneDNN primitives, page faults
        measured = interleave(runs, repeats)
    chars = updates * k * BATCH
    rate = {arm: [chars / s for s in measured[arm]] for arm in ARMS}
    limit = [r / (6 * spec.n_eff) for r in measured["gemm"]]  # chars/s if every FLOP ran at R
    case = f"{spec.name} k1=k2={k} B={BATCH}"
    rows = [summarize("throughput", case, ARMS[arm], rate[arm], "chars/s") for arm in ARMS]
    rows += [
        summarize("throughput", case, "ours / baseline", ratios(rate["ours"], rate["baseline"]),
                  "ratio"),
        summarize("throughput", case, "ours / hand loop on our CharRNN",
                  ratios(rate["ours"], rate["our_model"]), "ratio"),
        summarize("limit", case, "matmul rate R", [r / 1e9 for r in measured["gemm"]], "GFLOP/s"),
        summarize("limit", case, "N_eff", [spec.n_eff], "weights"),
    ]  # fmt: skip
    rows += [
        summarize("limit", case, f"{ARMS[arm]} / (R / 6 N_eff)", ratios(rate[arm], limit),
                  "fraction")
        for arm in ("ours", "baseline")
    ]  # fmt: skip
    return rows

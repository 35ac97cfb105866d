"""Benchmarks 1 and 2: trainer throughput at k1 = k2, and its distance from the physical limit.

1. ``throughput``: characters per second of our ``Trainer`` (built from objects, grad flow off,
   no checkpoints, metrics to a temp dir) against :func:`benchmarks.baselines.fused_updates`,
   the minimal hand-written loop over one fused 2-layer ``nn.LSTM``, on the same data, batch
   and window. A third arm runs the same hand loop on our ``CharRNN`` (one fused single-layer
   module per layer), which splits any gap into "the model's layout" and "the trainer".
2. ``limit``: the same runs as a fraction of R / (6 N_eff) characters per second, where 6 N_eff
   is the FLOPs per character of forward plus backward and R the single-thread float32 matmul
   rate over the model's own GEMM shapes: the faster of ``torch.mm`` (MKL) and oneDNN's linear
   (the library of the fused CPU LSTM kernels), both timed in every block.

The arms alternate update by update (ours, baseline, CharRNN loop, GEMM pass, then the reverse
order), so each block of ``rounds`` updates compares them under the same machine load; each
block is one repeat. Our ``Trainer.update`` is what ``fit()`` loops over; ``fit()`` adds one
final evaluation and a Parquet flush per run (tens of ms, once per run).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from benchmarks.baselines import fused_updates, new_model
from benchmarks.common import Row, blocks, ratios, summarize
from benchmarks.workloads import (
    BATCH,
    LR,
    GemmPass,
    ModelSpec,
    gemm_shapes,
    our_trainer,
    rows_needed,
    synthetic_corpus,
)


@dataclass(frozen=True)
class Settings:
    hidden: tuple[int, ...]  # one case per hidden size, 2 layers each
    rounds: tuple[int, ...]  # updates per arm per block, per case (a block: 1.5-5 s)
    window: int = 64  # k1 = k2
    repeats: int = 15  # blocks


FULL = Settings(hidden=(128, 256, 512), rounds=(6, 3, 2))
SMOKE = Settings(hidden=(16,), rounds=(2,), window=8, repeats=1)
GEMM_BACKENDS = ("mm", "onednn") if torch.backends.mkldnn.is_available() else ("mm",)
ARMS = {  # arm -> metric name
    "ours": "ours (Trainer)",
    "baseline": "baseline (hand loop, fused 2-layer LSTM)",
    "our_model": "hand loop on our CharRNN",
}


def run(smoke: bool) -> list[Row]:
    settings = SMOKE if smoke else FULL
    rows: list[Row] = []
    for hidden, rounds in zip(settings.hidden, settings.rounds, strict=True):
        rows += _case(ModelSpec(hidden), settings.window, rounds, settings.repeats)
    return rows


def _steps(spec: ModelSpec, k: int, updates: int, workdir: Path) -> dict[str, Callable[[], None]]:
    corpus = synthetic_corpus(rows_needed(updates, k, k), window=k)
    trainer = our_trainer(corpus, spec, k, k, updates, workdir)
    model, optimizer = new_model(spec)
    ours_model = our_trainer(corpus, spec, k, k, updates, workdir).model
    ours_optimizer = torch.optim.Adam(ours_model.parameters(), lr=LR)
    return {
        "ours": trainer.update,
        "baseline": partial(next, fused_updates(model, optimizer, corpus.train, k)),
        "our_model": partial(next, fused_updates(ours_model, ours_optimizer, corpus.train, k)),
        **{f"gemm_{b}": GemmPass(gemm_shapes(spec, BATCH, k), b) for b in GEMM_BACKENDS},
    }


def _case(spec: ModelSpec, k: int, rounds: int, repeats: int) -> list[Row]:
    warmup = 2
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        steps = _steps(spec, k, rounds * repeats + warmup, Path(tmp))
        blocks(steps, warmup, 1)  # allocator, oneDNN primitives, Adam state, page faults
        seconds = blocks(steps, rounds, repeats)
    chars = rounds * k * BATCH
    rate = {arm: [chars / s for s in seconds[arm]] for arm in ARMS}
    return _rows(
        spec, f"{spec.name} k1=k2={k} B={BATCH}", rate, _matmul_rates(steps, seconds, rounds)
    )


def _rows(
    spec: ModelSpec, case: str, rate: dict[str, list[float]], gemm: dict[str, list[float]]
) -> list[Row]:
    best = [max(values) for values in zip(*gemm.values(), strict=True)]  # R: the faster library
    limit = [x / (6 * spec.n_eff) for x in best]  # chars/s if every FLOP ran at R
    rows = [summarize("throughput", case, ARMS[arm], rate[arm], "chars/s") for arm in ARMS]
    for a, b in (("ours", "baseline"), ("ours", "our_model"), ("our_model", "baseline")):
        metric = f"{ARMS[a].split(' (')[0]} / {ARMS[b].split(' (')[0]}"
        rows.append(summarize("throughput", case, metric, ratios(rate[a], rate[b]), "ratio"))
    rows.append(summarize("limit", case, "N_eff", [spec.n_eff], "weights"))
    rows += [
        summarize("limit", case, f"matmul rate ({b})", [x / 1e9 for x in v], "GFLOP/s")
        for b, v in gemm.items()
    ]
    return rows + [
        summarize("limit", case, f"{ARMS[arm]} / (R / 6 N_eff)", ratios(rate[arm], limit),
                  "fraction")
        for arm in ("ours", "baseline")
    ]  # fmt: skip


def _matmul_rates(
    steps: dict[str, Callable[[], None]], seconds: dict[str, list[float]], rounds: int
) -> dict[str, list[float]]:
    """FLOP/s per GEMM backend and block."""
    rates = {}
    for backend in GEMM_BACKENDS:
        gemm = steps[f"gemm_{backend}"]
        assert isinstance(gemm, GemmPass)
        rates[backend] = [gemm.flops * rounds / s for s in seconds[f"gemm_{backend}"]]
    return rates

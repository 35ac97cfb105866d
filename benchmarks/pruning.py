"""Benchmark: does pruning pay at the default sweep's scale?

`make sweep`'s sweep (``sweep=default``: its budget, space and plan) with its pruner (ASHA) and
with ``hydra/sweeper/pruner=none``, on ``seeds`` seeds each (``seed`` and
``hydra.sweeper.sampler.seed``: the data order, the initial weights and the search), same
budget, same machine, interleaved (pruned seed 0, unpruned seed 0, pruned seed 1, ...) so that
a drift of the machine's speed hits both arms alike. Per arm: the final model's test loss; the
paired difference pruned - unpruned with a bootstrap 95% interval over the seeds; and the time
to target: when each arm's sweep first evaluated a model at or below the unpruned arm's final
validation loss (the same 32k-character validation prefix every evaluation reads), as a share
of the unpruned sweep's wall time.

Targets (issue 22), on the default sweep at 9 minutes on 2 cores: pruned better by at least
0.02 nats/char with the interval clear of 0, or the target reached in at most 1/3 of the
unpruned wall time.

``python -m benchmarks.run --only pruning`` (about 6 x the budget).
"""

from __future__ import annotations

import math
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import pandas as pd

from analysis.answers import paired_difference
from benchmarks import payoff
from benchmarks.common import Row, summarize
from benchmarks.launch import study_trials

BENCH = "pruning"
ARMS = {"pruned": (), "unpruned": ("hydra/sweeper/pruner=none",)}


@dataclass(frozen=True)
class Settings:
    sweep: payoff.Settings = payoff.FULL
    seeds: tuple[int, ...] = (0, 1, 2)
    study: str = "default"


FULL = Settings()
# 80 s with 40% to search leaves the final run its 10% after up to 32 s of start-up.
SMOKE = Settings(sweep=replace(payoff.SMOKE, budget="80s"), seeds=(0,))


@dataclass(frozen=True)
class Outcome:
    """One sweep: its wall time, its final model's losses, and its evaluations on one clock
    (seconds since the sweep was launched, with the validation loss each found)."""

    wall: float
    test_loss: float
    final_val: float  # the final run's best evaluation (the prefix every evaluation reads)
    curve: pd.DataFrame  # seconds, val_loss

    def time_to(self, target: float) -> float:
        reached = self.curve[self.curve["val_loss"] <= target]
        return float(reached["seconds"].min()) if len(reached) else math.nan


def evaluations(sweep_dir: Path, study: str, launched: float) -> pd.DataFrame:
    """Every evaluation any trial made, at the second of the sweep it was made. A continuation's
    table repeats its parent's rows: only its own (after its start) count, timed from its
    start (``elapsed_s`` counts the whole lineage: its parent's seconds are taken off)."""
    rows = []
    for trial in study_trials(sweep_dir, study):
        path = sweep_dir / str(trial.number) / "evals.parquet"
        if trial.datetime_start is None or not path.exists():
            continue
        evals = pd.read_parquet(path)
        attrs = trial.user_attrs
        own = evals[evals["flops"] > int(attrs.get("start_flops", 0))]
        start = _epoch(trial.datetime_start) - launched
        offset = float(attrs.get("start_seconds", 0.0))
        rows.append(pd.DataFrame({"seconds": start + own["elapsed_s"] - offset,
                                  "val_loss": own["val_loss"]}))  # fmt: skip
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["seconds"])


def _epoch(moment: datetime) -> float:
    return moment.timestamp()


def one_sweep(root: Path, s: Settings, arm: str, seed: int) -> Outcome:
    sweep_dir = root / f"{arm}-{seed}"
    extra = (*ARMS[arm], f"seed={seed}", f"hydra.sweeper.sampler.seed={seed}")
    run = payoff.launch_sweep(sweep_dir, s.sweep, *extra)
    best = run.best.get("final", {})
    curve = evaluations(sweep_dir, s.study, run.launch.started)
    final = sweep_dir / str(run.best.get("trial", -1)) / "evals.parquet"
    final_val = float(pd.read_parquet(final)["val_loss"].min()) if final.exists() else math.nan
    test_loss = float(best.get("test_loss", math.nan))
    return Outcome(wall=run.launch.wall, test_loss=test_loss, final_val=final_val, curve=curve)


def run(smoke: bool) -> list[Row]:
    """The sweeps' directories are removed at the end, unless ``BENCH_KEEP`` names a directory
    to keep them in (to look at what each arm ran)."""
    s = SMOKE if smoke else FULL
    keep = os.environ.get("BENCH_KEEP")
    with tempfile.TemporaryDirectory(prefix="bench-pruning-") as tmp:
        root = Path(keep) if keep else Path(tmp)
        if smoke:  # both arms at once: the figures mean nothing, the code runs
            with ThreadPoolExecutor(max_workers=2) as pool:
                futures = {arm: pool.submit(one_sweep, root, s, arm, 0) for arm in ARMS}
                results = {arm: [future.result()] for arm, future in futures.items()}
            return rows(s, results)
        results = {arm: [] for arm in ARMS}
        for seed in s.seeds:  # interleaved: a drift of the machine hits both arms
            for arm in ARMS:
                results[arm].append(one_sweep(root, s, arm, seed))
    return rows(s, results)


def rows(s: Settings, results: dict[str, list[Outcome]]) -> list[Row]:
    case = f"budget {s.sweep.budget}, 2 cores, seeds {','.join(map(str, s.seeds))}"
    pruned, unpruned = results["pruned"], results["unpruned"]
    out = []
    for arm, outcomes in results.items():
        out += [
            summarize(BENCH, case, f"{arm}: final test loss", [o.test_loss for o in outcomes],
                      "nats/char"),  # fmt: skip
            summarize(BENCH, case, f"{arm}: final val loss (prefix)",
                      [o.final_val for o in outcomes], "nats/char"),  # fmt: skip
            summarize(BENCH, case, f"{arm}: wall", [o.wall for o in outcomes], "s"),
        ]
    diff = paired_difference([u.test_loss for u in unpruned], [p.test_loss for p in pruned])
    out += [
        summarize(BENCH, case, "pruned - unpruned: test loss, mean over seeds", [diff.mean],
                  "nats/char"),  # fmt: skip
        summarize(BENCH, case, "pruned - unpruned: bootstrap 95% low", [diff.low], "nats/char"),
        summarize(BENCH, case, "pruned - unpruned: bootstrap 95% high", [diff.high], "nats/char"),
    ]
    for arm, outcomes in results.items():
        shares = [o.time_to(u.final_val) / u.wall for o, u in zip(outcomes, unpruned, strict=True)]
        out.append(summarize(BENCH, case, f"{arm}: time to the unpruned final val / unpruned wall",
                             shares, "share"))  # fmt: skip
    return out

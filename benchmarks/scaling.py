"""Benchmark 5: throughput of a fixed set of small training jobs, by workers and threads.

The same ``trials`` jobs (a 1x128 LSTM on Shakespeare, fixed parameters, one per seed: the
grid sampler over ``seed``, no pruning) run through our sweeper as 1 worker x 1 thread (the
baseline), 2 workers x 1 thread, and 1 worker x 2 threads. Trials per minute over the whole
launch (startup included) and in steady state (from the first job's entry, once workers
have started, to the last completion).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import Row, alternating, ratios, summarize
from benchmarks.launch import complete, job_started, launch, study_trials

BENCH = "scaling"
LAYOUTS = {"1 worker x 1 thread": (1, 1), "2 workers x 1 thread": (2, 1),
           "1 worker x 2 threads": (1, 2)}  # fmt: skip
BASE = "1 worker x 1 thread"


@dataclass(frozen=True)
class Settings:
    trials: int = 8
    job: tuple[str, ...] = (
        "model.hidden_size=128", "model.layers=1", "bptt.length=64", "data.batch_size=32",
        "trainer.max_tokens=120000", "trainer.eval_every_tokens=60000",
        "trainer.eval_max_tokens=16384",
    )  # fmt: skip
    layouts: tuple[str, ...] = tuple(LAYOUTS)
    repeats: int = 3


FULL = Settings()
SMOKE = Settings(
    trials=2, repeats=1, layouts=(BASE, "2 workers x 1 thread"),
    job=("data=count", "data.batch_size=4", "data.eval_batch_size=2", "model.hidden_size=8",
         "model.embed_size=8", "model.layers=1", "bptt.length=8", "trainer.max_tokens=256",
         "trainer.eval_every_tokens=256", "trainer.eval_max_tokens=64"),
)  # fmt: skip


def sweep(sweep_dir: Path, s: Settings, workers: int, threads: int) -> dict[str, float]:
    seeds = ",".join(str(i) for i in range(s.trials))
    run = launch([
        "-m", "tbptt.train", "-m", "hydra/sweeper=optuna", "hydra/sweeper/pruner=none",
        "hydra/sweeper/sampler=grid", f"seed=choice({seeds})", f"hydra.sweep.dir={sweep_dir}",
        f"hydra.sweeper.n_trials={s.trials}", f"hydra.sweeper.n_jobs={workers}",
        f"hydra.sweeper.threads_per_worker={threads}", "trainer.device=cpu", *s.job,
    ])  # fmt: skip
    trials = study_trials(sweep_dir)
    first = min(job_started(Path(t.user_attrs["job_dir"])) for t in trials)
    last = max(complete(t) for t in trials)
    return {"total": 60 * len(trials) / run.wall, "steady": 60 * len(trials) / (last - first)}


def run(smoke: bool) -> list[Row]:
    s = SMOKE if smoke else FULL
    results: dict[str, list[dict[str, float]]] = {name: [] for name in s.layouts}
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        for repeat, name in alternating(s.layouts, s.repeats):
            sweep_dir = Path(tmp) / f"{repeat}-{'-'.join(map(str, LAYOUTS[name]))}"
            results[name].append(sweep(sweep_dir, s, *LAYOUTS[name]))
    return _rows(results, f"{s.trials} jobs, fixed params")


def _rows(results: dict[str, list[dict[str, float]]], case: str) -> list[Row]:
    rows = []
    for kind in ("total", "steady"):
        for name, runs in results.items():
            values = [r[kind] for r in runs]
            rows.append(summarize(BENCH, case, f"{name}, {kind}", values, "trials/min"))
            if name != BASE:
                base = [r[kind] for r in results[BASE]]
                metric = f"{name} / {BASE}, {kind}"
                rows.append(summarize(BENCH, case, metric, ratios(values, base), "ratio"))
    return rows

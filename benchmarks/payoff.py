"""Benchmark 7: does `make sweep` pay for itself?

Side by side on the same machine, one after the other, each scored on the same held-out test
split (the last 5% of the corpus):

- sweep: `make sweep`'s command (``sweep=default``: its budget, search space and plan), its
  final model's test loss (``best.yaml``);
- the same sweep without pruning (``hydra/sweeper/pruner=none``), same budget;
- the user's alternative: plain char-rnn loops (``benchmarks/plain.py``), one per core, given
  the sweep's measured wall time, each keeping its best-validation weights; the better counts.

Target (the issue "Sweeps that pay for themselves"): the sweep's test loss at least 0.05
nats/char below the best plain run's, and below the unpruned sweep's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

from benchmarks.common import ROOT, Row, summarize
from benchmarks.launch import Launch, launch
from tbptt.data import count_text

BENCH = "payoff"


@dataclass(frozen=True)
class Settings:
    budget: str = "9m"
    plain_hidden: tuple[int, ...] = (128, 256)
    corpus: Path | None = ROOT / "data" / "shakespeare.txt"  # None: a tiny generated text
    eval_every_s: float = 60.0
    sweep_args: tuple[str, ...] = ()  # extra overrides (the smoke run's tiny sizes)


FULL = Settings()
# The smoke runs its three arms at once on 2 cores: a sweep's start-up (imports, config
# checks, workers) then takes 15-40 s, and the search's share begins after it: 100 s with 40 s
# to search and 10 s for candidates leaves the final run its 10 s after up to 40 s of start-up.
SMOKE = Settings(
    budget="100s", plain_hidden=(8, 16), corpus=None, eval_every_s=5.0,
    sweep_args=("data=count", "data.batch_size=4", "data.eval_batch_size=2",
                "model.hidden_size=16", "model.layers=1", "model.embed_size=8",
                "trainer.eval_max_tokens=256", "trainer.divergence_factor=null",
                "hydra.sweeper.plan.search=0.4", "hydra.sweeper.n_jobs=1"),
)  # fmt: skip


@dataclass(frozen=True)
class SweepRun:
    launch: Launch
    best: dict  # its best.yaml


def launch_sweep(sweep_dir: Path, s: Settings, *extra: str) -> SweepRun:
    """Run the default sweep with ``extra`` overrides."""
    run = launch(
        ["-m", "tbptt.train", "-m", "sweep=default", f"hydra.sweep.dir={sweep_dir}",
         f"hydra.sweeper.budget={s.budget}", *s.sweep_args, *extra],
        timeout=3600,
    )  # fmt: skip
    return SweepRun(run, yaml.safe_load((sweep_dir / "best.yaml").read_text()))


def sweep(sweep_dir: Path, s: Settings, *extra: str) -> tuple[float, dict]:
    """Run the default sweep; its wall seconds and best.yaml."""
    run = launch_sweep(sweep_dir, s, *extra)
    return run.launch.wall, run.best


def plain(corpus: Path, s: Settings, seconds: float) -> list[dict]:
    """One plain loop per core, side by side, for ``seconds`` each."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks.plain", "--corpus", str(corpus), "--hidden",
             str(hidden), "--seconds", str(seconds), "--eval-every", str(s.eval_every_s)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        for hidden in s.plain_hidden
    ]
    outputs = [proc.communicate(timeout=seconds + 600)[0] for proc in procs]
    for proc in procs:
        if proc.returncode:
            raise RuntimeError(f"benchmarks.plain exited {proc.returncode}")
    return [json.loads(out.strip().splitlines()[-1]) for out in outputs]


def run(smoke: bool) -> list[Row]:
    s = SMOKE if smoke else FULL
    with tempfile.TemporaryDirectory(prefix="bench-payoff-") as tmp:
        root = Path(tmp)
        if smoke:  # the three arms at once: figures mean nothing, the code runs
            corpus = _tiny_corpus(root / "count.txt")
            with ThreadPoolExecutor(max_workers=3) as pool:
                ours = pool.submit(sweep, root / "sweep", s)
                unpruned = pool.submit(sweep, root / "unpruned", s, "hydra/sweeper/pruner=none")
                plains = pool.submit(plain, corpus, s, 10.0)
                (wall, best), (unpruned_wall, unpruned_best) = ours.result(), unpruned.result()
                return _rows(s, wall, best, unpruned_wall, unpruned_best, plains.result())
        assert s.corpus is not None
        wall, best = sweep(root / "sweep", s)
        unpruned_wall, unpruned_best = sweep(root / "unpruned", s, "hydra/sweeper/pruner=none")
        plains_done = plain(s.corpus, s, wall)
    return _rows(s, wall, best, unpruned_wall, unpruned_best, plains_done)


def _tiny_corpus(path: Path) -> Path:
    path.write_text(count_text(20_000))
    return path


def _rows(
    s: Settings, wall: float, best: dict, unpruned_wall: float, unpruned: dict, plains: list
) -> list[Row]:
    case = f"budget {s.budget}, 2 cores"
    final, unpruned_final = best.get("final", {}), unpruned.get("final", {})
    test = float(final.get("test_loss", float("nan")))
    best_plain = min(p["test_loss"] for p in plains)
    rows = [
        summarize(BENCH, case, "sweep: wall", [wall], "s"),
        summarize(BENCH, case, "sweep: final test loss", [test], "nats/char"),
        summarize(BENCH, case, "sweep: final val loss", [final.get("val_loss", float("nan"))],
                  "nats/char"),  # fmt: skip
        summarize(BENCH, case, "no pruning: wall", [unpruned_wall], "s"),
        summarize(BENCH, case, "no pruning: final test loss",
                  [unpruned_final.get("test_loss", float("nan"))], "nats/char"),  # fmt: skip
    ]
    for p in plains:
        name = f"plain 1x{p['hidden']} ({p['seconds']:.0f} s, 1 core)"
        rows.append(summarize(BENCH, case, f"{name}: test loss", [p["test_loss"]], "nats/char"))
        rows.append(summarize(BENCH, case, f"{name}: chars trained", [p["chars"]], "chars"))
    rows += [
        summarize(BENCH, case, "sweep - best plain: test loss", [test - best_plain],
                  "nats/char"),  # fmt: skip
        summarize(BENCH, case, "sweep - no pruning: test loss",
                  [test - float(unpruned_final.get("test_loss", float("nan")))], "nats/char"),
    ]  # fmt: skip
    return rows

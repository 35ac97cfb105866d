"""Benchmark 4: orchestration overhead per trial, for a trivial objective reported 20 times.

- ours: our sweeper running the toy Hydra app (``tests/sweeps/toy_app.py``, ``sleep=0``,
  ``steps=20``: 20 reports per trial, no pruning), journal storage, ``n_jobs`` workers.
- raw optuna: ``study.optimize`` in one process on a journal file, the same TPE sampler
  settings, an objective that makes the same 20 ``report()`` + ``should_prune()`` calls.
- spawn: one process per trial (the toy app as a single Hydra run), what a launcher that
  starts a process per job pays; it makes no Optuna calls, so it is a lower bound.
- agents (submitit_local, slurm, ray): our sweeper with ``hydra/launcher=...``: ``n_jobs``
  agents launched through the launcher pull the trials (sweeps/agent.py) and ship each job
  home through the storage. Slurm where ``sbatch`` answers (``.ci/slurm.sh`` starts a one-node
  cluster), Ray where it imports (a local Ray, started by the launcher).

``first_steps``: a training trial's start-up, from ``ask`` to its first training step (data
included), ours (a worker's first trial, and the warm ones after it) against a process per
trial.

Per launch: wall per trial, total (the launch's wall / trials) and steady (first to last
completion / (trials - 1): no process or worker start), startup (launch to the first job's
entry), start latency (a trial's start, i.e. ``ask``, to its job's entry: Hydra's
``.hydra/overrides.yaml`` for ours and spawn, where spawn counts from the process launch; the
objective's first line for raw optuna) and trial duration (start to completion); the last two
are medians over trials. Optuna's journal file storage fsyncs every write (each report, each
user attribute), so a busy disk slows both journal users: each run also records the latency
of a small fsync just before it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna

from benchmarks.common import Row, alternating, ratios, summarize, timed
from benchmarks.launch import TOY_APP, Launch, complete, job_started, launch, start, study_trials
from sweeps.config import NopPrunerConfig, TPESamplerConfig
from sweeps.storage import open_storage
from tbptt.contract import read_result

BENCH = "orchestration"
REPORTS = 20


@dataclass(frozen=True)
class Settings:
    trials: int = 30
    jobs: tuple[int, ...] = (1, 2)
    spawns: int = 4  # single runs per repeat (each is a whole process start)
    repeats: int = 3


FULL = Settings()
SMOKE = Settings(trials=3, jobs=(1,), spawns=1, repeats=1)
Metrics = dict[str, float]


def run(smoke: bool) -> list[Row]:
    s = SMOKE if smoke else FULL
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-orchestration-") as tmp:
        for jobs in s.jobs:
            rows += _compare(s, jobs, Path(tmp) / f"jobs{jobs}")
        rows += first_steps(s, Path(tmp) / "first-step", smoke)
    return rows


# A small model of the training app on the real corpus (the toy app trains nothing): each
# trial reads, encodes and batches it, unless its worker kept it from the trial before.
TRAIN_APP = ["-m", "tbptt.train"]
TRAIN = [
    "model.hidden_size=16", "model.embed_size=8", "model.layers=1",
    "bptt.length=16", "data.batch_size=8", "trainer.max_tokens=2048",
    "trainer.eval_every_tokens=1024", "trainer.eval_max_tokens=256", "trainer.device=cpu",
]  # fmt: skip


def first_steps(s: Settings, root: Path, smoke: bool) -> list[Row]:
    """Start-up of a training trial: from its start (``ask`` in our sweep; the process launch
    for a spawn per trial) to its first training step (``result.json``'s ``started_at``), on
    the Shakespeare corpus (``data=count`` in smoke mode). Ours: a worker's first trial (cold:
    imports, the corpus) and the rest (warm), medians over the repeats' sweeps."""
    data = ["data=count"] if smoke else []
    cold, warm, spawned = [], [], []
    for repeat, arm in alternating(["ours", "spawn per trial"], s.repeats):
        where = root / f"{arm.replace(' ', '-')}-{repeat}"
        if arm == "ours":
            latencies = sweep_first_steps(where, s.trials, data)
            cold.append(latencies[0])
            warm.append(statistics.median(latencies[1:]))
        else:
            spawned.append(spawn_first_step(where, data))
    case, metric = f"a training trial's start, {s.trials} trials, n_jobs=1", "start to first step"
    return [
        summarize(BENCH, case, f"ours, warm: {metric}", warm, "s"),
        summarize(BENCH, case, f"ours, a worker's first trial: {metric}", cold, "s"),
        summarize(BENCH, case, f"spawn per trial: {metric}", spawned, "s"),
        summarize(BENCH, case, f"{metric}: ours warm / spawn", ratios(warm, spawned), "ratio"),
    ]


def sweep_first_steps(sweep_dir: Path, trials: int, data: list[str]) -> list[float]:
    """Seconds from each trial's ``ask`` to its first step, in trial order."""
    launch([*TRAIN_APP, "-m", *TRAIN, *data, "hydra/sweeper=optuna", "hydra/sweeper/pruner=none",
            f"hydra.sweep.dir={sweep_dir}", "optim.lr=tag(log,interval(1e-3,1e-2))",
            f"hydra.sweeper.n_trials={trials}", "hydra.sweeper.n_jobs=1"])  # fmt: skip
    done = sorted(study_trials(sweep_dir), key=lambda t: t.number)
    return [first_step(Path(t.user_attrs["job_dir"])) - start(t) for t in done]


def spawn_first_step(run_dir: Path, data: list[str]) -> float:
    started = launch([*TRAIN_APP, *TRAIN, *data, f"hydra.run.dir={run_dir}"]).started
    return first_step(run_dir) - started


def first_step(job_dir: Path) -> float:
    result = read_result(job_dir)
    if result is None or result.started_at is None:
        raise RuntimeError(f"{job_dir}: no result.json with started_at")
    return result.started_at


def _compare(s: Settings, jobs: int, root: Path) -> list[Row]:
    arms: dict[str, Callable[[Path], Metrics]] = {
        "ours": lambda d: ours(d, s.trials, jobs),
        "raw optuna": lambda d: raw(d, s.trials, jobs),
    }
    if jobs == 1:
        arms["spawn per trial"] = lambda d: spawn(d, s.spawns)
    for engine, overrides in engines(smoke=s is SMOKE).items():
        arms[f"agents {engine}"] = lambda d, o=overrides: ours(d, s.trials, jobs, o)
    results: dict[str, list[Metrics]] = {name: [] for name in arms}
    for repeat, name in alternating(list(arms), s.repeats):
        fsync = fsync_latency(root)  # journal storage fsyncs every write: the disk's share
        results[name].append(arms[name](root / f"{name.replace(' ', '-')}-{repeat}") | fsync)
    return _rows(results, f"{s.trials} trials x {REPORTS} reports, n_jobs={jobs}")


def _rows(results: dict[str, list[Metrics]], case: str) -> list[Row]:
    rows = [
        summarize(BENCH, case, f"{name}: {metric}", [m[metric] for m in runs], "s")
        for name, runs in results.items()
        for metric in runs[0]
    ]
    for metric in ("wall per trial, total", "wall per trial, steady", "start latency"):
        ours_ = [m[metric] for m in results["ours"]]
        for other in [name for name in results if name != "ours"]:
            values = ratios(ours_, [m[metric] for m in results[other]])
            rows.append(summarize(BENCH, case, f"{metric}: ours / {other}", values, "ratio"))
    return rows


def engines(smoke: bool = False) -> dict[str, list[str]]:
    """The launchers whose agents can run here, with their overrides (smoke: the local one)."""
    found = {"submitit_local": ["hydra/launcher=submitit_local"]}
    if smoke:
        return found
    if shutil.which("sbatch") and subprocess.run(["sinfo"], capture_output=True).returncode == 0:
        found["slurm"] = ["hydra/launcher=submitit_slurm", "hydra.launcher.cpus_per_task=1",
                          "hydra.launcher.mem_gb=null"]  # fmt: skip
    if importlib.util.find_spec("ray") is not None:
        found["ray"] = ["hydra/launcher=ray",
                        "hydra.launcher.init={num_cpus:2,include_dashboard:false}"]  # fmt: skip
    return found


def ours(sweep_dir: Path, trials: int, jobs: int, extra: list[str] | None = None) -> Metrics:
    run = launch([
        str(TOY_APP), "-m", "hydra/sweeper=optuna", "hydra/sweeper/pruner=none",
        f"hydra.sweep.dir={sweep_dir}", "x=interval(-1,1)", f"steps={REPORTS}", "sleep=0",
        f"hydra.sweeper.n_trials={trials}", f"hydra.sweeper.n_jobs={jobs}", *(extra or []),
    ])  # fmt: skip
    done = study_trials(sweep_dir)
    entered = {t.number: job_started(Path(t.user_attrs["job_dir"])) for t in done}
    return _metrics(run, done, entered)


def raw(workdir: Path, trials: int, jobs: int) -> Metrics:
    workdir.mkdir(parents=True)
    out = workdir / "entered.json"
    run = launch(["-m", "benchmarks.orchestration", str(workdir), str(trials), str(jobs)])
    entered = {int(k): v for k, v in json.loads(out.read_text()).items()}
    return _metrics(run, study_trials(workdir, "raw"), entered)


def spawn(workdir: Path, n: int) -> Metrics:
    runs, entered = [], []
    for i in range(n):
        job_dir = workdir / str(i)
        runs.append(launch([
            str(TOY_APP), "hydra/sweeper=optuna", f"hydra.run.dir={job_dir}", "x=0.1",
            f"steps={REPORTS}", "sleep=0",
        ]))  # fmt: skip
        entered.append(job_started(job_dir) - runs[-1].started)
    wall = (runs[-1].ended - runs[0].started) / n
    latency = statistics.median(entered)
    return {
        "wall per trial, total": wall,
        "wall per trial, steady": wall,
        "start latency": latency,
    }


def fsync_latency(directory: Path, writes: int = 100) -> Metrics:
    """Median seconds of a small append + ``fsync`` in ``directory``, as a journal write does."""
    directory.mkdir(parents=True, exist_ok=True)
    seconds = []
    with (directory / "fsync.probe").open("ab") as handle:
        for _ in range(writes):
            handle.write(b"x" * 200)
            seconds.append(timed(lambda: (handle.flush(), os.fsync(handle.fileno()))))
    return {"fsync latency (just before)": statistics.median(seconds)}


def _metrics(launch_: Launch, trials: list, entered: dict[int, float]) -> Metrics:
    ends = sorted(map(complete, trials))
    return {
        "wall per trial, total": launch_.wall / len(trials),
        "wall per trial, steady": (ends[-1] - ends[0]) / max(1, len(trials) - 1),
        "startup": min(entered.values()) - launch_.started,
        "start latency": statistics.median(entered[t.number] - start(t) for t in trials),
        "trial duration": statistics.median(complete(t) - start(t) for t in trials),
    }


def raw_study(workdir: Path, trials: int, jobs: int) -> None:
    """Raw ``study.optimize`` (run in a child process by :func:`raw`)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tpe = {k: v for k, v in vars(TPESamplerConfig()).items() if k != "_target_"}
    study = optuna.create_study(
        study_name="raw", storage=open_storage(None, workdir),
        sampler=optuna.samplers.TPESampler(**tpe), pruner=optuna.pruners.NopPruner(),
    )  # fmt: skip
    assert NopPrunerConfig._target_ == "optuna.pruners.NopPruner"
    entered: dict[int, float] = {}

    def objective(trial: optuna.Trial) -> float:
        entered[trial.number] = time.time()
        x = trial.suggest_float("x", -1, 1)
        for step in range(1, REPORTS + 1):  # as the toy app: a curve that improves
            trial.report((x - 0.3) ** 2 + 1.0 / step, step * 100)
            trial.should_prune()
        return (x - 0.3) ** 2 + 1.0 / REPORTS

    study.optimize(objective, n_trials=trials, n_jobs=jobs)
    (workdir / "entered.json").write_text(json.dumps(entered))


if __name__ == "__main__":
    raw_study(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))

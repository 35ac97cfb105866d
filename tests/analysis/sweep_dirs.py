"""Sweep directories written through Optuna's API, as the sweeper writes them, without training.

``build_mixed_sweep`` writes one trial of every state; job directories hold small metric tables
of the shape ``tbptt/trainer.py`` writes (32 tokens per update, an evaluation every 2 updates).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pyarrow as pa
import pyarrow.parquet as pq
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from sweeps.outputs import SweepOutputs, claim_sweep_dir
from sweeps.space import to_overrides
from sweeps.storage import open_storage

TOKENS_PER_UPDATE = 32
EVAL_EVERY = 2  # updates
K2 = 4  # grad_flow lags 0..K2
LAYERS = ("embed", "rnn0", "decoder")
FIXED = ["data=count", "trainer.max_tokens=1024"]
SPACE: dict[str, BaseDistribution] = {
    "optim.lr": FloatDistribution(1e-4, 1e-1, log=True),
    "clip": CategoricalDistribution(["none", "norm"]),
    "clip.max_norm": FloatDistribution(0.1, 10.0, log=True),
    "bptt.length": IntDistribution(4, 16),
}


def tables(updates: int, error_clip: bool = False) -> dict[str, pa.Table]:
    """A run's steps / evals / grad_flow after ``updates`` updates."""
    tokens = np.arange(1, updates + 1, dtype=np.int64) * TOKENS_PER_UPDATE
    steps: dict[str, Any] = {
        "tokens": tokens, "flops": tokens * 1000,
        "update": np.arange(1, updates + 1, dtype=np.int64),
        "loss": np.linspace(3.0, 1.0, updates), "grad_norm": np.full(updates, 2.0),
        "grad_norm_clipped": np.full(updates, 1.0), "clipped": np.ones(updates, bool),
        "lr": np.full(updates, 1e-3), "k1": np.full(updates, 8), "k2": np.full(updates, 8),
        "hidden_norm": np.full(updates, 0.5),
    }  # fmt: skip
    steps.update({f"grad_norm_{layer}": np.full(updates, 0.7) for layer in LAYERS})
    if error_clip:
        steps.update(error_clipped=np.zeros(updates, np.int64), error_max=np.full(updates, 0.1),
                     error_mean=np.full(updates, 0.01))  # fmt: skip
    steps["elapsed_s"] = np.linspace(0.1, 1.0, updates)
    at = tokens[EVAL_EVERY - 1 :: EVAL_EVERY]
    evals = {"tokens": at, "flops": at * 1000, "val_loss": np.linspace(2.0, 1.5, len(at)),
             "val_bpc": np.ones(len(at)),
             "decay_factor": np.full(len(at), 0.9), "elapsed_s": np.ones(len(at))}  # fmt: skip
    flow = {"tokens": np.repeat(at, K2 + 1), "lag": np.tile(np.arange(K2 + 1), len(at)),
            "grad_norm": np.ones(len(at) * (K2 + 1)),
            "decay_factor": np.full(len(at) * (K2 + 1), 0.9)}  # fmt: skip
    return {"steps": pa.table(steps), "evals": pa.table(evals), "grad_flow": pa.table(flow)}


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def write_job(job_dir: Path, files: Mapping[str, bytes], result: dict[str, Any] | None) -> None:
    """A job directory as a run leaves it: tables written so far, result.json once it ended."""
    (job_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        if data:  # the trainer writes no file for a table without rows
            (job_dir / f"{name}.parquet").write_bytes(data)
    if result is not None:
        (job_dir / "result.json").write_text(json.dumps(result))


def job_files(updates: int, error_clip: bool = False) -> dict[str, bytes]:
    return {
        name: parquet_bytes(t) if t.num_rows else b""
        for name, t in tables(updates, error_clip).items()
    }


def create_study(sweep_dir: Path, name: str = "tbptt") -> optuna.Study:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    storage = open_storage(None, sweep_dir)
    return optuna.create_study(study_name=name, storage=storage, direction="minimize")


def start(study: optuna.Study, params: dict[str, Any]) -> optuna.Trial:
    """Ask for a trial with ``params``, as the sweeper does (define-by-run, overrides attr)."""
    study.enqueue_trial(params)
    trial = study.ask()
    for key, value in params.items():
        assert trial._suggest(key, SPACE[key]) == value
    trial.set_user_attr("overrides", [*FIXED, *to_overrides(params)])
    trial.set_user_attr("worker", "host:1")
    return trial


def finish(
    study: optuna.Study, trial: optuna.Trial, job_dir: Path, state: TrialState, **attrs: Any
) -> None:
    """Record the outcome as ``sweeps.worker.tell`` does."""
    trial.set_user_attr("job_dir", str(job_dir))
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    if state == TrialState.COMPLETE:
        study.tell(trial, 1.25)
    else:
        study.tell(trial, state=state)


def build_mixed_sweep(sweep_dir: Path) -> optuna.Study:
    """Trials 0..5: complete, pruned, pruned (diverged), fail, running, waiting (a retry)."""
    study = create_study(sweep_dir)
    t = start(study, {"optim.lr": 1e-3, "clip": "norm", "clip.max_norm": 1.0, "bptt.length": 8})
    write_job(
        sweep_dir / "0",
        job_files(6, error_clip=True),
        {"completed": True, "stop_reason": None, "tokens": 192, "wall_seconds": 1.5},
    )
    finish(study, t, sweep_dir / "0", TrialState.COMPLETE, tokens=192, wall_seconds=1.5)

    t = start(study, {"optim.lr": 3e-2, "clip": "none", "bptt.length": 4})
    t.report(2.0, 64)
    t.report(1.9, 128)
    write_job(
        sweep_dir / "1",
        job_files(4),
        {"completed": False, "tokens": 128, "stop_reason": "pruned at token 128"},
    )
    finish(
        study, t, sweep_dir / "1", TrialState.PRUNED, tokens=128, stop_reason="pruned at token 128"
    )

    t = start(study, {"optim.lr": 1e-1, "clip": "norm", "clip.max_norm": 5.0, "bptt.length": 16})
    reason = "diverged at token 64: training loss 9.000 > 3.0 x best 2.000"
    write_job(
        sweep_dir / "2", job_files(2), {"completed": False, "tokens": 64, "stop_reason": reason}
    )
    finish(study, t, sweep_dir / "2", TrialState.PRUNED, tokens=64, stop_reason=reason)

    t = start(study, {"optim.lr": 2e-4, "clip": "none", "bptt.length": 8})
    write_job(sweep_dir / "3", job_files(1), None)  # crashed before its first evaluation
    finish(study, t, sweep_dir / "3", TrialState.FAIL, fail_reason="ValueError: boom")

    t = start(study, {"optim.lr": 5e-3, "clip": "norm", "clip.max_norm": 0.5, "bptt.length": 12})
    t.report(1.8, 64)
    write_job(sweep_dir / "4", job_files(3), None)  # running: no job_dir attr until it ends

    study.enqueue_trial({"optim.lr": 2e-4, "clip": "none", "bptt.length": 8},
                        user_attrs={"retry_of": 3})  # fmt: skip
    return study


def build_large_sweep(sweep_dir: Path, n: int) -> None:
    """``n`` finished trials, added in one call; every job has the same small tables."""
    study = create_study(sweep_dir)
    files = job_files(8)
    trials = []
    for number in range(n):
        params = {"optim.lr": 10 ** -(1 + 3 * number / n), "clip": ("none", "norm")[number % 2],
                  "bptt.length": 4 + number % 13}  # fmt: skip
        write_job(sweep_dir / str(number), files, {"completed": True, "tokens": 256})
        attrs = {"job_dir": str(sweep_dir / str(number)), "tokens": 256, "wall_seconds": 2.0,
                 "overrides": to_overrides(params), "worker": "host:1"}  # fmt: skip
        trials.append(
            optuna.trial.create_trial(
                params=params,
                distributions={k: SPACE[k] for k in params},
                value=1.0 + number,
                user_attrs=attrs,
                intermediate_values={64: 2.0, 128: 1.9},
            )  # fmt: skip
        )
    study.add_trials(trials)


def build_multi_objective_sweep(
    sweep_dir: Path, directions: list[str], values: list[tuple[float, ...] | None]
) -> optuna.Study:
    """A multi-objective sweep as the sweeper leaves it (study.journal, study.yaml,
    trials.parquet, best.yaml): trial i ends with ``values[i]`` (None: it failed), after small
    metric tables in its job directory."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    claim_sweep_dir(sweep_dir, "tbptt", None)
    storage = open_storage(None, sweep_dir)
    study = optuna.create_study(study_name="tbptt", storage=storage, directions=directions)
    for number, told in enumerate(values):
        trial = start(study, {"optim.lr": 1e-3 * (number + 1), "bptt.length": 4 + number % 13})
        job_dir = sweep_dir / str(number)
        write_job(job_dir, job_files(4), {"completed": told is not None, "tokens": 128})
        trial.set_user_attr("job_dir", str(job_dir))
        if told is None:
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, list(told))
    SweepOutputs(sweep_dir, None).write(study)
    return study


STATE_OF = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED,
            "fail": TrialState.FAIL, "running": TrialState.RUNNING}  # fmt: skip


def distribution(values: list[Any]) -> BaseDistribution:
    """The distribution a swept key's ``values`` were sampled from: a choice of strings or
    bools, else an int or float range spanning them."""
    if any(isinstance(v, bool | str) for v in values):
        return CategoricalDistribution(sorted(set(values), key=str))
    if all(isinstance(v, int) for v in values):
        return IntDistribution(min(values), max(values))
    finite = [float(v) for v in values if np.isfinite(v)] or [0.0]
    return FloatDistribution(min(finite), max(finite))


def eval_files(curve: list[float]) -> dict[str, bytes]:
    """A job's evals.parquet: ``curve`` at 1000, 2000, ... tokens."""
    if not curve:
        return {}
    at = np.arange(1, len(curve) + 1, dtype=np.int64) * 1000
    evals = {"tokens": at, "flops": at * 10**5, "val_loss": np.asarray(curve, dtype=float),
             "val_bpc": np.ones(len(at)), "decay_factor": np.full(len(at), 0.9),
             "elapsed_s": np.ones(len(at))}  # fmt: skip
    return {"evals": parquet_bytes(pa.table(evals))}


def build_sweep(
    sweep_dir: Path, runs: list[dict[str, Any]], setting: dict[str, Any] | None = None
) -> Path:
    """A sweep directory (study.journal and job directories) holding one trial per entry of
    ``runs``, as the sweeper leaves it, without training: ``params`` (swept values; a key may
    be missing from some runs), ``state`` (complete, pruned, fail or running), ``curve`` (the
    validation loss at each evaluation, in the job's evals.parquet), ``value`` (the objective:
    the curve's last by default), ``reason`` (stop_reason, or fail_reason of a failed run).
    Every job records an 81-character vocabulary, and ``setting`` as its saved config."""
    study = create_study(sweep_dir)
    keys = list(dict.fromkeys(k for run in runs for k in run.get("params", {})))
    space = {k: distribution([r["params"][k] for r in runs if k in r.get("params", {})])
             for k in keys}  # fmt: skip
    trials = []
    for number, run in enumerate(runs):
        job_dir = sweep_dir / str(number)
        curve, state = run.get("curve", []), STATE_OF[run.get("state", "complete")]
        result = {"vocab_size": run.get("vocab", 81), "tokens": 1000 * len(curve), "flops": 10**9}
        write_job(job_dir, eval_files(curve), result if state != TrialState.RUNNING else None)
        (job_dir / ".hydra" / "config.yaml").write_text(json.dumps(setting or {}))
        attrs: dict[str, Any] = {"tokens": run.get("tokens", 1000 * len(curve)), "flops": 10**9}
        if state != TrialState.RUNNING:
            attrs["job_dir"] = str(job_dir)
        if run.get("reason"):
            attrs["fail_reason" if state == TrialState.FAIL else "stop_reason"] = run["reason"]
        params = run.get("params", {})
        value = run.get("value", curve[-1] if curve else None)
        trials.append(
            optuna.trial.create_trial(
                state=state, params=params, distributions={k: space[k] for k in params},
                value=value if state == TrialState.COMPLETE else None, user_attrs=attrs,
                intermediate_values={1000 * (i + 1): v for i, v in enumerate(curve)},
            )  # fmt: skip
        )
    study.add_trials(trials)
    return sweep_dir

"""Launching sweeps and single runs in child processes, and reading back when trials ran.

Times are wall-clock epoch seconds (``time.time()``), the clock Optuna's trial datetimes use,
so a child's trial table and the parent's launch time share one axis.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from benchmarks.common import ROOT
from sweeps.storage import open_storage

TOY_APP = ROOT / "tests" / "sweeps" / "toy_app.py"


@dataclass(frozen=True)
class Launch:
    """A finished child process: when it was launched and when it ended."""

    started: float
    ended: float

    @property
    def wall(self) -> float:
        return self.ended - self.started


def child_env() -> dict[str, str]:
    """The environment of a child ``python``: the repository importable, Hydra's full errors."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "HYDRA_FULL_ERROR": "1", "PYTHONPATH": path}


def launch(args: list[str], timeout: float = 900) -> Launch:
    """Run ``python ARGS`` from the repository root; fail with its stderr's tail."""
    started = time.time()
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=child_env(), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    ended = time.time()
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"python {' '.join(args)} exited {proc.returncode}:\n{tail}")
    return Launch(started, ended)


def study_trials(sweep_dir: Path, study_name: str = "tbptt") -> list[FrozenTrial]:
    study = optuna.load_study(study_name=study_name, storage=open_storage(None, sweep_dir))
    return study.get_trials(deepcopy=False)


def start(trial: FrozenTrial) -> float:
    assert trial.datetime_start is not None
    return trial.datetime_start.timestamp()


def complete(trial: FrozenTrial) -> float:
    assert trial.datetime_complete is not None
    return trial.datetime_complete.timestamp()


def job_started(job_dir: Path) -> float:
    """When Hydra started the job: it writes ``.hydra/overrides.yaml`` just before the task."""
    return (job_dir / ".hydra" / "overrides.yaml").stat().st_mtime

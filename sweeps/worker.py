"""What a worker process does with one trial: run its Hydra job, report, and tell the study.

Each trial is an ordinary Hydra job (its own job directory, ``.hydra/`` config and log file, as
with any launcher). The job reports its validation loss to its Optuna trial at every evaluation,
with the step counted in training tokens, and stops as soon as the pruner says so.
"""

from __future__ import annotations

import json
import math
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, run_job, setup_globals
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from optuna.trial import TrialState

from sweeps.storage import open_storage
from tbptt import hooks
from tbptt.trainer import EvalPoint, StopRun


@dataclass(frozen=True)
class TrialJob:
    number: int
    trial_id: int
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class TrialOutcome:
    number: int
    state: str  # COMPLETE | PRUNED | FAIL
    value: float | None
    reason: str | None  # why it stopped early or failed
    job_dir: str


class PruningReporter:
    """The job's eval callback: report to the trial, stop the run when the pruner says so."""

    def __init__(self, trial: optuna.Trial) -> None:
        self._trial = trial
        self.pruned_at: int | None = None

    def __call__(self, point: EvalPoint) -> None:
        self._trial.report(point.val_loss, point.step)
        if self._trial.should_prune():
            self.pruned_at = point.tokens
            raise StopRun(f"pruned at token {point.tokens}")


@dataclass
class StudyRef:
    study_name: str
    storage: str | None
    sweep_dir: str
    patience: float
    pruner: dict[str, Any]


@dataclass
class TrialRunner:
    """Runs trials inside a worker; created in the sweep process and pickled into each worker."""

    hydra_context: HydraContext
    config: DictConfig
    task_function: TaskFunction
    singleton_state: dict[Any, Any]
    study_ref: StudyRef
    threads: int
    _study: optuna.Study | None = field(default=None, init=False, repr=False)

    def _setup(self) -> optuna.Study:
        if self._study is None:
            setup_globals()
            Singleton.set_state(self.singleton_state)
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
            import torch  # only here: the worker's threads are set before any work

            torch.set_num_threads(self.threads)
            ref = self.study_ref
            storage = open_storage(ref.storage, Path(ref.sweep_dir), ref.patience)
            pruner = instantiate(ref.pruner)
            self._study = optuna.load_study(
                study_name=ref.study_name, storage=storage, pruner=pruner
            )
        return self._study

    def __call__(self, job: TrialJob) -> TrialOutcome:
        study = self._setup()
        trial = optuna.Trial(study, job.trial_id)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        reporter = PruningReporter(trial)
        ret, job_dir = self._run_job(job, reporter)
        outcome = classify(job.number, ret, reporter, job_dir)
        tell(study, trial, outcome, job_dir)
        return outcome

    def _run_job(self, job: TrialJob, reporter: PruningReporter) -> tuple[JobReturn, Path]:
        config = self.hydra_context.config_loader.load_sweep_config(
            self.config, list(job.overrides)
        )
        with open_dict(config):
            config.hydra.job.id = f"{config.hydra.job.name}_{job.number}"
            config.hydra.job.num = job.number
        HydraConfig.instance().set_config(config)
        job_dir = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
        hooks.job_callbacks[:] = [reporter]
        try:
            ret = run_job(
                hydra_context=self.hydra_context,
                config=config,
                task_function=self.task_function,
                job_dir_key="hydra.sweep.dir",
                job_subdir_key="hydra.sweep.subdir",
            )
        except SystemExit as exit_:  # the app rejected its config (it printed why)
            ret = JobReturn(status=JobStatus.FAILED, _return_value=exit_)
        finally:
            hooks.job_callbacks.clear()
        return ret, job_dir


def _summary(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def read_result(job_dir: Path) -> dict[str, Any]:
    path = job_dir / "result.json"
    return json.loads(path.read_text()) if path.exists() else {}


def classify(
    number: int, ret: JobReturn, reporter: PruningReporter, job_dir: Path
) -> TrialOutcome:
    if ret.status == JobStatus.FAILED:
        exc = ret._return_value
        reason = _summary(exc) if isinstance(exc, BaseException) else "job failed"
        return TrialOutcome(number, "FAIL", None, reason, str(job_dir))
    stop_reason = read_result(job_dir).get("stop_reason")
    if reporter.pruned_at is not None or stop_reason:
        return TrialOutcome(number, "PRUNED", None, stop_reason, str(job_dir))
    value = ret.return_value
    if not isinstance(value, int | float) or not math.isfinite(value):
        return TrialOutcome(
            number, "FAIL", None, f"objective is not finite: {value}", str(job_dir)
        )
    return TrialOutcome(number, "COMPLETE", float(value), None, str(job_dir))


def tell(study: optuna.Study, trial: optuna.Trial, outcome: TrialOutcome, job_dir: Path) -> None:
    result = read_result(job_dir)
    trial.set_user_attr("job_dir", str(job_dir))
    for key in ("tokens", "wall_seconds", "best_val_loss", "final_val_loss"):
        if key in result and isinstance(result[key], int | float) and math.isfinite(result[key]):
            trial.set_user_attr(key, result[key])
    if outcome.reason:
        key = "fail_reason" if outcome.state == "FAIL" else "stop_reason"
        trial.set_user_attr(key, outcome.reason)
    if outcome.state == "COMPLETE":
        study.tell(trial, outcome.value)
    else:
        study.tell(trial, state=TrialState[outcome.state])

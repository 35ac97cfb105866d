"""The Optuna sweeper: ``python -m tbptt.train -m hydra/sweeper=optuna sweep=default``.

The sweep process samples each trial's parameters (define-by-run, so a parameter is sampled only
when the config composed for the chosen group options has its key) and hands the trial to a
free worker the moment one is free: no batch barrier. Workers run the trial's Hydra job, report
the validation loss at every evaluation to the pruner, and tell the study the outcome. The study
lives in ``hydra.sweeper.storage``; re-running the same command continues it up to
``n_trials`` in total.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra.core.singleton import Singleton
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from sweeps.outputs import SweepOutputs
from sweeps.pool import Died, Finished, WorkerPool
from sweeps.progress import Progress, best_text
from sweeps.space import SearchSpace, check_keys, parse_space, sample, to_overrides
from sweeps.storage import (
    StorageUnavailable,
    SweepLock,
    beat,
    fail_trial,
    open_storage,
    retry,
    stale_trials,
)
from sweeps.worker import StudyRef, TrialJob, TrialOutcome, TrialRunner
from tbptt.errors import ConfigError
from tbptt.train import typed

log = logging.getLogger(__name__)


class SweepError(RuntimeError):
    """The sweep stopped (too many failures); recorded results are kept."""


@dataclass(frozen=True)
class Settings:
    n_trials: int
    n_jobs: int
    max_failures: int | None
    max_retries: int
    timeout: float | None
    heartbeat_interval: float
    grace_period: float
    shared: bool  # the storage may hold other processes' trials (not the default journal)


def default_jobs(device: str, gpus: int, cpus: int) -> int:
    """Workers when ``n_jobs`` is unset: one per GPU for CUDA runs, else one per core."""
    return max(1, gpus) if device.startswith("cuda") or (device == "auto" and gpus) else cpus


def gpu_env(slot: int, gpus: int, device: str) -> dict[str, str]:
    """Pin the worker in ``slot`` to one GPU, round-robin, when trials run on CUDA."""
    if gpus == 0 or device == "cpu":
        return {}
    return {"CUDA_VISIBLE_DEVICES": str(slot % gpus)}


def gpu_count() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    import torch  # the sweep process pays for this import only to count GPUs

    return torch.cuda.device_count()


class OptunaSweeper(Sweeper):
    """Hydra sweeper running Optuna trials in parallel worker processes, with early pruning.

    Args:
        sampler, pruner: ``_target_`` nodes for ``hydra.utils.instantiate``.
        direction: ``minimize`` or ``maximize``.
        study_name, storage: the study (storage null: a journal file in the sweep directory).
        n_trials: total trials of the study, across re-runs.
        n_jobs: worker processes (null: one per core, or one per GPU for CUDA runs).
        threads_per_worker: torch threads in each worker.
        max_failures: stop after this many failed trials (null: never).
        max_retries: re-runs of a trial whose worker died.
        timeout: stop starting trials after this many seconds (null: never).
        heartbeat_interval, grace_period: liveness of running trials in shared storage.
        params: the search space, ``key: override-grammar string``.

    Example:
        >>> python -m tbptt.train -m hydra/sweeper=optuna sweep=default hydra.sweeper.n_trials=40
    """

    def __init__(self, **kwargs: Any) -> None:
        self.cfg = OmegaConf.create(kwargs)
        check_settings(self.cfg)
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None
        self.config: DictConfig | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    def sweep(self, arguments: list[str]) -> Any:
        try:
            return self._sweep(arguments)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        except (SweepError, StorageUnavailable) as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:
            print("\ninterrupted; re-run the same command to resume", file=sys.stderr)
            sys.exit(130)

    def compose(self, overrides: list[str]) -> DictConfig:
        assert self.hydra_context is not None and self.config is not None
        return self.hydra_context.config_loader.load_sweep_config(self.config, overrides)

    def is_group(self, key: str) -> bool:
        assert self.hydra_context is not None
        return bool(self.hydra_context.config_loader.get_group_options(key.replace(".", "/")))

    def _sweep(self, arguments: list[str]) -> optuna.Study:
        assert self.config is not None
        # TPE's `group` is experimental and says so on every sampler; the choice is deliberate.
        # (Set here, not at import: Hydra imports plugins inside warnings.catch_warnings().)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        params = {str(k): str(v) for k, v in (self.cfg.params or {}).items()}
        space = parse_space(params, arguments, self.is_group)
        typed(self.compose(list(space.fixed)))  # bad values fail here, before any worker starts
        check_keys(space, self.compose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        with SweepLock(sweep_dir):
            study = self._study(sweep_dir, space)
            outputs = SweepOutputs(sweep_dir, self.cfg.storage)
            outputs.load_finished(study)
            self._recover(study, all_running=self.cfg.storage is None)
            self._run(study, space, sweep_dir, outputs)
            outputs.write(study)
        print(best_text(study), file=sys.stderr)
        return study

    def _study(self, sweep_dir: Path, space: SearchSpace) -> optuna.Study:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        storage = open_storage(self.cfg.storage, sweep_dir, float(self.cfg.storage_patience))
        return optuna.create_study(
            study_name=self.cfg.study_name,
            storage=storage,
            sampler=self._sampler(space),
            pruner=instantiate(self.cfg.pruner),
            direction=self.cfg.direction,
            load_if_exists=True,
        )

    def _sampler(self, space: SearchSpace) -> optuna.samplers.BaseSampler:
        if self.cfg.sampler._target_ == "optuna.samplers.GridSampler":
            return instantiate(self.cfg.sampler, search_space=grid_space(space))
        return instantiate(self.cfg.sampler)

    def _recover(self, study: optuna.Study, all_running: bool) -> None:
        grace = -1.0 if all_running else float(self.cfg.grace_period)
        recover(study, grace, int(self.cfg.max_retries))

    def _device(self) -> str:
        assert self.config is not None
        return str(OmegaConf.select(self.config, "trainer.device", default="cpu"))

    def _settings(self) -> Settings:
        device = self._device()
        n_jobs = self.cfg.n_jobs or default_jobs(device, gpu_count(), os.cpu_count() or 1)
        return Settings(
            int(self.cfg.n_trials), int(n_jobs), self.cfg.max_failures,
            int(self.cfg.max_retries), self.cfg.timeout, float(self.cfg.heartbeat_interval),
            float(self.cfg.grace_period), self.cfg.storage is not None,
        )  # fmt: skip

    def _runner(self, sweep_dir: Path) -> TrialRunner:
        assert self.hydra_context and self.config and self.task_function
        cfg = self.cfg
        ref = StudyRef(
            cfg.study_name, cfg.storage, str(sweep_dir), float(cfg.storage_patience),
            OmegaConf.to_container(cfg.pruner),  # type: ignore[arg-type]
        )  # fmt: skip
        return TrialRunner(
            self.hydra_context, self.config, self.task_function, Singleton.get_state(), ref,
            int(self.cfg.threads_per_worker),
        )  # fmt: skip

    def _run(
        self, study: optuna.Study, space: SearchSpace, sweep_dir: Path, outputs: SweepOutputs
    ) -> None:
        settings = self._settings()
        device = self._device()
        gpus = 0 if device == "cpu" else gpu_count()
        pool = WorkerPool(
            self._runner(sweep_dir), settings.n_jobs, lambda s: gpu_env(s, gpus, device)
        )
        scheduler = Scheduler(study, space, self.compose, pool, settings, outputs)
        try:
            scheduler.run()
        except KeyboardInterrupt:
            pool.close(kill=True)
            scheduler.interrupted()
            sys.exit(130)
        pool.close()


def check_settings(cfg: DictConfig) -> None:
    def check(ok: bool, message: str) -> None:
        if not ok:
            print(f"error: hydra.sweeper.{message}", file=sys.stderr)
            sys.exit(2)

    check(cfg.n_trials >= 1, f"n_trials must be >= 1, got {cfg.n_trials}")
    check(cfg.n_jobs is None or cfg.n_jobs >= 1, f"n_jobs must be >= 1, got {cfg.n_jobs}")
    check(
        cfg.threads_per_worker >= 1,
        f"threads_per_worker must be >= 1, got {cfg.threads_per_worker}",
    )
    check(cfg.max_retries >= 0, f"max_retries must be >= 0, got {cfg.max_retries}")
    check(
        cfg.direction in ("minimize", "maximize"),
        f"direction must be minimize or maximize, got {cfg.direction!r}",
    )


def grid_space(space: SearchSpace) -> dict[str, list[Any]]:
    grid = {}
    for param in space.params:
        dist = param.distribution
        if isinstance(dist, CategoricalDistribution):
            grid[param.key] = list(dist.choices)
        elif isinstance(dist, IntDistribution) and not dist.log:
            grid[param.key] = list(range(dist.low, dist.high + 1, dist.step))
        else:
            raise ConfigError(
                f"hydra.sweeper.params.{param.key}: the grid sampler needs choice() or an int "
                "range(), not a continuous interval"
            )
    return grid


def recover(study: optuna.Study, grace_period: float, max_retries: int) -> None:
    """Trials left RUNNING by a dead sweep process: FAIL, then re-enqueue their parameters."""
    for trial in stale_trials(study, grace_period):
        if fail_trial(study, trial, "its sweep process stopped while it ran"):
            retry(study, trial, max_retries)
            log.warning("trial %d was left running: marked FAIL and retried", trial.number)


def counted(trials: list[FrozenTrial]) -> int:
    """Trials that count towards ``n_trials``: all, except failures that were retried."""
    retried = {t.user_attrs.get("retried_trial") for t in trials}
    return sum(1 for t in trials if t.state != TrialState.FAIL or t.number not in retried)


class Scheduler:
    """Keeps every worker busy until the study holds ``n_trials`` trials (asynchronously)."""

    def __init__(
        self,
        study: optuna.Study,
        space: SearchSpace,
        compose: Any,
        pool: WorkerPool,
        settings: Settings,
        outputs: SweepOutputs,
    ) -> None:
        self.study, self.space, self.compose, self.pool = study, space, compose, pool
        self.settings, self.outputs = settings, outputs
        self.failures: list[str] = []
        self.started = time.monotonic()
        self.progress = Progress(settings.n_trials)
        self.last_beat = self.last_recovery = 0.0

    def run(self) -> None:
        self.progress.start(self.study, self._done())
        while True:
            self._keep_alive()
            if self._may_start():
                self._fill()
            if self.pool.busy() == 0:
                break
            for event in self.pool.wait(timeout=1.0):
                self._handle(event)
        self.progress.close()
        if self._too_many_failures():
            raise SweepError(
                f"stopped after {len(self.failures)} failed trials (hydra.sweeper.max_failures="
                f"{self.settings.max_failures}); last: {self.failures[-1]}"
            )

    def _keep_alive(self) -> None:
        """Heartbeats of this sweep's running trials; in shared storage, fail abandoned ones.

        The sweep process beats for its workers: they live and die with it (a worker that dies
        alone is seen at once through its process sentinel).
        """
        now = time.monotonic()
        if now - self.last_beat >= self.settings.heartbeat_interval:
            for job in self.pool.jobs():
                beat(self.study._storage, job.trial_id)
            self.last_beat = now
        if self.settings.shared and now - self.last_recovery >= self.settings.grace_period / 2:
            recover(self.study, self.settings.grace_period, self.settings.max_retries)
            self.last_recovery = now

    def _done(self) -> int:
        return sum(t.state.is_finished() for t in self.study.get_trials(deepcopy=False))

    def _may_start(self) -> bool:
        timeout = self.settings.timeout
        expired = timeout is not None and time.monotonic() - self.started > timeout
        return not expired and not self._too_many_failures()

    def _too_many_failures(self) -> bool:
        limit = self.settings.max_failures
        return limit is not None and len(self.failures) >= limit

    def _fill(self) -> None:
        while self.pool.free_slots() and self._may_start():
            if counted(self.study.get_trials(deepcopy=False)) >= self.settings.n_trials:
                waiting = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
                if not waiting:
                    return
            job = self._next_job()
            if job is not None:
                self.pool.submit(job)

    def _next_job(self) -> TrialJob | None:
        trial = self.study.ask()
        beat(self.study._storage, trial._trial_id)
        values = sample(trial, self.space, self.compose)
        overrides = [*self.space.fixed, *to_overrides(values)]
        trial.set_user_attr("overrides", overrides)
        try:
            typed(self.compose(overrides))
        except ConfigError as err:
            self._fail_now(trial, str(err))
            return None
        return TrialJob(trial.number, trial._trial_id, tuple(overrides))

    def _fail_now(self, trial: optuna.Trial, reason: str) -> None:
        trial.set_user_attr("fail_reason", reason)
        self.study.tell(trial, state=TrialState.FAIL)
        self.failures.append(f"trial {trial.number}: {reason}")
        self.progress.finished(
            self.study, TrialOutcome(trial.number, "FAIL", None, reason, ""), self._done()
        )

    def _handle(self, event: Finished | Died) -> None:
        if isinstance(event, Died):
            outcome = self._worker_died(event)
        else:
            outcome = event.result
        if outcome.state == "FAIL":
            self.failures.append(f"trial {outcome.number}: {outcome.reason}")
        self.outputs.record(self.study, outcome.number)
        self.progress.finished(self.study, outcome, self._done())

    def _worker_died(self, event: Died) -> TrialOutcome:
        job: TrialJob = event.job
        code = event.exitcode
        reason = (
            f"worker killed by signal {-code}"
            if code is not None and code < 0
            else (f"worker exited with code {code}")
        )
        trial = self.study._storage.get_trial(job.trial_id)
        if fail_trial(self.study, trial, reason):
            retry(self.study, trial, self.settings.max_retries)
        return TrialOutcome(job.number, "FAIL", None, reason, "")

    def interrupted(self) -> None:
        """Ctrl-C: fail the running trials (a re-run retries them) and say how to resume."""
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if fail_trial(self.study, trial, "interrupted (Ctrl-C)"):
                retry(self.study, trial, self.settings.max_retries)
        self.outputs.write(self.study)
        self.progress.close()
        print(
            f"\ninterrupted: {self.progress.summary(self.study)}\n"
            "resume by running the same command again",
            file=sys.stderr,
        )

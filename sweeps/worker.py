"""What a worker process does with one trial: run its Hydra job, report, and tell the study.

Each trial is an ordinary Hydra job (its own job directory, ``.hydra/`` config and log file, as
with any launcher). The job reports its validation loss to its Optuna trial at every evaluation,
with the step counted in training tokens, and stops as soon as the pruner says so.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pydoc
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, run_job, setup_globals
from hydra.errors import HydraException
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from omegaconf.errors import OmegaConfBaseException
from optuna.trial import TrialState

from sweeps.compose import Composer
from sweeps.internals import failed_job, job_error, storage_of, trial_id
from sweeps.outputs import replay
from sweeps.shipment import ship
from sweeps.storage import open_storage
from tbptt import contract
from tbptt.cli import one_line
from tbptt.contract import End, Report, TrialResult
from tbptt.errors import ConfigError, first_line
from tbptt.metrics import atomic_path

CHECKPOINT_FILES = ("checkpoint.pt", "best.pt", "steps.parquet", "evals.parquet",
                    "grad_flow.parquet")  # fmt: skip
SCORE_ATTRS = {"val": "full_val_loss", "test": "test_loss"}  # user attrs of scored trials
PRUNER_ATTR = "sweeps:pruner"  # study attr: the pruner config a budget plan sized
FATAL_ATTR = "fatal"  # user attr: the trial's failure stops the sweep (TrialOutcome.fatal)
THREADS_ATTR = "sweeps:threads"  # trial system attr: more threads, now that cores are idle


@dataclass(frozen=True, kw_only=True)
class TrialJob:
    """One trial for a worker. Search trials only need the first three fields; a budgeted
    sweep's candidates and final run continue another trial's checkpoint and are scored."""

    number: int
    trial_id: int
    overrides: tuple[str, ...]
    phase: str = "search"  # search | candidate | final | transfer (sweeps/plan.py)
    prune: bool = True  # ask the pruner at each evaluation
    threads: int | None = None  # torch threads for this job (None: the worker's default)
    init_from: str | None = None  # a job directory to continue: its checkpoint and tables
    deadline: float | None = None  # time.time() by which target_flops must be reached
    target_flops: int | None = None
    score: tuple[str, ...] = ()  # whole splits to score after training ("val", "test")
    score_file: str = "checkpoint.pt"  # which weights to score: the last, or best.pt


@dataclass(frozen=True)
class CalibrationJob:
    """Measure the worker's training FLOP/s on ``threads`` threads (see sweeps/plan.py): the
    app trains the sweep's fixed config for ``seconds`` in a scratch directory."""

    overrides: tuple[str, ...]
    threads: int
    seconds: float = 2.0

    def run_overrides(self) -> list[str]:
        return [
            *self.overrides,
            "trainer.max_tokens=null", "trainer.max_flops=null",
            f"trainer.max_seconds={self.seconds}", "trainer.eval_every_tokens=null",
            "trainer.eval_every_flops=1e18", "trainer.checkpoint=false", "trainer.resume=false",
        ]  # fmt: skip


class CalibrationError(RuntimeError):
    """The calibration run failed: the sweep cannot plan its budget."""


@dataclass(frozen=True, kw_only=True)
class TrialOutcome:
    number: int
    state: End
    value: float | tuple[float, ...] | None = None  # a tuple in a multi-objective study
    reason: str | None = None  # why it stopped early or failed
    fatal: bool = False  # every trial would fail so (contract.Outcome.fatal): stop the sweep
    job_dir: str = ""  # empty: the trial never ran (a worker died, its config failed)
    flops: int = 0  # the run's training compute at its end (continued runs: in total)
    seconds: float = 0.0  # this job's wall time, start-up and scoring included
    train_seconds: float = 0.0  # the run's trainer wall time (continued runs: in total)
    scores: dict[str, float] = field(default_factory=dict)  # split -> loss on the whole split
    score_seconds: float = 0.0


class PruningReporter:
    """The job's listener (tbptt/contract.py): report to the trial; stop the run when the
    pruner says so, or when it cannot reach its compute target before its deadline at the rate
    seen so far."""

    def __init__(self, trial: optuna.Trial, job: TrialJob | None = None) -> None:
        self.trial = self._trial = trial
        # Optuna keeps no intermediate values of multi-objective trials, and cannot prune them.
        self._report = len(trial.study.directions) == 1
        self._prune = self._report and (job is None or job.prune)
        self._deadline = job.deadline if job else None
        self._target = job.target_flops if job else None
        self._first: tuple[float, int] | None = None  # (time, flops) at the first evaluation
        self._threads = job.threads if job else None
        self.stopped: str | None = None  # why the sweeper stopped the run

    def __call__(self, point: Report) -> str | None:
        if self.stopped:
            return self.stopped  # an app that went on after being told to stop
        self._take_idle_cores()
        if self._report:
            self._trial.report(point.value, point.step)
        if point.final:
            return None  # it trained its whole budget: pruning now would save nothing
        if self._prune and self._trial.should_prune():
            where = f"token {point.tokens}" if point.tokens is not None else f"step {point.step}"
            self.stopped = f"pruned at {where}"
        else:
            self.stopped = self._out_of_time(point)
        return self.stopped

    def _take_idle_cores(self) -> None:
        attrs = self._trial.storage.get_trial_system_attrs(trial_id(self._trial))
        threads = attrs.get(THREADS_ATTR)
        if threads and threads != self._threads:
            set_threads(int(threads))
            self._threads = int(threads)

    def _out_of_time(self, point: Report) -> str | None:
        if self._deadline is None or self._target is None or point.flops is None:
            return None
        now = time.time()
        if self._first is None:
            self._first = (now, point.flops)
            return None
        seconds, flops = now - self._first[0], point.flops - self._first[1]
        if seconds <= 0 or flops <= 0 or point.flops >= self._target:
            return None
        finish = now + (self._target - point.flops) * seconds / flops
        if finish <= self._deadline:
            return None
        return (
            f"out of time at token {point.tokens}: it would reach its compute budget "
            f"{finish - self._deadline:.0f} s after its phase ends"
        )


def sized_pruner(configured: dict[str, Any], planned: Any) -> dict[str, Any]:
    """The pruner node the sweep's config gives, with the numbers a budget plan sized for it
    (kept in the study, ``PRUNER_ATTR``, so that a re-run keeps its rungs). The storage is
    data: what it holds is taken only as numbers for the config's own keys, and only for the
    same pruner, so no class or function it names (``_target_``, a nested node, an
    interpolation) is ever instantiated."""
    if not isinstance(planned, dict) or planned.get("_target_") != configured.get("_target_"):
        return configured
    sizes = {
        key: value
        for key, value in planned.items()
        if key in configured and not key.startswith("_")
        and isinstance(value, int | float) and not isinstance(configured[key], dict | list)
    }  # fmt: skip
    return {**configured, **sizes}


@dataclass(frozen=True, kw_only=True)
class StudyRef:
    """Where a worker finds the study (the sweep process's own ``Study`` does not pickle)."""

    study_name: str
    storage: str | None
    sweep_dir: str
    patience: float
    pruner: dict[str, Any]


@dataclass(kw_only=True)
class TrialRunner:
    """Runs trials inside a worker; created in the sweep process and pickled into each worker."""

    hydra_context: HydraContext
    config: DictConfig
    task_function: TaskFunction
    singleton_state: dict[Any, Any]
    study_ref: StudyRef
    threads: int
    trial_logs: bool = False  # hydra.sweeper.trial_logs: trials log to the console too
    # An agent (sweeps/agent.py): job directories under this (absolute) sweep directory, or,
    # with ``ship``, in a local scratch directory, shipped home through the storage
    # (sweeps/shipment.py): for agents whose host does not see the sweep directory.
    home: str | None = None
    ship: bool = True
    _study: optuna.Study | None = field(default=None, init=False, repr=False)
    _composer: Composer | None = field(default=None, init=False, repr=False)
    _ready: bool = field(default=False, init=False, repr=False)

    def setup(self) -> None:
        if not self._ready:
            setup_globals()
            Singleton.set_state(self.singleton_state)
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
            self._ready = True

    @property
    def composer(self) -> Composer:
        """Composes this worker's jobs: in full for the first trial of each shape, from a
        copy for the rest (sweeps/compose.py)."""
        if self._composer is None:
            self._composer = Composer.of(self.hydra_context.config_loader, self.config)
        return self._composer

    def load_study(self) -> optuna.Study:
        if self._study is None:
            ref = self.study_ref
            storage = open_storage(ref.storage, Path(ref.sweep_dir), ref.patience)
            study = optuna.load_study(
                study_name=ref.study_name, storage=storage, pruner=instantiate(ref.pruner)
            )
            self.size_pruner(study)
            self._study = study
        return self._study

    def size_pruner(self, study: optuna.Study) -> None:
        """The pruner with the rungs a budgeted sweep's plan sized for it, once planned."""
        planned = study.user_attrs.get(PRUNER_ATTR)
        if planned is not None:
            study.pruner = instantiate(sized_pruner(self.study_ref.pruner, planned))

    def __call__(
        self, job: TrialJob | CalibrationJob
    ) -> TrialOutcome | float | CalibrationError:
        self.setup()
        if isinstance(job, CalibrationJob):
            try:
                return self._calibrate(job)
            except CalibrationError as err:  # sent back: the sweep process says why and stops
                return err
        if self.home is None:
            return self.run_trial(job)
        if not self.ship:
            return self.run_trial(job, Path(self.home))
        with tempfile.TemporaryDirectory(prefix="tbptt-agent-") as scratch:
            return self.run_trial(job, Path(scratch))

    def run_trial(self, job: TrialJob, root: Path | None = None) -> TrialOutcome:
        """Run the trial's job (under ``root``, when given: the sweep directory, or a scratch
        directory whose job is then shipped home), and tell the study."""
        study = self.load_study()
        started = time.perf_counter()
        self._set_threads(job.threads or self.threads)
        trial = optuna.Trial(study, job.trial_id)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        reporter = PruningReporter(trial, job)
        ret, job_dir = self._run_job(job, reporter, root)
        result = contract.read_result(job_dir)
        outcome = classify(job.number, ret, reporter, job_dir, result, len(study.directions))
        if job.score and self._scorable(job, outcome):
            outcome = self._score(job, outcome, job_dir, trial)
        outcome = replace(outcome, seconds=time.perf_counter() - started)
        home = job_dir
        if root is not None and self.home is not None and self.ship:
            home = Path(self.home) / job_dir.relative_to(root)
            ship(storage_of(study), job.trial_id, job_dir)
        tell(study, trial, outcome, result or TrialResult(), home)
        return replace(outcome, job_dir=str(home))

    @staticmethod
    def _set_threads(threads: int) -> None:
        set_threads(threads)  # the app leaves them to the sweeper (contract.sweeping)

    def _calibrate(self, job: CalibrationJob) -> float:
        """Training FLOP/s of the sweep's own model on this worker (what a trial reaches)."""
        self._set_threads(job.threads)
        with tempfile.TemporaryDirectory(prefix="tbptt-calibrate-") as scratch:
            run = TrialJob(number=-1, trial_id=-1, overrides=tuple(job.run_overrides()))
            try:
                ret, job_dir = self._run_job(run, None, Path(scratch))
            except (HydraException, OmegaConfBaseException) as err:  # an app without them
                raise CalibrationError(
                    f"measuring the training speed failed: {one_line(err)} (a budget plans "
                    "each trial through the training app's trainer.* keys)"
                ) from None
            result = contract.read_result(job_dir) or TrialResult()
        flops, seconds = float(result.flops or 0), float(result.wall_seconds or 0)
        if ret.status == JobStatus.FAILED or flops <= 0 or seconds <= 0:
            exc = job_error(ret)
            why = contract.failure(exc).reason if exc is not None else "no FLOPs recorded"
            raise CalibrationError(f"measuring the training speed failed: {why}")
        return flops / seconds

    @staticmethod
    def _scorable(job: TrialJob, outcome: TrialOutcome) -> bool:
        """Completed runs, and a final run stopped early (diverged): its best.pt stands."""
        stopped = outcome.state == End.PRUNED and job.score_file == "best.pt"
        return outcome.state == End.COMPLETE or stopped

    def _score(
        self, job: TrialJob, outcome: TrialOutcome, job_dir: Path, trial: optuna.Trial
    ) -> TrialOutcome:
        """Losses on the whole splits: what candidates are ranked by, and the final's report.
        The test loss is computed here, after the search, and never reported to the study."""
        started = time.perf_counter()
        try:
            from tbptt.evaluate import evaluate_checkpoint  # torch: only where one is scored

            scores = evaluate_checkpoint(job_dir / job.score_file, job.score)
        except ConfigError as err:
            return replace(outcome, state=End.FAIL, value=None, reason=f"scoring: {err}")
        for split, loss in scores.items():
            trial.set_user_attr(SCORE_ATTRS[split], loss)
        seconds = time.perf_counter() - started
        trial.set_user_attr("score_seconds", seconds)
        return replace(outcome, scores=scores, score_seconds=seconds)

    def _run_job(
        self, job: TrialJob, reporter: PruningReporter | None, scratch: Path | None = None
    ) -> tuple[JobReturn, Path]:
        config = self.composer.fresh(list(job.overrides))
        with open_dict(config):
            config.hydra.job.id = f"{config.hydra.job.name}_{job.number}"
            config.hydra.job.num = job.number
            if scratch is not None:  # a calibration run, or an agent's trial
                config.hydra.sweep.dir = str(scratch)
                if job.number < 0:
                    config.hydra.sweep.subdir = "run"
            if not self.trial_logs:
                drop_console_handlers(config.hydra.job_logging)
        HydraConfig.instance().set_config(config)
        job_dir = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
        try:  # the app's own check (contract.checked_by): a bad sampled config runs nothing
            contract.check_config(self.task_function, config)
        except ConfigError as err:
            return failed_job(err, job.overrides), job_dir
        if job.init_from is not None and reporter is not None:
            start = copy_run(Path(job.init_from), job_dir)
            reporter.trial.set_user_attr("start_flops", int(start.flops or 0))
            reporter.trial.set_user_attr("start_seconds", float(start.wall_seconds or 0))
        listening = contract.listening(reporter) if reporter else contextlib.nullcontext()
        worker = os.getpid()
        with listening:
            try:
                ret = run_job(
                    hydra_context=self.hydra_context,
                    config=config,
                    task_function=self.task_function,
                    job_dir_key="hydra.sweep.dir",
                    job_subdir_key="hydra.sweep.subdir",
                )
            except (SystemExit, KeyboardInterrupt) as exit_:  # run_job catches Exception only
                if isinstance(exit_, KeyboardInterrupt) and not _ignores_sigint():
                    raise  # Ctrl-C reached this process (an agent): the sweep stops, not the job
                ret = failed_job(exit_, job.overrides)
        if os.getpid() != worker:  # a process the app forked, back from the task function:
            os._exit(0 if ret.status == JobStatus.COMPLETED else 1)  # its parent tells the study
        return ret, job_dir


def _ignores_sigint() -> bool:
    """A pool worker ignores SIGINT (sweeps/pool.py): a KeyboardInterrupt there is the app's
    own, a failure of its job; where SIGINT is heard (an agent), it is Ctrl-C."""
    return signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def drop_console_handlers(log_config: DictConfig | None) -> None:
    """Remove from a job's ``hydra.job_logging`` (a ``logging.config`` dict) the handlers that
    write to a stream, and their names from every logger: the trial then logs to its job's log
    file only, and the sweep's progress keeps the terminal. Other handlers (files, a user's own)
    stay, so any job_logging still configures."""
    if log_config is None or not log_config.get("handlers"):
        return
    handlers = log_config.handlers
    console = {str(name) for name, handler in handlers.items() if _writes_to_console(handler)}
    for name in console:
        del handlers[name]
    loggers = [log_config.get("root"), *(log_config.get("loggers") or {}).values()]
    for logger in loggers:
        if logger is not None and logger.get("handlers"):
            logger.handlers = [h for h in logger.handlers if h not in console]


def _writes_to_console(handler: DictConfig) -> bool:
    # FileHandler is a StreamHandler too (on its file); so are rotating and watched files.
    cls = pydoc.locate(str(handler.get("class") or handler.get("()")))
    if not isinstance(cls, type):
        return False  # a factory or an unknown class: logging.config judges it, kept as is
    return issubclass(cls, logging.StreamHandler) and not issubclass(cls, logging.FileHandler)


def copy_run(source: Path, target: Path) -> TrialResult:
    """Seed ``target`` with the checkpoint and tables of the run in ``source``, so that a
    ``trainer.resume=true`` job there continues it (its tables then hold the whole history).
    Returns the source's result: where the continuation starts."""
    target.mkdir(parents=True, exist_ok=True)
    for name in CHECKPOINT_FILES:
        if (source / name).exists():
            with atomic_path(target / name) as tmp:
                shutil.copyfile(source / name, tmp)
    return contract.read_result(source) or TrialResult()


def set_threads(threads: int) -> None:
    """torch's threads for the jobs of this worker. An app that imported torch gets them set
    now; one that did not (any Hydra app under the trial contract) gets them through
    ``OMP_NUM_THREADS``, which torch reads if it is imported later: the worker itself never
    imports torch, so a sweep of an app without it does not pay ~1 s per process for it."""
    torch = sys.modules.get("torch")
    if torch is None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        return
    torch.set_num_threads(threads)


def classify(
    number: int,
    ret: JobReturn,
    reporter: PruningReporter,
    job_dir: Path,
    result: TrialResult | None,
    objectives: int = 1,
) -> TrialOutcome:
    """The job's outcome by the contract's rule; what it trained, from its ``result``."""
    failed = ret.status == JobStatus.FAILED
    error = (job_error(ret) or RuntimeError("job failed")) if failed else None
    stopped = reporter.stopped
    if isinstance(error, optuna.TrialPruned):  # how an app written for Optuna stops
        stopped, error = stopped or f"the app pruned itself ({first_line(error)})", None
    returned = None if failed else ret.return_value
    told = contract.outcome(returned, result, stopped, error, objectives)
    trained = result if result is not None and not failed else TrialResult()
    return TrialOutcome(
        number=number,
        state=told.state,
        value=told.value,
        reason=told.reason,
        fatal=told.fatal,
        job_dir=str(job_dir),
        flops=int(trained.flops or 0),
        train_seconds=float(trained.wall_seconds or 0.0),
    )


def planned_replay(replay: list[str], result: TrialResult) -> list[str]:
    """A time-budgeted run's replay: the FLOP budget and anneal it fixed, not its seconds."""
    timed = ("trainer.max_flops=", "trainer.anneal=", "trainer.max_seconds=")
    kept = [o for o in replay if not o.startswith(timed)]
    return [*kept, f"trainer.max_flops={result.planned_flops}",
            f"trainer.anneal={result.planned_anneal!r}"]  # fmt: skip


RECORDED = ("tokens", "flops", "wall_seconds", "best_val_loss", "final_val_loss")  # user attrs


def tell(
    study: optuna.Study,
    trial: optuna.Trial,
    outcome: TrialOutcome,
    result: TrialResult,
    job_dir: Path,
) -> None:
    """Record what the job trained (its ``result``) and where it lies (``job_dir``: at home,
    when it was shipped), and tell its outcome."""
    trial.set_user_attr("job_dir", str(job_dir))
    for key in RECORDED:
        value = getattr(result, key)
        if isinstance(value, int | float) and math.isfinite(value):
            trial.set_user_attr(key, value)
    if result.planned_flops is not None:  # a time budget became FLOPs: replay those
        trial.set_user_attr("replay", planned_replay(replay(trial), result))
    if outcome.reason:
        key = "fail_reason" if outcome.state == End.FAIL else "stop_reason"
        trial.set_user_attr(key, outcome.reason)
    if outcome.fatal:
        trial.set_user_attr(FATAL_ATTR, True)
    if outcome.state == End.COMPLETE:
        study.tell(trial, outcome.value)
    else:
        study.tell(trial, state=TrialState[outcome.state])

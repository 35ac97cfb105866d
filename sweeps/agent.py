"""A sweep agent: a long-lived job, started through a Hydra launcher (``hydra/launcher=
submitit_slurm``, ``submitit_local``, ``ray``, ...), that pulls trials from the shared study
until none is left, and runs each one in its own process.

The sweep process decides how many trials the study holds: it enqueues them, as WAITING
trials (``tickets``: no parameters yet; a retry carries its failed trial's). An agent pops one
(Optuna's own claim, atomic in every storage), samples its parameters with the sweep's sampler
(define-by-run, as the local pool does), runs the app's job in a local scratch directory with a
heartbeat going, ships the job's files home through the storage (sweeps/shipment.py) and tells
the outcome. When nothing waits, or the sweep says stop, the agent returns how many trials it
ran. An agent that dies leaves its trial RUNNING without heartbeat: the sweep process fails it
and enqueues a retry with the same parameters, which another agent pops.
"""

from __future__ import annotations

import logging
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from sweeps.internals import storage_of
from sweeps.plan import Plan
from sweeps.policy import PARENT, PLAN_ATTR, BudgetSpec, CountPolicy, TrialMaker
from sweeps.shipment import shipped, unpack
from sweeps.space import SearchSpace
from sweeps.storage import beat
from sweeps.worker import CalibrationJob, TrialJob, TrialRunner

log = logging.getLogger(__name__)
STOP_ATTR = "sweeps:stop"  # study user attr: the sweep process asks its agents to stop
# A budgeted sweep's agents (study user attrs): each one's measured speed, the instant its
# budget clock read 0 (time.time()), and how many generations of agents may leave (the search
# agents are generation 0, the final run's agent 1).
CALIBRATION_ATTR, ZERO_ATTR, RETIRE_ATTR = "sweeps:calibration:", "sweeps:zero", "sweeps:retire"
READY_ATTR = "sweeps:ready:"  # + "<run token>:<agent number>": the agent is up
AGENT_ATTR = "sweeps:agent"  # trial system attr: "<run token>:<agent number>" that runs it
POLL_SECONDS = 0.5  # a budgeted sweep's agent with nothing to run looks again after this
# time.time() of the sweep process's last look at a budgeted sweep: an idle agent that sees no
# look for its patience leaves (its sweep was killed: nobody will retire it).
WATCHED_ATTR = "sweeps:watched"
AGENTS_DIR = ".agents"  # in the sweep directory: the agents' own job directories, and
HOME_FILE = f"{AGENTS_DIR}/home"  # a token that agents which see the directory read
SHIP_MODES = ("auto", "always")


def fetch_parent(study: optuna.Study, job: TrialJob, into: Path) -> Path:
    """The job directory a continuation starts from, unpacked here from the parent's shipped
    files (an agent reads the study, never the sweep directory of another host)."""
    trial = storage_of(study).get_trial(job.trial_id)
    parent = study.get_trials(deepcopy=False)[int(trial.user_attrs[PARENT])]
    if not shipped(parent):  # run by a local worker pool: its directory is where it says
        return Path(str(job.init_from))
    job_dir = into / "parent"
    unpack(parent, job_dir)
    return job_dir


class Heartbeat:
    """Beats the trial's heartbeat every ``interval`` seconds from a thread, while in use."""

    def __init__(self, storage: Any, trial_id: int, interval: float) -> None:
        self._storage, self._trial_id, self._interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="heartbeat")

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                beat(self._storage, self._trial_id)
            except Exception as err:  # noqa: BLE001 - a storage hiccup must not end the trial
                log.warning("heartbeat of trial id %d failed: %s", self._trial_id, err)

    def __enter__(self) -> Heartbeat:
        beat(self._storage, self._trial_id)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=self._interval + 5)


@dataclass
class Agent:
    """The task function that the launcher runs in each agent job.

    Args:
        runner: runs one trial (``sweeps.worker.TrialRunner`` with ``home`` set).
        space: the search space, sampled define-by-run in each popped trial.
        sampler: the sweep's sampler; each agent reseeds its copy.
        heartbeat_interval: seconds between heartbeats of the running trial.
        deadline: ``time.time()`` after which no trial starts (``hydra.sweeper.timeout``).
        home_token: what the sweep wrote in ``HOME_FILE``: an agent that reads it there sees
            the sweep directory (a shared filesystem) and writes its jobs there directly.
        ship: ``always`` ships every job through the storage; ``auto`` only where the sweep
            directory is not seen (``hydra.sweeper.ship_results``).
    """

    runner: TrialRunner
    space: SearchSpace
    sampler: optuna.samplers.BaseSampler
    heartbeat_interval: float
    deadline: float | None = None
    home_token: str = ""
    ship: str = "auto"
    budget: Budgeted | None = None  # a budgeted sweep's agent (hydra.sweeper.budget)
    number: int = -1  # which agent (its job's number), once running

    def __call__(self, cfg: DictConfig) -> int:
        self.number = int(HydraConfig.get().job.num)  # (runner.setup replaces Hydra's state)
        if threading.current_thread() is threading.main_thread():
            # Ctrl-C at the sweep's terminal reaches agents in its process group too
            # (submitit_local): the sweep asks them to stop after their trial (STOP_ATTR).
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.runner.ship = self.ship == "always" or not self._sees_home()
        log.info("agent: jobs %s", "shipped through the storage" if self.runner.ship else
                 f"written to {self.runner.home}")  # fmt: skip
        self.runner.setup()
        study = self.runner.load_study()
        study.sampler = self.sampler
        study.sampler.reseed_rng()  # agents sharing a seed would sample the same points
        maker = TrialMaker(study, self.space, self._compose, pop_only=True)
        if self.budget is not None:
            return self.budget.run(self, study, maker)
        ran = 0
        while not self._should_stop(study):
            job = maker.make(CountPolicy.job_spec)  # a search trial, or a transfer run
            if job is None:
                break  # nothing waits: the sweep's trials are all taken
            self._run(study, job)
            ran += 1
        log.info("agent done: %d trials", ran)
        return ran

    def _run(self, study: optuna.Study, job: TrialJob) -> None:
        # Whose it is: the sweep process fails it at once if this agent's job ends under it.
        mark = f"{self.home_token}:{self.number}"
        storage_of(study).set_trial_system_attr(job.trial_id, AGENT_ATTR, mark)
        with Heartbeat(storage_of(study), job.trial_id, self.heartbeat_interval):
            if job.init_from is None:
                self.runner(job)
                return
            with tempfile.TemporaryDirectory(prefix="tbptt-parent-") as fetched:
                self.runner(replace(job, init_from=str(fetch_parent(study, job, Path(fetched)))))

    def _sees_home(self) -> bool:
        try:
            return (Path(str(self.runner.home)) / HOME_FILE).read_text() == self.home_token
        except OSError:
            return False

    def _should_stop(self, study: optuna.Study) -> bool:
        if self.deadline is not None and time.time() > self.deadline:
            return True
        return bool(study.user_attrs.get(STOP_ATTR))

    def _compose(self, overrides: list[str]) -> DictConfig:
        return self.runner.composer(overrides)


@dataclass
class Budgeted:
    """What an agent of a budgeted sweep does beyond popping trials (see sweeps/launch.py).

    A search agent (generation 0) of a sweep without a plan first measures its own training
    speed on all of its ``cpus`` and records it in the study: the sweep process plans from
    every agent's figure. Then it runs what waits, turning each trial into its job with the
    plan (``BudgetSpec``) and the instant the sweep recorded as its budget clock's zero, and
    waits when nothing does (the phases have gaps: the candidates are chosen once every search
    trial has ended) until the sweep retires its generation. Every job gets every thread the
    agent was given.

    Args:
        cpus: the CPUs the launcher gives this agent.
        generation: 0 for the search agents, 1 for the final run's agent.
        calibration: the run that measures its speed (the sweep's fixed config).
        patience: seconds without a look from the sweep process after which an agent leaves
            between jobs (the sweeper gives ``max(2 x grace_period, 60 s)``).
    """

    cpus: int
    generation: int
    calibration: CalibrationJob
    patience: float = 30.0

    def run(self, agent: Agent, study: optuna.Study, maker: TrialMaker) -> int:
        if PLAN_ATTR not in study.user_attrs and self.generation == 0:
            self._calibrate(agent, study)
        # Up: the sweep waits for the agents that are up to leave (a retired agent that starts
        # later, from an engine's queue, reads this first and leaves without running anything).
        study.set_user_attr(f"{READY_ATTR}{agent.home_token}:{agent.number}", time.time())
        ran, sized = 0, False
        while not self._retired(study):
            attrs = study.user_attrs
            if self._orphaned(attrs):
                log.warning("no look from the sweep process for %.0f s (killed?): leaving; "
                            "its command, run again, resumes the sweep", self.patience)
                break
            if not self._may_run(attrs):
                time.sleep(POLL_SECONDS)
                continue
            if not sized:  # the plan sized the pruner's rungs after this agent loaded it
                agent.runner.size_pruner(study)
                sized = True
            job = maker.make(self.spec(attrs))
            if job is None:
                time.sleep(POLL_SECONDS)
                continue
            agent._run(study, replace(job, threads=self.cpus))
            ran += 1
        log.info("agent done: %d trials", ran)
        return ran

    @staticmethod
    def spec(attrs: dict[str, Any]) -> BudgetSpec:
        zero = float(attrs[ZERO_ATTR])
        return BudgetSpec(Plan.from_dict(attrs[PLAN_ATTR]), lambda seconds: zero + seconds)

    def _may_run(self, attrs: dict[str, Any]) -> bool:
        """Once planned; the final run's agent (launched early, to be up when the final run
        is due) only once the search agents are retired: it runs nothing else."""
        planned = PLAN_ATTR in attrs and ZERO_ATTR in attrs
        return planned and int(attrs.get(RETIRE_ATTR, 0)) >= self.generation

    def _orphaned(self, attrs: dict[str, Any]) -> bool:
        watched = attrs.get(WATCHED_ATTR)
        return isinstance(watched, float) and time.time() - watched > self.patience

    def _retired(self, study: optuna.Study) -> bool:
        attrs = study.user_attrs
        return bool(attrs.get(STOP_ATTR)) or int(attrs.get(RETIRE_ATTR, 0)) > self.generation

    def _calibrate(self, agent: Agent, study: optuna.Study) -> None:
        """This agent's speed: training FLOP/s on all of its CPUs, what its trials get."""
        started = time.time()
        result = agent.runner(replace(self.calibration, threads=self.cpus))
        measured = {"rate": result} if isinstance(result, float) else {"error": str(result)}
        record = {"started": started, **measured}
        study.set_user_attr(f"{CALIBRATION_ATTR}{agent.home_token}:{agent.number}", record)

"""The sweep process's side of a sweep run by agents (sweeps/agent.py) through a Hydra launcher.

``hydra/launcher=submitit_slurm`` (or ``submitit_local``, ``ray``, any launcher but Hydra's
basic one) turns the sweep into: enqueue the study's remaining trials, launch
``hydra.sweeper.n_jobs`` agents through the launcher, then watch the storage until every trial
has ended. Watching means: show progress, unpack the files each agent shipped home, write the
sweep's tables, fail and retry trials whose agent died (stale heartbeat), and launch a fresh
agent when one has ended while trials still wait.

Why agents rather than one launched job per trial: launchers run a batch and wait for all of it
(hydra#3091), and a Slurm job or Ray task per trial pays its start-up per trial; an agent pays
it once and pulls trials as fast as it finishes them.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobStatus
from omegaconf import DictConfig, OmegaConf, open_dict
from optuna.trial import FrozenTrial, TrialState

from sweeps.agent import (
    AGENT_ATTR,
    AGENTS_DIR,
    CALIBRATION_ATTR,
    READY_ATTR,
    RETIRE_ATTR,
    STOP_ATTR,
    WATCHED_ATTR,
)
from sweeps.internals import job_error
from sweeps.ledger import Ledger, counting, phase_of
from sweeps.outputs import SweepOutputs
from sweeps.plan import CANDIDATE, FINAL, START_SECONDS
from sweeps.policy import JOB_ATTRS, AgentBudget, Transfer, counted
from sweeps.progress import Progress
from sweeps.shipment import DamagedShipment, unpack
from sweeps.storage import (
    INTERRUPTED,
    claim,
    fail_trial,
    retry,
    scheme_of,
    stale_trials,
)
from sweeps.worker import FATAL_ATTR, TrialOutcome
from tbptt.contract import End
from tbptt.errors import ConfigError, first_line

log = logging.getLogger(__name__)
BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
NETWORK_STORAGES = ("postgresql", "mysql", "redis")
LOOPBACK = ("127.", "localhost", "::1", "[::1]")
WATCH_SECONDS = 5.0  # how often a budgeted sweep's watcher tells its agents it is there
ENQUEUED_BY = "enqueued_by"  # user attr: the token of the sweep process that enqueued a trial


def launcher_target(config: DictConfig) -> str | None:
    """The selected launcher's class, or None for Hydra's basic one (the local worker pool)."""
    target = OmegaConf.select(config, "hydra.launcher._target_", default=None)
    return None if target in (None, BASIC_LAUNCHER) else str(target)


def engine_of(target: str) -> str:
    """``slurm``, ``ray`` or ``local``: where the launcher's agents may run."""
    name = target.lower()
    if "slurm" in name:
        return "slurm"
    if "ray" in name:
        return "ray"
    return "local"


def slurm_hosts() -> set[str] | None:
    """The node names of the Slurm cluster (None: sinfo is not there or failed)."""
    if shutil.which("sinfo") is None:
        return None
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True,
                             timeout=30, check=True).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return {line.strip() for line in out.splitlines() if line.strip()}


def ray_hosts(launcher: DictConfig) -> set[str] | None:
    """The addresses of the Ray cluster's nodes; a Ray started here (no address): this host."""
    address = OmegaConf.select(launcher, "address", default=None) or os.environ.get("RAY_ADDRESS")
    if address is None:
        return {"localhost"}
    from sweeps.ray_launcher import connect  # as the launcher itself connects

    ray = connect(launcher)
    return {str(node["NodeManagerAddress"]) for node in ray.nodes() if node.get("Alive")}


def agent_hosts(engine: str, launcher: DictConfig) -> set[str] | None:
    """Where the launcher's agents may run (None: unknown, so possibly anywhere)."""
    if engine == "slurm":
        return slurm_hosts()
    if engine == "ray":
        return ray_hosts(launcher)
    return None


CPU_KEYS = {"slurm": "cpus_per_task", "local": "cpus_per_task", "ray": "num_cpus"}


def agent_cpus(engine: str, launcher: DictConfig) -> int:
    """The CPUs the launcher gives each agent (``hydra.launcher.cpus_per_task``, or Ray's
    ``num_cpus``; 1 when unset), no more than this process may use where it runs here."""
    cpus = OmegaConf.select(launcher, CPU_KEYS.get(engine, "cpus_per_task"), default=None)
    here = len(os.sched_getaffinity(0))
    count = max(1, int(cpus or 1))
    return min(count, here) if engine == "local" else count


def node_cpus(engine: str, launcher: DictConfig) -> int:
    """The CPUs of the largest node an agent may run on: a budgeted sweep's final run gets
    one whole (Slurm: ``sinfo``; Ray: the cluster's nodes; else this host)."""
    if engine == "slurm" and shutil.which("sinfo") is not None:
        try:
            out = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True,
                                 timeout=30, check=True).stdout  # fmt: skip
            return max(int(line.strip().rstrip("+")) for line in out.splitlines() if line.strip())
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    if engine == "ray":
        from sweeps.ray_launcher import connect

        nodes = [n for n in connect(launcher).nodes() if n.get("Alive")]
        cpus = [int(n.get("Resources", {}).get("CPU", 0)) for n in nodes]
        if any(cpus):
            return max(cpus)
    return len(os.sched_getaffinity(0))


def whole_node(config: DictConfig, engine: str) -> DictConfig:
    """``config`` with a launcher whose agent is given every CPU of a node (the final run)."""
    node = config.copy()
    with open_dict(node):
        launcher = node.hydra.launcher
        launcher[CPU_KEYS.get(engine, "cpus_per_task")] = node_cpus(engine, launcher)
    return node


def this_host(hosts: set[str]) -> bool:
    name = socket.gethostname()
    names = {name, name.split(".")[0], "localhost", "127.0.0.1"}
    try:
        names.add(socket.gethostbyname(name))
    except OSError:
        pass
    return bool(hosts) and all(h in names or h.startswith(LOOPBACK) for h in hosts)


def check_agent_storage(storage: str | None, engine: str, hosts: set[str] | None) -> None:
    """Before anything is submitted: agents on other hosts must reach the study. A journal or
    SQLite file serves agents on this host only; a server on a loopback address too."""
    if engine == "local" or (hosts is not None and this_host(hosts)):
        return
    where = f"{engine} agents" + (f" on nodes {', '.join(sorted(hosts))}" if hosts else "")
    if storage is None or scheme_of(storage) not in NETWORK_STORAGES:
        what = "a journal file in the sweep directory" if storage is None else storage
        raise ConfigError(
            f"hydra.sweeper.storage: {what} cannot be reached by agents on other hosts "
            f"({where}); give a server they reach, e.g. "
            "postgresql://user@db-host/optuna (PostgreSQL, MySQL or redis://)"
        )
    host = storage.split("://", 1)[1].rpartition("@")[2]
    if host.startswith(LOOPBACK):
        raise ConfigError(
            f"hydra.sweeper.storage: {host.split('/')[0]} is a loopback address, which agents "
            f"on other hosts ({where}) cannot reach: give the database host's name or address"
        )


@dataclass
class Launched:
    """One agent job: its thread waits on the launcher's result."""

    number: int
    generation: int = 0  # a budgeted sweep's: 0 searches, 1 runs the final (sweeps/agent.py)
    launched_at: float = field(default_factory=time.time)
    thread: threading.Thread | None = None
    error: BaseException | None = None

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


@dataclass(kw_only=True)
class AgentPlanning:
    """What a budgeted sweep on agents needs beyond a count sweep (see ``AgentBudget``).

    Args:
        policy: the plan's policy from the agents' calibration records (a re-run: from the
            plan the study holds, with no records).
        planned: the study holds a plan already: the agents do not calibrate.
        final_launcher: launches the final run's agent, given a whole node.
    """

    policy: Callable[[list[dict[str, Any]]], AgentBudget]
    planned: bool
    final_launcher: Any
    calibration_wait: float = 15.0  # after the first agent's record, for the others'


@dataclass(frozen=True, kw_only=True)
class AgentSettings:
    n_trials: int
    n_jobs: int
    max_failures: int | None
    max_retries: int
    grace_period: float
    deadline: float | None  # time.time() after which no agent starts a trial
    grid: dict[str, list[Any]] | None = None  # the grid sampler's points, by key


@dataclass(kw_only=True)
class AgentSweep:
    """Run the study's remaining trials on agents launched through ``launcher``.

    Args:
        study: the shared study (a storage every agent reaches).
        launcher: a Hydra launcher, set up with ``sweeps.agent.Agent`` as its task function.
        settings: counts, limits and liveness (see ``AgentSettings``).
        outputs: the sweep directory's tables.
        transfer, compose: the transfer check (its budget read from a job's config), if on.
    """

    study: optuna.Study
    launcher: Any
    settings: AgentSettings
    outputs: SweepOutputs
    transfer: Transfer | None = None  # once the search has ended, its best trained on longer
    compose: Callable[[list[str]], Any] | None = None  # a job's config (the transfer's budget)
    planning: AgentPlanning | None = None  # a budgeted sweep (hydra.sweeper.budget)
    token: str = ""  # this run's: its agents mark the trials they run with it
    # The sweep's own overrides (`sweep=lr_range`, ...): an agent's job is composed from the
    # command line's hydra overrides and its job's; without these, `hydra.sweeper.*` given on
    # the command line fails in a job whose sweeper a `sweep=` file chose.
    job_overrides: tuple[str, ...] = ()
    failures: list[str] = field(default_factory=list)
    fatal: str | None = None  # a failure every trial would meet (TrialOutcome.fatal)
    _ledger: Ledger = field(init=False, repr=False)
    _agents: list[Launched] = field(default_factory=list)
    _seen: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._ledger = Ledger(self.study)

    def run(self) -> None:
        self.study.set_user_attr(STOP_ATTR, False)
        if self.planning is None:
            self._enqueue()
        self._unpack_earlier()
        progress = Progress(self.settings.n_trials if self.planning is None else None)
        self._ledger.refresh()
        progress.start(self._ledger)
        try:
            if self.planning is None:
                self._watch(progress)
            else:
                BudgetWatch(self, self.planning).run(progress)
        finally:
            progress.close()
        if self.fatal is not None:
            raise ConfigError(self.fatal)

    def _enqueue(self) -> None:
        """WAITING trials up to the study's total: what the agents pop. Their parameters are
        sampled by the agent that pops them; a grid's points are given here (Optuna's grid
        sampler takes an enqueued trial only whole), so no two agents try the same point."""
        trials = self.study.get_trials(deepcopy=False)
        missing = max(0, self.settings.n_trials - counted(trials))
        if self.settings.grid is None:
            points: list[dict[str, Any]] = [{}] * missing
        else:
            points = untried(self.settings.grid, trials)[:missing]
        for point in points:
            self.study.enqueue_trial(point, user_attrs={ENQUEUED_BY: self.token},
                                     skip_if_exists=False)  # fmt: skip

    def _drop_excess(self, trials: list[FrozenTrial]) -> None:
        """Another sweep process on the study may enqueue its trials at the same moment as
        this one: the trials past the total, in number order, that this process enqueued and
        no agent has taken yet are claimed and failed (not counted: ``INTERRUPTED``). Each
        process drops only its own, from one order they all see, so together they keep the
        total once (a look that saw the other's trials half-enqueued is made good by the
        next)."""
        if self._ledger.counted() <= self.settings.n_trials:
            return  # (the ledger's running count: no pass over the trials each look)
        for trial in counting(trials)[self.settings.n_trials :]:
            mine = trial.user_attrs.get(ENQUEUED_BY) == self.token
            if mine and trial.state == TrialState.WAITING and claim(self.study, trial):
                fail_trial(self.study, trial, "not run: another sweep process on the study "
                           "enqueued the total too", its_fault=False)  # fmt: skip

    def _watch(self, progress: Progress) -> None:
        for _ in range(self.settings.n_jobs):
            self._launch()
        while True:
            self._recover()
            self._ledger.refresh()  # one look: every decision below
            self._drop_excess(self._ledger.trials)
            for outcome in self._collect(self._ledger.trials):
                progress.finished(self._ledger, outcome)
            if self._too_many_failures() or self.fatal is not None:
                self.stop()
            stopping = self._stopping()
            waiting, running = self._ledger.waiting(), self._ledger.running()
            if not running and (stopping or not waiting):
                if stopping or not self._enqueue_transfer():
                    break
                continue  # the transfer runs wait: agents are launched for them
            if waiting and not stopping:
                self._replace_ended()
            time.sleep(0.5)
        self._join()

    def _enqueue_transfer(self) -> bool:
        """The transfer runs, once every search trial has ended (enqueued once per study)."""
        if self.transfer is None or self.compose is None:
            return False
        return self.transfer.enqueue(self.study, self.compose)

    def _launch(self, launcher: Any = None, generation: int = 0) -> Launched:
        agent = Launched(number=len(self._agents), generation=generation)
        agent.thread = threading.Thread(
            target=self._wait_for, args=(agent, launcher or self.launcher), daemon=True,
            name=f"agent-{agent.number}",
        )  # fmt: skip
        self._agents.append(agent)
        agent.thread.start()
        return agent

    def _wait_for(self, agent: Launched, launcher: Any) -> None:
        overrides = [*self.job_overrides, f"hydra.sweep.subdir={AGENTS_DIR}/{agent.number}"]
        try:
            (ret,) = launcher.launch([overrides], initial_job_idx=agent.number)
            if ret.status == JobStatus.FAILED:
                raise job_error(ret) or RuntimeError("the agent's job failed")
        except BaseException as err:  # noqa: BLE001 - its trial is recovered by heartbeat
            agent.error = err
            log.warning("agent %d ended: %s: %s", agent.number, type(err).__name__,
                        first_line(err))  # fmt: skip

    def _replace_ended(self, generation: int = 0, wanted: int | None = None) -> None:
        """Agents for the trials that wait (``wanted`` of ``generation`` alive, by default
        n_jobs); agents that failed to run count against a limit (a launcher that cannot
        start jobs ends the sweep with its error)."""
        launcher = self.launcher if generation == 0 else self._launcher_of(generation)
        mine = [a for a in self._agents if a.generation == generation]
        alive = sum(a.alive for a in mine)
        failed = [a for a in self._agents if a.error is not None and not a.alive]
        limit = self.settings.n_jobs * (self.settings.max_retries + 2)
        for _ in range((self.settings.n_jobs if wanted is None else wanted) - alive):
            if len(failed) >= limit:
                if alive == 0:
                    last = failed[-1].error
                    raise AgentsFailed(
                        f"{len(failed)} agents ended with trials still waiting; last: "
                        f"{type(last).__name__}: {last}"
                    )
                return
            if generation:
                log.info("launching the final run's agent, given a whole node")
            elif mine:
                log.info("an agent ended with trials still waiting: launching another")
            self._launch(launcher, generation)

    def _launcher_of(self, generation: int) -> Any:
        assert self.planning is not None
        return self.planning.final_launcher

    def _recover(self) -> list[FrozenTrial]:
        """Trials whose agent died (no heartbeat for the grace period, or its job ended while
        the trial ran): FAIL, then retried; returns those failed. A budgeted sweep's final run
        is planned again instead (``BudgetWatch``)."""
        lost = []
        for trial in self._lost_trials():
            if not fail_trial(self.study, trial, "its agent stopped (no heartbeat)"):
                continue
            lost.append(trial)
            if self.planning is not None and phase_of(trial) == FINAL:
                continue
            retried = retry(self.study, trial, self.settings.max_retries, JOB_ATTRS)
            log.warning("trial %d lost its agent: failed%s", trial.number,
                        ", retried" if retried else "")  # fmt: skip
        return lost

    def _lost_trials(self) -> list[FrozenTrial]:
        """Running trials without a heartbeat for the grace period, and those whose agent's
        job (launched by this process) has ended: killed, cancelled, lost with its node."""
        ended = {str(a.number) for a in self._agents if not a.alive and a.thread is not None}
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        stale = {t.number for t in stale_trials(self.study, self.settings.grace_period)}
        return [t for t in running if t.number in stale or self._ran_by(t, ended)]

    def _ran_by(self, trial: FrozenTrial, agents: set[str]) -> bool:
        token, _, number = str(trial.system_attrs.get(AGENT_ATTR, "")).partition(":")
        return token == self.token and number in agents

    def _unpack_earlier(self) -> None:
        """Trials that ended before this run (an interrupted sweep's agents went on)."""
        for trial in self.study.get_trials(deepcopy=False):
            if trial.state.is_finished():
                self._seen.add(trial.number)
                self._unpack(trial)
        self.outputs.load_finished(self.study)
        self.outputs.write(self.study)

    def _collect(self, trials: list[FrozenTrial]) -> list[TrialOutcome]:
        """Unpack, record and report the trials that ended since the last look."""
        outcomes = []
        for trial in trials:
            if not trial.state.is_finished() or trial.number in self._seen:
                continue
            self._seen.add(trial.number)
            self._unpack(trial)
            self.outputs.record(self.study, trial.number, self._ledger)
            outcome = outcome_of(trial)
            if outcome.state == End.FAIL and not trial.user_attrs.get(INTERRUPTED):
                self.failures.append(f"trial {trial.number}: {outcome.reason}")
            if outcome.fatal and self.fatal is None:  # every trial would fail so: stop
                self.fatal = f"trial {trial.number}: {outcome.reason}"
            outcomes.append(outcome)
        return outcomes

    @staticmethod
    def _unpack(trial: FrozenTrial) -> None:
        """The trial's files, home; damaged ones are said and skipped: the trial's row and
        values, in the study, stand."""
        job_dir = trial.user_attrs.get("job_dir")
        try:
            if job_dir:
                unpack(trial, Path(job_dir))
        except DamagedShipment as err:
            log.warning("%s; its metric tables are left out", err)

    def _stopping(self) -> bool:
        deadline = self.settings.deadline
        past = deadline is not None and time.time() > deadline
        return past or bool(self.study.user_attrs.get(STOP_ATTR))

    def _too_many_failures(self) -> bool:
        limit = self.settings.max_failures
        return limit is not None and len(self.failures) >= limit

    def stop(self) -> None:
        """Ask the agents to start no more trials (they finish the ones they run)."""
        if not self.study.user_attrs.get(STOP_ATTR):
            self.study.set_user_attr(STOP_ATTR, True)

    def _join(self) -> None:
        """Agents exit once nothing waits; one still queued by its engine is left to start
        and find nothing to do."""
        end = time.monotonic() + self.settings.grace_period
        for agent in self._agents:
            if agent.thread is not None:
                agent.thread.join(timeout=max(0.0, end - time.monotonic()))
            if agent.alive:
                log.info("agent %d has not ended yet (still queued?); not waiting", agent.number)


class BudgetWatch:
    """A budgeted sweep watched from the sweep process, its phases run by agents.

    Without a plan yet, ``n_jobs`` search agents are launched and each measures its speed; the
    plan is made from their records (``AgentPlanning.policy``). Then, each look: trials whose
    agent died are failed and retried (a final run is planned again for the time left); ended
    trials are collected; the policy enqueues what its phase wants; dead search agents are
    replaced while the search and candidates run. When the final run is due, the search agents
    retire, and once they have left, the final run is enqueued and one agent launched for it
    with a whole node (``final_launcher``). It ends when the final run has ended.
    """

    def __init__(self, sweep: AgentSweep, planning: AgentPlanning) -> None:
        self.sweep, self.planning = sweep, planning
        self.study = sweep.study
        self.final_failures = 0
        self._watched = 0.0

    def run(self, progress: Progress) -> None:
        sweep = self.sweep
        self._look()
        policy = self._policy()
        self.study.set_user_attr(RETIRE_ATTR, 1 if policy.phase == FINAL else 0)
        while True:
            self._look()
            for trial in sweep._recover():
                if phase_of(trial) == FINAL:
                    self._final_lost(policy)
            sweep._ledger.refresh()
            for outcome in sweep._collect(sweep._ledger.trials):
                progress.finished(sweep._ledger, outcome)
                policy.observe(sweep._ledger.trials[outcome.number])
            if sweep._too_many_failures() or sweep.fatal is not None:
                sweep.stop()
            if sweep._stopping() or not self._step(policy) or self._overtime(policy):
                break
            time.sleep(0.5)
        policy.tick()
        self.study.set_user_attr(RETIRE_ATTR, 2)
        sweep._join()

    def _look(self) -> None:
        """Tell the agents this process watches (every ``WATCH_SECONDS``): idle agents of a
        killed sweep leave once they see no look for their patience."""
        if time.time() - self._watched >= WATCH_SECONDS:
            self._watched = time.time()
            self.study.set_user_attr(WATCHED_ATTR, self._watched)

    def _step(self, policy: AgentBudget) -> bool:
        """One look's decisions; False once the sweep has nothing left to run."""
        if policy.phase != FINAL:
            running = len(self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
            policy.step(max(0, self._alive(0) - running))
            if policy.phase == CANDIDATE:
                self._final_agent()  # up (or queued for the node) when the final is due
            if policy.phase != FINAL:
                self.sweep._replace_ended(0)
                return True
        else:
            policy.tick()  # (step does in the other phases): a re-run resumes from here
        if policy.final_due:
            self._final_agent()
            self.study.set_user_attr(RETIRE_ATTR, 1)  # the search agents leave the node
            if self._up(0):
                return True  # (one still queued by its engine leaves as soon as it starts)
            policy.enqueue_final(self._final_start())
        state = policy.final_state()
        if state == "waiting":
            self._final_agent()
        return state in ("waiting", "running")

    def _final_agent(self) -> None:
        self.sweep._replace_ended(1, wanted=1)

    def _overtime(self, policy: AgentBudget) -> bool:
        """Past the budget and its margin: give up what waits or runs, and end the sweep with
        the best it has."""
        if not policy.overtime(self.sweep.settings.grace_period):
            return False
        log.warning("the budget (%.0f s) is spent and the final run is %s: ending the sweep "
                    "with the best trial so far", policy.plan.budget,
                    policy.final_state() or "not started")  # fmt: skip
        policy.give_up()
        self.sweep.stop()
        return True

    def _final_start(self) -> float:
        """Seconds until the final run's agent can start it: none once it is up, else what
        this run's agents took from their launch to their first job."""
        return 0.0 if self._up(1) else self._agent_start()

    def _up(self, generation: int) -> int:
        """Agents of ``generation`` alive and started (not waiting in an engine's queue)."""
        prefix = f"{READY_ATTR}{self.sweep.token}:"
        up = {k[len(prefix):] for k in self.study.user_attrs if k.startswith(prefix)}
        mine = [a for a in self.sweep._agents if a.generation == generation and a.alive]
        return sum(str(a.number) in up for a in mine)

    def _policy(self) -> AgentBudget:
        if self.planning.planned:
            return self.planning.policy([])
        for _ in range(self.sweep.settings.n_jobs):
            self.sweep._launch()
        return self.planning.policy(self._calibrations())

    def _calibrations(self) -> list[dict[str, Any]]:
        """Every search agent's speed record, or those in by ``calibration_wait`` seconds
        after the first; an agent that died measuring is replaced."""
        prefix, first = f"{CALIBRATION_ATTR}{self.sweep.token}:", None
        while True:
            attrs = self.study.user_attrs
            found = [v for k, v in attrs.items() if k.startswith(prefix)]
            errors = [str(v["error"]) for v in found if "error" in v]
            if errors:
                raise AgentsFailed(f"an agent could not measure its training speed: {errors[0]}")
            first = first or (time.monotonic() if found else None)
            patience = self.planning.calibration_wait
            waited = first is not None and time.monotonic() - first > patience
            if len(found) >= self.sweep.settings.n_jobs or waited:
                return found
            self._look()
            self.sweep._replace_ended(0)
            time.sleep(0.5)

    def _agent_start(self) -> float:
        """Seconds from an agent's launch to its first job, as this run's agents took."""
        launched = {str(a.number): a.launched_at for a in self.sweep._agents}
        prefix = f"{CALIBRATION_ATTR}{self.sweep.token}:"
        seen = [
            float(v["started"]) - launched[k[len(prefix):]]
            for k, v in self.study.user_attrs.items()
            if k.startswith(prefix) and k[len(prefix):] in launched and "started" in v
        ]  # fmt: skip
        return max(seen, default=START_SECONDS)

    def _final_lost(self, policy: AgentBudget) -> None:
        self.final_failures += 1
        if self.final_failures > self.sweep.settings.max_retries + 1:
            log.warning("the final run lost its agent %d times: not run again",
                        self.final_failures)  # fmt: skip
            return
        log.warning("the final run lost its agent: planned again for the time left")
        policy.replan_final(self._agent_start())

    def _alive(self, generation: int) -> int:
        return sum(a.alive for a in self.sweep._agents if a.generation == generation)


def untried(grid: dict[str, list[Any]], trials: list[FrozenTrial]) -> list[dict[str, Any]]:
    """The grid's points no trial holds (run, running or waiting), in the grid's order."""
    held = [dict(t.params) or dict(t.system_attrs.get("fixed_params", {})) for t in trials]
    points = (dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values()))
    return [point for point in points if point not in held]


class AgentsFailed(RuntimeError):
    """Every agent ended (its job failed or was cancelled) while trials still waited."""


def _value(trial: FrozenTrial) -> float | tuple[float, ...] | None:
    if trial.state != TrialState.COMPLETE or trial.values is None:
        return None
    return trial.values[0] if len(trial.values) == 1 else tuple(trial.values)


def outcome_of(trial: FrozenTrial) -> TrialOutcome:
    attrs = trial.user_attrs
    start, end = trial.datetime_start, trial.datetime_complete
    return TrialOutcome(
        number=trial.number,
        state=End(trial.state.name),
        value=_value(trial),
        reason=attrs.get("stop_reason") or attrs.get("fail_reason"),
        fatal=bool(attrs.get(FATAL_ATTR)),
        job_dir=str(attrs.get("job_dir") or ""),
        flops=int(attrs.get("flops") or 0),
        seconds=(end - start).total_seconds() if start and end else 0.0,
    )

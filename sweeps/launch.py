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
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from sweeps.agent import AGENTS_DIR, STOP_ATTR
from sweeps.internals import job_error
from sweeps.ledger import Ledger
from sweeps.outputs import SweepOutputs
from sweeps.policy import JOB_ATTRS, Transfer, counted
from sweeps.progress import Progress
from sweeps.shipment import DamagedShipment, unpack
from sweeps.storage import INTERRUPTED, fail_trial, retry, scheme_of, stale_trials
from sweeps.worker import FATAL_ATTR, TrialOutcome
from tbptt.contract import End
from tbptt.errors import ConfigError, first_line

log = logging.getLogger(__name__)
BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
NETWORK_STORAGES = ("postgresql", "mysql", "redis")
LOOPBACK = ("127.", "localhost", "::1", "[::1]")


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
    thread: threading.Thread | None = None
    error: BaseException | None = None

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


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
    failures: list[str] = field(default_factory=list)
    fatal: str | None = None  # a failure every trial would meet (TrialOutcome.fatal)
    _ledger: Ledger = field(init=False, repr=False)
    _agents: list[Launched] = field(default_factory=list)
    _seen: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._ledger = Ledger(self.study)

    def run(self) -> None:
        self.study.set_user_attr(STOP_ATTR, False)
        self._enqueue()
        self._unpack_earlier()
        progress = Progress(self.settings.n_trials)
        self._ledger.refresh()
        progress.start(self._ledger)
        try:
            self._watch(progress)
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
            self.study.enqueue_trial(point, skip_if_exists=False)

    def _watch(self, progress: Progress) -> None:
        for _ in range(self.settings.n_jobs):
            self._launch()
        while True:
            self._recover()
            self._ledger.refresh()  # one look: every decision below
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

    def _launch(self) -> None:
        agent = Launched(number=len(self._agents))
        agent.thread = threading.Thread(
            target=self._wait_for, args=(agent,), daemon=True, name=f"agent-{agent.number}"
        )
        self._agents.append(agent)
        agent.thread.start()

    def _wait_for(self, agent: Launched) -> None:
        overrides = [f"hydra.sweep.subdir={AGENTS_DIR}/{agent.number}"]
        try:
            (ret,) = self.launcher.launch([overrides], initial_job_idx=agent.number)
            if ret.status == JobStatus.FAILED:
                raise job_error(ret) or RuntimeError("the agent's job failed")
        except BaseException as err:  # noqa: BLE001 - its trial is recovered by heartbeat
            agent.error = err
            log.warning("agent %d ended: %s: %s", agent.number, type(err).__name__,
                        first_line(err))  # fmt: skip

    def _replace_ended(self) -> None:
        """Agents for the trials that wait; agents that failed to run count against a limit
        (a launcher that cannot start jobs ends the sweep with its error)."""
        alive = sum(a.alive for a in self._agents)
        failed = [a for a in self._agents if a.error is not None and not a.alive]
        limit = self.settings.n_jobs * (self.settings.max_retries + 2)
        for _ in range(self.settings.n_jobs - alive):
            if len(failed) >= limit:
                if alive == 0:
                    last = failed[-1].error
                    raise AgentsFailed(
                        f"{len(failed)} agents ended with trials still waiting; last: "
                        f"{type(last).__name__}: {last}"
                    )
                return
            log.info("an agent ended with trials still waiting: launching another")
            self._launch()

    def _recover(self) -> None:
        """Trials whose agent died (no heartbeat for the grace period): FAIL, then retried."""
        for trial in stale_trials(self.study, self.settings.grace_period):
            if fail_trial(self.study, trial, "its agent stopped (no heartbeat)"):
                retried = retry(self.study, trial, self.settings.max_retries, JOB_ATTRS)
                log.warning("trial %d lost its agent: failed%s", trial.number,
                            ", retried" if retried else "")  # fmt: skip

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

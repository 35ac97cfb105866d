"""The Optuna sweeper: ``python -m tbptt.train -m hydra/sweeper=optuna sweep=default``.

The sweep process samples each trial's parameters (define-by-run, so a parameter is sampled only
when the config composed for the chosen group options has its key) and hands the trial to a
free worker the moment one is free: no batch barrier. Workers run the trial's Hydra job, report
the validation loss at every evaluation to the pruner, and tell the study the outcome. The study
lives in ``hydra.sweeper.storage``; re-running the same command continues it up to
``n_trials`` in total. With a Hydra launcher selected (``hydra/launcher=submitit_slurm``,
``ray``, ...) the trials run on agents launched through it instead (sweeps/launch.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import secrets
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.core.singleton import Singleton
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from sweeps.agent import HOME_FILE, ZERO_ATTR, Agent, Budgeted
from sweeps.compose import Composer, is_group
from sweeps.config import other_plugin
from sweeps.gpus import check_gpu_slots, default_jobs, gpu_count, gpu_env
from sweeps.internals import storage_of
from sweeps.launch import (
    AgentPlanning,
    AgentSettings,
    AgentsFailed,
    AgentSweep,
    agent_cpus,
    agent_hosts,
    check_agent_storage,
    engine_of,
    launcher_target,
    whole_node,
)
from sweeps.ledger import Ledger
from sweeps.outputs import SweepOutputs, claim_sweep_dir
from sweeps.plan import Clock, Plan, Timeline, calibration_seconds, make_plan, parse_duration
from sweeps.policy import (
    JOB_ATTRS,
    PLAN_ATTR,
    USED_ATTR,
    AgentBudget,
    BudgetPolicy,
    CountPolicy,
    Transfer,
    TrialMaker,
)
from sweeps.pool import DISK_FULL, Died, Finished, WorkerPool
from sweeps.progress import Progress, result_text
from sweeps.settings import check_settings, directions_of, failure_limit, search_space_params
from sweeps.space import (
    SearchSpace,
    check_keys,
    check_resumable,
    check_values,
    parse_space,
)
from sweeps.storage import (
    INTERRUPTED,
    StorageUnavailable,
    SweepLock,
    beat,
    fail_trial,
    open_storage,
    retry,
    stale_trials,
)
from sweeps.worker import (
    PRUNER_ATTR,
    CalibrationJob,
    StudyRef,
    TrialJob,
    TrialOutcome,
    TrialRunner,
)
from tbptt import contract
from tbptt.cli import one_line
from tbptt.contract import End
from tbptt.errors import ConfigError
from tbptt.keys import differences, flatten

log = logging.getLogger(__name__)


RUNNER_FILE = ".runner.pkl"  # the workers' pickled runner, in the (locked) sweep directory


class SweepError(RuntimeError):
    """The sweep stopped (too many failures); recorded results are kept."""


@dataclass(frozen=True, kw_only=True)
class Settings:
    n_trials: int
    n_jobs: int
    max_failures: int | None
    all_may_fail: bool  # max_failure_rate=1.0: a sweep whose every trial failed still ends 0
    failure_rule: str | None  # the setting that gave max_failures, when not max_failures
    max_retries: int
    timeout: float | None
    heartbeat_interval: float
    grace_period: float
    shared: bool  # the storage may hold other processes' trials (not the default journal)
    budget: float | None  # seconds for the whole sweep (sweeps/plan.py); None: n_trials decides


class OptunaSweeper(Sweeper):
    """Hydra sweeper running Optuna trials in parallel worker processes, with early pruning.

    Args:
        sampler, pruner: ``_target_`` nodes for ``hydra.utils.instantiate``.
        direction: ``minimize`` or ``maximize``.
        study_name, storage: the study (storage null: a journal file in the sweep directory).
        n_trials: total trials of the study, across re-runs.
        n_jobs: worker processes (null: one per core, or one per GPU for CUDA runs).
        threads_per_worker: torch threads in each worker.
        trials_per_gpu: workers sharing one GPU (CUDA runs; with Ray, a GPU share per agent).
        trial_logs: show the trials' log lines on the console too (else their job's log only).
        max_failures: stop after this many failed trials (null: never).
        max_retries: re-runs of a trial whose worker died.
        timeout: stop starting trials after this many seconds (null: never).
        heartbeat_interval, grace_period: liveness of running trials in shared storage.
        params: the search space, ``key: override-grammar string``.

    Example (a shell command; ``tests/sweeps`` runs such sweeps)::

        python -m tbptt.train -m hydra/sweeper=optuna sweep=default hydra.sweeper.n_trials=40
    """

    def __init__(self, **kwargs: Any) -> None:
        self.cfg = OmegaConf.create(kwargs)
        check_settings(self.cfg)
        self.directions = directions_of(self.cfg.direction)
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None
        self.config: DictConfig | None = None
        self._composer: Composer | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config
        if self.cfg.study_name is None:  # hydra-optuna-sweeper's default: a name of our own
            self.cfg.study_name = str(config.hydra.job.name)

    def sweep(self, arguments: list[str]) -> Any:
        try:
            return self._sweep(arguments)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        except (SweepError, StorageUnavailable) as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)
        except OSError as err:
            if err.errno not in DISK_FULL:
                raise
            print(
                f"error: disk full writing {err.filename or 'a file'} ({err.strerror}): "
                "stopped; what was recorded is kept: free space, then re-run the same command "
                "to resume",
                file=sys.stderr,
            )
            sys.exit(1)
        except KeyboardInterrupt:
            print("\ninterrupted; re-run the same command to resume", file=sys.stderr)
            sys.exit(130)

    def compose(self, overrides: list[str]) -> DictConfig:
        """The config of a job with ``overrides``; memoized (read-only): the space checks and
        every trial's sampling compose the same group options again and again."""
        if self._composer is None:
            assert self.hydra_context is not None and self.config is not None
            self._composer = Composer.of(self.hydra_context.config_loader, self.config)
        return self._composer(overrides)

    def check(self, cfg: DictConfig) -> None:
        """The app's own config check (tbptt/contract.py ``checked_by``), if it has one."""
        assert self.task_function is not None
        contract.check_config(self.task_function, cfg)

    def is_group(self, key: str) -> bool:
        assert self.hydra_context is not None
        return is_group(self.hydra_context.config_loader, key)

    def _sweep(self, arguments: list[str]) -> optuna.Study:
        assert self.config is not None
        # TPE's `group` is experimental and says so on every sampler; the choice is deliberate.
        # (Set here, not at import: Hydra imports plugins inside warnings.catch_warnings().)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        params = search_space_params(self.cfg.search_space)  # the plugin's older form
        params.update({str(k): str(v) for k, v in (self.cfg.params or {}).items()})
        space = parse_space(params, arguments, self.is_group)
        space = replace(space, custom=self.cfg.custom_search_space)
        say_other_plugin()
        self._say_objectives()
        self.check(self.compose(list(space.fixed)))  # bad values fail here, before any worker
        self._say_threads(self.compose(list(space.fixed)))
        check_keys(space, self.compose)
        check_values(space, self.compose, self.check)
        if self.cfg.budget is not None:
            check_planned_keys(space, self.compose(list(space.fixed)))
        launcher = launcher_target(self.config)
        if launcher is not None:
            self._check_agents(launcher)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        with SweepLock(sweep_dir):
            about = {"question": self.cfg.question, "answer": self.cfg.answer}
            claim_sweep_dir(sweep_dir, str(self.cfg.study_name), self.cfg.storage, about)
            study = self._study(sweep_dir, space)
            outputs = SweepOutputs(sweep_dir, self.cfg.storage)
            outputs.load_finished(study)
            if launcher is None:
                self._recover(study, all_running=self.cfg.storage is None)
                self._run(study, space, sweep_dir, outputs)
            else:  # agents of an earlier run may still run trials: only stale ones are failed
                self._recover(study, all_running=False)
                self._run_agents(study, space, sweep_dir, outputs)
            outputs.write(study)
        answer = Ledger(study)
        answer.refresh()
        print(result_text(answer), file=sys.stderr)
        return study

    def _study(self, sweep_dir: Path, space: SearchSpace) -> optuna.Study:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        storage = open_storage(self.cfg.storage, sweep_dir, float(self.cfg.storage_patience))
        study = open_study(
            storage,
            str(self.cfg.study_name),
            self.directions,
            sampler=self._sampler(space, self.cfg.sampler.seed),
            pruner=built("pruner", self._pruner_node()),
        )
        trials = study.get_trials(deepcopy=False)
        check_resumable(stored_space(trials), space, study.study_name)
        swept = [p.key for p in space.params]
        check_same_fixed(study, fixed_settings(self.compose(list(space.fixed))), swept)
        existing = len(trials)
        if existing == 0:
            enqueue_first(study, space, self.cfg.enqueue)
        seed = sampler_seed(self.cfg.sampler.seed, existing, self.cfg.storage)
        if seed != self.cfg.sampler.seed:
            study.sampler = self._sampler(space, seed)
        return study

    def _sampler(self, space: SearchSpace, seed: int | None) -> optuna.samplers.BaseSampler:
        if self.cfg.sampler._target_ == "optuna.samplers.GridSampler":
            return AskTellGridSampler(grid_space(space), seed=seed)
        return built("sampler", self.cfg.sampler, seed=seed)  # type: ignore[no-any-return]

    def _pruner_node(self) -> DictConfig:
        """The pruner config; none in a multi-objective study (Optuna prunes one objective)."""
        if len(self.directions) > 1:
            return OmegaConf.create({"_target_": "optuna.pruners.NopPruner"})
        return self.cfg.pruner  # type: ignore[no-any-return]

    def _say_objectives(self) -> None:
        if len(self.directions) > 1 and "NopPruner" not in str(self.cfg.pruner._target_):
            log.warning(
                "hydra.sweeper.direction names %d objectives: Optuna cannot prune multi-"
                "objective trials, so this sweep runs every trial to its end (the pruner %s "
                "is not used)", len(self.directions), self.cfg.pruner._target_,
            )  # fmt: skip

    def _recover(self, study: optuna.Study, all_running: bool) -> None:
        grace = -1.0 if all_running else float(self.cfg.grace_period)
        recover(study, grace, int(self.cfg.max_retries), alone=all_running)

    def _say_threads(self, cfg: DictConfig) -> None:
        """A sweep sets its trials' torch threads (its workers share the cores; a budget plan
        gives its last runs more): an app's own thread setting does not apply in it."""
        threads = OmegaConf.select(cfg, "trainer.threads", default=None)
        if threads is not None and threads != self.cfg.threads_per_worker:
            log.warning(
                "trainer.threads=%s does not apply in a sweep: hydra.sweeper.threads_per_worker"
                "=%s sets each trial's threads", threads, self.cfg.threads_per_worker,
            )  # fmt: skip

    def _device(self) -> str:
        assert self.config is not None
        return str(OmegaConf.select(self.config, "trainer.device", default="cpu"))

    def _settings(self) -> Settings:
        device, cfg = self._device(), self.cfg
        gpus, per_gpu = 0 if device == "cpu" else gpu_count(), int(cfg.trials_per_gpu)
        n_jobs = cfg.n_jobs or default_jobs(device, gpus, os.cpu_count() or 1, per_gpu)
        assert self.config is not None
        if launcher_target(self.config) is None:  # agents get their GPUs from their engine
            check_gpu_slots(int(n_jobs), gpus, per_gpu, device)
        return Settings(
            n_trials=int(cfg.n_trials),
            n_jobs=int(n_jobs),
            max_failures=failure_limit(cfg.max_failures, cfg.max_failure_rate, int(cfg.n_trials)),
            all_may_fail=cfg.max_failure_rate is not None and cfg.max_failure_rate >= 1.0,
            failure_rule=None if cfg.max_failure_rate is None else (
                f"hydra.sweeper.max_failure_rate={cfg.max_failure_rate} of "
                f"{cfg.n_trials} trials"),
            max_retries=int(cfg.max_retries),
            timeout=cfg.timeout,
            heartbeat_interval=float(cfg.heartbeat_interval),
            grace_period=float(cfg.grace_period),
            shared=cfg.storage is not None,
            budget=None if cfg.budget is None else parse_duration(cfg.budget),
        )

    def _runner(self, sweep_dir: Path, home: bool = False) -> TrialRunner:
        """What runs trials in a worker; ``home``: in an agent, shipping them to ``sweep_dir``."""
        assert self.hydra_context and self.config and self.task_function
        cfg = self.cfg
        ref = StudyRef(
            study_name=cfg.study_name,
            storage=cfg.storage,
            sweep_dir=str(sweep_dir),
            patience=float(cfg.storage_patience),
            pruner=OmegaConf.to_container(self._pruner_node()),  # type: ignore[arg-type]
        )
        return TrialRunner(
            hydra_context=self.hydra_context,
            config=self.config,
            task_function=self.task_function,
            singleton_state=Singleton.get_state(),
            study_ref=ref,
            threads=int(self.cfg.threads_per_worker),
            trial_logs=bool(self.cfg.trial_logs),
            home=str(sweep_dir) if home else None,
        )

    def _check_agents(self, launcher: str) -> None:
        """What a sweep on agents cannot do, and a storage they cannot reach: said before
        anything is submitted."""
        assert self.config is not None
        engine = engine_of(launcher)
        hosts = agent_hosts(engine, self.config.hydra.launcher)
        check_agent_storage(self.cfg.storage, engine, hosts)

    def _run_agents(
        self, study: optuna.Study, space: SearchSpace, sweep_dir: Path, outputs: SweepOutputs
    ) -> None:
        """The trials on agents launched through ``hydra.launcher`` (sweeps/launch.py)."""
        settings = self._settings()
        sweep = self._agent_sweep(study, space, sweep_dir, outputs, settings)
        try:
            sweep.run()
        except KeyboardInterrupt:
            sweep.stop()
            outputs.write(study)
            print("\ninterrupted: the agents finish the trials they run, then stop; re-run "
                  "the same command to collect them and resume", file=sys.stderr)  # fmt: skip
            sys.exit(130)
        except AgentsFailed as err:
            raise SweepError(str(err)) from None
        check_failures(study, sweep.failures, settings)

    def _agent_sweep(
        self,
        study: optuna.Study,
        space: SearchSpace,
        sweep_dir: Path,
        outputs: SweepOutputs,
        settings: Settings,
    ) -> AgentSweep:
        assert self.hydra_context is not None and self.config is not None
        timeout = settings.timeout
        deadline = None if timeout is None else time.time() + timeout - process_age()
        token = secrets.token_hex(16)
        home = sweep_dir / HOME_FILE
        home.parent.mkdir(parents=True, exist_ok=True)
        home.write_text(token)
        agent = Agent(
            runner=self._runner(sweep_dir.resolve(), home=True),
            space=space,
            sampler=study.sampler,
            heartbeat_interval=settings.heartbeat_interval,
            deadline=deadline,
            home_token=token,
            ship=str(self.cfg.ship_results),
        )
        planning = None
        if settings.budget is not None:
            agent, planning = self._agent_planning(agent, study, space, settings)
        launcher = self._launcher(agent, self.config)
        gridded = isinstance(study.sampler, optuna.samplers.GridSampler)
        limits = AgentSettings(
            n_trials=settings.n_trials,
            n_jobs=settings.n_jobs,
            max_failures=settings.max_failures,
            max_retries=settings.max_retries,
            grace_period=settings.grace_period,
            deadline=deadline,
            grid=grid_space(space) if gridded else None,
        )
        return AgentSweep(
            study=study,
            launcher=launcher,
            settings=limits,
            outputs=outputs,
            transfer=self._transfer(),
            compose=self.compose,
            planning=planning,
            token=token,
            job_overrides=tuple(space.fixed),
        )

    def _launcher(self, agent: Agent, config: DictConfig) -> Any:
        assert self.hydra_context is not None
        return Plugins.instance().instantiate_launcher(
            hydra_context=self.hydra_context, task_function=agent, config=config
        )

    def _agent_planning(
        self, agent: Agent, study: optuna.Study, space: SearchSpace, settings: Settings
    ) -> tuple[Agent, AgentPlanning]:
        """A budgeted sweep's agents: search agents with the CPUs the launcher gives each (they
        measure their speed first if the study has no plan), and a launcher of the final
        run's agent, given a whole node."""
        assert self.config is not None and settings.budget is not None
        launcher = self.config.hydra.launcher
        engine = engine_of(str(launcher._target_))
        calibration = CalibrationJob(tuple(space.fixed), threads=1,
                                     seconds=calibration_seconds(settings.budget))  # fmt: skip
        cpus = agent_cpus(engine, launcher)
        patience = max(2 * settings.grace_period, 60.0)  # idle agents of a killed sweep leave
        search = replace(agent, budget=Budgeted(cpus=cpus, generation=0, calibration=calibration,
                                                patience=patience))  # fmt: skip
        node = whole_node(self.config, engine)
        cpus = agent_cpus(engine, node.hydra.launcher)
        final = replace(agent, budget=Budgeted(cpus=cpus, generation=1, calibration=calibration,
                                               patience=patience))  # fmt: skip
        clock = Clock(float(study.user_attrs.get(USED_ATTR, 0.0)) + process_age())
        planning = AgentPlanning(
            policy=lambda records: self._agent_budget(study, space, settings, clock, records),
            planned=PLAN_ATTR in study.user_attrs,
            final_launcher=self._launcher(final, node),
        )
        return search, planning

    def _agent_budget(
        self,
        study: optuna.Study,
        space: SearchSpace,
        settings: Settings,
        clock: Clock,
        records: list[dict[str, Any]],
    ) -> AgentBudget:
        """The policy of a budgeted sweep on agents: the stored plan, or one made from the
        agents' speed records; the instant its budget clock reads 0, for the agents."""
        assert settings.budget is not None
        if records:
            # Speed-up 1: the final run's agent has other CPUs than these; it measures its own.
            rate = statistics.fmean(float(r["rate"]) for r in records)
            self._new_plan(study, settings, len(records), rate, 1.0, clock)
        plan = replace(Plan.from_dict(study.user_attrs[PLAN_ATTR]), budget=settings.budget)
        study.set_user_attr(PLAN_ATTR, plan.as_dict())
        study.set_user_attr(ZERO_ATTR, time.time() - clock.elapsed())
        maker = TrialMaker(study, space, self.compose)
        return AgentBudget(maker, Timeline(plan, clock), settings.n_trials, settings.n_jobs)

    def _run(
        self, study: optuna.Study, space: SearchSpace, sweep_dir: Path, outputs: SweepOutputs
    ) -> None:
        settings = self._settings()
        device = self._device()
        gpus = 0 if device == "cpu" else gpu_count()
        pool = WorkerPool(
            self._runner(sweep_dir), settings.n_jobs, lambda s: gpu_env(s, gpus, device),
            payload=sweep_dir / RUNNER_FILE,
        )  # fmt: skip
        scheduler: Scheduler | None = None
        try:
            policy = self._policy(study, space, settings, pool)
            scheduler = Scheduler(study, policy, pool, settings, outputs)
            scheduler.run()
        except ConfigError:  # a trial's own, or the custom search space's: stop cleanly
            pool.close(kill=True)
            if scheduler is not None:
                scheduler.abandon("the sweep stopped on a config error")
            raise
        except KeyboardInterrupt:
            pool.close(kill=True)
            if scheduler is not None:
                scheduler.interrupted()
            sys.exit(130)
        except OSError:  # a full disk (see sweep()): its running trials are re-run next time
            pool.close(kill=True)
            raise
        pool.close()

    def _policy(
        self, study: optuna.Study, space: SearchSpace, settings: Settings, pool: WorkerPool
    ) -> CountPolicy | BudgetPolicy:
        maker = TrialMaker(study, space, self.compose)
        clock = Clock(float(study.user_attrs.get(USED_ATTR, 0.0)) + process_age())
        if settings.budget is None:
            grid = None
            if isinstance(study.sampler, optuna.samplers.GridSampler):
                grid = math.prod(len(v) for v in grid_space(space).values())
            return CountPolicy(maker, settings.n_trials, settings.timeout, clock, grid,
                               self._transfer())  # fmt: skip
        plan = self._plan(study, settings, pool, clock, list(space.fixed))
        return BudgetPolicy(maker, Timeline(plan, clock), settings.n_trials, settings.n_jobs)

    def _transfer(self) -> Transfer | None:
        top_k = int(self.cfg.transfer.top_k)
        return Transfer(top_k, float(self.cfg.transfer.factor)) if top_k else None

    def _plan(
        self,
        study: optuna.Study,
        settings: Settings,
        pool: WorkerPool,
        clock: Clock,
        fixed: list[str],
    ) -> Plan:
        """The stored plan of a re-run (its rungs stay; a new budget moves only the end), or
        a new one from rates measured on the workers."""
        assert settings.budget is not None
        stored = study.user_attrs.get(PLAN_ATTR)
        if stored is not None:
            return replace(Plan.from_dict(stored), budget=settings.budget)
        rate, speedup = calibrate(pool, fixed, calibration_seconds(settings.budget))
        return self._new_plan(study, settings, pool.size, rate, speedup, clock)

    def _new_plan(
        self,
        study: optuna.Study,
        settings: Settings,
        workers: int,
        rate: float,
        speedup: float,
        clock: Clock,
    ) -> Plan:
        """The plan from measured speeds, stored in the study with the pruner it sized."""
        assert settings.budget is not None
        pruner = str(self.cfg.pruner.get("_target_", "")) if self.cfg.pruner else None
        plan = make_plan(
            settings.budget, self.cfg.plan, workers, rate, speedup, clock.elapsed(), pruner
        )
        study.set_user_attr(PLAN_ATTR, plan.as_dict())
        study.set_user_attr(PRUNER_ATTR, planned_pruner(self.cfg.pruner, plan))
        log.info(
            "plan: search to %.0f s, candidates to %.0f s, final to %.0f s; search trials of "
            "%.3g FLOPs (%.3g FLOP/s per worker measured, x%.2f on every thread)",
            plan.search_end, plan.candidates_end, plan.budget, plan.trial_flops, rate, speedup,
        )  # fmt: skip
        return plan


def open_study(storage: Any, name: str, directions: list[str], **kwargs: Any) -> optuna.Study:
    """The study ``name``, loaded (writing nothing, so a refused re-run leaves the storage as
    it was) or created; a stored study must minimize or maximize as this run asks."""
    try:
        study = optuna.load_study(study_name=name, storage=storage, **kwargs)
    except KeyError:  # no such study yet (or another process creates it right now)
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            directions=directions,  # type: ignore[arg-type]
            load_if_exists=True,
            **kwargs,
        )
    stored = [d.name.lower() for d in study.directions]
    if stored != directions:
        asked, was = (d[0] if len(d) == 1 else f"[{', '.join(d)}]" for d in (directions, stored))
        raise ConfigError(
            f"hydra.sweeper.direction={asked}, but the study {name!r} was created to "
            f"{was}: restore it, or start a new study in another hydra.sweep.dir"
        )
    return study


def say_other_plugin() -> None:
    """Hydra's own Optuna sweeper installed too: say once which one runs (see
    ``sweeps.config.register``)."""
    version = other_plugin()
    if version is not None:
        log.warning(
            "hydra-optuna-sweeper %s is installed too: hydra/sweeper=optuna is tbptt-sweeps' "
            "sweeper, with its own sampler options (its configs run here unchanged); to run "
            "that plugin's sweeper instead, uninstall tbptt-sweeps from this environment",
            version,
        )


def built(key: str, node: DictConfig, **kwargs: Any) -> Any:
    """``hydra.sweeper.<key>`` (a sampler or pruner node) instantiated; a value that only the
    Optuna class checks (``population_size: 1``, an unknown option) is a one-line error."""
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except Exception as err:  # noqa: BLE001 - instantiate wraps the class's own error
        cause = err.__cause__ or err
        raise ConfigError(
            f"hydra.sweeper.{key} ({node.get('_target_')}): {one_line(cause)}"
        ) from None


def stored_space(trials: list[FrozenTrial]) -> dict[str, BaseDistribution]:
    return {key: dist for t in trials for key, dist in t.distributions.items()}


FIXED_ATTR = "sweeps:fixed"  # what the study's trials share: a re-run must keep it
FREE_KEYS = ("hydra", "trainer.device", "trainer.threads")  # may differ: the same results


def fixed_settings(cfg: DictConfig) -> dict[str, Any]:
    """The composed config every trial starts from, flat (``trainer.max_tokens``: 20000),
    without ``FREE_KEYS``."""
    flat = flatten(OmegaConf.to_container(cfg, resolve=False))
    kept = {k: v for k, v in flat.items() if not _under(k, FREE_KEYS)}
    return json.loads(json.dumps(kept, default=str))  # type: ignore[no-any-return]


def _under(key: str, roots: tuple[str, ...]) -> bool:
    return any(key == r or key.startswith(r + ".") for r in roots)


def check_same_fixed(study: optuna.Study, settings: dict[str, Any], swept: list[str]) -> None:
    """Refuse a re-run (or a sharing process) whose fixed settings differ from the study's: its
    trials would train under others, and their values would not compare. Keys swept then or now
    are the search space's business (``check_resumable``), not compared here."""
    stored = study.user_attrs.get(FIXED_ATTR)
    if stored is None:
        study.set_user_attr(FIXED_ATTR, {"settings": settings, "swept": swept})
        return
    roots = tuple(stored["swept"]) + tuple(swept)
    before = {k: v for k, v in stored["settings"].items() if not _under(k, roots)}
    after = {k: v for k, v in settings.items() if not _under(k, roots)}
    if before != after:
        raise ConfigError(
            f"the study {study.study_name!r} ran with {differences(before, after)}: its "
            "trials would not compare with this run's; restore those settings, or start a new "
            "study in another hydra.sweep.dir"
        )


def enqueue_first(study: optuna.Study, space: SearchSpace, points: Any) -> None:
    """``hydra.sweeper.enqueue``: parameter sets the search tries before sampling any."""
    keys = {p.key: p for p in space.params}
    pinned = {o.partition("=")[0] for o in space.fixed}  # a value given on the command line wins
    for i, point in enumerate(OmegaConf.to_container(points) or []):  # type: ignore[union-attr]
        where = f"hydra.sweeper.enqueue[{i}]"
        if not isinstance(point, dict):
            raise ConfigError(f"{where} must be a mapping of swept keys to values, got {point!r}")
        point = {k: v for k, v in point.items() if k not in pinned}
        for key, value in point.items():
            if key not in keys:
                raise ConfigError(f"{where}: {key!r} is not a swept key ({', '.join(keys)})")
            if not admits(keys[key].distribution, value):
                raise ConfigError(f"{where}: {key}={value!r} is outside {keys[key].distribution}")
        study.enqueue_trial(point, skip_if_exists=True)


def admits(dist: Any, value: Any) -> bool:
    if isinstance(dist, CategoricalDistribution):
        return value in dist.choices
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return bool(dist.low <= value <= dist.high)


def sampler_seed(seed: int | None, existing: int, storage: str | None) -> int | None:
    """The seed of this process's sampler. A new study in this process alone keeps ``seed``, so
    an uninterrupted sweep is reproducible. A re-run (the study has trials) or a process sharing
    its study gets a seed of its own, derived from ``seed``: with the same seed it would replay
    the parameters the first run already tried."""
    if seed is None or (existing == 0 and storage is None):
        return seed
    salt = (existing, os.getpid()) if storage is not None else (existing,)
    digest = hashlib.sha256(repr((seed, *salt)).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def calibrate(pool: WorkerPool, overrides: list[str], seconds: float) -> tuple[float, float]:
    """FLOP/s of one thread while every worker trains, and the speed-up of one worker on
    every thread, the others idle (what the final run gets)."""
    one = CalibrationJob(tuple(overrides), threads=1, seconds=seconds)
    rates = run_everywhere(pool, [one] * pool.size)
    rate = sum(rates) / len(rates)
    if pool.size == 1:
        return rate, 1.0
    alone = run_everywhere(pool, [replace(one, threads=pool.size)])[0]
    return rate, max(1.0, alone / rate)


def run_everywhere(pool: WorkerPool, jobs: list[CalibrationJob]) -> list[float]:
    for slot, job in enumerate(jobs):
        pool.submit(job, slot)
    results: list[float] = []
    while pool.busy():
        for event in pool.wait(timeout=5.0):
            if isinstance(event, Died):
                raise SweepError(f"a worker died measuring its speed (exit {event.exitcode})")
            if isinstance(event.result, BaseException):
                raise SweepError(str(event.result))
            results.append(float(event.result))
    return results


def planned_pruner(pruner: DictConfig, plan: Plan) -> dict[str, Any]:
    """The pruner config, with ASHA's ``min_resource: auto`` sized to the search rung: rungs
    at r0 / rf^2, r0 / rf and r0 (FLOPs)."""
    node: dict[str, Any] = OmegaConf.to_container(pruner, resolve=True)  # type: ignore[assignment]
    if str(node.get("_target_", "")).endswith("SuccessiveHalvingPruner"):
        if node.get("min_resource") == "auto":
            factor = int(node.get("reduction_factor", 3))
            node["min_resource"] = max(1, plan.trial_flops // factor**2)
    return node


_ABSENT = object()
PLANNED_KEYS = (
    "trainer.max_tokens", "trainer.max_flops", "trainer.max_seconds", "trainer.eval_every_tokens",
    "trainer.eval_every_flops", "trainer.anneal", "trainer.resume",
)  # fmt: skip


def check_planned_keys(space: SearchSpace, cfg: DictConfig) -> None:
    """With a budget the plan sets each trial's budget through the trainer's keys: the app
    must have them (this project's trainer does), and a value given for one would be lost."""
    missing = [k for k in PLANNED_KEYS if OmegaConf.select(cfg, k, default=_ABSENT) is _ABSENT]
    if missing:
        raise ConfigError(
            f"hydra.sweeper.budget: the app's config has no {missing[0]}: a budgeted sweep sets "
            f"each trial's compute through {', '.join(PLANNED_KEYS)} (the trainer of "
            "tbptt.train); drop hydra.sweeper.budget and give hydra.sweeper.n_trials"
        )
    keys = [p.key for p in space.params] + [o.partition("=")[0].lstrip("+~") for o in space.fixed]
    for key in keys:
        if key in PLANNED_KEYS:
            raise ConfigError(
                f"{key} is set by hydra.sweeper.budget's plan (every trial's compute comes "
                "from the budget); drop it, or drop hydra.sweeper.budget"
            )


def process_age() -> float:
    """Seconds since this process started (the budget counts start-up too); 0 if unknown."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # after boot
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return max(0.0, uptime - started)


class AskTellGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler without its ``study.stop()`` once every point has started: that
    works only inside ``study.optimize`` and raises under ask-and-tell. ``CountPolicy`` ends
    the sweep when the grid is covered instead."""

    def after_trial(self, *args: Any, **kwargs: Any) -> None:
        pass


def grid_space(space: SearchSpace) -> dict[str, list[Any]]:
    """The grid's points by key: choices, and every value of a stepped range (int or float)."""
    grid = {}
    for param in space.params:
        dist = param.distribution
        if isinstance(dist, CategoricalDistribution):
            grid[param.key] = list(dist.choices)
        elif isinstance(dist, IntDistribution):
            grid[param.key] = list(range(dist.low, dist.high + 1, dist.step))
        elif isinstance(dist, FloatDistribution) and dist.step is not None:
            low, step = Decimal(str(dist.low)), Decimal(str(dist.step))
            count = int((Decimal(str(dist.high)) - low) / step) + 1
            grid[param.key] = [float(low + i * step) for i in range(count)]
        else:
            raise ConfigError(
                f"hydra.sweeper.params.{param.key}: the grid sampler needs choice() or a "
                "range() (a finite set of points), not a continuous interval"
            )
    return grid


def recover(study: optuna.Study, grace_period: float, max_retries: int, alone: bool) -> None:
    """Trials left RUNNING by a dead sweep process: FAIL, then re-enqueue their parameters.

    ``alone`` (no other process uses the study): also retry interrupted trials that have no
    retry yet, so a sweep killed between the two steps loses none on its next run. In a shared
    study only the process whose ``fail_trial`` won retries, so none is retried twice.
    """
    for trial in stale_trials(study, grace_period):
        if fail_trial(study, trial, "its sweep process stopped while it ran", its_fault=False):
            retry(study, trial, max_retries, JOB_ATTRS)
            log.warning("trial %d was left running: marked FAIL and retried", trial.number)
    if alone:
        for trial in unretried_interruptions(study.get_trials(deepcopy=False)):
            retry(study, trial, max_retries, JOB_ATTRS)


def unretried_interruptions(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    retried = {t.user_attrs.get("retried_trial") for t in trials}
    return [
        t
        for t in trials
        if t.state == TrialState.FAIL and t.user_attrs.get(INTERRUPTED) and t.number not in retried
    ]


def check_failures(study: optuna.Study, failures: list[str], settings: Settings) -> None:
    """A sweep that stopped for its failures, or where every trial failed (unless
    ``max_failure_rate=1.0`` tolerates that), ends in an error."""
    limit = settings.max_failures
    if limit is not None and len(failures) >= limit:
        rule = settings.failure_rule or f"hydra.sweeper.max_failures={limit}"
        raise SweepError(f"stopped after {len(failures)} failed trials ({rule}); "
                         f"last: {failures[-1]}")  # fmt: skip
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    if failures and not settings.all_may_fail:
        if not study.get_trials(deepcopy=False, states=finished):
            raise SweepError(f"no trial finished: {len(failures)} failed; last: {failures[-1]}")


class Scheduler:
    """Keeps every worker busy with what the policy gives, asynchronously, until it gives
    nothing more and no job runs."""

    def __init__(
        self,
        study: optuna.Study,
        policy: CountPolicy | BudgetPolicy,
        pool: WorkerPool,
        settings: Settings,
        outputs: SweepOutputs,
    ) -> None:
        self.study, self.policy, self.pool = study, policy, pool
        self.settings, self.outputs = settings, outputs
        self.ledger = policy.ledger  # refreshed by the policy before it decides, and here
        self.failures: list[str] = []
        self.progress = Progress(settings.n_trials if settings.budget is None else None)
        self.last_beat = self.last_recovery = 0.0

    def run(self) -> None:
        self.ledger.refresh()
        self.progress.start(self.ledger)
        try:
            self._loop()
        finally:  # an error message, too, starts below the bar, on a plain console
            self.progress.close()
        self.policy.tick()
        check_failures(self.study, self.failures, self.settings)

    def _loop(self) -> None:
        while True:
            self._keep_alive()
            self._fill()
            if self.pool.busy() == 0:
                if not self._others_running():
                    return
                time.sleep(min(1.0, self.settings.heartbeat_interval))
                continue
            for event in self.pool.wait(timeout=1.0):
                self._handle(event)

    def _keep_alive(self) -> None:
        """Heartbeats of this sweep's running trials; in shared storage, fail abandoned ones.

        The sweep process beats for its workers: they live and die with it (a worker that dies
        alone is seen at once through its process sentinel).
        """
        now = time.monotonic()
        if now - self.last_beat >= self.settings.heartbeat_interval:
            for job in self.pool.jobs():
                beat(storage_of(self.study), job.trial_id)
            self.policy.tick()
            self.last_beat = now
        if self.settings.shared and now - self.last_recovery >= self.settings.grace_period / 2:
            recover(self.study, self.settings.grace_period, self.settings.max_retries, False)
            self.last_recovery = now

    def _others_running(self) -> bool:
        """In shared storage, trials other processes run: wait for them to end, or to go stale
        (their process died) and be retried here, before leaving the study short."""
        if not self.settings.shared:
            return False
        return bool(self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))

    def _too_many_failures(self) -> bool:
        limit = self.settings.max_failures
        return limit is not None and len(self.failures) >= limit

    def _fill(self) -> None:
        while self.pool.free_slots() and not self._too_many_failures():
            job = self.policy.next_job(self.pool.busy())
            if job is None:
                return
            self.pool.submit(job)

    def _handle(self, event: Finished | Died) -> None:
        outcome = self._worker_died(event) if isinstance(event, Died) else event.result
        self.policy.finished(event.job, outcome)
        self.ledger.refresh()  # the worker has told the study
        self._record(outcome)

    def _record(self, outcome: TrialOutcome) -> None:
        if outcome.state == End.FAIL:
            self.failures.append(f"trial {outcome.number}: {outcome.reason}")
        if outcome.job_dir:
            self.outputs.record(self.study, outcome.number, self.ledger)
        self.progress.finished(self.ledger, outcome)
        if outcome.fatal:  # every trial would fail the same way: stop at the first
            raise ConfigError(f"trial {outcome.number}: {outcome.reason}")

    def _worker_died(self, event: Died) -> TrialOutcome:
        job: TrialJob = event.job
        code = event.exitcode
        reason = (
            f"worker killed by signal {-code}"
            if code is not None and code < 0
            else (f"worker exited with code {code}")
        ) + (f": {event.reason}" if event.reason else "")
        trial = storage_of(self.study).get_trial(job.trial_id)
        if fail_trial(self.study, trial, reason):
            retry(self.study, trial, self.settings.max_retries, JOB_ATTRS)
        return TrialOutcome(number=job.number, state=End.FAIL, reason=reason)

    def abandon(self, reason: str) -> None:
        """The sweep stops now: fail its running trials (a re-run retries them) and write
        its tables."""
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if fail_trial(self.study, trial, reason, its_fault=False):
                retry(self.study, trial, self.settings.max_retries, JOB_ATTRS)
        self.policy.tick()
        self.outputs.write(self.study)
        self.progress.close()
        self.ledger.refresh()

    def interrupted(self) -> None:
        """Ctrl-C: stop, and say how to resume."""
        self.abandon("interrupted (Ctrl-C)")
        print(
            f"\ninterrupted: {self.progress.summary(self.ledger)}\n"
            "resume by running the same command again",
            file=sys.stderr,
        )

"""What a sweep starts next: ``CountPolicy`` (``n_trials`` trials) or ``BudgetPolicy`` (a
wall-clock budget spent in phases, see ``sweeps/plan.py``).

The scheduler asks its policy for a job whenever a worker is free and ends when no job runs and
the policy has none to give. A policy answers with a ``TrialJob``, or ``None`` (nothing to start
now). A sampled config that does not validate fails in its worker, before the job runs
(``sweeps/worker.py``): checking it here would compose every trial's config twice, and the
sweep process is the one process every trial waits for.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeps.internals import storage_of, trial_id
from sweeps.ledger import PHASE, Ledger, counting, phase_of
from sweeps.plan import (
    CANDIDATE,
    END_SECONDS,
    FINAL,
    LATE,
    SEARCH,
    START_SECONDS,
    TRANSFER,
    Clock,
    Observed,
    Plan,
    Timeline,
)
from sweeps.space import SearchSpace, sample, to_overrides
from sweeps.storage import fail_trial, pop_waiting
from sweeps.worker import SCORE_ATTRS, THREADS_ATTR, TrialJob, TrialOutcome
from tbptt.errors import ConfigError

log = logging.getLogger(__name__)
USED_ATTR = "sweeps:used_seconds"  # the budget clock, saved in the study for re-runs
PLAN_ATTR = "sweeps:plan"  # study attr: a budgeted sweep's plan, kept for its re-runs
# A continuation resumes its parent's checkpoint within its time: its replay trains from scratch.
NOT_REPLAYED = ("trainer.resume=", "trainer.max_seconds=")
PARENT, EXTRA = "parent", "extra"  # user attrs of enqueued continuations (and PHASE)
JOB_ATTRS = (PHASE, PARENT, EXTRA, "init_from", "threads", "score", "score_file", "target_flops")
Next = TrialJob | None
Spec = Callable[[dict[str, Any]], tuple[list[str], dict[str, Any]]]  # attrs -> overrides, job


def counted(trials: list[FrozenTrial]) -> int:
    """Search trials that count towards ``n_trials`` (``sweeps.ledger.counts_towards_total``);
    the sweep process keeps the same count up to date in its ``Ledger``."""
    return len(counting(trials))


def done(trials: list[FrozenTrial]) -> int:
    """Finished search trials as ``n_trials`` counts them (the progress bar's count): a
    failure that is re-run is not one, and neither is a trial still running or waiting."""
    unfinished = sum(1 for t in trials if not t.state.is_finished() and phase_of(t) == SEARCH)
    return counted(trials) - unfinished


def flops_overrides(max_flops: int, eval_every: int) -> list[str]:
    """A trial budget in FLOPs, replacing any budget in tokens."""
    return [
        "trainer.max_tokens=null",
        f"trainer.max_flops={max_flops}",
        "trainer.eval_every_tokens=null",
        f"trainer.eval_every_flops={eval_every}",
    ]


# What a continuation's stored overrides may say: its budget and cadence, and that it resumes.
# The storage is data: an override there naming anything else (a class to instantiate, an
# interpolation) was not written by a sweep, and is refused.
_STORED = re.compile(
    r"trainer\.(max_tokens|max_flops|max_seconds|eval_every_tokens|eval_every_flops|anneal|"
    r"resume)=(null|true|false|[0-9][0-9.e+-]*)"
)
SCORE_FILES = ("checkpoint.pt", "best.pt")


def stored_extra(attrs: dict[str, Any]) -> list[str]:
    """A continuation's extra overrides, as its trial's user attrs hold them, checked."""
    extra = [str(o) for o in attrs.get(EXTRA, [])]
    for override in extra:
        if not _STORED.fullmatch(override):
            raise ConfigError(
                f"a continuation's stored overrides hold {override!r}, which no sweep writes "
                "(only trainer budgets); the study's storage was changed by hand: refused"
            )
    if attrs.get("score_file", SCORE_FILES[0]) not in SCORE_FILES:
        raise ConfigError(f"a continuation's stored score_file {attrs['score_file']!r} is not "
                          f"one of {', '.join(SCORE_FILES)}: refused")  # fmt: skip
    return extra


def last_per_key(overrides: list[str]) -> list[str]:
    """Each key's last override only (a continuation's budget replaces the study's), so the
    command that replays a trial names every key once."""
    keys = [o.partition("=")[0].lstrip("+~") for o in overrides]
    return [o for i, o in enumerate(overrides) if keys[i] not in keys[i + 1 :]]


class TrialMaker:
    """Asks the study for a trial (a new one, or an enqueued retry or continuation), samples
    its parameters and turns it into a job.

    ``compose`` composes a config from overrides; sampling composes only the group options
    (``sweeps.space.sample``), so a memoized ``compose`` composes each combination once."""

    def __init__(
        self,
        study: optuna.Study,
        space: SearchSpace,
        compose: Callable[[list[str]], Any],
        pop_only: bool = False,
    ) -> None:
        self.study, self.space, self.compose = study, space, compose
        self.pop_only = pop_only  # an agent's: it runs enqueued trials only (sweeps/agent.py)

    def make(self, spec: Spec) -> TrialJob | None:
        """The next trial's job; None when ``pop_only`` and no trial waits."""
        trial = pop_waiting(self.study) if self.pop_only else self.study.ask()
        if trial is None:
            return None
        try:
            values = sample(trial, self.space, self.compose)
            extra, job = spec(trial.user_attrs)
        except ConfigError as err:  # custom_search_space's (each trial would meet it), or a
            self.fail(trial, f"error: {err}")  # continuation the storage holds, refused
            raise
        overrides = last_per_key([*self.space.fixed, *to_overrides(values), *extra])
        trial.set_user_attr("overrides", overrides)
        replay = [o for o in overrides if not o.startswith(NOT_REPLAYED)]
        if replay != overrides:  # (sweeps.outputs.replay reads the overrides otherwise)
            trial.set_user_attr("replay", replay)
        return TrialJob(number=trial.number, trial_id=trial_id(trial), overrides=tuple(overrides),
                        **job)  # fmt: skip

    def fail(self, trial: optuna.Trial, reason: str) -> None:
        """End a trial that will not run (a waiting one the plan no longer wants)."""
        trial.set_user_attr("fail_reason", reason)
        self.study.tell(trial, state=TrialState.FAIL)


class CountPolicy:
    """Trials until the study holds ``n_trials`` (retried failures not counted), until
    ``timeout`` seconds have passed, or until every point of a grid (``grid_size`` of them)
    has started; then, with a ``transfer`` setting, its best trials trained on longer."""

    def __init__(
        self,
        maker: TrialMaker,
        n_trials: int,
        timeout: float | None,
        clock: Clock,
        grid_size: int | None = None,
        transfer: Transfer | None = None,
    ) -> None:
        self.maker, self.n_trials, self.timeout, self.clock = maker, n_trials, timeout, clock
        self.grid_size, self._grid_done_said, self._timeout_said = grid_size, False, False
        self.transfer = transfer
        self.ledger = Ledger(maker.study)  # what the scheduler reads too

    def next_job(self, busy: int) -> Next:
        if self.timeout is not None and self.clock.elapsed() > self.timeout:
            self._say_timeout()
            return None
        self.ledger.refresh()
        if self.ledger.waiting():  # retries come first
            return self.maker.make(self.job_spec)
        if self.ledger.counted() < self.n_trials and not self._grid_done(self.ledger.trials):
            return self.maker.make(self.job_spec)
        if busy or self.transfer is None:
            return None  # the ranking is known once every search trial has ended
        if self.transfer.enqueue(self.maker.study, self.maker.compose):
            return self.maker.make(self.job_spec)
        return None

    def _say_timeout(self) -> None:
        if self._timeout_said:
            return
        self._timeout_said = True
        self.ledger.refresh()
        log.warning(
            "hydra.sweeper.timeout=%gs reached: no more trials start (%d of %d counted); "
            "re-run the same command to go on", self.timeout, self.ledger.counted(),
            self.n_trials,
        )  # fmt: skip

    @staticmethod
    def job_spec(attrs: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
        """A trial's extra overrides and job fields, from its user attrs: a transfer run
        continues its parent, unpruned; a search trial has none."""
        if attrs.get(PHASE) != TRANSFER:
            return [], {}
        return stored_extra(attrs), {"phase": TRANSFER, "prune": False,
                                     "init_from": attrs.get("init_from")}  # fmt: skip

    def _grid_done(self, trials: list[FrozenTrial]) -> bool:
        if self.grid_size is None:
            return False
        started = {t.system_attrs.get("grid_id") for t in trials} - {None}
        if len(started) < self.grid_size:
            return False
        if not self._grid_done_said:  # once: the scheduler asks again while trials finish
            log.info("all %d points of the grid are tried: the sweep ends", self.grid_size)
            self._grid_done_said = True
        return True

    def finished(self, job: TrialJob, outcome: TrialOutcome) -> None:
        pass

    def tick(self) -> None:
        pass


BUDGET_KEYS = ("max_tokens", "max_flops", "max_seconds")  # trainer keys a transfer scales


class Transfer:
    """The check against short-horizon bias: the ``top_k`` best complete search trials, each
    continued from its checkpoint to ``factor`` times its budget (trained from scratch when it
    kept none), without pruning. Enqueued once per study, so a re-run does not repeat them.

    Args:
        top_k: how many of the best search trials (>= 1).
        factor: the longer budget over the search trials' own (> 1).

    Example:
        >>> from omegaconf import OmegaConf
        >>> study = optuna.create_study()
        >>> study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)
        >>> job = {"trainer": {"max_tokens": 1000}}  # what each trial's overrides compose to
        >>> Transfer(top_k=2, factor=5).enqueue(study, lambda overrides: OmegaConf.create(job))
        True
        >>> [t.user_attrs["extra"] for t in study.get_trials(states=(TrialState.WAITING,))]
        [['trainer.max_tokens=5000'], ['trainer.max_tokens=5000']]
    """

    def __init__(self, top_k: int, factor: float) -> None:
        if top_k < 1:
            raise ConfigError(
                f"hydra.sweeper.transfer.top_k must be >= 1 (0: no transfer check), got {top_k}"
            )
        if not (math.isfinite(factor) and factor > 1):
            raise ConfigError(f"hydra.sweeper.transfer.factor must be > 1, got {factor}")
        self.top_k, self.factor = top_k, factor

    def enqueue(self, study: optuna.Study, compose: Callable[[list[str]], Any]) -> bool:
        """Enqueue the transfer runs; False when they were enqueued before, when a trial still
        runs (in a shared study, another process's), or when fewer than 2 trials completed."""
        trials = study.get_trials(deepcopy=False)
        if any(phase_of(t) == TRANSFER for t in trials):
            return False
        if any(t.state == TrialState.RUNNING for t in trials):
            return False  # another process's search trial: the ranking is not known yet
        sign = 1.0 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1.0
        done = [t for t in trials if phase_of(t) == SEARCH and t.state == TrialState.COMPLETE]
        best = sorted(done, key=lambda t: sign * float(t.value or 0.0))[: self.top_k]
        if len(best) < 2:
            log.warning("transfer check skipped: %d complete trial(s), it needs 2", len(best))
            return False
        for trial in best:
            study.enqueue_trial(trial.params, user_attrs=self._attrs(trial, compose),
                                skip_if_exists=False)  # fmt: skip
        log.info("transfer check: trials %s trained on to %gx their budget",
                 [t.number for t in best], self.factor)  # fmt: skip
        return True

    def _attrs(self, trial: FrozenTrial, compose: Callable[[list[str]], Any]) -> dict[str, Any]:
        trainer = compose(list(trial.user_attrs.get("overrides", []))).trainer
        extra = [
            f"trainer.{key}={self._scaled(key, trainer[key])}"
            for key in BUDGET_KEYS
            if trainer.get(key) is not None
        ]
        attrs: dict[str, Any] = {PHASE: TRANSFER, PARENT: trial.number}
        job_dir = trial.user_attrs.get("job_dir")
        if job_dir and (Path(job_dir) / "checkpoint.pt").is_file():
            attrs["init_from"] = job_dir  # continue it: the first 1/factor is already trained
            extra.append("trainer.resume=true")
        return {**attrs, EXTRA: extra}

    def _scaled(self, key: str, value: float) -> str:
        scaled = value * self.factor
        return f"{scaled:.6g}" if key == "max_seconds" else str(int(round(scaled)))


class BudgetSpec:
    """A budgeted sweep's job for a trial, from its user attrs: a search trial trains r0
    FLOPs until the search ends; a continuation resumes its parent as its attrs say.

    Args:
        plan: the phases and the search rung.
        wall_at: the ``time.time()`` at which the budget clock reads a given second (the
            local pool's clock, or, on agents, the instant the sweep recorded as its zero).
    """

    def __init__(self, plan: Plan, wall_at: Callable[[float], float]) -> None:
        self.plan, self.wall_at = plan, wall_at

    def __call__(self, attrs: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
        phase, plan = attrs.get(PHASE, SEARCH), self.plan
        if phase == SEARCH:
            extra = flops_overrides(plan.trial_flops, plan.eval_every_flops)
            return extra, {"deadline": self.wall_at(plan.search_end),
                           "target_flops": plan.trial_flops}  # fmt: skip
        job: dict[str, Any] = {
            "phase": phase,
            "prune": False,  # continuations are compared by the plan, not by the pruner
            "init_from": attrs["init_from"],
            "threads": attrs.get("threads"),
            "score": tuple(attrs.get("score", ())),
            "score_file": attrs.get("score_file", "checkpoint.pt"),
        }
        if phase == CANDIDATE:
            deadline = self.wall_at(plan.candidate_deadline())
            job.update(deadline=deadline, target_flops=attrs["target_flops"])
        if phase == FINAL and "train_end" in attrs:
            return self._on_time(stored_extra(attrs), attrs), job
        return stored_extra(attrs), job

    def _on_time(self, extra: list[str], attrs: dict[str, Any]) -> list[str]:
        """A final run that starts later than planned (its agent waited for a node, or was
        replaced) still ends when planned (``train_end`` on the budget clock): it trains for
        the seconds left, annealing over the same share of them."""
        end, planned, start = (_stored_seconds(attrs, k)
                               for k in ("train_end", "train_seconds", "start_wall"))  # fmt: skip
        left = self.wall_at(end) - time.time() - START_SECONDS
        if left > planned - 1.0:
            return extra
        left = max(0.0, left)
        seconds = start + left
        anneal = self.plan.anneal * left / seconds if seconds > 0 else 0.0
        log.info("the final run starts %.0f s late: it trains %.0f s", planned - left, left)
        budget = {"trainer.max_seconds": f"{seconds:.6g}", "trainer.anneal": f"{anneal:.6g}"}
        kept = [o for o in extra if o.partition("=")[0] not in budget]
        return [*kept, *(f"{key}={value}" for key, value in budget.items())]


def _stored_seconds(attrs: dict[str, Any], key: str) -> float:
    value = attrs.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"the final run's stored {key} is {value!r}, not a number of seconds; "
                          "the study's storage was changed by hand: refused")  # fmt: skip
    return float(value)


class BudgetPolicy:
    """Search, train the best candidates on, train the winner long: all within the plan's
    budget (see sweeps/plan.py). Continuations are enqueued trials with their parent's
    parameters; their attrs say what to continue and with which budget, so a killed sweep
    re-runs them alike.

    Args:
        maker: turns trials into jobs.
        timeline: the plan and its clock.
        n_trials: at most this many search trials.
        workers: worker processes (the final run takes all their threads).
    """

    def __init__(self, maker: TrialMaker, timeline: Timeline, n_trials: int, workers: int):
        self.maker, self.timeline, self.n_trials, self.workers = maker, timeline, n_trials, workers
        self.ledger = Ledger(maker.study)  # what the scheduler reads too
        self.plan: Plan = timeline.plan
        self.phase = self._phase_now()
        self._shared_threads = 1
        self.final_start = 0.0  # seconds before the final run's job starts (an agent's launch)
        if self.phase == FINAL:
            self._replan_final()

    @property
    def study(self) -> optuna.Study:
        return self.maker.study

    def _trials(self, phase: str, states: tuple[TrialState, ...] | None = None) -> list[Any]:
        trials = self.study.get_trials(deepcopy=False, states=states)
        return [t for t in trials if phase_of(t) == phase]

    def _phase_now(self) -> str:
        for phase in (FINAL, CANDIDATE):
            if self._trials(phase):
                return phase
        return SEARCH

    def _replan_final(self) -> None:
        """A re-run whose final run was killed: its retry would train to a budget planned for
        the time left then; plan it anew for the time left now."""
        done = self._trials(FINAL, (TrialState.COMPLETE, TrialState.PRUNED))
        waiting = self._trials(FINAL, (TrialState.WAITING,))
        if done or not waiting:
            return
        for _ in waiting:
            self.maker.fail(self.study.ask(), "re-planned: the sweep was re-run")
        self._enqueue_final(self._winner())

    def tick(self) -> None:
        self.study.set_user_attr(USED_ATTR, self.timeline.clock.elapsed())

    def finished(self, job: TrialJob, outcome: TrialOutcome) -> None:
        if job.phase == SEARCH:
            self.timeline.observe(Observed(outcome.flops, outcome.train_seconds, outcome.seconds))
        self.tick()

    def next_job(self, busy: int) -> Next:
        if self.phase == SEARCH:
            if self._waiting(SEARCH) or self._search_open():
                return self.maker.make(self._spec)
            if busy:
                self._share_idle_cores(busy)
                return None  # the candidates are chosen once every search trial has ended
            self.phase = CANDIDATE if self._enqueue_candidates() else FINAL
            if self.phase == FINAL:
                self._enqueue_final(self._best_search())
        if self.phase == CANDIDATE:
            if self._waiting(CANDIDATE):
                return self.maker.make(self._spec)
            if busy:
                return None
            self.phase = FINAL
            self._enqueue_final(self._winner())
        if self._waiting(FINAL):
            return self.maker.make(self._spec)
        return None

    def _share_idle_cores(self, busy: int) -> None:
        """The last search trials may take the threads of the workers that wait for them."""
        threads = max(1, self.workers // busy)
        if threads <= self._shared_threads:
            return
        for trial in self._trials(SEARCH, (TrialState.RUNNING,)):
            storage_of(self.study).set_trial_system_attr(trial_id(trial), THREADS_ATTR, threads)
        self._shared_threads = threads

    def _waiting(self, phase: str) -> bool:
        return bool(self._trials(phase, (TrialState.WAITING,)))

    def _search_open(self) -> bool:
        self.ledger.refresh()
        if self.ledger.counted() >= self.n_trials:
            return False
        return self.timeline.search_open()

    # -- what each phase's jobs look like ----------------------------------------------------

    def _spec(self, attrs: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
        return BudgetSpec(self.plan, self.timeline.clock.wall_at)(attrs)

    def _enqueue(self, parent: FrozenTrial, attrs: dict[str, Any]) -> None:
        attrs = {PARENT: parent.number, "init_from": parent.user_attrs["job_dir"], **attrs}
        self.study.enqueue_trial(parent.params, user_attrs=attrs, skip_if_exists=False)

    def _drop_waiting(self, phase: str | None = SEARCH, reason: str = "") -> None:
        """Trials of ``phase`` (None: any) still waiting when it ends are not run: fail them,
        saying why. Each is claimed first (an agent may pop one meanwhile: that one runs, to
        its deadline)."""
        waiting = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        for _ in [t for t in waiting if phase is None or phase_of(t) == phase]:
            trial = pop_waiting(self.study)
            if trial is not None:
                self.maker.fail(trial, reason or f"not run: the {phase} phase ended")

    def _complete(self, phase: str) -> list[FrozenTrial]:
        return self._trials(phase, (TrialState.COMPLETE,))

    def _ranked(self, phase: str) -> list[FrozenTrial]:
        """The phase's complete trials, best first. A search in which none completed (a busy
        machine: its trials were stopped out of time, or pruned) still yields its best
        stopped trials, by their last evaluation: a budgeted sweep always trains a model on."""
        sign = 1.0 if self.study.direction == optuna.study.StudyDirection.MINIMIZE else -1.0
        done = sorted(self._complete(phase), key=lambda t: sign * float(t.value or 0.0))
        if done or phase != SEARCH:
            return done
        stopped = [t for t in self._trials(SEARCH, (TrialState.PRUNED,))
                   if t.intermediate_values and t.user_attrs.get("job_dir")]  # fmt: skip
        last = {t.number: t.intermediate_values[max(t.intermediate_values)] for t in stopped}
        return sorted(stopped, key=lambda t: sign * float(last[t.number]))

    def _best_search(self) -> FrozenTrial | None:
        done = self._ranked(SEARCH)
        return done[0] if done else None

    def _enqueue_candidates(self) -> bool:
        """The k best search trials, each trained on to the same r1 FLOPs, side by side."""
        self._drop_waiting(SEARCH)
        best = self._ranked(SEARCH)[: self.plan.candidates]
        if len(best) < 2:
            return False  # nothing to choose between: the best goes straight to the final
        rates = [rate_of(t) for t in best]
        start = max(int(t.user_attrs.get("flops", 0)) for t in best)
        r1 = self.timeline.candidate_flops(start, rates)
        if r1 is None:
            return False
        threads = max(1, self.workers // len(best))
        for trial in best:
            extra = [*flops_overrides(r1, max(1, r1 // 12)), "trainer.resume=true"]
            self._enqueue(trial, {PHASE: CANDIDATE, EXTRA: extra, "threads": threads,
                                  "score": ["val"], "target_flops": r1})  # fmt: skip
        log.info("candidates %s trained on to %.3g FLOPs", [t.number for t in best], r1)
        return True

    def _winner(self) -> FrozenTrial | None:
        scored = [t for t in self._complete(CANDIDATE) if SCORE_ATTRS["val"] in t.user_attrs]
        if not scored:
            return self._best_search()
        return min(scored, key=lambda t: t.user_attrs[SCORE_ATTRS["val"]])

    def _enqueue_final(self, winner: FrozenTrial | None) -> None:
        """The winner trained on with every thread for the seconds left, at a constant lr for
        its first (1 - plan.anneal), then annealed to 0 over the FLOPs its measured speed
        reaches in the rest (see tbptt.trainer.Budget.planned)."""
        if winner is None:
            log.warning("no trial completed: nothing to train on")
            return
        scoring = float(winner.user_attrs.get("score_seconds", 0.0)) * 2 + 2.0
        available = self.timeline.final_seconds(scoring + self.final_start)
        if available <= 0:
            log.warning("the budget is spent: the best trial so far is the result")
            return
        start = int(winner.user_attrs.get("flops", 0))
        alone = int(winner.user_attrs.get("threads") or 1) == 1  # it shared the machine
        rate = rate_of(winner) * (self.plan.speedup if alone and self.workers > 1 else 1.0)
        guess = start + int(rate * available) if math.isfinite(rate) else 2 * start + 1
        # The trainer's clock includes the winner's earlier jobs.
        seconds = float(winner.user_attrs.get("wall_seconds", 0.0)) + available
        extra = [
            "trainer.max_tokens=null", "trainer.max_flops=null",
            f"trainer.max_seconds={seconds:.6g}",
            f"trainer.anneal={self.plan.anneal * available / seconds:.6g}",
            "trainer.eval_every_tokens=null", f"trainer.eval_every_flops={max(1, guess // 12)}",
            "trainer.resume=true",
        ]  # fmt: skip
        # When its training must end on the budget clock, should its job start late.
        train_end = self.plan.budget - scoring - END_SECONDS
        self._enqueue(winner, {PHASE: FINAL, EXTRA: extra, "threads": self.workers,
                               "score": ["val", "test"], "score_file": "best.pt",
                               "train_end": train_end, "train_seconds": available,
                               "start_wall": seconds - available})  # fmt: skip
        log.info("final: trial %d trained on for %.0f s (about %.3g FLOPs)", winner.number,
                 available, guess)  # fmt: skip


def rate_of(trial: FrozenTrial) -> float:
    """Training FLOP/s of a finished trial's last job (its continued part, for continuations)."""
    attrs = trial.user_attrs
    flops, seconds = float(attrs.get("flops", 0)), float(attrs.get("wall_seconds", 0.0))
    start, start_seconds = float(attrs.get("start_flops", 0)), float(attrs.get("start_seconds", 0))
    if seconds - start_seconds <= 0:
        return math.nan
    return (flops - start) / (seconds - start_seconds)


class AgentBudget(BudgetPolicy):
    """The plan's phases run by agents (sweeps/launch.py): the sweep process enqueues what the
    agents pop, where the local pool's scheduler hands jobs to workers. While the search is
    open it keeps one search ticket (no parameters: the agent that pops it samples them)
    waiting per idle agent; the candidates are enqueued as on the pool, one per agent; the
    final run waits until the search agents have left (``final_due``), then goes to an agent
    given a whole node. Agents make each job with ``BudgetSpec``.

    Args:
        maker: the sweep process's trial maker (it fails what the plan no longer wants).
        timeline: the plan and the sweep process's budget clock.
        n_trials: at most this many search trials.
        workers: the search agents.
    """

    def __init__(self, maker: TrialMaker, timeline: Timeline, n_trials: int, workers: int):
        super().__init__(maker, timeline, n_trials, workers)
        self.final_due = False

    def step(self, idle: int) -> None:
        """Enqueue what the phase wants now; ``idle``: search agents with nothing to run."""
        self.tick()
        if self.phase == SEARCH:
            if self._search_open():
                waiting = len(self._trials(SEARCH, (TrialState.WAITING,)))
                for _ in range(idle - waiting):
                    self.study.enqueue_trial({}, skip_if_exists=False)
                return
            self._drop_waiting(SEARCH)
            if self._trials(SEARCH, (TrialState.RUNNING,)):
                return  # the candidates are chosen once every search trial has ended
            self.phase = CANDIDATE if self._enqueue_candidates() else FINAL
            self.final_due = self.phase == FINAL
        elif self.phase == CANDIDATE:
            if self.timeline.remaining(self.plan.candidate_deadline()) <= 0:
                # No agent took them in time (one lost, its replacement queued behind the
                # final run's agent for the node's CPUs): the final run goes without them.
                self._drop_waiting(CANDIDATE)
            if not self._trials(CANDIDATE, (TrialState.WAITING, TrialState.RUNNING)):
                self.phase, self.final_due = FINAL, True

    def enqueue_final(self, start_seconds: float) -> None:
        """The final run, now that an agent can have the node: ``start_seconds`` is what an
        agent takes from its launch to its first job, kept off the final run's time."""
        self.final_start, self.final_due = start_seconds, False
        self._enqueue_final(self._winner())

    def replan_final(self, start_seconds: float) -> None:
        """The final run's agent died (its trial is failed): plan it again for the time left,
        on a fresh agent."""
        self.final_start = start_seconds
        if self.final_state() is None:
            self._enqueue_final(self._winner())

    def overtime(self, grace_period: float) -> bool:
        """Past the budget by more than a late job's margin (``LATE`` and the agents' grace
        period): an engine never placed the final run's agent, or a job does not end."""
        margin = LATE * self.plan.budget + grace_period
        return self.timeline.clock.elapsed() > self.plan.budget + margin

    def give_up(self) -> None:
        """The budget is spent: what waits is not run, what runs is failed (a re-run of the
        sweep retries it)."""
        self._drop_waiting(None, "not run: the budget was spent before it started")
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            fail_trial(self.study, trial, "the budget was spent before it ended", its_fault=False)

    def final_state(self) -> str | None:
        """The final run's: waiting, running, ended (complete or pruned), or None."""
        trials = self._trials(FINAL)
        if any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials):
            return "ended"
        for state in (TrialState.RUNNING, TrialState.WAITING):
            if any(t.state == state for t in trials):
                return state.name.lower()
        return None

    def observe(self, trial: FrozenTrial) -> None:
        """A search trial ended: its speed (as the pool's workers report it)."""
        if phase_of(trial) != SEARCH or trial.datetime_start is None:
            return
        end = trial.datetime_complete or trial.datetime_start
        attrs = trial.user_attrs
        seen = Observed(int(attrs.get("flops", 0)), float(attrs.get("wall_seconds", 0.0)),
                        (end - trial.datetime_start).total_seconds())  # fmt: skip
        self.timeline.observe(seen)

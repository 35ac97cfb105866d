"""Budget planning without training: durations, plans, and a budgeted sweep simulated on a fake
clock (jobs take the seconds their FLOPs cost at a known rate)."""

from __future__ import annotations

import time as wall

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.distributions import FloatDistribution

from sweeps.config import PlanConfig
from sweeps.plan import (
    CANDIDATE,
    FINAL,
    LATE,
    SEARCH,
    START_SECONDS,
    Clock,
    Observed,
    Timeline,
    make_plan,
    parse_duration,
    search_share,
)
from sweeps.policy import BudgetPolicy, TrialMaker, phase_of
from sweeps.space import Param, SearchSpace
from sweeps.worker import SCORE_ATTRS, TrialJob, TrialOutcome
from tbptt.contract import End
from tbptt.errors import ConfigError


@pytest.mark.parametrize(
    "value, seconds",
    [(540, 540.0), ("540", 540.0), ("90s", 90.0), ("9m", 540.0), ("1h30m", 5400.0),
     ("1.5m", 90.0), (" 2M ", 120.0)],
)  # fmt: skip
def test_durations(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value", ["soon", "9 minutes", "", 0, -5, "0s", True, "1d", float("inf"), "inf", 1e400]
)
def test_bad_durations_name_the_key(value):
    with pytest.raises(ConfigError, match="hydra.sweeper.budget"):
        parse_duration(value)


def test_plan_splits_the_budget_and_sizes_the_search_rung():
    cfg = PlanConfig(search=0.4, candidate_share=0.2)
    plan = make_plan(540, cfg, workers=2, rate=8e10, speedup=1.7, started=8.0)
    assert (plan.search_end, plan.candidates_end, plan.budget) == (224.0, 332.0, 540.0)
    assert plan.trial_flops == int(8e10 * 216 / 5)
    assert plan.eval_every_flops == plan.trial_flops // 9
    assert plan.candidates == 2


ASHA, NONE = "optuna.pruners.SuccessiveHalvingPruner", "optuna.pruners.NopPruner"


@pytest.mark.parametrize(
    "search, pruner, share",
    [(None, None, 0.25), (None, NONE, 0.25), (None, "optuna.pruners.ThresholdPruner", 0.25),
     (None, ASHA, 0.125), (None, "optuna.pruners.HyperbandPruner", 0.125), (0.3, ASHA, 0.3),
     (0.3, NONE, 0.3)],
)  # fmt: skip
def test_a_pruned_search_takes_half_the_share_unless_it_is_set(search, pruner, share):
    assert search_share(PlanConfig(search=search), pruner) == share


def test_a_pruner_shortens_the_search_but_not_its_trials():
    unpruned = make_plan(540, PlanConfig(), workers=2, rate=8e10, speedup=1.7, started=8.0,
                         pruner=NONE)  # fmt: skip
    pruned = make_plan(540, PlanConfig(), workers=2, rate=8e10, speedup=1.7, started=8.0,
                       pruner=ASHA)  # fmt: skip
    assert (unpruned.search_end, pruned.search_end) == (8 + 135.0, 8 + 67.5)
    assert pruned.trial_flops == unpruned.trial_flops == int(8e10 * 135 / 5)
    assert pruned.candidates_end == 8 + 67.5 + 54.0  # the final run gets what the search saved


def test_one_worker_has_no_candidates_phase_and_a_small_budget_is_refused():
    plan = make_plan(540, PlanConfig(), workers=1, rate=8e10, speedup=1.0, started=8.0)
    assert plan.candidates == 1 and plan.candidates_end == plan.search_end
    with pytest.raises(ConfigError, match="hydra.sweeper.budget=20s leaves"):
        make_plan(20, PlanConfig(), workers=2, rate=8e10, speedup=1.0, started=5.0)


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_search_trial_starts_only_if_it_can_finish_before_the_search_ends():
    time = FakeTime()
    plan = make_plan(100, PlanConfig(), workers=2, rate=1e9, speedup=1.0, started=0.0)
    timeline = Timeline(plan, Clock(now=time))
    timeline.observe(Observed(flops=plan.trial_flops, train_seconds=9.0, seconds=10.0))
    time.now = plan.search_end - 10.0  # a full trial: 1 s of start-up, 9 s of training
    assert timeline.search_open()
    time.now += 0.01
    assert not timeline.search_open()


# -- a budgeted sweep on a fake clock ----------------------------------------------------------

RATE = 1e9  # FLOP/s of one thread
SPEEDUP = 1.6  # of one job on every thread


class FakePool:
    """The WorkerPool interface; a job "runs" for the seconds its FLOPs cost at RATE, and the
    clock jumps to the next job's end on wait()."""

    def __init__(self, study: optuna.Study, size: int, time: FakeTime, slow: float = 1) -> None:
        self.study, self.size, self.time, self.slow = study, size, time, slow
        self.running: dict[int, tuple[float, TrialJob]] = {}
        self.log: list[tuple[str, float, float, int]] = []  # (phase, start, end, flops)

    def free_slots(self) -> list[int]:
        return [s for s in range(self.size) if s not in self.running]

    def busy(self) -> int:
        return len(self.running)

    def jobs(self) -> list[TrialJob]:
        return [job for _, job in self.running.values()]

    def submit(self, job: TrialJob) -> None:
        end, outcome = self._run(job)
        self.running[self.free_slots()[0]] = (end, job)
        self._outcomes = getattr(self, "_outcomes", {})
        self._outcomes[job.number] = outcome

    def wait(self, timeout: float):  # noqa: ARG002 - the fake clock does not wait
        from sweeps.pool import Finished

        slot = min(self.running, key=lambda s: self.running[s][0])
        end, job = self.running.pop(slot)
        self.time.now = max(self.time.now, end)
        return [Finished(slot, job, self._outcomes[job.number])]

    def _run(self, job: TrialJob) -> tuple[float, TrialOutcome]:
        """Train (instantly) and tell the study now; the end time says when it would end."""
        trial = optuna.Trial(self.study, job.trial_id)
        start_flops, parent_seconds = 0, 0.0
        if job.init_from:
            parent = self.study.trials[int(job.init_from)]
            start_flops = parent.user_attrs["flops"]
            parent_seconds = parent.user_attrs["wall_seconds"]
        threads = job.threads or 1
        rate = RATE * (SPEEDUP if threads > 1 else 1.0) / self.slow
        start = self.time.now
        if _override(job, "trainer.max_flops") == "null":  # a time budget (the final run)
            seconds = float(_override(job, "trainer.max_seconds")) - parent_seconds
            target = start_flops + int(seconds * rate)
        else:
            target = int(float(_override(job, "trainer.max_flops")))
        end = start + START_SECONDS + (target - start_flops) / rate
        flops, state = target, "COMPLETE"
        # Deadlines are wall-clock instants (Clock.wall_at): on the fake clock's axis here.
        deadline = None if job.deadline is None else job.deadline - wall.time() + start
        if deadline is not None and end > deadline:  # the reporter stops it in time
            end, state = deadline, "PRUNED"
            flops = start_flops + int((end - start - START_SECONDS) * rate)
        lr = trial.params["optim.lr"]
        value = (lr - 0.01) ** 2 * 1e3 + 1.0 / (1.0 + flops / 1e10)
        trial.report(value, flops)
        trial.set_user_attr("job_dir", str(job.number))
        trial.set_user_attr("flops", flops)
        trial.set_user_attr("wall_seconds", parent_seconds + end - start - START_SECONDS)
        trial.set_user_attr("start_flops", start_flops)
        for split in job.score:
            trial.set_user_attr(SCORE_ATTRS[split], value + 0.01)
        self.log.append((job.phase, start, end, flops))
        seconds = end - start
        if state == "COMPLETE":
            self.study.tell(trial, value)
        else:
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        outcome = TrialOutcome(
            number=job.number, state=End(state), value=value, job_dir=str(job.number),
            flops=flops, seconds=seconds, train_seconds=seconds - START_SECONDS,
        )  # fmt: skip
        return end, outcome


def _override(job: TrialJob, key: str) -> str:
    return next(o.partition("=")[2] for o in job.overrides if o.startswith(key + "="))


def simulate(budget: float, workers: int, n_trials: int = 100, slow: float = 1):
    """A budgeted sweep planned at RATE, on workers ``slow`` times slower than that."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    time = FakeTime()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = SearchSpace((Param("optim.lr", FloatDistribution(1e-3, 3e-2, log=True), False),), ())
    config = OmegaConf.create({"optim": {"lr": 0.0}})
    maker = TrialMaker(study, space, compose=lambda overrides: config)
    plan = make_plan(budget, PlanConfig(), workers, RATE, SPEEDUP, started=0.0)
    policy = BudgetPolicy(maker, Timeline(plan, Clock(now=time)), n_trials, workers)
    pool = FakePool(study, workers, time, slow)
    while True:
        while pool.free_slots():
            job = policy.next_job(pool.busy())
            if job is None:
                break
            pool.submit(job)
        if pool.busy() == 0:
            break
        for event in pool.wait(1.0):
            policy.finished(event.job, event.result)
    return study, plan, pool


@pytest.mark.parametrize("budget, workers", [(540, 2), (300, 2), (540, 4), (200, 1)])
def test_simulated_sweep_keeps_every_phase_inside_the_budget(budget, workers):
    study, plan, pool = simulate(budget, workers)
    by_phase = {p: [e for e in pool.log if e[0] == p] for p in (SEARCH, CANDIDATE, FINAL)}
    assert len(by_phase[SEARCH]) >= 4 * workers
    # No search trial is started that cannot finish its rung before the search ends.
    assert all(end <= plan.search_end for _, _, end, _ in by_phase[SEARCH])
    assert all(flops == plan.trial_flops for _, _, _, flops in by_phase[SEARCH])
    expected_candidates = min(workers, 4) if workers > 1 else 0
    assert len(by_phase[CANDIDATE]) == expected_candidates
    late = plan.candidates_end + LATE * plan.budget
    search_done = max(end for _, _, end, _ in by_phase[SEARCH])
    assert all(search_done <= start and end <= late for _, start, end, _ in by_phase[CANDIDATE])
    # Candidates compare at equal compute.
    assert len({flops for *_, flops in by_phase[CANDIDATE]}) <= 1
    [(_, start, end, flops)] = by_phase[FINAL]
    assert end <= plan.budget  # the budget is never exceeded
    assert end - start >= budget / 3  # the winner trains for at least a third of the sweep
    final = [t for t in study.trials if phase_of(t) == FINAL][0]
    assert final.state == optuna.trial.TrialState.COMPLETE and "test_loss" in final.user_attrs


def test_a_search_in_which_no_trial_completed_still_trains_a_final_model():
    # A machine 6x slower than calibrated: every search trial is stopped out of time.
    study, plan, pool = simulate(540, 2, slow=6)
    search = [t for t in study.trials if phase_of(t) == SEARCH]
    assert search and all(t.state == optuna.trial.TrialState.PRUNED for t in search)
    final = [t for t in study.trials if phase_of(t) == FINAL]
    assert len(final) == 1 and final[0].state == optuna.trial.TrialState.COMPLETE
    stopped = {t.number: t.intermediate_values[max(t.intermediate_values)] for t in search}
    lineage = final[0].user_attrs["parent"]
    while phase_of(study.trials[lineage]) != SEARCH:
        lineage = study.trials[lineage].user_attrs["parent"]
    assert lineage in sorted(stopped, key=stopped.get)[:2]  # one of the best stopped


def test_the_winner_is_the_candidate_best_on_the_whole_validation_split():
    study, _, _ = simulate(540, 2)
    candidates = [t for t in study.trials if phase_of(t) == CANDIDATE]
    final = [t for t in study.trials if phase_of(t) == FINAL][0]
    best = min(candidates, key=lambda t: t.user_attrs["full_val_loss"])
    assert final.user_attrs["parent"] == best.number
    assert final.params == best.params

"""The sweep process's watch over a budgeted sweep on agents (sweeps/launch.py BudgetWatch):
past its budget by more than a late job's margin it gives up what an engine never started or
never ended, rather than wait on it (a Ray cluster that cannot place the final run's agent);
a final run whose agent started late still ends when planned."""

from __future__ import annotations

import time as wall
from types import SimpleNamespace

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from sweeps.agent import WATCHED_ATTR, Budgeted
from sweeps.config import PlanConfig
from sweeps.launch import BudgetWatch
from sweeps.plan import Clock, Timeline, make_plan
from sweeps.policy import AgentBudget, BudgetSpec, TrialMaker
from sweeps.space import Param, SearchSpace
from tbptt.errors import ConfigError
from tests.sweeps.test_plan import FakeTime


def watch(time: FakeTime, budget: float = 100.0, grace: float = 5.0):
    study = optuna.create_study()
    space = SearchSpace((Param("optim.lr", FloatDistribution(1e-3, 3e-2, log=True), False),), ())
    maker = TrialMaker(study, space, compose=lambda overrides: OmegaConf.create({}))
    plan = make_plan(budget, PlanConfig(), workers=2, rate=1e9, speedup=1.0, started=0.0)
    policy = AgentBudget(maker, Timeline(plan, Clock(now=time)), n_trials=10, workers=2)
    stopped: list[bool] = []
    sweep = SimpleNamespace(study=study, settings=SimpleNamespace(grace_period=grace),
                            stop=lambda: stopped.append(True))  # fmt: skip
    return BudgetWatch(sweep, planning=None), policy, study, stopped  # type: ignore[arg-type]


def test_past_the_budget_and_its_margin_what_waits_or_runs_is_failed_and_the_sweep_ends():
    time = FakeTime()
    budget_watch, policy, study, stopped = watch(time)
    running = study.ask()  # its agent hangs
    study.enqueue_trial({"optim.lr": 0.01}, user_attrs={"phase": "final"})  # never placed
    time.now = 100.0 + 0.02 * 100 + 5.0  # the budget, LATE, the grace period: not yet
    assert not budget_watch._overtime(policy) and not stopped
    time.now += 0.5
    assert budget_watch._overtime(policy) and stopped
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL]
    reasons = {t.number: t.user_attrs["fail_reason"] for t in trials}
    assert reasons[running.number] == "the budget was spent before it ended"
    assert "not run" in reasons[1 - running.number]
    # A re-run retries the one that ran (the sweep stopped under it, not its fault).
    assert study.trials[running.number].user_attrs.get("interrupted") is True


def final_attrs(train_end: float) -> dict:
    extra = ["trainer.max_tokens=null", "trainer.max_seconds=70", "trainer.anneal=0.51"]
    return {"phase": "final", "init_from": "/x/3", "threads": 2, "score": ["val", "test"],
            "score_file": "best.pt", "extra": extra, "train_end": train_end,
            "train_seconds": 60.0, "start_wall": 10.0}  # fmt: skip


def test_a_final_run_that_starts_late_still_ends_when_planned():
    """Its agent waited for a node: planned to train 60 s until second 90 of the budget, it
    starts at second 50 (2 s of start-up: 38 s left), so it trains 38 s, annealing over the
    same share of them."""
    zero = wall.time() - 50.0
    plan = make_plan(100.0, PlanConfig(), workers=2, rate=1e9, speedup=1.0, started=0.0)
    extra, job = BudgetSpec(plan, lambda seconds: zero + seconds)(final_attrs(90.0))
    budget = dict(o.split("=", 1) for o in extra)
    assert float(budget["trainer.max_seconds"]) == pytest.approx(10.0 + 38.0, abs=0.5)
    assert float(budget["trainer.anneal"]) == pytest.approx(plan.anneal * 38 / 48, abs=0.02)
    assert budget["trainer.max_tokens"] == "null" and len(extra) == 3 and job["phase"] == "final"
    # On time: as planned; past its end: it trains no more, and is still scored.
    on_time, _ = BudgetSpec(plan, lambda seconds: zero + seconds)(final_attrs(112.0))
    assert on_time == final_attrs(0)["extra"]
    late, _ = BudgetSpec(plan, lambda seconds: zero + seconds)(final_attrs(40.0))
    assert "trainer.max_seconds=10" in late and "trainer.anneal=0" in late


@pytest.mark.parametrize("value", ["90", None, float("nan"), True])
def test_a_final_runs_stored_end_that_is_not_a_number_is_refused(value):
    plan = make_plan(100.0, PlanConfig(), workers=2, rate=1e9, speedup=1.0, started=0.0)
    attrs = {**final_attrs(0.0), "train_end": value}
    with pytest.raises(ConfigError, match="stored train_end"):
        BudgetSpec(plan, lambda seconds: seconds)(attrs)


def test_candidates_no_agent_took_by_their_deadline_are_dropped_and_the_final_is_due():
    """On a cluster down to one node, the final run's agent (launched early) holds its CPUs and
    a lost candidate's retry waits behind it: at the candidates' deadline the retry is failed
    and the final run becomes due, rather than both waiting to the end of the budget."""
    time = FakeTime()
    _, policy, study, _ = watch(time)
    study.enqueue_trial({"optim.lr": 0.01}, user_attrs={"phase": "candidate"})
    policy = AgentBudget(policy.maker, policy.timeline, n_trials=10, workers=2)
    assert policy.phase == "candidate"
    time.now = policy.plan.candidate_deadline() - 0.5
    policy.step(idle=0)
    assert policy.phase == "candidate" and not policy.final_due
    time.now += 1.0
    policy.step(idle=0)
    assert policy.phase == "final" and policy.final_due
    (dropped,) = study.get_trials()
    assert dropped.state == TrialState.FAIL
    assert dropped.user_attrs["fail_reason"] == "not run: the candidate phase ended"


def test_the_watcher_tells_agents_it_looks_and_idle_agents_of_a_killed_sweep_leave():
    time = FakeTime()
    budget_watch, _, study, _ = watch(time)
    budget_watch._look()
    first = study.user_attrs[WATCHED_ATTR]
    assert abs(first - wall.time()) < 5
    budget_watch._look()  # at most every WATCH_SECONDS: no journal write per look
    assert study.user_attrs[WATCHED_ATTR] == first
    agent = Budgeted(cpus=1, generation=1, calibration=None, patience=60.0)  # type: ignore[arg-type]
    assert not agent._orphaned({}) and not agent._orphaned({WATCHED_ATTR: wall.time() - 30})
    # The sweep process was killed 61 s ago: the final run's agent, waiting for its turn,
    # leaves instead of polling until its engine's time limit.
    study.set_user_attr(WATCHED_ATTR, wall.time() - 61)
    home = SimpleNamespace(home_token="t", number=0)
    assert agent.run(home, study, maker=None) == 0  # type: ignore[arg-type]
    assert agent._orphaned(study.user_attrs)

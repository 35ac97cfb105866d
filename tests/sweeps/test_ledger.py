"""The sweep process's tally (sweeps/ledger.py) equals the same counts taken over the whole
study, however trials start, end, fail, are retried or interrupted, out of order."""

from __future__ import annotations

import random
from collections import Counter

import optuna
import pytest
from optuna.trial import TrialState

from sweeps.ledger import Ledger
from sweeps.policy import counted, done
from sweeps.storage import fail_trial, retry

optuna.logging.set_verbosity(optuna.logging.WARNING)


def whole_study(study: optuna.Study) -> tuple:
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name.lower() for t in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = study.best_trial.number if complete else None
    finals = [t.number for t in trials if t.user_attrs.get("phase") == "final"
              and t.state.is_finished() and t.state != TrialState.FAIL
              and "test_loss" in t.user_attrs]  # fmt: skip
    return counted(trials), done(trials), states, best, finals[-1] if finals else None


def tallied(ledger: Ledger) -> tuple:
    ledger.refresh()
    best, final = ledger.best(), ledger.final()
    return (ledger.counted(), ledger.done(), +ledger.counts(),
            best.number if best else None, final.number if final else None)  # fmt: skip


@pytest.mark.parametrize("seed", range(5))
def test_the_tally_equals_a_count_over_the_whole_study(seed):
    rng, study = random.Random(seed), optuna.create_study()
    ledger, running = Ledger(study), []
    for _ in range(60):
        step = rng.choice(["start", "start", "end", "end", "fail", "interrupt", "final"])
        if step == "start" or not running:
            trial = study.ask()  # a waiting retry first, when there is one
            trial.suggest_float("x", 0, 1)
            running.append(trial)
        elif step == "end":
            trial = running.pop(rng.randrange(len(running)))
            if rng.random() < 0.3:
                study.tell(trial, state=TrialState.PRUNED)
            else:
                study.tell(trial, rng.random())  # no ties: storages break them differently
        elif step in ("fail", "interrupt"):
            trial = running.pop(rng.randrange(len(running)))
            frozen = study.get_trials(deepcopy=False)[trial.number]
            fail_trial(study, frozen, "boom", its_fault=step == "fail")
            if rng.random() < 0.7:
                retry(study, study.get_trials(deepcopy=False)[trial.number], max_retries=1)
        else:  # a budgeted sweep's final run, scored
            trial = study.ask()
            trial.suggest_float("x", 0, 1)
            trial.set_user_attr("phase", "final")
            trial.set_user_attr("test_loss", 1.0)
            study.tell(trial, 0.9)
        assert tallied(ledger) == whole_study(study)

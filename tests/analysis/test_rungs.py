"""Knob effects from every trial at a rung: a pruned sweep still says what helped."""

from __future__ import annotations

import optuna
import pandas as pd
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from analysis.load import SweepResults
from analysis.report import knob_effects
from analysis.rungs import at_rung, effects_view

SPACE = {
    "clip": CategoricalDistribution(["none", "norm"]),
    "optim.lr": FloatDistribution(1e-4, 1e-1, log=True),
}


def pruned_sweep(n: int = 14) -> SweepResults:
    """``n`` trials, ASHA-like: 2 complete (both clip=norm), the rest pruned after 1 or 2 of
    their 3 evaluations; clip=norm is 0.3 nats/char better at every evaluation, and a higher
    lr better too."""
    rows, evals, frozen = [], [], []
    for number in range(n):
        clip, rate = ("none", "norm")[number % 2], 10 ** (-4 + 3 * number / n)
        reached = 3 if number in (n - 1, n - 3) else 2 if number < 11 else 1
        losses = [3.0 - 0.3 * (clip == "norm") - 0.1 * i - 0.02 * number for i in range(3)]
        state = "complete" if reached == 3 else "pruned"
        value = losses[-1] if state == "complete" else None
        rows.append(
            {
                "number": number,
                "state": state,
                "value": value,
                "phase": "search",
                "param.clip": clip,
                "param.optim.lr": rate,
                "stop_reason": None,
                "tokens": 1000 * reached,
                "job_dir": None,
            }
        )
        evals += [
            {
                "trial": number,
                "tokens": 1000 * (i + 1) + number,
                "flops": 10**9 * (i + 1),
                "val_loss": losses[i],
            }
            for i in range(reached)
        ]
        params = {"clip": clip, "optim.lr": rate}
        frozen.append(
            create_trial(
                state=TrialState.COMPLETE if value else TrialState.PRUNED,
                value=value,
                params=params,
                distributions=SPACE,
                intermediate_values={1000 * (i + 1): losses[i] for i in range(reached)},
            )
        )
    study = optuna.create_study()
    study.add_trials(frozen)
    trials = pd.DataFrame(rows)
    trials["state"] = pd.Categorical(trials["state"], ["complete", "pruned", "fail"])
    return SweepResults(
        path=None,  # type: ignore[arg-type]
        kind="optuna",
        trials=trials,
        steps=pd.DataFrame(),
        evals=pd.DataFrame(evals),  # type: ignore[arg-type]
        grad_flow=pd.DataFrame(),
        study=study,
    )


def test_a_pruned_sweep_uses_the_deepest_rung_that_enough_trials_reached():
    results = pruned_sweep()
    complete_only = knob_effects(results).set_index("knob")
    assert complete_only.loc["clip", "effect"] == "only one value among these trials"
    view = effects_view(results, min_trials=10)
    assert view.rung == 2  # 13 trials reached evaluation 2, only 2 reached evaluation 3
    assert "evaluation 2 of each trial" in view.note and "13 of 14 trials" in view.note
    assert "only 2 completed" in view.note
    effects = knob_effects(view.results).set_index("knob")
    assert effects.loc["clip", "trials"] == 13
    assert effects.loc["clip", "effect"].startswith("best mean: norm (")
    assert "worst: none" in effects.loc["clip", "effect"]
    assert effects.loc["optim.lr", "effect"].endswith("higher values do better")
    assert effects.loc["clip", "importance"] is not None  # importances from the same trials


def test_at_rung_values_each_trial_by_its_loss_there():
    results = pruned_sweep()
    rung1 = at_rung(results, 1)
    assert len(rung1.trials) == 14 and rung1.trials["value"].notna().all()
    assert (rung1.trials["state"] == "pruned").sum() == 12  # how each ended still shows
    first = rung1.trials.set_index("number")["value"]
    assert first[0] == 3.0 and first[1] == 2.7 - 0.02
    assert rung1.study is not None and len(rung1.study.trials) == 14


def test_enough_complete_trials_keep_the_complete_trials_objective():
    results = pruned_sweep()
    view = effects_view(results, min_trials=2)
    assert view.rung is None and view.results is results
    assert view.note == "the 2 complete trials' objective"

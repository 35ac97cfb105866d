"""Knob effects from every trial, pruned ones included: the view of a sweep at one rung.

A pruned sweep completes few trials (ASHA stops most of them at its first rungs), so effects
computed from complete trials alone see one value of most knobs. Every trial of a sweep is
evaluated at the same budget points, though: its first, second, ... evaluation comes after the
same training (tokens, or FLOPs in a budgeted sweep). ``at_rung`` turns a sweep into the sweep
as it stood at its r-th evaluation: each trial that reached it counts, with its validation
loss there as its value. ``effects_view`` picks the deepest rung that ``MIN_TRIALS``
trials reached, or the complete trials themselves when there are that many.

    >>> from analysis.load import load
    >>> view = effects_view(load(sweep_dir).search_only())  # 1 of 6 trials completed
    >>> view.note
    'evaluation 1 of each trial (64 characters, ...), the deepest that 4 of 6 trials reached ...'
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState, create_trial

from analysis.load import SweepResults, memory_study, single_objective

MIN_TRIALS = 10  # trials a rung needs before its effects are worth a table


@dataclass(frozen=True)
class EffectsView:
    """The trials that knob effects are computed from, and a sentence saying which."""

    results: SweepResults
    rung: int | None  # the evaluation used (1-based); None: the complete trials' objective
    note: str


def rung_losses(results: SweepResults) -> pd.DataFrame:
    """Per trial and evaluation number (``rung``, 1-based): its val loss, tokens and FLOPs."""
    evals = results.evals.sort_values(["trial", "tokens"])
    evals = evals[np.isfinite(evals["val_loss"])]
    frame = evals[["trial", "tokens", "flops", "val_loss"]].copy()
    frame["rung"] = frame.groupby("trial").cumcount() + 1
    return frame


def effects_view(results: SweepResults, min_trials: int = MIN_TRIALS) -> EffectsView:
    """Complete trials when there are ``min_trials`` of them (or every trial completed), else
    the deepest rung that at least ``min_trials`` trials (or all of them) reached."""
    single_objective(results, "knob effects")
    trials = results.trials
    complete = int(((trials["state"] == "complete") & trials["value"].notna()).sum())
    losses = rung_losses(results)
    evaluated = losses["trial"].nunique()
    need = min(min_trials, evaluated)
    if complete >= min_trials or complete == len(trials) or evaluated == 0:
        return EffectsView(results, None, f"the {complete} complete trials' objective")
    reached = losses.groupby("rung")["trial"].nunique()
    rung = int(reached[reached >= need].index.max())
    at = losses[losses["rung"] == rung]
    where = f"{int(at['tokens'].median()):,} characters, {float(at['flops'].median()):.3g} FLOPs"
    note = (
        f"evaluation {rung} of each trial ({where}), the deepest that {len(at)} of "
        f"{len(trials)} trials reached (only {complete} completed): every trial there counts, "
        "with its validation loss at that point as its value"
    )
    return EffectsView(at_rung(results, rung), rung, note)


def at_rung(results: SweepResults, rung: int) -> SweepResults:
    """The sweep as it stood at evaluation ``rung``: the trials that reached it, each valued by
    its loss there (its state still says how it ended); an in-memory study of them, all
    complete, for Optuna's importances."""
    single_objective(results, "a rung's view")  # its one value is a validation loss
    losses = rung_losses(results)
    value = losses[losses["rung"] == rung].set_index("trial")["val_loss"]
    trials = results.trials[results.trials["number"].isin(value.index)].copy()
    trials["value"] = trials["number"].map(value).astype(float)  # states stay: how each ended
    return replace(results, trials=trials.reset_index(drop=True), study=_study(results, value))


def _study(results: SweepResults, value: pd.Series) -> optuna.Study | None:
    if results.study is None:
        return None
    trials = [
        create_trial(
            state=TrialState.COMPLETE,
            value=float(value[t.number]),
            params=t.params,
            distributions=t.distributions,
        )
        for t in results.study.get_trials(deepcopy=False)
        if t.number in value.index
    ]
    return memory_study(results.directions, trials)

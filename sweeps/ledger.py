"""The sweep process's running tally of its study: how many trials count towards ``n_trials``,
how many ended how, the best one and the budgeted sweep's final model.

The sweep process consults these several times per trial (whether to start another, the
progress line, ``best.yaml``). Computed from the whole study each time, they cost a pass over
every trial, so each trial would cost more than the one before. A finished trial never
changes, though: ``Ledger`` tallies each finished trial once, in trial order, and recomputes
only the trials after the first unfinished one (those running, or waiting to run).
"""

from __future__ import annotations

from collections import Counter

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeps.plan import FINAL, SEARCH
from sweeps.storage import INTERRUPTED

PHASE = "phase"  # user attr of a budgeted sweep's continuations (sweeps/policy.py)
RETRY_OF = "retried_trial"  # user attr of a retry: the failed trial it re-runs


def phase_of(trial: FrozenTrial) -> str:
    return str(trial.user_attrs.get(PHASE, SEARCH))


def counts_towards_total(trial: FrozenTrial, retried: set[int]) -> bool:
    """A search trial counts towards ``n_trials`` unless it failed and was re-run (its retry
    counts instead) or the sweep's own stop cut it short (it is re-run)."""
    if phase_of(trial) != SEARCH:
        return False
    if trial.state != TrialState.FAIL:
        return True
    return trial.number not in retried and not trial.user_attrs.get(INTERRUPTED)


def counting(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that count towards ``n_trials``, in number order."""
    retried = {int(r) for t in trials if (r := t.user_attrs.get(RETRY_OF)) is not None}
    return [t for t in trials if counts_towards_total(t, retried)]


def is_final_model(trial: FrozenTrial) -> bool:
    """A budgeted sweep's final run that ended scored (tbptt.evaluate's test loss)."""
    ended = trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
    return ended and phase_of(trial) == FINAL and "test_loss" in trial.user_attrs


class Ledger:
    """Tallies of ``study``, brought up to date by ``refresh()`` (one read of the study).

    Example:
        >>> study = optuna.create_study()
        >>> study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)
        >>> ledger = Ledger(study); ledger.refresh()
        >>> ledger.counted(), ledger.counts()["complete"]
        (3, 3)
        >>> ledger.best().number == study.best_trial.number
        True
    """

    def __init__(self, study: optuna.Study) -> None:
        self.study = study
        self.trials: list[FrozenTrial] = []  # as of the last refresh
        self._settled = 0  # trials[:settled] are finished and tallied
        self._seen = 0  # trials[:seen] had their retry attrs read
        self._retried: set[int] = set()  # trials some retry re-runs
        self._counts: Counter[str] = Counter()  # of settled trials, by state
        self._search = 0  # settled search trials that count, unless a retry re-runs them
        self._failed: set[int] = set()  # ... of which failures that may be re-run
        self._best: FrozenTrial | None = None  # the best settled complete trial
        self._front: list[FrozenTrial] = []  # several objectives: the settled Pareto front
        self._signs = [1.0 if d == optuna.study.StudyDirection.MINIMIZE else -1.0
                       for d in study.directions]  # fmt: skip
        self._final: FrozenTrial | None = None  # the last settled final model

    def refresh(self) -> None:
        self.trials = self.study.get_trials(deepcopy=False)
        for trial in self.trials[self._seen :]:
            retry_of = trial.user_attrs.get(RETRY_OF)  # set when the retry is enqueued
            if retry_of is not None:
                self._retried.add(int(retry_of))
        self._seen = len(self.trials)
        while self._settled < len(self.trials) and self.trials[self._settled].state.is_finished():
            self._settle(self.trials[self._settled])
            self._settled += 1

    def _settle(self, trial: FrozenTrial) -> None:
        self._counts[trial.state.name.lower()] += 1
        if counts_towards_total(trial, set()):
            self._search += 1
            if trial.state == TrialState.FAIL:
                self._failed.add(trial.number)
        if trial.state == TrialState.COMPLETE and self.multi_objective:
            self._front = self._with(self._front, trial)
        elif trial.state == TrialState.COMPLETE and self._better(trial, self._best):
            self._best = trial
        if is_final_model(trial):
            self._final = trial

    @property
    def multi_objective(self) -> bool:
        return len(self._signs) > 1

    def _dominates(self, a: FrozenTrial, b: FrozenTrial) -> bool:
        pairs = [(s * x, s * y) for s, x, y in zip(self._signs, a.values, b.values, strict=True)]
        return all(x <= y for x, y in pairs) and any(x < y for x, y in pairs)

    def _with(self, front: list[FrozenTrial], trial: FrozenTrial) -> list[FrozenTrial]:
        """``front`` with ``trial`` added, if no trial on it dominates ``trial``."""
        if any(self._dominates(t, trial) for t in front):
            return front
        return [t for t in front if not self._dominates(trial, t)] + [trial]

    def front(self) -> list[FrozenTrial]:
        """A multi-objective study's Pareto front (``Study.best_trials``), in trial order."""
        front = self._front
        for trial in self._open:
            if trial.state == TrialState.COMPLETE:
                front = self._with(front, trial)
        return sorted(front, key=lambda t: t.number)

    def _better(self, trial: FrozenTrial, than: FrozenTrial | None) -> bool:
        if than is None:
            return True
        assert trial.value is not None and than.value is not None
        if self.study.direction == optuna.study.StudyDirection.MINIMIZE:
            return trial.value < than.value
        return trial.value > than.value

    @property
    def _open(self) -> list[FrozenTrial]:
        """The trials from the first unfinished one on: what is not tallied yet."""
        return self.trials[self._settled :]

    def counted(self) -> int:
        """Search trials that count towards ``n_trials`` (``counts_towards_total``)."""
        settled = self._search - len(self._failed & self._retried)
        return settled + sum(counts_towards_total(t, self._retried) for t in self._open)

    def done(self) -> int:
        """Finished search trials as ``n_trials`` counts them (the progress bar's count)."""
        open_search = [t for t in self._open if phase_of(t) == SEARCH]
        return self.counted() - sum(1 for t in open_search if not t.state.is_finished())

    def counts(self) -> Counter[str]:
        """Trials by state (``complete``, ``pruned``, ``fail``, ``running``, ``waiting``)."""
        return self._counts + Counter(t.state.name.lower() for t in self._open)

    def waiting(self) -> bool:
        return any(t.state == TrialState.WAITING for t in self._open)

    def running(self) -> bool:
        return any(t.state == TrialState.RUNNING for t in self._open)

    def best(self) -> FrozenTrial | None:
        """The best complete trial (the first of equals), as ``Study.best_trial``; None in a
        multi-objective study (see ``front``)."""
        if self.multi_objective:
            return None
        best = self._best
        for trial in self._open:
            if trial.state == TrialState.COMPLETE and self._better(trial, best):
                best = trial
        return best

    def final(self) -> FrozenTrial | None:
        """A budgeted sweep's final model: its last scored final run (None: none yet)."""
        finals = [t for t in self._open if is_final_model(t)]
        return finals[-1] if finals else self._final

"""Apps that break the trial contract (tbptt/contract.py), swept for real: a toy Hydra app
(tests/sweeps/contract_apps/app.py) whose ``mode`` reports NaN or inf, steps backwards or
twice, goes on when told to stop, reports after its job ended, returns what is no objective,
exits mid-trial, forks. Each trial ends COMPLETE, PRUNED or FAIL with a one-line reason, once;
the sweep goes on, leaves no trial RUNNING, and its tables hold every trial once.

The per-trial modes share one sweep (a threshold pruner, upper 10: it stops NaN, inf and the
trial reporting 50), two workers: each case is a trial of it, and every worker must survive the
trials it ran before. Modes that end or disturb a whole sweep run in sweeps of their own."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import FrozenTrial, TrialState

from sweeps.storage import open_storage
from tests.conftest import ROOT
from tests.sweeps.contract_apps.app import LATE

APP = ROOT / "tests" / "sweeps" / "contract_apps" / "app.py"
NAN, INF = math.nan, math.inf

# (mode, state, the value or the one-line reason, the reported steps and values)
CASES = [
    ("ok", "COMPLETE", 0.25, {100: 1.0, 200: 0.5}),
    ("never_reports", "COMPLETE", 0.7, {}),
    ("reports_nan", "PRUNED", "pruned at step 100", {100: NAN}),
    ("reports_inf", "PRUNED", "pruned at step 100", {100: INF}),
    ("steps_backwards", "COMPLETE", 0.3, {300: 1.0, 200: 1.0, 100: 1.0}),
    ("one_step_again", "COMPLETE", 0.35, {100: 1.0}),
    ("negative_step", "FAIL", "ValueError: `step=-1` must be non-negative.", {}),
    ("reports_a_string", "FAIL", "ValueError: could not convert string to float: 'low'", {}),
    ("goes_on_when_told_to_stop", "PRUNED", "pruned at step 100", {100: 50.0}),
    ("returns_nan", "FAIL", "objective is not finite: nan", {}),
    ("returns_none", "FAIL", "objective is not a number: None", {}),
    ("returns_a_string", "FAIL", "objective is not a number: '0.5'", {}),
    ("exits_0", "FAIL", "the app exited with code 0", {}),
    ("exits_3", "FAIL", "the app exited with code 3", {}),
    ("exits_with_a_message", "FAIL", "the app exited: cannot go on", {}),
    ("raises_keyboard_interrupt", "FAIL", "KeyboardInterrupt", {100: 1.0}),
    ("raises_trial_pruned_when_told", "PRUNED", "pruned at step 100", {100: 50.0}),
    ("raises_trial_pruned_unasked", "PRUNED", "the app pruned itself (it judged itself)", {100: 1.0}),
    ("forks_child_exits", "COMPLETE", 0.4, {100: 0.9, 200: 0.8}),
    ("forks_child_returns", "COMPLETE", 0.4, {100: 0.9, 200: 0.8}),
]  # fmt: skip
MODES = [mode for mode, *_ in CASES]


def sweep(sweep_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(APP), "-m", "hydra/sweeper=optuna", f"hydra.sweep.dir={sweep_dir}",
           "hydra.sweeper.max_failures=null", *args]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)


def trials_of(sweep_dir: Path) -> list[FrozenTrial]:
    storage = open_storage(None, sweep_dir)
    return optuna.load_study(study_name="tbptt", storage=storage).get_trials()


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """The sweep of every per-trial mode once: its process, and its trials by mode."""
    sweep_dir = tmp_path_factory.mktemp("contract") / "sweep"
    proc = sweep(sweep_dir, f"mode=choice({','.join(MODES)})", "hydra/sweeper/sampler=grid",
                 "hydra/sweeper/pruner=threshold", f"hydra.sweeper.n_trials={len(MODES)}",
                 "hydra.sweeper.n_jobs=2")  # fmt: skip
    trials = trials_of(sweep_dir)
    by_mode: dict[str, list[FrozenTrial]] = {}
    for trial in trials:
        by_mode.setdefault(trial.params["mode"], []).append(trial)
    return proc, sweep_dir, trials, by_mode


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.parametrize(("mode", "state", "told", "reported"), CASES, ids=MODES)
def test_a_trial_that_breaks_the_contract_ends_once_in_its_state(
    shared, mode, state, told, reported
):
    _, _, _, by_mode = shared
    [trial] = by_mode[mode]  # once: no retry, no second tell
    assert trial.state.name == state, trial.user_attrs
    if state == "COMPLETE":
        assert trial.value == told and "fail_reason" not in trial.user_attrs
    else:
        key = "fail_reason" if state == "FAIL" else "stop_reason"
        assert trial.user_attrs[key] == told
    values = trial.intermediate_values
    assert values.keys() == reported.keys()
    assert all(same(values[step], value) for step, value in reported.items()), values


def test_the_sweep_of_contract_breakers_goes_on_to_its_total_and_tables_every_trial(shared):
    proc, sweep_dir, trials, by_mode = shared
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert sorted(by_mode) == sorted(MODES) and len(trials) == len(MODES)
    assert all(t.state.is_finished() for t in trials)  # nothing RUNNING or WAITING
    table = pd.read_parquet(sweep_dir / "trials.parquet")
    assert sorted(table["number"]) == list(range(len(MODES)))
    assert proc.stderr.strip().splitlines()[-1].startswith("best ")


def test_a_report_from_a_finished_jobs_thread_reaches_no_other_trial(tmp_path):
    # Trial 0 returns at once, leaving a thread that reports 1 s later, while trial 1 runs
    # in the same worker.
    proc = sweep(tmp_path, "mode=choice(reports_after_its_end,slow)", "hydra.sweeper.n_trials=2",
                 "hydra.sweeper.enqueue=[{mode: reports_after_its_end}, {mode: slow}]",
                 "hydra/sweeper/pruner=threshold")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = trials_of(tmp_path)
    assert (first.params["mode"], first.state, first.value) == (
        "reports_after_its_end", TrialState.COMPLETE, 0.45)
    assert (second.params["mode"], second.state, second.value) == ("slow", TrialState.COMPLETE, 0.25)
    assert second.intermediate_values == {100: 1.0, 200: 0.5}
    assert LATE not in first.intermediate_values.values()


def test_a_tuple_under_one_direction_stops_the_sweep_at_its_first_trial(tmp_path):
    proc = sweep(tmp_path, "mode=choice(returns_a_tuple,ok)", "hydra.sweeper.n_trials=3",
                 "hydra.sweeper.enqueue=[{mode: returns_a_tuple}]")
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert last.startswith("error: ") and "the app returned 2 values (0.5, 0.6)" in last, last
    trials = trials_of(tmp_path)
    assert [t.state for t in trials] == [TrialState.FAIL]  # stopped at the first trial

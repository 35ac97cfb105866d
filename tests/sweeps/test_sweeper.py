"""The sweeper end to end on a toy Hydra app (no training): faults, resume, totals, locks."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from sweeps.storage import SweepLock, open_storage
from tests.conftest import ROOT

TOY = ROOT / "tests" / "sweeps" / "toy_app.py"
GRID = "x=choice(-0.5,-0.2,0.1,0.4,0.7,0.9)"


def sweep(sweep_dir: Path, *args: str, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(TOY), "-m", "hydra/sweeper=optuna", f"hydra.sweep.dir={sweep_dir}"]
    return subprocess.run([*cmd, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def load(sweep_dir: Path) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="tbptt", storage=open_storage(None, sweep_dir))
    return study.get_trials()


def states(trials) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def test_a_trial_that_raises_ends_fail_and_the_sweep_goes_on(tmp_path):
    proc = sweep(tmp_path, GRID, "hydra/sweeper/sampler=grid", "hydra/sweeper/pruner=none",
                 "hydra.sweeper.n_trials=6", "fail_below=0")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    trials = load(tmp_path)
    assert states(trials) == {"COMPLETE": 4, "FAIL": 2}
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert {t.params["x"] for t in failed} == {-0.5, -0.2}
    assert all(t.user_attrs["fail_reason"].startswith("ValueError: boom") for t in failed)
    best = (tmp_path / "best.yaml").read_text()
    assert "x: 0.4" in best
    assert "command: python tests/sweeps/toy_app.py fail_below=0 x=0.4" in best


def test_max_failures_stops_the_sweep_with_a_clear_message(tmp_path):
    proc = sweep(tmp_path, "x=interval(-1,-0.5)", "fail_below=0", "hydra.sweeper.n_trials=10",
                 "hydra.sweeper.max_failures=3")  # fmt: skip
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert re.match(
        r"error: stopped after [34] failed trials \(hydra.sweeper.max_failures=3\)", last
    )
    assert "Traceback" not in proc.stderr
    assert states(load(tmp_path))["FAIL"] >= 3


def test_a_killed_worker_fails_its_trial_which_is_retried(tmp_path):
    marker = tmp_path / "killed-once"
    proc = sweep(tmp_path / "s", GRID, "hydra/sweeper/sampler=grid", "hydra/sweeper/pruner=none",
                 "hydra.sweeper.n_trials=4", f"kill_marker={marker}",
                 "kill_xs=[-0.5]")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    trials = load(tmp_path / "s")
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["fail_reason"] == "worker killed by signal 9"
    retried = [t for t in trials if t.user_attrs.get("retried_trial") == failed[0].number]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == failed[0].params
    assert states(trials) == {"COMPLETE": 4, "FAIL": 1}  # n_trials counts the retry, not both


def test_rerunning_continues_the_study_to_its_total(tmp_path):
    args = ("x=interval(-1,1)", "hydra/sweeper/pruner=none")
    assert sweep(tmp_path, *args, "hydra.sweeper.n_trials=3").returncode == 0
    assert len(load(tmp_path)) == 3
    assert sweep(tmp_path, *args, "hydra.sweeper.n_trials=5").returncode == 0
    assert len(load(tmp_path)) == 5
    assert sweep(tmp_path, *args, "hydra.sweeper.n_trials=5").returncode == 0
    trials = load(tmp_path)
    assert len(trials) == 5 and all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == list("01234")


def test_trials_left_running_by_a_killed_sweep_are_failed_and_retried(tmp_path):
    study = optuna.create_study(study_name="tbptt", storage=open_storage(None, tmp_path))
    orphan = study.ask({"x": optuna.distributions.FloatDistribution(-1, 1)})
    proc = sweep(tmp_path, "x=interval(-1,1)", "hydra.sweeper.n_trials=3")
    assert proc.returncode == 0, proc.stderr
    trials = load(tmp_path)
    assert trials[orphan.number].state == TrialState.FAIL
    retry = [t for t in trials if t.user_attrs.get("retried_trial") == orphan.number]
    assert retry and retry[0].params == trials[orphan.number].params
    assert not [t for t in trials if t.state == TrialState.RUNNING]


def test_a_second_sweep_on_the_same_directory_is_refused(tmp_path):
    with SweepLock(tmp_path):
        proc = sweep(tmp_path, "x=interval(-1,1)", "hydra.sweeper.n_trials=2")
    assert proc.returncode == 2
    assert "is in use by a running sweep" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "arg, message",
    [
        ("hydra.sweeper.n_jobs=0", "hydra.sweeper.n_jobs must be >= 1, got 0"),
        ("hydra.sweeper.n_trials=0", "hydra.sweeper.n_trials must be >= 1, got 0"),
        ("hydra.sweeper.storage=ftp://x/y", "hydra.sweeper.storage: unknown scheme 'ftp'"),
        ("x=interval(1,-1)", "x"),
        ("y=interval(0,1)", "hydra.sweeper.params.y: no such key in the config"),
        ("hydra.sweeper.budget=30s", "hydra.sweeper.budget: the app's config has no trainer."),
    ],
)
def test_bad_sweeper_settings_fail_before_any_trial(tmp_path, arg, message):
    args = [arg] if arg[1] == "=" else ["x=interval(-1,1)", arg]
    proc = sweep(tmp_path, *args)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last
    assert not list(tmp_path.glob("*/result.json")) and not (tmp_path / "study.journal").exists()


def test_a_sweep_stopped_by_its_timeout_says_so_and_how_to_go_on(tmp_path):
    proc = sweep(tmp_path, "x=interval(-1,1)", "sleep=1.5", "hydra.sweeper.n_trials=10",
                 "hydra.sweeper.n_jobs=1", "hydra.sweeper.timeout=2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    said = proc.stdout + proc.stderr  # (Hydra's log handler writes to stdout)
    assert "hydra.sweeper.timeout=2s reached: no more trials start (" in said
    assert "of 10 counted); re-run the same command to go on" in said


@pytest.mark.slow
def test_a_resumed_sweep_continues_the_search_rather_than_replaying_it(tmp_path):
    args = ("x=interval(-1,1)", "hydra/sweeper/sampler=random", "hydra/sweeper/pruner=none")
    for total in (4, 8):
        proc = sweep(tmp_path, *args, f"hydra.sweeper.n_trials={total}")
        assert proc.returncode == 0, proc.stderr[-2000:]
    xs = [t.params["x"] for t in load(tmp_path)]
    assert len(xs) == 8 and len(set(xs)) == 8  # no parameter set tried twice
    again = tmp_path / "again"  # the same seed, uninterrupted: the same first four
    assert sweep(again, *args, "hydra.sweeper.n_trials=4").returncode == 0
    assert [t.params["x"] for t in load(again)] == xs[:4]


@pytest.mark.slow
def test_enqueued_points_are_tried_first_and_bad_ones_are_named(tmp_path):
    args = ("x=interval(-1,1)", "hydra/sweeper/pruner=none", "hydra.sweeper.n_trials=3")
    proc = sweep(tmp_path / "ok", *args, "hydra.sweeper.enqueue=[{x:0.3}]")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [t.params["x"] for t in load(tmp_path / "ok")][0] == 0.3
    for point, message in [
        ("{y:0.3}", "hydra.sweeper.enqueue[0]: 'y' is not a swept key"),
        ("{x:5}", "hydra.sweeper.enqueue[0]: x=5 is outside"),
    ]:
        proc = sweep(tmp_path / "bad", *args, f"hydra.sweeper.enqueue=[{point}]")
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-1000:]
        assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_a_second_study_in_the_same_directory_is_refused_and_the_first_kept(tmp_path):
    args = ("x=interval(-1,1)", "hydra/sweeper/pruner=none", "hydra.sweeper.n_trials=2")
    assert sweep(tmp_path, *args, "hydra.sweeper.study_name=first").returncode == 0
    before = {p: p.read_bytes() for p in tmp_path.glob("**/*") if p.is_file()}
    proc = sweep(tmp_path, *args, "hydra.sweeper.study_name=second")
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert "holds the study 'first'" in last and "this sweep's is 'second'" in last, last
    after = {p: p.read_bytes() for p in tmp_path.glob("**/*") if p.is_file()}
    assert {p: b for p, b in after.items() if p.name != ".sweep.lock"} == {
        p: b for p, b in before.items() if p.name != ".sweep.lock"
    }
    more = sweep(tmp_path, *args[:2], "hydra.sweeper.n_trials=3", "hydra.sweeper.study_name=first")
    assert more.returncode == 0, more.stderr[-2000:]


@pytest.mark.slow
def test_an_exhausted_grid_ends_the_sweep_without_repeating_a_point(tmp_path):
    proc = sweep(tmp_path, GRID, "hydra/sweeper/sampler=grid", "hydra.sweeper.n_trials=10")
    assert proc.returncode == 0, proc.stderr[-2000:]
    xs = [t.params["x"] for t in load(tmp_path)]
    assert sorted(xs) == [-0.5, -0.2, 0.1, 0.4, 0.7, 0.9]
    counts = [tuple(map(int, m)) for m in re.findall(r"\| (\d+)/(\d+) \|", proc.stderr)]
    assert counts and all(done <= total for done, total in counts)


@pytest.fixture(scope="module")
def two_trials(tmp_path_factory) -> Path:
    """A finished study of two trials of x in interval(-1, 1), steps=6: copy it to re-run."""
    sweep_dir = tmp_path_factory.mktemp("two-trials")
    proc = sweep(sweep_dir, "x=interval(-1,1)", "hydra/sweeper/pruner=none",
                 "hydra.sweeper.n_trials=2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return sweep_dir


@pytest.mark.parametrize(
    "then, message",
    [
        (["x=choice(0.1,0.2)"],
         "hydra.sweeper.params.x: the study 'tbptt' sampled it from interval(-1.0, 1.0), this "
         "run asks for choice(0.1, 0.2); one study cannot change that"),
        (["x=tag(log,interval(0.1,1))"], "sampled it from interval(-1.0"),
        (["x=interval(-1,1)", "steps=8"],
         "the study 'tbptt' ran with steps=6 (this run: 8): its trials would not compare"),
        (["x=interval(-1,1)", "hydra.sweeper.direction=maximize"],
         "hydra.sweeper.direction=maximize, but the study 'tbptt' was created to minimize"),
    ],
    ids=["kind", "log scale", "fixed setting", "direction"],
)  # fmt: skip
def test_a_rerun_that_changed_the_study_says_what_changed(two_trials, tmp_path, then, message):
    shutil.copytree(two_trials, tmp_path / "sweep")
    before = (tmp_path / "sweep" / "study.journal").read_bytes()
    proc = sweep(tmp_path / "sweep", *then, "hydra/sweeper/pruner=none",
                 "hydra.sweeper.n_trials=4")  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "sweep" / "study.journal").read_bytes() == before  # nothing written


@pytest.mark.slow
def test_a_rerun_may_move_a_range_or_sweep_one_more_key(two_trials, tmp_path):
    shutil.copytree(two_trials, tmp_path / "sweep")
    proc = sweep(tmp_path / "sweep", "x=interval(0,1)", "steps=choice(4,6)",
                 "hydra/sweeper/pruner=none", "hydra.sweeper.n_trials=4")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(load(tmp_path / "sweep")) == 4


def test_a_sweep_whose_every_trial_fails_exits_non_zero(tmp_path):
    proc = sweep(tmp_path, "x=interval(-1,1)", "fail_below=2", "hydra.sweeper.n_trials=3")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    # "last": whichever of the two workers' trials failed last
    assert re.match(r"error: no trial finished: 3 failed; last: trial \d: ValueError: boom", last)


@pytest.mark.slow
def test_repeated_kills_of_the_sweep_do_not_eat_the_total_or_the_retries(tmp_path):
    args = ("x=interval(-1,1)", "sleep=1.5", "hydra/sweeper/pruner=none",
            "hydra.sweeper.n_trials=8", "hydra.sweeper.max_retries=1")  # fmt: skip
    cmd = [sys.executable, str(TOY), "-m", "hydra/sweeper=optuna", f"hydra.sweep.dir={tmp_path}"]
    for _ in range(3):  # killed while its two workers are mid-trial, three times running
        proc = subprocess.Popen([*cmd, *args], cwd=ROOT, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline and not _running(tmp_path):
            time.sleep(0.1)
        time.sleep(0.5)
        proc.kill()
        proc.wait()
    done = sweep(tmp_path, *args)
    assert done.returncode == 0, done.stderr[-2000:]
    trials = load(tmp_path)
    assert states(trials).get("COMPLETE") == 8  # n_trials results, the interrupted ones re-run
    assert all(t.user_attrs.get("interrupted") for t in trials if t.state == TrialState.FAIL)
    counts = [tuple(map(int, m)) for m in re.findall(r"\| (\d+)/(\d+) \|", done.stderr)]
    assert counts and all(n <= total for n, total in counts)


def _running(sweep_dir: Path) -> bool:
    if not (sweep_dir / "study.journal").exists():
        return False
    try:
        return any(t.state == TrialState.RUNNING for t in load(sweep_dir))
    except Exception:  # noqa: BLE001 - the journal is being written
        return False



def test_a_config_error_inside_a_trial_is_recorded_with_its_message(tmp_path):
    proc = sweep(tmp_path, GRID, "hydra/sweeper/sampler=grid", "hydra/sweeper/pruner=none",
                 "hydra.sweeper.n_trials=6", "bad_above=0.5")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    failed = [t for t in load(tmp_path) if t.state == TrialState.FAIL]
    assert sorted(t.params["x"] for t in failed) == [0.7, 0.9]
    reasons = {t.user_attrs["fail_reason"] for t in failed}
    assert reasons == {"error: x must be <= 0.5, got 0.7", "error: x must be <= 0.5, got 0.9"}
    table = pd.read_parquet(tmp_path / "trials.parquet")
    assert set(table.loc[table["state"] == "fail", "stop_reason"]) == reasons

"""Faults during sweeps: workers and sweeps killed, full disks; nothing recorded is lost."""

from __future__ import annotations

import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from sweeps.policy import counted
from sweeps.storage import open_storage
from tests.conftest import ROOT, TINY
from tests.sweeps.test_sweeper import load, states, sweep

TEN = "x=choice(-0.9,-0.7,-0.5,-0.3,-0.1,0.1,0.3,0.5,0.7,0.9)"


@pytest.mark.slow
def test_three_of_ten_workers_killed_are_failed_retried_and_replaced(tmp_path):
    proc = sweep(tmp_path / "s", TEN, "hydra/sweeper/sampler=grid", "hydra/sweeper/pruner=none",
                 "hydra.sweeper.n_trials=10", f"kill_marker={tmp_path}/killed",
                 "kill_xs=[-0.7,0.1,0.5]")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    trials = load(tmp_path / "s")
    assert states(trials) == {"COMPLETE": 10, "FAIL": 3}
    assert counted(trials) == 10
    killed = {t.params["x"] for t in trials if t.state == TrialState.FAIL}
    assert killed == {-0.7, 0.1, 0.5}
    table = pd.read_parquet(tmp_path / "s" / "trials.parquet")
    assert len(table) == 13 and (table["state"] == "fail").sum() == 3


def test_a_full_disk_fails_the_trial_and_the_sweep_goes_on(tmp_path):
    def limit_file_size() -> None:  # writes past 1 MiB fail with EFBIG, like a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))

    args = [sys.executable, str(ROOT / "tests/sweeps/toy_app.py"), "-m", "hydra/sweeper=optuna",
            f"hydra.sweep.dir={tmp_path}", "x=choice(-0.5,0.5)", "hydra/sweeper/sampler=grid",
            "hydra/sweeper/pruner=none", "hydra.sweeper.n_trials=2", "write_mb=2"]  # fmt: skip
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          preexec_fn=limit_file_size)  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]  # both ran; neither finished
    assert "error: no trial finished: 2 failed" in proc.stderr.strip().splitlines()[-1]
    trials = load(tmp_path)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL]
    assert all("File too large" in t.user_attrs["fail_reason"] for t in trials)


def test_an_unwritable_sweep_directory_is_reported_before_any_trial(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = sweep(blocker / "sweep", "x=interval(-1,1)", "hydra.sweeper.n_trials=2")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "a-file" in last and "Traceback" not in proc.stderr


def training_sweep(sweep_dir: Path) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "tbptt.train", "-m", *TINY, "hydra/sweeper=optuna",
            "hydra.sweeper.n_trials=16", "hydra.sweeper.n_jobs=2", f"hydra.sweep.dir={sweep_dir}",
            "trainer.max_tokens=8192", "hydra/sweeper/pruner=none",
            "optim.lr=tag(log,interval(1e-3,0.05))"]  # fmt: skip
    pipe = subprocess.PIPE
    return subprocess.Popen(args, cwd=ROOT, stdout=pipe, stderr=pipe, text=True,
                            start_new_session=True, preexec_fn=terminal_like)  # fmt: skip


def terminal_like() -> None:
    # A shell without job control starts background commands (this test runner, maybe) with
    # SIGINT ignored, and children inherit that; a terminal's foreground command has it default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt(proc: subprocess.Popen[str], sig: signal.Signals, after: float, sweep_dir) -> str:
    started, before = time.time(), set(sweep_dir.glob("*/steps.parquet"))
    while set(sweep_dir.glob("*/steps.parquet")) == before and time.time() - started < 60:
        time.sleep(0.1)  # until this run's trials train: then a random moment among them
    time.sleep(after)
    if sig == signal.SIGINT:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
    else:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return err


@pytest.mark.slow
def test_sweep_killed_and_interrupted_at_random_moments_resumes_to_its_total(tmp_path):
    rng = random.Random(7)
    interrupt(training_sweep(tmp_path), signal.SIGKILL, rng.uniform(0.5, 3), tmp_path)
    err = interrupt(training_sweep(tmp_path), signal.SIGINT, rng.uniform(0.5, 3), tmp_path)
    assert "interrupted:" in err and "resume by running the same command again" in err
    assert "Traceback" not in err
    final = training_sweep(tmp_path)
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, err[-2000:]

    study = optuna.load_study(study_name="tbptt", storage=open_storage(None, tmp_path))
    trials = study.get_trials()
    assert counted(trials) == 16
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    for job in (p for p in tmp_path.iterdir() if p.name.isdigit()):
        for table in job.glob("*.parquet"):
            pd.read_parquet(table)  # every table written before a kill is whole
    combined = pd.read_parquet(tmp_path / "steps.parquet")
    finished = {t.number for t in trials if t.state.is_finished() and t.state != TrialState.FAIL}
    assert finished <= set(combined["trial"])


@pytest.mark.slow
def test_a_full_disk_under_the_sweep_stops_it_cleanly_and_a_rerun_finishes(tmp_path):
    def small_disk() -> None:  # every file stops growing at 160 kB (EFBIG), the journal first
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (160_000, 160_000))

    args = [sys.executable, str(ROOT / "tests/sweeps/toy_app.py"), "-m", "hydra/sweeper=optuna",
            f"hydra.sweep.dir={tmp_path}", "x=interval(-1,1)", "hydra/sweeper/pruner=none",
            "steps=40", "hydra.sweeper.n_trials=60"]  # fmt: skip
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=240,
                          preexec_fn=small_disk)  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: disk full writing ") and "re-run the same command" in last
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("**/.*.tmp"))  # no half-written files left behind
    recorded = {t.number: t.value for t in load(tmp_path) if t.state == TrialState.COMPLETE}
    assert recorded

    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr[-2000:]
    trials = load(tmp_path)
    assert counted(trials) == 60
    assert {n: trials[n].value for n in recorded} == recorded  # nothing recorded was lost
    pd.read_parquet(tmp_path / "trials.parquet")

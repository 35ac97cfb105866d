"""Odd values of ``hydra.sweeper.budget`` on the training app's command line (tests/conftest.py
TINY), table-driven: each is refused in one line naming the key and the value, before any
compute (forked from one process that imported the app once, tests/forkrun.py), or runs to a
clear end. A budget too small for one trial is refused once the workers have measured their
speed: a real sweep of a few seconds, under ``-m slow``."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from sweeps.config import PlanConfig
from sweeps.plan import make_plan, parse_duration
from sweeps.storage import open_storage
from tests.conftest import ROOT, TINY
from tests.forkrun import run_many

PRELOAD = ("torch", "torch._dynamo", "pandas", "optuna", "hydra", "sweeps.sweeper", "tbptt.config")
# A budget plans each trial's compute, so TINY's own budget and cadence keys are left out.
TINY_BUDGETED = [o for o in TINY if not o.startswith(("trainer.max_tokens", "trainer.eval_every"))]
SWEEP = ["-m", *TINY_BUDGETED, "hydra/sweeper=optuna", "optim.lr=interval(1e-3,1e-2)"]
DURATION = "hydra.sweeper.budget must be seconds or a duration such as 9m, got"
PLANNED = "is set by hydra.sweeper.budget's plan (every trial's compute comes from the budget); drop it, or drop hydra.sweeper.budget"

# (case, overrides, the one line it ends with)
REFUSED = [
    ("zero", ["hydra.sweeper.budget=0"], "error: hydra.sweeper.budget must be a finite number of seconds > 0, got 0"),
    ("zero seconds", ["hydra.sweeper.budget=0s"], "error: hydra.sweeper.budget must be a finite number of seconds > 0, got '0s'"),
    ("negative", ["hydra.sweeper.budget=-5"], "error: hydra.sweeper.budget must be a finite number of seconds > 0, got -5"),
    ("negative duration", ["hydra.sweeper.budget='-5m'"], f"error: {DURATION} '-5m'"),
    ("NaN", ["hydra.sweeper.budget=nan"], "error: hydra.sweeper.budget must be a finite number of seconds > 0, got nan"),
    ("inf", ["hydra.sweeper.budget=inf"], "error: hydra.sweeper.budget must be a finite number of seconds > 0, got inf"),
    ("overflowing to inf", ["hydra.sweeper.budget=1e400"], "error: hydra.sweeper.budget must be a finite number of seconds > 0, got inf"),
    ("a word", ["hydra.sweeper.budget=abc"], f"error: {DURATION} 'abc'"),
    ("a unit alone", ["hydra.sweeper.budget=m"], f"error: {DURATION} 'm'"),
    ("units out of order", ["hydra.sweeper.budget=5m1h"], f"error: {DURATION} '5m1h'"),
    ("a boolean", ["hydra.sweeper.budget=true"], f"error: {DURATION} True"),
    ("a list", ["hydra.sweeper.budget=[1,2]"], f"error: {DURATION} [1, 2]"),
    ("with a timeout", ["hydra.sweeper.budget=5m", "hydra.sweeper.timeout=60"], "error: hydra.sweeper.timeout and hydra.sweeper.budget are both set: keep one"),
    ("with trainer.max_flops", ["hydra.sweeper.budget=5m", "trainer.max_flops=1e9"], f"error: trainer.max_flops {PLANNED}"),
    ("with trainer.max_tokens", ["hydra.sweeper.budget=5m", "trainer.max_tokens=1024"], f"error: trainer.max_tokens {PLANNED}"),
    ("with a transfer check", ["hydra.sweeper.budget=5m", "hydra.sweeper.transfer.top_k=2"], "error: hydra.sweeper.transfer is for n_trials sweeps"),
    ("with two objectives", ["hydra.sweeper.budget=5m", "hydra.sweeper.direction=[minimize,maximize]"], "error: hydra.sweeper.budget needs one objective"),
    ("with no search share", ["hydra.sweeper.budget=5m", "hydra.sweeper.plan.search=0"], "error: hydra.sweeper.plan.search must be in (0, 1], got 0"),
    ("with no final run", ["hydra.sweeper.budget=5m", "hydra.sweeper.plan.search=0.5", "hydra.sweeper.plan.candidate_share=0.45"], "error: hydra.sweeper.plan.search + plan.candidate_share must leave at least 10% of the budget to the final run"),
    ("with a swept cadence", ["hydra.sweeper.budget=5m", "trainer.eval_every_tokens=choice(256,512)"], f"error: trainer.eval_every_tokens {PLANNED}"),
]  # fmt: skip


@pytest.fixture(scope="module")
def refused(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("budget")
    commands = [[*SWEEP, *args, f"hydra.sweep.dir={tmp / str(i)}"]
                for i, (_, args, _) in enumerate(REFUSED)]  # fmt: skip
    procs = run_many("tbptt.train", commands, ROOT, tmp / "output", preload=PRELOAD)
    return tmp, procs


@pytest.mark.parametrize(("case", "args", "says"), REFUSED, ids=[c[0] for c in REFUSED])
def test_a_budget_that_cannot_be_planned_is_refused_before_any_compute(
    refused, case, args, says
):
    tmp, procs = refused
    index = [c[0] for c in REFUSED].index(case)
    proc, run_dir = procs[index], tmp / str(index)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines and lines[-1].startswith(says), lines[-1:]
    assert "inf" not in case or lines[-1].endswith("got inf"), lines[-1]
    assert not (run_dir / "study.journal").exists()  # no study was created
    assert not list(run_dir.glob("*/steps.parquet"))  # nothing trained


@pytest.mark.parametrize(
    ("given", "seconds"),
    [(540, 540.0), ("90s", 90.0), ("9m", 540.0), ("1h30m", 5400.0), ("1.5h30m", 7200.0),
     ("5", 5.0), (" 2M ", 120.0), ("10000h", 36_000_000.0)],
)  # fmt: skip
def test_a_budget_reads_as_seconds(given, seconds):
    assert parse_duration(given) == seconds


def test_a_huge_budget_plans_finite_phases_in_order():
    # 10000h: accepted (no upper bound); its plan is ordinary arithmetic at that scale.
    plan = make_plan(parse_duration("10000h"), PlanConfig(), workers=2, rate=1e9, speedup=1.8,
                     started=20.0)  # fmt: skip
    assert 0 < plan.search_end < plan.candidates_end < plan.budget == 36_000_000.0
    assert math.isfinite(plan.rate) and plan.trial_flops > 0 and plan.eval_every_flops >= 1


@pytest.mark.slow
@pytest.mark.parametrize("budget", ["3s", "'5'"], ids=["3 seconds", "'5' (a string)"])
def test_a_budget_too_small_for_one_trial_is_refused_once_measured(tmp_path, budget):
    cmd = [sys.executable, "-m", "tbptt.train", *SWEEP, f"hydra.sweeper.budget={budget}",
           "hydra.sweeper.n_jobs=1", f"hydra.sweep.dir={tmp_path}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert last.startswith("error: hydra.sweeper.budget=") and "give a larger budget" in last
    if (tmp_path / "study.journal").exists():  # the study stays, with no trial left RUNNING
        study = optuna.load_study(study_name="tbptt", storage=open_storage(None, tmp_path))
        assert all(t.state.is_finished() for t in study.trials)
    assert not list(Path(tmp_path).glob("*/steps.parquet"))  # no trial trained


def test_a_budget_for_an_app_without_the_trainers_keys_stops_in_one_line(tmp_path):
    # Any app under the trial contract may name a budget; its plan sets trainer.* keys.
    cmd = [sys.executable, str(ROOT / "tests" / "sweeps" / "toy_app.py"), "-m",
           "hydra/sweeper=optuna", f"hydra.sweep.dir={tmp_path}", "x=interval(0,1)",
           "hydra.sweeper.budget=30s", "hydra.sweeper.n_jobs=1"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert last.startswith(
        "error: hydra.sweeper.budget: the app's config has no trainer.max_tokens: a budgeted "
        "sweep sets each trial's compute through trainer.max_tokens, trainer.max_flops, "
    ) and last.endswith("drop hydra.sweeper.budget and give hydra.sweeper.n_trials")
    assert not (tmp_path / "study.journal").exists()  # refused before the study, and any compute

"""The example app (examples/sine): a plain PyTorch loop that uses the trial contract's two
lines, swept with pruning by this project's sweeper, end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sweeps.storage import open_storage
from tests.conftest import ROOT

APP = ROOT / "examples" / "sine" / "app.py"
SHORT = ("steps=40", "eval_every=10", "hidden=8")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(APP), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


@pytest.mark.slow
def test_the_example_app_runs_alone_and_returns_its_loss(tmp_path):
    proc = run(*SHORT, f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr


def test_the_example_app_is_swept_and_its_bad_trials_pruned(tmp_path):
    proc = run("-m", *SHORT, f"hydra.sweep.dir={tmp_path}", "lr=choice(1e-4,2e-2)",
               "hydra/sweeper/sampler=grid", "hydra/sweeper/pruner=threshold",
               "hydra.sweeper.pruner.upper=0.2", "hydra.sweeper.n_trials=2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="sine", storage=open_storage(None, tmp_path))
    by_lr = {t.params["lr"]: t for t in study.trials}
    slow, fast = by_lr[1e-4], by_lr[2e-2]
    assert slow.state == TrialState.PRUNED and list(slow.intermediate_values) == [10]
    assert slow.user_attrs["stop_reason"] == "pruned at step 10"
    assert fast.state == TrialState.COMPLETE and list(fast.intermediate_values) == [10, 20, 30, 40]
    assert fast.value == min(fast.intermediate_values.values())
    assert (tmp_path / "best.yaml").read_text().count("command: python examples/sine/app.py") == 1


def test_the_example_apps_own_check_refuses_a_bad_space_before_any_trial(tmp_path):
    proc = run("-m", *SHORT, f"hydra.sweep.dir={tmp_path}", "lr=choice(-1,-0.5)")
    assert proc.returncode == 2
    assert "lr must be > 0, got -1" in proc.stderr.strip().splitlines()[-1]
    assert not Path(tmp_path / "study.journal").exists()

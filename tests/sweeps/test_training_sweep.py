"""A real sweep of the training app: tiny model, synthetic corpus, 2 workers, 8 trials."""

from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pandas as pd
import pytest
import yaml

from sweeps.storage import open_storage
from tests.conftest import ROOT, TINY


def test_tiny_training_sweep_prunes_and_reproduces_its_best_trial(tmp_path):
    sweep_dir = tmp_path / "sweep"
    cmd = [
        sys.executable, "-m", "tbptt.train", "-m", *TINY, "hydra/sweeper=optuna",
        "hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_startup_trials=2",
        "hydra.sweeper.n_trials=8", "hydra.sweeper.n_jobs=2", f"hydra.sweep.dir={sweep_dir}",
        "trainer.max_tokens=2048", "optim.lr=tag(log,interval(1e-4,0.1))", "clip=none,norm",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    study = optuna.load_study(study_name="tbptt", storage=open_storage(None, sweep_dir))
    states = [t.state.name for t in study.trials]
    assert len(states) == 8 and set(states) <= {"COMPLETE", "PRUNED"}
    assert "PRUNED" in states and "COMPLETE" in states
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert all(
        t.user_attrs["stop_reason"].startswith(("pruned at token", "diverged")) for t in pruned
    )
    assert all(max(t.intermediate_values) < 2048 for t in pruned if t.intermediate_values)

    trials = pd.read_parquet(sweep_dir / "trials.parquet")
    assert len(trials) == 8 and {"param.optim.lr", "param.clip"} <= set(trials)
    steps = pd.read_parquet(sweep_dir / "steps.parquet")
    assert set(steps["trial"]) == set(range(8))

    best = yaml.safe_load((sweep_dir / "best.yaml").read_text())
    assert best["value"] == study.best_value
    run_dir = tmp_path / "single"
    args = best["command"].split()[3:]  # after "python -m tbptt.train"
    single = subprocess.run(
        [sys.executable, "-m", "tbptt.train", *args, f"hydra.run.dir={run_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-2000:]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["best_val_loss"] == best["value"]  # same config and seed: same numbers


@pytest.mark.slow
def test_a_trial_the_app_rejects_keeps_the_apps_own_message(tmp_path):
    cmd = [
        sys.executable, "-m", "tbptt.train", "-m", *TINY, "hydra/sweeper=optuna",
        "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1", f"hydra.sweep.dir={tmp_path}",
        "optim.lr=tag(log,interval(1e-3,1e-2))", "trainer.resume=true",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    study = optuna.load_study(study_name="tbptt", storage=open_storage(None, tmp_path))
    reasons = [t.user_attrs["fail_reason"] for t in study.trials]
    assert len(reasons) == 2
    assert all(r.startswith("error: trainer.resume: checkpoint not found: ") for r in reasons)
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no trial finished: 2 failed")

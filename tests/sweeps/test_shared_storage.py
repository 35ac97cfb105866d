"""Several separately started sweep processes share one study on a PostgreSQL server."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import optuna
import pytest

from tests.conftest import ROOT

URL = os.environ.get("TBPTT_TEST_POSTGRES_URL")
TOY = ROOT / "tests" / "sweeps" / "toy_app.py"

pytestmark = pytest.mark.skipif(
    not URL,
    reason="set TBPTT_TEST_POSTGRES_URL (as .ci/run does) to test a shared PostgreSQL study",
)


def start(sweep_dir: Path, study: str) -> subprocess.Popen[str]:
    args = [
        sys.executable, str(TOY), "-m", "hydra/sweeper=optuna", "x=interval(-1,1)", "sleep=0.3",
        f"hydra.sweeper.storage={URL}", f"hydra.sweeper.study_name={study}",
        "hydra.sweeper.n_trials=12", "hydra.sweeper.n_jobs=1", f"hydra.sweep.dir={sweep_dir}",
    ]  # fmt: skip
    return subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_three_processes_share_one_study_without_losing_or_duplicating(tmp_path):
    study_name = f"shared-{uuid.uuid4().hex[:8]}"
    procs = [start(tmp_path / f"machine{i}", study_name) for i in range(3)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    try:
        trials = optuna.load_study(study_name=study_name, storage=URL).get_trials()
    finally:
        optuna.delete_study(study_name=study_name, storage=URL)
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials)))
    # Each process checks the total before it asks: at most one extra trial per other process.
    assert 12 <= len(trials) <= 14
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}  # none lost, none RUNNING
    job_dirs = Counter(Path(t.user_attrs["job_dir"]).name for t in trials)
    assert all(count == 1 for count in job_dirs.values())  # every trial ran exactly once
    machines = {Path(t.user_attrs["job_dir"]).parent.name for t in trials}
    assert len(machines) == 3  # all three processes took trials

"""Sweeps on real engines: agents as Slurm jobs on a one-node cluster (``.ci/slurm.sh``) and as
Ray tasks on a local two-node Ray cluster, against PostgreSQL on loopback. One agent is taken
away mid-trial (``scancel``; the second Ray node stopped): its trial is failed and retried with
the same parameters, the study reaches its total, nothing is counted twice and nothing is left
RUNNING or WAITING. Slow (each starts an engine): ``.ci/run`` runs them after ``make test``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sweeps.policy import counted
from tests.conftest import ROOT

URL = os.environ.get("TBPTT_TEST_POSTGRES_URL")
TOY = ROOT / "tests" / "sweeps" / "toy_app.py"
LIVENESS = ("hydra.sweeper.heartbeat_interval=0.5", "hydra.sweeper.grace_period=5")
TOTAL = 6

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not URL, reason="set TBPTT_TEST_POSTGRES_URL (as .ci/run does)"),
]


def start(sweep_dir: Path, study: str, *extra: str) -> subprocess.Popen[str]:
    args = [
        sys.executable, str(TOY), "-m", "hydra/sweeper=optuna", "x=interval(-1,1)", "sleep=4",
        "hydra/sweeper/pruner=none", f"hydra.sweeper.storage={URL}",
        f"hydra.sweeper.study_name={study}", f"hydra.sweeper.n_trials={TOTAL}",
        "hydra.sweeper.n_jobs=2", f"hydra.sweep.dir={sweep_dir}", *LIVENESS, *extra,
    ]  # fmt: skip
    pipe = subprocess.PIPE
    return subprocess.Popen(args, cwd=ROOT, stdout=pipe, stderr=pipe, text=True)


def trials_of(study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=URL).get_trials()


def wait_for_running(study: str, proc: subprocess.Popen[str], count: int, limit: float) -> None:
    """Until ``count`` trials run with a heartbeat (their agents are mid-trial)."""
    end = time.monotonic() + limit
    while time.monotonic() < end and proc.poll() is None:
        try:
            running = [t for t in trials_of(study) if t.state == TrialState.RUNNING]
        except KeyError:  # the study is not created yet
            running = []
        if len([t for t in running if "worker" in t.user_attrs]) >= count:
            return
        time.sleep(0.3)
    out, err = proc.communicate(timeout=30) if proc.poll() is not None else ("", "")
    pytest.fail(f"no {count} trials running after {limit:.0f} s\n{err[-3000:]}")


def check_retried_once(study: str, proc: subprocess.Popen[str]) -> None:
    out, err = proc.communicate(timeout=420)
    try:
        assert proc.returncode == 0, err[-4000:]
        trials = trials_of(study)
    finally:
        optuna.delete_study(study_name=study, storage=URL)
    assert counted(trials) == TOTAL  # the retry counts, the failure it replaced does not
    states = Counter(t.state for t in trials)
    assert states[TrialState.RUNNING] == states[TrialState.WAITING] == 0
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["fail_reason"] == (
        "its agent stopped (no heartbeat)"
    )
    (retry,) = [t for t in trials if t.user_attrs.get("retried_trial") == failed[0].number]
    assert retry.state == TrialState.COMPLETE and retry.params == failed[0].params
    assert states[TrialState.COMPLETE] == TOTAL
    homes = [Path(t.user_attrs["job_dir"]) for t in trials if t.state == TrialState.COMPLETE]
    assert all((home / "result.json").exists() for home in homes)  # every result came home


@pytest.mark.skipif(shutil.which("sbatch") is None, reason="no Slurm here (.ci/slurm.sh)")
def test_a_slurm_sweep_survives_a_cancelled_agent(tmp_path):
    study = f"slurm-{uuid.uuid4().hex[:8]}"
    proc = start(tmp_path, study, "hydra/launcher=submitit_slurm",
                 "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=null",
                 "hydra.launcher.timeout_min=10", f"hydra.launcher.name={study}")  # fmt: skip
    wait_for_running(study, proc, count=2, limit=180)
    jobs = subprocess.run(["squeue", "-h", "-n", study, "-o", "%i"], capture_output=True,
                          text=True, check=True).stdout.split()  # fmt: skip
    assert len(jobs) == 2, jobs
    subprocess.run(["scancel", jobs[0]], check=True)
    check_retried_once(study, proc)


def test_a_ray_sweep_survives_losing_a_node(tmp_path):
    pytest.importorskip("ray")
    from tests.engines.ray_cluster import two_node_cluster

    study = f"ray-{uuid.uuid4().hex[:8]}"
    with two_node_cluster() as cluster:
        proc = start(tmp_path, study, "hydra/launcher=ray",
                     f"hydra.launcher.address={cluster.address}")  # fmt: skip
        wait_for_running(study, proc, count=2, limit=180)
        cluster.stop_second_node()
        check_retried_once(study, proc)

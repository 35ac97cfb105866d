"""Budgeted sweeps on agents (``hydra.sweeper.budget`` with ``hydra/launcher=submitit_local``,
``submitit_slurm`` or ``ray``): each search agent measures its speed, the search runs on every
agent, the candidates on as many, the final run on one agent given a whole node; an agent
killed in any phase costs its trial, which is run again within the budget, never counted
twice. The training app at tiny sizes; the kills and the engines are slow."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from sweeps.agent import CALIBRATION_ATTR
from sweeps.policy import counted
from sweeps.storage import open_storage
from tests.conftest import ROOT, TINY

TINY_BUDGETED = [o for o in TINY if not o.startswith(("trainer.max_tokens", "trainer.eval_every"))]
LIVENESS = ("hydra.sweeper.heartbeat_interval=0.5", "hydra.sweeper.grace_period=5")


def command(sweep_dir: Path, budget: float, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "tbptt.train", "-m", *TINY_BUDGETED, "hydra/sweeper=optuna",
        f"hydra.sweeper.budget={budget:g}s", "hydra.sweeper.n_jobs=2",
        f"hydra.sweep.dir={sweep_dir}", "optim.lr=tag(log,interval(1e-3,3e-2))",
        "trainer.divergence_factor=null", *LIVENESS, *extra,
    ]  # fmt: skip


def load(sweep_dir: Path, storage: str | None = None, name: str = "tbptt") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage or open_storage(None, sweep_dir))


def by_phase(study: optuna.Study, phase: str) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if t.user_attrs.get("phase", "search") == phase]


def check_outcome(sweep_dir: Path, study: optuna.Study, wall: float, budget: float) -> None:
    """Within the budget, one final model scored on test, nothing left running or waiting,
    and every trial's results at home."""
    assert wall <= budget + 15, wall  # start-up included; agents' exits, the interpreter's
    states = Counter(t.state for t in study.trials)
    assert states[TrialState.RUNNING] == states[TrialState.WAITING] == 0
    finals = [t for t in by_phase(study, "final") if t.state == TrialState.COMPLETE]
    assert len(finals) == 1 and "test_loss" in finals[0].user_attrs
    best = yaml.safe_load((sweep_dir / "best.yaml").read_text())
    assert best["trial"] == finals[0].number and Path(best["final"]["checkpoint"]).exists()
    assert best["final"]["test_loss"] == finals[0].user_attrs["test_loss"]
    # Nothing counted twice: a retried trial ended once, each candidate trained on once.
    ended = [t for t in by_phase(study, "search") if t.state != TrialState.FAIL]
    origins = Counter(t.user_attrs.get("retry_of", t.number) for t in ended)
    assert set(origins.values()) <= {1} and counted(study.trials) <= len(by_phase(study, "search"))
    parents = Counter(t.user_attrs["parent"] for t in by_phase(study, "candidate")
                      if t.state == TrialState.COMPLETE)  # fmt: skip
    assert set(parents.values()) <= {1}
    for trial in study.trials:
        if trial.state == TrialState.COMPLETE:
            assert (Path(trial.user_attrs["job_dir"]) / "result.json").exists()


def test_a_budgeted_sweep_on_submitit_local_agents_plans_searches_and_trains_a_final(tmp_path):
    budget = 40.0
    started = time.monotonic()
    args = command(tmp_path, budget, "hydra/launcher=submitit_local",
                   "hydra.sweeper.plan.search=0.3")  # fmt: skip
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=240)
    wall = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-4000:]
    study = load(tmp_path)
    calibrations = [k for k in study.user_attrs if k.startswith(CALIBRATION_ATTR)]
    assert len(calibrations) == 2  # each search agent measured its own speed
    assert len(by_phase(study, "search")) >= 2
    check_outcome(tmp_path, study, wall, budget)
    (final,) = [t for t in by_phase(study, "final") if t.state == TrialState.COMPLETE]
    assert final.user_attrs["flops"] > study.trials[final.user_attrs["parent"]].user_attrs["flops"]


def pid_running(study: optuna.Study, phase: str) -> int | None:
    """The process of the agent running a trial of ``phase`` (it runs trials in-process)."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if worker and trial.user_attrs.get("phase", "search") == phase:
            return int(worker.rsplit(":", 1)[1])
    return None


def kill_in_each_phase(proc: subprocess.Popen[str], open_study, kill, limit: float) -> list[str]:
    """Kill (``kill(pid)``) the agent running a search trial, then a candidate, then the
    final run, each once; the phases killed in."""
    killed: list[str] = []
    end = time.monotonic() + limit
    for phase in ("search", "candidate", "final"):
        while time.monotonic() < end and proc.poll() is None:
            try:
                pid = pid_running(open_study(), phase)
            except KeyError:  # the study is not created yet
                pid = None
            if pid is not None:
                time.sleep(1.0)  # mid-trial
                kill(pid)
                killed.append(phase)
                break
            time.sleep(0.2)
    return killed


def sweep_with_kills(sweep_dir: Path, args: list[str], kill, budget: float) -> optuna.Study:
    """Run the sweep, taking its agent away in each phase; check what it ended with."""
    started = time.monotonic()
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    killed = kill_in_each_phase(proc, lambda: load(sweep_dir), kill, limit=budget)
    try:
        out, err = proc.communicate(timeout=budget + 120)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the sweep ran past its budget by 120 s:\n{out[-3000:]}\n{err[-3000:]}")
    wall = time.monotonic() - started
    err = f"{out[-3000:]}\n{err}"  # Hydra logs the sweeper's warnings to stdout
    assert proc.returncode == 0, err[-4000:]
    assert killed == ["search", "candidate", "final"], err[-4000:]
    study = load(sweep_dir)
    check_outcome(sweep_dir, study, wall, budget)
    lost = [t for t in study.trials if t.user_attrs.get("fail_reason", "").startswith("its agent")]
    assert {t.user_attrs.get("phase", "search") for t in lost} == {"search", "candidate", "final"}
    return study


PHASED = ("hydra.sweeper.plan.search=0.4", "hydra.sweeper.plan.candidate_share=0.25")


@pytest.mark.slow
def test_submitit_local_agents_killed_in_each_phase_are_replaced_within_the_budget(tmp_path):
    budget = 100.0
    args = command(tmp_path, budget, "hydra/launcher=submitit_local", *PHASED)
    sweep_with_kills(tmp_path, args, lambda pid: os.kill(pid, signal.SIGKILL), budget)


def slurm_job_of(pid: int) -> str:
    """The Slurm job a process belongs to (its environment names it)."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    (job,) = [e.split(b"=", 1)[1] for e in environ if e.startswith(b"SLURM_JOB_ID=")]
    return job.decode()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("sbatch") is None, reason="no Slurm here (.ci/slurm.sh)")
def test_slurm_agents_cancelled_in_each_phase_are_replaced_within_the_budget(tmp_path):
    budget = 150.0
    args = command(tmp_path, budget, "hydra/launcher=submitit_slurm",
                   "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=null",
                   "hydra.launcher.timeout_min=10", f"hydra.launcher.name=budget-{os.getpid()}",
                   *PHASED)  # fmt: skip
    cancel = lambda pid: subprocess.run(["scancel", slurm_job_of(pid)], check=True)  # noqa: E731
    study = sweep_with_kills(tmp_path, args, cancel, budget)
    (final,) = [t for t in by_phase(study, "final") if t.state == TrialState.COMPLETE]
    parent = study.trials[final.user_attrs["parent"]]
    assert final.user_attrs["worker"] != parent.user_attrs["worker"]  # its own agent


@pytest.mark.slow
def test_ray_agents_lost_in_each_phase_are_replaced_within_the_budget(tmp_path):
    """The search loses the second node; a candidate's and the final's agents are killed."""
    pytest.importorskip("ray")
    from tests.engines.ray_cluster import two_node_cluster

    budget = 150.0
    with two_node_cluster() as cluster:
        args = command(tmp_path, budget, "hydra/launcher=ray",
                       f"hydra.launcher.address={cluster.address}", *PHASED)  # fmt: skip
        lost: list[int] = []

        def take_away(pid: int) -> None:
            if not lost:  # the search: the node goes, with whatever runs on it
                cluster.stop_second_node(graceful=False)
            else:
                os.kill(pid, signal.SIGKILL)
            lost.append(pid)

        sweep_with_kills(tmp_path, args, take_away, budget)


def kill_sweep_in(proc: subprocess.Popen[bytes], sweep_dir: Path, phase: str) -> None:
    """SIGKILL the sweep process itself a second into a trial of ``phase`` (its agents live
    on: they are retired by the re-run's plan, like its own)."""
    while proc.poll() is None:
        try:
            pid = pid_running(load(sweep_dir), phase)
        except (KeyError, FileNotFoundError):  # no journal or study yet
            pid = None
        if pid is not None:
            time.sleep(1.0)
            proc.kill()
            break
        time.sleep(0.2)
    proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["search", "candidate", "final"])
def test_a_budgeted_agent_sweep_killed_in_each_phase_resumes_with_the_time_left(tmp_path, phase):
    budget = 90.0
    args = command(tmp_path, budget, "hydra/launcher=submitit_local", *PHASED)
    started = time.monotonic()
    # Not piped: its agents inherit its output and would hold a pipe open after it is killed.
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_sweep_in(proc, tmp_path, phase)
    rerun = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    wall = time.monotonic() - started
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    study = load(tmp_path)
    assert {t.user_attrs.get("phase", "search") for t in study.trials} >= {"search", "final"}
    check_outcome(tmp_path, study, wall, budget)

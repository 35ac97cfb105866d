"""Sweeps on agents launched through a Hydra launcher (sweeps/agent.py, sweeps/launch.py):
the storage check, results shipped home, and a real sweep on ``submitit_local`` agents,
one of which is killed mid-trial."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from sweeps.launch import check_agent_storage, engine_of, untried
from sweeps.policy import counted
from sweeps.shipment import CHUNKS_ATTR, DamagedShipment, ship, unpack
from sweeps.storage import open_storage, pop_waiting
from tbptt.errors import ConfigError
from tests.conftest import ROOT

TOY = ROOT / "tests" / "sweeps" / "toy_app.py"
GRID = "x=choice(-0.5,-0.2,0.1,0.4,0.7,0.9)"
FAST_LIVENESS = ("hydra.sweeper.heartbeat_interval=0.5", "hydra.sweeper.grace_period=4")


def sweep(sweep_dir: Path, *args: str, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(TOY), "-m", "hydra/sweeper=optuna", f"hydra.sweep.dir={sweep_dir}",
           "hydra/launcher=submitit_local", "hydra.sweeper.n_jobs=2"]  # fmt: skip
    return subprocess.run([*cmd, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def trials_of(sweep_dir: Path) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="tbptt", storage=open_storage(None, sweep_dir))
    return study.get_trials()


@pytest.mark.parametrize(
    ("storage", "engine", "hosts", "message"),
    [
        (None, "slurm", {"node1", "node2"}, "a journal file in the sweep directory cannot be reached"),
        ("/shared/study.journal", "slurm", {"node1", "node2"}, "/shared/study.journal cannot be reached"),
        ("sqlite:///study.db", "ray", None, "sqlite:///study.db cannot be reached"),
        ("postgresql://me@127.0.0.1/optuna", "slurm", {"node1", "node2"}, "127.0.0.1 is a loopback address"),
        ("redis://localhost:6379", "ray", None, "localhost:6379 is a loopback address"),
    ],
)
def test_a_storage_agents_on_other_hosts_cannot_reach_is_refused(storage, engine, hosts, message):
    with pytest.raises(ConfigError, match="hydra.sweeper.storage: " + message.replace(".", r"\.")):
        check_agent_storage(storage, engine, hosts)


@pytest.mark.parametrize(
    ("storage", "engine", "hosts"),
    [
        (None, "local", None),  # submitit_local: agents on this host
        (None, "slurm", {"localhost"}),  # a one-node cluster on this host
        ("postgresql://me@db.example.org/optuna", "slurm", {"node1", "node2"}),
        ("mysql+pymysql://me:pw@db/optuna", "ray", None),
    ],
)
def test_a_storage_every_agent_reaches_is_accepted(storage, engine, hosts):
    check_agent_storage(storage, engine, hosts)


def test_launchers_map_to_the_engine_their_agents_run_on():
    assert engine_of("hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher") == "slurm"
    assert engine_of("hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher") == "local"
    assert engine_of("hydra_plugins.tbptt_ray_launcher.ray_launcher.TBPTTRayLauncher") == "ray"


def test_a_trials_files_travel_home_through_the_storage(tmp_path):
    study = optuna.create_study()
    study.enqueue_trial({})
    trial = pop_waiting(study)
    assert trial is not None and pop_waiting(study) is None  # popped once; none is created
    job = tmp_path / "agent" / "3"
    (job / ".hydra").mkdir(parents=True)
    (job / "result.json").write_text('{"tokens": 5}')
    (job / ".hydra" / "overrides.yaml").write_text("- x=1\n")
    (job / "steps.parquet").write_bytes(random.Random(0).randbytes(100_000))  # 3 chunks
    ship(study._storage, trial._trial_id, job)
    study.tell(trial, 1.0)
    frozen = study.trials[0]
    assert frozen.system_attrs[CHUNKS_ATTR] == 3
    home = tmp_path / "home" / "3"
    assert unpack(frozen, home)
    assert (home / "result.json").read_text() == '{"tokens": 5}'
    assert (home / ".hydra" / "overrides.yaml").read_text() == "- x=1\n"
    assert (home / "steps.parquet").read_bytes() == (job / "steps.parquet").read_bytes()
    assert not unpack(frozen, home)  # already home: left as it is


def test_a_sweep_on_submitit_local_agents_reaches_its_total_with_every_job_at_home(tmp_path):
    proc = sweep(tmp_path, "x=interval(-1,1)", "hydra.sweeper.n_trials=6", "sleep=1.5")
    assert proc.returncode == 0, proc.stderr
    trials = trials_of(tmp_path)
    assert len(trials) == 6
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both agents pulled trials
    for t in trials:
        job = Path(t.user_attrs["job_dir"])
        assert job.parent == tmp_path.resolve() and (job / "result.json").exists()
        assert (job / ".hydra" / "overrides.yaml").exists()
        assert CHUNKS_ATTR not in t.system_attrs  # the agents see the sweep dir: written there
    table = pd.read_parquet(tmp_path / "trials.parquet")
    assert sorted(table["number"]) == list(range(6))
    assert "best " in proc.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_a_killed_agent_has_its_trial_retried_and_nothing_is_counted_twice(tmp_path):
    marker = tmp_path / "killed-once"
    proc = sweep(tmp_path / "s", GRID, "hydra/sweeper/sampler=grid", "hydra/sweeper/pruner=none",
                 "hydra.sweeper.n_trials=4", f"kill_marker={marker}", "kill_xs=[-0.5]",
                 "hydra.sweeper.enqueue=[{x: -0.5}]", "hydra.sweeper.ship_results=always",
                 *FAST_LIVENESS)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    trials = trials_of(tmp_path / "s")
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].params == {"x": -0.5}
    assert failed[0].user_attrs["fail_reason"] == "its agent stopped (no heartbeat)"
    retried = [t for t in trials if t.user_attrs.get("retried_trial") == failed[0].number]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == failed[0].params
    counts = pd.Series([t.state.name for t in trials]).value_counts().to_dict()
    assert counts == {"COMPLETE": 4, "FAIL": 1}  # the retry counts once; nothing RUNNING/WAITING
    assert all(CHUNKS_ATTR in t.system_attrs for t in trials if t.state == TrialState.COMPLETE)


def test_a_grid_is_enqueued_point_by_point_skipping_what_the_study_holds():
    study = optuna.create_study()
    study.enqueue_trial({"a": 1, "b": "x"})
    study.enqueue_trial({"a": 2, "b": "y"})
    done = study.ask()  # pops the first: it ran
    done.suggest_categorical("a", [1, 2])
    done.suggest_categorical("b", ["x", "y"])
    study.tell(done, 0.5)  # the second still waits
    points = untried({"a": [1, 2], "b": ["x", "y"]}, study.get_trials())
    assert points == [{"a": 1, "b": "y"}, {"a": 2, "b": "x"}]


@pytest.mark.slow
def test_a_training_sweep_on_agents_has_its_tables_and_report_at_home(tmp_path):
    from analysis.load import load
    from tests.conftest import TINY

    cmd = [sys.executable, "-m", "tbptt.train", "-m", *TINY, "hydra/sweeper=optuna",
           "hydra/launcher=submitit_local", "hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=4",
           f"hydra.sweep.dir={tmp_path}", "trainer.max_tokens=2048", "clip=none,norm",
           "hydra/sweeper/pruner=none", "hydra.sweeper.ship_results=always"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = load(tmp_path)
    assert sorted(results.trials["number"]) == [0, 1, 2, 3]
    assert set(results.steps["trial"]) == set(results.evals["trial"]) == {0, 1, 2, 3}
    report = subprocess.run([sys.executable, "-m", "analysis.report", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert report.returncode == 0, report.stderr[-3000:]
    assert "Best configuration" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("damage", ["not base64 at all!", "AAAA", ""])
def test_damaged_shipped_files_are_refused_and_leave_nothing_behind(tmp_path, damage):
    study = optuna.create_study()
    study.enqueue_trial({})
    trial = pop_waiting(study)
    assert trial is not None
    study._storage.set_trial_system_attr(trial._trial_id, f"{CHUNKS_ATTR}:0", damage)
    study._storage.set_trial_system_attr(trial._trial_id, CHUNKS_ATTR, 1)
    study.tell(trial, 1.0)
    with pytest.raises(DamagedShipment, match="trial 0: its shipped files are damaged"):
        unpack(study.trials[0], tmp_path / "0")
    assert list(tmp_path.iterdir()) == []


class FakeLauncher:
    """Runs each 'agent' in the launching thread: pops waiting trials and tells them, or
    fails as a launcher that cannot start jobs does."""

    def __init__(self, study: optuna.Study, fail: str | None = None) -> None:
        self.study, self.fail, self.launched = study, fail, 0

    def launch(self, job_overrides, initial_job_idx):
        from hydra.core.utils import JobReturn, JobStatus

        self.launched += 1
        if self.fail:
            raise RuntimeError(self.fail)
        ran = 0
        while (trial := pop_waiting(self.study)) is not None:
            x = trial.suggest_float("x", -1, 1)
            self.study.tell(trial, (x - 0.3) ** 2)
            ran += 1
        return [JobReturn(overrides=list(job_overrides[0]), status=JobStatus.COMPLETED,
                          _return_value=ran)]  # fmt: skip


def agent_sweep(study, launcher, tmp_path, n_trials=5, n_jobs=2):
    from sweeps.launch import AgentSettings, AgentSweep
    from sweeps.outputs import SweepOutputs

    settings = AgentSettings(n_trials=n_trials, n_jobs=n_jobs, max_failures=None,
                             max_retries=0, grace_period=5.0, deadline=None)  # fmt: skip
    return AgentSweep(study=study, launcher=launcher, settings=settings,
                      outputs=SweepOutputs(tmp_path, None))  # fmt: skip


def test_the_watcher_enqueues_the_remaining_trials_and_ends_when_they_are_done(tmp_path):
    study = optuna.create_study()
    study.enqueue_trial({"x": 0.3})  # a warm start already waiting counts towards the total
    agent_sweep(study, FakeLauncher(study), tmp_path).run()
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 5
    assert study.trials[0].params == {"x": 0.3}
    assert len(pd.read_parquet(tmp_path / "trials.parquet")) == 5
    again = FakeLauncher(study)
    agent_sweep(study, again, tmp_path).run()  # a re-run of a finished study adds nothing
    assert len(study.trials) == 5


def test_agents_that_cannot_start_end_the_sweep_with_the_launchers_error(tmp_path):
    from sweeps.launch import AgentsFailed

    study = optuna.create_study()
    launcher = FakeLauncher(study, fail="sbatch: command not found")
    with pytest.raises(AgentsFailed, match="agents ended with trials still waiting; last: "
                       "RuntimeError: sbatch: command not found"):  # fmt: skip
        agent_sweep(study, launcher, tmp_path, n_jobs=1).run()
    assert launcher.launched == 2  # n_jobs x (max_retries + 2), then it gives up
    assert {t.state for t in study.trials} == {TrialState.WAITING}  # kept for a re-run


@pytest.mark.slow
def test_an_interrupted_agent_sweep_resumes_without_repeating_a_trial(tmp_path):
    args = [sys.executable, str(TOY), "-m", "hydra/sweeper=optuna", f"hydra.sweep.dir={tmp_path}",
            "hydra/launcher=submitit_local", "hydra.sweeper.n_jobs=2", "x=interval(-1,1)",
            "hydra.sweeper.n_trials=8", "sleep=1", "hydra/sweeper/pruner=none", *FAST_LIVENESS]  # fmt: skip
    first = subprocess.Popen(args, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and first.poll() is None:
        journal = tmp_path / "study.journal"
        if journal.exists() and sum(t.state.is_finished() for t in trials_of(tmp_path)) >= 2:
            break
        time.sleep(0.2)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130, err[-2000:]
    assert "the agents finish the trials they run" in err
    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = trials_of(tmp_path)
    assert counted(trials) == 8 and all(t.state.is_finished() for t in trials)
    dirs = [t.user_attrs["job_dir"] for t in trials if "job_dir" in t.user_attrs]
    assert len(dirs) == len(set(dirs)) == len(trials)  # each trial ran once, none repeated
    assert all((Path(d) / "result.json").exists() for d in dirs)


@pytest.mark.slow
def test_the_transfer_check_runs_on_agents_from_the_parents_shipped_checkpoints(tmp_path):
    from tests.conftest import TINY

    cmd = [sys.executable, "-m", "tbptt.train", "-m", *TINY, "hydra/sweeper=optuna",
           "hydra/launcher=submitit_local", "hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=3",
           "hydra/sweeper/sampler=grid", "hydra/sweeper/pruner=none", f"hydra.sweep.dir={tmp_path}",
           "optim.lr=choice(1e-3,1e-2,3e-2)", "hydra.sweeper.transfer.top_k=2",
           "hydra.sweeper.transfer.factor=3", "hydra.sweeper.ship_results=always"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = trials_of(tmp_path)
    longer = [t for t in trials if t.user_attrs.get("phase") == "transfer"]
    assert len(trials) == 5 and len(longer) == 2
    assert all(CHUNKS_ATTR in t.system_attrs for t in trials)  # every job came through storage
    for trial in longer:
        parent = trials[trial.user_attrs["parent"]]
        assert trial.state == TrialState.COMPLETE and trial.params == parent.params
        assert trial.user_attrs["tokens"] >= 3 * 1024  # continued to 3x the search budget
        steps = pd.read_parquet(Path(trial.user_attrs["job_dir"]) / "steps.parquet")
        assert steps["tokens"].min() < 1024 < steps["tokens"].max()  # the parent's history too
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and len(trials_of(tmp_path)) == 5  # nothing repeated

"""Several separately started sweep processes share one study on a PostgreSQL server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import optuna
import pandas as pd
import pytest

from sweeps.policy import counted
from sweeps.storage import HEARTBEAT, open_storage
from tests.conftest import ROOT
from tests.sweeps.tcp_proxy import TcpProxy

URL = os.environ.get("TBPTT_TEST_POSTGRES_URL")
TOY = ROOT / "tests" / "sweeps" / "toy_app.py"

pytestmark = pytest.mark.skipif(
    not URL,
    reason="set TBPTT_TEST_POSTGRES_URL (as .ci/run does) to test a shared PostgreSQL study",
)


def start(
    sweep_dir: Path, study: str, *extra: str, url: str | None = URL
) -> subprocess.Popen[str]:
    args = [
        sys.executable, str(TOY), "-m", "hydra/sweeper=optuna", "x=interval(-1,1)", "sleep=0.3",
        f"hydra.sweeper.storage={url}", f"hydra.sweeper.study_name={study}",
        "hydra.sweeper.n_trials=12", "hydra.sweeper.n_jobs=1", f"hydra.sweep.dir={sweep_dir}",
        *extra,
    ]  # fmt: skip
    pipe = subprocess.PIPE
    return subprocess.Popen(args, cwd=ROOT, stdout=pipe, stderr=pipe, text=True)


def trials_of(study_name: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=study_name, storage=URL).get_trials()
    finally:
        optuna.delete_study(study_name=study_name, storage=URL)


def check_whole(trials: list[optuna.trial.FrozenTrial], total: int, processes: int) -> None:
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert total <= counted(trials) <= total + processes - 1  # each checks the total, then asks
    assert all(t.state.is_finished() for t in trials)  # none lost in RUNNING
    ran = Counter(t.user_attrs["job_dir"] for t in trials if "job_dir" in t.user_attrs)
    assert all(count == 1 for count in ran.values())  # no trial ran twice


def test_three_processes_share_one_study_without_losing_or_duplicating(tmp_path):
    study_name = f"shared-{uuid.uuid4().hex[:8]}"
    procs = [start(tmp_path / f"machine{i}", study_name) for i in range(3)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    trials = trials_of(study_name)
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials)))
    # Each process checks the total before it asks: at most one extra trial per other process.
    assert 12 <= len(trials) <= 14
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}  # none lost, none RUNNING
    job_dirs = Counter(Path(t.user_attrs["job_dir"]).name for t in trials)
    assert all(count == 1 for count in job_dirs.values())  # every trial ran exactly once
    machines = {Path(t.user_attrs["job_dir"]).parent.name for t in trials}
    assert len(machines) == 3  # all three processes took trials


def running_job(sweep_dir: Path) -> bool:
    """A trial of this sweep runs: its job directory exists, its result does not yet."""
    return any(not (d.parent / "result.json").exists() for d in sweep_dir.glob("*/.hydra"))


@pytest.mark.slow
def test_a_sweep_process_killed_mid_trial_is_covered_by_the_others(tmp_path):
    study_name = f"killed-{uuid.uuid4().hex[:8]}"
    fast = ("hydra.sweeper.heartbeat_interval=0.5", "hydra.sweeper.grace_period=3", "sleep=3.0")
    procs = [start(tmp_path / f"m{i}", study_name, *fast) for i in range(3)]
    while not running_job(tmp_path / "m0"):
        time.sleep(0.05)
    time.sleep(0.3)
    procs[0].send_signal(signal.SIGKILL)  # mid-trial: its trial stays RUNNING in the database
    for proc in procs[1:]:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    trials = trials_of(study_name)
    abandoned = [t for t in trials if t.user_attrs.get("fail_reason", "").startswith("its sweep")]
    assert len(abandoned) >= 1
    retried = {t.user_attrs.get("retried_trial") for t in trials}
    assert all(t.number in retried for t in abandoned)
    check_whole(trials, 12, 3)


@pytest.mark.slow
def test_a_briefly_unreachable_database_is_waited_out(tmp_path):
    study_name = f"outage-{uuid.uuid4().hex[:8]}"
    with TcpProxy(("127.0.0.1", 5432)) as proxy:
        url = f"postgresql://postgres:secret@127.0.0.1:{proxy.port}/test"
        procs = [start(tmp_path / f"m{i}", study_name, url=url) for i in range(2)]
        while not list(tmp_path.glob("m*/*/.hydra")):
            time.sleep(0.1)
        proxy.cut()
        time.sleep(4)
        proxy.restore()
        outputs = [proc.communicate(timeout=300) for proc in procs]
        assert [proc.returncode for proc in procs] == [0, 0], outputs[0][1][-2000:]
        logs = "".join(out + err for out, err in outputs)
        assert "unreachable; retrying" in logs and "secret" not in logs
        written = [p.read_text() for p in tmp_path.glob("m*/best.yaml")]
        assert written and not any("secret" in text for text in written)
        assert all("postgres:***@" in text for text in written)
    check_whole(trials_of(study_name), 12, 2)


@pytest.mark.slow
def test_a_database_gone_for_good_stops_the_sweep_with_a_clear_message(tmp_path):
    study_name = f"gone-{uuid.uuid4().hex[:8]}"
    with TcpProxy(("127.0.0.1", 5432)) as proxy:
        url = f"postgresql://postgres:secret@127.0.0.1:{proxy.port}/test"
        proc = start(tmp_path, study_name, "hydra.sweeper.storage_patience=3", url=url)
        while not list(tmp_path.glob("*/.hydra")):
            time.sleep(0.1)
        proxy.cut()
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "secret" not in out + err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: hydra.sweeper.storage: postgresql://postgres:***@127.0.0.1")
    assert "unreachable for 3 s" in last and "secret" not in err
    trials = trials_of(study_name)
    assert trials  # what was recorded before the outage is still there


@pytest.fixture
def empty_database():
    """A database of its own on the test server, with no tables yet; dropped afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    assert URL is not None
    name = f"empty_{uuid.uuid4().hex[:8]}"
    server = make_url(URL).set(drivername="postgresql")
    admin = server.render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield server.set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_processes_opening_an_empty_database_together_all_get_the_study(empty_database):
    # Each finds no tables and creates them: all but one lose that race inside PostgreSQL.
    barrier = threading.Barrier(6)
    opened: list[object] = []

    def open_at_once() -> None:
        barrier.wait()
        opened.append(open_storage(empty_database, Path(".")))

    threads = [threading.Thread(target=open_at_once) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(opened) == 6
    optuna.create_study(storage=empty_database, study_name="s").optimize(lambda t: 0.0, 1)


@pytest.mark.slow
def test_the_last_process_waits_out_a_dead_ones_trial_and_retries_it(tmp_path):
    # A process died mid-trial just now: its trial is RUNNING with a fresh heartbeat and counts
    # towards the total, so the survivor reaches n_trials at once; it must not leave it so.
    study_name = f"orphan-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(study_name=study_name, storage=URL)
    orphan = study.ask({"x": optuna.distributions.FloatDistribution(-1, 1)})
    study._storage.set_trial_system_attr(orphan._trial_id, HEARTBEAT, time.time())
    fast = ("hydra.sweeper.heartbeat_interval=0.5", "hydra.sweeper.grace_period=3")
    proc = start(tmp_path, study_name, "hydra.sweeper.n_trials=2", *fast)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    trials = trials_of(study_name)
    assert trials[orphan.number].state.name == "FAIL"
    assert trials[orphan.number].user_attrs["fail_reason"].startswith("its sweep process")
    assert [t.state.name for t in trials].count("COMPLETE") == 2  # the new one and the retry


@pytest.mark.slow
def test_two_sweep_processes_with_agents_share_one_study(tmp_path):
    """Two sweep processes, each with two submitit_local agents, on one study: the agents pop
    whichever process enqueued a trial; the total is reached once, no trial runs twice, each
    process ends when nothing waits or runs, and every finished trial's files are at home."""
    study_name = f"agents-{uuid.uuid4().hex[:8]}"
    agents = ("hydra/launcher=submitit_local", "hydra.sweeper.n_jobs=2",
              "hydra.sweeper.heartbeat_interval=0.5", "hydra.sweeper.grace_period=4")  # fmt: skip
    procs = [start(tmp_path / f"m{i}", study_name, *agents) for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    trials = trials_of(study_name)
    check_whole(trials, 12, 2)
    # Enqueued by both at the same moment, the surplus is dropped unrun (not counted).
    dropped = [t for t in trials if t.user_attrs.get("interrupted")]
    assert all(t.user_attrs["fail_reason"].startswith("not run: another sweep") for t in dropped)
    ran = [t for t in trials if t not in dropped]
    assert {t.state.name for t in ran} <= {"COMPLETE", "PRUNED"}
    for trial in ran:
        assert (Path(trial.user_attrs["job_dir"]) / "result.json").exists()
    for i in range(2):  # each process's table holds every trial of the study
        table = pd.read_parquet(tmp_path / f"m{i}" / "trials.parquet")
        assert sorted(table["number"]) == [t.number for t in trials]



def terminate_backends() -> int:
    """What a DBA's ``pg_terminate_backend`` does to a sweep: every connection to the test
    database dropped server-side; how many were."""
    import psycopg

    assert URL is not None
    server, database = URL.rsplit("/", 1)
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()", (database,),
        ).fetchone()  # fmt: skip
    return int(row[0]) if row else 0


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "submitit_local"])
def test_connections_terminated_server_side_mid_sweep_are_reopened(tmp_path, launcher):
    """Every connection of the sweep process, its workers or agents is terminated three times
    while trials run: the sweep reaches its total, nothing lost in RUNNING or run twice (a
    trial cut mid-call at most fails and is retried)."""
    study_name = f"terminated-{uuid.uuid4().hex[:8]}"
    proc = start(tmp_path, study_name, f"hydra/launcher={launcher}", "hydra.sweeper.n_jobs=2",
                 "hydra.sweeper.n_trials=24", "sleep=1.0", "hydra.sweeper.heartbeat_interval=0.5",
                 "hydra.sweeper.grace_period=4")  # fmt: skip
    terminated = 0
    for _ in range(3):
        time.sleep(3.0)
        terminated += terminate_backends()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert terminated >= 3  # the sweep held connections each time
    trials = trials_of(study_name)
    check_whole(trials, 24, 1)
    # A trial whose own connection was cut mid-call may fail: it is retried, not lost.
    failed = [t for t in trials if t.state.name == "FAIL"]
    retried = {t.user_attrs.get("retried_trial") for t in trials}
    assert all(t.number in retried for t in failed), [t.user_attrs["fail_reason"] for t in failed]
    assert len(failed) <= 3, [t.user_attrs["fail_reason"] for t in failed]

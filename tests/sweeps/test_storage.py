from __future__ import annotations

import time

import optuna
import pytest
from optuna.trial import TrialState

from sweeps.storage import (
    HEARTBEAT,
    SweepLock,
    beat,
    fail_trial,
    mask_url,
    open_storage,
    retry,
    stale_trials,
)
from tbptt.errors import ConfigError


@pytest.mark.parametrize(
    "url, masked",
    [
        ("postgresql://alice:s3cret@db:5432/test", "postgresql://alice:***@db:5432/test"),
        ("mysql+pymysql://bob:p%40ss@h/db", "mysql+pymysql://bob:***@h/db"),
        ("redis://:token@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("postgresql://carol@db/test", "postgresql://carol@db/test"),
        ("sqlite:///x.db", "sqlite:///x.db"),
        ("postgresql://u@db/test?password=s3cret", "postgresql://u@db/test?password=***"),
        ("postgresql://db/t?sslmode=require&password=s3cret&x=1", "postgresql://db/t?sslmode=require&password=***&x=1"),
        ("redis://127.0.0.1:6379/0?password=s3cret", "redis://127.0.0.1:6379/0?password=***"),
        ("postgresql://u:p@ss@db:5432/test", "postgresql://u:***@db:5432/test"),
        ("host=db password=s3cret failed", "host=db password=*** failed"),
        ("trainer.max_tokens=20000 postgresql://db:5432/t", "trainer.max_tokens=20000 postgresql://db:5432/t"),
    ],
)
def test_passwords_are_masked(url, masked):
    assert mask_url(url) == masked


def test_unknown_scheme_is_refused_by_name(tmp_path):
    with pytest.raises(ConfigError, match="hydra.sweeper.storage: unknown scheme 'ftp'"):
        open_storage("ftp://u:pw@host/x", tmp_path)


def test_unreachable_host_fails_fast_with_the_password_masked(tmp_path):
    url = "postgresql://user:hunter2@127.0.0.1:9/none?connect_timeout=2"
    with pytest.raises(ConfigError, match="cannot open postgresql://user:\\*\\*\\*@") as info:
        open_storage(url, tmp_path)
    assert "hunter2" not in str(info.value)


def test_default_storage_is_a_journal_in_the_sweep_dir(tmp_path):
    storage = open_storage(None, tmp_path)
    optuna.create_study(storage=storage, study_name="s").optimize(lambda t: 1.0, n_trials=1)
    assert (tmp_path / "study.journal").stat().st_size > 0


def running_trial(study):
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    return study._storage.get_trial(trial._trial_id)


def test_stale_trials_are_those_without_a_recent_heartbeat():
    study = optuna.create_study()
    alive, dead = running_trial(study), running_trial(study)
    study._storage.set_trial_system_attr(dead._trial_id, HEARTBEAT, time.time() - 100)
    beat(study._storage, alive._trial_id)
    assert [t.number for t in stale_trials(study, grace_period=30)] == [dead.number]


def test_fail_and_retry_enqueue_the_same_parameters_up_to_max_retries():
    study = optuna.create_study()
    first = running_trial(study)
    assert fail_trial(study, first, "worker killed by signal 9")
    assert not fail_trial(study, first, "again")  # already finished: left as it is
    assert retry(study, study.trials[0], max_retries=1)
    second = study.ask()
    assert second.suggest_float("x", 0, 1) == first.params["x"]
    assert second.user_attrs["retried_trial"] == first.number
    frozen = study._storage.get_trial(second._trial_id)
    fail_trial(study, frozen, "killed again")
    assert not retry(study, study.trials[1], max_retries=1)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]


def test_sweep_lock_is_exclusive_and_released(tmp_path):
    with SweepLock(tmp_path):
        with pytest.raises(ConfigError, match="is in use by a running sweep \\(pid"):
            SweepLock(tmp_path).__enter__()
    with SweepLock(tmp_path):
        pass

"""Study storage: URLs to Optuna storages, password masking, heartbeats and stale trials.

The default is a journal file inside the sweep directory (safe for several processes, unlike
SQLite). Any Optuna storage URL is accepted, so several machines can share one study.

Heartbeats: Optuna 5 implements its heartbeat for ``RDBStorage`` only, not for journal
storages, so workers record theirs as a trial system attribute, which every storage supports.
A RUNNING trial whose heartbeat is older than the grace period belongs to a dead process.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from pathlib import Path
from typing import IO, Any

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalRedisBackend
from optuna.trial import FrozenTrial, TrialState

from tbptt.errors import ConfigError

HEARTBEAT = "sweeps:heartbeat"
RDB_SCHEMES = ("sqlite", "postgresql", "mysql")
_PASSWORD = re.compile(r"(?P<head>[a-z0-9+]+://[^:/@]*:)(?P<password>[^@]*)(?P<tail>@)", re.I)


def mask_url(url: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``."""
    return _PASSWORD.sub(r"\g<head>***\g<tail>", url)


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0].split("+", 1)[0].lower() if "://" in url else ""


def open_storage(url: str | None, sweep_dir: Path) -> BaseStorage:
    """An Optuna storage for ``url`` (None: ``sweep_dir/study.journal``); fails fast, masked."""
    if url is None or url.endswith(".journal"):
        path = sweep_dir / "study.journal" if url is None else Path(url)
        return JournalStorage(JournalFileBackend(str(path)))
    scheme = scheme_of(url)
    if scheme not in (*RDB_SCHEMES, "redis"):
        raise ConfigError(
            f"hydra.sweeper.storage: unknown scheme {scheme or url!r} in {mask_url(url)}; use "
            "sqlite:///, postgresql://, mysql://, redis:// or a path ending in .journal"
        )
    try:
        if scheme == "redis":
            return JournalStorage(JournalRedisBackend(url))
        return RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    except Exception as err:  # noqa: BLE001 - driver errors vary; all mean "cannot use it"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"hydra.sweeper.storage: cannot open {mask_url(url)}: {mask_url(first)}"
        ) from None


def beat(storage: BaseStorage, trial_id: int) -> None:
    storage.set_trial_system_attr(trial_id, HEARTBEAT, time.time())


def last_beat(trial: FrozenTrial) -> float:
    started = trial.datetime_start.timestamp() if trial.datetime_start else time.time()
    return float(trial.system_attrs.get(HEARTBEAT, started))


def stale_trials(study: optuna.Study, grace_period: float) -> list[FrozenTrial]:
    now = time.time()
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return [t for t in running if now - last_beat(t) > grace_period]


def fail_trial(study: optuna.Study, trial: FrozenTrial, reason: str) -> bool:
    """Mark a RUNNING trial FAIL with ``reason``; False if another process finished it first."""
    storage = study._storage
    try:
        storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
        return storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
        return False


def retry(study: optuna.Study, trial: FrozenTrial, max_retries: int) -> bool:
    """Enqueue a copy of ``trial``'s parameters unless it was retried ``max_retries`` times."""
    retries = int(trial.user_attrs.get("retries", 0))
    if retries >= max_retries:
        return False
    origin = trial.user_attrs.get("retry_of", trial.number)
    study.enqueue_trial(
        trial.params,
        user_attrs={"retry_of": origin, "retried_trial": trial.number, "retries": retries + 1},
        skip_if_exists=False,
    )
    return True


class SweepLock:
    """An exclusive lock on a sweep directory: one sweep process per directory at a time.

    Args:
        sweep_dir: the directory to lock (``.sweep.lock`` inside it).

    Example:
        >>> with SweepLock(Path("multirun/lr")):
        ...     run_the_sweep()
    """

    def __init__(self, sweep_dir: Path) -> None:
        self._path = sweep_dir / ".sweep.lock"
        self._file: IO[str] | None = None

    def __enter__(self) -> SweepLock:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            handle = self._path.open("a+")
        except OSError as err:
            raise ConfigError(
                f"hydra.sweep.dir: cannot write to {self._path.parent}: {err.strerror}"
            ) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise ConfigError(
                f"hydra.sweep.dir: {self._path.parent} is in use by a running sweep ({owner}); "
                "wait for it to finish or choose another hydra.sweep.dir"
            ) from None
        handle.truncate(0)
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self._file = handle
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()

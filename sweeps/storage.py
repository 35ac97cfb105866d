"""Study storage: URLs to Optuna storages, password masking, heartbeats and stale trials.

The default is a journal file inside the sweep directory (safe for several processes, unlike
SQLite). Any Optuna storage URL is accepted, so several machines can share one study.

Heartbeats: Optuna 5 implements its heartbeat for ``RDBStorage`` only, not for journal
storages, so workers record theirs as a trial system attribute, which every storage supports.
A RUNNING trial whose heartbeat is older than the grace period belongs to a dead process.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import BaseJournalBackend, JournalRedisBackend
from optuna.trial import FrozenTrial, TrialState

from sweeps.internals import pop_waiting_id, storage_of, trial_id
from sweeps.journal import open_journal
from tbptt.errors import ConfigError, first_line

log = logging.getLogger(__name__)
HEARTBEAT = "sweeps:heartbeat"
RDB_SCHEMES = ("sqlite", "postgresql", "mysql")
SCHEMA_ATTEMPTS = 5  # opening an RDB storage while other processes create its tables
# user:password@ (up to the last @ before the host: a password may hold an unescaped @) ...
_PASSWORD = re.compile(r"(?P<head>[a-z0-9+]+://[^:/@\s]*:)(?P<password>[^/\s]*)(?P<tail>@)", re.I)
# ... and key=value forms: URL query parameters (?password=, &sslpassword=) and libpq DSNs.
_SECRET_KEYS = "password|passwd|pwd|sslpassword|secret|token|access_token|api_key|apikey"
_SECRET_PARAM = re.compile(rf"(?P<head>\b(?:{_SECRET_KEYS})\s*=\s*)(?P<value>[^&\s'\"]+)", re.I)


def mask_url(url: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``; the same for
    ``?password=secret`` and other credential parameters, wherever they appear in ``url``."""
    return _SECRET_PARAM.sub(r"\g<head>***", _PASSWORD.sub(r"\g<head>***\g<tail>", url))


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0].split("+", 1)[0].lower() if "://" in url else ""


def open_storage(url: str | None, sweep_dir: Path, patience: float = 60.0) -> BaseStorage:
    """An Optuna storage for ``url`` (None: ``sweep_dir/study.journal``); fails fast, masked.

    Server storages are wrapped in ``RetryingStorage``: once opened, brief outages are waited
    out for up to ``patience`` seconds per call.
    """
    if url is None or url.endswith(".journal"):
        path = sweep_dir / "study.journal" if url is None else Path(url)
        return open_journal(path)
    scheme = scheme_of(url)
    if scheme not in (*RDB_SCHEMES, "redis"):
        raise ConfigError(
            f"hydra.sweeper.storage: unknown scheme {scheme or url!r} in {mask_url(url)}; use "
            "sqlite:///, postgresql://, mysql://, redis:// or a path ending in .journal"
        )
    try:
        if scheme == "redis":
            storage: BaseStorage = JournalStorage(LogsOnly(JournalRedisBackend(url)))
        else:
            storage = open_rdb(url)
    except Exception as err:  # noqa: BLE001 - driver errors vary; all mean "cannot use it"
        raise ConfigError(
            f"hydra.sweeper.storage: cannot open {mask_url(url)}: {mask_url(first_line(err))}"
        ) from None
    return RetryingStorage(storage, mask_url(url), patience)  # type: ignore[return-value]


class LogsOnly(BaseJournalBackend):
    """A journal backend's logs (JSON records), without its snapshots. Optuna's Redis backend
    also keeps a snapshot of the replayed study, a pickle, which ``JournalStorage`` unpickles
    when it opens: whatever wrote that key would run code in every process of the sweep. Without
    them a process replays the logs from the start (slower to open a long study, nothing else).

    Args:
        backend: the backend whose logs to read and append.

    Example:
        >>> from optuna.storages.journal import JournalFileBackend
        >>> backend = LogsOnly(JournalFileBackend(str(tmp_path / "study.journal")))
        >>> optuna.create_study(study_name="lr", storage=JournalStorage(backend)).study_name
        'lr'
    """

    def __init__(self, backend: BaseJournalBackend) -> None:
        self._backend = backend

    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        return self._backend.read_logs(log_number_from)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self._backend.append_logs(logs)


def open_rdb(url: str, attempts: int = SCHEMA_ATTEMPTS) -> RDBStorage:
    """``RDBStorage(url)``, retried when it lost a race to create the schema.

    Processes started together on an empty database all find no tables and all create them;
    PostgreSQL lets one win and fails the others with a duplicate key (in ``pg_type``, or in
    Optuna's version table). Those tables now exist, so opening again succeeds.
    """
    import sqlalchemy.exc

    for attempt in range(1, attempts):
        try:
            return RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            log.info("storage schema created by another process; opening again")
            time.sleep(random.uniform(0.05, 0.3) * attempt)
    return RDBStorage(url, engine_kwargs={"pool_pre_ping": True})  # the last try raises


class StorageUnavailable(RuntimeError):
    """The storage server stayed unreachable for longer than the sweep is willing to wait."""


def _transient_errors() -> tuple[type[BaseException], ...]:
    import sqlalchemy.exc

    errors: list[type[BaseException]] = [
        sqlalchemy.exc.OperationalError,
        sqlalchemy.exc.InterfaceError,
        optuna.exceptions.StorageInternalError,
        ConnectionError,
    ]
    try:
        import redis.exceptions

        errors += [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]
    except ImportError:
        pass
    return tuple(errors)


class RetryingStorage:
    """Delegates to an Optuna storage; a call that fails because its server is unreachable
    (restarting, network blip) is retried with exponential backoff, up to ``patience`` seconds.

    Args:
        storage: the storage to wrap (RDB or Redis journal).
        name: how to name it in messages, password masked.
        patience: seconds to keep retrying one call before raising ``StorageUnavailable``.

    Example:
        >>> url = f"sqlite:///{tmp_path}/study.db"
        >>> storage = RetryingStorage(RDBStorage(url), mask_url(url), patience=60)
        >>> optuna.create_study(study_name="lr", storage=storage).study_name
        'lr'
    """

    def __init__(self, storage: BaseStorage, name: str, patience: float = 60.0) -> None:
        self._storage, self._name, self._patience = storage, name, patience
        self._transient = _transient_errors()

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._storage, attr)
        if not callable(value):
            return value
        return lambda *args, **kwargs: self._call(value, args, kwargs)

    def _call(self, method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        delay, deadline = 0.5, time.monotonic() + self._patience
        while True:
            try:
                return method(*args, **kwargs)
            except self._transient as err:
                if time.monotonic() + delay > deadline:
                    root = err.__cause__ or err  # Optuna wraps the driver's error
                    first = mask_url(str(root).strip().splitlines()[0]) if str(root) else ""
                    raise StorageUnavailable(
                        f"hydra.sweeper.storage: {self._name} unreachable for "
                        f"{self._patience:.0f} s ({type(root).__name__}: {first})"
                    ) from None
                log.warning("storage %s unreachable; retrying in %.1f s", self._name, delay)
                time.sleep(delay)
                delay = min(delay * 2, 8.0)


def beat(storage: BaseStorage, trial_id: int) -> None:
    try:
        storage.set_trial_system_attr(trial_id, HEARTBEAT, time.time())
    except optuna.exceptions.UpdateFinishedTrialError:
        pass  # its worker has just told the outcome; the sweep has not collected it yet


def pop_waiting(study: optuna.Study) -> optuna.Trial | None:
    """A WAITING trial of ``study``, now RUNNING and this process's; None when none waits.

    The sweep process decides how many trials the study holds, so an agent only ever claims
    one (see ``sweeps.internals.pop_waiting_id``).
    """
    claimed = pop_waiting_id(study)
    return None if claimed is None else optuna.Trial(study, claimed)


def claim(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Take the WAITING ``trial`` (now RUNNING, this process's), as popping does, atomically in
    every storage; False when an agent or another process took or ended it first."""
    try:
        return storage_of(study).set_trial_state_values(trial_id(trial), TrialState.RUNNING)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


def last_beat(trial: FrozenTrial) -> float:
    started = trial.datetime_start.timestamp() if trial.datetime_start else time.time()
    return float(trial.system_attrs.get(HEARTBEAT, started))


def stale_trials(study: optuna.Study, grace_period: float) -> list[FrozenTrial]:
    now = time.time()
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return [t for t in running if now - last_beat(t) > grace_period]


INTERRUPTED = "interrupted"  # user attr of a trial failed by its sweep's stop, not by itself


def fail_trial(
    study: optuna.Study, trial: FrozenTrial, reason: str, its_fault: bool = True
) -> bool:
    """Mark a RUNNING trial FAIL with ``reason``; False if another process finished it first.
    ``its_fault=False``: the sweep stopped under it (killed, Ctrl-C), so it is re-run without
    using up ``max_retries`` and never counts towards ``n_trials``."""
    storage, number = storage_of(study), trial_id(trial)
    try:
        storage.set_trial_user_attr(number, "fail_reason", reason)
        if not its_fault:
            storage.set_trial_user_attr(number, INTERRUPTED, True)
        return storage.set_trial_state_values(number, state=TrialState.FAIL)
    except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
        return False


def retry(
    study: optuna.Study, trial: FrozenTrial, max_retries: int, keep: tuple[str, ...] = ()
) -> bool:
    """Enqueue a copy of ``trial``'s parameters, and of its user attrs named in ``keep``,
    unless its own failures were retried ``max_retries`` times (interruptions do not count)."""
    retries = int(trial.user_attrs.get("retries", 0))
    its_fault = not trial.user_attrs.get(INTERRUPTED, False)
    if its_fault and retries >= max_retries:
        return False
    origin = trial.user_attrs.get("retry_of", trial.number)
    kept = {key: trial.user_attrs[key] for key in keep if key in trial.user_attrs}
    attrs = {"retry_of": origin, "retried_trial": trial.number, "retries": retries + its_fault}
    study.enqueue_trial(trial.params, user_attrs={**kept, **attrs}, skip_if_exists=False)
    return True


class SweepLock:
    """An exclusive lock on a sweep directory: one sweep process per directory at a time.

    Args:
        sweep_dir: the directory to lock (``.sweep.lock`` inside it).

    Example:
        >>> with SweepLock(tmp_path):
        ...     SweepLock(tmp_path).__enter__()  # a second sweep in the same directory
        Traceback (most recent call last):
        tbptt.errors.ConfigError: hydra.sweep.dir: ... is in use by a running sweep (pid ...); ...
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

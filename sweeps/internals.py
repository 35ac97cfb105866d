"""The private attributes of Optuna and Hydra that the sweeper needs, each behind one function
that says why no public call serves. Nothing else in the project touches them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra.core.override_parser.types import Override
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial


def storage_of(study: optuna.Study) -> BaseStorage:
    """A study's storage. Optuna's public calls act on a trial through a ``Trial`` object of
    this process; heartbeats, failing another process's trial and shipping files act by trial
    id on the storage, which ``Study`` does not expose."""
    return study._storage


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial (``number`` counts within its study; storage calls take the
    id), which neither trial class exposes."""
    return trial._trial_id


def pop_waiting_id(study: optuna.Study) -> int | None:
    """Claim a WAITING trial (now RUNNING): ``Study.ask`` does the same claim, atomic in every
    storage, but creates a trial when none waits, which a sweep agent must not do."""
    return study._pop_waiting_trial_id()


def job_error(ret: JobReturn) -> BaseException | None:
    """The exception a failed Hydra job raised: ``JobReturn.return_value`` re-raises it, so it
    is read from the field behind that property."""
    value = ret._return_value
    return value if isinstance(value, BaseException) else None


def failed_job(error: BaseException, overrides: Sequence[str] = ()) -> JobReturn:
    """A FAILED ``JobReturn`` holding ``error`` (for a job that ended outside ``run_job``);
    Hydra builds these in ``run_job`` only, through the same field."""
    return JobReturn(overrides=list(overrides), status=JobStatus.FAILED, _return_value=error)


def apply_overrides(overrides: list[Override], config: DictConfig) -> None:
    """Set ``overrides`` on a composed ``config`` exactly as Hydra's composition applies them
    (types checked against the schema, its errors), which only its config loader does."""
    ConfigLoaderImpl._apply_overrides_to_config(overrides, config)


def overrides_dirname(
    overrides: list[Override], kv_sep: str, item_sep: str, exclude_keys: Any
) -> str:
    """``hydra.job.override_dirname`` of a job with ``overrides``, as Hydra computes it when it
    composes the job (a job directory may be named by it)."""
    return get_overrides_dirname(overrides, list(exclude_keys or []), item_sep, kv_sep)

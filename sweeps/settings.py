"""Checks of ``hydra.sweeper``'s settings, made before anything runs, and the readings of the
keys this sweeper shares with hydra-optuna-sweeper (so that configs written for that plugin
run here unchanged, or are refused in one line that names the key and the alternative).

Example:
    >>> directions_of(["minimize", "maximize"])
    ['minimize', 'maximize']
    >>> failure_limit(max_failures=10, max_failure_rate=0.25, n_trials=20)  # 6th failure stops
    6
    >>> search_space_params({"lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": True}})
    {'lr': 'tag(log, interval(0.0001, 0.1))'}
"""

from __future__ import annotations

import difflib
import logging
import math
import sys
from collections.abc import Mapping
from dataclasses import fields
from enum import Enum
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from sweeps.agent import SHIP_MODES
from sweeps.config import MOTPE, SweeperConfig, answer_function
from sweeps.plan import check_plan_settings, parse_duration
from sweeps.policy import Transfer
from sweeps.space import _format, custom_function
from tbptt.errors import ConfigError

log = logging.getLogger(__name__)
DIRECTIONS = ("minimize", "maximize")
HIDDEN_KEYS = ("_target_", "_recursive_", "defaults")  # Hydra's own, never given to the sweeper
KNOWN_KEYS = tuple(f.name for f in fields(SweeperConfig) if f.name not in HIDDEN_KEYS)
# Samplers that Optuna refuses for a study of several objectives.
SINGLE_OBJECTIVE = {"optuna.samplers.CmaEsSampler": "cmaes"}


def check_known_keys(keys: Any) -> None:
    """An unknown key under ``hydra.sweeper`` (``+hydra.sweeper.n_trails=2`` composes) would
    be ignored: it is an error naming the nearest known key."""
    for key in keys:
        if key in KNOWN_KEYS or key in HIDDEN_KEYS:
            continue
        near = difflib.get_close_matches(str(key), KNOWN_KEYS, n=1, cutoff=0.6)
        hint = f"did you mean hydra.sweeper.{near[0]}?" if near else "known keys: " + ", ".join(
            KNOWN_KEYS
        )
        raise ConfigError(f"hydra.sweeper.{key} is not a setting of this sweeper; {hint}")


def directions_of(direction: Any) -> list[str]:
    """``direction``: minimize | maximize, or a list of them (a multi-objective study); the
    plugin's ``Direction`` enum members are read by name."""
    many = isinstance(direction, list | tuple | ListConfig)
    items = list(direction) if many else [direction]
    names = [d.name if isinstance(d, Enum) else d for d in items]
    if not names or any(d not in DIRECTIONS for d in names):
        shown = OmegaConf.to_container(direction) if many else direction  # type: ignore[arg-type]
        raise ConfigError(
            f"hydra.sweeper.direction must be minimize or maximize, or a list of them (one per "
            f"objective the app returns), got {shown!r}"
        )
    return [str(d) for d in names]


def failure_limit(max_failures: int | None, max_failure_rate: float | None,
                  n_trials: int) -> int | None:  # fmt: skip
    """Failed trials that stop the sweep (None: never). ``max_failure_rate`` (the plugin's)
    is a share of ``n_trials``: the sweep stops as soon as more than that share has failed."""
    if max_failure_rate is None:
        return max_failures
    if max_failure_rate >= 1.0:
        return None
    return math.floor(max_failure_rate * n_trials) + 1


def search_space_params(search_space: Mapping[str, Any] | None) -> dict[str, str]:
    """hydra-optuna-sweeper 1.x's deprecated ``search_space`` ({key: {type, choices, low,
    high, log, step}}), written in the override grammar of ``params``."""
    params = {}
    for key, spec in (search_space or {}).items():
        where = f"hydra.sweeper.search_space.{key}"
        if not isinstance(spec, Mapping) or "type" not in spec:
            raise ConfigError(f"{where} must be a mapping with a type (int, float, categorical)")
        params[str(key)] = _grammar(dict(spec), where)
    return params


def _grammar(spec: dict[str, Any], where: str) -> str:
    kind = spec["type"].name if isinstance(spec["type"], Enum) else str(spec["type"])
    if kind == "categorical":
        if not spec.get("choices"):
            raise ConfigError(f"{where}: a categorical needs choices")
        return f"choice({', '.join(_format(c) for c in spec['choices'])})"
    if kind not in ("int", "float") or spec.get("low") is None or spec.get("high") is None:
        raise ConfigError(f"{where}: type must be int, float or categorical, with low and high")
    low, high, step = spec["low"], spec["high"], spec.get("step")
    cast = int if kind == "int" else float
    low, high, step = cast(low), cast(high), cast(step) if step is not None else None
    bounds = f"{_format(low)}, {_format(high)}"
    if step is not None and not spec.get("log"):
        return f"range({bounds}, step={_format(step)})"
    interval = f"int(interval({bounds}))" if kind == "int" else f"interval({bounds})"
    return f"tag(log, {interval})" if spec.get("log") else interval


def check_sampler(sampler: DictConfig | None, directions: list[str]) -> None:
    """What Optuna would refuse only once trials run: a removed sampler, or one that cannot
    take several objectives."""
    target = str(sampler.get("_target_", "")) if sampler is not None else ""
    if target == MOTPE:
        raise ConfigError(
            "hydra/sweeper/sampler=motpe: Optuna 4 removed MOTPESampler; use "
            "hydra/sweeper/sampler=tpe (it takes several objectives) or nsgaii"
        )
    name = SINGLE_OBJECTIVE.get(target)
    if name and len(directions) > 1:
        raise ConfigError(
            f"hydra/sweeper/sampler={name} optimizes one objective, and hydra.sweeper.direction "
            f"names {len(directions)}; use tpe, nsgaii, gp, qmc, random or grid"
        )


def check_settings(cfg: DictConfig) -> None:
    """Every check of ``hydra.sweeper`` that needs nothing but its settings; a failure prints
    one line and exits 2, before the sweep composes or runs anything."""
    try:
        _check_settings(cfg)
    except ConfigError as err:
        message = str(err)
        prefix = "" if message.startswith(("hydra.sweeper", "hydra/sweeper")) else "hydra.sweeper."
        print(f"error: {prefix}{message}", file=sys.stderr)
        sys.exit(2)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_settings(cfg: DictConfig) -> None:
    check_known_keys(cfg.keys())
    _check_counts(cfg)
    _check_times(cfg)
    _check(cfg.study_name is None or bool(str(cfg.study_name).strip()),
           f"study_name must not be empty: {cfg.study_name!r}")  # fmt: skip
    modes = ", ".join(SHIP_MODES)
    _check(cfg.ship_results in SHIP_MODES,
           f"ship_results must be one of {modes}, got {cfg.ship_results!r}")  # fmt: skip
    directions = directions_of(cfg.direction)
    check_sampler(cfg.sampler, directions)
    if len(directions) > 1:
        _check_multi_objective(cfg)
    if cfg.budget is not None:
        _check_budget(cfg)
    if cfg.transfer.top_k:
        Transfer(int(cfg.transfer.top_k), float(cfg.transfer.factor))
    if cfg.answer is not None:
        answer_function(str(cfg.answer))
    if cfg.custom_search_space is not None:
        custom_function(str(cfg.custom_search_space))
    search_space_params(cfg.search_space)


def _check_counts(cfg: DictConfig) -> None:
    _check(cfg.n_trials >= 1, f"n_trials must be >= 1, got {cfg.n_trials}")
    _check(cfg.n_jobs is None or cfg.n_jobs >= 1, f"n_jobs must be >= 1, got {cfg.n_jobs}")
    _check(cfg.trials_per_gpu >= 1, f"trials_per_gpu must be >= 1, got {cfg.trials_per_gpu}")
    _check(cfg.threads_per_worker >= 1,
           f"threads_per_worker must be >= 1, got {cfg.threads_per_worker}")  # fmt: skip
    _check(cfg.max_retries >= 0, f"max_retries must be >= 0, got {cfg.max_retries}")
    _check(cfg.max_failures is None or cfg.max_failures >= 1,
           f"max_failures must be >= 1 or null (never stop), got {cfg.max_failures}")  # fmt: skip
    rate = cfg.max_failure_rate
    if rate is not None:
        _check(math.isfinite(rate) and 0.0 <= rate <= 1.0,
               f"max_failure_rate must be in [0.0, 1.0] (a share of n_trials), got {rate}")
        _check(cfg.max_failures in (None, SweeperConfig.max_failures),
               f"max_failures={cfg.max_failures} and max_failure_rate={rate} are both set: keep "
               "one (a count of failed trials, or a share of n_trials)")  # fmt: skip


def _check_times(cfg: DictConfig) -> None:
    _check(cfg.timeout is None or (math.isfinite(cfg.timeout) and cfg.timeout > 0),
           f"timeout must be > 0 seconds or null, got {cfg.timeout}")  # fmt: skip
    for key in ("heartbeat_interval", "grace_period", "storage_patience"):
        value = cfg[key]
        _check(math.isfinite(value) and value > 0, f"{key} must be > 0 seconds, got {value}")
    _check(cfg.heartbeat_interval < cfg.grace_period,
           f"heartbeat_interval ({cfg.heartbeat_interval}) must be below grace_period "
           f"({cfg.grace_period}): live trials would look abandoned")  # fmt: skip


def _check_multi_objective(cfg: DictConfig) -> None:
    _check(cfg.budget is None,
           "budget needs one objective (its plan trains the one best trial on); a "
           "multi-objective study has a front of them: use n_trials")  # fmt: skip
    _check(not cfg.transfer.top_k,
           "transfer ranks trials by one objective; hydra.sweeper.direction names several")


def _check_budget(cfg: DictConfig) -> None:
    parse_duration(cfg.budget)
    check_plan_settings(cfg.plan)
    _check(cfg.timeout is None, "timeout and hydra.sweeper.budget are both set: keep one")
    _check(not cfg.transfer.top_k,
           "transfer is for n_trials sweeps: a budgeted sweep trains its best candidates on "
           "already (hydra.sweeper.plan.candidates), and its report checks their ranking")

"""Search spaces written in Hydra's override grammar, as Optuna distributions.

The grammar is the one hydra-optuna-sweeper reads, and each form gives the Optuna distribution
that plugin gives it, so a ``hydra.sweeper.params`` block moves between the two sweepers
unchanged::

    optim.lr: tag(log, interval(1e-4, 3e-2))   # FloatDistribution(1e-4, 3e-2, log=True)
    model.layers: range(1, 4)                   # IntDistribution(1, 4): the stop is included
    trainer.x: range(-5.5, 5.5, step=0.5)       # FloatDistribution(-5.5, 5.5, step=0.5)
    model.hidden: int(interval(32, 256))        # IntDistribution(32, 256)
    seed: shuffle(range(1, 4))                  # CategoricalDistribution((1, 2, 3))
    clip: choice(none, norm, value)             # a config group: one option per trial
    clip.max_norm: interval(0.1, 10)            # sampled only in trials where clip=norm

As in that plugin (and unlike Hydra's basic sweeper, which runs ``range(1, 4)`` as 1, 2, 3), a
range's stop is a value it can sample; ``shuffle(range(...))`` is the categorical of the values
the basic sweeper would run, stop excluded (the plugin's reading, kept).

Strings are read by Hydra's own parser, never evaluated. Sampling is define-by-run: the group
options are drawn first, the config they select is composed, and a parameter is drawn only when
its key exists in that config.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from itertools import islice
from numbers import Integral, Real
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    OverrideType,
    RangeSweep,
)
from hydra.errors import OverrideParseException
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import (
    BaseDistribution,
    CategoricalChoiceType,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    check_distribution_compatibility,
)

from tbptt.cli import one_line
from tbptt.errors import ConfigError

TAGS = ("int", "log")
MAX_RANGE_VALUES = 1_000_000  # a float range is counted by stepping through it
_PLAIN = re.compile(r"[A-Za-z0-9_\-./:@+]+")  # strings that may go unquoted, if they read back


@dataclass(frozen=True)
class Param:
    """One swept key: a config value such as ``optim.lr``, or a config group such as ``clip``."""

    key: str
    distribution: BaseDistribution
    is_group: bool


@dataclass(frozen=True)
class SearchSpace:
    """What a sweep samples and what it holds fixed, built by :func:`parse_space`.

    Args:
        params: The swept keys, in the order given (``hydra.sweeper.params`` first, then sweeps
            added on the command line).
        fixed: Non-sweep overrides, exactly as given; every trial composes with them.

    Example::

        space = parse_space(
            {"clip": "choice(none,norm)", "clip.max_norm": "interval(0.1, 10)"},
            ["trainer.max_tokens=1000"],
            is_group=lambda key: key == "clip",
        )
        space.fixed  # ("trainer.max_tokens=1000",)
        sample(study.ask(), space, compose)  # {"clip": "norm", "clip.max_norm": 3.1}
    """

    params: tuple[Param, ...]
    fixed: tuple[str, ...]
    # hydra.sweeper.custom_search_space: module.function(cfg, trial), suggesting more params
    custom: str | None = None


def parse_space(
    params: Mapping[str, str], overrides: Sequence[str], is_group: Callable[[str], bool]
) -> SearchSpace:
    """Read ``hydra.sweeper.params`` and the command line into a :class:`SearchSpace`.

    A command-line sweep adds or replaces the param of its key; a command-line value pins the
    key: it goes to ``fixed`` and the param of that key is dropped. A later entry for a key
    takes the place of the earlier one.
    """
    lines = [(f"{key}={_text(v)}", f"hydra.sweeper.params.{key}") for key, v in params.items()]
    lines += [(line, f"override {line!r}") for line in overrides]
    entries: dict[str, Param | str] = {}
    for line, where in lines:
        key, entry = _entry(line, where, is_group)
        entries[key] = entry
    return SearchSpace(
        params=tuple(e for e in entries.values() if isinstance(e, Param)),
        fixed=tuple(e for e in entries.values() if isinstance(e, str)),
    )


def _text(value: Any) -> str:
    # Read from YAML, a params value can be 3, 0.5, true or null rather than a string.
    return value if isinstance(value, str) else _format(value)


def _entry(line: str, where: str, is_group: Callable[[str], bool]) -> tuple[str, Param | str]:
    override = _parse(line, where)
    key = override.key_or_group
    if not override.is_sweep_override():
        return key, line
    if override.type != OverrideType.CHANGE or override.package is not None:
        raise ConfigError(f"{where}: cannot sweep a '+', '++', '~' or '@package' override")
    distribution = _distribution(override, where)
    group = is_group(key)
    if group and not isinstance(distribution, CategoricalDistribution):
        raise ConfigError(f"{where}: a config group takes choice(...) or a comma list")
    return key, Param(key, distribution, group)


@cache
def _parser() -> OverridesParser:
    return OverridesParser.create()


def _parse(line: str, where: str) -> Override:
    try:
        return _parser().parse_overrides([line])[0]
    except OverrideParseException as exc:
        value = line.partition("=")[2]
        raise ConfigError(f"{where}: cannot parse {value!r}: {_reason(exc)}") from None


def _reason(exc: OverrideParseException) -> str:
    # Hydra's message repeats the override, then says what is wrong, then links its docs.
    boilerplate = ("Error parsing override", "See https://")
    lines = [s for s in exc.message.splitlines() if s.strip() and not s.startswith(boilerplate)]
    return lines[0] if lines else exc.message.splitlines()[0]


def _distribution(override: Override, where: str) -> BaseDistribution:
    value = override.value()
    if isinstance(value, ChoiceSweep):
        return _choice(value, where)
    if isinstance(value, RangeSweep):
        return _range(value, where)
    if isinstance(value, IntervalSweep):
        return _interval(value, where)
    name = type(value).__name__.lower()
    raise ConfigError(f"{where}: {name}() is not supported; use choice(), range() or interval()")


def _choice(sweep: ChoiceSweep, where: str) -> CategoricalDistribution:
    _tags(sweep.tags, allowed=(), kind="choice", where=where)
    return _categorical(list(sweep.list), where)  # shuffle(): the sampler picks anyway


def _categorical(values: list[Any], where: str) -> CategoricalDistribution:
    choices: list[CategoricalChoiceType] = []
    for choice in values:
        if not (choice is None or isinstance(choice, bool | int | float | str)):
            raise ConfigError(
                f"{where}: choice values must be null, bool, int, float or str, got {choice!r}"
            )
        choices.append(choice)
    if len(set(choices)) < len(choices):
        # Optuna finds a choice by ==, so 1, 1.0 and true would all come back as the first.
        raise ConfigError(f"{where}: choice values must be distinct, got {choices}")
    return CategoricalDistribution(choices)


def _range(sweep: RangeSweep, where: str) -> BaseDistribution:
    log = "log" in _tags(sweep.tags, allowed=("log",), kind="range", where=where)
    start, stop, step = sweep.start, sweep.stop, sweep.step
    assert start is not None and stop is not None
    text = f"range({start}, {stop}, {step})"
    _check_finite(where, text, start, stop, step)
    if step == 0:
        raise ConfigError(f"{where}: {text} has step 0")
    if sweep.shuffle:
        return _categorical(list(islice(sweep.range(), MAX_RANGE_VALUES)), where)
    # The values from start, a step apart, up to and including the stop (as the plugin's
    # IntDistribution / FloatDistribution(start, stop, step)), counted in Decimal: in floats,
    # range(-5.5, 5.5, 0.5) could miss its stop by a rounding error.
    first, last, stride = (Decimal(str(x)) for x in (start, stop, step))
    count = int((last - first) / stride) + 1 if (last - first) * stride >= 0 else 0
    if count == 0:
        raise ConfigError(f"{where}: {text} has no values")
    if count > MAX_RANGE_VALUES:
        raise ConfigError(f"{where}: {text} has over {MAX_RANGE_VALUES} values; use interval()")
    end = first + (count - 1) * stride  # the last value on the grid (the stop, or below it)
    lo, hi = min(first, end), max(first, end)
    if all(isinstance(x, int) for x in (start, stop, step)):
        return _bounded(IntDistribution, where, text, int(lo), int(hi), step=abs(step), log=log)
    # Optuna checks the grid in str() decimals: these ends lie on it exactly.
    return _bounded(FloatDistribution, where, text, float(lo), float(hi),
                    step=float(abs(stride)), log=log)  # fmt: skip


def _interval(sweep: IntervalSweep, where: str) -> BaseDistribution:
    tags = _tags(sweep.tags, allowed=TAGS, kind="interval", where=where)
    low, high = sweep.start, sweep.end
    assert low is not None and high is not None
    text = f"interval({low}, {high})"
    _check_finite(where, text, low, high)
    if low > high:
        raise ConfigError(f"{where}: interval low {low} > high {high}")
    # Hydra's interval() always yields floats; int(interval(...)) casts them, tag(int, ...) asks.
    if isinstance(low, int) or "int" in tags:
        return _bounded(IntDistribution, where, text, int(low), int(high), log="log" in tags)
    return _bounded(FloatDistribution, where, text, low, high, log="log" in tags)


def _tags(tags: set[str], allowed: Sequence[str], kind: str, where: str) -> set[str]:
    for tag in sorted(tags):
        if tag not in TAGS:
            raise ConfigError(f"{where}: unknown tag {tag!r}; known tags: {', '.join(TAGS)}")
        if tag not in allowed:
            raise ConfigError(f"{where}: tag {tag!r} does not apply to {kind}()")
    return tags


def _check_finite(where: str, text: str, *numbers: float) -> None:
    if not all(math.isfinite(x) for x in numbers):
        raise ConfigError(f"{where}: {text} needs finite bounds")


def _bounded(
    kind: type[IntDistribution] | type[FloatDistribution],
    where: str,
    text: str,
    low: Any,
    high: Any,
    **options: Any,
) -> BaseDistribution:
    if options.get("log") and low <= 0:
        raise ConfigError(f"{where}: log scale needs low > 0, got {low}")
    try:
        return kind(low, high, **options)
    except ValueError as exc:  # e.g. log with a step: Optuna's message says which
        raise ConfigError(f"{where}: {text}: {exc}") from None


def suggest(trial: optuna.trial.BaseTrial, param: Param) -> Any:
    """Ask ``trial`` for a value of ``param`` (enqueued values come back as they were)."""
    dist = param.distribution
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(param.key, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(param.key, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(param.key, dist.low, dist.high, step=dist.step, log=dist.log)
    raise TypeError(f"{param.key}: cannot suggest from {dist!r}")


def sample(
    trial: optuna.trial.BaseTrial,
    space: SearchSpace,
    compose: Callable[[list[str]], DictConfig],
) -> dict[str, Any]:
    """Draw one trial's values, define-by-run: a key absent from its config is not drawn.

    Groups come first because they decide which keys exist: ``clip.max_norm`` exists only
    under ``clip=norm``. ``compose`` turns overrides into the config, e.g. Hydra's compose.
    """
    values = {p.key: suggest(trial, p) for p in space.params if p.is_group}
    cfg = compose([*space.fixed, *to_overrides(values)])
    for param in space.params:
        if not param.is_group and _has_key(cfg, param.key):
            values[param.key] = suggest(trial, param)
    drawn = {p.key: values[p.key] for p in space.params if p.key in values}
    if space.custom is not None:
        drawn.update(_custom_params(space, trial, cfg, drawn))
    return drawn


def _custom_params(
    space: SearchSpace, trial: optuna.trial.BaseTrial, cfg: DictConfig, drawn: dict[str, Any]
) -> dict[str, Any]:
    """What ``hydra.sweeper.custom_search_space`` suggests beyond ``drawn``: it is called as
    ``fn(cfg, trial)`` with the trial's config as far as it is known (fixed settings and group
    options), as hydra-optuna-sweeper calls it."""
    assert space.custom is not None
    where = f"hydra.sweeper.custom_search_space={space.custom}"
    try:
        custom_function(space.custom)(cfg, trial)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - the user's function: its error, in one line
        raise ConfigError(f"{where} raised {type(err).__name__}: {one_line(err)}") from None
    extra = {k: v for k, v in trial.params.items() if k not in drawn}
    pinned = {o.partition("=")[0].lstrip("+~") for o in space.fixed}
    clash = sorted(k for k in extra if k.lstrip("+~") in pinned)
    if clash:
        raise ConfigError(f"{where} suggests {', '.join(clash)}, which the command line fixes; "
                          "drop one of the two")  # fmt: skip
    return extra


@cache
def custom_function(path: str) -> Callable[..., Any]:
    """The function ``hydra.sweeper.custom_search_space`` names (as Hydra's ``get_method``
    finds it: a module on ``sys.path``, such as the app's own script, then the function)."""
    from hydra.utils import get_method

    try:
        return get_method(path)
    except Exception as err:  # noqa: BLE001 - Hydra wraps import errors of every kind
        raise ConfigError(
            f"hydra.sweeper.custom_search_space={path}: {one_line(err)} (give module.function, "
            "with the module importable from where the sweep runs)"
        ) from None


def check_keys(space: SearchSpace, compose: Callable[[list[str]], DictConfig]) -> None:
    """Fail for a key that exists under no option of the groups it could belong to.

    Define-by-run skips absent keys, so without this check a misspelled ``optim.lrr`` would
    silently never be sampled.
    """
    for param in space.params:
        if param.is_group:
            continue
        if not _options_with(space, param, compose):
            owners = _owners(space, param)
            raise ConfigError(
                f"hydra.sweeper.params.{param.key}: no such key in the config"
                + (f" under any option of {owners[0].key}" if owners else "")
            )


def check_values(
    space: SearchSpace,
    compose: Callable[[list[str]], DictConfig],
    validate: Callable[[DictConfig], Any],
) -> None:
    """Fail, before any trial, for values the sweep would sample that no trial could run.

    Probed: every option of each group, and each parameter's ends (and a value between, for
    floats: an interval on an int key), under each option where its key exists, the other keys
    at their defaults. A value that does not compose (an unknown group option, a float for an
    int key) is an error; one that composes but fails a value check is an error only if all of
    the parameter's probes fail (``optim.lr=interval(0,1)`` samples good values too).
    """
    for param in space.params:
        contexts = [[]] if param.is_group else _options_with(space, param, compose)
        failures = []
        for value in probes(param.distribution):
            for context in contexts:
                line = f"{param.key}={_format(value)}"
                where = line + (f" (with {', '.join(context)})" if context else "")
                try:
                    cfg = compose([*space.fixed, *context, line])
                except Exception as err:  # noqa: BLE001 - Hydra's and OmegaConf's errors vary
                    raise _cannot_run(param, where, err) from None
                try:
                    validate(cfg)
                except ConfigError as err:
                    failures.append(_cannot_run(param, where, err))
                except Exception as err:  # noqa: BLE001 - a schema the value does not fit
                    raise _cannot_run(param, where, err) from None
        if failures and len(failures) == len(probes(param.distribution)) * len(contexts):
            raise failures[0]


def _cannot_run(param: Param, where: str, err: Exception) -> ConfigError:
    return ConfigError(f"hydra.sweeper.params.{param.key}: it samples {where}: {one_line(err)}")


def check_resumable(
    stored: Mapping[str, BaseDistribution], space: SearchSpace, study_name: str
) -> None:
    """A re-run may move a numeric range, but not change a parameter's kind, log scale or
    choices: Optuna refuses those within one study (``stored``: what its trials sampled from)."""
    for param in space.params:
        old = stored.get(param.key)
        if old is None:
            continue
        try:
            check_distribution_compatibility(old, param.distribution)
        except ValueError:
            raise ConfigError(
                f"hydra.sweeper.params.{param.key}: the study {study_name!r} sampled it from "
                f"{describe(old)}, this run asks for {describe(param.distribution)}; one study "
                "cannot change that: restore it, or start a new study in another "
                "hydra.sweep.dir"
            ) from None


def describe(dist: BaseDistribution) -> str:
    if isinstance(dist, CategoricalDistribution):
        return f"choice({', '.join(_format(c) for c in dist.choices)})"
    assert isinstance(dist, IntDistribution | FloatDistribution)
    kind = "int " if isinstance(dist, IntDistribution) else ""
    return f"{kind}{'log ' if dist.log else ''}interval({dist.low}, {dist.high})"


def probes(dist: BaseDistribution) -> list[Any]:
    """Values of ``dist`` that stand for all it can sample: its choices, or its ends."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    assert isinstance(dist, IntDistribution | FloatDistribution)
    if isinstance(dist, FloatDistribution) and dist.step is None and dist.low < dist.high:
        return [dist.low, dist.low + 0.37 * (dist.high - dist.low), dist.high]
    return [dist.low, dist.high]


def _owners(space: SearchSpace, param: Param) -> list[Param]:
    return [g for g in space.params if g.is_group and param.key.startswith(g.key + ".")]


def _options_with(
    space: SearchSpace, param: Param, compose: Callable[[list[str]], DictConfig]
) -> list[list[str]]:
    """The group options (overrides) under which ``param``'s key exists."""
    options = [
        [f"{g.key}={_format(c)}"]
        for g in _owners(space, param)
        for c in g.distribution.choices  # type: ignore[attr-defined]
    ] or [[]]
    return [o for o in options if _has_key(compose([*space.fixed, *o]), param.key)]


def _has_key(cfg: DictConfig, key: str) -> bool:
    # Look the leaf up among its parent's keys rather than select() it: select() answers its
    # default for a mandatory '???' value, and raises for an interpolation it cannot resolve,
    # yet both are keys a trial can set. A null value is a key too.
    parent_key, _, leaf = key.rpartition(".")
    parent = (
        OmegaConf.select(cfg, parent_key, default=None, throw_on_resolution_failure=False)
        if parent_key
        else cfg
    )
    return isinstance(parent, DictConfig) and leaf in parent.keys()


def to_overrides(values: Mapping[str, Any]) -> list[str]:
    """``key=value`` strings that Hydra's override parser reads back to the same values."""
    return [f"{key}={_format(value)}" for key, value in values.items()]


def _format(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, Real):
        return repr(float(value))  # shortest text that reads back to the same float
    if isinstance(value, str):
        return value if _reads_back(value) else _quote(value)
    raise TypeError(f"cannot write {value!r} as an override value")


def _reads_back(text: str) -> bool:
    # Hydra types unquoted text: 1_000 is an int, TRUE a bool, nan a float, a,b a sweep.
    if not _PLAIN.fullmatch(text):
        return False
    try:
        override = _parser().parse_overrides([f"key={text}"])[0]
    except OverrideParseException:
        return False
    return not override.is_sweep_override() and override.value() == text


def _quote(text: str) -> str:
    # In a quoted value Hydra unescapes \' and the backslashes right before a quote or the end.
    escaped = re.sub(r"(\\*)('|\Z)", lambda m: m[1] * 2 + ("\\'" if m[2] else ""), text)
    return f"'{escaped}'"

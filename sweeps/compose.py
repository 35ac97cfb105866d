"""A trial's config from its overrides, as Hydra composes it, without composing every trial.

Hydra composes a job's config from scratch: it reads every config file of the defaults list and
merges them, about 0.1 s, more than a small trial's training. The trials of a sweep differ in
their sampled values, as a rule, not in which files make them up. So ``Composer`` composes the
first trial of each *shape* (its overrides with the values of plain ``key=value`` overrides
left out) in full, and any later trial of that shape from a copy of it: its changed values set
the way Hydra applies a value override, and the ``hydra.overrides.task`` and
``hydra.job.override_dirname`` they are recorded in rewritten. Anything else (another group
option, an added or deleted key, a list or mapping value, a ``hydra.*`` key) makes another
shape; a change that does not apply cleanly is composed in full, so that Hydra's own error
reports it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf, open_dict

from sweeps.internals import apply_overrides, overrides_dirname

Shape = tuple[str, ...]


def is_group(loader: Any, key: str) -> bool:
    """Whether ``key`` names a config group (``clip``, ``hydra/sweeper``) of Hydra's loader."""
    return bool(loader.get_group_options(key.replace(".", "/")))


class Composer:
    """Compose configs from overrides with Hydra's ``load_sweep_config``, memoized.

    Args:
        load: ``overrides -> config``, Hydra's composition (``config_loader.load_sweep_config``
            with the master config bound).
        is_group: whether a key names a config group (``clip``) rather than a value.

    Example:
        >>> calls = []
        >>> def load(overrides):  # stands in for Hydra's composition
        ...     calls.append(overrides)
        ...     parsed = OverridesParser.create().parse_overrides(overrides)
        ...     names = {"kv_sep": "=", "item_sep": ",", "exclude_keys": []}
        ...     hydra = {"overrides": {"task": [o.input_line for o in parsed]}, "job": {
        ...         "override_dirname": "", "config": {"override_dirname": names}}}
        ...     config = OmegaConf.create({"optim": {"lr": 0.1}, "hydra": hydra})
        ...     apply_overrides(parsed, config)
        ...     return config
        >>> composer = Composer(load, is_group=lambda key: False)
        >>> composer.fresh(["optim.lr=0.5"]).optim.lr, composer.fresh(["optim.lr=0.7"]).optim.lr
        (0.5, 0.7)
        >>> len(calls)  # the second is the first's copy, its value set
        1
    """

    def __init__(self, load: Callable[[list[str]], DictConfig], is_group: Callable[[str], bool]):
        self._load, self._is_group = load, is_group
        self._parser = OverridesParser.create()
        self._memo: dict[Shape, DictConfig] = {}  # read-only configs, by their overrides
        self._shapes: dict[Shape, tuple[list[Override], DictConfig]] = {}
        self._groups: dict[str, bool] = {}

    @classmethod
    def of(cls, loader: Any, master: DictConfig) -> Composer:
        """The composer of ``master``'s jobs, with Hydra's ``loader`` (a sweeper's)."""
        return cls(partial(loader.load_sweep_config, master), partial(is_group, loader))

    def __call__(self, overrides: list[str]) -> DictConfig:
        """The config of ``overrides``, shared: the caller must not change it (sampling and the
        search space's checks compose the same group options again and again)."""
        key = tuple(overrides)
        if key not in self._memo:
            self._memo[key] = self.fresh(overrides)
        return self._memo[key]

    def fresh(self, overrides: list[str]) -> DictConfig:
        """The config of ``overrides``, the caller's own (a job's, which Hydra then changes)."""
        parsed = self._parser.parse_overrides(list(overrides))
        shape = tuple(self._shape_item(o) for o in parsed)
        if shape not in self._shapes:
            config = self._load(list(overrides))
            self._shapes[shape] = (parsed, config)
            return copy.deepcopy(config)
        return self._from_shape(self._shapes[shape], parsed, overrides)

    def _shape_item(self, override: Override) -> str:
        line = override.input_line or ""
        return f"{override.key_or_group}=" if self._plain(override) else line

    def _plain(self, override: Override) -> bool:
        """A value set on a key that the config has: what trials of one shape differ in."""
        key = override.key_or_group
        if override.package is not None or override.is_sweep_override():
            return False
        if override.is_add() or override.is_delete() or override.is_force_add():
            return False
        if key == "hydra" or key.startswith("hydra.") or isinstance(override.value(), dict | list):
            return False
        if key not in self._groups:
            self._groups[key] = self._is_group(key)
        return not self._groups[key]

    def _from_shape(
        self,
        known: tuple[list[Override], DictConfig],
        parsed: list[Override],
        overrides: list[str],
    ) -> DictConfig:
        first, template = known
        pairs = zip(parsed, first, strict=True)
        changed = [o for o, was in pairs if o.input_line != was.input_line]
        config = copy.deepcopy(template)
        try:
            apply_overrides(changed, config)
        except Exception:  # noqa: BLE001 - Hydra reports it, composing in full
            return self._load(list(overrides))
        _record(config, parsed)
        return config


def _record(config: DictConfig, parsed: list[Override]) -> None:
    """What Hydra records of a job's overrides: the task's lines and its override_dirname."""
    task = [o for o in parsed if not o.is_hydra_override()]
    dirname: Any = config.hydra.job.config.override_dirname
    with open_dict(config.hydra):
        config.hydra.overrides.task = [o.input_line for o in task]
        config.hydra.job.override_dirname = overrides_dirname(
            task, dirname.kv_sep, dirname.item_sep, OmegaConf.to_container(dirname.exclude_keys)
        )

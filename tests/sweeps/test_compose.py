"""Composing trials' configs from a copy (sweeps/compose.py) gives exactly Hydra's configs."""

from __future__ import annotations

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import OmegaConf

from sweeps.compose import Composer
from tests.conftest import CONF, TINY


@pytest.fixture
def hydra_load():
    """Hydra's own composition of a sweep's jobs, and whether a key names a group."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", [*TINY], RunMode.MULTIRUN)
        calls: list[list[str]] = []

        def load(overrides: list[str]):
            calls.append(overrides)
            return loader.load_sweep_config(master, overrides)

        def is_group(key: str) -> bool:
            return bool(loader.get_group_options(key.replace(".", "/")))

        yield load, is_group, calls


def as_plain(config):
    return OmegaConf.to_container(config, resolve=False)


TRIALS = [
    ["optim.lr=0.003", "clip=norm", "clip.max_norm=1.0", "bptt.length=8"],
    ["optim.lr=0.01", "clip=norm", "clip.max_norm=5.0", "bptt.length=12"],  # values only
    ["optim.lr=0.02", "clip=value", "clip.clip_value=0.5", "bptt.length=12"],  # another group
    ["optim.lr=0.001", "clip=norm", "clip.max_norm=0.3", "bptt.length=16"],  # the first again
    ["optim.lr=0.002", "clip=norm", "clip.max_norm=0.3", "bptt.length=16", "+optim.amsgrad=true"],
    ["optim.lr=0.004", "clip=norm", "clip.max_norm=0.3", "bptt.length=9", "+optim.amsgrad=true"],
]


def test_every_trial_equals_hydras_own_composition(hydra_load):
    load, is_group, calls = hydra_load
    composer = Composer(load, is_group)
    fixed = [*TINY, "hydra.verbose=false"]
    for overrides in TRIALS:
        mine = composer.fresh([*fixed, *overrides])
        assert as_plain(mine) == as_plain(load([*fixed, *overrides])), overrides
    assert len(calls) == len(TRIALS) + 3  # composed in full: three shapes, and each check


def test_a_value_that_does_not_apply_is_hydras_error(hydra_load):
    load, is_group, _ = hydra_load
    composer = Composer(load, is_group)
    composer.fresh(["bptt.length=8"])
    with pytest.raises(ConfigCompositionException, match="bptt.length=abc"):
        composer.fresh(["bptt.length=abc"])


def test_a_fresh_config_is_the_callers_own(hydra_load):
    load, is_group, _ = hydra_load
    composer = Composer(load, is_group)
    first = composer.fresh(["optim.lr=0.1"])
    first.optim.lr = 9.0
    assert composer.fresh(["optim.lr=0.1"]).optim.lr == 0.1
    assert composer(["optim.lr=0.2"]) is composer(["optim.lr=0.2"])  # memoized, shared

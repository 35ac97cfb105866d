"""Every ready-made sweep in conf/sweep/ composes, names our sweeper and samples only real keys.

No training: each file is composed with Hydra as ``make sweep SWEEP=name`` would compose it, its
``hydra.sweeper.params`` are parsed as the sweeper parses them, and every swept key must exist
under some option of the groups it could belong to (a misspelled key would otherwise never be
sampled, silently).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from sweeps import config as sweep_config
from sweeps.space import check_keys, parse_space
from sweeps.sweeper import grid_space
from tbptt.train import typed
from tests.conftest import CONF

sweep_config.register()  # hydra/sweeper=optuna and its sampler / pruner options

STUDIES = sorted(CONF.glob("sweep/*.yaml"))
GRID = "optuna.samplers.GridSampler"


def is_group(key: str) -> bool:
    return (CONF / key.replace(".", "/")).is_dir()


def header(path: Path) -> str:
    """The comment lines the file opens with."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


def composer(name: str) -> Callable[[list[str]], DictConfig]:
    def compose_sweep(overrides: list[str]) -> DictConfig:
        return compose("config", overrides=[f"sweep={name}", *overrides])

    return compose_sweep


@pytest.fixture(scope="module", params=STUDIES, ids=[p.stem for p in STUDIES])
def study(request: pytest.FixtureRequest):
    """(path, composed config with hydra's node, compose function); Hydra stays initialized."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        name = request.param.stem
        cfg = compose("config", overrides=[f"sweep={name}"], return_hydra_config=True)
        yield request.param, cfg, composer(name)


def test_the_glob_finds_the_studies() -> None:
    assert {"default", "lr_range"} <= {p.stem for p in STUDIES}


def test_header_says_how_to_run_it(study) -> None:
    path, _, _ = study
    name = path.stem
    text = header(path)
    assert text.startswith("# @package _global_"), path
    make = "make sweep" if name == "default" else f"make sweep SWEEP={name}"  # SWEEP ?= default
    assert make in text, f"{path}: the header must say `{make}`"
    assert f"sweep={name}" in text, f"{path}: the header must give the python -m form"


def test_uses_our_sweeper_with_its_own_study_and_directory(study) -> None:
    path, cfg, _ = study
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == sweep_config.SweeperConfig._target_
    # `make sweep SWEEP=name` reports multirun/name: the study must be written there.
    assert sweeper.study_name == path.stem
    assert cfg.hydra.sweep.dir == f"multirun/{path.stem}"


def test_params_parse_and_every_key_exists_under_some_option(study) -> None:
    _, cfg, compose_sweep = study
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    assert params, "a study sweeps something"
    space = parse_space({str(k): str(v) for k, v in params.items()}, [], is_group)
    assert {p.key for p in space.params} == set(params)  # every line is a sweep
    check_keys(space, compose_sweep)
    typed(compose_sweep([]))  # the fixed settings pass every schema check


def test_grid_studies_run_each_cell_once(study) -> None:
    _, cfg, _ = study
    sweeper = cfg.hydra.sweeper
    if sweeper.sampler._target_ != GRID:
        pytest.skip("not a grid study")
    params = OmegaConf.to_container(sweeper.params)
    space = parse_space({str(k): str(v) for k, v in params.items()}, [], is_group)
    cells = 1
    for values in grid_space(space).values():
        cells *= len(values)
    # Fewer trials leave cells out; more re-run cells (Optuna's grid sampler starts over).
    assert sweeper.n_trials == cells

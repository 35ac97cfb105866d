"""Every documented key of hydra-optuna-sweeper's config: read as that plugin reads it, or
refused in one line that names the key and the alternative. No sweep runs here (see
test_hydra_optuna_examples.py for the plugin's examples end to end)."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from sweeps import config
from sweeps.config import SAMPLERS, SweeperConfig
from sweeps.settings import check_settings, directions_of, failure_limit, search_space_params
from sweeps.space import parse_space
from sweeps.sweeper import built, grid_space
from tbptt import contract
from tbptt.contract import End
from tbptt.errors import ConfigError


def distribution(line: str):
    key, _, value = line.partition("=")
    return parse_space({key: value}, [], lambda k: False).params[0].distribution


# The distributions hydra-optuna-sweeper gives each form of its grammar.
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("key=choice(1,2)", CategoricalDistribution([1, 2])),
        ("key=choice(true, false)", CategoricalDistribution([True, False])),
        ("key=choice('hello', 'world')", CategoricalDistribution(["hello", "world"])),
        ("key=shuffle(range(1,3))", CategoricalDistribution((1, 2))),
        ("key=shuffle(a, b)", CategoricalDistribution(("a", "b"))),
        ("key=range(1,3)", IntDistribution(1, 3)),
        ("key=range(0,10,step=3)", IntDistribution(0, 9, step=3)),
        ("key=interval(1, 5)", FloatDistribution(1, 5)),
        ("key=int(interval(1, 5))", IntDistribution(1, 5)),
        ("key=tag(log, interval(1, 5))", FloatDistribution(1, 5, log=True)),
        ("key=tag(log, int(interval(1, 5)))", IntDistribution(1, 5, log=True)),
        ("key=range(0.5, 5.5, step=1)", FloatDistribution(0.5, 5.5, step=1)),
        ("key=range(-5.5, 5.5, step=0.5)", FloatDistribution(-5.5, 5.5, step=0.5)),
        ("key=range(-1.0, 1.0, step=1)", FloatDistribution(-1.0, 1.0, step=1)),
        ("key=range(0, 5, step=0.5)", FloatDistribution(0, 5, step=0.5)),
    ],
)
def test_each_form_gives_the_plugins_distribution(line, expected):
    got = distribution(line)
    if isinstance(expected, CategoricalDistribution):
        assert set(got.choices) == set(expected.choices)
    else:
        assert got == expected


@pytest.mark.parametrize(
    ("line", "points"),
    [
        ("y=range(-1.0, 1.0, step=1)", [-1.0, 0.0, 1.0]),
        ("y=range(0.1, 0.4, step=0.1)", [0.1, 0.2, 0.3, 0.4]),
        ("y=range(1, 7, step=3)", [1, 4, 7]),
        ("y=choice(a, b)", ["a", "b"]),
    ],
)
def test_a_grid_takes_every_point_of_a_stepped_range(line, points):
    space = parse_space({}, [line], lambda k: False)
    assert grid_space(space) == {"y": points}


def test_a_grid_refuses_a_continuous_interval():
    with pytest.raises(ConfigError, match="y: the grid sampler needs choice"):
        grid_space(parse_space({}, ["y=interval(0, 1)"], lambda k: False))


@pytest.mark.parametrize(
    ("direction", "expected"),
    [("minimize", ["minimize"]), (["minimize", "maximize"], ["minimize", "maximize"]),
     (OmegaConf.create(["maximize"]), ["maximize"])],  # fmt: skip
)
def test_direction_is_one_or_a_list(direction, expected):
    assert directions_of(direction) == expected


@pytest.mark.parametrize(
    ("failures", "rate", "n_trials", "limit"),
    [(10, None, 20, 10), (10, 0.0, 20, 1), (10, 0.5, 20, 11), (10, 0.25, 6, 2), (10, 1.0, 20, None)],
)
def test_max_failure_rate_is_a_share_of_n_trials(failures, rate, n_trials, limit):
    assert failure_limit(failures, rate, n_trials) == limit


@pytest.mark.parametrize(
    ("spec", "grammar"),
    [
        ({"type": "categorical", "choices": [1, "a"]}, "choice(1, a)"),
        ({"type": "int", "low": 1, "high": 9, "step": 2}, "range(1, 9, step=2)"),
        ({"type": "int", "low": 1, "high": 64, "log": True}, "tag(log, int(interval(1, 64)))"),
        ({"type": "float", "low": 0, "high": 1}, "interval(0.0, 1.0)"),
        ({"type": "float", "low": 0, "high": 1, "step": 0.25}, "range(0.0, 1.0, step=0.25)"),
    ],
)
def test_the_deprecated_search_space_reads_as_params(spec, grammar):
    assert search_space_params({"k": spec}) == {"k": grammar}
    assert distribution(f"k={grammar}") is not None


# Every option hydra-optuna-sweeper's sampler configs document, with a value of its own.
PLUGIN_OPTIONS = {
    "tpe": {"consider_prior": True, "prior_weight": 1.0, "consider_magic_clip": True,
            "consider_endpoints": False, "n_startup_trials": 10, "n_ei_candidates": 24,
            "multivariate": False, "warn_independent_sampling": True, "seed": 123},
    "random": {"seed": 123},
    "grid": {"seed": 1},
    "cmaes": {"x0": {"x": 0.5}, "sigma0": 0.1, "independent_sampler": None,
              "warn_independent_sampling": True, "consider_pruned_trials": False,
              "restart_strategy": None, "inc_popsize": 2, "use_separable_cma": False,
              "source_trials": None, "seed": 1},
    "nsgaii": {"population_size": 10, "mutation_prob": 0.1, "crossover_prob": 0.9,
               "swapping_prob": 0.5, "constraints_func": None, "seed": 1},
    "gp": {"independent_sampler": {"_target_": "optuna.samplers.RandomSampler"},
           "n_startup_trials": 10, "deterministic_objective": True, "constraints_func": None,
           "warn_independent_sampling": True, "seed": 1},
    "qmc": {"qmc_type": "halton", "scramble": False, "independent_sampler": None,
            "warn_asynchronous_seeding": True, "warn_independent_sampling": True, "seed": 1},
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(PLUGIN_OPTIONS))
def test_every_plugin_sampler_option_composes_and_builds(name):
    node = OmegaConf.merge(OmegaConf.structured(SAMPLERS[name]), PLUGIN_OPTIONS[name])
    if name == "grid":
        return  # built by the sweeper from its params: its schema takes the plugin's keys
    sampler = built("sampler", node)
    assert type(sampler).__name__ == node._target_.rsplit(".", 1)[-1]


def test_a_value_only_optuna_checks_is_a_one_line_error():
    node = OmegaConf.merge(OmegaConf.structured(SAMPLERS["nsgaii"]), {"population_size": 1})
    with pytest.raises(ConfigError, match=r"^hydra.sweeper.sampler \(optuna.samplers."
                       r"NSGAIISampler\): .*population_size"):  # fmt: skip
        built("sampler", node)


def sweeper_cfg(**changes):
    cfg = OmegaConf.structured(SweeperConfig)
    cfg.sampler = OmegaConf.structured(SAMPLERS[changes.pop("sampler", "tpe")])
    cfg.pruner = {"_target_": "optuna.pruners.NopPruner"}
    with_keys = OmegaConf.to_container(cfg)
    for hydras_own in ("_target_", "defaults"):  # Hydra keeps these from the sweeper
        del with_keys[hydras_own]
    with_keys.update(changes)
    return OmegaConf.create(with_keys)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n_trails": 2}, "hydra.sweeper.n_trails is not a setting of this sweeper; did you mean hydra.sweeper.n_trials?"),
        ({"max_failure_rat": 0.5}, "did you mean hydra.sweeper.max_failure_rate?"),
        ({"custom_searchspace": "m.f"}, "did you mean hydra.sweeper.custom_search_space?"),
        ({"max_failure_rate": 1.5}, "hydra.sweeper.max_failure_rate must be in [0.0, 1.0] (a share of n_trials), got 1.5"),
        ({"max_failure_rate": 0.5, "max_failures": 3}, "max_failures=3 and max_failure_rate=0.5 are both set: keep one"),
        ({"sampler": "motpe"}, "hydra/sweeper/sampler=motpe: Optuna 4 removed MOTPESampler; use hydra/sweeper/sampler=tpe"),
        ({"sampler": "cmaes", "direction": ["minimize", "maximize"]}, "hydra/sweeper/sampler=cmaes optimizes one objective"),
        ({"direction": ["minimize", "maximize"], "budget": "1m"}, "hydra.sweeper.budget needs one objective"),
        ({"direction": ["minimize", "maximize"], "transfer": {"top_k": 2, "factor": 5.0}}, "hydra.sweeper.transfer ranks trials by one objective"),
        ({"direction": "minimise"}, "hydra.sweeper.direction must be minimize or maximize, or a list of them"),
        ({"direction": []}, "hydra.sweeper.direction must be minimize or maximize"),
        ({"custom_search_space": "no_such_module.configure"}, "hydra.sweeper.custom_search_space=no_such_module.configure: "),
        ({"search_space": {"x": {"low": 0}}}, "hydra.sweeper.search_space.x must be a mapping with a type"),
        ({"search_space": {"x": {"type": "float", "low": 0}}}, "hydra.sweeper.search_space.x: type must be int, float or categorical, with low and high"),
        ({"study_name": " "}, "hydra.sweeper.study_name must not be empty"),
    ],
)
def test_settings_the_plugin_or_optuna_refuse_are_one_line_errors(changes, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        check_settings(sweeper_cfg(**changes))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err


@pytest.mark.parametrize(
    "changes",
    [{"study_name": None}, {"max_failure_rate": 0.0}, {"max_failure_rate": 1.0},
     {"direction": ["minimize", "maximize"], "sampler": "nsgaii"}, {"params": None},
     {"custom_search_space": "sweeps.space.sample"}, {"sampler": "gp"}, {"sampler": "qmc"},
     {"search_space": {"x": {"type": "int", "low": 0, "high": 3}}}],  # fmt: skip
)
def test_settings_the_plugin_documents_are_accepted(changes):
    check_settings(sweeper_cfg(**changes))


@pytest.mark.parametrize(
    ("returned", "objectives", "state", "value", "fatal"),
    [
        (1.5, 1, End.COMPLETE, 1.5, False),
        (np.float32(0.5), 1, End.COMPLETE, 0.5, False),
        (torch.tensor(2.0), 1, End.COMPLETE, 2.0, False),
        ("1.5", 1, End.FAIL, None, False),
        (True, 1, End.FAIL, None, False),
        ((1.0, 2.0), 1, End.FAIL, None, True),
        ((1.0, 2.0), 2, End.COMPLETE, (1.0, 2.0), False),
        ([1, np.float64(2.5)], 2, End.COMPLETE, (1.0, 2.5), False),
        ((1.0, 2.0), 3, End.FAIL, None, True),
        (1.0, 2, End.FAIL, None, True),
        ((1.0, float("nan")), 2, End.FAIL, None, False),
        ((1.0, "a"), 2, End.FAIL, None, False),
    ],
)
def test_the_objective_has_one_value_per_direction(returned, objectives, state, value, fatal):
    told = contract.outcome(returned, None, objectives=objectives)
    assert (told.state, told.value, told.fatal) == (state, value, fatal)


def test_with_both_plugins_installed_hydra_sweeper_optuna_stays_ours():
    """hydra-optuna-sweeper registers its nodes when Hydra's plugin scan runs its config
    module, which may be before or after ours: either way the names stay ours."""
    store = ConfigStore.instance()
    config.register()
    theirs = OmegaConf.create({"_target_": "hydra_plugins.hydra_optuna_sweeper.X"})
    for group, name in [("hydra/sweeper", "optuna"), ("hydra/sweeper/sampler", "tpe"),
                        ("hydra/sweeper/sampler", "motpe")]:  # fmt: skip
        store.store(group=group, name=name, node=theirs, provider="optuna_sweeper")
        assert store.load(f"{group}/{name}.yaml").provider == "tbptt"
    store.store(group="elsewhere", name="kept", node=theirs, provider="optuna_sweeper")
    assert store.load("elsewhere/kept.yaml").provider == "optuna_sweeper"


def test_a_multi_objective_trial_is_never_reported_to_a_pruner():
    from sweeps.worker import PruningReporter

    study = optuna.create_study(directions=["minimize", "maximize"],
                                pruner=optuna.pruners.ThresholdPruner(upper=0.0))  # fmt: skip
    reporter = PruningReporter(study.ask())
    assert reporter(contract.Report(value=5.0, step=1)) is None

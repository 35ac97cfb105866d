from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution
from optuna.distributions import CategoricalDistribution as Categorical
from optuna.distributions import FloatDistribution as Float
from optuna.distributions import IntDistribution as Int

from sweeps.space import Param, SearchSpace, parse_space, sample, suggest, to_overrides
from tbptt.errors import ConfigError

GROUPS = {"clip", "model", "optim", "data", "bptt", "trainer"}
PARSER = OverridesParser.create()


def is_group(key: str) -> bool:
    return key in GROUPS


def only_param(key: str, value: str) -> Param:
    (param,) = parse_space({key: value}, [], is_group).params
    return param


# --- override strings to distributions -------------------------------------------------------

DISTRIBUTIONS: list[tuple[str, str, BaseDistribution]] = [
    ("optim.lr", "tag(log, interval(1e-4, 3e-2))", Float(1e-4, 3e-2, log=True)),
    ("optim.weight_decay", "interval(0, 0.1)", Float(0.0, 0.1)),
    ("model.hidden_size", "int(interval(16, 256))", Int(16, 256)),
    ("model.hidden_size", "tag(log, int(interval(16, 256)))", Int(16, 256, log=True)),
    ("model.hidden_size", "tag(log, int, interval(16, 256))", Int(16, 256, log=True)),
    ("model.embed_size", "int(interval(1.5, 10.7))", Int(1, 10)),  # int() truncates
    # The stop is a value (hydra-optuna-sweeper's IntDistribution / FloatDistribution reading,
    # unlike Python's range and Hydra's basic sweeper); a stop off the grid is not.
    ("model.layers", "range(1, 4)", Int(1, 4)),
    ("bptt.length", "range(16, 129, 16)", Int(16, 128, step=16)),
    ("bptt.length", "range(128, 0, -32)", Int(0, 128, step=32)),
    ("trainer.threads", "tag(log, range(1, 9))", Int(1, 9, log=True)),
    ("model.dropout", "range(0, 0.5, 0.1)", Float(0.0, 0.5, step=0.1)),
    ("model.dropout", "range(0, 0.45, 0.1)", Float(0.0, 0.4, step=0.1)),
    ("model.dropout", "float(range(0, 3))", Float(0.0, 3.0, step=1.0)),
    ("model.dropout", "range(0.1, 0.4, 0.1)", Float(0.1, 0.4, step=0.1)),
    ("model.dropout", "range(0.5, 0.5, 0.1)", Float(0.5, 0.5, step=0.1)),
    # shuffle(): a categorical of what the basic sweeper runs (the plugin's reading)
    ("model.cell", "shuffle(lstm, gru)", Categorical(["lstm", "gru"])),
    ("model.layers", "shuffle(range(1, 4))", Categorical([1, 2, 3])),
    ("model.cell", "choice(lstm, gru, rnn_tanh)", Categorical(["lstm", "gru", "rnn_tanh"])),
    ("clip", "choice(none, norm, value)", Categorical(["none", "norm", "value"])),
    ("model.layers", "1,2,3", Categorical([1, 2, 3])),
    ("clip.error_clip", "null,1.0,10", Categorical([None, 1.0, 10])),
    (
        "x",
        "choice(32, 1e3, true, '1', abc, 'a b')",
        Categorical([32, 1000.0, True, "1", "abc", "a b"]),
    ),
    ("x", "str(1, 2)", Categorical(["1", "2"])),
    ("x", "sort(3, 1, 2)", Categorical([1, 2, 3])),
]


@pytest.mark.parametrize(("key", "value", "expected"), DISTRIBUTIONS)
def test_override_string_to_distribution(key: str, value: str, expected: BaseDistribution) -> None:
    param = only_param(key, value)
    assert param.key == key
    assert param.distribution == expected
    assert type(param.distribution) is type(expected)
    assert param.is_group == (key in GROUPS)


def test_choice_keeps_the_types_hydra_parsed() -> None:
    dist = only_param("x", "choice(2, 1.5, true, abc)").distribution
    assert isinstance(dist, Categorical)
    assert [type(c) for c in dist.choices] == [int, float, bool, str]


# --- bad strings to messages -----------------------------------------------------------------

P = "hydra.sweeper.params"
BAD: list[tuple[str, str, str]] = [
    ("optim.lr", "interval(0.1, 0.01)", f"{P}.optim.lr: interval low 0.1 > high 0.01"),
    ("optim.lr", "tag(log, interval(0, 1))", f"{P}.optim.lr: log scale needs low > 0, got 0.0"),
    (
        "model.layers",
        "tag(log, int(interval(0, 4)))",
        f"{P}.model.layers: log scale needs low > 0, got 0",
    ),
    ("optim.lr", "interval(0, inf)", f"{P}.optim.lr: interval(0.0, inf) needs finite bounds"),
    (
        "clip",
        "choice()",
        f"{P}.clip: cannot parse 'choice()': "
        "ValueError while evaluating 'choice()': empty choice is not legal",
    ),
    (
        "optim.lr",
        "interval(1e-4",
        f"{P}.optim.lr: cannot parse 'interval(1e-4': "
        "no viable alternative at input 'interval(1e-4'",
    ),
    (
        "optim.lr",
        "lerp(1, 2)",
        f"{P}.optim.lr: cannot parse 'lerp(1, 2)': "
        "HydraException while evaluating 'lerp(1, 2)': Unknown function 'lerp'",
    ),
    (  # Hydra's choice() refuses null; a comma list takes it (see DISTRIBUTIONS)
        "clip.error_clip",
        "choice(null, 1.0)",
        f"{P}.clip.error_clip: cannot parse 'choice(null, 1.0)': "
        "TypeError while evaluating 'choice(null, 1.0)': mismatch type argument args[0]",
    ),
    ("model.layers", "range(5, 1)", f"{P}.model.layers: range(5, 1, 1) has no values"),
    (
        "model.dropout",
        "range(0.5, 0.4, 0.1)",
        f"{P}.model.dropout: range(0.5, 0.4, 0.1) has no values",
    ),
    ("model.layers", "range(1, 3, 0)", f"{P}.model.layers: range(1, 3, 0) has step 0"),
    ("model.cell", "glob(*)", f"{P}.model.cell: glob() is not supported"),
    (
        "optim.lr",
        "tag(foo, interval(0.1, 1))",
        f"{P}.optim.lr: unknown tag 'foo'; known tags: int, log",
    ),
    (
        "model.cell",
        "tag(log, choice(lstm, gru))",
        f"{P}.model.cell: tag 'log' does not apply to choice()",
    ),
    (
        "model.layers",
        "tag(int, range(1, 4))",
        f"{P}.model.layers: tag 'int' does not apply to range()",
    ),
    ("bptt.length", "tag(log, range(8, 65, 8))", f"{P}.bptt.length: range(8, 65, 8): Samplers"),
    (
        "optim.betas",
        "choice([0.9, 0.99], [0.8, 0.9])",
        f"{P}.optim.betas: choice values must be null, bool, int, float or str, got [0.9, 0.99]",
    ),
    (
        "model.layers",
        "choice(1, 1.0)",
        f"{P}.model.layers: choice values must be distinct, got [1, 1.0]",
    ),
    ("clip", "interval(0, 1)", f"{P}.clip: a config group takes choice(...) or a comma list"),
]


@pytest.mark.parametrize(("key", "value", "message"), BAD)
def test_bad_override_string_names_key_and_value(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(message)) as info:
        parse_space({key: value}, [], is_group)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("optim.lr=interval(0.1,0.01)", "override 'optim.lr=interval(0.1,0.01)': interval low"),
        ("+optim.momentum=0.1,0.9", "override '+optim.momentum=0.1,0.9': cannot sweep a '+'"),
        ("model.layers=(", "override 'model.layers=(': cannot parse '('"),
    ],
)
def test_bad_command_line_override_is_named(line: str, message: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        parse_space({}, [line], is_group)


# --- fixed overrides pass through ------------------------------------------------------------


def test_command_line_sweep_replaces_param_and_value_pins_key() -> None:
    space = parse_space(
        {
            "optim.lr": "tag(log, interval(1e-4, 3e-2))",
            "clip": "choice(none,norm,value)",
            "model.layers": "1,2",
        },
        ["optim.lr=tag(log,interval(1e-3,1e-2))", "trainer.max_tokens=1000", "model.layers=3"],
        is_group,
    )
    assert space.params == (
        Param("optim.lr", Float(1e-3, 1e-2, log=True), is_group=False),
        Param("clip", Categorical(["none", "norm", "value"]), is_group=True),
    )
    assert set(space.fixed) == {"trainer.max_tokens=1000", "model.layers=3"}


def test_command_line_sweep_adds_param_after_those_given() -> None:
    space = parse_space({"optim.lr": "interval(0.001, 0.01)"}, ["model.cell=gru,lstm"], is_group)
    assert [p.key for p in space.params] == ["optim.lr", "model.cell"]


def test_non_sweep_overrides_pass_through_unchanged() -> None:
    lines = [
        "data.path='my corpus.txt'",
        "~seed",
        "+trainer.note=x",
        "clip=value",
        "bptt.length=32",
    ]
    space = parse_space({"trainer.eval_every_tokens": "256"}, lines, is_group)
    assert space == SearchSpace(params=(), fixed=("trainer.eval_every_tokens=256", *lines))


def test_params_values_typed_by_yaml_are_written_back_as_overrides() -> None:
    params: dict[str, Any] = {"seed": 3, "clip.error_clip": None, "model.layers": "1,2"}
    space = parse_space(params, [], is_group)
    assert space.fixed == ("seed=3", "clip.error_clip=null")
    assert [p.key for p in space.params] == ["model.layers"]


def test_no_overrides_give_an_empty_space() -> None:
    assert parse_space({}, [], is_group) == SearchSpace(params=(), fixed=())


# --- define-by-run sampling ------------------------------------------------------------------

# Like conf/clip/*.yaml: every option has error_clip (null by default); norm and value add theirs.
CLIP_OPTIONS: dict[str, dict[str, Any]] = {
    "none": {"error_clip": None},
    "norm": {"error_clip": None, "max_norm": 1.0, "norm_type": 2.0},
    "value": {"error_clip": None, "clip_value": 0.5},
}
SPACE = parse_space(
    {
        "optim.lr": "tag(log, interval(1e-4, 3e-2))",
        "clip": "choice(none, norm, value)",
        "clip.max_norm": "tag(log, interval(0.1, 10))",
        "clip.clip_value": "interval(0.1, 1)",
        "clip.error_clip": "null,1.0",
        "model.layers": "range(1, 4)",
    },
    ["trainer.max_tokens=1000"],
    is_group,
)


def fake_compose(calls: list[list[str]]) -> Callable[[list[str]], DictConfig]:
    def compose(overrides: list[str]) -> DictConfig:
        calls.append(overrides)
        values = {o.key_or_group: o.value() for o in PARSER.parse_overrides(overrides)}
        clip = CLIP_OPTIONS[str(values.pop("clip", "norm"))]
        cfg = OmegaConf.create({"optim": {"lr": 2e-3}, "model": {"layers": 2}, "clip": clip})
        for key, value in values.items():
            OmegaConf.update(cfg, key, value)
        return cfg

    return compose


def test_sample_draws_a_key_exactly_when_the_chosen_option_has_it() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    calls: list[list[str]] = []
    for _ in range(30):
        trial = study.ask()
        values = sample(trial, SPACE, fake_compose(calls))
        clip = trial.params["clip"]
        assert values == trial.params
        assert list(values) == [p.key for p in SPACE.params if p.key in values]
        assert ("clip.max_norm" in trial.params) == (clip == "norm")
        assert ("clip.clip_value" in trial.params) == (clip == "value")
        assert "clip.error_clip" in trial.params  # a null value is still a key
        assert calls[-1] == ["trainer.max_tokens=1000", f"clip={clip}"]
        study.tell(trial, trial.params["optim.lr"])
    assert {t.params["clip"] for t in study.trials} == {"none", "norm", "value"}


@pytest.mark.parametrize(
    "enqueued",
    [
        {"optim.lr": 1e-3, "clip": "norm", "clip.max_norm": 2.5, "clip.error_clip": None},
        {"optim.lr": 3e-4, "clip": "value", "clip.clip_value": 0.25, "clip.error_clip": 1.0},
        {"optim.lr": 2e-2, "clip": "none", "clip.error_clip": None, "model.layers": 3},
    ],
)
def test_enqueued_trial_comes_back_through_sample(enqueued: dict[str, Any]) -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(enqueued)
    values = sample(study.ask(), SPACE, fake_compose([]))
    assert {k: values[k] for k in enqueued} == enqueued
    assert set(values) - set(enqueued) <= {"model.layers"}  # not enqueued: drawn


def test_enqueued_value_of_an_absent_key_is_not_drawn() -> None:
    study = optuna.create_study()
    study.enqueue_trial({"clip": "none", "clip.max_norm": 3.0})
    trial = study.ask()
    values = sample(trial, SPACE, fake_compose([]))
    assert "clip.max_norm" not in values
    assert "clip.max_norm" not in trial.params


@pytest.mark.parametrize("missing", ["???", "${nowhere}"])
def test_sample_draws_a_key_whose_value_is_missing_or_unresolved(missing: str) -> None:
    space = parse_space({"optim.lr": "interval(0.001, 0.01)"}, [], is_group)
    values = sample(
        optuna.create_study().ask(), space, lambda _: OmegaConf.create({"optim": {"lr": missing}})
    )
    assert set(values) == {"optim.lr"}


def test_sample_against_the_real_clip_group(tiny_cfg: Callable[..., DictConfig]) -> None:
    study = optuna.create_study()
    for clip in ("none", "norm", "value"):
        study.enqueue_trial({"clip": clip})
    drawn = [set(sample(study.ask(), SPACE, lambda o: tiny_cfg(*o))) for _ in range(3)]
    common = {"optim.lr", "clip", "clip.error_clip", "model.layers"}
    assert drawn == [common, common | {"clip.max_norm"}, common | {"clip.clip_value"}]


class RecordingTrial:
    """Stands in for an Optuna trial: records each suggest call and answers the low end."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def suggest_categorical(self, name: str, choices: tuple[Any, ...]) -> Any:
        self.calls.append(("categorical", name, tuple(choices)))
        return choices[0]

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int:
        self.calls.append(("int", name, low, high, step, log))
        return low

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        self.calls.append(("float", name, low, high, step, log))
        return low


@pytest.mark.parametrize(
    ("value", "call"),
    [
        ("choice(a, b)", ("categorical", "x", ("a", "b"))),
        ("range(2, 11, 2)", ("int", "x", 2, 10, 2, False)),
        ("tag(log, int(interval(1, 64)))", ("int", "x", 1, 64, 1, True)),
        ("tag(log, interval(0.1, 1))", ("float", "x", 0.1, 1.0, None, True)),
        ("range(0, 1, 0.25)", ("float", "x", 0.0, 1.0, 0.25, False)),
    ],
)
def test_suggest_calls_the_matching_trial_method(value: str, call: tuple[Any, ...]) -> None:
    trial = RecordingTrial()
    suggest(trial, only_param("x", value))  # type: ignore[arg-type]
    assert trial.calls == [call]


# --- values back to override strings ---------------------------------------------------------

SCALARS = [None, True, False, 0, -3, 10**12, 0.1, 1e-05, 2.5e-310, -1.5, 1e16, math.inf, -math.inf]
PLAIN = ["norm", "rnn_tanh", "data/shakespeare.txt", "-a"]
TYPED_IF_UNQUOTED = ["1", "1.5", "1_000", "true", "NULL", "nan", "inf", "choice(a,b)", "[1]"]
SPECIAL = ["", " pad ", "a b", "a,b", "x=y", "{a: 1}", "${oc.env:HOME}", "é", "tab\there"]
ESCAPES = ["it's", 'say "hi"', "back\\slash", "trail\\", "quote\\'", "'", "line\nbreak"]


@pytest.mark.parametrize("value", [*SCALARS, *PLAIN, *TYPED_IF_UNQUOTED, *SPECIAL, *ESCAPES])
def test_to_overrides_round_trips_through_hydra_parser(value: Any) -> None:
    (line,) = to_overrides({"optim.lr": value})
    (override,) = PARSER.parse_overrides([line])
    assert override.key_or_group == "optim.lr"
    assert not override.is_sweep_override()
    assert override.value() == value
    assert type(override.value()) is type(value)


def test_to_overrides_writes_nan() -> None:
    (override,) = PARSER.parse_overrides(to_overrides({"x": math.nan}))
    value = override.value()
    assert isinstance(value, float) and math.isnan(value)


def test_to_overrides_quotes_only_when_needed() -> None:
    values = {
        "clip": "norm",
        "optim.lr": 0.001,
        "x": None,
        "b": True,
        "s": "a b",
        "n": "1",
        "i": 3,
        "path": "data/shakespeare.txt",
    }
    assert to_overrides(values) == [
        "clip=norm",
        "optim.lr=0.001",
        "x=null",
        "b=true",
        "s='a b'",
        "n='1'",
        "i=3",
        "path=data/shakespeare.txt",
    ]

"""Schemas of the sweeper (``hydra/sweeper=optuna``) and of its sampler and pruner groups.

Registered in Hydra's ConfigStore when the plugin shim is imported, so that
``hydra/sweeper/sampler=random`` or ``hydra/sweeper/pruner=hyperband`` select another option.
Samplers and pruners are plain ``_target_`` nodes, instantiated with ``hydra.utils.instantiate``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from tbptt.errors import ConfigError

MOTPE = "optuna.samplers.MOTPESampler"  # removed in Optuna 4: its option says so


# Each sampler takes every option of hydra-optuna-sweeper's config for it (the Optuna
# sampler's keyword arguments), so configs written for that plugin compose here unchanged; our
# defaults differ where a sweep of parallel workers needs it (seeds, TPE's multivariate/liar).
@dataclass
class TPESamplerConfig:
    _target_: str = "optuna.samplers.TPESampler"
    seed: int | None = 0
    consider_prior: bool | None = None
    prior_weight: float | None = None
    consider_magic_clip: bool | None = None
    consider_endpoints: bool | None = None
    n_startup_trials: int = 8
    n_ei_candidates: int = 24
    multivariate: bool = True
    # Needed with conditional parameters and multivariate TPE; Optuna refuses it without
    # multivariate, so it follows multivariate unless set (the plugin's multivariate: false).
    group: Any = "${.multivariate}"
    warn_independent_sampling: bool | None = None
    constant_liar: bool = True  # parallel workers do not all sample the same point
    constraints_func: Any = None


@dataclass
class RandomSamplerConfig:
    _target_: str = "optuna.samplers.RandomSampler"
    seed: int | None = 0


@dataclass
class GridSamplerConfig:
    _target_: str = "optuna.samplers.GridSampler"
    seed: int | None = 0  # the grid is built from the sweep's params (choices and steps)


@dataclass
class CmaEsSamplerConfig:
    _target_: str = "optuna.samplers.CmaEsSampler"
    seed: int | None = 0
    n_startup_trials: int = 4
    x0: dict[str, Any] | None = None
    sigma0: float | None = None
    independent_sampler: Any = None
    warn_independent_sampling: bool = True
    consider_pruned_trials: bool = False
    restart_strategy: str | None = None
    popsize: int | None = None
    inc_popsize: int = -1
    use_separable_cma: bool = False
    with_margin: bool = False
    lr_adapt: bool = False
    source_trials: Any = None


@dataclass
class NSGAIISamplerConfig:
    _target_: str = "optuna.samplers.NSGAIISampler"
    seed: int | None = 0
    population_size: int = 50
    mutation_prob: float | None = None
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5
    constraints_func: Any = None


@dataclass
class NSGAIIISamplerConfig:
    _target_: str = "optuna.samplers.NSGAIIISampler"
    seed: int | None = 0
    population_size: int = 50
    mutation_prob: float | None = None
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5
    constraints_func: Any = None
    reference_points: Any = None
    dividing_parameter: int = 3


@dataclass
class MOTPESamplerConfig:
    """Refused when the sweep starts (``check_sampler``): Optuna 4 removed MOTPESampler; the
    plugin's ``motpe`` option is kept so that its configs get that answer, not a missing key."""

    _target_: str = MOTPE
    seed: int | None = 0


@dataclass
class GPSamplerConfig:
    _target_: str = "optuna.samplers.GPSampler"
    seed: int | None = 0
    independent_sampler: Any = None
    n_startup_trials: int = 8
    deterministic_objective: bool = False
    constraints_func: Any = None
    warn_independent_sampling: bool = True


@dataclass
class QMCSamplerConfig:
    _target_: str = "optuna.samplers.QMCSampler"
    seed: int | None = 0
    qmc_type: str = "sobol"
    scramble: bool = True
    independent_sampler: Any = None
    warn_asynchronous_seeding: bool = True
    warn_independent_sampling: bool = True


# Pruners see one report per evaluation, with the step counted in training tokens, so that
# trials with different BPTT lengths are compared at equal compute.
@dataclass
class MedianPrunerConfig:
    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 4
    n_warmup_steps: int = 0
    interval_steps: int = 1


@dataclass
class PercentilePrunerConfig:
    _target_: str = "optuna.pruners.PercentilePruner"
    percentile: float = 25.0
    n_startup_trials: int = 4
    n_warmup_steps: int = 0


@dataclass
class SuccessiveHalvingPrunerConfig:
    _target_: str = "optuna.pruners.SuccessiveHalvingPruner"
    min_resource: Any = "auto"  # tokens, or "auto" (from the first finished trial)
    reduction_factor: int = 3
    min_early_stopping_rate: int = 0


@dataclass
class HyperbandPrunerConfig:
    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1
    max_resource: Any = "auto"
    reduction_factor: int = 3


@dataclass
class ThresholdPrunerConfig:
    _target_: str = "optuna.pruners.ThresholdPruner"
    upper: float | None = 10.0  # nats per character: worse than a uniform guess over 20k chars
    lower: float | None = None
    n_warmup_steps: int = 0


@dataclass
class PatientPrunerConfig:
    _target_: str = "optuna.pruners.PatientPruner"
    wrapped_pruner: Any = field(default_factory=MedianPrunerConfig)
    patience: int = 2
    min_delta: float = 0.0


@dataclass
class WilcoxonPrunerConfig:
    _target_: str = "optuna.pruners.WilcoxonPruner"
    p_threshold: float = 0.1
    n_startup_steps: int = 2


@dataclass
class NopPrunerConfig:
    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class PlanConfig:
    """How a sweep with ``hydra.sweeper.budget`` spends it (see ``sweeps/plan.py``)."""

    # Share of the budget for the search (Optuna trials). null: 0.25 without a pruner that
    # stops trials early, 0.125 with one (it examines as many configurations in about half the
    # time, and the final run trains on with the rest: BENCHMARKS.md, "pruning").
    search: float | None = None
    full_trials: int = 5  # a full search trial takes search time / full_trials of compute
    trial_evals: int = 9  # evaluations (pruning steps) per full search trial
    candidates: int | None = None  # best search trials trained on (null: n_jobs, at most 4)
    candidate_share: float = 0.1  # share of the budget for training the candidates on
    # The final run's lr decays to 0 over this share of its time; before it, at a constant lr,
    # the run measures its speed (a longer look plans its FLOPs closer to the time it has).
    anneal: float = 0.85


@dataclass
class TransferConfig:
    """The check against short-horizon bias: once the search has ended, its ``top_k`` best
    configurations train on to ``factor`` times their budget, and the report says whether
    their ranking held (see ``sweeps/policy.py``)."""

    top_k: int = 0  # 0: off
    factor: float = 5.0


@dataclass
class SweeperConfig:
    _target_: str = "hydra_plugins.tbptt_optuna_sweeper.optuna_sweeper.TBPTTOptunaSweeper"
    _recursive_: bool = False  # sampler and pruner are built by the sweeper (grid needs params)
    defaults: list[Any] = field(
        default_factory=lambda: ["_self_", {"sampler": "tpe"}, {"pruner": "asha"}]
    )
    sampler: Any = None
    pruner: Any = None
    # minimize | maximize, or a list of them: a multi-objective study (the app returns a
    # tuple or list with one value per direction; Optuna cannot prune such trials).
    direction: Any = "minimize"
    study_name: str | None = "tbptt"  # null: the app's job name (hydra.job.name)
    storage: str | None = None  # any Optuna storage URL; null: a journal file in the sweep dir
    n_trials: int = 40  # total for the study, across re-runs and machines
    n_jobs: int | None = None  # worker processes; null: the CPU count (GPU count with cuda)
    threads_per_worker: int = 1
    trials_per_gpu: int = 1  # workers sharing one GPU: small trials leave a GPU mostly idle
    trial_logs: bool = False  # trials' log lines on the console too (always in their job's .log)
    max_failures: int | None = 10  # stop the sweep after this many failed trials
    # hydra-optuna-sweeper's: the share of n_trials allowed to fail (0.0: none, 1.0: all, and
    # the sweep still exits 0); when set, it decides in place of max_failures.
    max_failure_rate: float | None = None
    max_retries: int = 1  # re-run a trial whose worker died (or whose sweep was killed)
    timeout: float | None = None  # stop starting trials after this many seconds
    # Wall time for the whole sweep, e.g. 9m, 540 or 1h30m (null: n_trials alone decides). The
    # sweep then searches, trains the best candidates on and trains the winner long, all in it.
    budget: Any = None
    plan: PlanConfig = field(default_factory=PlanConfig)
    heartbeat_interval: float = 5.0
    grace_period: float = 30.0  # a RUNNING trial without heartbeat for this long is stale
    storage_patience: float = 60.0  # seconds to wait out an unreachable storage server
    # Agents (hydra/launcher=...): auto writes jobs straight into the sweep directory where an
    # agent sees it (a shared filesystem), else ships them home through the storage; always
    # ships every job (hosts that see another directory at the same path).
    ship_results: str = "auto"
    params: dict[str, str] | None = field(default_factory=dict)
    # A function (module.function) called as fn(cfg, trial) after params are sampled, which
    # may suggest more parameters with Optuna's trial API (hydra-optuna-sweeper's key): each
    # one it suggests becomes an override, e.g. trial.suggest_float("+w", 0, 1) -> +w=0.42.
    custom_search_space: str | None = None
    # hydra-optuna-sweeper 1.x's deprecated form of params ({key: {type, low, high, ...}}),
    # read into params (an entry in params wins).
    search_space: dict[str, Any] | None = None
    # Parameter sets to try first (a known-good configuration, the defaults a plain run would
    # use), enqueued when the study is created; keys are params' keys, values their values.
    enqueue: list[dict[str, Any]] = field(default_factory=list)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    # What the study asks, and the function that answers it from the results (a dotted path,
    # e.g. analysis.answers.lr_range): the report's "Answer" section (see analysis/answers.py).
    question: str | None = None
    answer: str | None = None


SAMPLERS = {
    "tpe": TPESamplerConfig,
    "random": RandomSamplerConfig,
    "grid": GridSamplerConfig,
    "cmaes": CmaEsSamplerConfig,
    "gp": GPSamplerConfig,
    "qmc": QMCSamplerConfig,
    "nsgaii": NSGAIISamplerConfig,
    "nsgaiii": NSGAIIISamplerConfig,
    "motpe": MOTPESamplerConfig,
}
PRUNERS = {
    "median": MedianPrunerConfig,
    "percentile": PercentilePrunerConfig,
    "asha": SuccessiveHalvingPrunerConfig,
    "hyperband": HyperbandPrunerConfig,
    "threshold": ThresholdPrunerConfig,
    "patient": PatientPrunerConfig,
    "wilcoxon": WilcoxonPrunerConfig,
    "none": NopPrunerConfig,
}


OTHER_PLUGIN = "hydra_plugins.hydra_optuna_sweeper"  # Hydra's own Optuna sweeper plugin
OTHER_PROVIDER = "optuna_sweeper"  # the provider name it registers its configs under
OURS = ("hydra/sweeper", "hydra/sweeper/sampler")  # the groups whose options we define


def register() -> None:
    """Register ``hydra/sweeper=optuna`` and its sampler and pruner options. With
    hydra-optuna-sweeper installed too, both claim those names, and Hydra's plugin scan runs
    each plugin's module in the order of ``sys.path`` (so which one won would depend on the
    directory a sweep is started from): the other plugin's registrations in these groups are
    dropped, before or after ours, and ``hydra/sweeper=optuna`` is always this sweeper."""
    store = ConfigStore.instance()
    _guard(store)
    store.store(group="hydra/sweeper", name="optuna", node=SweeperConfig, provider="tbptt")
    for name, node in SAMPLERS.items():
        store.store(group="hydra/sweeper/sampler", name=name, node=node, provider="tbptt")
    for name, node in PRUNERS.items():
        store.store(group="hydra/sweeper/pruner", name=name, node=node, provider="tbptt")


def answer_function(path: str, key: str = "hydra.sweeper.answer") -> Callable[..., Any]:
    """The function ``path`` (``module.function``) names, imported; ``key`` says where it was
    given: ``hydra.sweeper.answer`` (checked when the sweep starts) or the report's
    ``--answer``. Of the names a sweep directory records, the report imports none: it runs only
    ``analysis.answers``' own verdicts (``analysis/answers.py``)."""
    module, _, name = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name, None) if module else None
    except (ImportError, TypeError) as err:  # TypeError: a relative name, ".module.function"
        raise ConfigError(f"{key}={path}: cannot import {module}: {err}") from None
    if not callable(found):
        raise ConfigError(
            f"{key}={path}: no function {name!r} in {module or 'a module'} "
            "(give module.function, e.g. analysis.answers.lr_range)"
        )
    return found  # type: ignore[no-any-return]


def _guard(store: ConfigStore) -> None:
    if getattr(store.store, "guarded", False):
        return
    plain = store.store

    def store_unless_theirs(*args: Any, **kwargs: Any) -> None:
        group, provider = kwargs.get("group"), kwargs.get("provider")
        if provider == OTHER_PROVIDER and group in OURS:
            return  # hydra-optuna-sweeper's: this sweeper defines these names
        plain(*args, **kwargs)

    store_unless_theirs.guarded = True  # type: ignore[attr-defined]
    store.store = store_unless_theirs  # type: ignore[method-assign]


def other_plugin() -> str | None:
    """hydra-optuna-sweeper's version, when it is installed beside this project (else None)."""
    import importlib.metadata
    import importlib.util

    try:
        if importlib.util.find_spec(OTHER_PLUGIN) is None:
            return None
    except (ImportError, ValueError):
        return None
    try:
        return importlib.metadata.version("hydra-optuna-sweeper")
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"

"""Sweep logic without training: pruning decisions, trial totals, GPU assignment."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from sweeps.gpus import check_gpu_slots, default_jobs, gpu_env, ray_gpus
from sweeps.policy import counted
from sweeps.space import Param, SearchSpace
from sweeps.storage import fail_trial, retry
from sweeps.sweeper import grid_space
from sweeps.worker import PruningReporter
from tbptt.contract import Report
from tbptt.errors import ConfigError


def point(tokens: int, loss: float) -> Report:
    return Report(loss, tokens, tokens=tokens, flops=tokens * 10)


def finished_curve(study, values):
    trial = study.ask()
    for step, value in enumerate(values, start=1):
        trial.report(value, step * 1000)
        trial.should_prune()  # ASHA records its rungs when asked
    study.tell(trial, values[-1])


def test_reporter_stops_a_trial_worse_than_the_median():
    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=2))
    for _ in range(3):
        finished_curve(study, [3.0, 2.0, 1.5])
    trial = study.ask()
    reporter = PruningReporter(trial)
    assert reporter(point(1000, 2.9)) is None  # better than the median at this step: goes on
    assert reporter(point(2000, 2.5)) == "pruned at token 2000"  # worse than the median of 2.0
    assert reporter.stopped == "pruned at token 2000"
    assert trial.storage.get_trial(trial._trial_id).intermediate_values == {1000: 2.9, 2000: 2.5}


def test_reporter_lets_a_good_trial_finish():
    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    finished_curve(study, [3.0, 2.0])
    reporter = PruningReporter(study.ask())
    assert reporter(point(1000, 2.0)) is None
    assert reporter(point(2000, 1.0)) is None
    assert reporter.stopped is None


def test_asha_prunes_at_the_rungs_in_tokens():
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1000, reduction_factor=2)
    study = optuna.create_study(pruner=pruner)
    for i in range(4):
        finished_curve(study, [1.0 + i * 0.1, 0.9, 0.8, 0.7])
    reporter = PruningReporter(study.ask())
    assert reporter(point(1000, 5.0)) == "pruned at token 1000"


def test_a_trial_at_the_end_of_its_budget_is_never_pruned():
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=0.0))  # prunes all
    reporter = PruningReporter(study.ask())
    assert reporter(Report(5.0, 2000, tokens=2000, flops=20000, final=True)) is None
    assert reporter.stopped is None


def test_trials_interrupted_by_the_sweep_never_count_towards_the_total():
    study = optuna.create_study()
    cut = study.ask()
    fail_trial(study, study._storage.get_trial(cut._trial_id), "killed", its_fault=False)
    assert retry(study, study.trials[0], max_retries=0)  # not its fault: retried all the same
    again = study.ask()
    assert again.user_attrs["retries"] == 0
    study.tell(again, 1.0)
    assert counted(study.get_trials()) == 1


def test_failures_that_were_retried_do_not_count_towards_the_total():
    study = optuna.create_study()
    failed = study.ask()
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    study.enqueue_trial({}, user_attrs={"retried_trial": failed.number})
    plain_failure = study.ask()  # pops the enqueued retry
    study.tell(plain_failure, 1.0)
    other = study.ask()
    study.tell(other, state=optuna.trial.TrialState.FAIL)
    assert counted(study.get_trials()) == 2  # the retry and the failure not retried


@pytest.mark.parametrize(
    "device, gpus, cpus, expected",
    [("cpu", 0, 2, 2), ("cpu", 4, 16, 16), ("cuda", 4, 16, 4), ("auto", 2, 16, 2),
     ("auto", 0, 8, 8), ("cuda:0", 3, 8, 3)],
)  # fmt: skip
def test_default_worker_count(device, gpus, cpus, expected):
    assert default_jobs(device, gpus, cpus) == expected


def test_workers_are_pinned_to_gpus_round_robin():
    assert [gpu_env(slot, 3, "cuda") for slot in range(4)] == [
        {"CUDA_VISIBLE_DEVICES": "0"},
        {"CUDA_VISIBLE_DEVICES": "1"},
        {"CUDA_VISIBLE_DEVICES": "2"},
        {"CUDA_VISIBLE_DEVICES": "0"},
    ]
    assert gpu_env(1, 0, "auto") == {} and gpu_env(1, 4, "cpu") == {}


def test_four_trials_per_gpu_fill_every_gpu_evenly():
    assert default_jobs("cuda", 2, 16, per_gpu=4) == 8
    pinned = [gpu_env(slot, 2, "cuda")["CUDA_VISIBLE_DEVICES"] for slot in range(8)]
    assert pinned.count("0") == pinned.count("1") == 4
    assert [gpu_env(slot, 2, "cuda")["CUDA_VISIBLE_DEVICES"] for slot in range(2)] == ["0", "1"]
    check_gpu_slots(8, 2, 4, "cuda")  # fits
    with pytest.raises(ConfigError, match=r"n_jobs=9 on 2 GPU\(s\).*trials_per_gpu to 5"):
        check_gpu_slots(9, 2, 4, "cuda")
    check_gpu_slots(9, 0, 1, "cuda")  # no GPU here: trainer.device says so when a trial starts
    check_gpu_slots(9, 2, 1, "cpu")


def test_ray_agents_ask_for_a_gpu_share_only_where_there_are_gpus():
    assert ray_gpus("cuda", 2.0, 4) == 0.25
    assert ray_gpus("auto", 1.0, 1) == 1.0
    assert ray_gpus("cuda", 0.0, 4) == 0.0  # infeasible on a CPU cluster: pending forever
    assert ray_gpus("cpu", 8.0, 4) == 0.0


def test_grid_space_from_choices_and_int_ranges():
    space = SearchSpace(
        (
            Param("clip", CategoricalDistribution(["none", "norm"]), True),
            Param("bptt.length", IntDistribution(10, 30, step=10), False),
        ),
        (),
    )
    assert grid_space(space) == {"clip": ["none", "norm"], "bptt.length": [10, 20, 30]}
    continuous = SearchSpace((Param("optim.lr", FloatDistribution(1e-4, 1e-2), False),), ())
    with pytest.raises(ConfigError, match="hydra.sweeper.params.optim.lr: the grid sampler"):
        grid_space(continuous)

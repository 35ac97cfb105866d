"""The trial contract (tbptt/contract.py): what an app tells the sweeper, and how a trial's
outcome is decided."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from tbptt import contract
from tbptt.contract import Report, TrialResult
from tbptt.errors import ConfigError
from tests.conftest import ROOT


def test_report_outside_a_sweep_does_nothing():
    assert contract.report(1.0, 10) is None


def test_report_reaches_the_listener_and_returns_its_stop_reason():
    seen: list[Report] = []

    def listener(point: Report) -> str | None:
        seen.append(point)
        return "pruned at step 20" if point.step >= 20 else None

    with contract.listening(listener):
        assert contract.report(2.5, 10, tokens=100) is None
        assert contract.report(2.0, 20) == "pruned at step 20"
    assert contract.report(1.0, 30) is None  # the listener is gone with its job
    assert seen == [Report(2.5, 10, tokens=100), Report(2.0, 20)]


@pytest.mark.parametrize(
    ("returned", "result", "stopped", "expected"),
    [
        (1.5, None, None, ("COMPLETE", 1.5, None)),
        (2, TrialResult(), None, ("COMPLETE", 2.0, None)),
        (1.5, None, "pruned at step 3", ("PRUNED", None, "pruned at step 3")),
        (1.5, TrialResult(stop_reason="diverged at token 9"), None,
         ("PRUNED", None, "diverged at token 9")),
        (math.inf, None, None, ("FAIL", None, "objective is not finite: inf")),
        (None, None, None, ("FAIL", None, "objective is not a number: None")),
        (True, None, None, ("FAIL", None, "objective is not a number: True")),
    ],
)  # fmt: skip
def test_the_outcome_rule(returned, result, stopped, expected):
    told = contract.outcome(returned, result, stopped)
    assert (told.state, told.value, told.reason) == expected


def test_a_failed_job_says_why_in_one_line():
    assert contract.failure(ConfigError("bptt.k1 must be >= 1, got 0")).reason == (
        "error: bptt.k1 must be >= 1, got 0"
    )
    assert contract.failure(ValueError("boom\nmore")).reason == "ValueError: boom"
    assert contract.failure(SystemExit(3)).reason == "the app exited with code 3"


def test_the_objective_rule_is_the_best_or_the_final_loss():
    result = TrialResult(best_val_loss=1.2, final_val_loss=1.4)
    assert result.objective("best") == 1.2 and result.objective("final") == 1.4
    with pytest.raises(ValueError, match="trainer.objective must be 'best' or 'final'"):
        result.objective("last")


def test_a_result_file_round_trips_and_unknown_keys_are_ignored(tmp_path):
    contract.write_result({"tokens": 7, "stop_reason": None, "something_else": 1}, tmp_path)
    assert contract.read_result(tmp_path) == TrialResult(tokens=7)
    assert contract.read_result(tmp_path / "missing") is None


def test_a_checked_app_has_its_value_errors_turned_into_config_errors():
    def check(cfg):
        if cfg["lr"] <= 0:
            raise ValueError(f"lr must be > 0, got {cfg['lr']}")

    task = contract.checked_by(check)(lambda cfg: 0.0)
    contract.check_config(task, {"lr": 1.0})
    with pytest.raises(ConfigError, match="lr must be > 0, got -1"):
        contract.check_config(task, {"lr": -1})
    contract.check_config(lambda cfg: 0.0, {"lr": -1})  # an unchecked app: nothing to run


def test_the_sweeper_imports_neither_the_training_app_nor_torch():
    # An app without torch is swept without it: ~1 s less per worker and in the sweep process.
    code = "import sys, hydra_plugins.tbptt_optuna_sweeper.optuna_sweeper, sweeps.agent, " \
           "sweeps.launch, sweeps.worker; print('tbptt.train' in sys.modules, " \
           "'torch' in sys.modules)"  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.split() == ["False", "False"], out.stderr

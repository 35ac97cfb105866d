"""A Hydra app that breaks the trial contract (tbptt/contract.py) in the way ``mode`` names,
for the adversarial contract tests; ``ok`` keeps it. Reports never exceed 1.0 unless a mode
says otherwise, so a threshold pruner (upper 10) stops only the trials meant to be stopped."""

from __future__ import annotations

import math
import os
import sys
import threading
import time

import hydra
from omegaconf import DictConfig

from tbptt import contract

LATE = 777.0  # what a thread reports after its job ended: no trial may ever hold it


def report_late() -> None:
    time.sleep(1.0)  # the worker has started its next trial by then
    contract.report(LATE, 100)


def forked(report_then: str) -> float:
    """The child of an os.fork() reports at step 100, then exits or returns as the app would;
    the parent waits for it and reports at step 200."""
    pid = os.fork()
    if pid == 0:
        contract.report(0.9, 100)
        if report_then == "exit":
            os._exit(0)
        return 0.9  # returns from the task function, into the worker's own code
    os.waitpid(pid, 0)
    contract.report(0.8, 200)
    return 0.4


def interrupted() -> float:
    """As a library that turns a signal into KeyboardInterrupt does (a worker ignores SIGINT:
    only the app raises it there)."""
    contract.report(1.0, 100)
    raise KeyboardInterrupt


def prunes_itself(asked: bool) -> float:
    """As an app written for Optuna does: raise TrialPruned, when told to stop or unasked."""
    import optuna

    if contract.report(50.0 if asked else 1.0, 100):
        raise optuna.TrialPruned("stopping as told")
    if not asked:
        raise optuna.TrialPruned("it judged itself")
    return 0.6


MODES = {
    "ok": lambda: [contract.report(1.0, 100), contract.report(0.5, 200), 0.25][-1],
    "slow": lambda: [contract.report(1.0, 100), time.sleep(2.0), contract.report(0.5, 200),
                     0.25][-1],
    "never_reports": lambda: 0.7,
    "reports_nan": lambda: [contract.report(math.nan, 100), 0.6][-1],
    "reports_inf": lambda: [contract.report(math.inf, 100), 0.6][-1],
    "steps_backwards": lambda: [contract.report(1.0, s) for s in (300, 200, 100)] and 0.3,
    "one_step_again": lambda: [contract.report(v, 100) for v in (1.0, 0.9, 0.8)] and 0.35,
    "negative_step": lambda: [contract.report(1.0, -1), 0.6][-1],
    "reports_a_string": lambda: [contract.report("low", 100), 0.6][-1],  # type: ignore[arg-type]
    "goes_on_when_told_to_stop": lambda: [contract.report(v, s) for v, s in
                                          ((50.0, 100), (60.0, 200), (70.0, 300))] and 0.1,
    "reports_after_its_end": lambda: [threading.Thread(target=report_late).start(), 0.45][-1],
    "returns_nan": lambda: math.nan,
    "returns_none": lambda: None,
    "returns_a_string": lambda: "0.5",
    "exits_0": lambda: sys.exit(0),
    "exits_3": lambda: sys.exit(3),
    "exits_with_a_message": lambda: sys.exit("cannot go on\nsecond line"),
    "raises_keyboard_interrupt": lambda: interrupted(),
    "forks_child_exits": lambda: forked("exit"),
    "forks_child_returns": lambda: forked("return"),
    "raises_trial_pruned_when_told": lambda: prunes_itself(asked=True),
    "raises_trial_pruned_unasked": lambda: prunes_itself(asked=False),
    "returns_a_tuple": lambda: (0.5, 0.6),
}


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> object:
    return MODES[cfg.mode]()


if __name__ == "__main__":
    main()

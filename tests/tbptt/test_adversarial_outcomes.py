"""The contract's outcome rule (tbptt/contract.py) given what an app may return or raise, as
a table: a finite number is COMPLETE, anything else a FAIL with one short line, and nothing
an app returns makes the rule itself raise (the worker that applies it would die of it)."""

from __future__ import annotations

import decimal
import fractions
import math
import threading

import numpy as np
import pytest
import torch

from tbptt import contract


class FloatFails:
    def __float__(self) -> float:
        raise RuntimeError("no value yet")


# (returned, objectives, (state, value, reason)); a reason ending in "..." was cut there, one
# ending in "*" goes on as it may
CASES = [
    (10**400, 1, ("FAIL", None, "objective is not finite: inf")),
    (-(10**400), 1, ("FAIL", None, "objective is not finite: -inf")),
    (np.float64("nan"), 1, ("FAIL", None, "objective is not finite: nan")),
    (np.float32(0.5), 1, ("COMPLETE", 0.5, None)),
    (torch.tensor(0.25), 1, ("COMPLETE", 0.25, None)),
    (torch.tensor(math.inf), 1, ("FAIL", None, "objective is not finite: inf")),
    (torch.tensor([0.5, 0.6]), 1, ("FAIL", None, "objective is not a number: tensor([0.5000, 0.6000])")),
    (np.array([0.5, 0.6]), 1, ("FAIL", None, "objective is not a number: array([0.5, 0.6])")),
    (decimal.Decimal("NaN"), 1, ("FAIL", None, "objective is not finite: nan")),
    (decimal.Decimal("sNaN"), 1, ("FAIL", None, "objective is not a number: Decimal('sNaN')")),
    (fractions.Fraction(1, 4), 1, ("COMPLETE", 0.25, None)),
    (complex(1, 0), 1, ("FAIL", None, "objective is not a number: (1+0j)")),
    (FloatFails(), 1, ("FAIL", None, "objective is not a number: <tests.tbptt.test_adversarial_outcomes.FloatFails object at 0x*")),
    ("x" * 500, 1, ("FAIL", None, "objective is not a number: '" + "x" * 76 + "...")),
    (b"0.5", 1, ("FAIL", None, "objective is not a number: b'0.5'")),
    ([0.5], 1, ("FAIL", None, "the app returned 1 values [0.5], but hydra.sweeper.direction names one objective: give one direction per value, e.g. direction: [minimize, maximize]")),
    ((0.5, math.nan), 2, ("FAIL", None, "objective is not finite: (0.5, nan)")),
    ((10**400, 0.5), 2, ("FAIL", None, "objective is not finite: (1000000000000000000000000000000000000000000000000000000000000000000000000000...")),
    ((0.5, "low"), 2, ("FAIL", None, "objective is not a tuple of numbers: (0.5, 'low')")),
    ((0.5,), 2, ("FAIL", None, "hydra.sweeper.direction names 2 objectives, but the app returned 1 values: (0.5,); return a tuple of 2 numbers, or give as many directions")),
    (0.5, 2, ("FAIL", None, "hydra.sweeper.direction names 2 objectives, but the app returned one value: 0.5; return a tuple of 2 numbers, or give as many directions")),
    ([np.float32(0.5), torch.tensor(0.25)], 2, ("COMPLETE", (0.5, 0.25), None)),
]  # fmt: skip


@pytest.mark.parametrize(("returned", "objectives", "expected"), CASES,
                         ids=[f"{type(c[0]).__name__} {i}" for i, c in enumerate(CASES)])  # fmt: skip
def test_what_an_app_returns_is_told_by_one_rule_in_one_line(returned, objectives, expected):
    told = contract.outcome(returned, None, objectives=objectives)
    state, value, reason = expected
    assert (told.state, told.value) == (state, value)
    if reason is not None and reason.endswith("*"):
        assert told.reason is not None and told.reason.startswith(reason[:-1])
    elif reason is not None and reason.endswith("..."):
        assert told.reason is not None and told.reason.startswith(reason[:-3])
        assert told.reason.endswith("...") and len(told.reason) <= 120
    else:
        assert told.reason == reason
    assert told.reason is None or "\n" not in told.reason


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (SystemExit(), "the app exited with code 0"),
        (SystemExit(0), "the app exited with code 0"),
        (SystemExit(3), "the app exited with code 3"),
        (SystemExit("cannot go on\nsecond line"), "the app exited: cannot go on"),
        (KeyboardInterrupt(), "KeyboardInterrupt"),
        (MemoryError(), "MemoryError"),
        (RecursionError("maximum recursion depth exceeded"), "RecursionError: maximum recursion depth exceeded"),
    ],
    ids=["sys.exit()", "sys.exit(0)", "sys.exit(3)", "sys.exit(message)", "KeyboardInterrupt",
         "MemoryError", "RecursionError"],
)  # fmt: skip
def test_a_job_that_ended_by_an_exception_fails_in_one_line(error, reason):
    told = contract.outcome(0.5, None, error=error)
    assert (told.state, told.value, told.reason) == ("FAIL", None, reason)


def test_a_thread_its_job_left_running_reports_to_no_later_job():
    first, second = [], []
    late = threading.Event()
    with contract.listening(first.append):
        orphan = threading.Thread(target=lambda: (late.wait(5), contract.report(777.0, 1)))
        orphan.start()
        helper = threading.Thread(target=lambda: contract.report(1.0, 5))  # its own: reaches it
        helper.start()
        helper.join()
    with contract.listening(second.append):
        late.set()  # the first job's thread reports while the second job runs
        orphan.join(5)
        contract.report(0.5, 7)
    assert first == [contract.Report(1.0, 5)] and second == [contract.Report(0.5, 7)]

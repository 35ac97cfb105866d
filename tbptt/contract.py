"""The trial contract: what passes between a training run and the sweeper that schedules it.

Any ``@hydra.main`` app becomes prunable by the Optuna sweeper (``hydra/sweeper=optuna``) with
two lines, and returns its objective as it would for any Hydra sweeper::

    from tbptt import contract

    @hydra.main(version_base="1.3", config_path="conf", config_name="config")
    def main(cfg):
        for step in range(cfg.steps):
            loss = train_a_little_and_evaluate()
            if contract.report(loss, step):  # the sweeper pruned this trial: stop training
                break
        return loss

Outside a sweep ``report`` does nothing and returns ``None``. Optionally, an app names the
function that validates its config (``checked_by``): the sweeper then rejects a bad search
space before any trial runs, and a sampled config that does not validate fails before it
trains. ``examples/quadratic`` is such an app, tested end to end.

The sweeper's side: its worker listens (``listening``) while it runs the job, reads what the job
left in its directory (``read_result``: ``result.json``, written by this project's trainer; an
app that writes none is judged by its return value alone), and the trial's outcome is decided
once, by ``outcome``.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

RESULT_FILE = "result.json"
OBJECTIVES = ("best", "final")  # trainer.objective: the best or the last validation loss
CHECK_ATTR = "sweeper_check"  # set on a task function by ``checked_by``


class End(StrEnum):
    """How a trial ended, by the names of Optuna's ``TrialState`` (``TrialState[end]``)."""

    COMPLETE = "COMPLETE"
    PRUNED = "PRUNED"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Report:
    """One evaluation of a running trial. ``step`` orders the reports (the pruner compares
    trials at equal steps); tokens and FLOPs, when known, let the sweeper judge the time left."""

    value: float
    step: int
    tokens: int | None = None
    flops: int | None = None
    final: bool = False  # the run's last evaluation: its budget is spent, nothing to prune


Listener = Callable[[Report], str | None]  # returns why the run must stop now, or None

# Module state, read through this module: Hydra launchers pickle task functions by value (and
# ``python -m app`` runs them as ``__main__``), so a list in the app's own module would travel
# as a copy. Only the sweeper's worker adds to it, around one job at a time.
_listeners: list[Listener] = []
# Threads a job started and left running when it ended (a background evaluation, say): what
# they report later belongs to no job, least of all to the next one in this process.
_orphans: set[threading.Thread] = set()


def report(
    value: float,
    step: int,
    *,
    tokens: int | None = None,
    flops: int | None = None,
    final: bool = False,
) -> str | None:
    """Report ``value`` (the objective so far) at ``step``; returns why the run should stop
    now (pruned, or out of its phase's time), else ``None``."""
    if threading.current_thread() in _orphans:
        return None  # its job has ended
    point = Report(float(value), int(step), tokens, flops, final)
    for listener in list(_listeners):
        reason = listener(point)
        if reason:
            return reason
    return None


def sweeping() -> bool:
    """Whether a sweeper runs this job: it then owns the process's torch threads (its workers
    share the cores), so the app leaves them as they are."""
    return bool(_listeners)


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Route the ``report`` calls of the job run inside this block to ``listener``; threads
    the job leaves running report to nothing once it has ended."""
    before = set(threading.enumerate())
    _orphans.intersection_update(before)  # those that have ended since
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)
        _orphans.update(set(threading.enumerate()) - before)


Task = TypeVar("Task", bound=Callable[..., Any])


def checked_by(check: Callable[[Any], Any]) -> Callable[[Task], Task]:
    """Mark a task function (under ``@hydra.main``) with the function that validates its
    composed config (raising ``ConfigError`` or ``ValueError`` with a message naming the key)."""

    def mark(task: Task) -> Task:
        setattr(task, CHECK_ATTR, check)
        return task

    return mark


def check_config(task: Callable[..., Any], cfg: Any) -> None:
    """Run the check ``task`` was marked with (if any) on ``cfg``; a ``ValueError`` it raises
    becomes a ``ConfigError`` (bad input, reported in one line)."""
    from tbptt.errors import ConfigError

    check = getattr(task, CHECK_ATTR, None)
    if check is None:
        return
    try:
        check(cfg)
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(str(err)) from None


@dataclass(frozen=True, kw_only=True)
class TrialResult:
    """What a finished run recorded in ``result.json``; every field is optional, so an app
    records what it knows (this project's trainer records them all, and returns it)."""

    completed: bool = True  # False when the run stopped early (see stop_reason)
    stop_reason: str | None = None
    tokens: int | None = None
    flops: int | None = None
    updates: int | None = None
    wall_seconds: float | None = None  # the trainer's own time (a continued run: in total)
    best_val_loss: float | None = None
    final_val_loss: float | None = None
    planned_flops: int | None = None  # a time budget turned into FLOPs: replay with these
    planned_anneal: float | None = None
    vocab_size: int | None = None  # chance is ln(vocab_size) nats/char (analysis/answers.py)
    started_at: float | None = None  # time.time() as this job began training (after start-up)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialResult:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def objective(self, rule: str = "best") -> float | None:
        return objective_of(rule, self.best_val_loss, self.final_val_loss)


def check_objective(rule: str) -> None:
    if rule not in OBJECTIVES:
        raise ValueError(f"trainer.objective must be 'best' or 'final', got {rule!r}")


def objective_of(rule: str, best: float | None, final: float | None) -> float | None:
    """``trainer.objective``: the best validation loss of the run, or its final one."""
    check_objective(rule)
    return best if rule == "best" else final


def write_result(data: Mapping[str, Any], job_dir: Path) -> None:
    from tbptt.metrics import write_json  # atomic: a reader never sees half a file

    write_json(dict(data), job_dir / RESULT_FILE)


def read_result(job_dir: Path | str) -> TrialResult | None:
    """The run's result, or None when it wrote none (or an unreadable one)."""
    path = Path(job_dir) / RESULT_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return TrialResult.from_dict(data) if isinstance(data, dict) else None


@dataclass(frozen=True)
class Outcome:
    state: End
    value: float | tuple[float, ...] | None  # a tuple in a multi-objective study
    reason: str | None  # why it stopped early or failed
    # The app and the sweep disagree on the objective's shape (a tuple under one direction, or
    # too few values): every trial would fail the same way, so the sweep stops at the first.
    fatal: bool = False


def outcome(
    returned: Any,
    result: TrialResult | None,
    stopped: str | None = None,
    error: BaseException | None = None,
    objectives: int = 1,
) -> Outcome:
    """The one rule by which a job is told to the study (the sweeper's workers and agents)
    and read back (``analysis.load``'s multirun jobs). A job that raised (``error``) is a FAIL
    with its message (``failure``); one stopped early (by the sweeper, ``stopped``, or by
    itself, ``result.stop_reason``) is PRUNED; one whose ``result.json`` says it did not
    complete is a FAIL; otherwise its objective (the task function's return value) must be a
    finite number, or, in a study of several ``objectives``, a tuple or list of as many."""
    if error is not None:
        return failure(error)
    reason = stopped or (result.stop_reason if result is not None else None)
    if reason:
        return Outcome(End.PRUNED, None, reason)
    if result is not None and not result.completed:
        return Outcome(End.FAIL, None, f"{RESULT_FILE}: not completed")
    if objectives > 1:
        return _values_outcome(returned, objectives)
    if isinstance(returned, list | tuple):
        return Outcome(End.FAIL, None, f"the app returned {len(returned)} values "
                       f"{_short(returned)}, but hydra.sweeper.direction names one objective: "
                       "give one direction per value, e.g. direction: [minimize, maximize]",
                       fatal=True)  # fmt: skip
    number = _number(returned)
    if number is None:
        return Outcome(End.FAIL, None, f"objective is not a number: {_short(returned)}")
    if not math.isfinite(number):
        return Outcome(End.FAIL, None, f"objective is not finite: {number}")
    return Outcome(End.COMPLETE, number, None)


def _values_outcome(returned: Any, objectives: int) -> Outcome:
    if not isinstance(returned, list | tuple) or len(returned) != objectives:
        got = f"{len(returned)} values" if isinstance(returned, list | tuple) else "one value"
        why = (f"hydra.sweeper.direction names {objectives} objectives, but the app returned "
               f"{got}: {_short(returned)}; return a tuple of {objectives} numbers, or give "
               "as many directions")  # fmt: skip
        return Outcome(End.FAIL, None, why, fatal=True)
    numbers = [_number(v) for v in returned]
    if any(n is None for n in numbers):
        return Outcome(End.FAIL, None, f"objective is not a tuple of numbers: {_short(returned)}")
    if not all(math.isfinite(n) for n in numbers):  # type: ignore[arg-type]
        return Outcome(End.FAIL, None, f"objective is not finite: {_short(returned)}")
    return Outcome(End.COMPLETE, tuple(numbers), None)  # type: ignore[arg-type]


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a number: int, float, or a numpy / torch scalar (what
    ``float()`` takes, as hydra-optuna-sweeper's does, but never a bool or a string)."""
    if isinstance(value, bool | str | bytes) or not hasattr(value, "__float__"):
        return None
    try:
        return float(value)
    except OverflowError:  # an int past float's range: a number, but not a finite one
        return math.inf if value > 0 else -math.inf
    except Exception:  # a tensor of several elements, or any object whose __float__ fails
        return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def failure(error: BaseException) -> Outcome:
    """A job that raised: a bad config says its one-line message, anything else its type too;
    an app that exited (``sys.exit``) says its code."""
    from tbptt.errors import ConfigError, first_line, summary

    if isinstance(error, ConfigError):
        return Outcome(End.FAIL, None, f"error: {error}")
    if isinstance(error, SystemExit):  # sys.exit(), sys.exit(3) or sys.exit("a message")
        code = error.code
        if code is None or isinstance(code, int):
            return Outcome(End.FAIL, None, f"the app exited with code {code or 0}")
        return Outcome(End.FAIL, None, f"the app exited: {first_line(error)}")
    return Outcome(End.FAIL, None, summary(error))

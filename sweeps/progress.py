"""Live sweep progress: on a terminal a tqdm bar with one line per finished trial above it,
otherwise just the lines."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import TextIO

from optuna.trial import FrozenTrial
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from sweeps.ledger import Ledger
from sweeps.worker import TrialOutcome


def result_text(ledger: Ledger) -> str:
    """The sweep's answer: the final model of a budgeted sweep (whole-split losses and its
    checkpoint), else the best trial."""
    final, best = ledger.final(), leader_text(ledger)
    if final is None:
        return best
    attrs = final.user_attrs
    return (
        f"final model (trial {final.number}, continuing trial {attrs.get('parent')}): "
        f"val {attrs['full_val_loss']:.4f}, test {attrs['test_loss']:.4f} nats/char on the "
        f"whole splits | {best} | checkpoint {attrs.get('job_dir')}/best.pt"
    )


def leader_text(ledger: Ledger) -> str:
    """The best trial, or the size of a multi-objective study's Pareto front."""
    if not ledger.multi_objective:
        return best_text(ledger.best())
    front = ledger.front()
    return f"Pareto front: {len(front)} trials" if front else "Pareto front: none yet"


def best_text(best: FrozenTrial | None) -> str:
    if best is None:
        return "best: none yet"
    params = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in best.params.items())  # fmt: skip
    return f"best {best.value:.4f} (trial {best.number}: {params})"


class Progress:
    """Shows complete/pruned/failed/running counts, the best trial and the elapsed time.

    On a terminal the bar stays on the last line: each finished trial's line, and the sweep
    process's own log records, are written above it while it is live. Elsewhere (a file, a
    pipe) each finished trial prints one line.

    Args:
        total: the study's trial total.
        stream: where to write (stderr by default); a bar only when it is a terminal.

    Example:
        >>> import optuna
        >>> from tbptt.contract import End
        >>> study = optuna.create_study()
        >>> study.optimize(lambda trial: trial.suggest_float("x", 0, 1) ** 2 + 1, n_trials=1)
        >>> progress = Progress(total=40, stream=sys.stdout)  # not a terminal: lines, no bar
        >>> outcome = TrialOutcome(number=0, state=End.COMPLETE, value=study.best_value)
        >>> ledger = Ledger(study); ledger.refresh()
        >>> progress.finished(ledger, outcome); progress.close()
        trial 0 complete: value 1... | 1/40 | 1 complete, 0 pruned, 0 failed, 0 running | ...
    """

    def __init__(self, total: int | None, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self._started = time.monotonic()
        self._bar = tqdm(
            total=total,
            file=self._stream,
            unit="trial",
            dynamic_ncols=True,
            disable=not self._stream.isatty(),
        )
        self._redirect = contextlib.ExitStack()
        if not self._bar.disable:  # console log handlers write through tqdm while the bar lives
            loggers = [logging.root, logging.getLogger("optuna")]  # optuna does not propagate
            self._redirect.enter_context(logging_redirect_tqdm(loggers))

    def summary(self, ledger: Ledger) -> str:
        """Counts by state, the best trial and the time so far (``ledger``: refreshed)."""
        c = ledger.counts()
        elapsed = time.monotonic() - self._started
        return (
            f"{c['complete']} complete, {c['pruned']} pruned, {c['fail']} failed, "
            f"{c['running']} running | {leader_text(ledger)} | {elapsed:.0f}s"
        )

    def start(self, ledger: Ledger) -> None:
        self._bar.n = ledger.done()
        self._bar.set_postfix_str(self.summary(ledger), refresh=True)

    def finished(self, ledger: Ledger, outcome: TrialOutcome) -> None:
        """One line for the trial that ended (``ledger``: refreshed since it did)."""
        done, summary = ledger.done(), self.summary(ledger)
        detail = value_text(outcome.value) if outcome.value is not None else outcome.reason
        count = f"{done}/{self._bar.total}" if self._bar.total else f"{done} done"
        line = f"trial {outcome.number} {outcome.state.lower()}: {detail} | {count} | {summary}"
        if self._bar.disable:
            print(line, file=self._stream, flush=True)
            return
        self._bar.write(line, file=self._stream)
        self._bar.n = done
        self._bar.set_postfix_str(summary, refresh=True)

    def close(self) -> None:
        """End the bar (its last state stays on screen) and give logging its console back;
        what is printed next starts on a line of its own."""
        self._bar.close()
        self._redirect.close()


def value_text(value: float | tuple[float, ...]) -> str:
    if isinstance(value, tuple):
        return "values " + ", ".join(f"{v:.4f}" for v in value)
    return f"value {value:.4f}"

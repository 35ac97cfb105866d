"""Live sweep progress: on a terminal a tqdm bar with one line per finished trial above it,
otherwise just the lines."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections import Counter
from typing import TextIO

import optuna
from optuna.trial import TrialState
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from sweeps.outputs import final_trial
from sweeps.worker import TrialOutcome


def counts(study: optuna.Study) -> Counter[str]:
    return Counter(t.state.name.lower() for t in study.get_trials(deepcopy=False))


def result_text(study: optuna.Study) -> str:
    """The sweep's answer: the final model of a budgeted sweep (whole-split losses and its
    checkpoint), else the best trial."""
    final = final_trial(study)
    if final is None:
        return best_text(study)
    attrs = final.user_attrs
    return (
        f"final model (trial {final.number}, continuing trial {attrs.get('parent')}): "
        f"val {attrs['full_val_loss']:.4f}, test {attrs['test_loss']:.4f} nats/char on the "
        f"whole splits | {best_text(study)} | checkpoint {attrs.get('job_dir')}/best.pt"
    )


def best_text(study: optuna.Study) -> str:
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return "best: none yet"
    best = study.best_trial
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
        >>> from tbptt.contract import End
        >>> study = optuna.create_study()
        >>> study.optimize(lambda trial: trial.suggest_float("x", 0, 1) ** 2 + 1, n_trials=1)
        >>> progress = Progress(total=40, stream=sys.stdout)  # not a terminal: lines, no bar
        >>> outcome = TrialOutcome(number=0, state=End.COMPLETE, value=study.best_value)
        >>> progress.finished(study, outcome, done=1); progress.close()
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

    def summary(self, study: optuna.Study) -> str:
        c = counts(study)
        elapsed = time.monotonic() - self._started
        return (
            f"{c['complete']} complete, {c['pruned']} pruned, {c['fail']} failed, "
            f"{c['running']} running | {best_text(study)} | {elapsed:.0f}s"
        )

    def start(self, study: optuna.Study, done: int) -> None:
        self._bar.n = done
        self._bar.set_postfix_str(self.summary(study), refresh=True)

    def finished(self, study: optuna.Study, outcome: TrialOutcome, done: int) -> None:
        detail = f"value {outcome.value:.4f}" if outcome.value is not None else outcome.reason
        count = f"{done}/{self._bar.total}" if self._bar.total else f"{done} done"
        line = (
            f"trial {outcome.number} {outcome.state.lower()}: {detail} | {count} | "
            f"{self.summary(study)}"
        )
        if self._bar.disable:
            print(line, file=self._stream, flush=True)
            return
        self._bar.write(line, file=self._stream)
        self._bar.n = done
        self._bar.set_postfix_str(self.summary(study), refresh=True)

    def close(self) -> None:
        """End the bar (its last state stays on screen) and give logging its console back;
        what is printed next starts on a line of its own."""
        self._bar.close()
        self._redirect.close()
